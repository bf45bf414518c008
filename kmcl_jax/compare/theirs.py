"""Their side: the authors' model and loss (from a checkout of mahdihosseini/KMCL, run as
they are) trained with the recipe of their train.py, and what both sides share to be
compared: one initialisation, their inputs from our host batches, float32 products.

Their train.py, step by step: the model's forward pass under autocast, their
`KMCL_Loss` outside it; a step whose loss is not finite does nothing else; otherwise
backward through a GradScaler, Adam with two parameter groups (coupled L2 on weights,
none on biases and 1-D parameters), OneCycleLR, then the EMA of the whole state dict
(their `ModelEma`: a copy in eval mode, decay * ema + (1 - decay) * model on every entry,
BatchNorm buffers included). `their_training` does the same with the config's values
where theirs hard-codes the VOC recipe (learning rate, decay, loss weights, ...).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import types
from collections.abc import Callable

import jax
import numpy as np

from kmcl_jax import convert, losses, optim
from kmcl_jax.benchmarks import baseline
from kmcl_jax.data import transforms
from kmcl_jax.models.tresnet import ARCHITECTURES, TIMM_NAMES

# How their step can run: their train.py's float16 autocast with a GradScaler, which
# skips every step whose scaled gradients overflow; bfloat16 autocast with no scaler
# (float32's exponent range: nothing to scale, every step updates); or float32.
THEIR_PRECISIONS = ("float16", "bfloat16", "float32")

# The files of their checkout that their side runs.
BASELINE_FILES = ("Kmcl_Class.py", "src/loss_functions/losses.py")
THEIR_EMBEDDING_DIM = 128  # their Kmcl_Class.py projects to 128, whatever the config


def check_baseline(baseline_dir: str | None) -> None:
  """Raises SystemExit with one sentence when torch or timm is missing or
  `baseline_dir` is not a checkout holding `BASELINE_FILES`."""
  install = "pip install -e '.[test]'"
  clone = "git clone https://github.com/mahdihosseini/KMCL"
  if not baseline_dir:
    raise SystemExit(
      "kmcl_jax.compare needs --baseline_dir=PATH, a checkout of the authors' repository "
      f"({clone}), with torch and timm installed ({install})."
    )
  for package in ("torch", "timm"):
    try:
      __import__(package)
    except ImportError:
      raise SystemExit(
        f"kmcl_jax.compare runs the authors' PyTorch code, which needs {package}: "
        f"install it with {install}."
      ) from None
  missing = [f for f in BASELINE_FILES if not os.path.isfile(os.path.join(baseline_dir, f))]
  if missing:
    raise SystemExit(
      f"--baseline_dir={baseline_dir!r} has no {' or '.join(missing)}: expected a checkout "
      f"of the authors' repository ({clone})."
    )


def timm_backbone(arch: str):
  """timm's network for our backbone `arch`, without classifier: a registered timm
  model, or (tresnet_tiny) timm's TResNet class with that architecture's layers and
  width."""
  import timm
  from timm.models.tresnet import TResNet

  if arch in TIMM_NAMES:
    return timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=0)
  settings = ARCHITECTURES[arch]
  if "bottleneck_stages" in settings:
    raise ValueError(f"config.model.backbone={arch!r} has no counterpart in timm.")
  return TResNet(layers=list(settings["layers"]), width_factor=settings["width"], num_classes=0)


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


def torch_images(images: np.ndarray, config, on_gpu: bool):
  """uint8 host images (B, S, S, 3) -> their normalised float32 input (B, 3, S, S), as
  our step normalises them."""
  import torch

  normalized = transforms.normalize(images, config.data.mean, config.data.std)
  tensor = torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))
  return tensor.cuda() if on_gpu else tensor


class ReferenceEma:
  """Their `ModelEma` as their train.py uses it: a copy of the model in eval mode, and
  `update(model)` sets every state-dict entry to decay * ema + (1 - decay) * model."""

  def __init__(self, model, decay: float):
    self.module = copy.deepcopy(model).eval()
    self.decay = decay

  def update(self, model) -> None:
    import torch

    with torch.no_grad():
      for ema, new in zip(
        self.module.state_dict().values(), model.state_dict().values(), strict=True
      ):
        ema.copy_(self.decay * ema + (1.0 - self.decay) * new)


@dataclasses.dataclass
class TheirTraining:
  """Their model, its EMA and two functions: step(images, labels) -> ([total, asl,
  reconstruction, contrastive], skipped), the terms as they enter the config's total
  (ASL balanced to loss.reference_batch, a term of weight 0 as 0); and
  probabilities(images) -> {"model", "ema"}: sigmoid of their pi, float32 NumPy (B, K),
  with the model in eval mode as their validation runs it. images: normalised (B, 3, S,
  S) on their device (`torch_images`); labels (B, K) float32."""

  model: object
  ema: ReferenceEma
  step: Callable
  probabilities: Callable


def _head_options(config) -> types.SimpleNamespace:
  return types.SimpleNamespace(
    loss_opt="ASLOnly" if config.model.mode == "asl_only" else "all",
    loss_case=config.model.kernel,
    similarity=config.model.variance,
  )


def their_model(baseline_dir: str, config, classes: int, on_gpu: bool, seed: int):
  """Their `KMCL` wrapper around timm's backbone, initialised after torch.manual_seed(seed)."""
  import torch

  if config.model.kernel == "anisotropic" and config.model.embedding_dim != THEIR_EMBEDDING_DIM:
    raise ValueError(
      f"config.model.embedding_dim={config.model.embedding_dim}: their Kmcl_Class.py "
      f"projects to {THEIR_EMBEDDING_DIM}, so the comparison needs {THEIR_EMBEDDING_DIM}."
    )
  torch.manual_seed(seed)
  with baseline.device_context(on_gpu):
    encoder = timm_backbone(config.model.backbone)
    return baseline.kmcl_model_class(baseline_dir, on_gpu)(
      encoder.cuda() if on_gpu else encoder,
      encoder.num_features,
      classes,
      _head_options(config),
    )


def converted_weights(model, config) -> dict:
  """Our {"params", "batch_stats"} of their model's current weights."""
  return convert.convert_state_dict(
    {k: v.detach().cpu() for k, v in model.state_dict().items()}, config.model.backbone
  )


def their_training(
  baseline_dir: str,
  config,
  classes: int,
  total_steps: int,
  on_gpu: bool,
  precision: str,
  seed: int | None = None,
) -> TheirTraining:
  """Their training as their train.py runs it (see the module docstring), in `precision`
  (`THEIR_PRECISIONS`): "float16" runs the model under float16 autocast and the backward
  pass through a GradScaler, which skips (skipped = True) the steps whose gradients
  overflow; "bfloat16" runs it under bfloat16 autocast with no scaler; "float32" uses
  neither. A step whose loss is not finite is skipped before the backward pass, as theirs
  does. Initial weights after torch.manual_seed(seed, default config.seed)."""
  import torch

  if precision not in THEIR_PRECISIONS:
    raise ValueError(f"precision={precision!r}: expected one of {THEIR_PRECISIONS}.")
  model = their_model(baseline_dir, config, classes, on_gpu, config.seed if seed is None else seed)
  loss_settings = config.loss
  with baseline.device_context(on_gpu):
    criterion = baseline.kmcl_loss_class(baseline_dir, on_gpu)(
      gamma_neg=loss_settings.gamma_neg,
      gamma_pos=loss_settings.gamma_pos,
      clip=loss_settings.clip,
      disable_torch_grad_focal_loss=True,
      loss_case=config.model.kernel,
      loss_opt=_head_options(config).loss_opt,
    )
  criterion.temp = loss_settings.temperature  # their class fixes tau at 0.17
  model.train()
  # The reference's parameter groups: coupled L2 on weights, none on biases and 1-D params.
  decays = {n: p.ndim > 1 and not n.endswith(".bias") for n, p in model.named_parameters()}
  settings = config.optim
  lr = optim.batch_scaled_lr(
    settings.lr, config.batch_size, config.recipe_batch, settings.lr_scaling
  )
  optimizer = torch.optim.Adam(
    [
      {"params": [p for n, p in model.named_parameters() if not decays[n]], "weight_decay": 0.0},
      {
        "params": [p for n, p in model.named_parameters() if decays[n]],
        "weight_decay": settings.weight_decay,
      },
    ],
    lr=lr,
    betas=(settings.beta1_peak, settings.b2),
    eps=settings.eps,
  )
  scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer,
    max_lr=lr,
    total_steps=total_steps,
    pct_start=settings.pct_start,
    div_factor=settings.div_factor,
    final_div_factor=settings.final_div_factor,
    base_momentum=settings.beta1_base,
    max_momentum=settings.beta1_peak,
  )
  ema = ReferenceEma(
    model, optim.ema_decay_per_step(config.ema_decay, config.batch_size, config.recipe_batch)
  )
  device_type = "cuda" if on_gpu else "cpu"
  scaler = torch.amp.GradScaler(device_type, enabled=precision == "float16")
  autocast_dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
  autocast = lambda: torch.autocast(  # noqa: E731
    device_type, dtype=autocast_dtype, enabled=precision != "float32"
  )
  # Their loss is the plain sum of the three terms: the config's weights and ASL balance
  # enter as corrections that vanish in the reference recipe (weights 1, the batch the
  # ASL sum is balanced to), where the total is exactly theirs.
  # Their terms come in our order, losses.TERMS.
  weights = [loss_settings.weights[term] for term in losses.TERMS]
  balance = [loss_settings.reference_batch / config.batch_size, 1.0, 1.0]

  def step(images, labels):
    with baseline.device_context(on_gpu):
      with autocast():
        features, gaussians = model(images)
      total, *raw_terms = criterion(features, gaussians, labels)
      total = total + sum(
        (w * b - 1.0) * t for w, b, t in zip(weights, balance, raw_terms, strict=True)
      )
      terms = [
        b * t if w else torch.zeros(()) for w, b, t in zip(weights, balance, raw_terms, strict=True)
      ]
      values = [v.item() for v in (total, *terms)]
      model.zero_grad()
      if not np.isfinite(values[0]):
        return values, True
      scale = scaler.get_scale()
      scaler.scale(total).backward()
      scaler.step(optimizer)
      scaler.update()
      scheduler.step()
      ema.update(model)
      # The scaler backs off after an overflow, whose step it skipped.
      return values, scaler.is_enabled() and scaler.get_scale() < scale

  def probabilities(images):
    outputs = {}
    with baseline.device_context(on_gpu), torch.no_grad(), autocast():
      model.eval()
      for variant, network in (("model", model), ("ema", ema.module)):
        pi = network(images)[1]["pi"]
        outputs[variant] = torch.sigmoid(pi.float()).cpu().numpy()
      model.train()
    return outputs

  return TheirTraining(model=model, ema=ema, step=step, probabilities=probabilities)
