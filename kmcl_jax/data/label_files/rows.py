"""What every label-file parser returns: one row per (image, labels) as the file writes
them, before classes are resolved; and the choice of a CSV's image, label and split
columns that the CSV parsers share."""

from __future__ import annotations

import dataclasses

from kmcl_jax.data.label_files.text import CsvTable, row_error

# Column names that say "this is the label column" when a CSV has several candidates
# (Planet "tags", HPA "Target", Open Images "LabelName", ChestX-ray "Finding Labels").
LABEL_COLUMN_HINTS = ("label", "tag", "target", "class", "categor", "finding")
# Open Images' long files mark human-verified absent labels with Confidence 0.
CONFIDENCE_COLUMN = "confidence"


@dataclasses.dataclass(frozen=True)
class LabelRow:
  """One row of a label file.

  Attributes:
    where: the row in words for messages, "line 7" (1-based) or "annotation 3".
    image: the image as the file names it (a path relative to the images folder, or an id).
    positive: the labels present: class names or integer class ids, as written.
    ignored: labels left out of AP (a -1 column); trained as positive, as VOC's difficult.
    split: the row's split-column value ("" without one).
  """

  where: str
  image: str
  positive: tuple[str, ...]
  ignored: tuple[str, ...] = ()
  split: str = ""


@dataclasses.dataclass(frozen=True)
class LabelFile:
  """A parsed label file.

  Attributes:
    path: the file.
    format: the format it was read as (one of kmcl_jax.data.label_files.FORMATS).
    rows: its rows in file order (an image may have several).
    declared: classes the file names whether or not a row has them (the class columns
      of a CSV, a COCO file's categories); () for formats that name only labels present.
  """

  path: str
  format: str
  rows: tuple[LabelRow, ...]
  declared: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Columns:
  """The config's column choices ("" = found from the header).

  Attributes:
    image: the image column (default: the first column; JSON lines: "image").
    label: the label column of a delimited or long CSV (default: the one column left, or
      the one named like a label column; JSON lines: "labels").
    split: the split column, used when the file has it.
  """

  image: str = ""
  label: str = ""
  split: str = "split"


def image_column(table: CsvTable, columns: Columns) -> int:
  return table.column(columns.image) if columns.image else 0


def split_column(table: CsvTable, columns: Columns) -> int | None:
  return table.header.index(columns.split) if columns.split in table.header else None


def other_columns(table: CsvTable, columns: Columns) -> list[int]:
  """The columns that are neither the image nor the split column."""
  taken = {image_column(table, columns), split_column(table, columns)}
  return [i for i in range(len(table.header)) if i not in taken]


def label_column(table: CsvTable, columns: Columns) -> int:
  """The one column of a delimited or long CSV that holds the labels: config's, the only
  other column (a confidence column aside), or the one named like a label column."""
  if columns.label:
    return table.column(columns.label)
  candidates = [
    i for i in other_columns(table, columns) if table.header[i].lower() != CONFIDENCE_COLUMN
  ]
  if len(candidates) > 1:
    candidates = [
      i for i in candidates if any(h in table.header[i].lower() for h in LABEL_COLUMN_HINTS)
    ]
  if len(candidates) != 1:
    raise row_error(
      table.path,
      "line 1",
      f"cannot tell which of the columns {list(table.header)} holds the labels; set "
      "config.data.label_column (and data.image_column if it is not the first)",
    )
  return candidates[0]


def cell(fields: tuple[str, ...], index: int | None) -> str:
  """Field `index` of a row ("" where the row is short or there is no such column)."""
  return fields[index] if index is not None and index < len(fields) else ""


def image_of(table: CsvTable, line: int, fields: tuple[str, ...], index: int) -> str:
  """The image field of a row; a row without one is a LabelFileError."""
  image = cell(fields, index)
  if not image:
    raise row_error(
      table.path, f"line {line}", f"no image in column {table.header[index]!r} ({fields!r})"
    )
  return image
