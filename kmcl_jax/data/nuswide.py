"""NUS-WIDE (81 concepts) in the list layout used by ASL and the reference.

Layout (ROOT):
  nus_wid_data.csv   header, then rows "<image path>,<label list>,<split>", e.g.
                     images/0001.jpg,"['clouds', 'sky']",train
  <image path>       relative to ROOT
Splits: `train`, `val`. Classes are the sorted set of every label in the file (81 for
the standard release); "[]" is an image with no concept.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from kmcl_jax.data.image_files import (
  ImageFileSource,
  first_of_each_id,
  multi_hot,
  parse_error,
  require_directory,
  require_file,
)

SPLITS = ("train", "val")
CSV_NAME = "nus_wid_data.csv"
LAYOUT = f"{CSV_NAME} (columns: image path relative to the root, label list, split) under it"


def parse_label_list(text: str) -> list[str]:
  """ "['clouds', 'sky']" -> ['clouds', 'sky']; "[]" -> []."""
  inner = text.strip()
  if not (inner.startswith("[") and inner.endswith("]")):
    raise ValueError("not a bracketed list")
  return [name.strip(" '\"") for name in inner[1:-1].split(",") if name.strip(" '\"")]


def nuswide_source(split: str, root: str) -> ImageFileSource:
  if split not in SPLITS:
    raise ValueError(f"nuswide: unknown split {split!r}; expected one of {SPLITS}.")
  require_directory(root, "nuswide", LAYOUT)
  path = require_file(os.path.join(root, CSV_NAME), "nuswide", LAYOUT)
  rows = []
  with open(path, newline="") as f:
    for line_number, fields in enumerate(csv.reader(f), 1):
      if line_number == 1 or not fields:
        continue
      try:
        if len(fields) != 3 or fields[2] not in SPLITS:
          raise ValueError("wrong field count or split")
        rows.append((fields[0], parse_label_list(fields[1]), fields[2]))
      except ValueError:
        raise parse_error(
          path, line_number, ",".join(fields), "'<image path>,\"[<label>, ...]\",<train|val>'"
        ) from None
  class_names = sorted({name for _, names, _ in rows for name in names})
  index = {name: i for i, name in enumerate(class_names)}
  rows = [row for row in rows if row[2] == split]
  labels = multi_hot([[index[name] for name in names] for _, names, _ in rows], len(class_names))
  images = [image for image, _, _ in rows]
  keep = first_of_each_id(images, labels, images, path)
  rows, labels = [rows[k] for k in keep], labels[keep]
  return ImageFileSource(
    paths=[os.path.join(root, image) for image, _, _ in rows],
    labels=labels,
    ignore=np.zeros_like(labels, bool),
    ids=[image for image, _, _ in rows],
    class_names=class_names,
    name=f"nuswide {split} at {root}",
  )
