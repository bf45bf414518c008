"""CSV with an image column and one label column of names or integer ids joined by a
space, "|", ";" or "," (quoted), as the Planet/Amazon ("image_name,tags" with "haze
primary") and Human Protein Atlas ("Id,Target" with "16 0") label files are."""

from __future__ import annotations

from kmcl_jax.data.label_files.rows import (
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

# In order of precedence: a cell "No Finding|Mass" is split at "|", not at the space.
LABEL_DELIMITERS = ("|", ";", ",")


def label_delimiter(table: CsvTable, column: int) -> str | None:
  """The delimiter of the file's label cells (None: whitespace); a cell that uses another
  one than the file's first is a LabelFileError (mixed label formats)."""
  first = {}
  for line, fields in table.rows:
    for delimiter in LABEL_DELIMITERS:
      if delimiter in cell(fields, column):
        first.setdefault(delimiter, (line, cell(fields, column)))
  if len(first) > 1:
    (_, (line_a, a)), (other, (line_b, b)) = sorted(first.items(), key=lambda item: item[1][0])[:2]
    raise row_error(
      table.path,
      f"line {line_b}",
      f"the labels {b!r} are joined by {other!r} where line {line_a} joins them differently "
      f"({a!r}); mixed label formats: join every row's labels alike",
    )
  return next(iter(first), None)


def split_labels(text: str, delimiter: str | None) -> tuple[str, ...]:
  """The labels of one cell, stripped, empty ones dropped ("" is an image without labels)."""
  return tuple(name.strip() for name in text.split(delimiter) if name.strip())


def parse(table: CsvTable, columns: Columns) -> LabelFile:
  image, labels, split = (
    image_column(table, columns),
    label_column(table, columns),
    split_column(table, columns),
  )
  delimiter = label_delimiter(table, labels)
  rows = tuple(
    LabelRow(
      where=f"line {line}",
      image=image_of(table, line, fields, image),
      positive=split_labels(cell(fields, labels), delimiter),
      split=cell(fields, split),
    )
    for line, fields in table.rows
  )
  return LabelFile(table.path, "delimited", rows)
