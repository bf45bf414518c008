"""The reference's optimiser: Adam with coupled L2 decay, torch's OneCycleLR, and EMA.

- Adam (b2 0.999, eps 1e-8) whose beta1 follows OneCycleLR's momentum cycle, with L2
  weight decay added to the gradient before the moments (torch `Adam(weight_decay=...)`),
  masked off biases and every 1-D parameter (the reference's `add_weight_decay`).
- `one_cycle_lr` / `one_cycle_beta1`: torch `OneCycleLR` (cosine, two phases) with its
  exact phase ends: warm-up ends at step pct_start * total - 1, the run at total - 1.
  The schedule counts applied updates: a skipped step does not advance it.
- `ema_update`: decay * ema + (1 - decay) * new over any pytree (params and BN statistics),
  with `ema_decay_per_step` keeping the EMA's horizon in images whatever the batch.
- `batch_scaled_lr`: an optional rule for the learning rate of a larger batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _cosine(start, end, fraction):
  return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * fraction) + 1.0)


def _two_phase(step, total_steps: int, pct_start: float, start, peak, end):
  """Cosine from `start` to `peak` over phase 1, then to `end`; torch's phase arithmetic."""
  step = jnp.asarray(step, jnp.float32)
  warmup_end = float(pct_start * total_steps) - 1.0
  run_end = float(total_steps) - 1.0
  rising = _cosine(start, peak, step / warmup_end)
  falling = _cosine(peak, end, (step - warmup_end) / (run_end - warmup_end))
  return jnp.where(step <= warmup_end, rising, falling)


def one_cycle_lr(total_steps: int, max_lr: float, pct_start: float = 0.2,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
  """step -> learning rate of torch OneCycleLR(max_lr, total_steps, pct_start, ...)."""
  _check_one_cycle(total_steps, pct_start)
  initial = max_lr / div_factor
  return lambda step: _two_phase(step, total_steps, pct_start, initial, max_lr,
                                 initial / final_div_factor)


def one_cycle_beta1(total_steps: int, pct_start: float = 0.2, base: float = 0.85,
                    peak: float = 0.95):
  """step -> Adam beta1 as OneCycleLR cycles it: peak -> base -> peak."""
  _check_one_cycle(total_steps, pct_start)
  return lambda step: _two_phase(step, total_steps, pct_start, peak, base, peak)


def _check_one_cycle(total_steps: int, pct_start: float) -> None:
  if not 0 < pct_start < 1:
    raise ValueError(f"config.optim.pct_start={pct_start} must lie in (0, 1).")
  warmup_end = float(pct_start * total_steps) - 1
  if total_steps < 1 or warmup_end in (0.0, float(total_steps) - 1):
    # Where torch's OneCycleLR divides by zero.
    raise ValueError(f"OneCycleLR has an empty phase with {total_steps} steps and "
                     f"pct_start={pct_start}; change the number of steps or pct_start.")


def decay_mask(params):
  """True on the parameters that take weight decay: not biases, not 1-D (BN, LN)."""
  def decays(path, leaf):
    return jnp.ndim(leaf) > 1 and getattr(path[-1], "key", None) != "bias"
  return jax.tree_util.tree_map_with_path(decays, params)


def _adam_coupled_l2(learning_rate, b1, b2, eps, weight_decay):
  return optax.chain(optax.masked(optax.add_decayed_weights(weight_decay), decay_mask),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(learning_rate))


def create_optimizer(optim, total_steps: int, batch: int | None = None,
                     recipe_batch: int | None = None) -> optax.GradientTransformation:
  """The optimiser of config.optim (lr, lr_scaling, weight_decay, b2, eps, pct_start,
  div_factor, final_div_factor, beta1_base, beta1_peak) over `total_steps` updates of
  `batch` images, its peak learning rate scaled from `recipe_batch` per
  optim.lr_scaling (`batch_scaled_lr`; unscaled when the batches are not given).

  Its state's `hyperparams` hold the learning rate and beta1 of the latest update.
  """
  lr = optim.lr
  if batch is not None and recipe_batch is not None:
    lr = batch_scaled_lr(optim.lr, batch, recipe_batch, optim.lr_scaling)
  return optax.inject_hyperparams(_adam_coupled_l2)(
      learning_rate=one_cycle_lr(total_steps, lr, optim.pct_start, optim.div_factor,
                                 optim.final_div_factor),
      b1=one_cycle_beta1(total_steps, optim.pct_start, optim.beta1_base, optim.beta1_peak),
      b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)


def ema_decay_per_step(decay: float, batch: int, recipe_batch: int) -> float:
  """The per-step decay that averages over as many images as `decay` does at
  `recipe_batch` images per step: decay ** (batch / recipe_batch), exactly `decay` when
  the batches are equal."""
  return decay if batch == recipe_batch else decay ** (batch / recipe_batch)


LR_SCALING = ("none", "sqrt", "linear")


def batch_scaled_lr(lr: float, batch: int, recipe_batch: int, rule: str) -> float:
  """The learning rate for `batch` images per step given `lr` at `recipe_batch`:
  "none" keeps it; "sqrt" multiplies it by sqrt(batch / recipe_batch), the square-root
  rule for Adam (Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient
  Algorithms", NeurIPS 2022); "linear" by batch / recipe_batch, the rule for SGD (Goyal
  et al., "Accurate, Large Minibatch SGD", 2017)."""
  if rule not in LR_SCALING:
    raise ValueError(f"config.optim.lr_scaling={rule!r}: expected one of {LR_SCALING}.")
  ratio = batch / recipe_batch
  return lr * {"none": 1.0, "sqrt": ratio ** 0.5, "linear": ratio}[rule]


def ema_update(ema, new, decay: float):
  """decay * ema + (1 - decay) * new, leaf by leaf (the reference's ModelEma.update)."""
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)
