"""Exceptions that end a run with one sentence and a chosen exit code (see main.py).

Exit codes: 0 the run finished; `Preempted.exit_code` (75, EX_TEMPFAIL: "try again") it
stopped on a preemption notice or SIGTERM after saving a checkpoint, so rerunning the
same command resumes it; 1 any error.
"""


class RunStopped(Exception):
  """A run that cannot go on, for the reason its message gives in one sentence."""

  exit_code = 1


class Preempted(RunStopped):
  """Stopped on a preemption notice or SIGTERM after saving the current step."""

  exit_code = 75
