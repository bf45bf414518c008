"""Orbax checkpoints of a run: the latest and the best by mAP, each with the train state
(params, optimiser, EMA, step) and every host's grain iterator state.

  WORKDIR/checkpoints/<step>/   the latest (every checkpoint_every_steps, at the end,
                                on preemption or SIGTERM)
  WORKDIR/best/<step>/          the best evaluation so far (mAP of model or EMA)

Saves are asynchronous: the arrays are copied off the devices before `save` returns and
written in the background. Orbax writes each checkpoint under a temporary name and
commits it only when complete, so a run killed mid-save restarts from the previous one.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"


def _manager(directory: str, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True, enable_async_checkpointing=True,
      best_fn=(lambda metrics: metrics["map"]) if best else None, best_mode="max",
      # Both managers may save the same step at once; their cross-host barriers (named
      # after the step) must not collide.
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=BEST if best else LATEST))
  return ocp.CheckpointManager(directory, options=options, item_handlers={
      "state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})


class Checkpoints:
  """The latest and best checkpoints of `workdir`."""

  def __init__(self, workdir: str):
    root = workdir if "://" in workdir else os.path.abspath(workdir)  # gs:// stays as it is
    self.latest = _manager(os.path.join(root, LATEST), best=False)
    self.best = _manager(os.path.join(root, BEST), best=True)

  def save_latest(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
    if self.latest.latest_step() != step:
      self.latest.save(step, args=self._save_args(state, data_iterator), force=True)

  def save_best(self, step: int, state: Any, data_iterator: grain.DatasetIterator,
                score: float, variant: str) -> bool:
    """Saves if `score` (the mAP of `variant`, "model" or "ema") beats the best
    checkpoint's; returns whether it did."""
    if score <= self.best_score():
      return False
    self.best.save(step, args=self._save_args(state, data_iterator),
                   metrics={"map": float(score), "variant": variant}, force=True)
    return True

  def best_variant(self) -> str | None:
    """"model" or "ema": which of the best checkpoint's two scored its mAP."""
    step = self.best.best_step()
    return None if step is None else self.best.metrics(step).get("variant")

  def best_score(self) -> float:
    step = self.best.best_step()
    if step is None:
      return float("-inf")
    return float(self.best.metrics(step)["map"])

  def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator | None = None,
              *, best: bool = False, step: int | None = None) -> tuple[Any, int] | None:
    """(state, step) of the latest (or best, or `step`) checkpoint, or None if none.

    `abstract_state` gives shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves);
    the data iterator, when given, is set to its saved position.
    """
    self.wait()
    manager = self.best if best else self.latest
    if step is not None:
      manager = self.best if step in self.best.all_steps() else self.latest
      if step not in manager.all_steps():
        raise ValueError(f"--step={step}: no such checkpoint (latest: "
                         f"{sorted(self.latest.all_steps())}, best: "
                         f"{sorted(self.best.all_steps())}).")
    elif best:
      step = manager.best_step()
    else:
      step = manager.latest_step()
    if step is None:
      return None
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], step

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host got a preemption notice."""
    return self.latest.reached_preemption(step)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  @staticmethod
  def _save_args(state: Any, data_iterator: grain.DatasetIterator) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iterator))
