"""Decisions every process of a multi-host run takes together, from what each one found
alone (a single process decides alone)."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def worst_on_any_host(outcome: int) -> tuple[int, int]:
  """(the worst outcome any process found, the first process that found it), where
  outcomes are integers ordered from best to worst; every process calls it with its own."""
  outcomes = np.asarray(multihost_utils.process_allgather(np.int32(outcome))).reshape(-1)
  worst = int(outcomes.max())
  return worst, int(np.argmax(outcomes == worst))


def as_on_process_0(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """Process 0's list of pairs of non-negative integers, on every process: a list each
  process reads from storage at its own moment (which checkpoints there are) is
  decided once."""
  if jax.process_count() == 1:
    return pairs
  longest = int(np.max(multihost_utils.process_allgather(np.int32(len(pairs)))))
  if longest == 0:  # no process found any (a new run)
    return []
  table = np.full((longest, 2), -1, np.int32)
  table[: len(pairs)] = np.asarray(pairs, np.int32).reshape(-1, 2)
  table = np.asarray(multihost_utils.broadcast_one_to_all(table))
  return [(int(kind), int(step)) for kind, step in table if kind >= 0]
