"""Training: `train_and_evaluate(config, workdir)`, the run loop.

The run, in order: config checks -> the workdir (one run at a time, the same run when
resuming) -> mesh -> data -> model and optimiser -> restore the newest intact checkpoint
(or initial weights) -> compile -> train loop (log, evaluate, checkpoint; stop on
preemption, SIGTERM or divergence) -> final evaluation -> summary.

The pieces it runs live in their own modules: the state and its builders in `state`,
the compiled steps in `steps`, evaluation in `evaluation`, checkpoints in
`checkpointing`, logs and plots in `reporting`, the run's identity in `workdir`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from kmcl_jax import config as config_lib
from kmcl_jax import metrics as metrics_lib
from kmcl_jax import optim, workdir_lock
from kmcl_jax import workdir as workdir_lib
from kmcl_jax.checkpointing import Checkpoints
from kmcl_jax.compilation import compile_ahead, enable_cache, flops
from kmcl_jax.data import create_datasets
from kmcl_jax.errors import Preempted, RunStopped
from kmcl_jax.evaluation import better_variant, evaluate, result_record
from kmcl_jax.mesh import create_mesh, replicated, to_global_batch
from kmcl_jax.profiling import StepProfiler
from kmcl_jax.reporting import (
  SUMMARY_FILE,
  Reporter,
  missing_plots,
  read_summary,
  write_plots,
)
from kmcl_jax.state import (
  TrainState,
  abstract_state,
  compute_dtype,
  create_model,
  initial_state,
  load_initial_weights,
  parameter_counts,
)
from kmcl_jax.steps import jit_steps


class Diverged(RunStopped):
  """Too many consecutive steps had a non-finite loss, gradient or update."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per `config`, resuming from `workdir` if it holds checkpoints; evaluates the
  model and its EMA every config.eval_every_epochs and at the end; writes
  WORKDIR/metrics.jsonl and WORKDIR/summary.json. Returns the final state.

  Raises:
    Preempted: stopped on a preemption notice or SIGTERM, after saving the current step.
    RunStopped: the run cannot go on (divergence, a failed save, another run in the
      workdir, a different config than the run it would resume); one sentence says why.
  """
  config_lib.validate(config)
  config_lib.require_initial_weights(config)
  config_lib.check_training_memory(config)
  workdir_lib.check_workdir(workdir, writable=True)
  enable_cache(config.compilation_cache, workdir)
  with workdir_lock.exclusive(workdir):
    workdir_lib.refuse_other_run(config, workdir)
    return _train(config, workdir, start_time=time.time())


def _train(config: ml_collections.ConfigDict, workdir: str, start_time: float) -> TrainState:
  # Mesh and data. ------------------------------------------------------------------
  mesh = create_mesh()
  logging.info(
    "%d devices (%s) over %d processes; compute dtype %s",
    jax.device_count(),
    jax.devices()[0].platform,
    jax.process_count(),
    jnp.dtype(compute_dtype(config)),
  )
  datasets = create_datasets(config)
  total_steps = config.train_steps or config.num_epochs * datasets.steps_per_epoch
  eval_every = config.eval_every_epochs * datasets.steps_per_epoch
  logging.info(
    "%s: %d train / %d eval images, %d classes, %d steps per epoch, %d steps",
    config.data.name,
    datasets.num_train,
    datasets.num_eval,
    len(datasets.class_names),
    datasets.steps_per_epoch,
    total_steps,
  )

  # Model, optimiser, state: resume the same run, or start one. ----------------------
  model = create_model(config, len(datasets.class_names))
  optimizer = optim.create_optimizer(
    config.optim, total_steps, config.batch_size, config.recipe_batch
  )
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints)
  reporter = train_batches = None
  try:
    # Whatever does not fit (another config, other classes, a workdir that is not known
    # to be this run's) is refused before anything is restored or moved.
    has_checkpoints = bool(checkpoints.latest.all_steps() or checkpoints.best.all_steps())
    changes = workdir_lib.check_resume(config, workdir, datasets.class_names, has_checkpoints)
    restored = checkpoints.restore(
      abstract_state(config, model, optimizer, replicated(mesh)), repair=True
    )
    if restored is not None:
      state, step = restored
      logging.info("Resumed from step %d of %s.", step, workdir)
    else:
      state = initial_state(config, model, optimizer, replicated(mesh))
      if config_lib.initial_weights(config):
        state = load_initial_weights(state, config.init_from, config, len(datasets.class_names))
        logging.info("Initial weights from %s.", config.init_from)
    step = int(state.step)
    summary = read_summary(workdir) if step >= total_steps else None
    if summary is not None:
      primary = jax.process_index() == 0
      written = write_plots(workdir, summary) if primary and missing_plots(workdir) else []
      logging.info(
        "%s finished at step %d already (see %s); %s.",
        workdir,
        step,
        SUMMARY_FILE,
        f"wrote its missing plots {written}" if written else "nothing to do",
      )
      return state
    workdir_lib.write_run(
      workdir,
      config,
      datasets.class_names,
      resumed_at=step if restored is not None else None,
      changes=changes,
    )

    # Train. The input stream starts at batch `step` (a function of the seed and the
    # step alone, so any worker or host count continues it). The step is compiled ahead
    # of the first one (or found in the compilation cache), timed, and its cost recorded.
    train_batches = datasets.train_from(step)
    train_jit, eval_step = jit_steps(config, model, optimizer, mesh, state)
    reporter = Reporter(
      workdir,
      total_steps,
      datasets.steps_per_epoch,
      config.batch_size,
      jax.process_index() == 0,
      start_step=step,
    )
    profiler = StepProfiler(config.profile_steps, workdir)
    pending, previous, results, preempted, first_step = [], None, None, False, step
    train_step = None
    with _sigterm_flag() as sigterm:
      while step < total_steps and not preempted:
        batch = to_global_batch(next(train_batches), mesh)
        if train_step is None:
          train_step = _compile_train_step(train_jit, state, batch, model, config, workdir)
        with profiler.annotation(step + 1):
          state, step_metrics = train_step(state, batch)
        step += 1
        profiler.after(step, state)
        if step == first_step + 1:  # time from here: the first step warms up
          jax.block_until_ready(state.step)
          reporter.start(step)
        elif previous is not None:  # reading the previous step's count keeps this one queued
          _check_divergence(previous, step - 1, config.max_consecutive_skipped_steps)
        previous = step_metrics
        pending.append(step_metrics)
        if step % config.log_every_steps == 0 or step == total_steps:
          reporter.train(step, _average(pending))
          pending = []
        if step % eval_every == 0 or step == total_steps:
          results = evaluate(eval_step, state, datasets.eval, mesh, config.threshold)
          reporter.evaluation(step, results)
          variant = better_variant(results)
          checkpoints.save_best(step, state, train_batches, results[variant]["map"], variant)
        preempted = checkpoints.reached_preemption(step) or sigterm.is_set()
        if step % config.checkpoint_every_steps == 0 or step == total_steps or preempted:
          checkpoints.save_latest(step, state, train_batches)
          workdir_lib.record_saved_step(workdir, checkpoints.saved_step)
      if previous is not None:
        _check_divergence(previous, step, config.max_consecutive_skipped_steps)
      checkpoints.wait()
      workdir_lib.record_saved_step(workdir, checkpoints.saved_step)
      if preempted:
        raise Preempted(
          f"Stopped at step {step} on a preemption notice or SIGTERM, with "
          f"step {step} saved; rerun the same command to resume."
        )

      # Final evaluation and summary. -------------------------------------------------
      if results is None:  # resumed after the last step: evaluate what was restored.
        results = evaluate(eval_step, state, datasets.eval, mesh, config.threshold)
        reporter.evaluation(step, results)
      best = better_variant(results)
      logging.info(
        "Per-class AP of the %s (test mAP %.2f):\n%s",
        best,
        results[best]["map"],
        metrics_lib.ap_table(results[best]["ap"], datasets.class_names),
      )
      reporter.summary(
        {
          **result_record(results, datasets.class_names),
          "best_checkpoint_map": checkpoints.best_score(),
          "steps": step,
          "skipped_steps": int(state.skipped_steps),
          "final_loss": reporter.last_train_loss(),
          "wall_seconds": time.time() - start_time,
        }
      )
      if sigterm.is_set():
        logging.info("SIGTERM arrived after the last step: finished the summary and plots first.")
    return state
  finally:
    if reporter is not None:
      reporter.close()
      profiler.stop()
    if train_batches is not None:
      train_batches.close()
    checkpoints.close()


def _compile_train_step(train_jit, state: TrainState, batch: dict, model, config, workdir: str):
  """The train step compiled for these shapes; logs and records in run.json what it
  costs: compile time, parameters, XLA's FLOPs per image of the whole step and of the
  model's forward pass."""
  compiled, seconds = compile_ahead(train_jit, state, batch)
  image = jax.ShapeDtypeStruct((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
  forward = flops(
    jax.jit(lambda w, x: model.apply(w, x, train=False)).lower(state.weights("model"), image)
  )
  step = flops(compiled)
  costs = {
    "parameters": parameter_counts(state.params),
    "flops_per_image": {"train_step": step and step / config.batch_size, "forward": forward},
    "compile_seconds": round(seconds, 2),
  }
  logging.info(
    "Train step compiled in %.1f s (cache: %s); parameters %s; GFLOP per image: "
    "train step %s, forward %s.",
    seconds,
    jax.config.jax_compilation_cache_dir or "off",
    ", ".join(f"{k} {v:,}" for k, v in costs["parameters"].items()),
    *(f"{v / 1e9:.3f}" if v else "n/a" for v in costs["flops_per_image"].values()),
  )
  workdir_lib.record(workdir, costs)
  return compiled


def _average(step_metrics: list[dict]) -> dict[str, float]:
  """The metrics of the steps since the last report: means, and the counters' totals."""
  host = jax.device_get(step_metrics)
  averaged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
  for counter in ("skipped_steps", "consecutive_skipped_steps"):
    averaged[counter] = int(host[-1][counter])
  averaged["corrupt_images"] = int(sum(m["corrupt_images"] for m in host))
  return averaged


def _check_divergence(step_metrics: dict, step: int, limit: int) -> None:
  """Raises Diverged once `limit` consecutive steps up to `step` were skipped."""
  consecutive = int(step_metrics["consecutive_skipped_steps"])
  if consecutive >= limit:
    raise Diverged(
      f"Stopped at step {step}: its last {consecutive} steps had a non-finite loss, "
      f"gradient or update (config.max_consecutive_skipped_steps={limit}), so training "
      "has diverged; lower config.optim.lr or check the data, and resume from the last "
      "checkpoint, which is kept."
    )


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
