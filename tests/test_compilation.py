"""The persistent compilation cache's folder, ahead-of-time compilation, cost analysis."""

import jax
import jax.numpy as jnp
import pytest

from kmcl_jax import compilation


@pytest.fixture
def no_cache_variable(monkeypatch):
  monkeypatch.delenv(compilation.CACHE_ENVIRONMENT_VARIABLE, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", "/home/u/.cache-x")


def test_auto_is_the_users_cache_folder_or_the_bucket_of_a_gs_workdir(no_cache_variable):
  assert compilation.cache_folder("auto", "/runs/voc") == "/home/u/.cache-x/kmcl_jax/xla"
  assert compilation.cache_folder("auto", "gs://b/runs/voc/") == "gs://b/runs/voc/xla_cache"
  assert compilation.cache_folder("/fast/xla", "/runs/voc") == "/fast/xla"
  assert compilation.cache_folder("", "/runs/voc") is None


def test_the_environment_variable_wins(monkeypatch):
  monkeypatch.setenv(compilation.CACHE_ENVIRONMENT_VARIABLE, "/tmp/shared_cache")
  assert compilation.cache_folder("", "gs://b/r") == "/tmp/shared_cache"


def test_ahead_of_time_compilation_and_its_flops():
  def matmul(a, b):
    return a @ b

  a = jnp.ones((32, 64), jnp.float32)
  b = jnp.ones((64, 16), jnp.float32)
  compiled, seconds = compilation.compile_ahead(jax.jit(matmul), a, b)
  assert seconds > 0
  assert float(compiled(a, b)[0, 0]) == 64.0
  assert compilation.flops(compiled) == pytest.approx(2 * 32 * 64 * 16, rel=0.01)
  assert compilation.flops(jax.jit(matmul).lower(a, b)) == pytest.approx(2 * 32 * 64 * 16, rel=0.01)


def test_dense_flops_count_each_convolution_and_product_by_hand():
  """2 x multiply-adds: a strided convolution, a grouped one, a batched product."""
  x = jnp.zeros((2, 16, 16, 8))
  kernel = jnp.zeros((3, 3, 8, 12))  # HWIO
  grouped = jnp.zeros((3, 3, 2, 12))  # 4 groups of 2 input channels
  a, b = jnp.zeros((5, 7, 3)), jnp.zeros((5, 3, 4))

  def program(x, kernel, grouped, a, b):
    strided = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # (2, 8, 8, 12)
    per_group = jax.lax.conv_general_dilated(
      x,
      grouped,
      (1, 1),
      "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=4,
    )  # (2, 14, 14, 12)
    return strided.sum() + per_group.sum() + jnp.einsum("bik,bkj->bij", a, b).sum()

  traced = jax.jit(program).trace(x, kernel, grouped, a, b)
  expected = 2 * (2 * 8 * 8 * 12 * 3 * 3 * 8 + 2 * 14 * 14 * 12 * 3 * 3 * 2 + 5 * 7 * 4 * 3)
  assert compilation.dense_flops(traced) == expected


def test_dense_flops_follow_the_backward_pass_scans_and_branches():
  w = jnp.zeros((64, 32))
  x = jnp.zeros((16, 64))
  forward = 2 * 16 * 64 * 32
  loss = lambda w, x: jnp.tanh(x @ w).sum()
  # The gradient with respect to both operands: the forward product and two more.
  assert compilation.dense_flops(jax.jit(jax.grad(loss, (0, 1))).trace(w, x)) == 3 * forward

  square = jnp.zeros((64, 64))

  def scanned(square, x):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ square), None), x, None, length=5)[0]

  assert compilation.dense_flops(jax.jit(scanned).trace(square, x)) == 5 * 2 * 16 * 64 * 64

  def branch(w, x, p):  # the costlier branch counts
    return jax.lax.cond(p, lambda: (x @ w).sum(), lambda: x.sum())

  assert compilation.dense_flops(jax.jit(branch).trace(w, x, True)) == forward


def test_tresnet_m_dense_flops_are_timms_published_macs():
  """timm lists TResNet-M at 5.7 GMACs for a 224 px image (its model card's figure)."""
  from kmcl_jax.models import create_backbone

  model = create_backbone("tresnet_m", dtype=jnp.float32)
  image = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
  traced = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, image)
  assert compilation.dense_flops(traced) / 2 / 1e9 == pytest.approx(5.7, rel=0.03)
