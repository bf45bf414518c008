"""A `jax.profiler` trace of chosen training steps, for TensorBoard's profile plugin.

config.profile_steps = "START:STOP" traces steps START .. STOP - 1 (1-based, as the
progress line counts them) on process 0 and writes the trace under
WORKDIR/tensorboard/plugins/profile/, where `tensorboard --logdir WORKDIR/tensorboard`
(with the tensorboard-plugin-profile package) shows it under PROFILE. Each step is
annotated, so the trace viewer and the overview page split the time by step. Skip the
first steps: they compile and warm up.
"""

from __future__ import annotations

import contextlib
import os

import jax
from absl import logging
from etils import epath


def parse_steps(spec: str) -> tuple[int, int] | None:
  """ "START:STOP" -> (START, STOP), "" -> None; raises ValueError naming the field."""
  if not spec:
    return None
  start, _, stop = spec.partition(":")
  if not (start.isdigit() and stop.isdigit() and 1 <= int(start) < int(stop)):
    raise ValueError(
      f"config.profile_steps={spec!r}: expected START:STOP with 1 <= START < STOP, e.g. '20:25'."
    )
  return int(start), int(stop)


class StepProfiler:
  """Traces steps [start, stop) of this process if it is process 0 and a range is set."""

  def __init__(self, spec: str, workdir: str):
    self.steps = parse_steps(spec) if jax.process_index() == 0 else None
    self.folder = os.fspath(epath.Path(workdir) / "tensorboard")
    self._tracing = False

  def annotation(self, step: int):
    """The context training step `step` runs in: it starts the trace at the first profiled
    step and names each profiled step in it."""
    if self.steps is None or not self.steps[0] <= step < self.steps[1]:
      return contextlib.nullcontext()
    if not self._tracing:
      jax.profiler.start_trace(self.folder)
      self._tracing = True
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step: int, outputs) -> None:
    """Stops the trace after the last profiled step, once `outputs` (what the step
    returned) are computed, so that the step's device work is in it."""
    if self._tracing and step >= self.steps[1] - 1:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    if self._tracing:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self._tracing = False
      logging.info(
        "Profile of steps %d-%d written to %s/plugins/profile/.",
        self.steps[0],
        self.steps[1] - 1,
        self.folder,
      )
