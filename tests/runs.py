"""The demo runs the trainer's tests share: the config, the command that runs it, and
ways to read what a run left in its workdir (tests/conftest.py trains the reference run
once per session)."""

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

from kmcl_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 6 steps of 8 images at 32 px, one evaluation at the end, a checkpoint every 2 steps.
# Runs on different device layouts sum in different orders. Adam divides a gradient by
# its magnitude, so on a gradient that is zero but for round-off it takes a step of the
# full learning rate in a direction the round-off picks; its epsilon at 1e-3 (1e-8 in the
# recipe) keeps those steps at round-off scale while real gradients still move weights.
RUN_OVERRIDES = {
  "train_steps": 6,
  "checkpoint_every_steps": 2,
  "log_every_steps": 1,
  "optim.lr": 1e-4,
  "optim.eps": 1e-3,
}


def records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def checkpoint_state(workdir, step):
  """The saved TrainState as NumPy arrays, whatever device topology saved it."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def assert_trees_close(a, b, atol):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path)
    )


def shared_by_workers(tmp_path_factory):
  """The session's temporary folder common to all pytest-xdist workers (each worker's own
  folder lies in it), or the session's folder when the tests run in one process."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def machine_share(tmp_path_factory, alone: bool):
  """Holds this worker's share of the machine: shared by the tests of every worker, or
  the whole of it for a test that runs `alone` (several JAX processes whose gloo
  collectives abort when a peer is starved of CPU by other tests). A turnstile makes a
  waiting `alone` test block new shared holders, so that it is not starved either.
  Without pytest-xdist there is nobody to share with."""
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    yield
    return
  shared = shared_by_workers(tmp_path_factory)
  with (
    open(shared / "turnstile.lock", "a") as turnstile,
    open(shared / "machine.lock", "a") as machine,
  ):
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    fcntl.flock(machine, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    fcntl.flock(turnstile, fcntl.LOCK_UN)
    yield


def launch_local_processes(workdir, processes, devices_per_process):
  """The reference run's config as one JAX job of several processes on this machine, by
  launch/multiprocess_local.sh."""
  return subprocess.Popen(
    [
      "bash",
      os.path.join(ROOT, "launch", "multiprocess_local.sh"),
      str(processes),
      f"--devices_per_process={devices_per_process}",
      *main_flags(workdir),
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def finish(process, timeout=600):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-4000:]
  return output


def run_config():
  """The config of every run here (what `main_command` runs)."""
  config = config_lib.load(os.path.join(ROOT, "configs", "demo.py:smoke"))
  config.update_from_flattened_dict(RUN_OVERRIDES)
  return config


def main_flags(workdir, *flags):
  """kmcl_jax.main's flags for the reference run's config in `workdir`, then `flags`."""
  return (
    ["--config=configs/demo.py:smoke", f"--workdir={workdir}"]
    + [f"--config.{k}={v}" for k, v in RUN_OVERRIDES.items()]
    + list(flags)
  )


def main_command(workdir, *flags):
  return [sys.executable, "-m", "kmcl_jax.main", *main_flags(workdir, *flags)]


def synthetic_batch():
  """One batch of the runs' shape (8 images of 32 px, 10 classes) from a fixed seed."""
  rng = np.random.default_rng(0)
  return {
    "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
    "labels": (rng.random((8, 10)) < 0.3).astype(np.float32),
    "ignore": np.zeros((8, 10), bool),
    "skipped": np.zeros(8, np.int32),
  }


def stopped_with_one_sentence(command):
  """Runs a kmcl_jax.main command line that must stop with exit 1 and no traceback;
  returns its log's last line (the sentence) and the whole log."""
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1], result.stderr


# The trainer's line for a train step: "... step S/T  loss ...".
REPORTED_STEP = re.compile(r" step (\d+)/\d+ ")


def reports_step(step):
  """line -> whether it is the trainer's line for a train step >= `step`."""

  def reached(line):
    reported = REPORTED_STEP.search(line)
    return reported is not None and int(reported.group(1)) >= step

  return reached


def interruptible(command, **popen_kwargs):
  """Popen of `command` in the repository root with SIGINT at its default in the child.
  A shell started in the background (`cmd &`, nohup, some CI runners) ignores SIGINT,
  children inherit that, and Python then installs no KeyboardInterrupt handler: Ctrl-C,
  as a test sends it, would reach nothing and the run would go on."""
  return subprocess.Popen(
    command,
    cwd=ROOT,
    text=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    **popen_kwargs,
  )


def signal_when(process, log, reached, signum, target=None, timeout=900):
  """Reads `log` (a text stream of `process`'s output) line by line until a line
  satisfies `reached` (e.g. `reports_step(2)`), then sends `signum` to the pid `target()`
  returns (default: the process), reads on until the process ends and returns the whole
  log. A run that ends before such a line is not signalled (its log tells why). A
  process still running `timeout` seconds after the call began is killed and the test
  fails with its log, rather than waiting on it for ever."""
  lines, signalled, killed = [], False, threading.Event()

  def kill():
    killed.set()
    process.kill()

  timer = threading.Timer(timeout, kill)
  timer.start()
  try:
    for line in log:
      lines.append(line)
      if reached(line):
        pid = target() if target else process.pid
        assert pid is not None, "".join(lines)[-4000:]
        os.kill(pid, signum)
        signalled = True
        break
    lines.extend(log)
    process.wait()
  finally:
    timer.cancel()
  output = "".join(lines)
  assert not killed.is_set(), (
    f"killed {timeout} s after it started, {'signalled' if signalled else 'never signalled'}"
    f" and still running:\n{output[-4000:]}"
  )
  return output


def stopped_step(log):
  """The step a run stopped by SIGTERM says it stopped (and saved) at."""
  return int(log.split("Stopped at step ")[1].split(" ")[0])
