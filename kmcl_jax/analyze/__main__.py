r"""What a trained run learned about its classes, measured on a split.

  python -m kmcl_jax.analyze --workdir=/tmp/kmcl_demo [--split=test] [--output=DIR] \
      [--variant=both|auto|model|ema] [--data_root=/data/voc]

Reads the run's config and classes from WORKDIR/run.json and its best checkpoint, passes
the split once (a progress bar) and writes to DIR (default WORKDIR/analysis):
analysis.json, and per variant affinity_V.png (the data's label co-occurrence beside the
class affinities the model learned, with their rank correlation with the data's PMI),
uncertainty_V.png (per class, the learned variance against the positive frequency and
the AP; kernel heads only) and class_map_V.png (a 2-D map of the classes).
kmcl_jax/analyze/analysis.py says what each affinity is. A bad input ends with one
sentence.
"""

from __future__ import annotations

from absl import app, flags

from kmcl_jax.errors import run_program

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's folder.")
_SPLIT = flags.DEFINE_string("split", None, "The split to analyse; default: the run's eval split.")
_OUTPUT = flags.DEFINE_string(
  "output", None, "Folder of the JSON and PNGs; default WORKDIR/analysis."
)
_VARIANT = flags.DEFINE_enum(
  "variant",
  "both",
  ["both", "auto", "model", "ema"],
  "Which weights of the best checkpoint: both, auto (the one that scored it), model, ema.",
)
_DATA_ROOT = flags.DEFINE_string("data_root", None, "The dataset's folder; default: the run's.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")

  def work():
    from kmcl_jax.analyze.report import analyse
    from kmcl_jax.workdir import check_workdir

    check_workdir(_WORKDIR.value, writable=False)
    analyse(_WORKDIR.value, _SPLIT.value, _OUTPUT.value, _VARIANT.value, _DATA_ROOT.value)

  run_program(work)


if __name__ == "__main__":
  app.run(main)
