"""The class list of a run on label files, and each label's class index.

Classes are those of the class-list file (one name per line, in its order) when there
is one; otherwise every label the files name (and every class column or COCO category)
sorted, numerically when all are integer ids. Integer ids with a class list of names
are line numbers of the list, from 0 (Human Protein Atlas' "Target" ids, say).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from kmcl_jax.data.label_files.rows import LabelFile, LabelRow
from kmcl_jax.data.label_files.text import LabelFileError, read_text, row_error


def read_class_list(path: str) -> tuple[str, ...]:
  """The class names of a class-list file, one per line (blank lines skipped)."""
  names, line_of = [], {}
  for line, text in enumerate(read_text(path, "config.data.class_list").split("\n"), 1):
    name = text.strip()
    if not name:
      continue
    if name in line_of:
      raise row_error(path, f"line {line}", f"class {name!r} is also on line {line_of[name]}")
    line_of[name] = line
    names.append(name)
  return tuple(names)


def labels_of(row: LabelRow) -> tuple[str, ...]:
  return row.positive + row.ignored


def is_id(label: str) -> bool:
  return label.isdigit()


@dataclasses.dataclass(frozen=True)
class Classes:
  """The run's classes and how a file's labels name them.

  Attributes:
    names: K class names, in label order.
    by_id: labels are integer ids, the index into `names` (a class list of names).
    class_list: the class-list file ("" without one), for messages.
  """

  names: tuple[str, ...]
  by_id: bool
  class_list: str = ""

  def index(self, file: LabelFile, row: LabelRow, label: str) -> int:
    """The class index of `label` on `row` of `file`; a LabelFileError if it is none."""
    if self.by_id:
      if int(label) < len(self.names):
        return int(label)
      raise row_error(
        file.path,
        row.where,
        f"label id {label} is not a class: {self.class_list} lists {len(self.names)} "
        f"classes, ids 0 to {len(self.names) - 1}",
      )
    position = self._positions.get(label)
    if position is None:
      raise row_error(
        file.path, row.where, f"label {label!r} is not in the class list {self.class_list}"
      )
    return position

  @functools.cached_property
  def _positions(self) -> dict[str, int]:
    return {name: k for k, name in enumerate(self.names)}


def check_one_kind(file: LabelFile) -> None:
  """A file whose labels are integer ids on some rows and names on others is a
  LabelFileError naming one row of each (mixed label formats)."""
  first = {}
  for row in file.rows:
    for label in labels_of(row):
      first.setdefault(is_id(label), (row, label))
  if len(first) == 2:
    (id_row, id_label), (name_row, name_label) = first[True], first[False]
    raise row_error(
      file.path,
      name_row.where,
      f"label {name_label!r} is a name where {id_row.where} gives the integer id "
      f"{id_label!r}; mixed label formats: name the classes, or give every label as an id "
      "with a class list (config.data.class_list)",
    )


def find_classes(files: Sequence[LabelFile], class_list: str, listed: tuple[str, ...]) -> Classes:
  """The classes of the label files `files` (see the module docstring); `listed` are the
  names of the class-list file `class_list` ("" without one)."""
  labels = {label for file in files for row in file.rows for label in labels_of(row)}
  if class_list:
    if not listed:
      raise LabelFileError(f"config.data.class_list={class_list!r}: the file lists no class.")
    by_id = bool(labels) and all(map(is_id, labels)) and not any(map(is_id, listed))
    return Classes(listed, by_id, class_list)
  for file in files:
    if not file.declared:
      check_one_kind(file)
  labels |= {name for file in files for name in file.declared}
  if not labels:
    raise LabelFileError(
      f"{files[0].path}: no row has a label; expected at least one labelled image."
    )
  numeric = all(map(is_id, labels))
  return Classes(tuple(sorted(labels, key=int if numeric else str)), False)
