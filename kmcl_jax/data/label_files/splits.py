"""The rows of the training or the evaluation split: from their own files, from a split
column, or from one file split by a seeded fraction; an image on several rows is one
record."""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from kmcl_jax.data.label_files.rows import LabelFile, LabelRow
from kmcl_jax.data.label_files.text import LabelFileError

ROLES = ("train", "eval")


def split_rows(file: LabelFile, split: str, split_column: str) -> tuple[LabelRow, ...]:
  """The rows of `file` whose split-column value is `split` (all rows without a split
  column)."""
  values = {row.split for row in file.rows}
  if values == {""}:
    return file.rows
  rows = tuple(row for row in file.rows if row.split == split)
  if not rows:
    raise LabelFileError(
      f"{file.path}: no row has {split!r} in the column {split_column!r} (it holds "
      f"{sorted(values - {''})}); set config.data.train_split and data.eval_split to the "
      "values of its training and evaluation rows."
    )
  return rows


def held_out(images: list[str], fraction: float, seed: int) -> set[str]:
  """The images of a seeded draw of round(fraction * n) of the n `images` (at least one,
  never all): the same for the same images, fraction and seed."""
  if not 0 < fraction < 1:
    raise LabelFileError(
      f"config.data.holdout_fraction={fraction!r}: expected a fraction in (0, 1) of the "
      "training file's images to evaluate on (or set config.data.eval_labels)."
    )
  if len(images) < 2:
    raise LabelFileError(
      f"config.data.holdout_fraction: {len(images)} image(s) cannot be split into a "
      "training and an evaluation part."
    )
  count = min(max(1, round(fraction * len(images))), len(images) - 1)
  order = np.random.default_rng(seed).permutation(len(images))
  return {images[i] for i in order[:count]}


def role_rows(
  role: str,
  split: str,
  train_file: LabelFile,
  eval_file: LabelFile | None,
  split_column: str,
  holdout_fraction: float,
  split_seed: int,
) -> tuple[LabelFile, tuple[LabelRow, ...]]:
  """(the file, its rows) of the `role` split ("train" or "eval"), named `split` in a
  split column: its own file when there is an eval file, the rows of its split-column
  value, else a seeded holdout_fraction of the training file's images for "eval" and the
  rest for "train"."""
  if role not in ROLES:
    raise ValueError(f"labels: role={role!r}; expected one of {ROLES}.")
  file = eval_file if eval_file is not None and role == "eval" else train_file
  if eval_file is not None or any(row.split for row in file.rows):
    return file, split_rows(file, split, split_column)
  images = list(dict.fromkeys(row.image for row in file.rows))
  evaluation = held_out(images, holdout_fraction, split_seed)
  return file, tuple(row for row in file.rows if (row.image in evaluation) == (role == "eval"))


def merge_rows(file: LabelFile, rows: tuple[LabelRow, ...]) -> list[LabelRow]:
  """One row per image, in order of first appearance, with the labels of all its rows
  (positive wins over ignored). Rows of a long file are one label each by design; an
  image on several rows of another format is merged with a warning."""
  merged, first_where = {}, {}
  repeated = []
  for row in rows:
    seen = merged.get(row.image)
    if seen is None:
      merged[row.image], first_where[row.image] = row, row.where
      continue
    repeated.append(row)
    positive = tuple(dict.fromkeys(seen.positive + row.positive))
    ignored = tuple(n for n in dict.fromkeys(seen.ignored + row.ignored) if n not in positive)
    merged[row.image] = dataclasses.replace(seen, positive=positive, ignored=ignored)
  if repeated and file.format != "long":
    logging.warning(
      "%s: %d image row(s) repeat an image of an earlier row and their labels were merged "
      "(first: %r, %s and %s).",
      file.path,
      len(repeated),
      repeated[0].image,
      first_where[repeated[0].image],
      repeated[0].where,
    )
  return list(merged.values())
