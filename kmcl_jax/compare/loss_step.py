"""The loss term by term and a training step, ours against the authors' (what
`python -m kmcl_jax.compare` runs without --run; the package's program says what each
part measures)."""

from __future__ import annotations

import contextlib
import functools
import json
import time

import jax
import numpy as np
from absl import logging

from kmcl_jax import losses, optim
from kmcl_jax.benchmarks.inputs import random_batch
from kmcl_jax.benchmarks.loss_programs import loss_parity, make_inputs, relative_difference
from kmcl_jax.benchmarks.timing import median_seconds
from kmcl_jax.compare.theirs import (
  converted_weights,
  float32_products,
  their_training,
  torch_images,
)
from kmcl_jax.mesh import create_mesh, replicated, to_global_batch
from kmcl_jax.state import create_model, initial_state, with_weights
from kmcl_jax.steps import jit_steps

FEATURE_DIM = 128  # the reference's projection width, D


# --------------------------------------------------------------------------------------
# A training step.
# --------------------------------------------------------------------------------------


def paired_steps(
  baseline_dir: str,
  config,
  classes: int,
  total_steps: int,
  on_gpu: bool,
  their_precisions: tuple[str, ...],
):
  """(ours, {precision: theirs}): step functions from the same weights on the same batch,
  each () -> ([total, asl, rec, con], skipped). Theirs, one per precision of
  `their_precisions` (each with its own optimizer); ours computes in float32 if theirs
  do, else in bfloat16."""
  import torch

  config = config.copy_and_resolve_references()
  config.dtype = "float32" if set(their_precisions) == {"float32"} else "bfloat16"
  config.train_steps = total_steps
  # Their loss is the plain sum of ASL and their EMA decays per step at whatever batch:
  # the batch the recipe is balanced to is this one.
  config.loss.reference_batch = config.recipe_batch = config.batch_size
  host_batch = random_batch(config.batch_size, config.data.image_size, classes, config.seed)
  images = torch_images(host_batch["image"], config, on_gpu)
  labels = torch.tensor(host_batch["labels"], device="cuda" if on_gpu else "cpu")
  theirs = {}
  for precision in their_precisions:  # each from config.seed: the same initial weights
    training = their_training(baseline_dir, config, classes, total_steps, on_gpu, precision)
    theirs[precision] = functools.partial(training.step, images, labels)

  model = create_model(config, classes)
  optimizer = optim.create_optimizer(config.optim, total_steps)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  variables = converted_weights(training.model, config)
  state = with_weights(
    state, variables["params"], variables["batch_stats"], "The baseline model's converted weights"
  )
  train_step, _ = jit_steps(config, model, optimizer, mesh, state)
  batch = to_global_batch(host_batch, mesh)

  def ours():
    nonlocal state
    state, metrics = train_step(state, batch)
    # One transfer, which waits for the step; a step was skipped iff it starts a run of
    # skipped steps or extends one.
    host = jax.device_get(
      {k: metrics[k] for k in ("loss", *losses.TERMS, "consecutive_skipped_steps")}
    )
    return (
      [float(host[k]) for k in ("loss", *losses.TERMS)],
      int(host["consecutive_skipped_steps"]) > 0,
    )

  return ours, theirs


def time_their_step(theirs, repeats: int, max_warmup: int) -> dict:
  """Their step's median time over `repeats` steps and the steps it skipped. Warm-up
  (autotuning) lasts until a step is not skipped: a GradScaler skips while it looks for a
  scale that does not overflow, and a skipped step does no optimizer work, which would
  flatter the time (at most `max_warmup` steps)."""
  warmup_skips = [theirs()[1]]
  while warmup_skips[-1] and len(warmup_skips) < max_warmup:
    warmup_skips.append(theirs()[1])
  timed_skips, timed_losses = [], []

  def timed():
    losses, skipped = theirs()
    timed_skips.append(skipped)
    timed_losses.append(losses[0])

  seconds = median_seconds(timed, repeats)
  return {
    "ms": seconds * 1e3,
    "seconds": seconds,
    "warmup_steps": len(warmup_skips),
    "skipped_warmup_steps": int(sum(warmup_skips)),
    # median_seconds' first call is untimed
    "timed_steps": repeats,
    "skipped_timed_steps": int(sum(timed_skips[1:])),
    "nonfinite_timed_losses": int(sum(not np.isfinite(v) for v in timed_losses[1:])),
  }


def compare_step(
  baseline_dir: str, config, classes: int, steps: int, repeats: int, on_gpu: bool
) -> dict:
  """Losses of `steps` steps in float32 from the same weights on the same batch, then step
  times in the training precision: on a GPU ours in bfloat16 against theirs in float16
  with a GradScaler (their train.py) and in bfloat16 without one; on the CPU float32."""
  # Every step run counts in the schedule; torch's OneCycleLR also divides by zero when
  # pct_start * total_steps <= 1.
  max_warmup = 50
  total_steps = max(steps + max_warmup + repeats + 1, 20)
  start = time.perf_counter()
  # On the CPU both already compute in float32, and the timed steps reuse the compiled
  # step, which a change of JAX's matmul precision would recompile.
  with float32_products() if on_gpu else contextlib.nullcontext():
    ours, theirs = paired_steps(baseline_dir, config, classes, total_steps, on_gpu, ("float32",))
    losses_by_step = [{"ours": ours()[0], "theirs": theirs["float32"]()[0]} for _ in range(steps)]
  logging.info(
    "step: %d float32 steps of both compared (%.0f s, compilation included)",
    steps,
    time.perf_counter() - start,
  )
  if on_gpu:
    ours, theirs = paired_steps(
      baseline_dir, config, classes, total_steps, on_gpu, ("float16", "bfloat16")
    )
  ours()  # compiles
  ours_seconds = median_seconds(ours, repeats)
  timings = {
    precision: time_their_step(step, repeats, max_warmup) for precision, step in theirs.items()
  }
  logging.info("step: timed (%.0f s in all)", time.perf_counter() - start)
  # The speed-up that counts is against their step that updates the weights every step.
  updating = "bfloat16" if on_gpu else "float32"
  return {
    "losses": losses_by_step,
    "max_rel_diff": max(relative_difference(s["ours"][0], s["theirs"][0]) for s in losses_by_step),
    "ours_ms": ours_seconds * 1e3,
    "ours_images_per_s": config.batch_size / ours_seconds,
    "theirs": {
      precision: {
        "images_per_s": config.batch_size / t["seconds"],
        "speedup": t["seconds"] / ours_seconds,
        **{k: v for k, v in t.items() if k != "seconds"},
      }
      for precision, t in timings.items()
    },
    "speedup": timings[updating]["seconds"] / ours_seconds,
  }


# --------------------------------------------------------------------------------------
# The program.
# --------------------------------------------------------------------------------------


def device_description(on_gpu: bool) -> str:
  if on_gpu:
    import torch

    return torch.cuda.get_device_name(0)
  return f"CPU ({jax.devices()[0].device_kind}, {jax.device_count()} JAX device(s))"


def compare_loss_and_step(
  baseline_dir: str,
  config,
  batch: int,
  classes: int,
  loss_batch: int,
  kernels: list[str],
  steps: int,
  repeats: int,
  json_path: str | None,
) -> None:
  """The loss term by term for each of `kernels`, then the training step (see the
  package's program, `python -m kmcl_jax.compare`): prints one table, and writes the
  summary to `json_path` if given."""
  import torch

  on_gpu = torch.cuda.is_available() and jax.default_backend() == "gpu"
  config.batch_size = batch or (64 if on_gpu else 8)
  print(
    f"device: {device_description(on_gpu)}; JAX {jax.__version__}, torch {torch.__version__}"
    f" ({torch.get_num_threads()} threads); baseline: {baseline_dir}"
  )

  loss_results = {}
  for kernel in kernels:
    start = time.perf_counter()
    inputs = make_inputs(loss_batch, classes, FEATURE_DIM, kernel)
    loss_results[kernel] = loss_parity(baseline_dir, kernel, inputs, repeats, on_gpu)
    logging.info("loss: %s kernel compared (%.0f s)", kernel, time.perf_counter() - start)
  step = compare_step(baseline_dir, config, classes, steps, repeats, on_gpu)

  header = (
    f"{'':<44} {'JAX':>11} {'PyTorch':>11} {'rel diff':>9} {'grad diff':>9} "
    f"{'JAX ms':>9} {'torch ms':>9} {'speedup':>8}"
  )
  print(header)
  for kernel, result in loss_results.items():
    print(f"loss, {kernel}, B={loss_batch} K={classes} D={FEATURE_DIM}, float32")
    for term, row in result["terms"].items():
      print(
        f"  {term:<42} {row['ours']:>11.5f} {row['theirs']:>11.5f} "
        f"{row['value_rel_diff']:>9.1e} {row['grad_rel_diff']:>9.1e}"
      )
    print(
      f"  {'forward + backward':<42} {'':>11} {'':>11} {'':>9} {'':>9} "
      f"{result['ours_ms']:>9.1f} {result['theirs_ms']:>9.1f} {result['speedup']:>7.1f}x"
    )
  precision = (
    "JAX bfloat16 vs torch autocast float16 + GradScaler and bfloat16" if on_gpu else "float32"
  )
  print(
    f"train step, {config.model.backbone} {config.data.image_size} px, batch "
    f"{config.batch_size}: losses in float32, time in {precision}"
  )
  for i, losses_at in enumerate(step["losses"], 1):
    ours, theirs = losses_at["ours"][0], losses_at["theirs"][0]
    print(
      f"  {f'loss at step {i}':<42} {ours:>11.5f} {theirs:>11.5f} "
      f"{relative_difference(ours, theirs):>9.1e}"
    )
  for their_precision, timing in step["theirs"].items():
    skipped = timing["skipped_warmup_steps"] + timing["skipped_timed_steps"]
    label = (
      f"step, theirs {their_precision}: skipped {skipped} of "
      f"{timing['warmup_steps'] + timing['timed_steps']} (img/s: "
      f"{step['ours_images_per_s']:.1f} JAX, {timing['images_per_s']:.1f} torch)"
    )
    print(
      f"  {label:<42} {'':>11} {'':>11} {'':>9} {'':>9} {step['ours_ms']:>9.1f} "
      f"{timing['ms']:>9.1f} {timing['speedup']:>7.2f}x"
    )

  if json_path:
    loss_rows = [row for result in loss_results.values() for row in result["terms"].values()]
    summary = {
      "loss": {
        "max_rel_diff": max(max(r["value_rel_diff"], r["grad_rel_diff"]) for r in loss_rows),
        "speedup": min(r["speedup"] for r in loss_results.values()),
        "by_kernel": loss_results,
      },
      "step": {
        "speedup": step["speedup"],
        "device": device_description(on_gpu),
        "precision": precision,
        "batch": config.batch_size,
        "image_size": config.data.image_size,
        "backbone": config.model.backbone,
        **step,
      },
    }
    with open(json_path, "w") as f:
      json.dump(summary, f, indent=2)
