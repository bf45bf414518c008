r"""Side by side with the authors' PyTorch code: the loss term by term, and a training step.

  python -m kmcl_jax.compare --baseline_dir=/path/to/KMCL
  python -m kmcl_jax.compare --baseline_dir=/path/to/KMCL --json=compare.json --batch=64

Needs torch and timm (`pip install -e '.[test]'`) and a checkout of the authors'
repository mahdihosseini/KMCL; their files run as they are (on the CPU their `.cuda()`
calls are made the identity, see `benchmarks/baseline.py`). Runs on a GPU when both
JAX and torch see one, otherwise on the CPU. Run it from the repository root (the
default --config is `configs/voc.py`, the reference's VOC recipe).

Loss: on the same random head outputs (B = --loss_batch, K = --classes, D = 128), their
`KMCL_Loss` against `losses.kmcl_loss`, both in float32: every term's value and its
gradient with respect to features, pi (the logits), mu and var, and the time of the total's
forward + backward (median of --repeats).

Step: timm's TResNet with their `KMCL` head (`Kmcl_Class.py`), their loss and torch Adam
with the reference's parameter groups and OneCycleLR, against our jitted train step
(`steps.make_train_step`, EMA included) started from the same weights (converted with
`convert.convert_state_dict`), on the same batch. First the loss of each of --steps
steps with both in float32 (TF32 off): the same weights, then the same updates. Then
the median step time over --repeats steps in the training precision: on a GPU ours in
bfloat16 against theirs in two forms, (a) float16 autocast with a GradScaler, as their
train.py runs, and (b) bfloat16 autocast without a scaler. On a randomly initialised
model (a) can skip every step (non-finite float16 gradients: no optimizer update in
the time); (b) updates at every step, so it is the step the speed-up is measured
against. On the CPU both run in float32. Each of their forms is timed once its warm-up
steps stop being skipped (at most 50); the table and the JSON count the steps each
skipped, in warm-up and timed. Our step is timed with one device-to-host read per step.

Prints one table; with --json=FILE also writes
{"loss": {"max_rel_diff", "speedup", ...}, "step": {"speedup", "device", "theirs", ...}}:
the largest relative difference of any term's value or gradient, the smaller of the
kernels' loss speed-ups, the step's speed-up (their time / ours, against their
bfloat16 step on a GPU, float32 on the CPU) and, per form of their step ("float16",
"bfloat16"; "float32" on the CPU), its time, images/s, speed-up and skipped steps.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
import types

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from kmcl_jax import convert, losses, optim
from kmcl_jax.benchmarks import baseline
from kmcl_jax.benchmarks.inputs import random_batch
from kmcl_jax.benchmarks.loss_programs import loss_parity, make_inputs, relative_difference
from kmcl_jax.benchmarks.timing import median_seconds
from kmcl_jax.data import transforms
from kmcl_jax.mesh import create_mesh, replicated, to_global_batch
from kmcl_jax.models.tresnet import TIMM_NAMES
from kmcl_jax.state import create_model, initial_state, with_weights
from kmcl_jax.steps import jit_steps

_BASELINE_DIR = flags.DEFINE_string(
  "baseline_dir", None, "Checkout of the authors' repository mahdihosseini/KMCL."
)
_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/voc.py", "Recipe of the step (model, image size, optimiser)."
)
_JSON = flags.DEFINE_string("json", None, "Also write the summary to this JSON file.")
_BATCH = flags.DEFINE_integer("batch", 0, "Images per training step; 0: 64 on a GPU, 8 on the CPU.")
_CLASSES = flags.DEFINE_integer("classes", 20, "K, classes of the random labels (VOC: 20).")
_LOSS_BATCH = flags.DEFINE_integer("loss_batch", 64, "B of the loss comparison.")
_KERNELS = flags.DEFINE_list("kernels", list(losses.KERNELS), "Kernels of the loss comparison.")
_STEPS = flags.DEFINE_integer("steps", 3, "Training steps whose losses are compared.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (median reported).")

FEATURE_DIM = 128  # the reference's projection width, D


# --------------------------------------------------------------------------------------
# A training step.
# --------------------------------------------------------------------------------------


# How their step can run: their train.py's float16 autocast with a GradScaler, which
# skips every step whose scaled gradients overflow; bfloat16 autocast with no scaler
# (float32's exponent range: nothing to scale, every step updates); or float32.
THEIR_PRECISIONS = ("float16", "bfloat16", "float32")


def their_training(
  baseline_dir: str, config, classes: int, total_steps: int, on_gpu: bool, precision: str
):
  """(model, step(images, labels) -> ([total, asl, rec, con], skipped)) as their train.py
  trains, in `precision` (`THEIR_PRECISIONS`): "float16" runs the model under float16
  autocast and the backward pass through a GradScaler, which skips (skipped = True) the
  steps whose gradients overflow; "bfloat16" runs it under bfloat16 autocast with no
  scaler (skipped is always False); "float32" uses neither. Their loss is computed
  outside autocast, as in their train.py."""
  import timm
  import torch

  if precision not in THEIR_PRECISIONS:
    raise ValueError(f"precision={precision!r}: expected one of {THEIR_PRECISIONS}.")
  torch.manual_seed(config.seed)
  with baseline.device_context(on_gpu):
    encoder = timm.create_model(TIMM_NAMES[config.model.backbone], pretrained=False, num_classes=0)
    head_options = types.SimpleNamespace(
      loss_opt="all", loss_case=config.model.kernel, similarity=config.model.variance
    )
    model = baseline.kmcl_model_class(baseline_dir, on_gpu)(
      encoder.cuda() if on_gpu else encoder, encoder.num_features, classes, head_options
    )
    criterion = baseline.kmcl_loss_class(baseline_dir, on_gpu)(
      gamma_neg=4,
      gamma_pos=0,
      clip=0.05,
      disable_torch_grad_focal_loss=True,
      loss_case=config.model.kernel,
      loss_opt="all",
    )
  model.train()
  # The reference's parameter groups: coupled L2 on weights, none on biases and 1-D params.
  decayed = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
  plain = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith(".bias"))]
  settings = config.optim
  optimizer = torch.optim.Adam(
    [
      {"params": plain, "weight_decay": 0.0},
      {"params": decayed, "weight_decay": settings.weight_decay},
    ],
    lr=settings.lr,
    betas=(settings.beta1_peak, settings.b2),
    eps=settings.eps,
  )
  scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer,
    max_lr=settings.lr,
    total_steps=total_steps,
    pct_start=settings.pct_start,
    div_factor=settings.div_factor,
    final_div_factor=settings.final_div_factor,
    base_momentum=settings.beta1_base,
    max_momentum=settings.beta1_peak,
  )
  device_type = "cuda" if on_gpu else "cpu"
  scaler = torch.amp.GradScaler(device_type, enabled=precision == "float16")
  autocast_dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16

  def step(images, labels):
    with baseline.device_context(on_gpu):
      with torch.autocast(device_type, dtype=autocast_dtype, enabled=precision != "float32"):
        features, gaussians = model(images)
      total, asl, reconstruction, contrastive = criterion(features, gaussians, labels)
      model.zero_grad()
      scale = scaler.get_scale()
      scaler.scale(total).backward()
      scaler.step(optimizer)
      scaler.update()
      scheduler.step()
      # The scaler backs off after an overflow, whose step it skipped.
      skipped = scaler.is_enabled() and scaler.get_scale() < scale
      return [v.item() for v in (total, asl, reconstruction, contrastive)], skipped

  return model, step


@contextlib.contextmanager
def float32_products():
  """Matrix products and convolutions in full float32 in both frameworks (on GPUs both
  default to TF32); JAX programs first traced inside keep it."""
  import torch

  flags_before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  try:
    with jax.default_matmul_precision("float32"):
      yield
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags_before


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
  device = "cuda" if on_gpu else "cpu"
  images = torch.tensor(
    transforms.normalize(host_batch["image"], config.data.mean, config.data.std), device=device
  )
  images = images.permute(0, 3, 1, 2).contiguous()
  labels = torch.tensor(host_batch["labels"], device=device)
  theirs = {}
  for precision in their_precisions:  # each from config.seed: the same initial weights
    their_model, their_step = their_training(
      baseline_dir, config, classes, total_steps, on_gpu, precision
    )
    theirs[precision] = functools.partial(their_step, images, labels)

  model = create_model(config, classes)
  optimizer = optim.create_optimizer(config.optim, total_steps)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  variables = convert.convert_state_dict(
    {k: v.detach().cpu() for k, v in their_model.state_dict().items()}, config.model.backbone
  )
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _BASELINE_DIR.value:
    sys.exit(
      "kmcl_jax.compare needs --baseline_dir=PATH, a checkout of the authors' repository "
      "(git clone https://github.com/mahdihosseini/KMCL), with torch and timm installed "
      "(pip install -e '.[test]')."
    )
  import torch

  on_gpu = torch.cuda.is_available() and jax.default_backend() == "gpu"
  config = _CONFIG.value
  config.batch_size = _BATCH.value or (64 if on_gpu else 8)
  classes = _CLASSES.value
  print(
    f"device: {device_description(on_gpu)}; JAX {jax.__version__}, torch {torch.__version__}"
    f" ({torch.get_num_threads()} threads); baseline: {_BASELINE_DIR.value}"
  )

  loss_results = {}
  for kernel in _KERNELS.value:
    start = time.perf_counter()
    inputs = make_inputs(_LOSS_BATCH.value, classes, FEATURE_DIM, kernel)
    loss_results[kernel] = loss_parity(_BASELINE_DIR.value, kernel, inputs, _REPEATS.value, on_gpu)
    logging.info("loss: %s kernel compared (%.0f s)", kernel, time.perf_counter() - start)
  step = compare_step(_BASELINE_DIR.value, config, classes, _STEPS.value, _REPEATS.value, on_gpu)

  header = (
    f"{'':<44} {'JAX':>11} {'PyTorch':>11} {'rel diff':>9} {'grad diff':>9} "
    f"{'JAX ms':>9} {'torch ms':>9} {'speedup':>8}"
  )
  print(header)
  for kernel, result in loss_results.items():
    print(f"loss, {kernel}, B={_LOSS_BATCH.value} K={classes} D={FEATURE_DIM}, float32")
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

  if _JSON.value:
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
    with open(_JSON.value, "w") as f:
      json.dump(summary, f, indent=2)


if __name__ == "__main__":
  app.run(main)
