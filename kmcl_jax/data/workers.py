"""Worker processes that leave stopping to the trainer and end with it, however it ends.

`init_worker` runs in each of grain's worker processes (`mp_prefetch`'s worker_init_fn):

- It ignores SIGTERM. A VM shutdown or preemption, `tpu_pod.sh stop` and process
  managers send SIGTERM to every process of the group; workers that died of it would
  leave the trainer without batches for the steps up to the hosts' preemption sync
  point, or for the evaluation under way (grain raises, the step is not saved). The
  trainer handles SIGTERM: it finishes its step, saves it, closes its iterators (which
  stops the workers) and exits 75. A worker is spawned (fork and exec, then seconds of
  imports) before this runs; `sigterm_blocked` covers that window: the thread that
  spawns the workers starts with SIGTERM blocked, a mask the workers inherit, so a
  SIGTERM sent while they start stays pending until it is ignored here.
- It ends the worker once its parent is gone. grain's workers stop when their iterator
  is closed; when the trainer is killed (SIGKILL, the OOM killer, a crash in native code)
  nothing closes it, and a worker blocked on its full output queue would wait forever
  (observed: minutes, hundreds of MB each). A daemon thread watches the parent.

Why a watchdog on the parent's pid and not Linux's prctl(PR_SET_PDEATHSIG): the death
signal fires when the THREAD that created the child exits, and grain 0.2.18 starts its
workers lazily from a prefetch thread (the ThreadPrefetch iterator's, which is replaced
when the iterator's state is restored), so workers would die under a healthy trainer.
A dead parent is detected by the worker being re-parented (os.getppid() changes), which
works on every POSIX system and whatever killed the parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

# How often a worker checks on its parent, in seconds: the longest a worker outlives it.
POLL_SECONDS = 0.5


def init_worker(parent_pid: int, worker_index: int = 0, worker_count: int = 1) -> None:
  """Ignores SIGTERM in this process and starts a daemon thread that ends it (exit status
  1, without cleanup: the parent that would consume its results is gone) as soon as its
  parent process is no longer `parent_pid`. Signature of grain's worker_init_fn after
  binding `parent_pid`."""
  del worker_index, worker_count
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
  threading.Thread(
    target=_watch_parent, args=(parent_pid,), daemon=True, name="exit-with-parent"
  ).start()


@contextlib.contextmanager
def sigterm_blocked() -> Iterator[None]:
  """Blocks SIGTERM in the calling thread for the block. Threads started in it keep the
  mask, and processes they spawn inherit it (it survives fork and exec): start the thread
  that spawns grain's workers here. The process still gets SIGTERM: the kernel hands it
  to a thread that does not block it (Python runs handlers in the main thread)."""
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _watch_parent(parent_pid: int) -> None:
  while os.getppid() == parent_pid:
    time.sleep(POLL_SECONDS)
  os._exit(1)
