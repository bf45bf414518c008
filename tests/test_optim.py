"""The optimiser against torch: OneCycleLR's curves and Adam with masked coupled L2."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from kmcl_jax import optim

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


def test_adam_with_masked_coupled_l2_matches_torch_param_groups_for_20_steps():
  rng = np.random.default_rng(0)
  shapes = {
    "conv": {"kernel": (3, 3, 2, 4)},
    "dense": {"kernel": (4, 5), "bias": (5,)},
    "norm": {"scale": (4,), "bias": (4,)},
  }
  params = jax.tree.map(
    lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
  )
  steps = 20
  grads = [
    jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    for _ in range(steps)
  ]
  config = optim_config(lr=1e-2, weight_decay=0.05)

  # torch: the reference's two parameter groups, Adam(weight_decay=0) per group, OneCycleLR.
  leaves = jax.tree_util.tree_leaves_with_path(params)
  tensors = {
    jax.tree_util.keystr(path): torch.nn.Parameter(torch.tensor(np.array(leaf)))
    for path, leaf in leaves
  }
  decay = [t for name, t in tensors.items() if t.ndim > 1 and not name.endswith("'bias']")]
  no_decay = [t for t in tensors.values() if all(t is not d for d in decay)]
  assert len(decay) == 2 and len(no_decay) == 3
  optimizer = torch.optim.Adam(
    [
      {"params": no_decay, "weight_decay": 0.0},
      {"params": decay, "weight_decay": config.weight_decay},
    ],
    lr=config.lr,
    betas=(0.95, config.b2),
    eps=config.eps,
  )
  scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer, max_lr=config.lr, total_steps=steps, pct_start=config.pct_start
  )
  for g in grads:
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
      tensors[jax.tree_util.keystr(path)].grad = torch.tensor(np.array(leaf))
    optimizer.step()
    scheduler.step()

  transform = optim.create_optimizer(config, steps)
  state = transform.init(params)
  ours = jax.tree.map(jnp.asarray, params)
  update = jax.jit(transform.update)
  for g in grads:
    updates, state = update(g, state, ours)
    ours = optax.apply_updates(ours, updates)
  for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
    np.testing.assert_allclose(
      leaf,
      tensors[jax.tree_util.keystr(path)].detach().numpy(),
      rtol=0,
      atol=1e-6,
      err_msg=jax.tree_util.keystr(path),
    )
  # The decay matters: without it the kernels end elsewhere.
  plain = optim.create_optimizer(optim_config(lr=1e-2, weight_decay=0.0), steps)
  state, other = plain.init(params), jax.tree.map(jnp.asarray, params)
  for g in grads:
    updates, state = plain.update(g, state, other)
    other = optax.apply_updates(other, updates)
  assert np.abs(other["dense"]["kernel"] - ours["dense"]["kernel"]).max() > 1e-5


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


def test_the_optimizer_on_decay_groups_decays_the_decayed_buffer_only():
  """The same transformation over `DecayGroups` (what update_or_skip's flat layout runs)
  as over the leaves, with a weight decay large enough to show on every leaf."""
  rng = np.random.default_rng(1)
  params = {
    "dense": {
      "kernel": rng.normal(size=(4, 5)).astype(np.float32),
      "bias": rng.normal(size=(5,)).astype(np.float32),
    },
    "norm": {"scale": rng.normal(size=(5,)).astype(np.float32)},
  }
  layout = optim.FlatLayout.of(
    params, jax.tree.map(lambda d: 0 if d else 1, optim.decay_mask(params)), groups=2
  )
  assert optim.decay_mask(optim.DecayGroups(*layout.pack(params))) == optim.DecayGroups(
    decayed=True, plain=False
  )
  transform = optim.create_optimizer(optim_config(lr=1e-2, weight_decay=0.5), 10)
  per_leaf, per_leaf_state = params, transform.init(params)
  grouped = optim.DecayGroups(*layout.pack(params))
  grouped_state = transform.init(grouped)
  for _ in range(5):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, per_leaf_state = transform.update(grads, per_leaf_state, per_leaf)
    per_leaf = optax.apply_updates(per_leaf, updates)
    updates, grouped_state = transform.update(
      optim.DecayGroups(*layout.pack(grads)), grouped_state, grouped
    )
    grouped = optax.apply_updates(grouped, updates)
  for path, leaf in jax.tree_util.tree_leaves_with_path(layout.unpack(grouped)):
    want = per_leaf
    for key in path:
      want = want[key.key]
    # Equal up to where the compiler contracts a multiply-add (an ulp or two).
    np.testing.assert_allclose(leaf, want, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_update_layout_auto_is_per_leaf_on_the_cpu_and_bad_names_are_refused():
  assert jax.default_backend() == "cpu"
  assert optim.update_layout("auto") == "per_leaf"
  assert [optim.update_layout(name) for name in optim.UPDATE_LAYOUTS] == ["per_leaf", "flat"]
  with pytest.raises(ValueError, match="config.update_layout='leafy': expected 'auto'"):
    optim.update_layout("leafy")
  with pytest.raises(ValueError, match="layout='leafy': expected one of"):
    optim.update_or_skip(None, None, None, None, None, 0.9, layout="leafy")
