"""The optimiser against torch: OneCycleLR's curves at every step of long runs (Adam with
masked coupled L2, the EMA and the batch scaling: tests/test_optim_oracle.py)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kmcl_jax import optim
from kmcl_jax.state import TrainState

torch = pytest.importorskip("torch")


def optim_config(**overrides):
  return ml_collections.ConfigDict(
    {
      **dict(
        lr=2e-4,
        weight_decay=1e-4,
        b2=0.999,
        eps=1e-8,
        pct_start=0.2,
        div_factor=25.0,
        final_div_factor=1e4,
        beta1_base=0.85,
        beta1_peak=0.95,
      ),
      **overrides,
    }
  )


def torch_one_cycle(total_steps, max_lr, pct_start):
  parameter = torch.nn.Parameter(torch.zeros(1))
  optimizer = torch.optim.Adam([parameter], lr=max_lr)
  scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start
  )
  lrs, betas = [], []
  for _ in range(total_steps):
    lrs.append(optimizer.param_groups[0]["lr"])
    betas.append(optimizer.param_groups[0]["betas"][0])
    optimizer.step()
    scheduler.step()
  return np.array(lrs), np.array(betas)


@pytest.mark.parametrize(
  "total_steps,max_lr,pct_start",
  [
    (40 * 78, 2e-4, 0.2),  # the VOC recipe: 40 epochs of 5,011 // 64 steps
    (97, 4e-4, 0.3),  # a phase end that is not an integer step
    (11, 1e-2, 0.2),
    (3, 1e-3, 0.2),
  ],
)  # warm-up shorter than a step: torch starts in phase two
def test_one_cycle_lr_and_beta1_equal_torch_at_every_step(total_steps, max_lr, pct_start):
  lrs, betas = torch_one_cycle(total_steps, max_lr, pct_start)
  steps = jnp.arange(total_steps)
  ours_lr = jax.vmap(optim.one_cycle_lr(total_steps, max_lr, pct_start))(steps)
  ours_beta = jax.vmap(optim.one_cycle_beta1(total_steps, pct_start))(steps)
  np.testing.assert_allclose(ours_lr, lrs, rtol=0, atol=1e-7)
  np.testing.assert_allclose(ours_beta, betas, rtol=0, atol=1e-7)


def test_one_cycle_rejects_too_few_steps():
  with pytest.raises(ValueError, match="empty phase with 5 steps"):
    optim.one_cycle_lr(5, 1e-3, 0.2)  # warm-up would end at step 0: torch divides by 0


def test_decay_mask_and_ema():
  params = {
    "a": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))},
    "bn": {"scale": jnp.ones(3)},
    "conv": jnp.ones((1, 1, 2, 2)),
  }
  assert optim.decay_mask(params) == {
    "a": {"kernel": True, "bias": False},
    "bn": {"scale": False},
    "conv": True,
  }
  ema = optim.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 0.0])}, 0.75)
  np.testing.assert_allclose(ema["w"], [1.5, 1.5])


def test_flat_layout_packs_each_group_in_tree_order_and_unpacks_exactly():
  tree = {
    "a": {
      "kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3),
      "bias": np.arange(3.0, dtype=np.float32) + 100,
    },
    "b": np.arange(4.0, dtype=np.float32).reshape(1, 1, 2, 2) + 200,
  }
  groups = jax.tree.map(lambda decays: 0 if decays else 1, optim.decay_mask(tree))
  layout = optim.FlatLayout.of(tree, groups, groups=2)
  decayed, plain = layout.pack(tree)
  np.testing.assert_array_equal(
    decayed, np.concatenate([tree["a"]["kernel"].ravel(), tree["b"].ravel()])
  )
  np.testing.assert_array_equal(plain, tree["a"]["bias"])
  back = layout.unpack(layout.pack(tree))
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
    assert got.shape == want.shape and np.array_equal(got, want)
  # One group; a group with no leaves is an empty buffer.
  (whole,) = optim.FlatLayout.of(tree).pack(tree)
  assert whole.shape == (13,)
  _, empty = optim.FlatLayout.of(tree, jax.tree.map(lambda _: 0, tree), groups=2).pack(tree)
  assert empty.shape == (0,) and empty.dtype == jnp.float32
  with pytest.raises(ValueError, match="one dtype"):
    optim.FlatLayout.of({"x": np.zeros(2, np.float32), "n": np.zeros(2, np.int32)})


def test_update_layout_auto_is_per_leaf_on_the_cpu_and_bad_names_are_refused():
  assert jax.default_backend() == "cpu"
  assert optim.update_layout("auto") == "per_leaf"
  assert [optim.update_layout(name) for name in optim.UPDATE_LAYOUTS] == ["per_leaf", "flat"]
  with pytest.raises(ValueError, match="config.update_layout='leafy': expected 'auto'"):
    optim.update_layout("leafy")
  with pytest.raises(ValueError, match="layout='leafy': expected one of"):
    optim.update_or_skip(None, None, None, None, None, 0.9, layout="leafy")


def test_flat_and_per_leaf_updates_are_bit_identical_op_by_op():
  """`update_or_skip`'s two layouts run the same operations on every element: executed op
  by op (jax.disable_jit, so no compiler fuses a multiply and an add into one FMA, which
  XLA does per fusion and so differently per layout), 3 updates, the second skipped,
  leave every part of the state equal bit for bit, on any CPU."""
  rng = np.random.default_rng(2)
  shapes = {"dense": {"kernel": (3, 4), "bias": (4,)}, "norm": {"scale": (4,)}}
  stats_shapes = {"norm": {"mean": (4,)}}

  def tree(shapes):
    return jax.tree.map(
      lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32),
      shapes,
      is_leaf=lambda x: isinstance(x, tuple),
    )

  params, stats = tree(shapes), tree(stats_shapes)
  steps = [(tree(shapes), tree(stats_shapes), loss) for loss in (1.0, np.nan, 2.0)]
  optimizer = optim.create_optimizer(optim_config(lr=1e-2, weight_decay=0.5), 10)
  layout = optim.FlatLayout.of(
    params, jax.tree.map(lambda d: 0 if d else 1, optim.decay_mask(params)), groups=2
  )
  assert optim.decay_mask(optim.DecayGroups(*layout.pack(params))) == optim.DecayGroups(
    decayed=True, plain=False
  )
  zero = jnp.zeros((), jnp.int32)
  start = TrainState(zero, zero, zero, params, stats, optimizer.init(params), params, stats)
  ends = {}
  with jax.disable_jit():
    for layout in optim.UPDATE_LAYOUTS:
      state, finites = start, []
      for grads, new_stats, loss in steps:
        state, _, finite = optim.update_or_skip(
          optimizer, state, grads, new_stats, jnp.float32(loss), 0.9, layout
        )
        finites.append(bool(finite))
      assert finites == [True, False, True]
      ends[layout] = state
  flat, per_leaf = (
    jax.tree_util.tree_leaves_with_path(ends["flat"]),
    jax.tree.leaves(ends["per_leaf"]),
  )
  assert len(flat) == len(per_leaf)
  for (path, got), want in zip(flat, per_leaf, strict=True):
    np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
  # The updates moved every parameter.
  for got, first in zip(jax.tree.leaves(ends["flat"].params), jax.tree.leaves(params), strict=True):
    assert np.all(np.asarray(got) != np.asarray(first))
