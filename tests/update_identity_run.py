"""Runs `steps.jit_steps`' train step with each update layout and the same step with the
update of tests/step_oracle.py (the step before `optim.update_or_skip`) from the same
state on the same batches (the second with a NaN label: a skipped step), and prints one
JSON line: for each layout, per part of the state the leaves whose bits differ from the
oracle's, the metrics of both, the counters. tests/test_steps.py runs it in a
subprocess, so that XLA_FLAGS can be set before JAX starts.

  python tests/update_identity_run.py STEPS LAYOUT...
"""

import contextlib
import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's kmcl_jax, not an installed one

from step_oracle import per_leaf_updates  # noqa: E402

from kmcl_jax import config as config_lib  # noqa: E402
from kmcl_jax import optim  # noqa: E402
from kmcl_jax.mesh import batch_sharded, create_mesh, replicated  # noqa: E402
from kmcl_jax.state import create_model, initial_state  # noqa: E402
from kmcl_jax.steps import jit_steps  # noqa: E402

PARTS = ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats")


def host_batches(count: int, classes: int):
  """`count` batches of 8 images of 32 px; the second has a NaN label (a skipped step)."""
  rng = np.random.default_rng(0)
  out = []
  for i in range(count):
    labels = (rng.random((8, classes)) < 0.3).astype(np.float32)
    if i == 1:
      labels[0, 0] = np.nan
    out.append(
      {
        "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "labels": labels,
        "ignore": np.zeros((8, classes), bool),
        "skipped": np.zeros(8, np.int32),
      }
    )
  return out


def run(config, batches, classes: int, layout: str | None):
  """(final state, metrics of every step) of the train step with `layout`, or with the
  oracle's update (layout None)."""
  config = config.copy_and_resolve_references()
  config.update_layout = layout or "auto"
  model = create_model(config, classes)
  optimizer = optim.create_optimizer(config.optim, config.train_steps)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  global_batches = [
    {k: jax.device_put(v, batch_sharded(mesh)) for k, v in batch.items()} for batch in batches
  ]
  with per_leaf_updates() if layout is None else contextlib.nullcontext():
    step = (
      jit_steps(config, model, optimizer, mesh, state)[0].lower(state, global_batches[0]).compile()
    )
  metrics = []
  for batch in global_batches:
    state, step_metrics = step(state, batch)
    metrics.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
  return jax.device_get(state), metrics


def main():
  count, layouts = int(sys.argv[1]), sys.argv[2:]
  config = config_lib.load(os.path.join(ROOT, "configs", "demo.py:smoke"))
  config.optim.lr = 1e-3
  classes = 10
  batches = host_batches(count, classes)
  oracle, oracle_metrics = run(config, batches, classes, None)
  result = {"oracle_metrics": oracle_metrics}
  for layout in layouts:
    state, metrics = run(config, batches, classes, layout)
    different = {}
    for part in PARTS:
      ours = jax.tree_util.tree_leaves_with_path(getattr(state, part))
      theirs = jax.tree.leaves(getattr(oracle, part))
      different[part] = [
        jax.tree_util.keystr(path)
        for (path, x), y in zip(ours, theirs, strict=True)
        if np.asarray(x).tobytes() != np.asarray(y).tobytes()
      ]
      different[part + "_leaves"] = len(theirs)
    result[layout] = {
      "different": different,
      "metrics": metrics,
      "counters": {
        k: [int(getattr(s, k)) for s in (state, oracle)]
        for k in ("step", "skipped_steps", "consecutive_skipped_steps")
      },
      "optimizer_count": [int(state.opt_state.count), int(oracle.opt_state.count)],
    }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
