"""The parts of the accelerator check (`python -m kmcl_jax.benchmarks.check`).

Each part is a function (settings, work folder, record) that measures one thing and hands
each result to `record` as soon as it has it, so that a part stopped at its time limit
keeps what it measured. The programs it runs are the project's own: the step benchmark's
programs (`step_programs`), `python -m kmcl_jax.main` on generated data and on the demo,
and `python -m kmcl_jax.compare`. No absl flags here.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import jax

from kmcl_jax import optim
from kmcl_jax.benchmarks.inputs import random_batch, write_photos, write_voc_folder
from kmcl_jax.benchmarks.step_programs import (
  CLASSES,
  PROFILED_STEPS,
  measure_backbone,
  measure_fed_from_files,
  measure_loss,
  measure_train_step,
  run_steps,
  step_config,
  train_step_program,
)
from kmcl_jax.mesh import to_global_batch
from kmcl_jax.profiling import trace_summary
from kmcl_jax.reporting import METRICS_FILE, SUMMARY_FILE, parse_metrics

REPOSITORY = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
FEATURE_DIM = 128  # D of the loss at the recipe's embedding size

Record = Callable[[dict], None]


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the check measures: the full sizes on an accelerator, small ones on a CPU."""

  arch: str
  image_size: int
  dtype: str
  batches: tuple[int, ...]  # step benchmark; the goals are judged at the largest
  layouts: tuple[str, ...]  # update layouts of the train step
  repeats: int
  program_images: tuple[int, int]  # trainval, test of the generated VOC folder
  program_batch: int
  program_overrides: tuple[str, ...]  # for configs/voc.py
  demo_overrides: tuple[str, ...]  # for configs/demo.py
  input_images: int
  input_batch: int
  input_workers: int
  compare_flags: tuple[str, ...]


FULL = Settings(
  arch="tresnet_m",
  image_size=224,
  dtype="bfloat16",
  batches=(256, 64),
  layouts=optim.UPDATE_LAYOUTS,
  repeats=20,
  program_images=(384, 192),
  program_batch=64,
  program_overrides=(),
  demo_overrides=(),
  input_images=256,
  input_batch=64,
  input_workers=max(1, min(16, (os.cpu_count() or 2) - 2)),
  compare_flags=("--batch=64",),
)
QUICK = Settings(
  arch="tresnet_tiny",
  image_size=32,
  dtype="float32",
  batches=(8,),
  layouts=("per_leaf",),
  repeats=2,
  program_images=(24, 8),
  program_batch=8,
  program_overrides=("--config.model.backbone=tresnet_tiny", "--config.data.image_size=32"),
  demo_overrides=(
    "--config.train_steps=4",
    "--config.batch_size=8",
    "--config.data.image_size=32",
    "--config.data.worker_count=0",
  ),
  input_images=12,
  input_batch=8,
  input_workers=1,
  compare_flags=(
    "--config=configs/demo.py",
    "--batch=4",
    "--loss_batch=8",
    "--kernels=isotropic",
    "--steps=1",
    "--repeats=1",
  ),
)


# --------------------------------------------------------------------------------------
# a. The step benchmark.
# --------------------------------------------------------------------------------------


def step_part(settings: Settings, work: str, record: Record) -> None:
  """Per batch of settings.batches: the backbone's training pass, the train step (in
  each of settings.layouts at the first batch, in the platform's default layout at the
  others: every compilation of TResNet-M costs about half a minute on a GPU) and the
  KMCL loss's value and gradient alone (K = 20, D = 128, anisotropic, float32): one
  record each."""
  del work
  kind = jax.devices()[0].device_kind
  for batch in settings.batches:
    backbone = measure_backbone(
      settings.arch, settings.dtype, batch, settings.image_size, settings.repeats
    )
    record(_step_row(backbone, kind, backbone.images_per_second))
    layouts = settings.layouts if batch == settings.batches[0] else (optim.update_layout("auto"),)
    for layout in layouts:
      config = step_config(settings.arch, settings.image_size, settings.dtype, batch, layout)
      step = measure_train_step(config, settings.repeats)
      record(_step_row(step, kind, backbone.images_per_second))
    loss = measure_loss(batch, CLASSES, FEATURE_DIM, "anisotropic", settings.repeats)
    record({"program": "loss", "layout": "-", "batch": batch, "ms": loss.seconds * 1e3})


def _step_row(measurement, device_kind: str, backbone_rate: float) -> dict:
  fraction = measurement.peak_fraction(device_kind)
  flops_per_image = measurement.flops_per_image
  return {
    "program": measurement.program,
    "layout": measurement.layout,
    "batch": measurement.batch,
    "images_per_second": measurement.images_per_second,
    "ms": measurement.timing.seconds * 1e3,
    "dispatch_ms": measurement.timing.dispatch_seconds * 1e3,
    "gflop_per_image": flops_per_image and flops_per_image / 1e9,
    "dense_gflop_per_image": measurement.dense_flops / measurement.batch / 1e9,
    "peak_percent": fraction and 100 * fraction,
    "xla_gib": measurement.compiled_bytes / 2**30,
    "device_gib": measurement.device_peak_bytes and measurement.device_peak_bytes / 2**30,
    "vs_backbone": (
      measurement.images_per_second / backbone_rate if measurement.program != "backbone" else None
    ),
  }


# --------------------------------------------------------------------------------------
# b, d. The program itself: configs/voc.py on generated files, the demo.
# --------------------------------------------------------------------------------------


def _run_main(config: str, workdir: str, flags: list[str], log_path: str) -> dict:
  """`python -m kmcl_jax.main` as a user runs it (from the repository root); its exit
  status, wall time, summary.json, evaluations and train records' images/s."""
  command = [
    sys.executable,
    "-m",
    "kmcl_jax.main",
    f"--config={os.path.join(REPOSITORY, config)}",
    f"--workdir={workdir}",
    # The check's cache when it runs under the check, else one beside the workdir.
    "--config.compilation_cache="
    + os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(workdir), "xla")),
    *flags,
  ]
  start = time.time()
  with open(log_path, "w") as log:
    status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)
  wall = time.time() - start
  records = []
  if os.path.exists(os.path.join(workdir, METRICS_FILE)):
    with open(os.path.join(workdir, METRICS_FILE)) as f:
      records = parse_metrics(f.read(), METRICS_FILE)
  summary = None
  if os.path.exists(os.path.join(workdir, SUMMARY_FILE)):
    with open(os.path.join(workdir, SUMMARY_FILE)) as f:
      summary = json.load(f)
  train = [r for r in records if r["split"] == "train" and r.get("images_per_second")]
  evals = [r for r in records if r["split"] == "eval"]
  return {
    "command": " ".join(command[1:]),
    "exit_status": status,
    "wall_seconds": wall,
    "summary": summary and {k: summary.get(k) for k in ("map", "map_ema", "steps", "wall_seconds")},
    "evaluations": sorted({r["step"] for r in evals}),
    "best_map_by_step": {
      r["step"]: max(e["map"] for e in evals if e["step"] == r["step"]) for r in evals
    },
    "images_per_second": (
      sum(r["images_per_second"] for r in train) / len(train) if train else None
    ),
    "train_step_compile_seconds": _logged_number(log_path, _COMPILE_LINE),
    "start_time": start,
    "log_path": log_path,
    "log_tail": _tail(log_path),
  }


# absl's log line prefix: level, MMDD HH:MM:SS.microseconds.
_LOG_TIME = re.compile(r"^[IWEF](\d{4} \d{2}:\d{2}:\d{2}\.\d{6}) ")
_EVAL_LINE = re.compile(r"eval step (\d+) +(\w+) +mAP ([0-9.]+)")
_COMPILE_LINE = re.compile(r"Train step compiled in ([0-9.]+) s")


def _logged_number(log_path: str, pattern: re.Pattern) -> float | None:
  """The number `pattern` captures in the first log line it matches (None if none)."""
  with open(log_path, errors="replace") as f:
    for line in f:
      found = pattern.search(line)
      if found:
        return float(found.group(1))
  return None


def _seconds_to_map(log_path: str, start_time: float, target: float) -> float | None:
  """Seconds from the program's launch to the log line of the first evaluation at which
  the model or its EMA reached mAP `target` (None if none did)."""
  year = time.localtime(start_time).tm_year
  with open(log_path, errors="replace") as f:
    for line in f:
      stamp, found = _LOG_TIME.match(line), _EVAL_LINE.search(line)
      if stamp and found and float(found.group(3)) >= target:
        when = datetime.datetime.strptime(f"{year}{stamp.group(1)}", "%Y%m%d %H:%M:%S.%f")
        return when.timestamp() - start_time
  return None


def _tail(path: str, lines: int = 15) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def program_part(settings: Settings, work: str, record: Record) -> None:
  """configs/voc.py (init_from=scratch) on a generated VOC-layout folder: three epochs,
  an evaluation and a best checkpoint after each, latest checkpoints saved mid-epoch
  while training goes on."""
  trainval, test = settings.program_images
  root = write_voc_folder(os.path.join(work, "voc"), trainval, test)
  steps_per_epoch = trainval // settings.program_batch
  workdir = os.path.join(work, "voc_run")
  result = _run_main(
    "configs/voc.py",
    workdir,
    [
      f"--config.data.root={root}",
      "--config.init_from=scratch",
      "--config.num_epochs=3",
      f"--config.batch_size={settings.program_batch}",
      f"--config.eval_batch_size={settings.program_batch}",
      f"--config.checkpoint_every_steps={max(1, steps_per_epoch // 2)}",
      "--config.log_every_steps=2",
      *settings.program_overrides,
    ],
    os.path.join(work, "voc_run.log"),
  )
  best = os.path.join(workdir, "best")
  result["best_checkpoints"] = sorted(os.listdir(best)) if os.path.isdir(best) else []
  result["expected_evaluations"] = [steps_per_epoch * e for e in (1, 2, 3)]
  result["ok"] = (
    result["exit_status"] == 0
    and result["summary"] is not None
    and result["evaluations"] == result["expected_evaluations"]
    and bool(result["best_checkpoints"])
  )
  record(result)


def demo_part(settings: Settings, work: str, record: Record) -> None:
  """The README's first command (configs/demo.py) to its mAP: wall time, images/s, and
  the first evaluation at which the model or its EMA reached mAP 90."""
  result = _run_main(
    "configs/demo.py",
    os.path.join(work, "demo_run"),
    list(settings.demo_overrides),
    os.path.join(work, "demo_run.log"),
  )
  result["seconds_to_map_90"] = _seconds_to_map(result["log_path"], result["start_time"], 90.0)
  result["ok"] = result["exit_status"] == 0 and result["summary"] is not None
  record(result)


# --------------------------------------------------------------------------------------
# c. Side by side with the authors' code.
# --------------------------------------------------------------------------------------


def compare_part(settings: Settings, work: str, record: Record, baseline_dir: str) -> None:
  """`python -m kmcl_jax.compare` against the checkout at `baseline_dir`: the loss's
  largest difference and speed-up, the first steps' loss difference, and the step's
  speed-up against each form of their step."""
  output = os.path.join(work, "compare.json")
  log_path = os.path.join(work, "compare.log")
  command = [
    sys.executable,
    "-m",
    "kmcl_jax.compare",
    f"--baseline_dir={baseline_dir}",
    f"--json={output}",
    *settings.compare_flags,
  ]
  with open(log_path, "w") as log:
    status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)
  result = {"command": " ".join(command[1:]), "exit_status": status, "log_tail": _tail(log_path)}
  if status == 0:
    with open(output) as f:
      summary = json.load(f)
    step = summary["step"]
    result.update(
      loss_max_rel_diff=summary["loss"]["max_rel_diff"],
      loss_speedup=summary["loss"]["speedup"],
      step_max_rel_diff=step["max_rel_diff"],
      step_speedup=step["speedup"],
      ours_images_per_second=step["ours_images_per_s"],
      theirs={
        precision: {k: timing[k] for k in ("images_per_s", "speedup", "skipped_timed_steps")}
        for precision, timing in step["theirs"].items()
      },
      device=step["device"],
    )
  result["ok"] = status == 0
  record(result)


# --------------------------------------------------------------------------------------
# e. The input check.
# --------------------------------------------------------------------------------------


def input_part(settings: Settings, work: str, record: Record) -> None:
  """The train step fed by the grain pipeline from VOC-sized JPEGs, with the augmentation
  on the host and then on the device: whether the step waits for its input."""
  source = write_photos(_folder(work, "photos"), settings.input_images)
  for augment_on in ("device", "host"):
    layout = optim.update_layout("auto")
    config = step_config(
      settings.arch, settings.image_size, settings.dtype, settings.input_batch, layout
    )
    config.data.augment_on = augment_on
    result = measure_fed_from_files(
      config, source, max(2, settings.repeats // 2), settings.input_workers, read_threads=8
    )
    fed, resident = result["fed"], result["resident"]
    record(
      {
        "augment_on": augment_on,
        "layout": layout,
        "batch": settings.input_batch,
        "workers": settings.input_workers,
        "fed_ms": fed.seconds * 1e3,
        "wait_ms": fed.wait_seconds * 1e3,
        "resident_ms": resident.seconds * 1e3,
        "fed_images_per_second": settings.input_batch / fed.seconds,
        "input_bound": result["input_bound"],
      }
    )


# --------------------------------------------------------------------------------------
# f. Where the train step's time goes.
# --------------------------------------------------------------------------------------


def profile_part(settings: Settings, work: str, record: Record) -> None:
  """A jax.profiler trace of PROFILED_STEPS train steps at the largest batch in the
  default update layout, summarised (`profiling.trace_summary`): the busiest device
  streams and host threads and their top kernels, and how much of the wall time the
  device computed. The trace stays in WORK/trace for TensorBoard."""
  layout = optim.update_layout("auto")
  config = step_config(
    settings.arch, settings.image_size, settings.dtype, max(settings.batches), layout
  )
  step, carry, _, mesh, _ = train_step_program(config)
  batch = to_global_batch(random_batch(config.batch_size, config.data.image_size, CLASSES), mesh)
  carry, _ = run_steps(step, carry, lambda: batch, 2)
  folder = _folder(work, "trace")
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    carry, timing = run_steps(step, carry, lambda: batch, PROFILED_STEPS)
  (path,) = glob.glob(os.path.join(folder, "plugins", "profile", "*", "perfetto_trace.json.gz"))
  record(
    {
      "layout": layout,
      "batch": config.batch_size,
      "steps": PROFILED_STEPS,
      "ms_per_step": timing.seconds * 1e3,
      **trace_summary(path, timing.seconds * PROFILED_STEPS),
    }
  )


def _folder(work: str, name: str) -> str:
  path = os.path.join(work, name)
  os.makedirs(path, exist_ok=True)
  return path
