"""The launch scripts: help, early errors, the gcloud calls of tpu_pod.sh's commands
(against a stand-in gcloud that records them and plays the queued resource's states),
the start script every worker runs (at boot too, with --auto_resume) and the script it
starts.
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


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records its arguments (one JSON list per call) and plays the cloud:
# - tpu-vm describe answers $FAKE_TPU_STATE (empty: no such slice);
# - queued-resources describe answers the first line of the file $FAKE_QUEUED_STATES and
#   drops it while more follow (empty file: no such queued resource); create number n
#   fills it with the n-th '|'-separated plan of $FAKE_CREATED_STATES (default ACTIVE),
#   delete empties it;
# - tpu-vm ssh prints $FAKE_SSH_OUTPUT;
# - storage cp of a local file or stdin keeps it under $FAKE_BUCKET (the startup script
#   of a create too); storage ls .../summary.json finds it once $FAKE_FINISHED_AFTER
#   queued resources were created; storage cat .../worker-*.exit prints $FAKE_EXIT_CODES.
call=""
for arg in "$@"; do  # a JSON string of each (quotes, backslashes, tabs, newlines escaped)
  arg=${arg//\\/\\\\}; arg=${arg//\"/\\\"}; arg=${arg//$'\t'/\\t}; arg=${arg//$'\n'/\\n}
  call+="${call:+, }\"$arg\""
done
echo "[$call]" >> "$FAKE_GCLOUD_LOG"
[[ $1 == alpha ]] && shift
creates=$(grep -c '"queued-resources", "create"' "$FAKE_GCLOUD_LOG")
case "$*" in
  "config get-value project") echo my-project ;;
  *"tpu-vm describe "*) [[ -n $FAKE_TPU_STATE ]] && echo "$FAKE_TPU_STATE" || exit 1 ;;
  *"queued-resources describe "*)
    [[ -s $FAKE_QUEUED_STATES ]] || exit 1
    head -n 1 "$FAKE_QUEUED_STATES"
    if [[ $(wc -l < "$FAKE_QUEUED_STATES") -gt 1 ]]; then sed -i 1d "$FAKE_QUEUED_STATES"; fi ;;
  *"queued-resources create "*)
    IFS='|' read -ra plans <<< "${FAKE_CREATED_STATES:-ACTIVE}"
    tr ' ' '\n' <<< "${plans[creates - 1]:-ACTIVE}" > "$FAKE_QUEUED_STATES"
    for arg in "$@"; do
      [[ $arg == --metadata-from-file=startup-script=* ]] &&
        cp "${arg#*startup-script=}" "$FAKE_BUCKET/startup-script-$creates"
    done ;;
  *"queued-resources delete "*) : > "$FAKE_QUEUED_STATES" ;;
  *"tpu-vm ssh "*) [[ -n $FAKE_SSH_OUTPUT ]] && echo "$FAKE_SSH_OUTPUT" ;;
  "storage cp --quiet "*" gs://"*)
    target=$FAKE_BUCKET/${5#gs://}
    mkdir -p "$(dirname "$target")"
    if [[ $4 == - ]]; then cat > "$target"; else cp "$4" "$target"; fi ;;
  "storage ls "*summary.json) [[ $creates -ge ${FAKE_FINISHED_AFTER:-99} ]] || exit 1 ;;
  "storage cat "*".exit") [[ -n $FAKE_EXIT_CODES ]] && echo "$FAKE_EXIT_CODES" || exit 1 ;;
esac
exit 0
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
LAUNCH = "bucket/runs/voc/launch"  # where run puts the checkout and the start script


def fake_gcloud(tmp_path, tpu_state="", queued_state="", **variables):
  """A PATH whose gcloud records its calls and plays the states given (see FAKE_GCLOUD;
  `variables` sets its other FAKE_ variables); returns (environment, calls())."""
  folder = tmp_path / "fake"
  folder.mkdir()
  gcloud = folder / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  (tmp_path / "bucket").mkdir()
  (tmp_path / "queued").write_text(f"{queued_state}\n" if queued_state else "")
  log = tmp_path / "gcloud.jsonl"
  log.write_text("")
  env = dict(
    os.environ,
    PATH=f"{folder}{os.pathsep}{os.environ['PATH']}",
    FAKE_GCLOUD_LOG=str(log),
    FAKE_TPU_STATE=tpu_state,
    FAKE_QUEUED_STATES=str(tmp_path / "queued"),
    FAKE_BUCKET=str(tmp_path / "bucket"),
    TPU_POD_POLL_SECONDS="0",
    **{f"FAKE_{k.upper()}": v for k, v in variables.items()},
  )

  def calls():
    """([(group, verb)] of the TPU calls, the TPU calls, the storage calls)."""
    recorded = [json.loads(line) for line in log.read_text().splitlines()]
    assert recorded[0] == ["config", "get-value", "project"]
    tracks = [call[1:] if call[0] == "alpha" else call for call in recorded[1:]]
    tpu_calls = [call for call in tracks if call[:2] == ["compute", "tpus"]]
    for call in tpu_calls:
      assert "--zone=us-central2-b" in call and "--project=my-project" in call
    storage = [call for call in tracks if call[0] == "storage"]
    return [tuple(c[2:4]) for c in tpu_calls], tpu_calls, storage

  return env, calls


def command_of(call):
  return call[call.index("--command") + 1]


def start_script(tmp_path):
  return (tmp_path / "bucket" / LAUNCH / "start.sh").read_text()


@pytest.mark.parametrize(
  "tpu_state, queued_state, expected",
  [
    ("", "", [("tpu-vm", "describe"), ("queued-resources", "describe"), ("tpu-vm", "create")]),
    (
      "READY",
      "",
      [("tpu-vm", "describe"), ("queued-resources", "describe"), ("tpu-vm", "ssh")],
    ),
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
def test_run_gets_the_slice_installs_pinned_versions_and_starts_training_detached(
  tmp_path, tpu_state, queued_state, expected
):
  env, calls = fake_gcloud(tmp_path, tpu_state, queued_state)
  result = run_script("tpu_pod.sh", *RUN, *MAIN_FLAGS, env=env)
  assert result.returncode == 0, result.stderr
  verbs, recorded, storage = calls()
  assert verbs == [*expected, ("tpu-vm", "ssh")]
  if ("tpu-vm", "create") in expected:
    create = recorded[expected.index(("tpu-vm", "create"))]
    assert {"--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"} <= set(create)
  # This checkout and the start script go to the workdir, for every worker.
  assert [c[:2] + c[-1:] for c in storage if c[1] == "cp"] == [
    ["storage", "cp", f"gs://{LAUNCH}/kmcl_jax.tar.gz"],
    ["storage", "cp", f"gs://{LAUNCH}/start.sh"],
  ]
  packed = subprocess.run(
    ["tar", "-tzf", tmp_path / "bucket" / LAUNCH / "kmcl_jax.tar.gz"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.split()
  assert {"launch/requirements-tpu.txt", "kmcl_jax/train.py", "setup.cfg"} <= set(packed)
  start = recorded[-1]
  assert start[4] == "kmcl-pod" and "--worker=all" in start
  assert command_of(start) == (
    f"gcloud storage cp --quiet gs://{LAUNCH}/start.sh /tmp/kmcl_start.sh && "
    "sudo bash /tmp/kmcl_start.sh"
  )
  script = start_script(tmp_path)
  # Installed at the versions the lock pins, in a virtual environment with a supported
  # Python (uv brings one); the data copied to each worker; started detached (its own
  # session, no terminal), unless a run is alive; logging on the worker and to the workdir.
  assert "uv venv --python 3.12 $kmcl/venv" in script
  assert (
    "uv pip install --python $kmcl/venv/bin/python -q -c launch/requirements-tpu.txt "
    "-e '.[tpu,gcs]'" in script
  )
  assert f"gcloud storage cp --quiet gs://{LAUNCH}/kmcl_jax.tar.gz" in script
  assert "gcloud storage rsync --recursive gs://bucket/data/voc /tmp/kmcl_data" in script
  assert "flock 9\nif [ -f ${KMCL_HOME:-/opt/kmcl}/run/pid ] && kill -0" in script
  assert "nohup setsid bash $kmcl/run/run.sh >/dev/null 2>&1 < /dev/null &" in script
  assert (
    "python -m kmcl_jax.main --config=configs/voc.py:tresnet_l "
    "--workdir=gs://bucket/runs/voc --config.data.root=/tmp/kmcl_data "
    '--config.batch_size=1024 --config.data.worker_count=8 >> "$log" 2>&1' in script
  )
  assert "logs=gs://bucket/runs/voc/logs\n" in script and "source $kmcl/venv/bin/activate" in script
  assert "logs --name=kmcl-pod --zone=us-central2-b --follow" in result.stdout


def test_run_refuses_a_slice_on_which_a_run_is_alive_and_says_how_to_stop_it(tmp_path):
  env, calls = fake_gcloud(tmp_path, "READY", ssh_output="alive on t1v-n-0-w-0")
  result = run_script("tpu_pod.sh", *RUN, env=env)
  assert result.returncode == 2
  assert result.stderr.strip() == (
    "tpu_pod.sh: a run is alive on kmcl-pod (t1v-n-0-w-0); stop it first with: "
    "launch/tpu_pod.sh stop --name=kmcl-pod --zone=us-central2-b (every worker saves its "
    "step and exits 75), then run again."
  )
  verbs, recorded, storage = calls()
  assert verbs[-1] == ("tpu-vm", "ssh") and verbs.count(("tpu-vm", "ssh")) == 1
  assert "kill -0" in command_of(recorded[-1]) and not storage  # nothing uploaded


def test_the_lock_file_pins_what_a_pod_installs():
  with open(os.path.join(ROOT, "launch", "requirements-tpu.txt")) as f:
    pins = dict(line.strip().split("==") for line in f if "==" in line)
  for package in ("jax", "jaxlib", "libtpu", "flax", "optax", "orbax-checkpoint", "grain"):
    assert package in pins, package
  assert pins["jax"] == pins["jaxlib"]
  from packaging.version import Version

  with open(os.path.join(ROOT, ".ci", "oldest.txt")) as f:
    oldest = dict(line.split("#")[0].strip().split("==") for line in f if "==" in line)
  # The JAX CI runs the whole suite on (its oldest end), and nothing below a lower bound.
  assert pins["jax"] == oldest["jax"]
  for package, version in oldest.items():
    if package in pins:
      assert Version(pins[package]) >= Version(version), package


def test_the_worker_script_runs_and_records_its_exit_code(tmp_path):
  """The script the start script starts on each worker, executed here with stand-ins for
  python, curl and gcloud: it logs, records the exit code and copies both to the workdir."""
  env, calls = fake_gcloud(tmp_path)
  result = run_script("tpu_pod.sh", *RUN, *MAIN_FLAGS, env=env)
  assert result.returncode == 0, result.stderr
  script = start_script(tmp_path).split("<<'KMCL_RUN'\n")[1].split("\nKMCL_RUN")[0]
  home = tmp_path / "kmcl"
  (home / "run").mkdir(parents=True)
  (home / "src").mkdir()
  (home / "venv" / "bin").mkdir(parents=True)
  (home / "venv" / "bin" / "activate").write_text("")
  bin_folder = tmp_path / "fake"
  for tool, body in (("python", 'echo "training $*"; exit 75'), ("curl", "echo 3")):
    (bin_folder / tool).write_text(f"#!/usr/bin/env bash\n{body}\n")
    (bin_folder / tool).chmod(0o755)
  (home / "run.sh").write_text(script)
  worker = subprocess.run(
    [BASH, str(home / "run.sh")],
    env={**env, "KMCL_HOME": str(home)},
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert worker.returncode == 75
  assert (home / "run" / "exit_code").read_text().strip() == "75"
  assert (
    (home / "run" / "train.log")
    .read_text()
    .startswith("training -m kmcl_jax.main --config=configs/voc.py:tresnet_l")
  )
  logs = tmp_path / "bucket" / "bucket" / "runs" / "voc" / "logs"
  assert (logs / "worker-3.log").read_text().startswith("training -m kmcl_jax.main")
  assert (logs / "worker-3.exit").read_text().strip() == "75"


def test_spot_capacity_is_a_queued_resource_waited_for_until_active(tmp_path):
  env, calls = fake_gcloud(tmp_path, created_states="WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
  result = run_script("tpu_pod.sh", *RUN, "--spot", env=env)
  assert result.returncode == 0, result.stderr
  verbs, recorded, _ = calls()
  create = recorded[verbs.index(("queued-resources", "create"))]
  assert create[4] == "kmcl-pod" and {
    "--node-id=kmcl-pod",
    "--accelerator-type=v4-32",
    "--runtime-version=tpu-ubuntu2204-base",
    "--spot",
  } <= set(create)
  assert not any(a.startswith("--metadata") for a in create)
  assert ("tpu-vm", "create") not in verbs
  assert "waiting for kmcl-pod (PROVISIONING)" in result.stdout
  assert verbs.index(("queued-resources", "create")) < verbs.index(("tpu-vm", "ssh"))


@pytest.mark.parametrize(
  "exit_codes, status, message",
  [
    ("", 0, "tpu_pod.sh: the run finished (gs://bucket/runs/voc/summary.json)"),
    ("75\n1", 1, "a worker's training ended with an error (exit 1)"),
  ],
)
def test_auto_resume_requests_a_preempted_slice_again_until_the_run_finished(
  tmp_path, exit_codes, status, message
):
  """--auto_resume: the queued resource carries the start script as its startup script
  (every boot resumes training), and the command requests the slice again when it is
  SUSPENDED, until the workdir holds the run's summary, or stops on a worker's error."""
  env, calls = fake_gcloud(
    tmp_path,
    created_states="ACTIVE ACTIVE SUSPENDING SUSPENDED|ACTIVE",
    finished_after="2",
    exit_codes=exit_codes,
  )
  result = run_script("tpu_pod.sh", *RUN, "--spot", "--auto_resume", env=env)
  assert result.returncode == status, result.stderr
  assert message in (result.stdout + result.stderr)
  verbs, recorded, _ = calls()
  creates = [c for c in recorded if c[2:4] == ["queued-resources", "create"]]
  if status:  # the error is seen before the slice is preempted
    assert len(creates) == 1
    return
  assert len(creates) == 2 and verbs.count(("queued-resources", "delete")) == 1
  assert verbs.index(("queued-resources", "delete")) < len(verbs) - 1 - verbs[::-1].index(
    ("queued-resources", "create")
  )
  assert "kmcl-pod is SUSPENDED; requesting it again" in result.stdout
  for number, create in enumerate(creates, 1):
    assert "--spot" in create and any(
      a.startswith("--metadata-from-file=startup-script=") for a in create
    )
    # What runs at boot is the start script the workers run over SSH.
    assert (tmp_path / "bucket" / f"startup-script-{number}").read_text() == start_script(tmp_path)


def test_network_flags_and_a_reservation_are_passed_through(tmp_path):
  flags = [
    "--internal_ips",
    "--network=vpc",
    "--subnetwork=tpu-subnet",
    "--service_account=trainer@p.iam.gserviceaccount.com",
  ]
  env, calls = fake_gcloud(tmp_path)
  result = run_script("tpu_pod.sh", *RUN, *flags, "--reservation=my-res", env=env)
  assert result.returncode == 0, result.stderr
  verbs, recorded, _ = calls()
  network = {
    "--internal-ips",
    "--network=vpc",
    "--subnetwork=tpu-subnet",
    "--service-account=trainer@p.iam.gserviceaccount.com",
  }
  log = [json.loads(line) for line in (tmp_path / "gcloud.jsonl").read_text().splitlines()]
  create = next(
    c for c in log if c[:5] == ["alpha", "compute", "tpus", "queued-resources", "create"]
  )
  assert network | {"--reserved", "--reservation=my-res"} <= set(create)
  assert "--spot" not in create
  assert all("--internal-ip" in c for c in recorded if c[2:4] == ["tpu-vm", "ssh"])
  (tmp_path / "gcloud.jsonl").unlink()
  (tmp_path / "fake").rename(tmp_path / "fake_queued")
  (tmp_path / "bucket").rename(tmp_path / "bucket_queued")
  env, calls = fake_gcloud(tmp_path)
  env["PATH"] = env["PATH"].replace("fake_queued", "fake")
  result = run_script("tpu_pod.sh", *RUN, *flags, env=env)
  assert result.returncode == 0, result.stderr
  verbs, recorded, _ = calls()
  create = recorded[verbs.index(("tpu-vm", "create"))]
  assert network <= set(create)
  result = run_script("tpu_pod.sh", *RUN, "--spot", "--reservation=r", env=env)
  assert result.returncode == 2 and "--spot and --reservation exclude each other" in result.stderr


@pytest.mark.parametrize(
  "command, extra, check",
  [
    (
      "logs",
      ["--worker=2", "--follow"],
      lambda c: (
        c[-1] == "sudo tail -n 200 -f ${KMCL_HOME:-/opt/kmcl}/run/train.log" and "--worker=2" in c
      ),
    ),
    (
      "stop",
      [],
      lambda c: (
        "sudo pkill -TERM -s $(cat ${KMCL_HOME:-/opt/kmcl}/run/pid) -f kmcl_jax.main" in c[-1]
        and "--worker=all" in c
      ),
    ),
    ("status", [], lambda c: "/run/exit_code" in c[-1] and "--worker=all" in c),
  ],
)
def test_follow_check_and_stop_the_run_on_the_workers(tmp_path, command, extra, check):
  env, calls = fake_gcloud(tmp_path, "READY")
  result = run_script(
    "tpu_pod.sh", command, "--name=kmcl-pod", "--zone=us-central2-b", *extra, env=env
  )
  assert result.returncode == 0, result.stderr
  verbs, recorded, _ = calls()
  assert verbs[-1] == ("tpu-vm", "ssh") and recorded[-1][4] == "kmcl-pod"
  assert check(recorded[-1])


@pytest.mark.parametrize(
  "slice_state, queued_state, meaning",
  [
    ("READY", "ACTIVE", "provisioned: the slice is up"),
    ("", "WAITING_FOR_RESOURCES", "waiting for capacity: the workers start training when"),
    ("READY", "SUSPENDING", "being preempted: the workers are saving their step"),
    ("", "SUSPENDED", "preempted, no VMs left: run the same 'run' command (or keep"),
    ("", "DELETING", "being deleted"),
    ("", "FAILED", "the request failed (gcloud compute tpus queued-resources describe"),
  ],
)
def test_status_says_what_each_queued_resource_state_means(
  tmp_path, slice_state, queued_state, meaning
):
  env, calls = fake_gcloud(tmp_path, slice_state, queued_state)
  result = run_script("tpu_pod.sh", "status", "--name=kmcl-pod", "--zone=us-central2-b", env=env)
  assert result.returncode == 0, result.stderr
  first = result.stdout.splitlines()[0]
  assert first.startswith(
    f"tpu_pod.sh: kmcl-pod: slice {slice_state or 'absent'}, queued resource {queued_state}: "
  )
  assert meaning in first
  verbs, _, _ = calls()
  assert (("tpu-vm", "ssh") in verbs) == (slice_state == "READY")


@pytest.mark.parametrize(
  "queued_state, deleted",
  [("ACTIVE", ["queued-resources", "delete", "kmcl-pod"]), ("", ["tpu-vm", "delete", "kmcl-pod"])],
)
def test_delete_removes_the_queued_resource_or_the_slice(tmp_path, queued_state, deleted):
  env, calls = fake_gcloud(tmp_path, "READY", queued_state)
  result = run_script("tpu_pod.sh", "delete", "--name=kmcl-pod", "--zone=us-central2-b", env=env)
  assert result.returncode == 0, result.stderr
  _, recorded, _ = calls()
  assert recorded[-1][2:5] == deleted and "--quiet" in recorded[-1]


def test_help_documents_every_command():
  usage = run_script("tpu_pod.sh", "--help").stdout
  for command in ("run", "logs", "status", "stop", "delete"):
    assert f"\n  {command} " in usage
