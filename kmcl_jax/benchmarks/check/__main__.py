r"""The accelerator check: one command that spends a short GPU or TPU loan on what matters.

  python -m kmcl_jax.benchmarks.check --output=/tmp/check                 # on a GPU / TPU VM
  python -m kmcl_jax.benchmarks.check --output=/tmp/check --baseline_dir=/path/to/KMCL
  python -m kmcl_jax.benchmarks.check --output=/tmp/check --quick         # the same, small

Parts, by priority, each in its own process under its own time limit (`LIMITS`, and never
past --budget_seconds for all of them), so that a slow or hung part cannot eat the rest:

  step     the step benchmark (TResNet-M, 224 px, bfloat16) at batch 256 and 64: the
           backbone's training pass, the train step (every update layout at 256, the
           default one at 64; img/s, % of the bf16 peak, device memory) and the loss's
           value and gradient alone
  program  `python -m kmcl_jax.main --config=configs/voc.py` (init_from=scratch) on a
           generated VOC-layout folder: three short epochs, an evaluation and a best
           checkpoint after each, latest checkpoints mid-epoch; exit 0 and a summary
  compare  `python -m kmcl_jax.compare --batch=64` against --baseline_dir (skipped without)
  demo     the README's demo run to its mAP: wall time, images/s, seconds to mAP 90
  input    the step fed by the grain pipeline from VOC-sized JPEGs, augmented on the host
           and on the device: how long the step waits for its input
  profile  a trace of 3 train steps at batch 256: the busiest device streams and their top
           kernels, and the share of the time the device computed (what to fix when a goal
           is missed); the trace stays in OUTPUT/work/profile/trace for TensorBoard

A part hands each result over as it gets it, so one stopped at its limit keeps what it
measured. --quick runs every part small (tresnet_tiny, small images, few steps), on a CPU
in a few minutes: CI runs it, so that the check works when an accelerator is lent.

Writes OUTPUT/check.json (every record of every part, the goals with their values and
verdicts, the device, JAX and Python versions), OUTPUT/check.md (the tables, and the row
docs/benchmarks.md keeps per run), each part's log in OUTPUT/logs/, and prints check.md.
Exit status 0 when every part ran to its end (or was skipped), 1 otherwise; a missed
goal is a result, not a failure of the check.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

import jax
from absl import app, flags

from kmcl_jax.benchmarks.check import goals as goals_lib
from kmcl_jax.benchmarks.check import parts as check_parts
from kmcl_jax.benchmarks.check.report import render
from kmcl_jax.files import replace_file

PARTS = ("step", "program", "compare", "demo", "input", "profile")
# Seconds each part may run on an accelerator. Together they exceed BUDGET, the 8 minutes
# a 15-minute loan leaves after the machine's start and the transfers: the last parts get
# what the first ones leave (on an H200 each compilation of a train step takes about 30 s,
# most of every part). --quick (a 2-core CPU) allows each part more, and has no budget.
LIMITS = {"step": 170, "program": 110, "compare": 100, "demo": 90, "input": 70, "profile": 30}
BUDGET = 480
QUICK_LIMITS = {part: 300 for part in PARTS}

_OUTPUT = flags.DEFINE_string("output", None, "Folder for check.json, check.md, logs/.")
_BASELINE_DIR = flags.DEFINE_string(
  "baseline_dir", None, "Checkout of the authors' repository (mahdihosseini/KMCL) for compare."
)
_QUICK = flags.DEFINE_bool("quick", False, "Every part small (tiny backbone, small images).")
_PARTS = flags.DEFINE_list("parts", list(PARTS), f"Parts to run, from {PARTS}.")
_BUDGET = flags.DEFINE_float(
  "budget_seconds", 0, f"All parts together; 0: {BUDGET} (--quick: the sum of the limits)."
)
_XLA_FLAGS = flags.DEFINE_string(
  "xla_flags", "", "XLA_FLAGS for every part (e.g. to time a compiler option), recorded."
)
_LIMITS = flags.DEFINE_list(
  "limits", [], "PART=SECONDS pairs that replace a part's time limit (e.g. step=200)."
)
_BATCHES = flags.DEFINE_list("batches", [], "step: these batch sizes instead of the defaults.")
_LAYOUTS = flags.DEFINE_list("layouts", [], "step: these update layouts instead of all.")
_DEMO_FLAGS = flags.DEFINE_list(
  "demo_flags", [], "demo: extra --config overrides, e.g. --config.data.worker_count=8."
)
_PART = flags.DEFINE_enum("part", None, PARTS, "Run this one part here (the check's children).")
flags.mark_flag_as_required("output")


def _part_file(output: str, part: str) -> str:
  return os.path.join(output, "parts", f"{part}.json")


def _write_json(path: str, value) -> None:
  """Writes `value` as JSON to `path` whole, so a reader sees all or nothing."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  replace_file(path, json.dumps(value, indent=2).encode())


def _settings() -> check_parts.Settings:
  """The sizes of --quick or of an accelerator, with the flags' replacements."""
  settings = check_parts.QUICK if _QUICK.value else check_parts.FULL
  return dataclasses.replace(
    settings,
    batches=tuple(int(b) for b in _BATCHES.value) or settings.batches,
    layouts=tuple(_LAYOUTS.value) or settings.layouts,
    demo_overrides=settings.demo_overrides + tuple(_DEMO_FLAGS.value),
  )


def run_part(part: str, output: str, settings: check_parts.Settings, baseline_dir: str | None):
  """Runs one part in this process, rewriting OUTPUT/parts/PART.json after each record."""
  records = []
  work = os.path.join(output, "work", part)
  os.makedirs(work, exist_ok=True)

  def record(result: dict) -> None:
    records.append(result)
    _write_json(_part_file(output, part), {"records": records, "finished": False})
    print(f"check {part}: {json.dumps(result, default=str)[:400]}", flush=True)

  functions = {
    "step": check_parts.step_part,
    "program": check_parts.program_part,
    "demo": check_parts.demo_part,
    "input": check_parts.input_part,
    "profile": check_parts.profile_part,
    "compare": lambda s, w, r: check_parts.compare_part(s, w, r, baseline_dir),
  }
  functions[part](settings, work, record)
  _write_json(_part_file(output, part), {"records": records, "finished": True})


def _launch(part: str, output: str, limit: float) -> dict:
  """Runs `part` in a child process (its own process group, killed whole at `limit`
  seconds); returns its status, seconds and records."""
  command = [sys.executable, "-m", "kmcl_jax.benchmarks.check", f"--part={part}"]
  command += [f"--output={output}", f"--quick={_QUICK.value}"]
  for flag in (_BATCHES, _LAYOUTS, _DEMO_FLAGS):
    if flag.value:
      command.append(f"--{flag.name}={','.join(flag.value)}")
  if _BASELINE_DIR.value:
    command.append(f"--baseline_dir={_BASELINE_DIR.value}")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(output, "xla_cache"))
  if _XLA_FLAGS.value:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_XLA_FLAGS.value}".strip()
  if part == "compare":  # torch shares the device: JAX takes memory as it needs it
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  log_path = os.path.join(output, "logs", f"{part}.log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  start = time.perf_counter()
  with open(log_path, "w") as log:
    child = subprocess.Popen(
      command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
      status = child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      os.killpg(child.pid, signal.SIGKILL)
      child.wait()
      status = None
  seconds = time.perf_counter() - start
  path = _part_file(output, part)
  saved = {"records": [], "finished": False}
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
  if status is None:
    outcome = f"stopped at its limit of {limit:.0f} s"
  elif status != 0 or not saved["finished"]:
    outcome = f"failed (exit {status}, see logs/{part}.log)"
  elif not all(r.get("ok", True) for r in saved["records"]):
    outcome = f"failed (a program it ran failed; see logs/{part}.log and work/{part}/)"
  else:
    outcome = "done"
  return {"status": outcome, "seconds": round(seconds, 1), "limit": limit, **saved}


def _limits() -> dict[str, float]:
  limits = dict(QUICK_LIMITS if _QUICK.value else LIMITS)
  for pair in _LIMITS.value:
    part, _, seconds = pair.partition("=")
    if part not in PARTS or not seconds.replace(".", "", 1).isdigit():
      raise app.UsageError(f"--limits={pair!r}: expected PART=SECONDS with PART in {PARTS}.")
    limits[part] = float(seconds)
  return limits


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  output = os.path.abspath(_OUTPUT.value)
  if _PART.value:
    run_part(_PART.value, output, _settings(), _BASELINE_DIR.value)
    return
  unknown = sorted(set(_PARTS.value) - set(PARTS))
  if unknown:
    raise app.UsageError(f"--parts: unknown part(s) {unknown}; expected some of {PARTS}.")
  limits = _limits()
  budget = _BUDGET.value or (sum(limits.values()) if _QUICK.value else BUDGET)
  start = time.perf_counter()
  device = jax.devices()[0]
  check = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "device": device.device_kind,
    "platform": device.platform,
    "device_count": jax.device_count(),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "quick": _QUICK.value,
    "xla_flags": _XLA_FLAGS.value,
    "parts": {},
  }
  for part in (p for p in PARTS if p in _PARTS.value):
    left = budget - (time.perf_counter() - start)
    if part == "compare" and not _BASELINE_DIR.value:
      check["parts"][part] = {"status": "skipped (no --baseline_dir)", "seconds": 0, "limit": 0}
      continue
    if left < 5:
      check["parts"][part] = {"status": "skipped (budget spent)", "seconds": 0, "limit": 0}
      continue
    print(f"check: {part} (limit {min(limits[part], left):.0f} s)", flush=True)
    check["parts"][part] = _launch(part, output, min(limits[part], left))
    print(f"check: {part} {check['parts'][part]['status']}", flush=True)
  values = goals_lib.goal_values(check["parts"])
  verdicts = goals_lib.judge(values)
  check["goals"] = {
    name: {
      **dataclasses.asdict(goal),
      "value": values[name],
      "met": verdicts[name],
    }
    for name, goal in goals_lib.GOALS.items()
  }
  check["seconds"] = time.perf_counter() - start
  _write_json(os.path.join(output, "check.json"), check)
  text = render(check)
  with open(os.path.join(output, "check.md"), "w") as f:
    f.write(text)
  print(text)
  if any(not p["status"].startswith(("done", "skipped")) for p in check["parts"].values()):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
