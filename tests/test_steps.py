"""The compiled steps: the loss over the global batch or per device, its precision, and
the train step's handling of a non-finite loss, gradient or update."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from runs import assert_trees_close, synthetic_batch

from kmcl_jax import config as config_lib
from kmcl_jax import optim
from kmcl_jax.mesh import create_mesh, replicated
from kmcl_jax.state import create_model, initial_state
from kmcl_jax.steps import jit_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_config():
  """The demo smoke config: 8 images of 32 px, 10 classes, 6 steps."""
  config = config_lib.load(os.path.join(ROOT, "configs", "demo.py:smoke"))
  config.optim.lr = 1e-4
  return config


@pytest.mark.slow
def test_contrastive_scope_global_is_the_whole_batch_and_device_the_mean_of_devices():
  """Also: splitting the contrastive anchors over devices changes no value or gradient."""
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", "scoped_loss_run.py")],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  values = json.loads(result.stdout.splitlines()[-1])
  for scope, want in (("global", "whole_batch"), ("device", "per_device_mean")):
    for term, value in values[want].items():
      assert values[scope][term] == pytest.approx(value, rel=1e-5), (scope, term)
  assert values["device"]["contrastive"] != pytest.approx(values["global"]["contrastive"], rel=1e-2)
  for kernel, differences in values["split_anchors"].items():
    for name, difference in differences.items():
      assert difference < 1e-5, (kernel, name, difference)
  assert values["uneven_split_error"] == (
    "The batch of 6 does not split evenly over the 4 devices of mesh axis 'data'."
  )
  # Every dot product of the loss's value and gradient is float32 (HIGHEST), not the
  # bfloat16 passes or TF32 that JAX's default precision means on TPUs and GPUs.
  for kernel, layouts in values["dot_precision"].items():
    for layout, (dots, below_float32) in layouts.items():
      assert dots >= 4 and below_float32 == 0, (kernel, layout, dots, below_float32)


@pytest.mark.slow
def test_a_non_finite_step_is_skipped_and_counted():
  config = run_config()
  model = create_model(config, 10)
  optimizer = optim.create_optimizer(config.optim, config.train_steps)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  step, _ = jit_steps(config, model, optimizer, mesh, state)
  batch = synthetic_batch()
  poisoned = {**batch, "labels": batch["labels"].copy()}
  poisoned["labels"][0, 0] = np.nan
  before = jax.device_get(state)
  after_nan, metrics = step(state, poisoned)  # donates `state`
  assert not np.isfinite(metrics["loss"]) and int(metrics["skipped_steps"]) == 1
  assert int(after_nan.step) == 1 and int(after_nan.skipped_steps) == 1
  kept = ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats")
  assert_trees_close(
    {k: getattr(jax.device_get(after_nan), k) for k in kept},
    {k: getattr(before, k) for k in kept},
    atol=0,
  )
  after_good, metrics = step(after_nan, batch)
  assert np.isfinite(metrics["loss"]) and int(after_good.skipped_steps) == 1
  assert int(after_good.step) == 2 and int(after_good.opt_state.count) == 1
  # The schedule did not advance on the skipped step: this update used step 0's rate.
  np.testing.assert_allclose(
    metrics["learning_rate"], optim.one_cycle_lr(config.train_steps, config.optim.lr)(0)
  )
  moved = jax.tree.map(
    lambda a, b: float(np.abs(a - b).max()), jax.device_get(after_good.params), before.params
  )
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["per_leaf", "flat"])
def test_an_update_that_makes_the_parameters_non_finite_is_skipped(layout):
  """The loss and the gradients are finite, the update is not (a learning rate beyond
  float32): applying it would poison every later step."""
  config = run_config()
  config.optim.lr = 1e40
  config.update_layout = layout
  model = create_model(config, 10)
  optimizer = optim.create_optimizer(config.optim, config.train_steps)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  step, _ = jit_steps(config, model, optimizer, mesh, state)
  before = jax.device_get(state)
  after, metrics = step(state, synthetic_batch())
  assert np.isfinite(metrics["loss"]) and int(metrics["skipped_steps"]) == 1
  assert int(after.consecutive_skipped_steps) == 1 and int(after.opt_state.count) == 0
  assert_trees_close(jax.device_get(after.params), before.params, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
  "xla_flags,layouts",
  [
    ("--xla_cpu_max_isa=AVX", ("per_leaf", "flat")),  # no FMA instructions
    ("", ("per_leaf",)),
  ],
)
def test_update_layouts_are_bit_identical_to_the_per_leaf_step(xla_flags, layouts):
  """4 steps (the second skipped: a NaN label) from the same state on the same batches:
  params, BatchNorm statistics, optimiser state, EMA, metrics and counters equal bit for
  bit to the step before `optim.update_or_skip` (tests/step_oracle.py).

  Both layouts run the same operations on every element. XLA:CPU contracts a * x + b * y
  into a fused multiply-add on either product, chosen per fusion, and the two layouts
  fuse differently (so did the old step from one leaf to the next): the flat layout is
  equal bit for bit where no FMA instruction exists (--xla_cpu_max_isa=AVX), the
  per-leaf one, today's default on the CPU, with default flags too."""
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", "update_identity_run.py"), "4", *layouts],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": xla_flags},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  values = json.loads(result.stdout.splitlines()[-1])
  oracle_losses = [m["loss"] for m in values["oracle_metrics"]]
  assert np.isfinite(oracle_losses[0]) and np.isnan(oracle_losses[1])
  for layout in layouts:
    run = values[layout]
    for part, leaves in run["different"].items():
      if not part.endswith("_leaves"):
        assert leaves == [] and run["different"][part + "_leaves"] > 0, (layout, part, leaves)
    for ours, oracle in zip(run["metrics"], values["oracle_metrics"], strict=True):
      assert list(ours) == list(oracle)
      np.testing.assert_array_equal(list(ours.values()), list(oracle.values()), err_msg=layout)
    assert run["counters"] == {
      "step": [4, 4],
      "skipped_steps": [1, 1],
      "consecutive_skipped_steps": [0, 0],
    }, layout
    assert run["optimizer_count"] == [3, 3], layout
