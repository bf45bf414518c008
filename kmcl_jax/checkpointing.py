"""Orbax checkpoints of a run: the latest few and the best by mAP, each with the train
state (params, optimiser, EMA, step), every host's grain iterator state, and checksums.

  WORKDIR/checkpoints/<step>/   the `keep` latest (every checkpoint_every_steps, at the
                                end, on preemption or SIGTERM)
  WORKDIR/best/<step>/          the best evaluation so far (mAP of model or EMA)
  WORKDIR/damaged/              checkpoints that could not be restored, moved aside

What is guaranteed:
- A checkpoint is complete or absent: orbax writes it under a temporary name and commits
  it when every host has written its part; a run killed mid-save resumes from the one
  before. Saves are asynchronous: arrays are copied off the devices before `save`
  returns and written in the background.
- What is restored is what was saved: every array's checksum (an order-independent
  integer hash of its bits, so the same on every platform) is saved with it and checked
  on restore, and a state with a non-finite value is neither saved nor restored.
- One damaged checkpoint does not lose the run: restoring falls back to the previous
  checkpoint, then to the best one, saying why, and moves the damaged ones aside so that
  the steps they held can be saved again.
- A failed save (a full disk) ends the run with one sentence; the checkpoints written
  before it stay intact.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from kmcl_jax.errors import RunStopped
from kmcl_jax.state import all_finite

LATEST, BEST, DAMAGED = "checkpoints", "best", "damaged"


class CheckpointError(RunStopped):
  """A checkpoint could not be saved, or no checkpoint of the workdir could be restored."""


def _bits_checksum(leaf: jax.Array) -> jax.Array:
  """sum_i bits(x_i) * (2 i + 1) mod 2^32 over the flattened array: integer arithmetic,
  so the same on every device and in every reduction order; any one changed byte
  changes it (the odd weights are invertible mod 2^32)."""
  bits = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f"uint{8 * leaf.dtype.itemsize}"))
  bits = bits.reshape(-1).astype(jnp.uint32)
  weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
  return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def _integrity(state) -> tuple[jax.Array, list[jax.Array]]:
  return all_finite(state), [_bits_checksum(leaf) for leaf in jax.tree.leaves(state)]


def integrity(state: Any) -> tuple[bool, dict[str, int]]:
  """(every value finite, {array path: checksum}) of a state pytree."""
  finite, sums = jax.device_get(_integrity(state))
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state)]
  return bool(finite), dict(zip(paths, (int(s) for s in sums), strict=True))


def _manager(directory: str, keep: int | None, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=True,
    enable_async_checkpointing=True,
    best_fn=(lambda metrics: metrics["map"]) if best else None,
    best_mode="max",
    # Both managers may save the same step at once; their cross-host barriers (named
    # after the step) must not collide.
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=BEST if best else LATEST
    ),
  )
  return ocp.CheckpointManager(
    directory,
    options=options,
    item_handlers={
      "state": ocp.StandardCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler(),
      "integrity": ocp.JsonCheckpointHandler(),
    },
  )


def _reason(error: BaseException) -> str:
  """The first line of an error's message, shortened to what a log line can hold; the
  end is kept (storage errors put their cause, "No space left on device", last)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return text if len(text) <= 320 else f"{text[:150]} ... {text[-150:]}"


class Checkpoints:
  """The latest and best checkpoints of `workdir`; keeps the `keep` latest."""

  def __init__(self, workdir: str, keep: int = 2):
    self.root = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))
    self.latest = _manager(os.fspath(self.root / LATEST), keep, best=False)
    self.best = _manager(os.fspath(self.root / BEST), 1, best=True)
    self._pending = {}  # manager directory -> the step its save in flight will commit
    # The best score is kept here, not asked of orbax: while a best save is in flight
    # orbax counts its step but cannot read its metrics from disk yet.
    self._best = max(
      ((m["map"], m.get("variant"), step) for step, m in self._best_metrics()),
      default=(float("-inf"), None, None),
    )

  def _best_metrics(self):
    for step in self.best.all_steps():
      try:
        metrics = self.best.metrics(step)
      except Exception as error:  # a damaged best checkpoint; restore() says more
        logging.warning("best/%d: its metrics cannot be read (%s).", step, _reason(error))
        continue
      if metrics and "map" in metrics:
        yield step, metrics

  # Saving. -----------------------------------------------------------------------

  def save_latest(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
    if self.latest.latest_step() != step:
      self._save(self.latest, step, state, data_iterator)

  def save_best(
    self, step: int, state: Any, data_iterator: grain.DatasetIterator, score: float, variant: str
  ) -> bool:
    """Saves if `score` (the mAP of `variant`, "model" or "ema") beats the best
    checkpoint's; returns whether it did."""
    if score <= self.best_score():
      return False
    self._save(
      self.best, step, state, data_iterator, metrics={"map": float(score), "variant": variant}
    )
    self._best = (float(score), variant, step)
    return True

  def best_score(self) -> float:
    return self._best[0]

  def best_variant(self) -> str | None:
    """ "model" or "ema": which of the best checkpoint's two scored its mAP."""
    return self._best[1]

  def _save(
    self,
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: grain.DatasetIterator,
    metrics: dict | None = None,
  ) -> None:
    finite, checksums = integrity(state)
    if not finite:
      raise CheckpointError(
        f"Refusing to save step {step} to {manager.directory}: the state "
        "has non-finite values (the checkpoints before it are kept)."
      )
    # Both managers write to the same storage: a save that failed (a full disk) in either
    # stops the run before another one is started.
    self.wait()
    self._pending[manager.directory] = step
    try:
      manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          integrity=ocp.args.JsonSave({"checksums": checksums}),
        ),
        metrics=metrics,
        force=True,
      )
    except Exception as error:
      raise self._save_error(manager, step, error) from error

  def _wait(self, manager: ocp.CheckpointManager) -> None:
    try:
      manager.wait_until_finished()
    except Exception as error:
      raise self._save_error(manager, self._pending.get(manager.directory), error) from error
    self._pending.pop(manager.directory, None)

  @staticmethod
  def _save_error(manager, step, error) -> CheckpointError:
    return CheckpointError(
      f"Saving checkpoint {step} to {manager.directory} failed ({_reason(error)}); the "
      "checkpoints saved before it are intact: fix the cause (free disk space, say) and "
      "rerun the same command to resume."
    )

  def wait(self) -> None:
    """Blocks until every save in flight is committed; raises CheckpointError if one failed."""
    self._wait(self.latest)
    self._wait(self.best)

  # Restoring. --------------------------------------------------------------------

  def restore(
    self,
    abstract_state: Any,
    data_iterator: grain.DatasetIterator | None = None,
    *,
    best: bool = False,
    step: int | None = None,
    repair: bool = False,
  ) -> tuple[Any, int] | None:
    """(state, step) of the newest checkpoint that restores intact, or None if there is
    no checkpoint at all.

    The candidates, in order: the latest checkpoints, newest first, then the best one;
    with `best`, the best one first; with `step`, that step alone. A candidate that
    fails to load, fails its checksums or holds non-finite values is skipped with a
    warning naming it and why; with `repair` (training) it is moved to WORKDIR/damaged/
    so that its step can be saved again. `abstract_state` gives shapes, dtypes and
    shardings (jax.ShapeDtypeStruct leaves); the data iterator, when given, is set to
    the restored checkpoint's position.

    Raises:
      CheckpointError: checkpoints exist but none restores intact, or `step` does not.
      ValueError: `step` is not a checkpoint of the workdir.
    """
    self.wait()
    latest = [(self.latest, s) for s in sorted(self.latest.all_steps(), reverse=True)]
    bests = [(self.best, s) for s in sorted(self.best.all_steps(), reverse=True)]
    if step is not None:
      candidates = [(m, s) for m, s in bests + latest if s == step][:1]
      if not candidates:
        raise ValueError(
          f"--step={step}: no such checkpoint (latest: "
          f"{sorted(self.latest.all_steps())}, best: "
          f"{sorted(self.best.all_steps())})."
        )
    else:
      candidates = bests + latest if best else latest + bests
    failures = []
    for manager, candidate in candidates:
      try:
        state = self._restore_verified(manager, candidate, abstract_state, data_iterator)
      except _DamagedCheckpoint as damaged:
        where = f"{manager.directory}/{candidate}"
        failures.append(f"{where} ({damaged})")
        logging.warning(
          "Checkpoint %s cannot be restored: %s.%s",
          where,
          damaged,
          " Trying the one before it." if len(failures) < len(candidates) else "",
        )
        if repair:
          self._move_aside(manager, candidate)
        continue
      if failures:
        logging.warning("Restored %s/%d instead.", manager.directory, candidate)
      return state, candidate
    if failures:
      raise CheckpointError(
        f"No checkpoint of {self.root} restores intact: "
        f"{'; '.join(failures)}. Move the folder aside (or use another "
        "--workdir) to start a new run."
      )
    return None

  def _restore_verified(self, manager, step, abstract_state, data_iterator):
    items = {"state": ocp.args.StandardRestore(abstract_state), "integrity": ocp.args.JsonRestore()}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:
      raise _DamagedCheckpoint(f"it does not load: {_reason(error)}") from error
    finite, checksums = integrity(restored["state"])
    saved = restored["integrity"]["checksums"]
    changed = [path for path, value in checksums.items() if saved.get(path) != value]
    if changed:
      raise _DamagedCheckpoint(
        f"checksum mismatch in {len(changed)} array(s), e.g. {', '.join(changed[:3])}"
      )
    if not finite:
      raise _DamagedCheckpoint("it holds non-finite values")
    return restored["state"]

  def _move_aside(self, manager: ocp.CheckpointManager, step: int) -> None:
    """WORKDIR/<kind>/<step> -> WORKDIR/damaged/<kind>-<step>[-n], on every host's view."""
    if jax.process_index() == 0:
      source = epath.Path(manager.directory) / str(step)
      folder = self.root / DAMAGED
      folder.mkdir(parents=True, exist_ok=True)
      target = folder / f"{source.parent.name}-{step}"
      suffix = 1
      while target.exists():
        target, suffix = folder / f"{source.parent.name}-{step}-{suffix}", suffix + 1
      source.rename(target)
      logging.warning("Moved the damaged checkpoint %s to %s.", source, target)
    multihost_utils.sync_global_devices(f"kmcl_jax moved aside {manager.directory}/{step}")
    manager.reload()

  # Preemption and shutdown. -------------------------------------------------------

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host got a preemption notice."""
    return self.latest.reached_preemption(step)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


class _DamagedCheckpoint(Exception):
  """A checkpoint that exists but does not restore intact; the message says why."""
