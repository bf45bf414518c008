r"""Side by side with the authors' PyTorch code: the loss term by term and a training
step, or (--run) whole training runs.

  python -m kmcl_jax.compare --baseline_dir=/path/to/KMCL
  python -m kmcl_jax.compare --baseline_dir=/path/to/KMCL --json=compare.json --batch=64
  python -m kmcl_jax.compare --run --config=configs/demo.py --baseline_dir=/path/to/KMCL \
      --json=demo_run.json [--plot=demo_run.png] [--config.num_epochs=3]

Needs torch and timm (`pip install -e '.[test]'`) and a checkout of the authors'
repository mahdihosseini/KMCL; their files run as they are (on the CPU their `.cuda()`
calls are made the identity, see `benchmarks/baseline.py`). Runs on a GPU when both
JAX and torch see one, otherwise on the CPU. Run it from the repository root (the
default --config is `configs/voc.py`, the reference's VOC recipe).

Loss: on the same random head outputs (B = --loss_batch, K = --classes, D = 128), their
`KMCL_Loss` against `losses.kmcl_loss`, both in float32: every term's value and its
gradient with respect to features, pi (the logits), mu and var, and the time of the total's
forward + backward (median of --repeats).

Step: timm's TResNet with their `KMCL` head (`Kmcl_Class.py`), their loss, torch Adam
with the reference's parameter groups, OneCycleLR and their EMA (`theirs.py`: their
train.py's step), against our jitted train step
(`steps.make_train_step`, EMA included) started from the same weights (converted with
`convert.convert_state_dict`), on the same batch. First the loss of each of --steps
steps with both in float32 (TF32 off): the same weights, then the same updates. Then
the median step time over --repeats steps in the training precision: on a GPU ours in
bfloat16 against theirs in two forms, (a) float16 autocast with a GradScaler, as their
train.py runs, and (b) bfloat16 autocast without a scaler. On a randomly initialised
model (a) can skip every step (non-finite float16 gradients: no optimizer update in
the time); (b) updates at every step, so it is the step the speed-up is measured
against. On the CPU both run in float32. Each of their forms is timed once its warm-up
steps stop being skipped (at most 50); the table and the JSON count the steps each
skipped, in warm-up and timed. Our step is timed with one device-to-host read per step.

Without --run, prints one table; with --json=FILE also writes
{"loss": {"max_rel_diff", "speedup", ...}, "step": {"speedup", "device", "theirs", ...}}:
the largest relative difference of any term's value or gradient, the smaller of the
kernels' loss speed-ups, the step's speed-up (their time / ours, against their
bfloat16 step on a GPU, float32 on the CPU) and, per form of their step ("float16",
"bfloat16"; "float32" on the CPU), its time, images/s, speed-up and skipped steps.

--run: ours, theirs and ours with the next seed trained side by side from one
initialisation on the same batches, with the config's whole recipe, all evaluated on the
test split at every evaluation. They agree when, both in float32, the total loss of the
first 10 steps agrees to 1e-3 relative and |final mAP ours - theirs| <= max(2 |ours -
seed B|, 0.5 points); `run.py`'s docstring says why. Prints a line per epoch and per
evaluation, then a table and the verdict; writes --json (the records of every step and
evaluation, wall seconds, the agreement) and the curves as PNG (--plot, default: the
JSON's path with .png). Exits 1 when the runs disagree. --precision=float32 (the
agreement check) or training (each side's training precision: ours bfloat16, theirs
float16 autocast with a GradScaler on a GPU; time to the same mAP).
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from kmcl_jax import losses
from kmcl_jax.compare import run, run_report
from kmcl_jax.compare.loss_step import compare_loss_and_step, device_description
from kmcl_jax.compare.theirs import check_baseline

_BASELINE_DIR = flags.DEFINE_string(
  "baseline_dir", None, "Checkout of the authors' repository mahdihosseini/KMCL."
)
_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/voc.py", "Recipe of the step or of the runs (model, data, optimiser)."
)
_JSON = flags.DEFINE_string("json", None, "Also write the summary to this JSON file.")
_BATCH = flags.DEFINE_integer("batch", 0, "Images per training step; 0: 64 on a GPU, 8 on the CPU.")
_CLASSES = flags.DEFINE_integer("classes", 20, "K, classes of the random labels (VOC: 20).")
_LOSS_BATCH = flags.DEFINE_integer("loss_batch", 64, "B of the loss comparison.")
_KERNELS = flags.DEFINE_list("kernels", list(losses.KERNELS), "Kernels of the loss comparison.")
_STEPS = flags.DEFINE_integer("steps", 3, "Training steps whose losses are compared.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (median reported).")

_RUN = flags.DEFINE_bool("run", False, "Compare whole training runs of --config instead.")
_PRECISION = flags.DEFINE_enum(
  "precision",
  "float32",
  run.RUN_PRECISIONS,
  "--run: both in float32, or in their training precision.",
)
_PLOT = flags.DEFINE_string("plot", None, "--run: the curves' PNG (default: --json with .png).")
_FIRST_STEPS = flags.DEFINE_integer(
  "first_steps", run.FIRST_STEPS, "--run: steps whose losses must agree to --loss_rtol."
)
_LOSS_RTOL = flags.DEFINE_float("loss_rtol", run.LOSS_RTOL, "--run: tolerance of those losses.")
_MAP_FLOOR = flags.DEFINE_float(
  "map_floor", run.MAP_FLOOR, "--run: smallest bound on the final mAP difference, in points."
)


def compare_whole_runs() -> bool:
  """--run: trains, prints, writes the JSON and the plot; whether the runs agree."""
  import torch

  if not _JSON.value:
    raise app.UsageError("--run needs --json=FILE, where the records of the runs go.")
  on_gpu = torch.cuda.is_available() and jax.default_backend() == "gpu"
  record = run.compare_runs(
    _BASELINE_DIR.value,
    _CONFIG.value,
    precision=_PRECISION.value,
    first_steps=_FIRST_STEPS.value,
    loss_rtol=_LOSS_RTOL.value,
    map_floor=_MAP_FLOOR.value,
    on_gpu=on_gpu,
    log=lambda line: print(line, flush=True),
  )
  record["device"] = device_description(on_gpu)
  record["baseline_dir"] = _BASELINE_DIR.value
  run_report.write_json(record, _JSON.value)
  plot = _PLOT.value or os.path.splitext(_JSON.value)[0] + ".png"
  run_report.write_plot(record, plot)
  print(run_report.table(record))
  logging.info("Wrote %s and %s.", _JSON.value, plot)
  return record["agreement"]["agree"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  check_baseline(_BASELINE_DIR.value)
  if _RUN.value:
    if not compare_whole_runs():
      sys.exit(1)
    return
  compare_loss_and_step(
    _BASELINE_DIR.value,
    _CONFIG.value,
    _BATCH.value,
    _CLASSES.value,
    _LOSS_BATCH.value,
    _KERNELS.value,
    _STEPS.value,
    _REPEATS.value,
    _JSON.value,
  )


if __name__ == "__main__":
  app.run(main)
