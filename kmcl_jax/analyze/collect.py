"""One pass of a trained model over a split, reduced on the device to what the analysis
reads: logits, per-class variances, and sums over the positive images of the class-pair
distances and of the class components (nothing N x K x K or N x D x K comes back)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kmcl_jax import losses
from kmcl_jax.mesh import replicated, to_global_batch
from kmcl_jax.models import KMCLModel
from kmcl_jax.reporting import progress
from kmcl_jax.state import TrainState
from kmcl_jax.steps import eval_outputs

# The sums over positives are float32 at full precision (see losses._dot).
_sum_over_positives = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)


def make_analysis_step(config, model: KMCLModel, variants: Sequence[str]):
  """(state, batch) -> {"positives", "ignore" (B, K) bool, "mask" (B,), and per variant
  {"logits" (B, K), "feature_sum" (D, K) (the features f summed over each class's
  positive images)} and, with a kernel head, "class_variance" (B, K) (the mean over
  dimensions of each component's variance), "pair_distance_sum" (K, K) (the class-pair
  BD of `losses.class_pair_distances` summed over the images positive for both),
  "mean_sum" and "variance_sum" (D, K) (each class's component summed over its
  positive images; D = 1 isotropic)}. A positive is a present, not ignored label of an
  image that is not padding."""
  kernel = config.model.kernel

  def step(state: TrainState, batch: dict) -> dict:
    positives = (batch["labels"] > 0) & ~batch["ignore"] & batch["mask"][:, None]
    y = positives.astype(jnp.float32)
    result = {"positives": positives, "ignore": batch["ignore"], "mask": batch["mask"]}
    for variant in variants:
      out = eval_outputs(config, model, state.weights(variant), batch["image"])
      outputs = {
        "logits": out["pi"].astype(jnp.float32),
        "feature_sum": _sum_over_positives("bk,bd->dk", y, out["features"]),
      }
      if out["mu"] is not None:
        distances = losses.class_pair_distances(
          out["mu"], out["var"], kernel=kernel, feature_dim=out["features"].shape[-1]
        )
        mu, var = (x if x.ndim == 3 else x[:, None, :] for x in (out["mu"], out["var"]))
        outputs |= {
          "class_variance": jnp.mean(var, axis=1),
          "pair_distance_sum": _sum_over_positives("bk,bl,bkl->kl", y, y, distances),
          "mean_sum": _sum_over_positives("bk,bdk->dk", y, mu),
          "variance_sum": _sum_over_positives("bk,bdk->dk", y, var),
        }
      result[variant] = outputs
    return result

  return step


def feature_dim(config, model: KMCLModel, state: TrainState) -> int:
  """D of the head's features f (the multiplier of its distances), from shapes alone."""
  size = config.data.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8)
  shapes = jax.eval_shape(
    lambda weights, x: eval_outputs(config, model, weights, x), state.weights("model"), images
  )
  return int(shapes["features"].shape[-1])


def collect(
  config,
  model: KMCLModel,
  state: TrainState,
  batches: Iterable[dict],
  total_batches: int,
  mesh: Mesh,
  variants: Sequence[str],
  what: str,
) -> dict:
  """`make_analysis_step` over every batch, with a progress bar named `what`: the
  per-image arrays of the real images (padding dropped) concatenated, the sums summed."""
  step = jax.jit(make_analysis_step(config, model, variants), out_shardings=replicated(mesh))
  parts = [
    jax.device_get(step(state, to_global_batch(batch, mesh)))
    for batch in progress(batches, total_batches, what, unit="batches")
  ]
  keep = np.concatenate([p["mask"] for p in parts])
  merged = {
    name: np.concatenate([p[name] for p in parts])[keep] for name in ("positives", "ignore")
  }
  for variant in variants:
    merged[variant] = {
      name: (
        np.concatenate([p[variant][name] for p in parts])[keep]
        if name in ("logits", "class_variance")
        else np.sum([p[variant][name] for p in parts], axis=0)
      )
      for name in parts[0][variant]
    }
  return merged
