"""JSON lines, one object per image: {"image": "a/b.jpg", "labels": ["cat", "dog"]}
(labels: names or integer ids; with a "split" key when the file holds every split).
data.image_column and data.label_column name other keys."""

from __future__ import annotations

import json

from kmcl_jax.data.label_files.rows import Columns, LabelFile, LabelRow
from kmcl_jax.data.label_files.text import row_error


def parse(path: str, text: str, columns: Columns) -> LabelFile:
  image_key, labels_key = columns.image or "image", columns.label or "labels"
  expected = f'one object per line, {{"{image_key}": "<file>", "{labels_key}": [<labels>]}}'
  rows = []
  for line, content in enumerate(text.split("\n"), 1):
    if not content.strip():
      continue
    try:
      record = json.loads(content)
    except json.JSONDecodeError as error:
      raise row_error(
        path, f"line {line}", f"not valid JSON ({error}); expected {expected}"
      ) from None
    if not isinstance(record, dict) or not isinstance(record.get(image_key), str):
      raise row_error(path, f"line {line}", f"expected {expected}, got {content.strip()!r}")
    labels = record.get(labels_key)
    if not isinstance(labels, list) or not all(
      isinstance(v, (str, int)) and not isinstance(v, bool) for v in labels
    ):
      raise row_error(
        path,
        f"line {line}",
        f"{labels_key!r} is {labels!r}, not a list of class names or integer ids; mixed "
        f"label formats: expected {expected}",
      )
    rows.append(
      LabelRow(
        where=f"line {line}",
        image=record[image_key],
        positive=tuple(str(v).strip() for v in labels if str(v).strip()),
        split=str(record.get(columns.split, "")),
      )
    )
  return LabelFile(path, "jsonl", tuple(rows))
