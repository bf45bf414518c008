"""Wall-clock timing shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `repeats` calls of `fn` after one untimed warm-up call.

  `fn` must block until its work is done (jax.block_until_ready, cuda synchronize).
  """
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
