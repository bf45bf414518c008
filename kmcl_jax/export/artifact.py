"""The folder `python -m kmcl_jax.export` writes, and how it is read back.

  DIR/weights.safetensors  one variant's weights (model or EMA), float32 or bfloat16, named
                           "params/backbone/.../kernel", "batch_stats/..." (Flax's tree
                           joined by "/")
  DIR/probabilities.jax    a serialized `jax.export` program: uint8 RGB images (batch, S,
                           S, 3), already resized, -> float32 class probabilities (batch,
                           K); the batch size is symbolic, the weights are inside
  DIR/model.json           what rebuilds the model (the run's config), the class names,
                           the threshold, the image size, resize and normalisation, the
                           weights' dtype and where they came from; written last, so a
                           folder without it is not (yet) an export

Outside kmcl_jax, the weights read with safetensors and NumPy (bfloat16 through ml_dtypes),
the program runs with JAX alone (and flatbuffers, which its deserialization imports).
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from kmcl_jax.files import file_exists

MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
PROGRAM_FILE = "probabilities.jax"
FORMAT = "kmcl_jax export"
FORMAT_VERSION = 1
WEIGHT_DTYPES = ("float32", "bfloat16")
# safetensors' dtype names -> NumPy's; bfloat16 is ml_dtypes' (jnp.bfloat16), which the
# NumPy loader of safetensors 0.4 (the oldest supported) does not know.
_SAFETENSORS_DTYPES = {"F32": np.float32, "BF16": jnp.bfloat16}


def is_export(path: str) -> bool:
  """Whether `path` (local or gs://) is a finished export: it holds model.json."""
  return file_exists(epath.Path(path) / MODEL_FILE)


def weights_bytes(weights: dict) -> bytes:
  """{"params", "batch_stats"} (nested float32 or bfloat16 arrays) -> a safetensors file."""
  from safetensors.numpy import save

  flat = traverse_util.flatten_dict(weights, sep="/")
  return save({name: np.ascontiguousarray(array) for name, array in flat.items()})


def read_weights(path: str) -> dict:
  """The weights of a safetensors file written by `weights_bytes`, as float32 NumPy arrays
  in Flax's nested {"params", "batch_stats"} tree."""
  from safetensors import SafetensorError, deserialize

  try:
    tensors = deserialize(epath.Path(path).read_bytes())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} is missing: the export is incomplete.") from None
  except SafetensorError as error:
    raise ValueError(f"{path} is not a readable safetensors file ({error}).") from error
  flat = {}
  for name, tensor in tensors:
    if tensor["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(
        f"{path}: {name} is {tensor['dtype']}; an export holds F32 or BF16 weights only."
      )
    array = np.frombuffer(tensor["data"], _SAFETENSORS_DTYPES[tensor["dtype"]])
    flat[name] = array.reshape(tensor["shape"]).astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


def read_description(path: str) -> dict:
  """The contents of DIR/model.json, checked to be an export's."""
  file = epath.Path(path) / MODEL_FILE
  try:
    description = json.loads(file.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{file} is not valid JSON ({error}); export the model again.") from error
  if not isinstance(description, dict) or description.get("format") != FORMAT:
    raise ValueError(
      f'{file} is not the model.json of `python -m kmcl_jax.export` (no "format": "{FORMAT}").'
    )
  if description.get("format_version", 0) > FORMAT_VERSION:
    raise ValueError(
      f"{file} is an export of format {description['format_version']}, newer than this "
      f"kmcl_jax reads ({FORMAT_VERSION}); upgrade kmcl_jax."
    )
  return description


def read_export(path: str) -> tuple[dict, dict]:
  """(model.json's contents, float32 weights {"params", "batch_stats"}) of export `path`."""
  description = read_description(path)
  return description, read_weights(os.fspath(epath.Path(path) / WEIGHTS_FILE))


def export_bytes(path: str) -> int | None:
  """Bytes of the export's three files in local folder `path`; None on an object store."""
  if "://" in path:
    return None
  files = (WEIGHTS_FILE, PROGRAM_FILE, MODEL_FILE)
  return sum(os.path.getsize(os.path.join(path, name)) for name in files)


def folder_bytes(path: str) -> int | None:
  """Bytes of every file under a local folder; None on an object store (listing it
  recursively would take a request per folder)."""
  if "://" in path:
    return None
  return sum(
    os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
  )
