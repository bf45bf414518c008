"""The signal helpers of tests/runs.py, which the Ctrl-C and SIGTERM tests rely on: a
child run can be interrupted even when this process ignores SIGINT (as a background
shell's children do), and a run that does not end is killed with its log, not waited on."""

import signal
import subprocess
import sys

import pytest
from runs import interruptible, signal_when

READY_THEN_SLEEP = "import time; print('ready', flush=True); time.sleep(120)"


def test_ctrl_c_reaches_a_run_started_from_a_process_that_ignores_sigint():
  ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    process = interruptible(
      [sys.executable, "-c", READY_THEN_SLEEP], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
  finally:
    signal.signal(signal.SIGINT, ignored)
  output = signal_when(
    process, process.stdout, lambda line: "ready" in line, signal.SIGINT, timeout=60
  )
  assert process.returncode == -signal.SIGINT, output  # an uncaught KeyboardInterrupt
  assert "KeyboardInterrupt" in output


def test_a_run_that_outlives_its_signal_is_killed_and_fails_the_test():
  ignores_sigterm = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + READY_THEN_SLEEP
  )
  process = interruptible(
    [sys.executable, "-c", ignores_sigterm], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  with pytest.raises(AssertionError, match="killed 3 s after it started, signalled and still"):
    signal_when(process, process.stdout, lambda line: "ready" in line, signal.SIGTERM, timeout=3)
  assert process.returncode == -signal.SIGKILL
