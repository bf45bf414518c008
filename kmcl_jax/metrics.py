"""The evaluation protocol of the reference (spec section 4), in NumPy.

- Per-class AP is non-interpolated: ignored entries removed, scores sorted descending,
  AP = mean over positives of the precision at that positive's rank; a class with no
  positive gets AP 0. mAP = 100 * mean AP.
- OP, OR, OF1, CP, CR, CF1 at score >= threshold, and the same with each image's top-3
  scores only (a top-3 entry still needs score >= threshold). Here ignored entries count
  as negatives, as in the reference; a class predicted nowhere counts 1 prediction.
  These are fractions in [0, 1]; a NaN F1 is reported as 0.
Ties keep the input order (a stable sort), so results do not depend on the platform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The thresholded metrics `multilabel_metrics` reports besides mAP, fractions in [0, 1]:
# overall and per-class-averaged precision, recall and F1, then the same over each
# image's top-3 scores.
THRESHOLD_METRICS = (
  "OP",
  "OR",
  "OF1",
  "CP",
  "CR",
  "CF1",
  "OP_3",
  "OR_3",
  "OF1_3",
  "CP_3",
  "CR_3",
  "CF1_3",
)


def average_precision(
  scores: np.ndarray, targets: np.ndarray, ignore: np.ndarray | None = None
) -> np.ndarray:
  """Per-class AP of scores (N, K) against binary targets (N, K); ignore bool (N, K)."""
  ap = np.zeros(scores.shape[1])
  for k in range(scores.shape[1]):
    keep = slice(None) if ignore is None else ~ignore[:, k]
    order = np.argsort(-scores[keep, k], kind="stable")
    hits = targets[keep, k][order] == 1
    if hits.any():
      precision_at_rank = np.cumsum(hits) / np.arange(1, len(hits) + 1)
      ap[k] = precision_at_rank[hits].mean()
  return ap


def _precision_recall_f1(predicted: np.ndarray, targets: np.ndarray) -> dict[str, float]:
  correct = (predicted & targets).sum(0).astype(np.float64)
  predictions = predicted.sum(0).astype(np.float64)
  positives = targets.sum(0).astype(np.float64)
  predictions[predictions == 0] = 1
  with np.errstate(divide="ignore", invalid="ignore"):
    op = correct.sum() / predictions.sum()
    orecall = correct.sum() / positives.sum()
    of1 = 2 * op * orecall / (op + orecall)
    cp = np.mean(correct / predictions)
    cr = np.mean(correct / positives)
    cf1 = 2 * cp * cr / (cp + cr)
  return {
    "OP": float(op),
    "OR": float(orecall),
    "OF1": float(np.nan_to_num(of1, nan=0.0)),
    "CP": float(cp),
    "CR": float(cr),
    "CF1": float(np.nan_to_num(cf1, nan=0.0)),
  }


def multilabel_metrics(
  scores: np.ndarray,
  targets: np.ndarray,
  *,
  ignore: np.ndarray | None = None,
  threshold: float = 0.8,
) -> dict[str, float | np.ndarray]:
  """mAP (%), per-class AP (K,) and the F1-type metrics of the reference.

  Args:
    scores: (N, K) probabilities.
    targets: (N, K) in {0, 1}.
    ignore: optional bool (N, K); entries left out of AP (counted negative elsewhere).
    threshold: score at or above which a class is predicted.

  Returns:
    {"map", "ap", *THRESHOLD_METRICS}.
  """
  scores = np.asarray(scores, np.float64)
  targets = np.asarray(targets)
  if scores.ndim != 2 or scores.shape != targets.shape:
    raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, K).")
  if not np.isin(targets, (0, 1)).all():
    raise ValueError("targets must be 0 or 1.")
  if ignore is not None:
    ignore = np.asarray(ignore, bool)
    if ignore.shape != targets.shape:
      raise ValueError(f"ignore {ignore.shape} must match targets {targets.shape}.")
  ap = average_precision(scores, targets, ignore)
  positive = (targets == 1) if ignore is None else (targets == 1) & ~ignore
  predicted = scores >= threshold
  top = np.argsort(-scores, axis=1, kind="stable")[:, :3]
  in_top3 = np.zeros_like(predicted)
  np.put_along_axis(in_top3, top, True, axis=1)
  result = {"map": float(100 * ap.mean()), "ap": ap}
  result.update(_precision_recall_f1(predicted, positive))
  result.update(
    {
      f"{name}_3": value
      for name, value in _precision_recall_f1(predicted & in_top3, positive).items()
    }
  )
  return result


def ap_table(ap: np.ndarray, class_names: Sequence[str]) -> str:
  """Per-class AP (%) as an aligned text table, one class per line."""
  width = max(len(name) for name in class_names)
  lines = [f"{'class':<{width}}  AP %"]
  lines += [
    f"{name:<{width}}  {100 * value:6.2f}" for name, value in zip(class_names, ap, strict=True)
  ]
  return "\n".join(lines)
