"""A run's identity in its workdir (what may change on resume) and one run per workdir."""

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kmcl_jax import config as config_lib
from kmcl_jax import workdir, workdir_lock
from kmcl_jax.workdir import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config():
  return config_lib.load(os.path.join(ROOT, "configs", "demo.py:smoke"))


def test_a_new_run_records_its_config_and_classes(tmp_path):
  config = demo_config()
  workdir.write_run(str(tmp_path), config, ["a", "b"])
  run = workdir.read_run(str(tmp_path))
  assert run["class_names"] == ["a", "b"] and run["resumes"] == []
  assert run["config"]["batch_size"] == config.batch_size
  assert run["config"]["data"]["mean"] == list(config.data.mean)


def test_resuming_with_what_defines_the_run_changed_is_refused_naming_each_field(tmp_path):
  workdir.write_run(str(tmp_path), demo_config(), ["a"])
  config = demo_config()
  config.batch_size = 32
  config.model.backbone = "tresnet_m"
  config.optim.lr = 1e-3
  with pytest.raises(WorkdirError) as error:
    workdir.check_resume(config, str(tmp_path), ["a"], has_checkpoints=True)
  message = str(error.value)
  assert "batch_size (8 -> 32)" in message
  assert "model.backbone ('tresnet_tiny' -> 'tresnet_m')" in message
  assert "optim.lr (0.003 -> 0.001)" in message
  assert "use a new --workdir to start a new run" in message and "\n" not in message


@pytest.mark.parametrize(
  "field, value",
  [
    ("seed", 1),
    ("num_epochs", 3),
    ("train_steps", 7),
    ("data.image_size", 64),
    ("data.augment", "none"),
    ("loss.temperature", 0.2),
    ("ema_decay", 0.9),
    ("contrastive_scope", "device"),
    ("model.kernel", "isotropic"),
  ],
)
def test_every_field_of_the_method_the_data_and_the_schedule_is_fixed(tmp_path, field, value):
  workdir.write_run(str(tmp_path), demo_config(), ["a"])
  config = demo_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(WorkdirError, match=field.replace(".", r"\.")):
    workdir.check_resume(config, str(tmp_path), ["a"], has_checkpoints=True)


def test_how_the_run_is_executed_and_observed_may_change_and_is_recorded(tmp_path):
  workdir.write_run(str(tmp_path), demo_config(), ["a"])
  config = demo_config()
  changes = {
    "eval_every_epochs": 2,
    "checkpoint_every_steps": 50,
    "log_every_steps": 7,
    "data.worker_count": 3,
    "data.root": "/elsewhere",
    "keep_checkpoints": 4,
    "model.remat": True,
  }
  config.update_from_flattened_dict(changes)
  changed = workdir.check_resume(config, str(tmp_path), ["a"], has_checkpoints=True)
  assert {field: new for field, (_, new) in changed.items()} == changes
  workdir.write_run(str(tmp_path), config, ["a"], resumed_at=12, changes=changed)
  run = workdir.read_run(str(tmp_path))
  assert run["resumes"][0]["step"] == 12
  assert run["resumes"][0]["changed"]["log_every_steps"] == [demo_config().log_every_steps, 7]
  assert run["config"]["log_every_steps"] == 7


def test_a_damaged_run_file_is_named(tmp_path):
  (tmp_path / "run.json").write_text('{"config": ')
  with pytest.raises(WorkdirError, match="run.json is not valid JSON") as error:
    workdir.check_resume(demo_config(), str(tmp_path), ["a"], has_checkpoints=True)
  assert "aside" not in str(error.value)  # the checkpoints are not the problem


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
  with workdir_lock.exclusive(str(tmp_path)):
    with pytest.raises(
      WorkdirError, match=f"{tmp_path} is in use by another run .pid {os.getpid()}"
    ):
      with workdir_lock.exclusive(str(tmp_path)):
        pass
    # Through the program: the second run stops before touching anything.
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "kmcl_jax.main",
        "--config=configs/demo.py:smoke",
        f"--workdir={tmp_path}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode == 1
    assert (
      result.stderr.strip()
      .splitlines()[-1]
      .endswith("wait for it to end or use another --workdir.")
    )
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == [".lock"]
  with workdir_lock.exclusive(str(tmp_path)):  # released with the block
    pass


def test_the_lock_dies_with_its_process_even_on_sigkill(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time\nfrom kmcl_jax import workdir_lock\n"
      f"with workdir_lock.exclusive({str(tmp_path)!r}):\n  print('held', flush=True)\n"
      "  time.sleep(600)",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(WorkdirError, match=f"pid {holder.pid}"):
    with workdir_lock.exclusive(str(tmp_path)):
      pass
  holder.kill()
  holder.wait()
  with workdir_lock.exclusive(str(tmp_path)):
    pass


def test_each_start_and_resume_records_its_versions_and_a_change_is_logged(tmp_path, caplog):
  workdir.write_run(str(tmp_path), demo_config(), ["a"])
  versions = workdir.read_run(str(tmp_path))["versions"]
  assert set(versions) == {*workdir.VERSIONED_PACKAGES, "python"}
  assert versions["jax"] == jax.__version__ and versions["python"] == platform.python_version()
  with caplog.at_level(logging.WARNING):
    workdir.write_run(str(tmp_path), demo_config(), ["a"], resumed_at=4)
  assert "software versions" not in caplog.text
  # The pod's image is upgraded between a preemption and the resume.
  run = workdir.read_run(str(tmp_path))
  run["resumes"][-1]["versions"].update(jax="0.4.1", numpy="1.26.0")
  (tmp_path / workdir.RUN_FILE).write_text(json.dumps(run))
  with caplog.at_level(logging.WARNING):
    workdir.write_run(str(tmp_path), demo_config(), ["a"], resumed_at=8)
  assert f"jax 0.4.1 -> {jax.__version__}, numpy 1.26.0 -> {np.__version__};" in caplog.text
  run = workdir.read_run(str(tmp_path))
  assert [r["step"] for r in run["resumes"]] == [4, 8]
  assert run["resumes"][-1]["versions"] == versions


def lease_of(gcs, gcs_workdir):
  """(the JSON of gs:// `gcs_workdir`'s lease object, its generation), or None."""
  blob = gcs.blob(gcs_workdir, ".lock")
  if not blob.exists():
    return None
  return json.loads(blob.download_as_text()), blob.generation


@pytest.mark.slow
def test_a_second_run_in_a_gcs_workdir_is_refused_naming_the_holder_until_the_first_ends(gcs):
  gcs_workdir = gcs.workdir("lease")
  with workdir_lock.exclusive(gcs_workdir):
    (lease, _) = lease_of(gcs, gcs_workdir)
    assert lease["holder"] == f"pid {os.getpid()} on {socket.gethostname()}"
    assert time.time() < lease["expires"] <= time.time() + workdir_lock.LEASE_SECONDS
    with pytest.raises(WorkdirError) as error:
      with workdir_lock.exclusive(gcs_workdir):
        pass
    message = str(error.value)
    assert f"{gcs_workdir} is in use by another run (pid {os.getpid()} on " in message
    assert "use another --workdir." in message and "\n" not in message
  assert lease_of(gcs, gcs_workdir) is None  # released at the end
  with workdir_lock.exclusive(gcs_workdir):
    pass


@pytest.mark.slow
def test_a_gcs_lease_is_renewed_while_held_and_taken_over_once_expired(gcs, monkeypatch):
  monkeypatch.setattr(workdir_lock, "LEASE_SECONDS", 0.8)
  gcs_workdir = gcs.workdir("lease")
  with workdir_lock.exclusive(gcs_workdir):
    first, generation = lease_of(gcs, gcs_workdir)
    time.sleep(0.5)  # past a renewal (every 0.2 s)
    renewed, renewed_generation = lease_of(gcs, gcs_workdir)
    assert renewed_generation != generation and renewed["expires"] > first["expires"]
  # A run that died holding the lease: it is taken over once expired, not before.
  dead = {"holder": "pid 1 on a-host-that-died", "expires": time.time() + 60}
  blob = gcs.blob(gcs_workdir, ".lock")
  blob.upload_from_string(json.dumps(dead))
  with pytest.raises(WorkdirError, match="pid 1 on a-host-that-died"):
    with workdir_lock.exclusive(gcs_workdir):
      pass
  blob.upload_from_string(json.dumps({**dead, "expires": time.time() - 1}))
  with workdir_lock.exclusive(gcs_workdir):
    lease, _ = lease_of(gcs, gcs_workdir)
    assert lease["holder"] == f"pid {os.getpid()} on {socket.gethostname()}"
  assert lease_of(gcs, gcs_workdir) is None
