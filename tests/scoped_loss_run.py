"""Prints, as JSON, for the KMCL loss on 4 simulated CPU devices: its value on one batch
under both contrastive scopes with the per-device reference values, how far the
gradients of the loss with its contrastive anchors split over the devices are from the
unsplit loss's, and the precision of every dot product of its value and gradient
(tests/test_steps.py runs it)."""

import json
import os

import jax

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402

from kmcl_jax import config as config_lib  # noqa: E402
from kmcl_jax import losses  # noqa: E402
from kmcl_jax.mesh import batch_sharded, create_mesh  # noqa: E402
from kmcl_jax.steps import scoped_loss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  config = config_lib.load(os.path.join(ROOT, "configs", "demo.py:smoke"))
  mesh = create_mesh()
  rng = np.random.default_rng(0)
  b, d, k = 8, 128, 10
  out = {
    "features": rng.normal(size=(b, d)).astype(np.float32),
    "pi": rng.normal(size=(b, k)).astype(np.float32),
    "mu": rng.normal(size=(b, d, k)).astype(np.float32) * 0.1,
    "var": (2 + rng.random((b, d, k))).astype(np.float32),
  }
  labels = (rng.random((b, k)) < 0.3).astype(np.float32)
  sharded = jax.device_put((out, labels), batch_sharded(mesh))
  result = {}
  for scope in ("global", "device"):
    config.contrastive_scope = scope
    total, terms, _ = jax.jit(scoped_loss(config, mesh))(*sharded)
    result[scope] = {"total": float(total), **{t: float(v) for t, v in terms.items()}}
  # The reference's balance of the terms (its loss at 64 images) at either scope: ASL is
  # rescaled for the 8 images of the batch, or for each device's 2.
  balance = {"reference_batch": config.loss.reference_batch}
  chunks = [
    losses.kmcl_loss(
      out["features"][i : i + 2],
      out["pi"][i : i + 2],
      out["mu"][i : i + 2],
      out["var"][i : i + 2],
      labels[i : i + 2],
      **balance,
    )
    for i in range(0, b, 2)
  ]
  result["per_device_mean"] = {
    "total": float(np.mean([c[0] for c in chunks])),
    **{t: float(np.mean([c[1][t] for c in chunks])) for t in chunks[0][1]},
  }
  whole = losses.kmcl_loss(out["features"], out["pi"], out["mu"], out["var"], labels, **balance)
  result["whole_batch"] = {"total": float(whole[0]), **{t: float(v) for t, v in whole[1].items()}}
  result["split_anchors"] = split_anchor_differences(mesh, rng)
  result["dot_precision"] = dot_precisions(mesh, rng)
  try:  # 6 rows do not split over 4 devices
    losses.contrastive_loss(
      np.ones((6, 3)),
      np.ones((6, 3)),
      np.ones((6, 3)),
      kernel="isotropic",
      feature_dim=4,
      mesh=mesh,
    )
  except ValueError as error:
    result["uneven_split_error"] = str(error)
  print(json.dumps(result))


def split_anchor_differences(mesh, rng):
  """Max relative differences, split over `mesh` vs not, of the loss and its gradients.

  B = 12 is 3 anchors per device, walked in blocks of 2: an uneven last block.
  """
  b, d, k = 12, 16, 6
  differences = {}
  for kernel, shape in (("anisotropic", (b, d, k)), ("isotropic", (b, k))):
    args = [
      rng.normal(size=(b, d)),
      rng.normal(size=(b, k)),
      0.5 * rng.normal(size=shape),
      2 + rng.random(shape),
      rng.random((b, k)) < 0.4,
    ]
    args = [np.asarray(a, np.float32) for a in args]

    def loss(features, logits, mu, var, labels, split, kernel=kernel):
      return losses.kmcl_loss(
        features, logits, mu, var, labels, kernel=kernel, block_size=2, mesh=mesh if split else None
      )[0]

    whole = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=5)(*args, False)
    split = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=5)(
      *jax.device_put(args, batch_sharded(mesh)), True
    )
    differences[kernel] = {"loss": abs(float(split[0]) / float(whole[0]) - 1)}
    for name, g_split, g_whole in zip(
      ("features", "logits", "mu", "var"), split[1], whole[1], strict=True
    ):
      differences[kernel][name] = float(np.max(np.abs(g_split - g_whole)) / np.max(np.abs(g_whole)))
  return differences


def dot_precisions(mesh, rng):
  """{kernel: {"whole" | "split": [dots, dots not at HIGHEST precision]}} in the lowered
  value and gradient of the loss, unsplit and split over `mesh`."""
  b, d, k = 8, 16, 6
  counts = {}
  for kernel, shape in (("anisotropic", (b, d, k)), ("isotropic", (b, k))):
    args = [
      rng.normal(size=(b, d)),
      rng.normal(size=(b, k)),
      rng.normal(size=shape),
      2 + rng.random(shape),
      rng.random((b, k)) < 0.4,
    ]
    args = [np.asarray(a, np.float32) for a in args]
    counts[kernel] = {}
    for name, split in (("whole", None), ("split", mesh)):

      def loss(features, logits, mu, var, labels, split=split, kernel=kernel):
        return losses.kmcl_loss(features, logits, mu, var, labels, kernel=kernel, mesh=split)[0]

      text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))).lower(*args).as_text()
      dots = [line for line in text.splitlines() if "dot_general" in line]
      counts[kernel][name] = [
        len(dots),
        sum("precision = [HIGHEST, HIGHEST]" not in dot for dot in dots),
      ]
  return counts


if __name__ == "__main__":
  main()
