"""Training and evaluation of KMCL: `train_and_evaluate(config, workdir)`.

One `jax.jit` train step over a Mesh of every device (axis "data"): the batch is sharded,
parameters replicated, the state donated. Under jit a mean over the batch axis is over
the GLOBAL batch, so BatchNorm statistics and (with contrastive_scope="global") the
KMCL loss see every device's and every host's images, exactly as one device holding the
whole batch would. Compute runs in config.dtype (bfloat16 on accelerators); parameters,
optimiser state and the loss stay float32.

The run, in order: config checks -> mesh -> data -> model, optimiser, initial state ->
resume (or init_from) -> compile -> train loop (log, evaluate, checkpoint, stop on
preemption) -> final evaluation -> summary.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kmcl_jax import losses, optim
from kmcl_jax import metrics as metrics_lib
from kmcl_jax.checkpointing import Checkpoints
from kmcl_jax.data import create_datasets, device_augment, transforms
from kmcl_jax.models import KMCLModel
from kmcl_jax.models.kmm import VARIANCES
from kmcl_jax.models.tresnet import ARCHITECTURES
from kmcl_jax.reporting import Reporter

SCOPES = ("global", "device")
DTYPES = ("auto", "float32", "bfloat16")


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a checkpoint is exactly this.

  step counts batches consumed; skipped_steps those whose update was skipped because the
  loss or a gradient was not finite (the optimiser's own count, which drives the
  schedule, counts applied updates only).
  """
  step: jax.Array
  skipped_steps: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any


# --------------------------------------------------------------------------------------
# Configuration checks: everything that can be wrong fails here, before compiling.
# --------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first config field with a bad value."""
  def value(field: str):
    node = config
    for part in field.split("."):
      node = node[part]
    return node

  def require(ok: bool, field: str, expected: str) -> None:
    if not ok:
      raise ValueError(f"config.{field}={value(field)!r}: expected {expected}.")

  require(config.model.backbone in ARCHITECTURES, "model.backbone", f"one of {sorted(ARCHITECTURES)}")
  require(config.model.kernel in losses.KERNELS, "model.kernel", f"one of {losses.KERNELS}")
  require(config.model.variance in VARIANCES, "model.variance", f"one of {VARIANCES}")
  require(config.model.mode in losses.MODES, "model.mode", f"one of {losses.MODES}")
  require(config.dtype in DTYPES, "dtype", f"one of {DTYPES}")
  require(config.contrastive_scope in SCOPES, "contrastive_scope", f"one of {SCOPES}")
  for field in ("batch_size", "eval_batch_size", "num_epochs", "eval_every_epochs",
                "checkpoint_every_steps", "log_every_steps"):
    require(isinstance(value(field), int) and value(field) > 0, field, "a positive integer")
  require(isinstance(config.train_steps, int) and config.train_steps >= 0, "train_steps",
          "0 (use num_epochs) or a positive integer")
  for field in ("batch_size", "eval_batch_size"):
    require(value(field) % jax.device_count() == 0, field,
            f"a multiple of the {jax.device_count()} devices")
  require(config.optim.lr > 0, "optim.lr", "a positive learning rate")
  require(config.optim.weight_decay >= 0, "optim.weight_decay", "a non-negative number")
  require(0 < config.optim.pct_start < 1, "optim.pct_start", "a fraction in (0, 1)")
  require(0 <= config.ema_decay < 1, "ema_decay", "a number in [0, 1)")
  require(0 < config.threshold < 1, "threshold", "a probability in (0, 1)")
  require(config.loss.block_size >= 0, "loss.block_size", "0 (automatic) or a positive integer")
  require(config.data.image_size >= 32 and config.data.image_size % 32 == 0, "data.image_size",
          "a multiple of 32 (TResNet downsamples 32x)")
  require(config.data.augment in transforms.AUGMENTATIONS, "data.augment",
          f"one of {transforms.AUGMENTATIONS}")
  require(0 <= config.data.cutout < 1, "data.cutout", "a fraction in [0, 1) (0 disables)")
  require(len(config.data.mean) == 3, "data.mean", "three numbers, one per channel")
  require(len(config.data.std) == 3 and min(config.data.std) > 0, "data.std",
          "three positive numbers, one per channel")
  require(config.data.worker_count >= 0, "data.worker_count", "a non-negative integer")
  require(config.data.read_threads >= 1, "data.read_threads", "a positive integer")
  require(bool(config.data.name), "data.name", "a dataset name (see kmcl_jax.data)")
  if config.init_from:
    require(epath.Path(config.init_from).is_dir(), "init_from",
            "a folder written by `python -m kmcl_jax.convert`")


def compute_dtype(config) -> jnp.dtype:
  if config.dtype == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  return jnp.dtype(config.dtype)


# --------------------------------------------------------------------------------------
# Model, optimiser and state.
# --------------------------------------------------------------------------------------


def create_model(config, num_classes: int) -> KMCLModel:
  return KMCLModel(backbone=config.model.backbone, num_classes=num_classes,
                   kernel=config.model.kernel, variance=config.model.variance,
                   mode=config.model.mode, dtype=compute_dtype(config),
                   remat=config.model.remat)


def _init_fn(config, model: KMCLModel, optimizer: optax.GradientTransformation):
  def init():
    images = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
    variables = model.init(jax.random.key(config.seed), images, train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    return TrainState(step=jnp.zeros((), jnp.int32), skipped_steps=jnp.zeros((), jnp.int32),
                      params=params, batch_stats=batch_stats, opt_state=optimizer.init(params),
                      ema_params=params, ema_batch_stats=batch_stats)
  return init


def initial_state(config, model: KMCLModel, optimizer: optax.GradientTransformation,
                  replicated: NamedSharding) -> TrainState:
  """Freshly initialised state (params from config.seed), replicated over the mesh.

  Initialised on this host's first device and then replicated, so the compiled
  initialiser is the same program for every mesh (and is reused from a compilation
  cache), and every host computes the same values.
  """
  with jax.default_device(jax.local_devices()[0]):
    local = jax.device_get(jax.jit(_init_fn(config, model, optimizer))())
  return jax.device_put(local, replicated)


def abstract_state(config, model: KMCLModel, optimizer: optax.GradientTransformation,
                   replicated: NamedSharding) -> TrainState:
  """The state's shapes, dtypes and shardings, computed without running anything: the
  target a checkpoint is restored into."""
  shapes = jax.eval_shape(_init_fn(config, model, optimizer))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      shapes)


def load_initial_weights(state: TrainState, path: str, config, num_classes: int) -> TrainState:
  """Replaces the backbone (a converted backbone) or the whole model (a converted KMCL
  model) with converted weights; the EMA starts from them too."""
  from kmcl_jax.convert import load_converted
  variables, description = load_converted(path)
  if description.get("arch") != config.model.backbone:
    raise ValueError(f"config.init_from={path!r} holds a {description.get('arch')} model but "
                     f"config.model.backbone is {config.model.backbone!r}.")
  params, batch_stats = state.params, state.batch_stats
  if description.get("kind") == "kmcl":
    expected = {"num_classes": num_classes, "kernel": config.model.kernel,
                "variance": config.model.variance}
    found = {k: description.get(k) for k in expected}
    if found != expected:
      raise ValueError(f"config.init_from={path!r} is a KMCL model with {found}; the config "
                       f"asks for {expected}.")
    new_params, new_stats = variables["params"], variables["batch_stats"]
  else:
    new_params = {**params, "backbone": variables["params"]}
    new_stats = {**batch_stats, "backbone": variables["batch_stats"]}
  return with_weights(state, new_params, new_stats, f"config.init_from={path!r}")


def with_weights(state: TrainState, params, batch_stats, source: str) -> TrainState:
  """`state` with these params and BatchNorm statistics (host arrays of the same tree and
  shapes, placed like the state's), the EMA starting from them; `source` names them in
  the error raised when they do not fit."""
  for name, old, new in (("params", state.params, params),
                         ("batch_stats", state.batch_stats, batch_stats)):
    if jax.tree.map(jnp.shape, old) != jax.tree.map(jnp.shape, new):
      raise ValueError(f"{source}: its {name} do not fit the configured model "
                       "(different layers or shapes).")

  def placed():  # new buffers on every call: the train step donates model and EMA apart
    return jax.tree.map(lambda old, new: jax.device_put(np.asarray(new, old.dtype), old.sharding),
                        (state.params, state.batch_stats), (params, batch_stats))

  (params, batch_stats), (ema_params, ema_batch_stats) = placed(), placed()
  return state.replace(params=params, batch_stats=batch_stats, ema_params=ema_params,
                       ema_batch_stats=ema_batch_stats)


# --------------------------------------------------------------------------------------
# The compiled steps.
# --------------------------------------------------------------------------------------


def _kmcl_loss_fn(config):
  return functools.partial(
      losses.kmcl_loss, kernel=config.model.kernel, mode=config.model.mode,
      temperature=config.loss.temperature, gamma_neg=config.loss.gamma_neg,
      gamma_pos=config.loss.gamma_pos, clip=config.loss.clip,
      block_size=config.loss.block_size or None)


def scoped_loss(config, mesh: Mesh):
  """(outputs, labels) -> (total, terms) over the global batch, or per device and averaged
  over devices (what the reference's DistributedDataParallel script optimises).

  Over the global batch, the contrastive term's anchors are split over the mesh: each
  device pairs its own rows with the all-gathered batch (`losses.contrastive_loss`).
  """
  kmcl_loss = _kmcl_loss_fn(config)

  def loss(out, labels, mesh=None):
    return kmcl_loss(out["features"], out["pi"], out["mu"], out["var"], labels, mesh=mesh)

  if config.contrastive_scope == "global":
    return functools.partial(loss, mesh=mesh)

  def per_device(out, labels):
    return jax.lax.pmean(loss(out, labels), "data")

  return jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P())


def make_train_step(config, model: KMCLModel, optimizer: optax.GradientTransformation,
                    mesh: Mesh):
  """jit(state, batch) -> (state, metrics); batch sharded over "data", state donated."""
  loss_of = scoped_loss(config, mesh)
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    images = transforms.normalize(
        device_augment.train_images(config, batch["image"], state.step), mean, std)

    def objective(params):
      out, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                 train=True, mutable=["batch_stats"])
      total, terms = loss_of(out, batch["labels"])
      return total, (terms, updates["batch_stats"])

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    updated = state.replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=optim.ema_update(state.ema_params, params, config.ema_decay),
        ema_batch_stats=optim.ema_update(state.ema_batch_stats, batch_stats, config.ema_decay))
    # A non-finite step changes nothing but the counters: no update, no schedule step, no
    # EMA and no BatchNorm statistics (which a NaN would poison for good).
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    new_state = new_state.replace(step=state.step + 1,
                                  skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    hyperparams = opt_state.hyperparams
    metrics = {"loss": loss, **terms, "learning_rate": hyperparams["learning_rate"],
               "beta1": hyperparams["b1"], "skipped_steps": new_state.skipped_steps,
               "corrupt_images": jnp.sum(batch["skipped"])}
    return new_state, metrics

  return train_step


def class_probabilities(config, model: KMCLModel, params, batch_stats, images) -> jax.Array:
  """uint8 images (B, S, S, 3) -> sigmoid class probabilities (B, K), float32."""
  images = transforms.normalize(images, tuple(config.data.mean), tuple(config.data.std))
  out = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
  return jax.nn.sigmoid(out["pi"].astype(jnp.float32))


def make_eval_step(config, model: KMCLModel):
  """(state, batch) -> {"model", "ema"} class probabilities (B, K), plus the batch's
  labels, ignore, mask and index, all gathered to every host."""
  def eval_step(state: TrainState, batch: dict) -> dict:
    return {"model": class_probabilities(config, model, state.params, state.batch_stats,
                                         batch["image"]),
            "ema": class_probabilities(config, model, state.ema_params, state.ema_batch_stats,
                                       batch["image"]),
            **{k: batch[k] for k in ("labels", "ignore", "mask", "index")}}

  return eval_step


RUN_FILE = "run.json"


def write_run_description(workdir: str, config, class_names) -> None:
  """WORKDIR/run.json: the config and the class names, for --mode=eval/predict."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / RUN_FILE).write_text(
        json.dumps({"class_names": list(class_names), "config": config.to_dict()}, indent=2))


def jit_steps(config, model: KMCLModel, optimizer: optax.GradientTransformation, mesh: Mesh,
              state: TrainState):
  """(train_step, eval_step) jitted over `mesh`: batches sharded over "data", the state
  replicated and donated to the train step, eval outputs gathered to every host."""
  replicated = NamedSharding(mesh, P())
  state_sharding = jax.tree.map(lambda _: replicated, state)
  train_step = jax.jit(make_train_step(config, model, optimizer, mesh),
                       in_shardings=(state_sharding, NamedSharding(mesh, P("data"))),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(config, model), out_shardings=replicated)
  return train_step, eval_step


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
  """This host's rows -> global arrays sharded over the mesh (every host calls it)."""
  return {name: jax.make_array_from_process_local_data(
      sharding, value.astype(np.int32) if value.dtype == np.int64 else value)
      for name, value in batch.items()}


def evaluate(eval_step, state: TrainState, eval_batches, sharding: NamedSharding,
             threshold: float) -> dict[str, dict]:
  """{"model": metrics, "ema": metrics} over one pass of `eval_batches` (this host's
  batches of the evaluation split)."""
  outputs = [jax.device_get(eval_step(state, global_batch(batch, sharding)))
             for batch in eval_batches]
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  keep = merged["mask"]
  if keep.sum() == 0:
    raise ValueError("Evaluation saw no decodable image of the evaluation split.")
  results = {}
  for variant in ("model", "ema"):
    results[variant] = metrics_lib.multilabel_metrics(
        merged[variant][keep], merged["labels"][keep], ignore=merged["ignore"][keep],
        threshold=threshold)
  results["model"]["images"] = int(keep.sum())
  results["model"]["corrupt_images"] = int((merged["index"] >= 0).sum() - keep.sum())
  return results


# --------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per `config`, resuming from `workdir` if it holds checkpoints; evaluates the
  model and its EMA every config.eval_every_epochs and at the end; writes
  WORKDIR/metrics.jsonl and WORKDIR/summary.json. Returns the final state."""
  start_time = time.time()

  # Checks and setup. ---------------------------------------------------------------
  validate_config(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  logging.info("%d devices (%s) over %d processes; compute dtype %s", jax.device_count(),
               jax.devices()[0].platform, jax.process_count(), jnp.dtype(compute_dtype(config)))

  # Data. ---------------------------------------------------------------------------
  datasets = create_datasets(config)
  total_steps = config.train_steps or config.num_epochs * datasets.steps_per_epoch
  eval_every = config.eval_every_epochs * datasets.steps_per_epoch
  logging.info("%s: %d train / %d eval images, %d classes, %d steps per epoch, %d steps",
               config.data.name, datasets.num_train, datasets.num_eval,
               len(datasets.class_names), datasets.steps_per_epoch, total_steps)

  # Model, optimiser, state; resume or initial weights. -----------------------------
  model = create_model(config, len(datasets.class_names))
  optimizer = optim.create_optimizer(config.optim, total_steps)
  checkpoints = Checkpoints(workdir)
  restored = checkpoints.restore(abstract_state(config, model, optimizer, replicated),
                                 datasets.train)
  if restored is not None:
    state, step = restored
    logging.info("Resumed from %s at step %d.", checkpoints.latest.directory, step)
  else:
    state = initial_state(config, model, optimizer, replicated)
    if config.init_from:
      state = load_initial_weights(state, config.init_from, config, len(datasets.class_names))
      logging.info("Initial weights from %s.", config.init_from)
  write_run_description(workdir, config, datasets.class_names)
  step = int(state.step)

  # Compile. ------------------------------------------------------------------------
  train_step, eval_step = jit_steps(config, model, optimizer, mesh, state)

  # Train. --------------------------------------------------------------------------
  reporter = Reporter(workdir, total_steps, datasets.steps_per_epoch, config.batch_size,
                      jax.process_index() == 0)
  pending, results, final_loss, preempted = [], None, math.nan, False
  first_step = step
  try:
    with _sigterm_flag() as sigterm:
      while step < total_steps and not preempted:
        state, step_metrics = train_step(state, global_batch(next(datasets.train),
                                                             batch_sharding))
        step += 1
        if step == first_step + 1:  # time from here: the first step includes compilation
          jax.block_until_ready(state.step)
          reporter.start(step)
        pending.append(step_metrics)
        if step % config.log_every_steps == 0 or step == total_steps:
          host = jax.device_get(pending)
          averaged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
          averaged["skipped_steps"] = int(host[-1]["skipped_steps"])
          averaged["corrupt_images"] = int(sum(m["corrupt_images"] for m in host))
          reporter.train(step, averaged)
          pending, final_loss = [], averaged["loss"]
        if step % eval_every == 0 or step == total_steps:
          results = evaluate(eval_step, state, datasets.eval, batch_sharding,
                             config.threshold)
          reporter.evaluation(step, results)
          variant = max(("model", "ema"), key=lambda v: results[v]["map"])
          checkpoints.save_best(step, state, datasets.train, results[variant]["map"], variant)
        preempted = checkpoints.reached_preemption(step) or sigterm.is_set()
        if step % config.checkpoint_every_steps == 0 or step == total_steps or preempted:
          checkpoints.save_latest(step, state, datasets.train)
    checkpoints.wait()
    if preempted:
      logging.warning("Stopped at step %d on a preemption notice or SIGTERM; the next run "
                      "with this workdir resumes from its checkpoint.", step)
      return state

    # Final evaluation and summary. -------------------------------------------------
    if results is None:  # resumed after the last step: evaluate what was restored.
      results = evaluate(eval_step, state, datasets.eval, batch_sharding, config.threshold)
      reporter.evaluation(step, results)
    best = "model" if results["model"]["map"] >= results["ema"]["map"] else "ema"
    logging.info("Per-class AP of the %s (test mAP %.2f):\n%s", best, results[best]["map"],
                 metrics_lib.ap_table(results[best]["ap"], datasets.class_names))
    reporter.summary({
        "map": results[best]["map"], "map_model": results["model"]["map"],
        "map_ema": results["ema"]["map"], "best_of": best,
        "best_checkpoint_map": checkpoints.best_score(), "steps": step,
        "skipped_steps": int(state.skipped_steps), "final_loss": final_loss,
        "wall_seconds": time.time() - start_time, "images": results["model"]["images"],
        "ap": dict(zip(datasets.class_names, (100 * results[best]["ap"]).round(4).tolist())),
        **{k: results[best][k] for k in ("OP", "OR", "OF1", "CP", "CR", "CF1", "OP_3",
                                          "OR_3", "OF1_3", "CP_3", "CR_3", "CF1_3")}})
    return state
  finally:
    reporter.close()
    datasets.train.close()
    checkpoints.close()


@contextlib.contextmanager
def _sigterm_flag():
  """An Event that SIGTERM sets while the block runs (in the main thread of a single
  process; several processes learn of preemption through JAX's preemption sync, so that
  all of them stop at the same step)."""
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
    yield event
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
  try:
    yield event
  finally:
    signal.signal(signal.SIGTERM, previous)
