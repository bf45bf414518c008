r"""Images/s of TResNet forward and forward + backward, Flax vs timm on the same batch.

  python -m kmcl_jax.benchmarks.backbone                       # CPU, float32
  python -m kmcl_jax.benchmarks.backbone --dtype=bfloat16 --batch=64   # GPU: bf16 vs AMP

Forward is inference (BatchNorm running statistics); forward + backward is a training
pass (batch statistics) of the mean of the pooled features w.r.t. every parameter. On a
GPU the timm side runs channels-last under autocast (float16) when --dtype=bfloat16.
Prints images/s of both, their ratio, the JAX compile seconds and the XLA flags in force.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kmcl_jax.benchmarks.timing import median_seconds
from kmcl_jax.models import create_backbone
from kmcl_jax.models.tresnet import TIMM_NAMES

_ARCH = flags.DEFINE_string("arch", "tresnet_m", "Backbone.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per step.")
_IMAGE = flags.DEFINE_integer("image_size", 224, "Image side in pixels.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps (median reported).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time timm's model when torch/timm import.")


def time_flax(images: np.ndarray) -> dict[str, float]:
  model = create_backbone(_ARCH.value, dtype=jnp.dtype(_DTYPE.value))
  x = jax.device_put(jnp.asarray(images))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x[:1]))(x)

  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def loss(params, batch_stats, x):
    features, _ = model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(features)

  train = jax.jit(jax.grad(loss))
  result = {}
  for name, fn, args in (
    ("forward", forward, (variables, x)),
    ("train", train, (variables["params"], variables["batch_stats"], x)),
  ):
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    result[f"{name}_compile_s"] = time.perf_counter() - start
    seconds = median_seconds(
      lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args)), _REPEATS.value
    )
    result[f"{name}_images_per_s"] = images.shape[0] / seconds
  return result


def time_timm(images: np.ndarray) -> dict[str, float]:
  import timm
  import torch

  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = timm.create_model(TIMM_NAMES[_ARCH.value], pretrained=False, num_classes=0).to(device)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
  mixed = _DTYPE.value == "bfloat16" and device == "cuda"
  if mixed:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def forward():
    with torch.no_grad(), torch.autocast(device, enabled=mixed):
      model.eval()(x)
    sync()

  def train():
    model.zero_grad(set_to_none=True)
    with torch.autocast(device, enabled=mixed):
      loss = model.train()(x).float().mean()
    loss.backward()
    sync()

  result = {}
  for name, step in (("forward", forward), ("train", train)):
    result[f"{name}_images_per_s"] = images.shape[0] / median_seconds(step, _REPEATS.value)
  result["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  return result


def main(argv):
  del argv
  images = (
    np.random.default_rng(0)
    .normal(size=(_BATCH.value, _IMAGE.value, _IMAGE.value, 3))
    .astype(np.float32)
  )
  print(
    f"{_ARCH.value} {_IMAGE.value}px batch {_BATCH.value}, JAX {jax.__version__} "
    f"{_DTYPE.value} on {jax.devices()[0].device_kind}; "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )
  ours = time_flax(images)
  theirs = {}
  if _TORCH.value:
    try:
      theirs = time_timm(images)
    except ImportError:
      print("torch/timm not installed: timing the Flax model only.")
  if theirs:
    import torch

    print(
      f"timm: torch {torch.__version__} on {theirs['device']}, "
      f"{'channels-last AMP' if _DTYPE.value == 'bfloat16' else 'float32'}, "
      f"{torch.get_num_threads()} threads"
    )
  print(f"{'pass':<10} {'flax img/s':>11} {'timm img/s':>11} {'ratio':>6} {'compile s':>10}")
  for name in ("forward", "train"):
    flax_rate = ours[f"{name}_images_per_s"]
    row = f"{name:<10} {flax_rate:>11.1f}"
    if theirs:
      rate = theirs[f"{name}_images_per_s"]
      row += f" {rate:>11.1f} {flax_rate / rate:>6.2f}"
    else:
      row += f" {'-':>11} {'-':>6}"
    print(row + f" {ours[f'{name}_compile_s']:>10.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
