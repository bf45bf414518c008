"""The loss programs the benchmarks and `kmcl_jax.compare` measure: random inputs shaped
as the KMM head emits them, and the jitted (and compiled) value-and-gradient of
`kmcl_loss`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from kmcl_jax import losses


def make_inputs(batch: int, classes: int, dim: int, kernel: str, seed: int = 0) -> dict:
  """Random float32 inputs shaped as the KMM head emits them (about 3 labels per row)."""
  rng = np.random.default_rng(seed)
  gaussian_shape = (batch, dim, classes) if kernel == "anisotropic" else (batch, classes)
  return {
      "features": rng.normal(size=(batch, dim)).astype(np.float32),
      "logits": rng.normal(size=(batch, classes)).astype(np.float32),
      "mu": rng.normal(scale=0.5, size=gaussian_shape).astype(np.float32),
      "var": (2.0 + rng.exponential(size=gaussian_shape)).astype(np.float32),
      "labels": (rng.random((batch, classes)) < min(1.0, 3.0 / classes)).astype(np.float32),
  }


def jax_value_and_grad(kernel: str, block_size=None, mesh=None):
  """jit(inputs -> ((total, terms), grads w.r.t. features, logits, mu, var)); with `mesh`,
  the contrastive anchors are split over its "data" axis."""

  def loss(features, logits, mu, var, labels):
    return losses.kmcl_loss(features, logits, mu, var, labels, kernel=kernel,
                            block_size=block_size, mesh=mesh)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def compiled_value_and_grad(batch: int, classes: int, dim: int, kernel: str = "anisotropic",
                            mesh=None, split_anchors: bool = True):
  """The compiled value-and-grad at this size (default block size), for abstract inputs.

  With `mesh`, the inputs are sharded over its "data" axis and, if `split_anchors`, so
  are the contrastive term's anchors (otherwise XLA partitions the term as it likes).
  """
  shapes = make_inputs(1, classes, dim, kernel)
  sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec("data"))
  specs = [jax.ShapeDtypeStruct((batch,) + shapes[k].shape[1:], jnp.float32, sharding=sharding)
           for k in ("features", "logits", "mu", "var", "labels")]
  step = jax_value_and_grad(kernel, mesh=mesh if split_anchors else None)
  return step.lower(*specs).compile()


def peak_temporary_bytes(batch: int, classes: int, dim: int, kernel: str = "anisotropic",
                         mesh=None) -> int:
  """Compiled temporary memory of value-and-grad at this size (per device with `mesh`)."""
  compiled = compiled_value_and_grad(batch, classes, dim, kernel, mesh)
  return int(compiled.memory_analysis().temp_size_in_bytes)
