"""CSV with one column per class holding 1 (present), 0 or blank (absent) or -1 (left out
of AP, trained as positive, as VOC's "difficult"), as the ADP and ChestX-ray-style
(CheXpert) files are. Every column but the image and split columns is a class, unless
a class list names the class columns (then the others, "Age" say, are left alone)."""

from __future__ import annotations

from kmcl_jax.data.label_files.rows import (
  Columns,
  LabelFile,
  LabelRow,
  cell,
  image_column,
  image_of,
  other_columns,
  split_column,
)
from kmcl_jax.data.label_files.text import CsvTable, row_error

POSITIVE, NEGATIVE, IGNORED = ("1", "1.0"), ("0", "0.0", ""), ("-1", "-1.0")


def is_flag(value: str) -> bool:
  return value in POSITIVE + NEGATIVE + IGNORED


def class_columns(table: CsvTable, columns: Columns, class_list: tuple[str, ...]) -> list[int]:
  """The class columns: those the class list names, else every column but the image and
  split columns."""
  if class_list:
    return [table.column(name) for name in class_list]
  return other_columns(table, columns)


def parse(table: CsvTable, columns: Columns, class_list: tuple[str, ...] = ()) -> LabelFile:
  image, split = image_column(table, columns), split_column(table, columns)
  classes = class_columns(table, columns, class_list)
  if not classes:
    raise row_error(table.path, "line 1", "no class column besides the image column")
  rows = []
  for line, fields in table.rows:
    for k in classes:
      if not is_flag(cell(fields, k)):
        raise row_error(
          table.path,
          f"line {line}",
          f"column {table.header[k]!r} holds {cell(fields, k)!r} where a file of one column "
          "per class holds 1, 0 (or blank) or -1; mixed label formats (a column that is not "
          "a class is left alone when config.data.class_list names the class columns)",
        )
    rows.append(
      LabelRow(
        where=f"line {line}",
        image=image_of(table, line, fields, image),
        positive=tuple(table.header[k] for k in classes if cell(fields, k) in POSITIVE),
        ignored=tuple(table.header[k] for k in classes if cell(fields, k) in IGNORED),
        split=cell(fields, split),
      )
    )
  return LabelFile(table.path, "columns", tuple(rows), tuple(table.header[k] for k in classes))
