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
  return ml_collections.ConfigDict({**dict(
      lr=2e-4, weight_decay=1e-4, b2=0.999, eps=1e-8, pct_start=0.2, div_factor=25.0,
      final_div_factor=1e4, beta1_base=0.85, beta1_peak=0.95), **overrides})


def torch_one_cycle(total_steps, max_lr, pct_start):
  parameter = torch.nn.Parameter(torch.zeros(1))
  optimizer = torch.optim.Adam([parameter], lr=max_lr)
  scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr,
                                                  total_steps=total_steps, pct_start=pct_start)
  lrs, betas = [], []
  for _ in range(total_steps):
    lrs.append(optimizer.param_groups[0]["lr"])
    betas.append(optimizer.param_groups[0]["betas"][0])
    optimizer.step()
    scheduler.step()
  return np.array(lrs), np.array(betas)


@pytest.mark.parametrize("total_steps,max_lr,pct_start", [
    (40 * 78, 2e-4, 0.2),   # the VOC recipe: 40 epochs of 5,011 // 64 steps
    (97, 4e-4, 0.3),        # a phase end that is not an integer step
    (11, 1e-2, 0.2),
    (3, 1e-3, 0.2)])        # warm-up shorter than a step: torch starts in phase two
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
  shapes = {"conv": {"kernel": (3, 3, 2, 4)}, "dense": {"kernel": (4, 5), "bias": (5,)},
            "norm": {"scale": (4,), "bias": (4,)}}
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))
  steps = 20
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(steps)]
  config = optim_config(lr=1e-2, weight_decay=0.05)

  # torch: the reference's two parameter groups, Adam(weight_decay=0) per group, OneCycleLR.
  leaves = jax.tree_util.tree_leaves_with_path(params)
  tensors = {jax.tree_util.keystr(path): torch.nn.Parameter(torch.tensor(np.array(leaf)))
             for path, leaf in leaves}
  decay = [t for name, t in tensors.items() if t.ndim > 1 and not name.endswith("'bias']")]
  no_decay = [t for t in tensors.values() if all(t is not d for d in decay)]
  assert len(decay) == 2 and len(no_decay) == 3
  optimizer = torch.optim.Adam([{"params": no_decay, "weight_decay": 0.0},
                                {"params": decay, "weight_decay": config.weight_decay}],
                               lr=config.lr, betas=(0.95, config.b2), eps=config.eps)
  scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                  total_steps=steps, pct_start=config.pct_start)
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
    np.testing.assert_allclose(leaf, tensors[jax.tree_util.keystr(path)].detach().numpy(),
                               rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # The decay matters: without it the kernels end elsewhere.
  plain = optim.create_optimizer(optim_config(lr=1e-2, weight_decay=0.0), steps)
  state, other = plain.init(params), jax.tree.map(jnp.asarray, params)
  for g in grads:
    updates, state = plain.update(g, state, other)
    other = optax.apply_updates(other, updates)
  assert np.abs(other["dense"]["kernel"] - ours["dense"]["kernel"]).max() > 1e-5


def test_decay_mask_and_ema():
  params = {"a": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))},
            "bn": {"scale": jnp.ones(3)}, "conv": jnp.ones((1, 1, 2, 2))}
  assert optim.decay_mask(params) == {"a": {"kernel": True, "bias": False},
                                      "bn": {"scale": False}, "conv": True}
  ema = optim.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 0.0])}, 0.75)
  np.testing.assert_allclose(ema["w"], [1.5, 1.5])
