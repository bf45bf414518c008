"""`labels_source`: the training or evaluation split of the user's own images and label
files, as an ImageFileSource (see the package docstring)."""

from __future__ import annotations

import os
import posixpath

import numpy as np
from absl import logging

from kmcl_jax.data.image_files import ImageFileSource
from kmcl_jax.data.label_files.classes import Classes, find_classes, read_class_list
from kmcl_jax.data.label_files.formats import AUTO, read_label_file
from kmcl_jax.data.label_files.rows import Columns, LabelFile, LabelRow
from kmcl_jax.data.label_files.splits import merge_rows, role_rows
from kmcl_jax.data.label_files.text import LabelFileError, row_error
from kmcl_jax.files import files_exist

NAME = "labels"
STAT_THREADS = 16  # file-existence checks overlap (on gs:// each is a request)


def image_path(image: str, folder: str, extension: str) -> str:
  """Where the image a label file names is: under `folder` (unless absolute or a URL),
  with `extension` added to a name that has none."""
  if extension and not posixpath.splitext(image)[1]:
    image += extension if extension.startswith(".") else f".{extension}"
  if "://" in image or os.path.isabs(image):
    return image
  return posixpath.join(folder, image) if "://" in folder else os.path.join(folder, image)


def images_folder(root: str, file: LabelFile) -> str:
  """config.data.root, or the label file's folder when it is empty."""
  if root:
    return root
  return posixpath.dirname(file.path) if "://" in file.path else os.path.dirname(file.path)


def drop_missing(
  file: LabelFile, rows: list[LabelRow], paths: list[str], role: str, skip_corrupt: bool
) -> list[int]:
  """The positions of the rows whose image file exists. A missing one is a LabelFileError
  naming the label file, row and image, unless `skip_corrupt` (then they are listed in
  a warning and left out)."""
  exists = files_exist(paths, STAT_THREADS)
  missing = [k for k, found in enumerate(exists) if not found]
  if missing and not skip_corrupt:
    first = missing[0]
    raise row_error(
      file.path,
      rows[first].where,
      f"image {rows[first].image!r} is not at {paths[first]!r} ({len(missing)} of the "
      f"{len(rows)} images of the {role} split are missing; config.data.root is the folder "
      "the image names are relative to, config.data.skip_corrupt=True leaves the missing "
      "ones out)",
    )
  if missing:
    logging.warning(
      "%s: %d of the %d images of the %s split are missing and left out (data.skip_corrupt): %s",
      file.path,
      len(missing),
      len(rows),
      role,
      ", ".join(f"{rows[k].where} {paths[k]}" for k in missing),
    )
  return [k for k, found in enumerate(exists) if found]


def label_matrices(
  file: LabelFile, rows: list[LabelRow], classes: Classes
) -> tuple[np.ndarray, np.ndarray]:
  """(labels float32 (N, K), ignore bool (N, K)) of `rows`: ignored labels are positive
  for training and left out of AP, as VOC's difficult."""
  labels = np.zeros((len(rows), len(classes.names)), np.float32)
  ignore = np.zeros_like(labels, bool)
  for n, row in enumerate(rows):
    for label in row.positive + row.ignored:
      labels[n, classes.index(file, row, label)] = 1.0
    for label in row.ignored:
      ignore[n, classes.index(file, row, label)] = True
  return labels, ignore


def labels_source(
  split: str,
  root: str,
  *,
  role: str,
  train_labels: str,
  eval_labels: str = "",
  labels_format: str = AUTO,
  class_list: str = "",
  image_extension: str = "",
  image_column: str = "",
  label_column: str = "",
  split_column: str = "split",
  holdout_fraction: float = 0.1,
  split_seed: int = 0,
  skip_corrupt: bool = False,
) -> ImageFileSource:
  """The `role` ("train" or "eval") split of the images and label files the config names.

  Args:
    split: the split's value in a split column (config.data.train_split or eval_split).
    root: the folder image names are relative to, local or gs:// ("" = each label file's).
    role: "train" or "eval".
    train_labels: the training label file (or the one file of every split).
    eval_labels: the evaluation label file; "" = the split column, or a held-out draw.
    labels_format: "auto" or one of FORMATS.
    class_list: a file of class names, one per line, in label order ("" = sorted).
    image_extension: added to image names that have none (".jpg").
    image_column, label_column, split_column: see `Columns`.
    holdout_fraction, split_seed: without eval file or split column, the fraction of
      the training file's images evaluated on, drawn with this seed.
    skip_corrupt: leave images that are missing out (with a warning) instead of failing.
  """
  if not train_labels:
    raise LabelFileError(
      "config.data.train_labels is empty: pass the label file of your images "
      "(--config.data.train_labels=labels.csv; see configs/custom.py)."
    )
  choice = Columns(image_column, label_column, split_column)
  named = read_class_list(class_list) if class_list else ()
  train_file = read_label_file(
    train_labels, labels_format, choice, named, "config.data.train_labels"
  )
  eval_file = (
    read_label_file(eval_labels, labels_format, choice, named, "config.data.eval_labels")
    if eval_labels
    else None
  )
  classes = find_classes([f for f in (train_file, eval_file) if f is not None], class_list, named)
  file, rows = role_rows(
    role, split, train_file, eval_file, split_column, holdout_fraction, split_seed
  )
  rows = merge_rows(file, rows)
  folder = images_folder(root, file)
  paths = [image_path(row.image, folder, image_extension) for row in rows]
  keep = drop_missing(file, rows, paths, role, skip_corrupt)
  rows, paths = [rows[k] for k in keep], [paths[k] for k in keep]
  labels, ignore = label_matrices(file, rows, classes)
  return ImageFileSource(
    paths=paths,
    labels=labels,
    ignore=ignore,
    ids=[row.image for row in rows],
    class_names=classes.names,
    name=f"the {role} split of {file.path} ({file.format})",
  )
