r"""PyTorch TResNet / KMCL checkpoints -> Flax variables and orbax checkpoints: the
library (no flags; the program is `python -m kmcl_jax.convert`, in `__main__.py`).

Reads `.pth`/`.pt`/`.ckpt`/`.pth.tar` with torch's weights-only loader (tensors and plain
data only: a file holding other objects is refused, never executed; see
`read_state_dict`; nested "state_dict"/"model" keys and a DataParallel "module." prefix
are handled) or `.safetensors` (no torch). Understands
  * timm's TResNet names (`body.layer1.0.conv1.conv.weight`, `...bn.running_mean`),
    `tresnet_v2_l`'s for `tresnet_l_v2`;
  * the original ASL/KMCL TResNet names (InPlaceABN: `conv1.0` conv, `conv1.1` norm,
    strided convs one level deeper), whose norm weight is used as |w| + 1e-5; their
    `TResnetLV2` for `tresnet_l_v2` (Bottlenecks from layer 1: a `layer1.0.downsample.0`
    shortcut, layer 2 strided in `conv2`);
  * the KMCL wrapper (`encoder.*` backbone, `downsampler.*` projection, `kmm.pi/mean/var.*`),
    converted to the whole `KMCLModel` with the head's flat K*D outputs read as (D, K)
    and its mean layer `kmm.mean` as our `mu`.
Classifier heads (`head.fc.*`) are dropped. Anything else missing, left over or of the
wrong shape is an error that lists every such key, never a partially loaded model.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from kmcl_jax.models.kmcl import KMCLModel
from kmcl_jax.models.kmm import DEFAULT_EMBEDDING_DIM
from kmcl_jax.models.tresnet import ARCHITECTURES, create_backbone

MODEL_FILE = "kmcl_model.json"  # beside the orbax checkpoint: what the variables belong to
ABN_EPSILON = 1e-5

Array = np.ndarray


# --------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------


def _to_numpy(value) -> Array:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
  """The state dict inside a training checkpoint ({"state_dict": ...}, {"model": ...})."""
  for key in ("state_dict", "model", "state_dict_ema"):
    if key in checkpoint and isinstance(checkpoint[key], Mapping):
      return _unwrap(checkpoint[key])
  return checkpoint


def normalise_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Array]:
  """Unwraps nesting, drops a DataParallel "module." prefix, converts values to NumPy."""
  flat = _unwrap(state_dict)
  return {
    (k[len("module.") :] if k.startswith("module.") else k): _to_numpy(v)
    for k, v in flat.items()
    if not k.endswith("num_batches_tracked")
  }


TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".pth.tar")

# What a weights-only torch.load reads besides tensors, dicts, lists, tuples, numbers,
# strings and None: plain data classes that a known checkpoint format stores, no more.
SAFE_EXTRA_TYPES = (
  argparse.Namespace,  # timm's train.py checkpoints (last.pth.tar): its arguments, "args"
)


def _refused_content(path: str, error: Exception) -> str:
  """What a weights-only load of `path` refused, named for the error message."""
  import torch

  try:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads, runs nothing
  except ValueError:  # a legacy (non-zip, pre-1.6) file: only torch's message names it
    names = re.findall(r"GLOBAL (\S+) was not an allowed global", str(error))
  if names:
    return "the type" + ("s " if len(names) > 1 else " ") + ", ".join(names)
  reason = re.search(r"WeightsUnpickler error: ([^\n]*)", str(error))
  return f"data a weights-only load refuses ({reason[1] if reason else error})"


def _load_torch_file(path: str, allow_unsafe_pickle: bool) -> Any:
  """torch.load of `path` reading only data (tensors, containers, numbers, strings and
  `SAFE_EXTRA_TYPES`), or, with `allow_unsafe_pickle`, any pickled object after a warning."""
  try:
    import torch
  except ImportError as error:
    raise ImportError(
      f"Reading {path!r} needs torch (pip install torch), or convert it to .safetensors first."
    ) from error
  if allow_unsafe_pickle:
    logging.warning(
      "--allow_unsafe_pickle: unpickling %s, which can run any code the file "
      "holds; do this only with a file from a source you trust.",
      path,
    )
    return torch.load(path, map_location="cpu", weights_only=False)
  with torch.serialization.safe_globals(list(SAFE_EXTRA_TYPES)):
    try:
      return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
      refused = _refused_content(path, error)
      raise ValueError(
        f"--src={path!r} contains {refused}, which a safe (weights-only) load does not "
        "read: load it yourself in a session you trust and save its state dict as "
        ".safetensors (safetensors.torch.save_file), or pass --allow_unsafe_pickle "
        "if you trust the file."
      ) from None


def read_state_dict(path: str, allow_unsafe_pickle: bool = False) -> dict[str, Array]:
  """The state dict (NumPy arrays by key) in a `.safetensors` file (NumPy only) or a
  torch `.pth`/`.pt`/`.ckpt`/`.pth.tar` file.

  Torch files are read with a weights-only load, which rebuilds tensors, containers,
  numbers, strings and `SAFE_EXTRA_TYPES` and calls nothing else the pickle names; a
  file that needs anything else is refused (ValueError naming it) unless
  `allow_unsafe_pickle` is set, which unpickles it fully after a warning.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--src={path!r} does not exist.")
  if path.endswith(".safetensors"):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
      return normalise_state_dict(load_file(path))
    except SafetensorError as error:
      raise ValueError(
        f"--src={path!r} is not a readable .safetensors file ({error}): it may be cut "
        "short or damaged; download or copy it again."
      ) from None
  if not path.endswith(TORCH_SUFFIXES):
    raise ValueError(f"--src={path!r}: expected a .pth, .pt, .ckpt, .pth.tar or .safetensors file.")
  with open(path, "rb") as f:
    # torch.save writes a zip archive (torch >= 1.6) or, before, a protocol-2 pickle.
    if not (zipfile.is_zipfile(f) or f.seek(0) == 0 and f.read(1) == b"\x80"):
      raise ValueError(
        f"--src={path!r} is not a PyTorch checkpoint (neither the zip archive "
        "nor the pickle that torch.save writes)."
      )
  content = _load_torch_file(path, allow_unsafe_pickle)
  state = _unwrap(content) if isinstance(content, Mapping) else content
  if not (
    isinstance(state, Mapping)
    and state
    and all(isinstance(k, str) and hasattr(v, "shape") for k, v in state.items())
  ):
    raise ValueError(
      f"--src={path!r} holds a {type(content).__name__}"
      f"{' without tensors by name' if isinstance(content, Mapping) else ''}, "
      "not a state dict (parameter names mapped to tensors), nor a checkpoint "
      "holding one under 'state_dict', 'model' or 'state_dict_ema'."
    )
  return normalise_state_dict(content)


# --------------------------------------------------------------------------------------
# Names: every Flax leaf knows its PyTorch key and how to transform the array.
# --------------------------------------------------------------------------------------

_CONV = lambda w: w.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
_POINTWISE = lambda w: w.reshape(w.shape[0], w.shape[1]).T  # (O, I[, 1, 1]) -> (I, O)
_DENSE = lambda w: w.T
_SAME = lambda w: w
_ABN_SCALE = lambda w: np.abs(w) + ABN_EPSILON

_BN_NAMES = {
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}


def detect_layout(backbone_state: Mapping[str, Array]) -> str:
  """ "timm" or "original" (ASL/KMCL with InPlaceABN) from the stem's key names."""
  if "body.conv1.conv.weight" in backbone_state:
    return "timm"
  if "body.conv1.0.weight" in backbone_state:
    return "original"
  raise ValueError(
    "Unrecognised TResNet checkpoint: expected body.conv1.conv.weight (timm) "
    "or body.conv1.0.weight (original ASL/KMCL layout)."
  )


def _is_strided(stage: int, block: int, conv: str, bottleneck_stages: Sequence[bool]) -> bool:
  """Whether this conv is the anti-aliased stride-2 one: in the first block of layers 2-4,
  conv2 of a Bottleneck, conv1 of a BasicBlock."""
  return (
    stage >= 2 and block == 0 and conv == ("conv2" if bottleneck_stages[stage - 1] else "conv1")
  )


def _backbone_key(
  path: tuple[str, ...], collection: str, layout: str, bottleneck_stages: Sequence[bool]
) -> tuple[str, Callable]:
  """PyTorch key of one backbone leaf, e.g. ("layer2_0", "conv1", "bn", "scale"), in a
  TResNet whose stage s (1-4) has Bottleneck blocks where bottleneck_stages[s - 1]."""
  if path[0] == "conv1":
    prefix, stage, block, rest = "body.conv1", 0, 0, path[1:]
  else:
    stage, block = (int(v) for v in path[0][len("layer") :].split("_"))
    prefix, rest = f"body.layer{stage}.{block}.{path[1]}", path[2:]
    if path[1] == "se":  # ("layerS_I", "se", "fc1", "kernel" | "bias")
      return f"{prefix}.{rest[0]}.{'weight' if rest[1] == 'kernel' else 'bias'}", (
        _POINTWISE if rest[1] == "kernel" else _SAME
      )
  conv = path[1] if path[0] != "conv1" else "conv1"
  # Shortcuts are Sequential([AvgPool,] conv + norm): in the strided layers 2-4 the conv
  # sits at index 1; in layer 1 (Bottlenecks widening 64 -> 256 channels, L-v2) at 0.
  if conv == "downsample":
    prefix += ".1" if stage >= 2 else ".0"
  elif layout == "original" and _is_strided(stage, block, conv, bottleneck_stages):
    prefix += ".0"  # Sequential(conv2d_ABN, anti-alias)
  part, leaf = rest
  if part == "conv":
    return prefix + (".conv.weight" if layout == "timm" else ".0.weight"), _CONV
  name = _BN_NAMES[(collection, leaf)]
  if layout == "timm":
    return f"{prefix}.bn.{name}", _SAME
  return f"{prefix}.1.{name}", (_ABN_SCALE if name == "weight" else _SAME)


_REFERENCE_HEAD_NAMES = {"pi": "pi", "mu": "mean", "var": "var"}  # our KMM layer -> theirs


def _head_key(path: tuple[str, ...]) -> tuple[str, Callable]:
  """PyTorch key of one head leaf: ("projection", "kernel") or ("kmm", "pi", "bias")."""
  leaf = path[-1]
  if path[0] == "projection":  # the reference's Conv1d(C, D, 1) "downsampler"
    return f"downsampler.{'weight' if leaf == 'kernel' else 'bias'}", (
      _POINTWISE if leaf == "kernel" else _SAME
    )
  # kmm.mean/var output index d*K + k is Flax Dense output index d*K + k: W^T as is.
  return f"kmm.{_REFERENCE_HEAD_NAMES[path[1]]}.{'weight' if leaf == 'kernel' else 'bias'}", (
    _DENSE if leaf == "kernel" else _SAME
  )


# --------------------------------------------------------------------------------------
# Conversion.
# --------------------------------------------------------------------------------------


def kmcl_head_settings(state_dict: Mapping[str, Array]) -> dict[str, Any]:
  """num_classes, kernel, variance, mode and (anisotropic) embedding_dim of a KMCL wrapper
  checkpoint, read off its shapes: the `KMCLModel` head settings it was trained with."""
  if "kmm.pi.weight" not in state_dict:
    raise ValueError(
      "The checkpoint has a KMCL encoder (encoder.*) but no head: expected "
      "kmm.pi.weight (and kmm.mean/var.* unless trained ASL-only)."
    )
  classes, dim = state_dict["kmm.pi.weight"].shape
  anisotropic = "downsampler.weight" in state_dict  # (D, C, 1): the projection to D
  settings = {"num_classes": classes, "kernel": "anisotropic" if anisotropic else "isotropic"}
  if "kmm.mean.weight" not in state_dict:
    settings.update(variance="BC", mode="asl_only")
  else:
    var_out = state_dict["kmm.var.weight"].shape[0]
    variance = (
      "RBF"
      if var_out == 1
      else ("MKS" if var_out == dim and anisotropic and classes != 1 else "BC")
    )
    settings.update(variance=variance, mode="all")
  if anisotropic:
    settings["embedding_dim"] = state_dict["downsampler.weight"].shape[0]
  return settings


def _is_kmcl_checkpoint(state_dict: Mapping[str, Array]) -> bool:
  """Whether the keys are the KMCL wrapper's (`encoder.*` backbone) rather than a backbone's."""
  return any(k.startswith("encoder.") for k in state_dict)


def _target_module(state_dict: Mapping[str, Array], arch: str):
  if _is_kmcl_checkpoint(state_dict):
    return KMCLModel(backbone=arch, **kmcl_head_settings(state_dict)), True
  return create_backbone(arch), False


def convert_state_dict(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
  """Flax variables {"params", "batch_stats"} for a timm, original or KMCL state dict.

  A backbone checkpoint gives the variables of `create_backbone(arch)`; a KMCL wrapper
  checkpoint (keys `encoder.*`, `kmm.*`) gives those of `KMCLModel(arch, ...)` with the
  head settings read off its shapes (`kmcl_head_settings`).

  Raises:
    ValueError listing every missing key, unexpected key and shape mismatch.
  """
  if arch not in ARCHITECTURES:
    raise ValueError(f"--arch={arch!r} is not one of {sorted(ARCHITECTURES)}.")
  state = normalise_state_dict(state_dict)
  module, is_kmcl = _target_module(state, arch)
  backbone_state = (
    {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if is_kmcl
    else state
  )
  layout = detect_layout(backbone_state)
  bottleneck_stages = create_backbone(arch).bottleneck_stages
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))

  missing, mismatched, used = [], [], set()
  converted = {}
  for path, target in flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes)).items():
    collection, parts = path[0], path[1:]
    if is_kmcl and parts[0] == "head":
      key, transform = _head_key(parts[1:])
    else:
      key, transform = _backbone_key(
        parts[1:] if is_kmcl else parts, collection, layout, bottleneck_stages
      )
      key = "encoder." + key if is_kmcl else key
    if key not in state:
      missing.append(key)
      continue
    used.add(key)
    value = transform(state[key]).astype(np.float32)
    if value.shape != target.shape:
      mismatched.append(
        f"{key}: checkpoint {state[key].shape} -> {value.shape}, "
        f"model expects {target.shape} ({'/'.join(path)})"
      )
      continue
    converted[path] = value
  dropped = ("head.fc.", "encoder.head.")
  unexpected = sorted(k for k in state if k not in used and not k.startswith(dropped))
  if missing or mismatched or unexpected:
    lines = (
      ([f"missing ({len(missing)}): " + ", ".join(missing)] if missing else [])
      + ([f"shape mismatch ({len(mismatched)}): " + "; ".join(mismatched)] if mismatched else [])
      + ([f"unexpected ({len(unexpected)}): " + ", ".join(unexpected)] if unexpected else [])
    )
    raise ValueError(
      f"The checkpoint does not fit {arch} ({layout} layout"
      f"{', KMCL wrapper' if is_kmcl else ''}):\n  " + "\n  ".join(lines)
    )
  return flax.traverse_util.unflatten_dict(converted)


def model_description(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
  """What converted variables belong to: {"arch", "kind": "backbone"|"kmcl"} and, for a KMCL
  model, its head settings (`kmcl_head_settings`; embedding_dim for the anisotropic kernel)."""
  state = normalise_state_dict(state_dict)
  if _is_kmcl_checkpoint(state):
    return {"arch": arch, "kind": "kmcl", **kmcl_head_settings(state)}
  return {"arch": arch, "kind": "backbone"}


# --------------------------------------------------------------------------------------
# Orbax.
# --------------------------------------------------------------------------------------


def check_destination(dst: str) -> None:
  """Raises FileExistsError if `dst` already holds a converted checkpoint (or anything
  of one), so that a conversion neither runs for nothing nor overwrites one."""
  dst = os.path.abspath(dst)
  held = [name for name in ("variables", MODEL_FILE) if os.path.exists(os.path.join(dst, name))]
  if held:
    raise FileExistsError(
      f"--dst={dst!r} already holds a converted checkpoint ({', '.join(held)}); "
      "choose another --dst or remove it."
    )
  if os.path.exists(dst) and not os.path.isdir(dst):
    raise FileExistsError(f"--dst={dst!r} is a file; expected a folder to write into.")


def save_converted(variables: Mapping[str, Any], description: Mapping[str, Any], dst: str) -> None:
  """Writes `dst/variables` (orbax) and `dst/kmcl_model.json`."""
  import orbax.checkpoint as ocp

  dst = os.path.abspath(dst)
  check_destination(dst)
  os.makedirs(dst, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(dst, "variables"), jax.tree.map(jnp.asarray, variables))
  with open(os.path.join(dst, MODEL_FILE), "w") as f:
    json.dump(description, f, indent=2)


def _in_current_form(
  variables: dict[str, Any], description: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
  """A KMCL model converted by an earlier kmcl_jax, as this one writes it: its mu layer
  was named "mean", and its description had no embedding_dim (every anisotropic head then
  projected to 128)."""
  if description.get("kind") != "kmcl":
    return variables, description
  if description.get("kernel") == "anisotropic" and "embedding_dim" not in description:
    description = {**description, "embedding_dim": DEFAULT_EMBEDDING_DIM}
  head = variables["params"]["head"]
  if "mean" in head["kmm"]:
    kmm = {("mu" if name == "mean" else name): layer for name, layer in head["kmm"].items()}
    variables = {**variables, "params": {**variables["params"], "head": {**head, "kmm": kmm}}}
  return variables, description


def load_converted(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables, description) written by `save_converted`, also by an earlier kmcl_jax
  (brought to today's names and fields); `path` may be on gs://."""
  import orbax.checkpoint as ocp

  folder = epath.Path(path if "://" in path else os.path.abspath(path))  # local or gs://
  if not (folder / MODEL_FILE).exists():
    raise FileNotFoundError(f"{path!r} is not a converted checkpoint: no {MODEL_FILE}.")
  description = json.loads((folder / MODEL_FILE).read_text())
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(folder / "variables")
  return _in_current_form(variables, description)
