"""The train state and how it is built: the model of a config, fresh or converted weights,
and the abstract state a checkpoint is restored into.

Parameters, optimiser state and the loss stay float32; the backbone computes in the
config's dtype (`compute_dtype`).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding

from kmcl_jax.models import KMCLModel

VARIANTS = ("model", "ema")  # the two sets of weights a state holds
# What scoring may ask for: a variant, or "auto", the one that scored the best checkpoint.
VARIANT_CHOICES = ("auto", *VARIANTS)


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a checkpoint is exactly this.

  step counts batches consumed; skipped_steps those whose update was skipped because the
  loss, a gradient or the update was not finite, and consecutive_skipped_steps the
  current run of them (0 after an applied update). The optimiser's own count, which
  drives the schedule, counts applied updates only.
  """

  step: jax.Array
  skipped_steps: jax.Array
  consecutive_skipped_steps: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any

  def weights(self, variant: str) -> dict[str, Any]:
    """{"params", "batch_stats"} of the model or of its EMA (`variant` in VARIANTS)."""
    if variant == "model":
      return {"params": self.params, "batch_stats": self.batch_stats}
    if variant == "ema":
      return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """config.dtype, with "auto" = bfloat16 on GPU and TPU, float32 on the CPU."""
  if config.dtype == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  return jnp.dtype(config.dtype)


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> KMCLModel:
  return KMCLModel(
    backbone=config.model.backbone,
    num_classes=num_classes,
    kernel=config.model.kernel,
    variance=config.model.variance,
    mode=config.model.mode,
    dtype=compute_dtype(config),
    remat=config.model.remat,
    embedding_dim=config.model.embedding_dim,
  )


def _init_fn(config, model: KMCLModel, optimizer: optax.GradientTransformation):
  def init():
    images = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
    variables = model.init(jax.random.key(config.seed), images, train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
      step=zero,
      skipped_steps=zero,
      consecutive_skipped_steps=zero,
      params=params,
      batch_stats=batch_stats,
      opt_state=optimizer.init(params),
      ema_params=params,
      ema_batch_stats=batch_stats,
    )

  return init


def initial_state(
  config, model: KMCLModel, optimizer: optax.GradientTransformation, replicated: NamedSharding
) -> TrainState:
  """Freshly initialised state (params from config.seed), replicated over the mesh.

  Initialised on this host's first device and then replicated, so the compiled
  initialiser is the same program for every mesh (and is reused from a compilation
  cache), and every host computes the same values.
  """
  with jax.default_device(jax.local_devices()[0]):
    local = jax.device_get(jax.jit(_init_fn(config, model, optimizer))())
  return jax.device_put(local, replicated)


def abstract_state(
  config, model: KMCLModel, optimizer: optax.GradientTransformation, replicated: NamedSharding
) -> TrainState:
  """The state's shapes, dtypes and shardings, computed without running anything: the
  target a checkpoint is restored into."""
  shapes = jax.eval_shape(_init_fn(config, model, optimizer))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def load_initial_weights(state: TrainState, path: str, config, num_classes: int) -> TrainState:
  """Replaces the backbone (a converted backbone) or the whole model (a converted KMCL
  model) with converted weights; the EMA starts from them too."""
  from kmcl_jax.convert import load_converted

  variables, description = load_converted(path)
  if description.get("arch") != config.model.backbone:
    raise ValueError(
      f"config.init_from={path!r} holds a {description.get('arch')} model but "
      f"config.model.backbone is {config.model.backbone!r}."
    )
  params, batch_stats = state.params, state.batch_stats
  if description.get("kind") == "kmcl":
    expected = {
      "num_classes": num_classes,
      "kernel": config.model.kernel,
      "variance": config.model.variance,
      "mode": config.model.mode,
    }
    if config.model.kernel == "anisotropic":  # the isotropic head has no projection
      expected["embedding_dim"] = config.model.embedding_dim
    found = {k: description.get(k) for k in expected}
    if found != expected:
      raise ValueError(
        f"config.init_from={path!r} is a KMCL model with {found}; the config asks for {expected}."
      )
    new_params, new_stats = variables["params"], variables["batch_stats"]
  else:
    new_params = {**params, "backbone": variables["params"]}
    new_stats = {**batch_stats, "backbone": variables["batch_stats"]}
  return with_weights(state, new_params, new_stats, f"config.init_from={path!r}")


def with_weights(state: TrainState, params, batch_stats, source: str) -> TrainState:
  """`state` with these params and BatchNorm statistics (host arrays of the same tree and
  shapes, placed like the state's), the EMA starting from them; `source` names them in
  the error raised when they do not fit."""
  for name, old, new in (
    ("params", state.params, params),
    ("batch_stats", state.batch_stats, batch_stats),
  ):
    if jax.tree.map(jnp.shape, old) != jax.tree.map(jnp.shape, new):
      raise ValueError(
        f"{source}: its {name} do not fit the configured model (different layers or shapes)."
      )

  def placed():  # new buffers on every call: the train step donates model and EMA apart
    return jax.tree.map(
      lambda old, new: jax.device_put(np.asarray(new, old.dtype), old.sharding),
      (state.params, state.batch_stats),
      (params, batch_stats),
    )

  (params, batch_stats), (ema_params, ema_batch_stats) = placed(), placed()
  return state.replace(
    params=params, batch_stats=batch_stats, ema_params=ema_params, ema_batch_stats=ema_batch_stats
  )


def parameter_counts(params) -> dict[str, int]:
  """Parameters of each top-level part of the model ("backbone", "head") and in all."""
  counts = {
    name: sum(int(np.size(leaf)) for leaf in jax.tree.leaves(part)) for name, part in params.items()
  }
  return {**counts, "total": sum(counts.values())}


def all_finite(*trees) -> jax.Array:
  """Whether every array of the pytrees is finite (integer arrays always are); traceable."""
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(trees)]))


def is_finite(state: TrainState) -> bool:
  """Whether every array of the state (weights, EMA, optimiser state) is finite."""
  return bool(jax.jit(all_finite)(state))
