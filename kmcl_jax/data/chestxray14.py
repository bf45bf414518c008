"""NIH Chest X-ray14 with the official patient-wise split.

Layout (ROOT):
  Data_Entry_2017.csv                 columns "Image Index", "Finding Labels" ("A|B" or
                                      "No Finding"), ...
  train_val_list.txt, test_list.txt   one image name per line
  images/<name>.png, or the release's images_001/images/ ... images_012/images/
Splits: `train_val` (86,524 images), `test` (25,596). 14 findings; "No Finding" is the
all-zero label. The grayscale scans are decoded as 3 equal channels.

The reference reads its own train and test CSVs (not published), drops the images with no
finding and then uses the first int(0.1 * n) of the n left, in the CSV's order, for
training AND for testing (its dataset's length is cut, so neither the shuffling loader
nor the test loader ever reaches the rest). `drop_no_finding=True, fraction=0.1` applies
that rule to the official lists, in their order; the defaults keep the lists whole.
"""

from __future__ import annotations

import csv
import glob
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

CLASS_NAMES = (
  "Atelectasis",
  "Cardiomegaly",
  "Effusion",
  "Infiltration",
  "Mass",
  "Nodule",
  "Pneumonia",
  "Pneumothorax",
  "Consolidation",
  "Edema",
  "Emphysema",
  "Fibrosis",
  "Pleural_Thickening",
  "Hernia",
)
NO_FINDING = "No Finding"
SPLITS = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
LAYOUT = (
  "Data_Entry_2017.csv, train_val_list.txt, test_list.txt and the PNGs in images/ "
  "or images_*/images/ under it"
)


def read_findings(path: str) -> dict[str, list[int]]:
  """{image name: finding indices} of Data_Entry_2017.csv."""
  index = {name: i for i, name in enumerate(CLASS_NAMES)}
  findings = {}
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, [])
    if header[:2] != ["Image Index", "Finding Labels"]:
      raise parse_error(path, 1, ",".join(header), "the header 'Image Index,Finding Labels,...'")
    for line_number, fields in enumerate(reader, 2):
      names = fields[1].split("|") if len(fields) > 1 else ["?"]
      if names == [NO_FINDING]:
        classes = []
      elif all(name in index for name in names):
        classes = sorted(index[name] for name in names)
      else:
        raise parse_error(
          path,
          line_number,
          ",".join(fields),
          f"an image name and findings from {CLASS_NAMES} joined by '|' or {NO_FINDING!r}",
        )
      if findings.get(fields[0], classes) != classes:
        raise parse_error(
          path, line_number, ",".join(fields), f"one row per image ({fields[0]!r} is listed twice)"
        )
      findings[fields[0]] = classes
  return findings


def image_folders(root: str) -> list[str]:
  return [
    d
    for d in [os.path.join(root, "images")]
    + sorted(glob.glob(os.path.join(root, "images_*", "images")))
    if os.path.isdir(d)
  ]


def chestxray14_source(
  split: str, root: str, drop_no_finding: bool = False, fraction: float = 1.0
) -> ImageFileSource:
  """The split's images in list order; without the "No Finding" ones if `drop_no_finding`,
  then the first int(fraction * n) of the n left."""
  if split not in SPLITS:
    raise ValueError(f"chestxray14: unknown split {split!r}; expected one of {tuple(SPLITS)}.")
  require_directory(root, "chestxray14", LAYOUT)
  findings = read_findings(
    require_file(os.path.join(root, "Data_Entry_2017.csv"), "chestxray14", LAYOUT)
  )
  list_path = require_file(os.path.join(root, SPLITS[split]), "chestxray14", LAYOUT)
  with open(list_path) as f:
    names = [line.strip() for line in f if line.strip()]
  for line_number, name in enumerate(names, 1):
    if name not in findings:
      raise ValueError(
        f"{list_path}, line {line_number}: image {name!r} is not in Data_Entry_2017.csv."
      )
  folder_of = {}
  for folder in reversed(image_folders(root)):
    folder_of.update(dict.fromkeys(os.listdir(folder), folder))
  unique = first_of_each_id(names, [findings[n] for n in names], names, list_path)
  names = [names[k] for k in unique]
  if drop_no_finding:
    names = [name for name in names if findings[name]]
  if not 0 < fraction <= 1:
    raise ValueError(f"chestxray14: fraction={fraction!r}; expected a fraction in (0, 1].")
  names = names[: int(len(names) * fraction)]
  missing = [name for name in names if name not in folder_of]
  if missing:
    raise FileNotFoundError(
      f"chestxray14: image {missing[0]!r} (and {len(missing) - 1} more) "
      f"not found; expected {LAYOUT}."
    )
  labels = multi_hot([findings[name] for name in names], len(CLASS_NAMES))
  return ImageFileSource(
    paths=[os.path.join(folder_of[name], name) for name in names],
    labels=labels,
    ignore=np.zeros_like(labels, bool),
    ids=names,
    class_names=CLASS_NAMES,
    name=f"chestxray14 {split} at {root}"
    + (" (no 'No Finding')" if drop_no_finding else "")
    + (f" (first {fraction:g})" if fraction < 1 else ""),
  )
