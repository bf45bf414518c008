"""What a trained run learned about its classes, from one pass over a split: the data's
label co-occurrence against the class affinity the model learned, the per-class
uncertainty (variance) against frequency and AP, and a 2-D map of the classes.

Learned affinities (higher: closer), each compared with the data's PMI over the class
pairs (Spearman's rank correlation, and the share of the data's strong pairs among the
affinity's top pairs):
  kernel_pair       minus the mean BD between the class-i and class-j components of one
                    image, over the images positive for both (a kernel head only)
  kernel_prototype  minus the BD between the classes' prototypes, each the mean of the
                    class's component (means and variances) over its positive images
  prototype_means   minus the Euclidean distance between the prototypes' means (what
                    the class map shows; BD also weighs the classes' variances, which
                    differ from class to class)
  logit_correlation the correlation of the two classes' logits over the split (any head;
                    a classifier that is always right reaches the labels' own correlation)
  classifier_cosine the cosine similarity of the two classes' weight vectors in the logit
                    layer (any head; the learned parameters alone, no image)
  feature_prototypes minus the Euclidean distance between the classes' mean features f
                    over their positive images (any head): the control for the
                    prototypes, since two classes that share most of their images have
                    close means of anything computed from the images
An ASL-only run has the last three.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from kmcl_jax import losses
from kmcl_jax import metrics as metrics_lib
from kmcl_jax.analyze import statistics


def _as_dict(class_names: Sequence[str], values: np.ndarray) -> dict[str, float]:
  return dict(zip(class_names, map(float, values), strict=True))


def kernel_affinities(
  outputs: dict, counts: np.ndarray, dim: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """({"kernel_pair", "kernel_prototype", "prototype_means"} (K, K) affinities (the
  module docstring's), prototype means (K, D),
  prototype variances (K, D)) from a variant's collected sums; `counts` (K, K) images
  positive for both classes, `dim` the head's feature dimension."""
  both = np.where(counts > 0, counts, np.nan)
  positives = np.diag(counts)
  prototype_mean = (outputs["mean_sum"] / positives).T
  prototype_variance = (outputs["variance_sum"] / positives).T
  prototype_distance = np.asarray(
    losses.class_pair_distances(
      jnp.asarray(prototype_mean.T[None]),
      jnp.asarray(prototype_variance.T[None]),
      kernel="anisotropic",  # an isotropic component is a 1-D one
      feature_dim=dim,
    )[0]
  )
  affinities = {
    "kernel_pair": -outputs["pair_distance_sum"] / both,
    "kernel_prototype": -prototype_distance.astype(np.float64),
    "prototype_means": -np.linalg.norm(prototype_mean[:, None] - prototype_mean[None], axis=-1),
  }
  return affinities, prototype_mean, prototype_variance


def logit_correlation(logits: np.ndarray) -> np.ndarray:
  """(K, K) correlation of the classes' logits over the images (NaN for a constant one)."""
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.corrcoef(logits.T.astype(np.float64))


def analyse_variant(
  outputs: dict,
  positives: np.ndarray,
  ignore: np.ndarray,
  data: dict,
  class_names: Sequence[str],
  dim: int,
  classifier: np.ndarray,
) -> tuple[dict, dict]:
  """(the JSON record of one variant, the arrays its plots draw) from its collected
  outputs, the split's `positives` and `ignore` (N, K), the data's `cooccurrence` statistics, the
  head's feature dimension and the classifier's weights (D, K), the logit layer's
  kernel (the class map of a head without kernels)."""
  scores = 1.0 / (1.0 + np.exp(-outputs["logits"].astype(np.float64)))
  ap = 100 * metrics_lib.average_precision(scores, positives.astype(np.float32), ignore)
  unit_weights = classifier / np.linalg.norm(classifier, axis=0, keepdims=True)
  feature_prototypes = (outputs["feature_sum"] / positives.sum(0)).T
  affinities = {
    "logit_correlation": logit_correlation(outputs["logits"]),
    "classifier_cosine": unit_weights.T @ unit_weights,
    "feature_prototypes": -np.linalg.norm(
      feature_prototypes[:, None] - feature_prototypes[None], axis=-1
    ),
  }
  record = {"map": float(ap.mean()), "ap": _as_dict(class_names, ap)}
  plotted = {"ap": ap, "affinities": affinities}
  if "class_variance" in outputs:
    kernels, prototype_mean, prototype_variance = kernel_affinities(outputs, data["counts"], dim)
    affinities = kernels | affinities
    variance = np.array(
      [outputs["class_variance"][positives[:, k], k].mean() for k in range(len(class_names))]
    )
    record["uncertainty"] = {
      "class_variance": _as_dict(class_names, variance),
      "rank_correlation_with_frequency": statistics.rank_correlation(variance, data["frequency"]),
      "rank_correlation_with_ap": statistics.rank_correlation(variance, ap),
      "what": "the mean over dimensions of each class's component variance, averaged over "
      "the images positive for the class",
    }
    if prototype_mean.shape[1] > 1:
      map_points, map_what = prototype_mean, "PCA of the class prototypes' means"
    else:
      map_points = np.concatenate([prototype_mean, prototype_variance], axis=1)
      map_what = "PCA of the class prototypes' (mean, variance): one of each, isotropic"
    plotted["variance"] = variance
  else:
    record["uncertainty"] = None
    map_points, map_what = classifier.T, "PCA of the classifier's weight vectors (no kernel head)"
  coordinates, explained = statistics.principal_map(map_points)
  record["affinity"] = {
    name: {
      **statistics.pair_agreement(data["pmi"], matrix),
      "matrix": matrix,
    }
    for name, matrix in affinities.items()
  }
  record["class_map"] = {
    "what": map_what,
    "explained_variance": explained,
    "points": {name: point for name, point in zip(class_names, coordinates.tolist(), strict=True)},
  }
  plotted |= {"affinities": affinities, "map": coordinates, "map_what": map_what}
  return record, plotted
