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
