"""The label-file formats, which one a file is in, and reading a file in its format."""

from __future__ import annotations

import json

from kmcl_jax.data.label_files import coco_json, columns, delimited, jsonl, long
from kmcl_jax.data.label_files.rows import (
  Columns,
  LabelFile,
  image_column,
  label_column,
  other_columns,
)
from kmcl_jax.data.label_files.text import CsvTable, LabelFileError, read_csv, read_text

# delimited: an image column and one label column ("cat|dog"); columns: one 0/1/-1 column
# per class; long: one row per (image, label); jsonl: {"image", "labels"} per line;
# coco: a COCO-format annotation file.
FORMATS = ("delimited", "columns", "long", "jsonl", "coco")
AUTO = "auto"


def is_json(text: str) -> bool:
  return text.lstrip().startswith(("{", "["))


def json_format(text: str) -> str:
  """`coco` for one JSON object with "images", else `jsonl`."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError:
    return "jsonl"  # several objects, one per line
  return "coco" if isinstance(data, dict) and "images" in data else "jsonl"


def csv_format(table: CsvTable, choice: Columns, class_list: tuple[str, ...]) -> str:
  """The format of a CSV: `columns` when the header has a column for every class of the
  class list, or two or more of its columns (besides the image and split columns) hold
  only 1, 0, blank or -1 (or one does and no other is the label column); else `long`
  when it has a confidence column, or when an image has several rows and no label cell
  holds several labels (a delimiter or a space: name the format of a long file whose
  class names have spaces); else `delimited`."""
  if class_list and set(class_list) <= set(table.header):
    return "columns"
  flags = [
    k
    for k in other_columns(table, choice)
    if all(columns.is_flag(value) for value in table.values(k))
  ]
  if not choice.label and len(flags) > 1:
    return "columns"
  try:
    labels = table.values(label_column(table, choice))
  except LabelFileError:
    if flags:  # class columns, one with a value that is not a flag (named when parsed)
      return "columns"
    raise
  if long.confidence_column(table) is not None:
    return "long"
  images = table.values(image_column(table, choice))
  joined = any(len(delimited.split_labels(value, None)) > 1 for value in labels) or any(
    d in value for value in labels for d in delimited.LABEL_DELIMITERS
  )
  return "long" if len(set(images)) < len(images) and not joined else "delimited"


def read_label_file(
  path: str, labels_format: str, choice: Columns, class_list: tuple[str, ...], what: str
) -> LabelFile:
  """The rows of label file `path` (named by config field `what`) in `labels_format`, or
  in the format found from its content for "auto"."""
  if labels_format not in (AUTO, *FORMATS):
    raise LabelFileError(
      f"config.data.labels_format={labels_format!r}: expected {AUTO!r} or one of {FORMATS}."
    )
  text = read_text(path, what)
  if labels_format in ("coco", "jsonl") or (labels_format == AUTO and is_json(text)):
    found = json_format(text) if labels_format == AUTO else labels_format
    return coco_json.parse(path, text) if found == "coco" else jsonl.parse(path, text, choice)
  table = read_csv(path, text)
  found = csv_format(table, choice, class_list) if labels_format == AUTO else labels_format
  if found == "columns":
    return columns.parse(table, choice, class_list)
  return (long if found == "long" else delimited).parse(table, choice)
