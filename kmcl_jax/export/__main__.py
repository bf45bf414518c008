r"""The export's program: a training workdir's weights -> a small folder to put to work.

  python -m kmcl_jax.export --workdir=/tmp/kmcl_demo --output=/tmp/kmcl_demo_export
  python -m kmcl_jax.export --workdir=W --step=600 --variant=ema --bfloat16 \
      --platforms=cpu,cuda --output=DIR

Writes DIR/weights.safetensors, DIR/probabilities.jax and DIR/model.json (see
`kmcl_jax.export.artifact`) and prints a JSON report with the export's and the
checkpoint's sizes in bytes. Exit status 1 with one sentence on a bad input.
"""

import sys

from absl import app, flags, logging

from kmcl_jax.errors import quiet_orbax, run_program
from kmcl_jax.export import DEFAULT_PLATFORMS, export_model
from kmcl_jax.reporting import to_json
from kmcl_jax.state import VARIANT_CHOICES

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's folder.")
_OUTPUT = flags.DEFINE_string("output", None, "The folder to write the export into.")
_STEP = flags.DEFINE_integer("step", None, "This checkpoint instead of the best.")
_VARIANT = flags.DEFINE_enum(
  "variant", "auto", VARIANT_CHOICES, "Which weights; auto = the better in the best checkpoint."
)
_BFLOAT16 = flags.DEFINE_bool("bfloat16", False, "Store the weights as bfloat16 (half the size).")
_PLATFORMS = flags.DEFINE_list(
  "platforms", list(DEFAULT_PLATFORMS), "Platforms the program is lowered for (cpu,cuda,rocm,tpu)."
)
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(quiet_orbax)
  run_program(export)


def export() -> None:
  report = export_model(
    _WORKDIR.value,
    _OUTPUT.value,
    step=_STEP.value,
    variant=_VARIANT.value,
    bfloat16=_BFLOAT16.value,
    platforms=_PLATFORMS.value,
  )
  sys.stdout.write(to_json(report, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
