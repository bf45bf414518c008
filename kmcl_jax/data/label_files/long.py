"""Long CSV, one row per (image, label), as Open Images' label files are ("ImageID,
Source,LabelName,Confidence"): a row with Confidence 0 (a label verified absent) adds no
label but keeps its image in the split; a row with an empty label is an image without
labels."""

from __future__ import annotations

from kmcl_jax.data.label_files.rows import (
  CONFIDENCE_COLUMN,
  Columns,
  LabelFile,
  LabelRow,
  cell,
  image_column,
  image_of,
  label_column,
  split_column,
)
from kmcl_jax.data.label_files.text import CsvTable, row_error


def confidence_column(table: CsvTable) -> int | None:
  lowered = [name.lower() for name in table.header]
  return lowered.index(CONFIDENCE_COLUMN) if CONFIDENCE_COLUMN in lowered else None


def present(table: CsvTable, line: int, value: str) -> bool:
  """Whether a confidence value marks the label present (1) or absent (0)."""
  try:
    confidence = float(value)
  except ValueError:
    confidence = -1.0
  if confidence not in (0.0, 1.0):
    raise row_error(
      table.path, f"line {line}", f"confidence {value!r} is neither 1 (present) nor 0 (absent)"
    )
  return confidence == 1.0


def parse(table: CsvTable, columns: Columns) -> LabelFile:
  image, label = image_column(table, columns), label_column(table, columns)
  split, confidence = split_column(table, columns), confidence_column(table)
  rows = []
  for line, fields in table.rows:
    name = cell(fields, label)
    keep = bool(name) and (confidence is None or present(table, line, cell(fields, confidence)))
    rows.append(
      LabelRow(
        where=f"line {line}",
        image=image_of(table, line, fields, image),
        positive=(name,) if keep else (),
        split=cell(fields, split),
      )
    )
  return LabelFile(table.path, "long", tuple(rows))
