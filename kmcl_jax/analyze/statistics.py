"""The numbers of an analysis, from arrays on the host: the data's label co-occurrence,
rank correlations between class-pair matrices, and a 2-D map of class vectors.

Notation: N images, K classes; `positives` is (N, K) bool, a label that is present and
not ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two classes count as a strong pair of the data when they co-occur at least this many
# times as often as independent classes would (PMI above its log).
STRONG_PAIR_RATIO = 2.0


def check_positives(positives: np.ndarray, class_names: Sequence[str], where: str) -> None:
  """Raises ValueError, in one sentence, when some class has no positive image in `where`
  (its co-occurrence, AP and learned components are then undefined)."""
  missing = [name for name, count in zip(class_names, positives.sum(0), strict=True) if not count]
  if missing:
    raise ValueError(
      f"{where} has no positive image of class {', '.join(map(repr, missing))}: its "
      "co-occurrence and learned components are undefined; analyse a split where every "
      "class occurs (--split)."
    )


def cooccurrence(positives: np.ndarray) -> dict[str, np.ndarray]:
  """The data's label statistics: {"counts" (K, K) images positive for both (the diagonal:
  for the class), "frequency" (K,) P(i), "conditional" (K, K) P(j | i) in row i,
  "pmi" (K, K) log P(i, j) / (P(i) P(j)), NaN for pairs that never co-occur}. Every
  class needs a positive image (`check_positives`)."""
  y = positives.astype(np.float64)
  counts = y.T @ y
  frequency = np.diag(counts) / len(y)
  joint = counts / len(y)
  with np.errstate(divide="ignore"):
    pmi = np.log(joint / np.outer(frequency, frequency))
  return {
    "counts": counts,
    "frequency": frequency,
    "conditional": counts / np.diag(counts)[:, None],
    "pmi": np.where(np.isfinite(pmi), pmi, np.nan),
  }


def upper_pairs(matrix: np.ndarray) -> np.ndarray:
  """The K (K - 1) / 2 entries above the diagonal of a (K, K) matrix, row by row."""
  return matrix[np.triu_indices(len(matrix), k=1)]


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """Ranks from 0, tied values sharing their mean rank."""
  order = np.argsort(values, kind="stable")
  ranks = np.empty(len(values))
  ranks[order] = np.arange(len(values))
  _, tie_group, tie_sizes = np.unique(values, return_inverse=True, return_counts=True)
  return (np.bincount(tie_group, weights=ranks) / tie_sizes)[tie_group]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rank correlation of two equal-length vectors over the entries finite in
  both; NaN with fewer than 3 such entries or a constant one."""
  keep = np.isfinite(a) & np.isfinite(b)
  if keep.sum() < 3:
    return math.nan
  ranks_a, ranks_b = _average_ranks(a[keep]), _average_ranks(b[keep])
  if ranks_a.std() == 0 or ranks_b.std() == 0:
    return math.nan
  return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def strong_pairs(pmi: np.ndarray) -> list[tuple[int, int]]:
  """The class pairs (i < j) that co-occur at least STRONG_PAIR_RATIO times as often as
  independent classes would, strongest first."""
  rows, columns = np.triu_indices(len(pmi), k=1)
  values = pmi[rows, columns]
  order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
  return [(int(rows[k]), int(columns[k])) for k in order if values[k] > math.log(STRONG_PAIR_RATIO)]


def top_pairs(affinity: np.ndarray, count: int) -> list[tuple[int, int]]:
  """The `count` class pairs (i < j) of highest affinity, highest first (NaN last)."""
  rows, columns = np.triu_indices(len(affinity), k=1)
  values = np.nan_to_num(affinity[rows, columns], nan=-np.inf)
  return [(int(rows[k]), int(columns[k])) for k in np.argsort(-values, kind="stable")[:count]]


def pair_agreement(pmi: np.ndarray, affinity: np.ndarray) -> dict:
  """How a learned (K, K) affinity (higher: closer) follows the data's PMI:
  {"rank_correlation" over the pairs both define, "pairs" that count, "recovered" the
  share of the data's `strong_pairs` among as many top pairs of the affinity,
  "nearest_partner" the share of the classes in a strong pair whose highest-affinity
  other class is a strong partner (per class, so blind to a class-wide scale of the
  affinity; both None without strong pairs)}."""
  data_pairs, learned = upper_pairs(pmi), upper_pairs(affinity)
  strong = strong_pairs(pmi)
  found = set(top_pairs(affinity, len(strong)))
  partners = {i: set() for pair in strong for i in pair}
  for i, j in strong:
    partners[i].add(j)
    partners[j].add(i)
  others = np.nan_to_num(affinity, nan=-np.inf)
  np.fill_diagonal(others, -np.inf)
  nearest = [int(np.argmax(others[i])) in partners[i] for i in partners]
  return {
    "rank_correlation": rank_correlation(data_pairs, learned),
    "pairs": int((np.isfinite(data_pairs) & np.isfinite(learned)).sum()),
    "recovered": len(found & set(strong)) / len(strong) if strong else None,
    "nearest_partner": float(np.mean(nearest)) if strong else None,
  }


def principal_map(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(K, D) class vectors -> ((K, 2) coordinates on their first two principal axes, the
  share of the variance each axis explains (2,)). Fewer than 2 dimensions are padded
  with zeros."""
  centred = points - points.mean(0)
  _, singular, axes = np.linalg.svd(centred, full_matrices=False)
  coordinates = centred @ axes[:2].T
  variance = singular**2
  explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
  pad = 2 - coordinates.shape[1]
  return np.pad(coordinates, ((0, 0), (0, pad))), np.pad(explained, (0, pad))
