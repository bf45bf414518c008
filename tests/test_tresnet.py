"""TResNet in Flax against timm (the oracle): features, widths, remat and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kmcl_jax import convert
from kmcl_jax.models import create_backbone
from kmcl_jax.models.tresnet import TIMM_NAMES

pytest.importorskip("torch")
pytest.importorskip("timm")

from timm_oracle import assert_features_match, images, numpy_state, randomised_timm, timm_features  # noqa: E402


@pytest.fixture(scope="module", params=["tresnet_m", "tresnet_l", "tresnet_l_v2"])
def timm_pair(request):
  """(arch, the same network in timm randomised, its state dict); one per arch and module."""
  arch = request.param
  model = randomised_timm(TIMM_NAMES[arch])
  return arch, model, numpy_state(model)


def test_timm_parity_and_parameter_count(timm_pair):
  """Converted timm weights give timm's pooled features within 1e-4 of their scale at 64 px
  (L-v2: timm's tresnet_v2_l), with exactly timm's parameters."""
  arch, model, state = timm_pair
  variables = convert.convert_state_dict(state, arch)
  x = images()
  backbone = create_backbone(arch)
  ours = np.asarray(jax.jit(lambda v, x: backbone.apply(v, x, train=False))(variables, x))
  reference = timm_features(model, x)
  assert ours.shape == (2, backbone.num_features) == reference.shape
  assert_features_match(ours, reference)
  timm_count = sum(p.numel() for p in model.parameters())
  ours_count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert ours_count == timm_count


def test_feature_widths():
  widths = {
    name: create_backbone(name).num_features
    for name in ("tresnet_m", "tresnet_l", "tresnet_xl", "tresnet_l_v2")
  }
  assert widths == {"tresnet_m": 2048, "tresnet_l": 2432, "tresnet_xl": 2656, "tresnet_l_v2": 2048}


@pytest.mark.slow
def test_remat_and_bfloat16_variants():
  backbone = create_backbone("tresnet_tiny")
  x = jnp.asarray(images())
  variables = jax.jit(backbone.init)(jax.random.key(0), x)

  def loss(params, module):
    features, _ = module.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.sum(features**2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  plain = grad(variables["params"], backbone)
  remat = grad(variables["params"], create_backbone("tresnet_tiny", remat=True))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  apply = jax.jit(lambda module, v, x: module.apply(v, x, train=False), static_argnums=0)
  half = apply(create_backbone("tresnet_tiny", dtype=jnp.bfloat16), variables, x)
  full = apply(backbone, variables, x)
  assert half.dtype == jnp.float32 and half.shape == (2, backbone.num_features)
  np.testing.assert_allclose(half, full, rtol=0.1, atol=0.05 * float(jnp.abs(full).max()))
  assert not np.array_equal(half, full)


def test_tresnet_m_forward_costs_what_timm_lists():
  """XLA's cost analysis of the 224 px forward pass: timm lists TResNet-M at 5.7 GMACs
  (2 FLOPs each); within 10%."""
  from kmcl_jax.compilation import flops

  backbone = create_backbone("tresnet_m")
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(backbone.init, jax.random.key(0), image)
  lowered = jax.jit(lambda v, x: backbone.apply(v, x, train=False)).lower(variables, image)
  assert flops(lowered) / 2 == pytest.approx(5.7e9, rel=0.1)
