"""Orbax checkpoints of a run: the latest few and the best by mAP, each with the train
state (params, optimiser, EMA, step), every host's grain iterator state, and checksums.

  WORKDIR/checkpoints/<step>/   the `keep` latest (every checkpoint_every_steps, at the
                                end, on preemption or SIGTERM)
  WORKDIR/best/<step>/          the best evaluation so far (mAP of model or EMA)
  WORKDIR/damaged/              damaged latest checkpoints, moved aside (local workdirs)
  WORKDIR/damaged.json          every damaged checkpoint taken out of the way, and why

What is guaranteed:
- A checkpoint is complete or absent: orbax writes it under a temporary name and commits
  it when every host has written its part; a run killed mid-save resumes from the one
  before. Saves are asynchronous: arrays are copied off the devices before `save`
  returns and written in the background.
- What is restored is what was saved: every array's checksum (an order-independent
  integer hash of its bits, so the same on every platform) is saved with it and checked
  on restore, and a state with a non-finite value is neither saved nor restored.
- Only damage is treated as damage: a checksum mismatch or a non-finite value. One
  damaged checkpoint does not lose the run: restoring falls back to the previous
  checkpoint, then to the best one, saying why; training takes a damaged latest
  checkpoint out of the way (moved to damaged/, or deleted on an object store, which
  cannot rename) so that its step can be saved again. The best checkpoint is never
  moved.
- A checkpoint that does not fit this run (an array of another shape, a missing or
  extra array: another model or class count) or that cannot be read (a missing file,
  a storage error that outlasts a few retries) stops the run with one sentence and
  moves nothing.
- Every host reads each candidate, then all of them act on the worst outcome any host
  found, so that they restore the same step or stop together. The grain iterator state
  is saved but not restored: the input position follows from the step.
- A failed save (a full disk) ends the run with one sentence; the checkpoints written
  before it stay intact.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from kmcl_jax.errors import RunStopped
from kmcl_jax.host_agreement import as_on_process_0, worst_on_any_host
from kmcl_jax.state import all_finite

LATEST, BEST, DAMAGED = "checkpoints", "best", "damaged"
DAMAGED_RECORD = "damaged.json"

# What a host found when it read a candidate checkpoint, from best to worst: the hosts
# act on the worst any of them found.
_INTACT, _GONE, _DAMAGED, _MISMATCHED, _UNREADABLE = range(5)


class CheckpointError(RunStopped):
  """A checkpoint could not be saved, or no checkpoint of the workdir could be restored."""


class CheckpointMismatch(CheckpointError):
  """A checkpoint whose arrays do not fit this run's state: another config saved it."""


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


def _array_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{dotted path: shape} of the arrays of a pytree (of arrays, ShapeDtypeStructs, or
  orbax's array metadata): the same names for a TrainState and the dicts it is saved as."""

  def name(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))

  return {
    ".".join(map(name, path)): tuple(getattr(leaf, "shape", ()))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _misfit(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
  """How a checkpoint's arrays differ from the state restored into, in words (None if
  they fit)."""
  changed = [
    f"{p} is {saved[p]} there, {wanted[p]} here"
    for p in wanted
    if saved.get(p, wanted[p]) != wanted[p]
  ]
  missing = [p for p in wanted if p not in saved]
  extra = [p for p in saved if p not in wanted]
  words = []
  for arrays, what in (
    (changed, "changed shape"),
    (missing, "of this run are not in it"),
    (extra, "in it are not in this run"),
  ):
    if arrays:
      words.append(f"{len(arrays)} array(s) {what}, e.g. {'; '.join(arrays[:3])}")
  return ", ".join(words) or None


class Checkpoints:
  """The latest and best checkpoints of `workdir`; keeps the `keep` latest.

  `renames`: whether the storage can rename a folder (None: a local path can, an object
  store such as gs:// cannot), which decides how a damaged checkpoint is taken out of
  the way. A read that fails is tried `read_attempts` times in all, waiting
  `retry_seconds`, then twice that, and so on, in between.
  """

  def __init__(
    self,
    workdir: str,
    keep: int = 2,
    *,
    renames: bool | None = None,
    read_attempts: int = 4,
    retry_seconds: float = 0.5,
  ):
    self.root = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))
    self.latest = _manager(os.fspath(self.root / LATEST), keep, best=False)
    self.best = _manager(os.fspath(self.root / BEST), 1, best=True)
    self.renames = "://" not in workdir if renames is None else renames
    self.read_attempts, self.retry_seconds = read_attempts, retry_seconds
    # Reads one host's part of a checkpoint with no barrier across hosts: a host whose
    # read fails retries or reports it, and the hosts then agree on what to do.
    self._reader = ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(), integrity=ocp.JsonCheckpointHandler()
      ),
      multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
      ),
    )
    self._pending = {}  # manager directory -> the step its save in flight will commit
    self.saved_step = None  # the newest latest checkpoint this object saved and committed
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
    if step in self.best.all_steps():  # saved before this run fell back to an earlier step
      logging.warning(
        "Keeping %s/%d, saved before; it scored %.2f.", self.best.directory, step, self.best_score()
      )
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
    step = self._pending.pop(manager.directory, None)
    if manager is self.latest and step is not None:
      self.saved_step = step

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
    self, abstract_state: Any, *, best: bool = False, step: int | None = None, repair: bool = False
  ) -> tuple[Any, int] | None:
    """(state, step) of the newest checkpoint that restores intact, or None if there is
    no checkpoint at all.

    The candidates, in order: the latest checkpoints, newest first, then the best one;
    with `best`, the best one first; with `step`, that step alone. A damaged candidate
    (a checksum mismatch, a non-finite value) is skipped with a warning naming it and
    why; with `repair` (training) a damaged latest one is taken out of the way (moved to
    WORKDIR/damaged/, or deleted on an object store; recorded in WORKDIR/damaged.json)
    so that its step can be saved again. A candidate deleted while it is read (by the
    run training in the workdir) is skipped. `abstract_state` gives shapes, dtypes and
    shardings (jax.ShapeDtypeStruct leaves).

    Raises:
      CheckpointMismatch: a candidate's arrays do not fit `abstract_state`.
      CheckpointError: a candidate cannot be read (after retries), or checkpoints exist
        but every one is damaged; nothing is moved but damaged latest checkpoints.
      ValueError: `step` is not a checkpoint of the workdir.
    """
    self.wait()
    managers = (self.latest, self.best)
    listed = [(0, s) for s in sorted(self.latest.all_steps(), reverse=True)]
    bests = [(1, s) for s in sorted(self.best.all_steps(), reverse=True)]
    candidates = as_on_process_0(bests + listed if best or step is not None else listed + bests)
    if step is not None:
      candidates = [c for c in candidates if c[1] == step][:1]
      if not candidates:
        raise ValueError(
          f"--step={step}: no such checkpoint (latest: "
          f"{sorted(self.latest.all_steps())}, best: {sorted(self.best.all_steps())})."
        )
    damaged = []
    for kind, candidate in candidates:
      manager = managers[kind]
      where = f"{manager.directory}/{candidate}"
      outcome, why, state = self._read_agreed(manager, candidate, abstract_state)
      if outcome == _GONE:
        logging.warning("Checkpoint %s was deleted while it was read; trying the next one.", where)
        continue
      if outcome == _MISMATCHED:
        raise CheckpointMismatch(
          f"Checkpoint {where} does not fit this run ({why}), so it was saved with another "
          "config or data (another class count, model.backbone or model.embedding_dim, "
          "say); nothing was moved: rerun with that run's config and data, or use a new "
          "--workdir to start a new run."
        )
      if outcome == _UNREADABLE:
        raise CheckpointError(
          f"Checkpoint {where} could not be read ({why}), so whether it is intact is "
          "unknown and nothing was moved: fix the cause (a missing file, a storage "
          "error, another version of orbax) and rerun the same command."
        )
      if outcome == _DAMAGED:
        damaged.append(f"{where} ({why})")
        logging.warning("Checkpoint %s is damaged: %s; trying the one before it.", where, why)
        if repair and manager is self.latest:
          self._discard(manager, candidate, why)
        continue
      if damaged:
        logging.warning("Restored %s instead.", where)
      return state, candidate
    if damaged:
      taken = f" (the latest ones are listed in {DAMAGED_RECORD}, the best one kept)"
      raise CheckpointError(
        f"Every checkpoint of {self.root} is damaged{taken if repair else ''}: "
        f"{'; '.join(damaged)}; use a new --workdir to start a new run."
      )
    if step is not None:
      raise ValueError(f"--step={step}: the checkpoint was deleted while it was read.")
    return None

  def _read_agreed(self, manager, step: int, abstract_state) -> tuple[int, str, Any]:
    """(outcome, why, state) of one candidate, the same on every host: each host reads
    its part, then all verify the state when every read succeeded."""
    outcome, why, restored = self._read(epath.Path(manager.directory) / str(step), abstract_state)
    worst, host = worst_on_any_host(outcome)
    if worst != _INTACT:
      if worst != outcome:
        why = f"on process {host}; its log says why"
      return worst, why, None
    finite, checksums = integrity(restored["state"])
    saved = restored["integrity"]["checksums"]
    changed = [path for path, value in checksums.items() if saved.get(path) != value]
    if changed:
      return (
        _DAMAGED,
        f"checksum mismatch in {len(changed)} array(s), e.g. {', '.join(changed[:3])}",
        None,
      )
    if not finite:
      return _DAMAGED, "it holds non-finite values", None
    return _INTACT, "", restored["state"]

  def _read(self, folder: epath.Path, abstract_state) -> tuple[int, str, Any]:
    """(outcome, why, what was read) of this host's read of the checkpoint in `folder`,
    retried with exponential backoff while it fails and the folder exists."""
    attempt = 0
    while True:
      try:
        saved = ocp.StandardCheckpointHandler().metadata(folder / "state").tree
        misfit = _misfit(_array_shapes(saved), _array_shapes(abstract_state))
        if misfit:
          return _MISMATCHED, misfit, None
        items = {
          "state": ocp.args.StandardRestore(abstract_state),
          "integrity": ocp.args.JsonRestore(),
        }
        return _INTACT, "", self._reader.restore(folder, args=ocp.args.Composite(**items))
      except Exception as error:  # sorted below: gone, worth a retry, or unreadable
        if not folder.exists():
          return _GONE, "", None
        attempt += 1
        if attempt == self.read_attempts:
          return _UNREADABLE, f"{_reason(error)}, {self.read_attempts} attempts", None
        delay = self.retry_seconds * 2 ** (attempt - 1)
        logging.warning(
          "Reading %s failed (%s); retrying in %.1f s.", folder, _reason(error), delay
        )
        time.sleep(delay)

  def _discard(self, manager: ocp.CheckpointManager, step: int, why: str) -> None:
    """Takes a damaged checkpoint out of the way, so that its step can be saved again,
    and records it in WORKDIR/damaged.json: moved to WORKDIR/damaged/<kind>-<step>[-n]
    where the storage renames folders, deleted on an object store, which cannot."""
    if jax.process_index() == 0:
      source = epath.Path(manager.directory) / str(step)
      entry = {
        "checkpoint": os.fspath(source),
        "why": why,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      }
      if self.renames:
        folder = self.root / DAMAGED
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{source.parent.name}-{step}"
        suffix = 1
        while target.exists():
          target, suffix = folder / f"{source.parent.name}-{step}-{suffix}", suffix + 1
        source.rename(target)
        entry["moved_to"] = os.fspath(target)
      else:
        source.rmtree()
        entry["deleted"] = True
      record = self.root / DAMAGED_RECORD
      entries = json.loads(record.read_text()) if record.exists() else []
      record.write_text(json.dumps([*entries, entry], indent=2))
      logging.warning(
        "Took the damaged checkpoint %s out of the way (%s).",
        source,
        f"moved to {entry['moved_to']}" if self.renames else "deleted",
      )
    multihost_utils.sync_global_devices(f"kmcl_jax discarded {manager.directory}/{step}")
    manager.reload()

  # Preemption and shutdown. -------------------------------------------------------

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host got a preemption notice."""
    return self.latest.reached_preemption(step)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
    self._reader.close()
