"""The KMM head: shapes, the spec's initialisation, the (D, K) reading, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kmcl_jax import losses
from kmcl_jax.models import KMM, KMCLHead
from kmcl_jax.models.kmm import PROJECTION_DIM

BATCH, POOLED, CLASSES = 3, 40, 5


def _init_apply(module, x, seed=0):
  variables = module.init(jax.random.key(seed), x)
  return variables, module.apply(variables, x)


@pytest.mark.parametrize("kernel, variance", [
    ("anisotropic", "BC"), ("anisotropic", "MKS"), ("isotropic", "BC"), ("isotropic", "RBF")])
def test_shapes_and_variance_sharing(kernel, variance):
  x = jax.random.normal(jax.random.key(1), (BATCH, POOLED))
  _, out = _init_apply(KMCLHead(num_classes=CLASSES, kernel=kernel, variance=variance), x)
  dim = PROJECTION_DIM if kernel == "anisotropic" else POOLED
  gaussian = (BATCH, dim, CLASSES) if kernel == "anisotropic" else (BATCH, CLASSES)
  assert out["features"].shape == (BATCH, dim)
  assert out["pi"].shape == (BATCH, CLASSES)
  assert out["mu"].shape == gaussian and out["var"].shape == gaussian
  var = np.asarray(out["var"])
  assert var.min() >= 1.0  # 2 + 1e-7 + ELU(x) is >= 1 in float32 (2 + 1e-7 rounds to 2)
  if variance == "MKS":  # one variance per dimension, identical across classes
    np.testing.assert_array_equal(var, np.repeat(var[..., :1], CLASSES, axis=-1))
  if variance == "RBF":  # one variance per sample
    np.testing.assert_array_equal(var, np.repeat(var[:, :1], CLASSES, axis=-1))


def test_initialisation_follows_the_spec():
  x = jnp.ones((BATCH, 16))
  variables, _ = _init_apply(KMM(num_classes=CLASSES, kernel="anisotropic"), x)
  params = variables["params"]
  assert set(params) == {"pi", "mu", "var"}  # one name per output, layer to loss
  mu_kernel = np.asarray(params["mu"]["kernel"])
  assert mu_kernel.shape == (16, 16 * CLASSES)
  assert 0.0 <= mu_kernel.min() and mu_kernel.max() <= 0.1
  assert mu_kernel.std() > 0.02  # U(0, 0.1) has std 0.029, not a constant
  np.testing.assert_array_equal(params["var"]["kernel"], 1.0)
  np.testing.assert_array_equal(params["mu"]["bias"], 0.0)
  np.testing.assert_array_equal(params["var"]["bias"], 0.0)
  assert np.asarray(params["pi"]["kernel"]).std() > 0.0


def test_flat_outputs_are_read_as_dim_by_class():
  """Flat head output index d*K + k is element [d, k] (the reference's reshape)."""
  dim = 6
  x = jax.random.normal(jax.random.key(2), (BATCH, dim))
  module = KMM(num_classes=CLASSES, kernel="anisotropic")
  variables = module.init(jax.random.key(3), x)
  variables = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(4), p.shape), variables)
  out = module.apply(variables, x)
  p = variables["params"]
  flat_mu = np.asarray(x @ p["mu"]["kernel"] + p["mu"]["bias"])
  flat_var = np.asarray(2.0 + 1e-7 + jax.nn.elu(x @ p["var"]["kernel"] + p["var"]["bias"]))
  for d, k in [(0, 0), (1, 0), (0, 1), (dim - 1, CLASSES - 1), (3, 2)]:
    np.testing.assert_allclose(out["mu"][:, d, k], flat_mu[:, d * CLASSES + k], rtol=1e-5)
    np.testing.assert_allclose(out["var"][:, d, k], flat_var[:, d * CLASSES + k], rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  x = jax.random.normal(jax.random.key(5), (BATCH, POOLED))
  variables, out32 = _init_apply(KMCLHead(num_classes=CLASSES), x)
  out16 = KMCLHead(num_classes=CLASSES, dtype=jnp.bfloat16).apply(variables, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  for name in ("features", "pi", "mu", "var"):
    assert out16[name].dtype == jnp.float32
    np.testing.assert_allclose(out16[name], out32[name], rtol=0.05, atol=0.05)
    assert not np.array_equal(out16[name], out32[name]), f"{name} was not computed in bf16"


def test_asl_only_head_has_only_pi():
  x = jnp.ones((BATCH, POOLED))
  variables, out = _init_apply(KMCLHead(num_classes=CLASSES, mode="asl_only"), x)
  assert out["mu"] is None and out["var"] is None
  assert set(variables["params"]["kmm"]) == {"pi"}
  assert set(variables["params"]) == {"projection", "kmm"}  # the reference projects here too


@pytest.mark.parametrize("kwargs, message", [
    ({"kernel": "isotropic", "variance": "MKS"}, "anisotropic kernel only"),
    ({"kernel": "anisotropic", "variance": "RBF"}, "isotropic kernel only"),
    ({"variance": "cosine"}, "`variance` must be one of"),
    ({"mode": "ASLOnly"}, "`mode` must be one of"),
])
def test_bad_head_settings_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    KMCLHead(num_classes=CLASSES, **kwargs).init(jax.random.key(0), jnp.ones((2, POOLED)))


@pytest.mark.parametrize("kernel", losses.KERNELS)
def test_head_feeds_the_loss_with_finite_gradients(kernel):
  x = jax.random.normal(jax.random.key(6), (8, POOLED))
  labels = (jax.random.uniform(jax.random.key(7), (8, CLASSES)) < 0.5).astype(jnp.float32)
  module = KMCLHead(num_classes=CLASSES, kernel=kernel)
  variables = module.init(jax.random.key(8), x)

  def loss(params):
    out = module.apply({"params": params}, x)
    return losses.kmcl_loss(out["features"], out["pi"], out["mu"], out["var"], labels,
                            kernel=kernel)[0]

  value, grads = jax.value_and_grad(loss)(variables["params"])
  assert np.isfinite(float(value))
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) >= len(norms) - 1
