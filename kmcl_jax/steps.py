"""The compiled steps: one training step of the KMCL objective over the global batch, and
one evaluation step of the model and its EMA.

Both are `jax.jit` programs over the mesh of `kmcl_jax.mesh`: batches sharded over its
data axis, the state replicated (and donated to the train step).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from kmcl_jax import losses, optim
from kmcl_jax.data import device_augment, transforms
from kmcl_jax.mesh import DATA_AXIS, batch_sharded, replicated
from kmcl_jax.models import KMCLModel
from kmcl_jax.state import VARIANTS, TrainState


def scoped_loss(config: ml_collections.ConfigDict, mesh: Mesh):
  """(outputs, labels) -> (total, terms, diagnostics) over the global batch, or per device
  and averaged over devices (what the reference's DistributedDataParallel script
  optimises).

  Over the global batch, the contrastive term's anchors are split over the mesh: each
  device pairs its own rows with the all-gathered batch (`losses.contrastive_loss`).
  """
  kmcl_loss = functools.partial(
    losses.kmcl_loss,
    kernel=config.model.kernel,
    mode=config.model.mode,
    temperature=config.loss.temperature,
    gamma_neg=config.loss.gamma_neg,
    gamma_pos=config.loss.gamma_pos,
    clip=config.loss.clip,
    weights=dict(config.loss.weights),
    reference_batch=config.loss.reference_batch,
    block_size=config.loss.block_size or None,
    with_diagnostics=True,
  )

  def loss(out, labels, mesh=None):
    return kmcl_loss(out["features"], out["pi"], out["mu"], out["var"], labels, mesh=mesh)

  if config.contrastive_scope == "global":
    return functools.partial(loss, mesh=mesh)

  def per_device(out, labels):
    return jax.lax.pmean(loss(out, labels), DATA_AXIS)

  return jax.shard_map(per_device, mesh=mesh, in_specs=P(DATA_AXIS), out_specs=P())


def make_train_step(
  config: ml_collections.ConfigDict,
  model: KMCLModel,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
):
  """(state, batch) -> (state, metrics), to be jitted with the batch sharded over the mesh.

  A step is skipped (nothing but the counters changes: no update, no schedule step, no
  EMA, no BatchNorm statistics) when the loss, a gradient, the new parameters or the new
  BatchNorm statistics are not finite: one bad update would otherwise poison every later
  step.
  """
  loss_of = scoped_loss(config, mesh)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  ema_decay = optim.ema_decay_per_step(config.ema_decay, config.batch_size, config.recipe_batch)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    images = transforms.normalize(
      device_augment.train_images(config, batch["image"], state.step), mean, std
    )

    def objective(params):
      out, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
      )
      total, terms, diagnostics = loss_of(out, batch["labels"])
      return total, (terms, diagnostics, updates["batch_stats"])

    (loss, (terms, diagnostics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params
    )
    new_state, hyperparams, finite = optim.update_or_skip(
      optimizer,
      state,
      grads,
      batch_stats,
      loss,
      ema_decay,
      optim.update_layout(config.update_layout),
    )
    skipped = (~finite).astype(jnp.int32)
    new_state = new_state.replace(
      step=state.step + 1,
      skipped_steps=state.skipped_steps + skipped,
      consecutive_skipped_steps=(state.consecutive_skipped_steps + 1) * skipped,
    )
    metrics = {
      "loss": loss,
      **terms,
      **diagnostics,
      "learning_rate": hyperparams["learning_rate"],
      "beta1": hyperparams["b1"],
      "skipped_steps": new_state.skipped_steps,
      "consecutive_skipped_steps": new_state.consecutive_skipped_steps,
      "corrupt_images": jnp.sum(batch["skipped"]),
    }
    return new_state, metrics

  return train_step


def eval_outputs(
  config: ml_collections.ConfigDict, model: KMCLModel, weights: dict, images: jax.Array
) -> dict[str, jax.Array | None]:
  """uint8 images (B, S, S, 3) -> the model's outputs in evaluation mode, `KMCLModel`'s
  {"features", "pi", "mu", "var"}.

  `weights` is {"params", "batch_stats"} (`TrainState.weights`)."""
  images = transforms.normalize(images, tuple(config.data.mean), tuple(config.data.std))
  return model.apply(weights, images, train=False)


def class_probabilities(
  config: ml_collections.ConfigDict, model: KMCLModel, weights: dict, images: jax.Array
) -> jax.Array:
  """uint8 images (B, S, S, 3) -> sigmoid class probabilities (B, K), float32."""
  return jax.nn.sigmoid(eval_outputs(config, model, weights, images)["pi"].astype(jnp.float32))


def make_eval_step(config: ml_collections.ConfigDict, model: KMCLModel):
  """(state, batch) -> {"model", "ema"} class probabilities (B, K), plus the batch's
  labels, ignore, mask and index."""

  def eval_step(state: TrainState, batch: dict) -> dict:
    return {
      **{
        variant: class_probabilities(config, model, state.weights(variant), batch["image"])
        for variant in VARIANTS
      },
      **{k: batch[k] for k in ("labels", "ignore", "mask", "index")},
    }

  return eval_step


def jit_steps(
  config: ml_collections.ConfigDict,
  model: KMCLModel,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  state: TrainState,
):
  """(train_step, eval_step) jitted over `mesh`: batches sharded over the data axis, the
  state replicated and donated to the train step, eval outputs gathered to every host."""
  state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
  train_step = jax.jit(
    make_train_step(config, model, optimizer, mesh),
    in_shardings=(state_sharding, batch_sharded(mesh)),
    out_shardings=(state_sharding, replicated(mesh)),
    donate_argnums=0,
  )
  eval_step = jax.jit(make_eval_step(config, model), out_shardings=replicated(mesh))
  return train_step, eval_step
