"""The KMM head: shapes, the reference's initialisation, the (D, K) reading, float32 behind a
bfloat16 backbone."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kmcl_jax import losses
from kmcl_jax.models import KMM, KMCLHead, KMCLModel
from kmcl_jax.models.kmm import DEFAULT_EMBEDDING_DIM

BATCH, POOLED, CLASSES = 3, 40, 5


def _init_apply(module, x, seed=0):
  variables = module.init(jax.random.key(seed), x)
  return variables, module.apply(variables, x)


@pytest.mark.parametrize(
  "kernel, variance, embedding_dim, dim",
  [
    ("anisotropic", "BC", None, DEFAULT_EMBEDDING_DIM),
    ("anisotropic", "MKS", 24, 24),
    ("isotropic", "BC", 24, POOLED),
    ("isotropic", "RBF", None, POOLED),
  ],
)
def test_shapes_and_variance_sharing(kernel, variance, embedding_dim, dim):
  """D is embedding_dim (128 unless set) for the anisotropic kernel, the input's C for the
  isotropic one whatever embedding_dim says."""
  x = jax.random.normal(jax.random.key(1), (BATCH, POOLED))
  size = {} if embedding_dim is None else {"embedding_dim": embedding_dim}
  _, out = _init_apply(KMCLHead(num_classes=CLASSES, kernel=kernel, variance=variance, **size), x)
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


def test_initialisation_follows_the_reference():
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


@pytest.fixture(scope="module")
def bfloat16_model():
  """A KMCLModel with a bfloat16 tresnet_tiny backbone, its variables and 32 px images."""
  model = KMCLModel(backbone="tresnet_tiny", num_classes=CLASSES, dtype=jnp.bfloat16)
  images = jax.random.normal(jax.random.key(9), (2, 32, 32, 3))
  return model, jax.jit(model.init)(jax.random.key(10), images), images


def test_a_bfloat16_backbone_feeds_a_float32_head(bfloat16_model):
  """The head's outputs behind a bfloat16 backbone are bit for bit those of the head
  applied on its own to the same pooled features. Exactly, not to round-off: both
  programs run the same float32 operations (full-precision dots, adds, ELU) on the same
  float32 input, and a bfloat16 operation anywhere in the head would change the bits."""
  model, variables, images = bfloat16_model
  only_backbone = lambda module, method: module.name == "backbone"
  out, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=only_backbone))(
    variables, images
  )
  (pooled,) = state["intermediates"]["backbone"]["__call__"]
  assert pooled.dtype == jnp.float32 and pooled.shape == (2, 512)
  alone = jax.jit(KMCLHead(num_classes=CLASSES).apply)(
    {"params": variables["params"]["head"]}, pooled
  )
  for name in ("features", "pi", "mu", "var"):
    assert out[name].dtype == jnp.float32
    np.testing.assert_array_equal(out[name], alone[name], err_msg=name)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_every_head_layer_multiplies_in_float32_at_full_precision(bfloat16_model):
  model, variables, images = bfloat16_model
  program = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, images).as_text()
  dots = [line for line in program.splitlines() if "stablehlo.dot_general" in line]
  full = [line for line in dots if "precision = [HIGHEST, HIGHEST]" in line]
  # projection (2, 128), pi (2, K), mu and var (2, 128 K): float32 operands and result.
  assert sorted(re.search(r"-> tensor<(\S+)>", line)[1] for line in full) == sorted(
    ["2x128xf32", f"2x{CLASSES}xf32", f"2x{128 * CLASSES}xf32", f"2x{128 * CLASSES}xf32"]
  )
  assert not any("bf16" in line for line in full)
  # Every other dot is the backbone's (squeeze-excite) and stays bfloat16.
  assert len(dots) > len(full) and all("bf16" in line for line in dots if line not in full)


def test_asl_only_head_has_only_pi():
  x = jnp.ones((BATCH, POOLED))
  variables, out = _init_apply(KMCLHead(num_classes=CLASSES, mode="asl_only"), x)
  assert out["mu"] is None and out["var"] is None
  assert set(variables["params"]["kmm"]) == {"pi"}
  assert set(variables["params"]) == {"projection", "kmm"}  # the reference projects here too


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"kernel": "isotropic", "variance": "MKS"}, "anisotropic kernel only"),
    ({"kernel": "anisotropic", "variance": "RBF"}, "isotropic kernel only"),
    ({"variance": "cosine"}, "`variance` must be one of"),
    ({"mode": "ASLOnly"}, "`mode` must be one of"),
    ({"embedding_dim": 0}, "`embedding_dim` must be a positive integer, got 0."),
  ],
)
def test_bad_head_settings_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    KMCLHead(num_classes=CLASSES, **kwargs).init(jax.random.key(0), jnp.ones((2, POOLED)))


@pytest.mark.slow
@pytest.mark.parametrize("kernel", losses.KERNELS)
def test_head_feeds_the_loss_with_finite_gradients(kernel):
  x = jax.random.normal(jax.random.key(6), (8, POOLED))
  labels = (jax.random.uniform(jax.random.key(7), (8, CLASSES)) < 0.5).astype(jnp.float32)
  module = KMCLHead(num_classes=CLASSES, kernel=kernel)
  variables = module.init(jax.random.key(8), x)

  def loss(params):
    out = module.apply({"params": params}, x)
    return losses.kmcl_loss(
      out["features"], out["pi"], out["mu"], out["var"], labels, kernel=kernel
    )[0]

  value, grads = jax.value_and_grad(loss)(variables["params"])
  assert np.isfinite(float(value))
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) >= len(norms) - 1
