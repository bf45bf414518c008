"""A trained model as a small folder: one variant's weights, what rebuilds the model, and
a portable `jax.export` program of inference (the folder: `kmcl_jax.export.artifact`).

  python -m kmcl_jax.export --workdir=/tmp/kmcl_demo --output=/tmp/kmcl_demo_export

The folder holds neither optimiser state nor the other variant, so it is a fraction of a
checkpoint (float32), or less again with bfloat16 weights. `kmcl_jax.Classifier.load`
reads it; the program runs with JAX alone, on every platform it was exported for,
whichever machine exported it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from kmcl_jax.export import artifact
from kmcl_jax.files import replace_file
from kmcl_jax.reporting import to_json
from kmcl_jax.steps import class_probabilities
from kmcl_jax.workdir import software_versions

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
# The CPU always, so that an export from any accelerator runs on a laptop.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def check_output(output: str) -> None:
  """Raises FileExistsError if `output` holds an export already or is a file."""
  if artifact.is_export(output):
    raise FileExistsError(
      f"--output={output!r} already holds an export ({artifact.MODEL_FILE}); choose "
      "another folder or remove it."
    )
  if epath.Path(output).exists() and not epath.Path(output).is_dir():
    raise FileExistsError(f"--output={output!r} is a file; expected a folder to write into.")


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise ValueError(
      f"--platforms={','.join(platforms)!r}: expected one or more of {', '.join(PLATFORMS)}."
    )
  return tuple(platforms)


def export_program(classifier, weights: dict, platforms: Sequence[str]) -> bytes:
  """The serialized `jax.export` program of `classifier`'s model with `weights` (float32
  or bfloat16 arrays, kept as they are and cast to float32 inside): uint8 images
  (batch, S, S, 3) -> float32 probabilities (batch, K), for a symbolic batch size, lowered
  for every platform of `platforms`."""
  config, model, size = classifier.config, classifier.model, classifier.image_size
  # Device arrays, cast inside the traced program: the program keeps bfloat16 constants
  # (NumPy arrays would be cast on the host first).
  weights = jax.device_put(weights)

  def probabilities(images):
    as_float32 = jax.tree.map(lambda w: w.astype(jnp.float32), weights)
    return class_probabilities(config, model, as_float32, images)

  (batch,) = jax.export.symbolic_shape("batch")
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  exported = jax.export.export(jax.jit(probabilities), platforms=tuple(platforms))(images)
  return bytes(exported.serialize())


def export_model(
  workdir: str,
  output: str,
  *,
  step: int | None = None,
  variant: str = "auto",
  bfloat16: bool = False,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict:
  """Writes the export of WORKDIR's best checkpoint (or `step`), model or EMA weights
  (`variant`, "auto" = the one that scored its mAP), to folder `output`: the weights
  (bfloat16 if `bfloat16`, else float32), the program for `platforms`, then model.json.
  Returns a report: where each came from, and the export's and the checkpoint's bytes."""
  from kmcl_jax.classifier import Classifier  # which reads exports through this package

  if jax.process_count() > 1:
    raise ValueError("python -m kmcl_jax.export runs as a single process.")
  platforms = check_platforms(platforms)
  if artifact.is_export(workdir):
    raise ValueError(
      f"--workdir={workdir!r} is an export already; pass the training workdir it came from."
    )
  check_output(output)
  classifier = Classifier.load(workdir, step=step, variant=variant)
  dtype = "bfloat16" if bfloat16 else "float32"
  weights = jax.tree.map(lambda w: np.asarray(w).astype(jnp.dtype(dtype)), classifier.weights)
  folder = epath.Path(output)
  folder.mkdir(parents=True, exist_ok=True)
  replace_file(folder / artifact.WEIGHTS_FILE, artifact.weights_bytes(weights))
  replace_file(folder / artifact.PROGRAM_FILE, export_program(classifier, weights, platforms))
  config = classifier.config
  description = {
    "format": artifact.FORMAT,
    "format_version": artifact.FORMAT_VERSION,
    "class_names": classifier.class_names,
    "threshold": classifier.threshold,
    "image_size": classifier.image_size,
    "resize": "RGB, bilinear to image_size x image_size ignoring the aspect ratio (PIL)",
    "mean": list(config.data.mean),
    "std": list(config.data.std),
    "normalisation": "(x / 255 - mean) / std, inside the program and the model",
    "weights": {
      "file": artifact.WEIGHTS_FILE,
      "dtype": dtype,
      "variant": classifier.variant,
      "origin": classifier.origin,
    },
    "program": {
      "file": artifact.PROGRAM_FILE,
      "platforms": list(platforms),
      "compute_dtype": jnp.dtype(classifier.model.dtype).name,
      "input": "uint8 (batch, image_size, image_size, 3) RGB, resized as above",
      "output": "float32 (batch, K) class probabilities, K = len(class_names)",
    },
    "config": config.to_dict(),
    "versions": software_versions(),
  }
  # Last: a folder with model.json is a whole export.
  replace_file(folder / artifact.MODEL_FILE, to_json(description, indent=2).encode())
  report = {
    "export": output,
    "export_bytes": artifact.export_bytes(output),
    "checkpoint": classifier.source,
    "checkpoint_bytes": artifact.folder_bytes(classifier.source),
    "weights": f"{classifier.variant} of {classifier.origin}, {dtype}",
    "platforms": list(platforms),
  }
  logging.info("Exported %s", to_json(report))
  return report
