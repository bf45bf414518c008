"""The launch scripts: help, early errors, the gcloud calls of tpu_pod.sh's commands
(against a stand-in gcloud that records them) and the script it runs on each worker.
multiprocess_local.sh trains the demo with 2 processes in tests/test_train.py, against
the 1-device run."""

import json
import os
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("tpu_pod.sh", "gpu.sh", "multiprocess_local.sh")
BASH = shutil.which("bash")
# tpu_pod.sh run's required flags but --workdir, for the cases that vary it.
POD_RUN = ["run", "--name=n", "--zone=z", "--accelerator=v4-8", "--version=v", "--config=c"]


def run_script(name, *args, env=None):
  return subprocess.run(
    [BASH, os.path.join(ROOT, "launch", name), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=env,
  )


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_usage(name):
  result = run_script(name, "--help")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f"Usage: launch/{name}")
  assert "Example" in result.stdout or "Preemption" in result.stdout


@pytest.mark.parametrize(
  "name, args, message",
  [
    ("tpu_pod.sh", ["--name=kmcl"], "unknown command '--name=kmcl': expected run, logs"),
    (
      "tpu_pod.sh",
      ["run", "--name=kmcl", "--zone=us-central2-b"],
      "--accelerator is required for 'run'",
    ),
    ("tpu_pod.sh", ["logs", "--name=kmcl"], "--zone is required for 'logs'"),
    (
      "tpu_pod.sh",
      [*POD_RUN, "--workdir=/local/run"],
      "--workdir must be a gs:// folder",
    ),
    (
      "tpu_pod.sh",
      [*POD_RUN, "--workdir=gs://b/r", "--python=3.10"],
      "--python must be 3.11 or newer",
    ),
    ("tpu_pod.sh", ["stop", "--name=n", "--frobnicate"], "unknown argument '--frobnicate'"),
    ("gpu.sh", ["--workdir=/tmp/run"], "--config=CONFIG is required"),
    ("gpu.sh", ["--config=configs/voc.py"], "--workdir=WORKDIR is required"),
    ("multiprocess_local.sh", ["two"], "N must be a positive number of processes, got 'two'"),
    (
      "multiprocess_local.sh",
      ["2", "--devices_per_process=0"],
      "--devices_per_process must be a positive number",
    ),
  ],
)
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


@pytest.mark.parametrize(
  "name, args, tool, message",
  [
    (
      "tpu_pod.sh",
      [
        "run",
        "--name=n",
        "--zone=z",
        "--accelerator=v4-8",
        "--version=v",
        "--config=configs/voc.py",
        "--workdir=gs://b/r",
      ],
      "gcloud",
      "needs the gcloud CLI",
    ),
    (
      "gpu.sh",
      ["--config=configs/voc.py", "--workdir=/tmp/run"],
      "nvidia-smi",
      "nvidia-smi not found",
    ),
  ],
)
def test_missing_tools_are_named(tmp_path, name, args, tool, message):
  env = dict(os.environ, PATH=_path_without(tmp_path, tool))
  result = run_script(name, *args, env=env)
  assert result.returncode == 2 and message in result.stderr


FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its arguments (one JSON list per call); answers `tpu-vm describe` with
# $FAKE_TPU_STATE and `queued-resources describe` with $FAKE_QUEUED_STATE.
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$FAKE_GCLOUD_LOG"
case "$*" in
  "config get-value project") echo my-project ;;
  *"tpu-vm describe "*) [[ -n $FAKE_TPU_STATE ]] && echo "$FAKE_TPU_STATE" || exit 1 ;;
  *"queued-resources describe "*)
    [[ -n $FAKE_QUEUED_STATE ]] && echo "$FAKE_QUEUED_STATE" || exit 1 ;;
  *"queued-resources create "*) echo ACTIVE > "$FAKE_QUEUED_STATE_FILE" ;;
esac
"""

RUN = [
  "run",
  "--name=kmcl-pod",
  "--zone=us-central2-b",
  "--accelerator=v4-32",
  "--version=tpu-ubuntu2204-base",
  "--config=configs/voc.py:tresnet_l",
  "--workdir=gs://bucket/runs/voc",
  "--data=gs://bucket/data/voc",
]
MAIN_FLAGS = ["--", "--config.batch_size=1024", "--config.data.worker_count=8"]


def fake_gcloud(tmp_path, tpu_state="", queued_state=""):
  """A PATH whose gcloud records its calls; returns (environment, calls())."""
  folder = tmp_path / "fake"
  folder.mkdir()
  gcloud = folder / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  log = tmp_path / "gcloud.jsonl"
  env = dict(
    os.environ,
    PATH=f"{folder}{os.pathsep}{os.environ['PATH']}",
    FAKE_GCLOUD_LOG=str(log),
    FAKE_TPU_STATE=tpu_state,
    FAKE_QUEUED_STATE=queued_state,
    FAKE_QUEUED_STATE_FILE=str(tmp_path / "queued"),
    TPU_POD_POLL_SECONDS="0",
  )

  def calls():
    recorded = [json.loads(line) for line in log.read_text().splitlines()]
    assert recorded[0] == ["config", "get-value", "project"]
    tpu_calls = [call for call in recorded[1:] if call[:2] == ["compute", "tpus"]]
    for call in tpu_calls:
      assert "--zone=us-central2-b" in call and "--project=my-project" in call
    return [tuple(c[2:4]) for c in tpu_calls], tpu_calls

  return env, calls


def command_of(call):
  return call[call.index("--command") + 1]


@pytest.mark.parametrize(
  "tpu_state, queued_state, expected",
  [
    ("", "", [("tpu-vm", "describe"), ("queued-resources", "describe"), ("tpu-vm", "create")]),
    ("READY", "", [("tpu-vm", "describe"), ("queued-resources", "describe")]),
    (
      "PREEMPTED",
      "",
      [
        ("tpu-vm", "describe"),
        ("queued-resources", "describe"),
        ("queued-resources", "describe"),
        ("tpu-vm", "describe"),
        ("tpu-vm", "delete"),
        ("tpu-vm", "create"),
      ],
    ),
  ],
)
def test_run_gets_the_slice_installs_a_venv_and_starts_training_detached(
  tmp_path, tpu_state, queued_state, expected
):
  env, calls = fake_gcloud(tmp_path, tpu_state, queued_state)
  result = run_script("tpu_pod.sh", *RUN, *MAIN_FLAGS, env=env)
  assert result.returncode == 0, result.stderr
  verbs, recorded = calls()
  assert verbs[: len(expected)] == expected
  assert verbs[len(expected) :] == [
    ("tpu-vm", "scp"),
    ("tpu-vm", "ssh"),
    ("tpu-vm", "ssh"),
    ("tpu-vm", "ssh"),
  ]
  if ("tpu-vm", "create") in expected:
    create = recorded[expected.index(("tpu-vm", "create"))]
    assert {"--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"} <= set(create)
  scp, install, copy_data, start = recorded[-4:]
  assert scp[-1] == "--worker=all" and scp[5] == "kmcl-pod:kmcl_jax.tar.gz"
  for call in (install, copy_data, start):
    assert call[4] == "kmcl-pod" and "--worker=all" in call
  # A virtual environment with a supported Python (uv brings one), the package in it.
  assert "uv venv --python 3.12 ~/kmcl_venv" in command_of(install)
  assert "uv pip install --python ~/kmcl_venv/bin/python -q -e '.[tpu,gcs]'" in command_of(install)
  assert "gcloud storage rsync --recursive gs://bucket/data/voc /tmp/kmcl_data" in command_of(
    copy_data
  )
  # Started detached (its own session, no terminal), logging on the worker and copying
  # the log to the workdir.
  start_command = command_of(start)
  assert "nohup setsid bash ~/kmcl_run/run.sh >/dev/null 2>&1 < /dev/null &" in start_command
  assert (
    "python -m kmcl_jax.main --config=configs/voc.py:tresnet_l "
    "--workdir=gs://bucket/runs/voc --config.data.root=/tmp/kmcl_data "
    '--config.batch_size=1024 --config.data.worker_count=8 >> "$log" 2>&1' in start_command
  )
  assert "gs://bucket/runs/voc/logs/worker-$number.log" in start_command
  assert "source ~/kmcl_venv/bin/activate" in start_command
  assert "logs --name=kmcl-pod --zone=us-central2-b --follow" in result.stdout


def test_the_worker_script_runs_and_records_its_exit_code(tmp_path):
  """The script `run` starts on each worker, executed here with stand-ins for python,
  curl and gcloud: it logs, records the exit code and copies the log to the workdir."""
  env, calls = fake_gcloud(tmp_path)
  result = run_script("tpu_pod.sh", *RUN, *MAIN_FLAGS, env=env)
  assert result.returncode == 0, result.stderr
  _, recorded = calls()
  start = command_of(recorded[-1])
  script = start.split("<<'KMCL_RUN'\n")[1].split("\nKMCL_RUN")[0]
  home = tmp_path / "home"
  (home / "kmcl_run").mkdir(parents=True)
  (home / "kmcl_jax").mkdir()
  (home / "kmcl_venv" / "bin").mkdir(parents=True)
  (home / "kmcl_venv" / "bin" / "activate").write_text("")
  bin_folder = tmp_path / "fake"
  for tool, body in (("python", 'echo "training $*"; exit 75'), ("curl", "echo 3")):
    (bin_folder / tool).write_text(f"#!/usr/bin/env bash\n{body}\n")
    (bin_folder / tool).chmod(0o755)
  (home / "run.sh").write_text(script)
  worker = subprocess.run(
    [BASH, str(home / "run.sh")],
    env={**env, "HOME": str(home)},
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert worker.returncode == 75
  assert (home / "kmcl_run" / "exit_code").read_text().strip() == "75"
  assert (
    (home / "kmcl_run" / "train.log")
    .read_text()
    .startswith("training -m kmcl_jax.main --config=configs/voc.py:tresnet_l")
  )
  copies = [
    c
    for c in (json.loads(line) for line in (tmp_path / "gcloud.jsonl").read_text().splitlines())
    if c[:2] == ["storage", "cp"]
  ]
  assert copies and copies[-1][-1] == "gs://bucket/runs/voc/logs/worker-3.log"


def test_spot_capacity_is_a_queued_resource_waited_for_until_active(tmp_path):
  env, calls = fake_gcloud(tmp_path)
  # The stand-in answers "ACTIVE" once the queued resource was created.
  env["FAKE_QUEUED_STATE"] = ""
  script = FAKE_GCLOUD.replace(
    '[[ -n $FAKE_QUEUED_STATE ]] && echo "$FAKE_QUEUED_STATE" || exit 1',
    'cat "$FAKE_QUEUED_STATE_FILE" 2>/dev/null || exit 1',
  )
  (tmp_path / "fake" / "gcloud").write_text(script)
  result = run_script("tpu_pod.sh", *RUN, "--spot", env=env)
  assert result.returncode == 0, result.stderr
  verbs, recorded = calls()
  create = recorded[verbs.index(("queued-resources", "create"))]
  assert create[4] == "kmcl-pod" and {
    "--node-id=kmcl-pod",
    "--accelerator-type=v4-32",
    "--runtime-version=tpu-ubuntu2204-base",
    "--spot",
  } <= set(create)
  assert ("tpu-vm", "create") not in verbs
  assert verbs.index(("queued-resources", "create")) < verbs.index(("tpu-vm", "scp"))


@pytest.mark.parametrize(
  "command, extra, check",
  [
    (
      "logs",
      ["--worker=2", "--follow"],
      lambda c: c[-1] == "tail -n 200 -f ~/kmcl_run/train.log" and "--worker=2" in c,
    ),
    (
      "stop",
      [],
      lambda c: (
        "pkill -TERM -s $(cat ~/kmcl_run/pid) -f kmcl_jax.main" in c[-1] and "--worker=all" in c
      ),
    ),
    ("status", [], lambda c: "~/kmcl_run/exit_code" in c[-1] and "--worker=all" in c),
  ],
)
def test_follow_check_and_stop_the_run_on_the_workers(tmp_path, command, extra, check):
  env, calls = fake_gcloud(tmp_path, "READY")
  result = run_script(
    "tpu_pod.sh", command, "--name=kmcl-pod", "--zone=us-central2-b", *extra, env=env
  )
  assert result.returncode == 0, result.stderr
  verbs, recorded = calls()
  assert verbs[-1] == ("tpu-vm", "ssh") and recorded[-1][4] == "kmcl-pod"
  assert check(recorded[-1])


@pytest.mark.parametrize(
  "queued_state, deleted",
  [("ACTIVE", ["queued-resources", "delete", "kmcl-pod"]), ("", ["tpu-vm", "delete", "kmcl-pod"])],
)
def test_delete_removes_the_queued_resource_or_the_slice(tmp_path, queued_state, deleted):
  env, calls = fake_gcloud(tmp_path, "READY", queued_state)
  result = run_script("tpu_pod.sh", "delete", "--name=kmcl-pod", "--zone=us-central2-b", env=env)
  assert result.returncode == 0, result.stderr
  _, recorded = calls()
  assert recorded[-1][2:5] == deleted and "--quiet" in recorded[-1]


def test_help_documents_every_command():
  usage = run_script("tpu_pod.sh", "--help").stdout
  for command in ("run", "logs", "status", "stop", "delete"):
    assert f"\n  {command} " in usage
