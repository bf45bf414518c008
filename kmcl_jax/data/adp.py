"""Atlas of Digital Pathology (ADP V1.0), level L1 (9 classes).

Layout (ROOT is the folder holding "ADP V1.0 Release", or that folder itself):
  ADP_EncodedLabels_Release1_Flat.csv   header "Patch Names,E,...", one 0/1 column per class
  splits/{train,valid,test}.npy         row indices into the CSV
  img_res_1um_bicubic/<patch name>
Splits: `train`, `valid`, `test`. Patches with no L1 label are dropped, as in the reference.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from kmcl_jax.data.image_files import (
  ImageFileSource,
  first_of_each_id,
  parse_error,
  require_directory,
  require_file,
)

CLASS_NAMES = ("E", "C", "H", "S", "A", "M", "N", "G", "T")
RELEASE = "ADP V1.0 Release"
CSV_NAME = "ADP_EncodedLabels_Release1_Flat.csv"
IMAGES = "img_res_1um_bicubic"
SPLITS = ("train", "valid", "test")
LAYOUT = f"{CSV_NAME}, splits/<split>.npy and {IMAGES}/ under it (or under '{RELEASE}/')"


def read_labels(path: str) -> tuple[list[str], np.ndarray]:
  """(patch names, float32 (N, 9) L1 labels) of every row of the flat label CSV."""
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, [])
    missing = [c for c in ("Patch Names",) + CLASS_NAMES if c not in header]
    if missing:
      raise parse_error(path, 1, ",".join(header), f"a header with columns {missing}")
    columns = [header.index(c) for c in CLASS_NAMES]
    names, labels = [], []
    for line_number, fields in enumerate(reader, 2):
      try:
        row = [float(fields[c]) for c in columns]
        if not set(row) <= {0.0, 1.0}:
          raise ValueError
      except (ValueError, IndexError):
        raise parse_error(
          path, line_number, ",".join(fields), "a patch name and 0/1 in every class column"
        ) from None
      names.append(fields[header.index("Patch Names")])
      labels.append(row)
  return names, np.array(labels, np.float32).reshape(-1, len(CLASS_NAMES))


def read_split(path: str, num_rows: int) -> np.ndarray:
  """int64 (n,) row indices into the label CSV from a split's .npy file: integers (or
  floats that are whole numbers), each in [0, num_rows)."""
  expected = f"a .npy array of integer row indices into {CSV_NAME}, each in [0, {num_rows})"
  try:
    values = np.asarray(np.load(path, allow_pickle=False)).reshape(-1)
  except (OSError, ValueError, EOFError) as error:
    raise ValueError(f"{path}: not readable as .npy ({error}); expected {expected}.") from None
  if values.dtype.kind == "f":
    fractional = values[~np.isfinite(values) | (values != np.round(values))]
    if fractional.size:
      raise ValueError(f"{path}: index {fractional[0]} is not a whole number; expected {expected}.")
  elif values.dtype.kind not in "iu":
    raise ValueError(f"{path}: holds {values.dtype} values, not row indices; expected {expected}.")
  values = values.astype(np.int64)
  outside = values[(values < 0) | (values >= num_rows)]
  if outside.size:
    raise ValueError(f"{path}: row index {outside[0]} is out of range; expected {expected}.")
  return values


def adp_source(split: str, root: str) -> ImageFileSource:
  if split not in SPLITS:
    raise ValueError(f"adp: unknown split {split!r}; expected one of {SPLITS}.")
  require_directory(root, "adp", LAYOUT)
  folder = os.path.join(root, RELEASE) if os.path.isdir(os.path.join(root, RELEASE)) else root
  csv_path = require_file(os.path.join(folder, CSV_NAME), "adp", LAYOUT)
  names, labels = read_labels(csv_path)
  split_path = require_file(os.path.join(folder, "splits", f"{split}.npy"), "adp", LAYOUT)
  rows = read_split(split_path, len(names))
  rows = rows[labels[rows].sum(axis=1) > 0]
  images = require_directory(os.path.join(folder, IMAGES), "adp", LAYOUT)
  patches = [names[r] for r in rows]
  rows = rows[first_of_each_id(patches, labels[rows], patches, csv_path)]
  return ImageFileSource(
    paths=[os.path.join(images, names[r]) for r in rows],
    labels=labels[rows],
    ignore=np.zeros((len(rows), len(CLASS_NAMES)), bool),
    ids=[names[r] for r in rows],
    class_names=CLASS_NAMES,
    name=f"adp {split} at {root}",
  )
