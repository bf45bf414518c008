"""Exceptions that end a run with one sentence and a chosen exit code, and the wrapper
that gives every program (`kmcl_jax.main`, `kmcl_jax.convert`) that behaviour.

Exit codes: 0 the run finished; `Preempted.exit_code` (75, EX_TEMPFAIL: "try again") it
stopped on a preemption notice or SIGTERM after saving a checkpoint, so rerunning the
same command resumes it; 130 interrupted (Ctrl-C); 1 any error.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from absl import logging

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class RunStopped(Exception):
  """A run that cannot go on, for the reason its message gives in one sentence."""

  exit_code = 1


class Preempted(RunStopped):
  """Stopped on a preemption notice or SIGTERM after saving the current step."""

  exit_code = 75


def raised_on_purpose(error: BaseException) -> bool:
  """Whether `error` is one of kmcl_jax's one-sentence errors: a RunStopped, or a
  ValueError or OSError raised by kmcl_jax's own code about its input (a missing file, a
  bad config value, an undecodable image...), not by a library."""
  if isinstance(error, RunStopped):
    return True
  frames = traceback.extract_tb(error.__traceback__)
  return (
    isinstance(error, (ValueError, OSError))
    and bool(frames)
    and os.path.abspath(frames[-1].filename).startswith(_PACKAGE + os.sep)
  )


def run_program(work: Callable[[], None]) -> None:
  """Runs a program's work: an error raised on purpose ends it with its one sentence and
  exit code (the traceback with --verbosity=1); any other error (a bug) with its
  traceback; Ctrl-C with 130 and a word on how to resume."""
  try:
    work()
  except KeyboardInterrupt:
    logging.warning("Interrupted; rerunning the same command resumes from the latest checkpoint.")
    sys.exit(130)
  except Exception as error:  # sorted into one sentence or a traceback
    if logging.get_verbosity() >= 1 or not raised_on_purpose(error):
      raise
    (logging.warning if isinstance(error, Preempted) else logging.error)("%s", error)
    sys.exit(error.exit_code if isinstance(error, RunStopped) else 1)


def quiet_orbax(record) -> bool:
  """Keeps orbax's per-save INFO chatter (dozens of lines a checkpoint) out of the log,
  and the tracebacks with which its background threads and their asyncio tasks repeat
  one failure (a full disk) a few hundred lines at a time: the run reports it in one
  sentence. --verbosity=1 keeps everything. A filter for absl's log handler, which the
  programs that read or write checkpoints install."""
  if logging.get_verbosity() >= 1:
    return True
  if f"{os.sep}orbax{os.sep}" in record.pathname:
    if record.levelno >= logging.converter.STANDARD_ERROR:
      record.exc_info, record.exc_text = None, None
    return record.levelno >= logging.converter.STANDARD_WARNING
  if record.name == "asyncio" and record.exc_info:
    frames = traceback.extract_tb(record.exc_info[2])
    return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)
  return True
