"""What a split's labels say before anything trains: its statistics, and the cheap checks
the trainer runs at start and `python -m kmcl_jax.data.inspect` reports.

Reads labels only, never an image: a file or TFDS source's label arrays, or each
record's `annotations` (the demo set renders none to give them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from absl import logging


def split_labels(source) -> tuple[np.ndarray, np.ndarray]:
  """(labels bool (N, K), ignore bool (N, K)) of every record of `source`."""
  if hasattr(source, "labels") and hasattr(source, "ignore"):
    return np.asarray(source.labels) > 0, np.asarray(source.ignore, bool)
  num_classes = len(source.class_names)
  labels = np.zeros((len(source), num_classes), bool)
  ignore = np.zeros((len(source), num_classes), bool)
  for index in range(len(source)):
    record = source.annotations(index)
    labels[index], ignore[index] = np.asarray(record["labels"]) > 0, record["ignore"]
  return labels, ignore


@dataclasses.dataclass(frozen=True)
class SplitStatistics:
  """The labels of one split, counted.

  Attributes:
    name: the source's name (dataset and split).
    class_names: K names.
    images: N.
    positives: int (K,), images where each class is positive (difficult ones included).
    ignored: int (K,), images where each class is left out of AP (VOC "difficult").
    labels_per_image: int (L + 1,), images with 0, 1, ..., L positive classes.
    cooccurrence: int (K, K), images where both classes are positive; the diagonal is
      `positives`.
  """

  name: str
  class_names: tuple[str, ...]
  images: int
  positives: np.ndarray
  ignored: np.ndarray
  labels_per_image: np.ndarray
  cooccurrence: np.ndarray

  @property
  def absent(self) -> list[str]:
    """The classes without a positive image in this split."""
    return [
      name for name, count in zip(self.class_names, self.positives, strict=True) if count == 0
    ]


def split_statistics(source) -> SplitStatistics:
  """The SplitStatistics of every record of `source` (images are not read)."""
  labels, ignore = split_labels(source)
  counts = labels.astype(np.int64)
  return SplitStatistics(
    name=source.name,
    class_names=tuple(source.class_names),
    images=len(labels),
    positives=counts.sum(0),
    ignored=ignore.sum(0),
    labels_per_image=np.bincount(counts.sum(1), minlength=1),
    cooccurrence=counts.T @ counts,
  )


def require_images(source) -> None:
  """Raises ValueError if `source` has no images (nothing could train or be scored)."""
  if len(source) == 0:
    raise ValueError(
      f"{source.name}: the split has no images, so there is nothing to train on or "
      "evaluate; check data.root and the split's name (data.train_split, data.eval_split)."
    )


def absent_class_warning(statistics: SplitStatistics, training: bool) -> str | None:
  """One line naming the classes of a split without a positive image, or None."""
  if not statistics.absent:
    return None
  one = len(statistics.absent) == 1
  them, ap = ("it", "its AP is") if one else ("them", "their APs are")
  if training:
    return (
      f"{statistics.name}: no positive image of {_listed(statistics.absent)}, so the model "
      f"cannot learn {them} and {ap} undefined as a measure of what it learnt."
    )
  return (
    f"{statistics.name}: no positive image of {_listed(statistics.absent)}, so {ap} "
    "undefined (scored 0, which lowers mAP)."
  )


def check_training_splits(train_source, eval_source) -> None:
  """The trainer's start checks: an empty split is a ValueError; classes without a
  positive image in either split are a warning line each."""
  require_images(train_source)
  require_images(eval_source)
  for source, training in ((train_source, True), (eval_source, False)):
    line = absent_class_warning(split_statistics(source), training)
    if line:
      logging.warning("%s", line)


def _listed(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:10])
  more = f" and {len(names) - 10} more" if len(names) > 10 else ""
  return f"{len(names)} class{'es' if len(names) > 1 else ''} ({shown}{more})"
