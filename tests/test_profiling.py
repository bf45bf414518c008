"""config.profile_steps: which steps are traced, and the trace TensorBoard reads."""

import os

import jax
import jax.numpy as jnp
import pytest

from kmcl_jax import profiling


@pytest.mark.parametrize("spec, expected", [("", None), ("20:25", (20, 25)), ("1:2", (1, 2))])
def test_step_ranges(spec, expected):
  assert profiling.parse_steps(spec) == expected


@pytest.mark.parametrize("spec", ["5", "5:5", "0:3", "a:b", "7:3"])
def test_a_bad_range_names_the_field(spec):
  with pytest.raises(ValueError, match=f"config.profile_steps={spec!r}: expected START:STOP"):
    profiling.parse_steps(spec)


def test_the_steps_in_range_are_traced_with_their_numbers(tmp_path):
  profiler = profiling.StepProfiler("2:4", str(tmp_path))
  step = jax.jit(lambda x: jnp.sin(x) * 2)
  x = jnp.ones((64,))
  tracing = []
  for number in range(1, 6):
    with profiler.annotation(number):
      x = step(x)
      tracing.append(profiler._tracing)
    profiler.after(number, x)
  assert tracing == [False, True, True, False, False]
  folder = tmp_path / "tensorboard" / "plugins" / "profile"
  (run,) = os.listdir(folder)
  traces = [name for name in os.listdir(folder / run) if name.endswith(".xplane.pb")]
  assert traces and (folder / run / traces[0]).stat().st_size > 1000
  data = (folder / run / traces[0]).read_bytes()
  assert b"train" in data  # the step annotations
