"""The loss programs the benchmarks and `kmcl_jax.compare` measure: random inputs shaped
as the KMM head emits them, the jitted (and compiled) value-and-gradient of
`kmcl_loss`, and the one term-by-term comparison with the authors' loss that both the
loss benchmark and `kmcl_jax.compare` report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from kmcl_jax import losses
from kmcl_jax.benchmarks import baseline
from kmcl_jax.benchmarks.timing import median_seconds
from kmcl_jax.mesh import DATA_AXIS

# The head outputs the loss is differentiated with respect to, then the labels: the
# argument order of `losses.kmcl_loss` and the keys of `make_inputs`.
HEAD_OUTPUTS = ("features", "pi", "mu", "var")
LOSS_INPUTS = (*HEAD_OUTPUTS, "labels")


def make_inputs(batch: int, classes: int, dim: int, kernel: str, seed: int = 0) -> dict:
  """Random float32 inputs shaped as the KMM head emits them (about 3 labels per row):
  "features" (B, D), "pi" (B, K) logits, "mu"/"var" (B, D, K) for the anisotropic
  kernel or (B, K) for the isotropic one, "labels" (B, K) in {0, 1}."""
  rng = np.random.default_rng(seed)
  gaussian_shape = (batch, dim, classes) if kernel == "anisotropic" else (batch, classes)
  return {
    "features": rng.normal(size=(batch, dim)).astype(np.float32),
    "pi": rng.normal(size=(batch, classes)).astype(np.float32),
    "mu": rng.normal(scale=0.5, size=gaussian_shape).astype(np.float32),
    "var": (2.0 + rng.exponential(size=gaussian_shape)).astype(np.float32),
    "labels": (rng.random((batch, classes)) < min(1.0, 3.0 / classes)).astype(np.float32),
  }


def loss_arguments(inputs: dict, sharding=None) -> list[jax.Array]:
  """`make_inputs`' arrays in `LOSS_INPUTS` order, on the default device or `sharding`."""
  return [jax.device_put(jnp.asarray(inputs[k]), sharding) for k in LOSS_INPUTS]


def jax_value_and_grad(kernel: str, block_size=None, mesh=None):
  """jit(features, pi, mu, var, labels -> ((total, terms), grads w.r.t. the four head
  outputs)); with `mesh`, the contrastive anchors are split over its `DATA_AXIS`."""

  def loss(features, pi, mu, var, labels):
    return losses.kmcl_loss(
      features, pi, mu, var, labels, kernel=kernel, block_size=block_size, mesh=mesh
    )

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def time_loss(inputs: dict, kernel: str, repeats: int, mesh=None) -> tuple[float, float]:
  """(median seconds, total loss) of `jax_value_and_grad` on `inputs` over `repeats` runs
  after one untimed run that compiles; with `mesh`, the inputs are sharded over its
  `DATA_AXIS` and so are the contrastive anchors."""
  sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  step = jax_value_and_grad(kernel, mesh=mesh)
  args = loss_arguments(inputs, sharding)
  (total, _), _ = step(*args)
  return median_seconds(lambda: jax.block_until_ready(step(*args)), repeats), float(total)


def compiled_value_and_grad(
  batch: int,
  classes: int,
  dim: int,
  kernel: str = "anisotropic",
  mesh=None,
  split_anchors: bool = True,
):
  """The compiled value-and-grad at this size (default block size), for abstract inputs.

  With `mesh`, the inputs are sharded over its `DATA_AXIS` and, if `split_anchors`, so
  are the contrastive term's anchors (otherwise XLA partitions the term as it likes).
  """
  shapes = make_inputs(1, classes, dim, kernel)
  sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  specs = [
    jax.ShapeDtypeStruct((batch,) + shapes[k].shape[1:], jnp.float32, sharding=sharding)
    for k in LOSS_INPUTS
  ]
  step = jax_value_and_grad(kernel, mesh=mesh if split_anchors else None)
  return step.lower(*specs).compile()


def peak_temporary_bytes(
  batch: int, classes: int, dim: int, kernel: str = "anisotropic", mesh=None
) -> int:
  """Compiled temporary memory of value-and-grad at this size (per device with `mesh`)."""
  compiled = compiled_value_and_grad(batch, classes, dim, kernel, mesh)
  return int(compiled.memory_analysis().temp_size_in_bytes)


# --------------------------------------------------------------------------------------
# Parity with the authors' loss.
# --------------------------------------------------------------------------------------


def relative_difference(ours, theirs) -> float:
  """max |ours - theirs| / max |theirs| (the absolute difference when theirs is all zero)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
  error = float(np.max(np.abs(ours - theirs))) if theirs.size else 0.0
  return error / scale if scale > 0 else error


def _synchronize(on_gpu: bool) -> None:
  if on_gpu:
    import torch

    torch.cuda.synchronize()


def loss_parity(
  baseline_dir: str, kernel: str, inputs: dict, repeats: int, on_gpu: bool = False
) -> dict:
  """Ours (`losses.kmcl_loss`) against their `KMCL_Loss` on `inputs` (`make_inputs`),
  both in float32.

  Returns {"terms": {term: {"ours", "theirs", "value_rel_diff", "grad_rel_diff"}},
  "ours_ms", "theirs_ms", "speedup"}: for each of `losses.TERMS` both values, their
  `relative_difference` and the largest `relative_difference` of the term's gradients
  with respect to the four head outputs (a gradient their code does not produce counts
  as zero); then the median time in milliseconds of the total's forward + backward over
  `repeats` runs, and their time over ours.
  """
  import torch

  args = loss_arguments(inputs)
  ours = {}
  for term in losses.TERMS:
    value_and_grad = jax.jit(
      jax.value_and_grad(
        lambda *a, term=term: losses.kmcl_loss(*a, kernel=kernel)[1][term], argnums=(0, 1, 2, 3)
      )
    )
    value, grads = value_and_grad(*args)
    ours[term] = (float(value), [np.asarray(g) for g in grads])
  ours_seconds, _ = time_loss(inputs, kernel, repeats)

  forward = baseline.loss_terms(baseline_dir, kernel, inputs, on_gpu)

  def forward_backward():
    _, terms = forward()
    sum(terms.values()).backward()
    _synchronize(on_gpu)

  rows = {}
  with baseline.device_context(on_gpu):
    leaves, terms = forward()
    for term in losses.TERMS:
      grads = torch.autograd.grad(terms[term], leaves, retain_graph=True, allow_unused=True)
      theirs = [
        np.zeros(leaf.shape, np.float32) if g is None else g.detach().cpu().numpy()
        for leaf, g in zip(leaves, grads, strict=True)
      ]
      value, ours_grads = ours[term]
      rows[term] = {
        "ours": value,
        "theirs": terms[term].item(),
        "value_rel_diff": relative_difference(value, terms[term].item()),
        "grad_rel_diff": max(
          relative_difference(o, t) for o, t in zip(ours_grads, theirs, strict=True)
        ),
      }
    theirs_seconds = median_seconds(forward_backward, repeats)
  return {
    "terms": rows,
    "ours_ms": ours_seconds * 1e3,
    "theirs_ms": theirs_seconds * 1e3,
    "speedup": theirs_seconds / ours_seconds,
  }
