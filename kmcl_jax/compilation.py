"""Compiling the steps: the persistent XLA compilation cache, ahead-of-time compilation
with its wall time, what XLA's cost analysis says a program costs, and the FLOPs of its
convolutions and matrix products counted from its jaxpr (the same on every platform).

A resumed or restarted run finds its programs in the persistent cache instead of
compiling them again (minutes for TResNet-L on a TPU slice). The cache lives under the
user's cache folder, or, for a gs:// workdir, in the workdir, where every host of a pod
and every restart of the run finds it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
from absl import logging

CACHE_ENVIRONMENT_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def cache_folder(setting: str, workdir: str) -> str | None:
  """The folder config.compilation_cache names: "auto" (WORKDIR/xla_cache for a gs://
  workdir, else $XDG_CACHE_HOME/kmcl_jax/xla, ~/.cache by default), "" (no cache), or a
  folder. The JAX_COMPILATION_CACHE_DIR environment variable, when set, wins."""
  if os.environ.get(CACHE_ENVIRONMENT_VARIABLE):
    return os.environ[CACHE_ENVIRONMENT_VARIABLE]
  if setting != "auto":
    return setting or None
  if "://" in workdir:
    return f"{workdir.rstrip('/')}/xla_cache"
  user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(user_cache, "kmcl_jax", "xla")


def enable_cache(setting: str, workdir: str) -> str | None:
  """Points JAX's persistent compilation cache at `cache_folder(...)`; returns it. Call it
  before the first compilation of the process: JAX reads the setting once."""
  folder = cache_folder(setting, workdir)
  if folder:
    jax.config.update("jax_compilation_cache_dir", folder)
  return folder


def compile_ahead(jitted, *args) -> tuple[Any, float]:
  """(the compiled program of `jitted` for these arguments, seconds it took): lowering and
  compiling, or finding the program in the persistent cache."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def flops(program) -> float | None:
  """Floating-point operations of one call of a lowered or compiled program, per XLA's
  cost analysis (None where the backend gives none)."""
  try:
    analysis = program.cost_analysis()
  except Exception as error:  # some backends and versions offer none
    logging.info("No cost analysis: %s", error)
    return None
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
    analysis = analysis[0] if analysis else {}
  value = (analysis or {}).get("flops")
  return float(value) if value else None


def _dense_flops(equation) -> float:
  """2 x multiply-adds of one convolution or dot_general equation (0 for any other):
  each output element is a dot product over the contracted dimensions."""
  name = equation.primitive.name
  if name == "conv_general_dilated":
    out_feature_dim = equation.params["dimension_numbers"].rhs_spec[0]
    kernel = equation.invars[1].aval.shape
    out = equation.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(kernel) / kernel[out_feature_dim]
  if name == "dot_general":
    (contracting, _), _ = equation.params["dimension_numbers"]
    lhs = equation.invars[0].aval.shape
    return 2.0 * math.prod(equation.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
  return 0.0


def _sub_jaxprs(params: dict) -> list:
  """The jaxprs an equation runs (pjit, remat, custom derivatives, scan bodies, cond
  branches), as open jaxprs."""
  found = []
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else [value]:
      if hasattr(item, "consts"):  # a ClosedJaxpr
        found.append(item.jaxpr)
      elif hasattr(item, "eqns"):
        found.append(item)
  return found


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for equation in jaxpr.eqns:
    total += _dense_flops(equation)
    counts = [_jaxpr_flops(inner) for inner in _sub_jaxprs(equation.params)]
    if counts:
      # cond runs one branch (the costliest is counted); scan its body `length` times.
      nested = max(counts) if equation.primitive.name == "cond" else sum(counts)
      total += nested * equation.params.get("length", 1)
  return total


def dense_flops(traced) -> float:
  """FLOPs of the convolutions and matrix products of one call of a traced program
  (`jax.jit(f).trace(*args)`), from its jaxpr: the model FLOPs that MFU counts, the same
  on every platform (XLA's cost analysis of a GPU program leaves out the convolutions
  that cuDNN runs). Elementwise work is not counted; a while loop's body counts once."""
  return _jaxpr_flops(traced.jaxpr.jaxpr)
