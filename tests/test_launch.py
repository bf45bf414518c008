"""The launch scripts: help, early errors, the gcloud calls of tpu_pod.sh (against a
stand-in gcloud that records them). multiprocess_local.sh trains the demo with 2
processes in tests/test_train.py, against the 1-device run."""

import json
import os
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("tpu_pod.sh", "gpu.sh", "multiprocess_local.sh")
BASH = shutil.which("bash")


def run_script(name, *args, env=None):
  return subprocess.run([BASH, os.path.join(ROOT, "launch", name), *args], cwd=ROOT,
                        capture_output=True, text=True, env=env)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_usage(name):
  result = run_script(name, "--help")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f"Usage: launch/{name}")
  assert "Example" in result.stdout or "Preemption" in result.stdout


@pytest.mark.parametrize("name, args, message", [
    ("tpu_pod.sh", ["--name=kmcl", "--zone=us-central2-b"], "--accelerator is required"),
    ("tpu_pod.sh", ["--name=n", "--zone=z", "--accelerator=v4-8", "--version=v", "--config=c",
                    "--workdir=/local/run"], "--workdir must be a gs:// folder"),
    ("tpu_pod.sh", ["--name=n", "--frobnicate"], "unknown argument '--frobnicate'"),
    ("gpu.sh", ["--workdir=/tmp/run"], "--config=CONFIG is required"),
    ("gpu.sh", ["--config=configs/voc.py"], "--workdir=WORKDIR is required"),
    ("multiprocess_local.sh", ["two"], "N must be a positive number of processes, got 'two'"),
    ("multiprocess_local.sh", ["2", "--devices_per_process=0"],
     "--devices_per_process must be a positive number"),
])
def test_bad_arguments_fail_at_once_with_one_clear_line(name, args, message):
  result = run_script(name, *args)
  assert result.returncode == 2
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _path_without(tmp_path, tool):
  """A PATH holding every command of this one but `tool` (links in a fresh folder)."""
  folder = tmp_path / "bin"
  folder.mkdir()
  for directory in os.environ["PATH"].split(os.pathsep):
    if os.path.isdir(directory):
      for entry in os.listdir(directory):
        if entry != tool and not (folder / entry).exists():
          (folder / entry).symlink_to(os.path.join(directory, entry))
  return str(folder)


@pytest.mark.parametrize("name, args, tool, message", [
    ("tpu_pod.sh", ["--name=n", "--zone=z", "--accelerator=v4-8", "--version=v",
                    "--config=configs/voc.py", "--workdir=gs://b/r"], "gcloud",
     "needs the gcloud CLI"),
    ("gpu.sh", ["--config=configs/voc.py", "--workdir=/tmp/run"], "nvidia-smi",
     "nvidia-smi not found"),
])
def test_missing_tools_are_named(tmp_path, name, args, tool, message):
  env = dict(os.environ, PATH=_path_without(tmp_path, tool))
  result = run_script(name, *args, env=env)
  assert result.returncode == 2 and message in result.stderr


FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its arguments (one JSON list per call); answers `describe` with $FAKE_TPU_STATE.
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$FAKE_GCLOUD_LOG"
case "$*" in
  "config get-value project") echo my-project ;;
  *" describe "*) [[ -n $FAKE_TPU_STATE ]] && echo "$FAKE_TPU_STATE" || exit 1 ;;
esac
"""


def _fake_gcloud(tmp_path, state):
  folder = tmp_path / "fake"
  folder.mkdir()
  gcloud = folder / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  log = tmp_path / "gcloud.jsonl"
  env = dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ['PATH']}",
             FAKE_GCLOUD_LOG=str(log), FAKE_TPU_STATE=state)
  return env, log


@pytest.mark.parametrize("state, expected_verbs", [
    ("", ["describe", "create", "scp", "ssh", "ssh", "ssh"]),
    ("READY", ["describe", "scp", "ssh", "ssh", "ssh"]),
    ("PREEMPTED", ["describe", "delete", "create", "scp", "ssh", "ssh", "ssh"]),
])
def test_tpu_pod_creates_or_reuses_the_slice_then_installs_and_runs_on_every_worker(
    tmp_path, state, expected_verbs):
  env, log = _fake_gcloud(tmp_path, state)
  result = run_script("tpu_pod.sh", "--name=kmcl-pod", "--zone=us-central2-b",
                      "--accelerator=v4-32", "--version=tpu-ubuntu2204-base",
                      "--config=configs/voc.py:tresnet_l", "--workdir=gs://bucket/runs/voc",
                      "--data=gs://bucket/data/voc", "--spot", "--",
                      "--config.batch_size=1024", "--config.data.worker_count=8", env=env)
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert calls[0] == ["config", "get-value", "project"]
  tpu_calls = calls[1:]
  assert all(c[:3] == ["compute", "tpus", "tpu-vm"] for c in tpu_calls)
  assert [c[3] for c in tpu_calls] == expected_verbs
  for call in tpu_calls:
    assert "--zone=us-central2-b" in call and "--project=my-project" in call
  if "create" in expected_verbs:
    create = tpu_calls[expected_verbs.index("create")]
    assert {"--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"} <= set(create)
  scp, install, copy_data, train = tpu_calls[-4:]
  assert scp[-1] == "--worker=all" and scp[5] == "kmcl-pod:kmcl_jax.tar.gz"
  for call in (install, copy_data, train):
    assert call[4] == "kmcl-pod" and "--worker=all" in call
  command = lambda call: call[call.index("--command") + 1]
  assert "pip install -q -e '.[tpu,gcs]'" in command(install)
  assert "gcloud storage rsync --recursive gs://bucket/data/voc /tmp/kmcl_data" in command(copy_data)
  assert command(train) == (
      "cd ~/kmcl_jax && python3 -m kmcl_jax.main --config=configs/voc.py:tresnet_l "
      "--workdir=gs://bucket/runs/voc --config.data.root=/tmp/kmcl_data "
      "--config.batch_size=1024 --config.data.worker_count=8")
