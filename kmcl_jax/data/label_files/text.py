"""Reading a label file, local or gs://: its text (UTF-8 with or without a BOM, Unix or
Windows line endings), its CSV rows with their line numbers, and the error every
parser raises for a bad row."""

from __future__ import annotations

import csv
import dataclasses
import io

from etils import epath

TABLE_DELIMITERS = ("\t", ";", ",")


class LabelFileError(ValueError):
  """Bad input in a label file, in one sentence naming the file, the row and the value."""


def row_error(path: str, where: str, problem: str) -> LabelFileError:
  """The error for a bad row: `where` is "line 7" (1-based), "annotation 3", ...."""
  return LabelFileError(f"{path}, {where}: {problem}.")


def read_text(path: str, what: str) -> str:
  """The text of the file `path` (`what` names the config field that gave it): UTF-8,
  a leading BOM dropped, Windows and old Mac line endings as "\\n"; a file that is
  missing, unreadable, not UTF-8 or empty is a LabelFileError naming it."""
  try:
    data = epath.Path(path).read_bytes()
  except (OSError, ValueError) as error:
    raise LabelFileError(f"{what}={path!r}: cannot read the file ({error}).") from None
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as error:
    line = data[: error.start].count(b"\n") + 1
    raise LabelFileError(
      f"{path}, line {line}: byte {data[error.start]:#04x} is not UTF-8 text; save the file "
      "as UTF-8."
    ) from None
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  if not text.strip():
    raise LabelFileError(f"{what}={path!r}: the file is empty; expected a header and labels.")
  return text


@dataclasses.dataclass(frozen=True)
class CsvTable:
  """A CSV file: its header and its data rows, each with its 1-based line number.

  Attributes:
    path: the file.
    header: column names (stripped).
    rows: (line number, fields) of every non-blank data row, fields stripped.
  """

  path: str
  header: tuple[str, ...]
  rows: tuple[tuple[int, tuple[str, ...]], ...]

  def column(self, name: str) -> int:
    """The index of column `name`; a LabelFileError naming the columns if it has none."""
    if name not in self.header:
      raise row_error(
        self.path, "line 1", f"no column {name!r}; the header has {list(self.header)}"
      )
    return self.header.index(name)

  def values(self, index: int) -> list[str]:
    """Column `index` of every row ("" where a row is short)."""
    return [fields[index] if index < len(fields) else "" for _, fields in self.rows]


def read_csv(path: str, text: str) -> CsvTable:
  """The header and rows of CSV `text` (of `path`). The table's delimiter is a tab, ";" or
  "," (the first of them the header holds; ","); fields may be quoted."""
  header_line = text.split("\n", 1)[0]
  delimiter = next((d for d in TABLE_DELIMITERS if d in header_line), ",")
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
  try:
    header = tuple(name.strip() for name in next(reader))
  except csv.Error as error:
    raise row_error(path, "line 1", f"not valid CSV ({error})") from None
  if len(set(header)) < len(header):
    repeated = next(name for name in header if header.count(name) > 1)
    raise row_error(path, "line 1", f"the column {repeated!r} is named twice in the header")
  rows = []
  try:
    for fields in reader:
      if any(field.strip() for field in fields):
        rows.append((reader.line_num, tuple(field.strip() for field in fields)))
  except csv.Error as error:
    raise row_error(path, f"line {reader.line_num}", f"not valid CSV ({error})") from None
  if not rows:
    raise LabelFileError(f"{path}: the file has a header but no rows of labels.")
  return CsvTable(path, header, tuple(rows))
