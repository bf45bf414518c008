"""The train step's update judged in float64 by oracles outside the code under test: torch's
Adam over the reference's two weight-decay groups, stepped by torch's OneCycleLR (which
also cycles Adam's beta1), and a hand-written EMA of params and BatchNorm statistics.

The oracle follows the reference's loop: a step whose loss is not finite changes
nothing (no optimiser step, no scheduler step, no EMA update). The peak learning rate of
another batch than the recipe's is written out per rule (none: lr, sqrt: lr * sqrt(r),
linear: lr * r, r = batch / recipe_batch) and the EMA's per-step decay so that the
weight left on the start after n images is decay ** (n / recipe_batch).

Float64 on both sides leaves only rounding: every comparison is to 1e-12.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_optim import optim_config

from kmcl_jax import optim
from kmcl_jax.state import TrainState

torch = pytest.importorskip("torch")

RECIPE_BATCH = 64
SHAPES = {  # the reference decays the kernels only: not biases, not 1-D parameters
  "conv": {"kernel": (3, 3, 2, 4)},
  "norm": {"scale": (4,), "bias": (4,)},
  "head": {"kernel": (4, 5), "bias": (5,)},
}
STATS_SHAPES = {"norm": {"mean": (4,), "var": (4,)}}
DECAYED = ("['conv']['kernel']", "['head']['kernel']")


def random_tree(rng, shapes):
  return jax.tree.map(
    lambda shape: rng.normal(size=shape), shapes, is_leaf=lambda x: isinstance(x, tuple)
  )


def named(tree) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def oracle(params, stats, grads, new_stats, losses, config, total_steps, max_lr, decay):
  """The reference's loop in float64: {name: params}, {name: EMA params}, {name: EMA stats},
  and the (lr, beta1) each applied step used."""
  tensors = {
    name: torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))
    for name, value in named(params).items()
  }
  optimizer = torch.optim.Adam(
    [
      {"params": [t for n, t in tensors.items() if n not in DECAYED], "weight_decay": 0.0},
      {"params": [tensors[n] for n in DECAYED], "weight_decay": config.weight_decay},
    ],
    lr=max_lr,
    betas=(config.beta1_peak, config.b2),
    eps=config.eps,
  )
  scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer,
    max_lr=max_lr,
    total_steps=total_steps,
    pct_start=config.pct_start,
    div_factor=config.div_factor,
    final_div_factor=config.final_div_factor,
    base_momentum=config.beta1_base,
    max_momentum=config.beta1_peak,
  )
  ema = {name: value.copy() for name, value in named(params).items()}
  ema_stats = named(stats)
  hyperparams = []
  for g, s, loss in zip(grads, new_stats, losses, strict=True):
    if not math.isfinite(loss):
      continue
    hyperparams.append((optimizer.param_groups[1]["lr"], optimizer.param_groups[1]["betas"][0]))
    for name, value in named(g).items():
      tensors[name].grad = torch.tensor(value, dtype=torch.float64)
    optimizer.step()
    scheduler.step()
    for name, tensor in tensors.items():
      ema[name] = decay * ema[name] + (1.0 - decay) * tensor.detach().numpy()
    for name, value in named(s).items():
      ema_stats[name] = decay * ema_stats[name] + (1.0 - decay) * value
  return {n: t.detach().numpy() for n, t in tensors.items()}, ema, ema_stats, hyperparams


@pytest.mark.parametrize(
  "layout,lr_scaling,batch,max_lr_factor",
  [
    ("per_leaf", "none", 64, 1.0),  # the recipe
    ("flat", "none", 256, 1.0),
    ("per_leaf", "sqrt", 256, 2.0),  # sqrt(256 / 64)
    ("flat", "linear", 16, 0.25),
  ],
)
def test_update_or_skip_equals_torch_adam_one_cycle_and_a_float64_ema(
  layout, lr_scaling, batch, max_lr_factor
):
  rng = np.random.default_rng(7)
  steps, total_steps = 14, 12  # two steps skipped: the schedule counts applied updates
  params, stats = random_tree(rng, SHAPES), random_tree(rng, STATS_SHAPES)
  grads = [random_tree(rng, SHAPES) for _ in range(steps)]
  new_stats = [random_tree(rng, STATS_SHAPES) for _ in range(steps)]
  losses = [1.0] * steps
  losses[3], losses[9] = float("nan"), float("inf")
  config = optim_config(lr=1e-2, weight_decay=0.05, lr_scaling=lr_scaling)
  # decay ** (batch / recipe): the weight left on the start after n images is
  # 0.9 ** (n / 64) whatever the batch.
  decay = 0.9 ** (batch / RECIPE_BATCH)
  want, want_ema, want_ema_stats, want_hyperparams = oracle(
    params, stats, grads, new_stats, losses, config, total_steps, 1e-2 * max_lr_factor, decay
  )

  with jax.enable_x64(True):
    optimizer = optim.create_optimizer(config, total_steps, batch, RECIPE_BATCH)
    params64, stats64 = jax.tree.map(jnp.asarray, (params, stats))
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      skipped_steps=jnp.zeros((), jnp.int32),
      consecutive_skipped_steps=jnp.zeros((), jnp.int32),
      params=params64,
      batch_stats=stats64,
      opt_state=optimizer.init(params64),
      ema_params=params64,
      ema_batch_stats=stats64,
    )
    ema_decay = optim.ema_decay_per_step(0.9, batch, RECIPE_BATCH)
    update = jax.jit(
      lambda state, g, s, loss: optim.update_or_skip(
        optimizer, state, g, s, loss, ema_decay, layout
      )
    )
    hyperparams, finites = [], []
    for g, s, loss in zip(grads, new_stats, losses, strict=True):
      state, used, finite = update(state, g, s, jnp.float64(loss))
      finites.append(bool(finite))
      if finite:
        hyperparams.append((float(used["learning_rate"]), float(used["b1"])))
    assert jax.tree.leaves(state.params)[0].dtype == jnp.float64

  assert finites == [math.isfinite(loss) for loss in losses]
  assert ema_decay == pytest.approx(decay, rel=1e-15)
  np.testing.assert_allclose(hyperparams, want_hyperparams, rtol=1e-12, atol=0)
  for ours, oracle_values in (
    (state.params, want),
    (state.ema_params, want_ema),
    (state.ema_batch_stats, want_ema_stats),
  ):
    got = named(ours)
    assert got.keys() == oracle_values.keys()
    for name, value in got.items():
      np.testing.assert_allclose(value, oracle_values[name], rtol=1e-12, atol=1e-14, err_msg=name)
  # The last applied step's statistics are the model's.
  for name, value in named(state.batch_stats).items():
    np.testing.assert_array_equal(value, named(new_stats[-1])[name])
