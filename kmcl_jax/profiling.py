"""A `jax.profiler` trace of chosen training steps, for TensorBoard's profile plugin, and
where a trace's time went (`trace_summary`, read from its Chrome-format export).

config.profile_steps = "START:STOP" traces steps START .. STOP - 1 (1-based, as the
progress line counts them) on process 0 and writes the trace under
WORKDIR/tensorboard/plugins/profile/, where `tensorboard --logdir WORKDIR/tensorboard`
(with the tensorboard-plugin-profile package) shows it under PROFILE. Each step is
annotated, so the trace viewer and the overview page split the time by step. Skip the
first steps: they compile and warm up.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
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


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
  """Length of the union of (start, end) intervals."""
  busy, reach = 0.0, float("-inf")
  for start, end in sorted(intervals):
    if end > reach:
      busy += end - max(start, reach)
      reach = end
  return busy


def trace_summary(path: str, wall_seconds: float, threads: int = 8, top: int = 12) -> dict:
  """Where the time of a trace went, from the perfetto_trace.json.gz that
  `jax.profiler.trace(..., create_perfetto_trace=True)` writes, over `wall_seconds` of
  traced work: per thread (a GPU stream, an XLA thread of the host; Python's own frames
  left out), its busy time (the union of its events, ms and % of the wall time), its
  event count and its `top` events by total time ([name, ms, count]); the `threads`
  busiest, busiest first. "device_busy_percent": the busiest thread of an accelerator
  (a "/device:" process; None on a CPU): 100 less it is the share of the wall time in
  which the device waited for the host."""
  with gzip.open(path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  process_names, thread_names = {}, {}
  for event in events:
    if event.get("ph") == "M" and event.get("name") == "process_name":
      process_names[event["pid"]] = event["args"]["name"]
    elif event.get("ph") == "M" and event.get("name") == "thread_name":
      thread_names[event["pid"], event["tid"]] = event["args"]["name"]
  spans = collections.defaultdict(list)
  for event in events:
    if event.get("ph") == "X" and not event["name"].startswith("$"):
      spans[event["pid"], event["tid"]].append(event)
  wall_ms = wall_seconds * 1e3
  rows = []
  for (pid, tid), thread_events in spans.items():
    busy_ms = _busy_seconds([(e["ts"], e["ts"] + e["dur"]) for e in thread_events]) / 1e3
    totals, counts = collections.Counter(), collections.Counter()
    for event in thread_events:
      totals[event["name"]] += event["dur"] / 1e3
      counts[event["name"]] += 1
    rows.append(
      {
        "process": process_names.get(pid, str(pid)),
        "thread": thread_names.get((pid, tid), str(tid)),
        "busy_ms": busy_ms,
        "busy_percent": 100 * busy_ms / wall_ms,
        "events": len(thread_events),
        "top": [[name, ms, counts[name]] for name, ms in totals.most_common(top)],
      }
    )
  rows.sort(key=lambda row: -row["busy_ms"])
  device = [r for r in rows if r["process"].startswith("/device:")]
  return {
    "wall_ms": wall_ms,
    "device_busy_percent": device[0]["busy_percent"] if device else None,
    "threads": rows[:threads],
  }
