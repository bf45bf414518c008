"""Prints the KMCL loss of one batch under both contrastive scopes on 4 simulated CPU
devices, and the per-device reference values, as JSON (tests/test_train.py runs it)."""

import json
import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo  # noqa: E402
from kmcl_jax import losses, train  # noqa: E402


def main():
  config = demo.get_config("smoke")
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rng = np.random.default_rng(0)
  b, d, k = 8, 128, 10
  out = {"features": rng.normal(size=(b, d)).astype(np.float32),
         "pi": rng.normal(size=(b, k)).astype(np.float32),
         "mu": rng.normal(size=(b, d, k)).astype(np.float32) * 0.1,
         "var": (2 + rng.random((b, d, k))).astype(np.float32)}
  labels = (rng.random((b, k)) < 0.3).astype(np.float32)
  sharded = jax.device_put((out, labels), NamedSharding(mesh, P("data")))
  result = {}
  for scope in ("global", "device"):
    config.contrastive_scope = scope
    total, terms = jax.jit(train.scoped_loss(config, mesh))(*sharded)
    result[scope] = {"total": float(total), **{t: float(v) for t, v in terms.items()}}
  chunks = [losses.kmcl_loss(out["features"][i:i + 2], out["pi"][i:i + 2], out["mu"][i:i + 2],
                             out["var"][i:i + 2], labels[i:i + 2]) for i in range(0, b, 2)]
  result["per_device_mean"] = {
      "total": float(np.mean([c[0] for c in chunks])),
      **{t: float(np.mean([c[1][t] for c in chunks])) for t in chunks[0][1]}}
  whole = losses.kmcl_loss(out["features"], out["pi"], out["mu"], out["var"], labels)
  result["whole_batch"] = {"total": float(whole[0]), **{t: float(v) for t, v in whole[1].items()}}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
