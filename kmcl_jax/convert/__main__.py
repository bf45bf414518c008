r"""The converter's program: a PyTorch or safetensors checkpoint -> an orbax folder.

  python -m kmcl_jax.convert --src=tresnet_m.pth --arch=tresnet_m --dst=/ckpt/tresnet_m
  python -m kmcl_jax.convert --src=kmcl_voc.ckpt --arch=tresnet_m --dst=/ckpt/kmcl_voc

Writes DST/variables (orbax) and DST/kmcl_model.json; see `kmcl_jax.convert`. Torch
files are read weights-only; `--allow_unsafe_pickle` reads one that holds other objects
(after a warning), for files from a source you trust.
"""

import jax
from absl import app, flags

from kmcl_jax import convert
from kmcl_jax.errors import run_program
from kmcl_jax.models.tresnet import ARCHITECTURES

_SRC = flags.DEFINE_string(
  "src", None, "Checkpoint: .pth/.pt/.ckpt/.pth.tar (torch) or .safetensors."
)
_ARCH = flags.DEFINE_enum("arch", "tresnet_m", sorted(ARCHITECTURES), "Backbone architecture.")
_DST = flags.DEFINE_string("dst", None, "Output folder for the orbax checkpoint.")
_ALLOW_UNSAFE_PICKLE = flags.DEFINE_bool(
  "allow_unsafe_pickle",
  False,
  "Unpickle a torch file fully, objects included, which can run code it holds: only for a "
  "file you trust that the default weights-only load refuses.",
)


def main(argv):
  del argv
  if not _SRC.value or not _DST.value:
    raise app.UsageError("Both --src=FILE and --dst=DIR are required.")
  run_program(convert_file)


def convert_file() -> None:
  convert.check_destination(_DST.value)
  state = convert.read_state_dict(_SRC.value, allow_unsafe_pickle=_ALLOW_UNSAFE_PICKLE.value)
  variables = convert.convert_state_dict(state, _ARCH.value)
  description = convert.model_description(state, _ARCH.value)
  convert.save_converted(variables, description, _DST.value)
  count = sum(v.size for v in jax.tree.leaves(variables.get("params", {})))
  print(f"Converted {_SRC.value} ({description['kind']}, {count:,} parameters) -> {_DST.value}")


if __name__ == "__main__":
  app.run(main)
