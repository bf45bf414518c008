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


def test_trace_summary_measures_each_threads_busy_time(tmp_path):
  """A trace in the format jax.profiler exports, with overlapping and nested events: busy
  time is their union, Python's frames are left out, the device is found by name."""
  import gzip
  import json

  def span(pid, tid, ts, dur, name):
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}

  events = [
    {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
    {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7"}},
    {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
    span(1, 7, 0, 400, "conv"),  # 0-400 us
    span(1, 7, 300, 300, "conv"),  # 300-600: overlaps, +200
    span(1, 7, 1000, 100, "fusion"),  # +100: 700 us busy in all
    span(2, 9, 0, 50, "PjitFunction(step)"),
    span(2, 9, 0, 900, "$train.py:10 step"),  # a Python frame: not counted
  ]
  path = tmp_path / "perfetto_trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = profiling.trace_summary(str(path), wall_seconds=0.002)
  device, host = summary["threads"]
  assert (device["process"], device["thread"]) == ("/device:GPU:0", "Stream #7")
  assert device["busy_ms"] == pytest.approx(0.7) and device["events"] == 3
  assert device["top"][0] == ["conv", pytest.approx(0.7), 2]
  assert summary["device_busy_percent"] == pytest.approx(35.0)
  assert host["busy_ms"] == pytest.approx(0.05) and host["events"] == 1
