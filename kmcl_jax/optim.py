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
- `update_or_skip`: the update of a train step (the optimiser, the EMA of params and BN
  statistics, and the skip of a non-finite step), leaf by leaf or over a few 1-D
  buffers (`update_layout`, `FlatLayout`, `DecayGroups`), with the same operations on
  every element; the train state keeps its per-leaf structure (what checkpoints hold).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kmcl_jax.state import all_finite


def _cosine(start, end, fraction):
  return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * fraction) + 1.0)


def _two_phase(step, total_steps: int, pct_start: float, start, peak, end):
  """Cosine from `start` to `peak` over phase 1, then to `end`; torch's phase arithmetic,
  in JAX's default float (float32; float64 where x64 is enabled, as the oracle tests run)."""
  step = jnp.asarray(step, jax.dtypes.canonicalize_dtype(jnp.float64))
  warmup_end = float(pct_start * total_steps) - 1.0
  run_end = float(total_steps) - 1.0
  rising = _cosine(start, peak, step / warmup_end)
  falling = _cosine(peak, end, (step - warmup_end) / (run_end - warmup_end))
  return jnp.where(step <= warmup_end, rising, falling)


def one_cycle_lr(
  total_steps: int,
  max_lr: float,
  pct_start: float = 0.2,
  div_factor: float = 25.0,
  final_div_factor: float = 1e4,
):
  """step -> learning rate of torch OneCycleLR(max_lr, total_steps, pct_start, ...)."""
  _check_one_cycle(total_steps, pct_start)
  initial = max_lr / div_factor
  return lambda step: _two_phase(
    step, total_steps, pct_start, initial, max_lr, initial / final_div_factor
  )


def one_cycle_beta1(
  total_steps: int, pct_start: float = 0.2, base: float = 0.85, peak: float = 0.95
):
  """step -> Adam beta1 as OneCycleLR cycles it: peak -> base -> peak."""
  _check_one_cycle(total_steps, pct_start)
  return lambda step: _two_phase(step, total_steps, pct_start, peak, base, peak)


def _check_one_cycle(total_steps: int, pct_start: float) -> None:
  if not 0 < pct_start < 1:
    raise ValueError(f"config.optim.pct_start={pct_start} must lie in (0, 1).")
  warmup_end = float(pct_start * total_steps) - 1
  if total_steps < 1 or warmup_end in (0.0, float(total_steps) - 1):
    # Where torch's OneCycleLR divides by zero.
    raise ValueError(
      f"OneCycleLR has an empty phase with {total_steps} steps and "
      f"pct_start={pct_start}; change the number of steps or pct_start."
    )


class DecayGroups(NamedTuple):
  """Parameters, or anything shaped like them (gradients, Adam moments, their EMA), as two
  1-D buffers laid out by a `FlatLayout`: the leaves that take weight decay, and the rest."""

  decayed: jax.Array
  plain: jax.Array


def decay_mask(params):
  """True on the parameters that take weight decay: not biases, not 1-D (BN, LN); on
  `DecayGroups`, True on its `decayed` buffer."""
  if isinstance(params, DecayGroups):
    return DecayGroups(decayed=True, plain=False)

  def decays(path, leaf):
    return jnp.ndim(leaf) > 1 and getattr(path[-1], "key", None) != "bias"

  return jax.tree_util.tree_map_with_path(decays, params)


def _adam_coupled_l2(learning_rate, b1, b2, eps, weight_decay):
  return optax.chain(
    optax.masked(optax.add_decayed_weights(weight_decay), decay_mask),
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
    optax.scale_by_learning_rate(learning_rate),
  )


def create_optimizer(
  optim, total_steps: int, batch: int | None = None, recipe_batch: int | None = None
) -> optax.GradientTransformation:
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
    learning_rate=one_cycle_lr(
      total_steps, lr, optim.pct_start, optim.div_factor, optim.final_div_factor
    ),
    b1=one_cycle_beta1(total_steps, optim.pct_start, optim.beta1_base, optim.beta1_peak),
    b2=optim.b2,
    eps=optim.eps,
    weight_decay=optim.weight_decay,
  )


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
  return lr * {"none": 1.0, "sqrt": ratio**0.5, "linear": ratio}[rule]


def ema_update(ema, new, decay: float):
  """decay * ema + (1 - decay) * new, leaf by leaf (the reference's ModelEma.update)."""
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


UPDATE_LAYOUTS = ("per_leaf", "flat")  # how `update_or_skip` lays out its work


def update_layout(setting: str) -> str:
  """The layout config.update_layout asks for: "per_leaf", "flat", or "auto": "flat" on
  GPUs, where every small kernel of the per-leaf update costs a launch; "per_leaf" on
  the CPU, where it measured faster (each leaf's work stays in cache; the flat layout's
  gather and scatter copies cost more than they save) and on TPUs, which run a
  program's kernels back to back without launching each."""
  if setting == "auto":
    return "flat" if jax.default_backend() == "gpu" else "per_leaf"
  if setting not in UPDATE_LAYOUTS:
    raise ValueError(
      f"config.update_layout={setting!r}: expected 'auto' or one of {UPDATE_LAYOUTS}."
    )
  return setting


@dataclasses.dataclass(frozen=True)
class FlatLayout:
  """Where the leaves of a pytree lie in a few 1-D buffers of one dtype: buffer i is the
  leaves listed in groups[i] (indices into the tree's leaves, in tree order), each
  raveled row-major, concatenated. Static: built at trace time from shapes alone."""

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtype: Any
  groups: tuple[tuple[int, ...], ...]

  @classmethod
  def of(cls, tree, group_of=None, groups: int = 1) -> FlatLayout:
    """The layout of `tree` (arrays or ShapeDtypeStructs of one dtype); `group_of`, a
    tree of the same structure, gives each leaf's buffer in [0, groups) (default: all in
    buffer 0)."""
    leaves, treedef = jax.tree.flatten(tree)
    dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
    if len(dtypes) != 1:
      raise ValueError(
        f"A FlatLayout holds leaves of one dtype; this tree has {sorted(map(str, dtypes))}."
      )
    owner = jax.tree.leaves(group_of) if group_of is not None else [0] * len(leaves)
    return cls(
      treedef=treedef,
      shapes=tuple(tuple(leaf.shape) for leaf in leaves),
      dtype=dtypes.pop(),
      groups=tuple(
        tuple(i for i, g in enumerate(owner) if int(g) == group) for group in range(groups)
      ),
    )

  def pack(self, tree) -> tuple[jax.Array, ...]:
    """tree -> its buffers, one per group (a group without leaves is an empty buffer)."""
    leaves = jax.tree.leaves(tree)
    return tuple(
      jnp.concatenate([jnp.ravel(leaves[i]) for i in group])
      if group
      else jnp.zeros((0,), self.dtype)
      for group in self.groups
    )

  def unpack(self, buffers) -> Any:
    """pack's inverse: buffers (one per group) -> a tree of this layout's structure."""
    leaves = [None] * len(self.shapes)
    for buffer, group in zip(buffers, self.groups, strict=True):
      offset = 0
      for i in group:
        size = int(np.prod(self.shapes[i], dtype=np.int64))
        leaves[i] = buffer[offset : offset + size].reshape(self.shapes[i])
        offset += size
    return jax.tree.unflatten(self.treedef, leaves)


def _same(tree):
  return tree


def update_or_skip(
  optimizer: optax.GradientTransformation,
  state,
  grads,
  batch_stats,
  loss: jax.Array,
  ema_decay,
  layout: str = "per_leaf",
):
  """The update of one train step, or none: (state, hyperparams, finite).

  state: a `TrainState`; grads: d loss / d state.params (the same tree); batch_stats: the
  BatchNorm statistics of this batch; loss: the scalar loss; ema_decay: a Python float or
  a float32 scalar. Returns `state` with new params (`optimizer` applied), batch_stats,
  opt_state, ema_params and ema_batch_stats (`ema_update`) if the loss, every gradient,
  every new parameter and every new statistic is finite (`finite`, a bool scalar), or
  with its own otherwise; and `hyperparams`, the learning rate, beta1, ... this update
  used (or would have used). The counters (step, skipped steps) are the caller's.

  layout (`UPDATE_LAYOUTS`): "per_leaf" computes leaf by leaf; "flat" over a few 1-D
  buffers (the parameters split by `decay_mask` into `DecayGroups`, the statistics in
  one), gathered from the state's leaves and scattered back, so the compiled update is a
  few large loops instead of several per leaf, at the price of those copies. Every
  element goes through the same operations either way; the state keeps its per-leaf
  structure (what checkpoints hold).
  """
  if layout not in UPDATE_LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {UPDATE_LAYOUTS}.")
  if layout == "flat":
    param_layout = FlatLayout.of(
      state.params, jax.tree.map(lambda d: 0 if d else 1, decay_mask(state.params)), groups=2
    )
    stats_layout = FlatLayout.of(state.batch_stats)

    def gather_params(tree):
      return DecayGroups(*param_layout.pack(tree))

    def gather_stats(tree):
      (buffer,) = stats_layout.pack(tree)
      return buffer

    def scatter_stats(buffer):
      return stats_layout.unpack([buffer])

    scatter_params = param_layout.unpack
  else:
    gather_params = gather_stats = scatter_params = scatter_stats = _same
  params_treedef = jax.tree.structure(state.params)

  def is_param_shaped(node) -> bool:  # the Adam moments in the optimiser's state
    return jax.tree.structure(node) == params_treedef

  def is_gathered(node) -> bool:
    return isinstance(node, DecayGroups)

  params, gathered_grads = gather_params(state.params), gather_params(grads)
  opt_state = jax.tree.map(
    lambda node: gather_params(node) if is_param_shaped(node) else node,
    state.opt_state,
    is_leaf=is_param_shaped,
  )
  updates, new_opt_state = optimizer.update(gathered_grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  stats, new_stats = gather_stats(state.batch_stats), gather_stats(batch_stats)
  ema_params, ema_stats = gather_params(state.ema_params), gather_stats(state.ema_batch_stats)
  finite = jnp.isfinite(loss) & all_finite(gathered_grads, new_params, new_stats)

  def kept(new, old):
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

  updated = state.replace(
    params=scatter_params(kept(new_params, params)),
    batch_stats=scatter_stats(kept(new_stats, stats)),
    opt_state=jax.tree.map(
      lambda node: scatter_params(node) if is_gathered(node) else node,
      kept(new_opt_state, opt_state),
      is_leaf=is_gathered,
    ),
    ema_params=scatter_params(kept(ema_update(ema_params, new_params, ema_decay), ema_params)),
    ema_batch_stats=scatter_stats(kept(ema_update(ema_stats, new_stats, ema_decay), ema_stats)),
  )
  return updated, new_opt_state.hyperparams, finite
