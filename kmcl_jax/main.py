r"""The KMCL program: train, evaluate or predict per an ml_collections config.

  python -m kmcl_jax.main --config=configs/demo.py --workdir=/tmp/kmcl_demo
  python -m kmcl_jax.main --config=configs/voc.py:tresnet_l --workdir=gs://bucket/run \
      --config.data.root=/data/voc --config.batch_size=256
  python -m kmcl_jax.main --config=configs/demo.py --workdir=/tmp/kmcl_demo --mode=eval
  python -m kmcl_jax.main --config=configs/demo.py --workdir=/tmp/kmcl_demo --mode=predict \
      --inputs='photos/*.jpg' --output=predictions.csv

On a TPU pod or several GPU hosts run the same command on every host; JAX's
multi-controller runtime starts by itself where JAX detects the cluster (Cloud TPU VM
slices, GKE, SLURM, Open MPI: --distributed=auto), or from --coordinator_address with
--num_processes and --process_id.

Exit status: 0 when the run finished, 75 when it stopped on a preemption notice or
SIGTERM with its current step saved (rerun the same command to resume), 130 when
interrupted by Ctrl-C (rerun it to resume from the latest checkpoint), 1 on an error.
A bad input or a run that cannot go on ends with one sentence that says why; the
traceback is printed with --verbosity=1, and always for an unexpected error (a bug).
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from kmcl_jax import config as config_lib
from kmcl_jax import distributed
from kmcl_jax.errors import quiet_orbax, run_program
from kmcl_jax.state import VARIANT_CHOICES

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (path[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, summary.")
_MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "predict"],
  "train (resumes from --workdir), eval (scores the test split and "
  "writes WORKDIR/eval.json), predict (labels --inputs).",
)
_STEP = flags.DEFINE_integer("step", None, "eval/predict: this checkpoint instead of the best.")
_INPUTS = flags.DEFINE_string("inputs", None, "predict: an image, a folder or a glob.")
_OUTPUT = flags.DEFINE_string("output", None, "predict: the .csv or .json file to write.")
_VARIANT = flags.DEFINE_enum(
  "variant",
  "auto",
  VARIANT_CHOICES,
  "predict: which weights; auto = the better in the best checkpoint.",
)
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  distributed.MODES,
  "Start jax.distributed: auto = where JAX detects a cluster of several processes "
  "(Cloud TPU slice, GKE, SLURM, Open MPI; never on a plain machine), on, off.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0, for multi-process runs JAX does "
  "not detect (then also --num_processes, --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in that run.")
flags.mark_flags_as_required(["config", "workdir"])


def _is_failed_save_noise(error: BaseException, where: object = None) -> bool:
  """Whether `error` is an echo of an orbax save that failed: its write callbacks
  finding their event loop closed, its coroutines finalised at exit. After a full disk
  they print a few hundred tracebacks of these; the failure itself is reported in one
  sentence."""
  closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
  finalised = isinstance(error, (RuntimeError, ImportError)) and "coroutine" in repr(where)
  return logging.get_verbosity() < 1 and (closed_loop or finalised)


def _excepthook(kind, error, trace) -> None:
  if not _is_failed_save_noise(error):
    sys.__excepthook__(kind, error, trace)


def _unraisablehook(unraisable) -> None:
  if not _is_failed_save_noise(unraisable.exc_value, unraisable.object):
    sys.__unraisablehook__(unraisable)


def _config_problem(argv: list[str]) -> str | None:
  """What ml_collections would report with a traceback while parsing `argv`, in one
  sentence: a --config file that is missing or fails to load, or a --config.FIELD
  override of a field the config lacks (with the nearest field's name)."""
  spec, overrides = None, []
  for index, arg in enumerate(argv[1:], 1):
    if not arg.startswith("-"):
      continue
    name, has_value, value = arg.lstrip("-").partition("=")
    if name == "config":
      spec = value if has_value else (argv[index + 1] if index + 1 < len(argv) else None)
    elif name.startswith("config."):
      overrides.append(name[len("config.") :])
  if not spec:
    return None
  try:
    config = config_lib.load(spec)
  except (OSError, ValueError) as error:
    return str(error)
  return next(filter(None, (config_lib.unknown_field(config, f) for f in overrides)), None)


def _parse_flags(argv: list[str]) -> list[str]:
  problem = _config_problem(argv)
  if problem:
    sys.exit(problem)
  return app.parse_flags_with_usage(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(quiet_orbax)
  sys.excepthook, sys.unraisablehook = _excepthook, _unraisablehook
  run_program(_run)


def _run() -> None:
  from kmcl_jax.workdir import check_workdir

  check_workdir(_WORKDIR.value, writable=_MODE.value == "train")
  distributed.initialize(
    _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  logging.info(
    "JAX process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  if _MODE.value == "train":
    from kmcl_jax.train import train_and_evaluate

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == "eval":
    from kmcl_jax.inference import evaluate_checkpoint

    evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value)
  else:
    if not _INPUTS.value or not _OUTPUT.value:
      raise app.UsageError("--mode=predict needs --inputs and --output.")
    from kmcl_jax.inference import predict

    predict(
      _CONFIG.value, _WORKDIR.value, _INPUTS.value, _OUTPUT.value, _STEP.value, _VARIANT.value
    )


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
