"""Worker processes that end with the process that started them, however it ends.

grain's worker processes (`mp_prefetch`) stop when their iterator is closed. When the
trainer is killed (SIGKILL, the OOM killer, a crash in native code) nothing closes it,
and a worker blocked on its full output queue would wait forever (observed: minutes,
hundreds of MB each). `exit_with_parent` runs in each worker (grain's worker_init_fn)
and starts a daemon thread that ends the worker once its parent is gone.

Why a watchdog on the parent's pid and not Linux's prctl(PR_SET_PDEATHSIG): the death
signal fires when the THREAD that created the child exits, and grain 0.2.18 starts its
workers lazily from a prefetch thread (the ThreadPrefetch iterator's, which is replaced
when the iterator's state is restored), so workers would die under a healthy trainer.
A dead parent is detected by the worker being re-parented (os.getppid() changes), which
works on every POSIX system and whatever killed the parent.
"""

from __future__ import annotations

import os
import threading
import time

# How often a worker checks on its parent, in seconds: the longest a worker outlives it.
POLL_SECONDS = 0.5


def exit_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 1) -> None:
  """Starts a daemon thread that ends this process (exit status 1, without cleanup: the
  parent that would consume its results is gone) as soon as its parent process is no
  longer `parent_pid`. Signature of grain's worker_init_fn after binding `parent_pid`."""
  del worker_index, worker_count
  threading.Thread(
    target=_watch_parent, args=(parent_pid,), daemon=True, name="exit-with-parent"
  ).start()


def _watch_parent(parent_pid: int) -> None:
  while os.getppid() == parent_pid:
    time.sleep(POLL_SECONDS)
  os._exit(1)
