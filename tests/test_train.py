"""The trainer end to end on the demo data with a tiny TResNet: smoke, resume, sharding,
several processes, non-finite steps, config checks."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from runs import (
  ROOT,
  assert_trees_close,
  checkpoint_state,
  finish,
  interruptible,
  launch_local_processes,
  machine_share,
  main_command,
  records,
  reports_step,
  run_config,
  signal_when,
  stopped_step,
  synthetic_batch,
)

from kmcl_jax import config as config_lib
from kmcl_jax import optim, train
from kmcl_jax.mesh import create_mesh, replicated
from kmcl_jax.state import create_model, initial_state, load_initial_weights
from kmcl_jax.steps import jit_steps

# Every test here trains, in processes of its own.
pytestmark = pytest.mark.slow


@pytest.mark.core
def test_smoke_training_and_evaluation_then_a_resume_that_scores_the_same(tmp_path, reference_run):
  config = run_config()
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6 and int(state.skipped_steps) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  for key in ("map", "map_model", "map_ema", "steps", "final_loss", "wall_seconds"):
    assert key in summary
  assert summary["steps"] == 6 and summary["images"] == 1000
  assert 0 < summary["map_model"] < 100 and summary["map"] == max(
    summary["map_model"], summary["map_ema"]
  )
  train_records, eval_records = records(tmp_path, "train"), records(tmp_path, "eval")
  assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
  assert summary["final_loss"] == train_records[-1]["loss"]
  for r in train_records:
    assert r["loss"] == pytest.approx(r["asl"] + r["reconstruction"] + r["contrastive"], rel=1e-5)
  lr = optim.one_cycle_lr(6, config.optim.lr)
  np.testing.assert_allclose(
    [r["learning_rate"] for r in train_records], [lr(s) for s in range(6)], rtol=1e-6
  )
  assert {r["variant"] for r in eval_records} == {"model", "ema"}
  for plot in ("loss.png", "map.png", "per_class_ap.png"):
    assert (tmp_path / "plots" / plot).stat().st_size > 10_000, plot
  assert any(
    name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard")
  )
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["class_names"] == list("0123456789")
  # What the compiled step costs, from XLA's cost analysis: a training step is about
  # three forward passes (forward, and the backward pass's two).
  counts, cost = run["parameters"], run["flops_per_image"]
  assert counts["total"] == counts["backbone"] + counts["head"] > 0
  assert 2 * cost["forward"] < cost["train_step"] < 5 * cost["forward"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]  # keep_checkpoints=2
  assert sorted(os.listdir(tmp_path / "best")) == ["6"]
  # The same program in another process computed the same parameters, bit for bit.
  assert_trees_close(checkpoint_state(tmp_path, 6), checkpoint_state(reference_run, 6), atol=0)
  # A run killed after its last checkpoint but before its summary: the rerun scores the
  # restored state, logs nothing twice and writes the same summary.
  os.remove(tmp_path / "summary.json")
  train.train_and_evaluate(config, str(tmp_path))
  again = json.loads((tmp_path / "summary.json").read_text())
  for key in ("map", "map_model", "map_ema", "final_loss", "steps", "ap"):
    assert again[key] == summary[key], key
  assert records(tmp_path, "train") == train_records
  assert records(tmp_path, "eval") == eval_records
  # A finished run: nothing to do, nothing rewritten.
  modified = (tmp_path / "summary.json").stat().st_mtime_ns
  train.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / "summary.json").stat().st_mtime_ns == modified
  assert len(records(tmp_path, "eval")) == 2


def tensorboard_restarts(folder):
  """Steps of the SessionLog START events in the event files under `folder`: where a
  writer opened with purge_step tells TensorBoard to drop later events of earlier runs."""
  import struct

  from tensorboardX.proto import event_pb2

  starts = []
  for name in sorted(os.listdir(folder)):
    data = (folder / name).read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        starts.append(event.step)
  return starts


def test_resume_after_sigkill_ends_with_the_parameters_of_an_uninterrupted_run(
  tmp_path, reference_run
):
  process = subprocess.Popen(
    main_command(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 600
  while not os.path.isdir(tmp_path / "checkpoints" / "2") and process.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = max(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert killed_at < 6, "the run finished before it could be killed"
  # A save that was cut off never becomes the one restored.
  os.makedirs(tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1234" / "state")
  finish(
    subprocess.Popen(
      main_command(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
  )
  resumed, reference = checkpoint_state(tmp_path, 6), checkpoint_state(reference_run, 6)
  assert_trees_close(resumed, reference, atol=0)
  # Every step is logged once: what the killed run logged after its checkpoint is dropped
  # from metrics.jsonl and purged from TensorBoard.
  assert [r["step"] for r in records(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]
  assert [(r["step"], r["variant"]) for r in records(tmp_path, "eval")] == [
    (6, "model"),
    (6, "ema"),
  ]
  assert tensorboard_restarts(tmp_path / "tensorboard")[-1] == killed_at + 1
  run = json.loads((tmp_path / "run.json").read_text())
  assert [r["step"] for r in run["resumes"]] == [killed_at]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """The reference run's config with 2 processes of 2 simulated devices each, as
  launch/multiprocess_local.sh runs them (the script CI exercises): one mesh of 4 devices
  over 2 hosts, the loss over the global batch, each host feeding its rows."""
  workdir = tmp_path_factory.mktemp("two_processes")
  with machine_share(tmp_path_factory, alone=True):
    output = finish(launch_local_processes(workdir, processes=2, devices_per_process=2))
  return workdir, output


@pytest.mark.core
def test_four_devices_over_two_processes_match_one_device(two_process_run, reference_run):
  workdir, output = two_process_run
  for process in (0, 1):
    assert f"process {process} saw 4 global devices" in output
  reference = checkpoint_state(reference_run, 6)
  state = checkpoint_state(workdir, 6)
  for part in ("params", "batch_stats", "ema_params"):
    assert_trees_close(state[part], reference[part], atol=1e-5)
  got, want = records(workdir, "train"), records(reference_run, "train")
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-5)
  summary = json.loads((workdir / "summary.json").read_text())
  reference_summary = json.loads((reference_run / "summary.json").read_text())
  for key in ("map_model", "map_ema"):
    assert summary[key] == pytest.approx(reference_summary[key], abs=0.05), key


def process_of(workdir, process_id):
  """The pid of the kmcl_jax.main process `process_id` training in `workdir`."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      command = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
      continue
    if (
      f"--workdir={workdir}".encode() in command
      and f"--process_id={process_id}".encode() in command
    ):
      return int(pid)
  return None


@pytest.mark.alone
def test_sigterm_to_one_of_two_processes_saves_both_and_the_rerun_ends_the_same(
  tmp_path, two_process_run
):
  """A preemption notice reaches one host of a pod: JAX's preemption sync point makes
  every host stop after the same step and save it; the launcher exits 75. The notice goes
  to process 1 once step 2's checkpoint is written, read at the next line the run logs,
  with steps and the final evaluation still ahead."""
  launcher = launch_local_processes(tmp_path, processes=2, devices_per_process=2)
  output = signal_when(
    launcher,
    launcher.stdout,
    lambda line: (tmp_path / "checkpoints" / "2").is_dir(),
    signal.SIGTERM,
    target=lambda: process_of(tmp_path, 1),
  )
  assert launcher.returncode == 75, output[-4000:]
  stops = [line for line in output.splitlines() if "Stopped at step" in line]
  assert len(stops) == 2 and "Traceback" not in output
  stopped = {stopped_step(line) for line in stops}
  assert len(stopped) == 1  # both processes, the same step
  (step,) = stopped
  assert step < 6 and str(step) in os.listdir(tmp_path / "checkpoints")
  finish(launch_local_processes(tmp_path, processes=2, devices_per_process=2))
  assert_trees_close(checkpoint_state(tmp_path, 6), checkpoint_state(two_process_run[0], 6), atol=0)


def test_training_starts_from_converted_weights(tmp_path, reference_run):
  """A converted KMCL model as init_from: one Adam step moves no weight by more than the
  learning rate (and the step runs: model and EMA are separate donated buffers)."""
  from kmcl_jax import convert

  config = run_config()
  saved = checkpoint_state(reference_run, 6)
  description = {
    "arch": config.model.backbone,
    "kind": "kmcl",
    "num_classes": 10,
    "mode": "all",
    "kernel": config.model.kernel,
    "variance": config.model.variance,
  }
  convert.save_converted(
    {"params": saved["params"], "batch_stats": saved["batch_stats"]},
    description,
    str(tmp_path / "converted"),
  )
  model = create_model(config, 10)
  optimizer = optim.create_optimizer(config.optim, config.train_steps)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  state = load_initial_weights(state, str(tmp_path / "converted"), config, 10)
  step, _ = jit_steps(config, model, optimizer, mesh, state)
  state, metrics = step(state, synthetic_batch())
  assert np.isfinite(metrics["loss"]) and int(state.skipped_steps) == 0
  moves = jax.tree.leaves(
    jax.tree.map(
      lambda new, old: np.max(np.abs(np.asarray(new) - old)), state.params, saved["params"]
    )
  )
  assert 0 < max(moves) <= config.optim.lr * (1 + 1e-3)


def test_bad_config_values_fail_before_compiling(tmp_path):
  for field, value, message in (
    ("model.kernel", "gaussian", "config.model.kernel='gaussian': expected one of"),
    ("batch_size", 0, "config.batch_size=0: expected a positive integer"),
    ("data.image_size", 50, "config.data.image_size=50: expected a multiple of 32"),
    ("contrastive_scope", "host", "config.contrastive_scope='host'"),
    ("optim.pct_start", 1.5, "config.optim.pct_start=1.5"),
  ):
    config = run_config()
    node = config
    *parents, leaf = field.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
      config_lib.validate(config)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "kmcl_jax.main",
      "--config=configs/demo.py",
      f"--workdir={tmp_path}",
      "--config.model.backbon=tresnet_m",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip() == (
    "unknown field config.model.backbon; did you mean config.model.backbone?"
  )
  assert not os.listdir(tmp_path)


# The reference run's config made too long to finish before a signal, with a checkpoint
# every step.
LONG_STEPS = 100_000
LONG_RUN = (f"--config.train_steps={LONG_STEPS}", "--config.checkpoint_every_steps=1")


def long_run(workdir, signum, after_step):
  """The long run in `workdir`, sent `signum` once it has reported `after_step`: its log."""
  process = interruptible(
    main_command(workdir, *LONG_RUN), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  log = signal_when(process, process.stderr, reports_step(after_step), signum)
  return process.returncode, log


def saved_steps(workdir):
  return sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())


def test_ctrl_c_exits_130_and_the_rerun_resumes_and_stops_on_sigterm_after_a_reported_step(
  tmp_path,
):
  """Ctrl-C (SIGINT) after a reported step: exit 130 with one line on how to resume.
  Rerunning the same command resumes from the newest checkpoint with the optimiser's
  schedule where it was; SIGTERM after a reported step: exit 75 with the step it stopped
  at saved, and no summary."""
  status, log = long_run(tmp_path, signal.SIGINT, 2)
  assert status == 130, log[-3000:]
  assert "Interrupted; rerunning the same command resumes from the latest checkpoint." in log
  assert "Traceback" not in log and not (tmp_path / "summary.json").exists()
  newest = saved_steps(tmp_path)[-1]
  # Step 1's save began before step 2 ran; an interrupted run still finishes its saves.
  assert newest >= 1

  status, log = long_run(tmp_path, signal.SIGTERM, newest + 2)
  assert status == 75, log[-3000:]  # "preempted: rerun me"
  assert f"Resumed from step {newest} of" in log and "Traceback" not in log
  stopped = stopped_step(log)
  assert stopped >= newest + 2 and saved_steps(tmp_path)[-1] == stopped
  assert not (tmp_path / "summary.json").exists()
  resumed = [r for r in records(tmp_path, "train") if r["step"] > newest]
  assert [r["step"] for r in resumed] == list(range(newest + 1, stopped + 1))
  lr = optim.one_cycle_lr(LONG_STEPS, run_config().optim.lr)
  np.testing.assert_allclose(
    [r["learning_rate"] for r in resumed], [lr(r["step"] - 1) for r in resumed], rtol=1e-6
  )


def test_a_diverged_run_stops_with_one_sentence_after_consecutive_skipped_steps(tmp_path):
  """lr 1e30: the first update is finite but huge, every later forward pass overflows;
  the skip counter stops the run instead of skipping to the end and exiting 0."""
  result = subprocess.run(
    main_command(
      tmp_path,
      "--config.optim.lr=1e30",
      "--config.train_steps=12",
      "--config.max_consecutive_skipped_steps=3",
    ),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert "its last 3 steps had a non-finite loss, gradient or update" in last
  assert "config.max_consecutive_skipped_steps=3" in last and "Traceback" not in result.stderr
  stopped = int(last.split("Stopped at step ")[1].split(":")[0])
  assert 4 <= stopped <= 5  # step 1 updates, steps 2-4 skip (seen at step 4 or one later)
  assert not (tmp_path / "summary.json").exists()
  for saved in os.listdir(tmp_path / "checkpoints"):
    state = checkpoint_state(tmp_path, int(saved))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state))


def test_a_damaged_newest_checkpoint_falls_back_and_the_run_ends_as_if_uninterrupted(
  tmp_path, reference_run
):
  """Bytes flipped in the newest checkpoint's array data: the checksums catch it, the
  run resumes from the one before and retrains the lost steps to the same digits."""
  import shutil

  shutil.copytree(reference_run, tmp_path / "run")
  workdir = tmp_path / "run"
  os.remove(workdir / "summary.json")
  data = workdir / "checkpoints" / "6" / "state" / "ocdbt.process_0" / "d"
  largest = max(data.iterdir(), key=lambda f: f.stat().st_size)
  content = bytearray(largest.read_bytes())
  content[len(content) // 2] ^= 0x08
  largest.write_bytes(bytes(content))
  result = subprocess.run(
    main_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "checkpoints/6 is damaged: checksum mismatch" in result.stderr
  assert "Restored" in result.stderr and "checkpoints/4 instead" in result.stderr
  assert os.listdir(workdir / "damaged") == ["checkpoints-6"]
  assert_trees_close(checkpoint_state(workdir, 6), checkpoint_state(reference_run, 6), atol=0)
  assert [r["step"] for r in records(workdir, "train")] == [1, 2, 3, 4, 5, 6]
  assert (
    json.loads((workdir / "summary.json").read_text())["map"]
    == json.loads((reference_run / "summary.json").read_text())["map"]
  )


def test_resuming_with_another_batch_size_is_refused_before_anything_changes(
  tmp_path, reference_run
):
  import shutil

  shutil.copytree(reference_run, tmp_path / "run")
  workdir = tmp_path / "run"

  def files():  # all but the lock, which every run takes
    return {
      p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"
    }

  before = files()
  result = subprocess.run(
    main_command(workdir, "--config.batch_size=16", "--config.model.backbone=tresnet_m"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert "batch_size (8 -> 16), model.backbone ('tresnet_tiny' -> 'tresnet_m')" in last
  assert "use a new --workdir to start a new run" in last and "Traceback" not in result.stderr
  assert files() == before


def test_a_full_disk_stops_the_run_in_one_sentence_and_loses_no_checkpoint(tmp_path, reference_run):
  """A real full disk: the workdir is a tmpfs (in a user and mount namespace of its own)
  with room for about 1.5 checkpoints. The save of step 4 fails; the run stops with one
  sentence, checkpoint 2 is intact, and with room made the rerun finishes with the
  parameters of the uninterrupted run."""
  import shutil

  unshare = shutil.which("unshare")
  if unshare is None or subprocess.run([unshare, "-rm", "true"]).returncode != 0:
    pytest.skip("needs unshare -rm (user and mount namespaces) to mount a small tmpfs")
  checkpoint_bytes = sum(
    p.stat().st_size for p in (reference_run / "checkpoints" / "6").rglob("*") if p.is_file()
  )
  room_kib = (3 * checkpoint_bytes // 2 + (1 << 20)) // 1024
  workdir, copy = tmp_path / "full", tmp_path / "copy"
  workdir.mkdir()
  command = " ".join(f"'{arg}'" for arg in main_command(workdir))
  script = f"""
    mount -t tmpfs -o size={room_kib}k tmpfs '{workdir}' || exit 99
    {command} > '{tmp_path}/first.log' 2>&1; echo $? > '{tmp_path}/first.code'
    mount -o remount,size={4 * room_kib}k '{workdir}'
    {command} > '{tmp_path}/second.log' 2>&1; echo $? > '{tmp_path}/second.code'
    cp -a '{workdir}' '{copy}'
  """
  result = subprocess.run([unshare, "-rm", "sh", "-c", script], cwd=ROOT, timeout=1200)
  if result.returncode == 99:
    pytest.skip("this sandbox does not allow mounting a tmpfs")
  first_log = (tmp_path / "first.log").read_text()
  assert (tmp_path / "first.code").read_text().strip() == "1", first_log[-3000:]
  last = first_log.strip().splitlines()[-1]
  assert "No space left on device" in last and "rerun the same command to resume" in last
  assert "Traceback" not in first_log and len(first_log.splitlines()) < 80
  second_log = (tmp_path / "second.log").read_text()
  assert (tmp_path / "second.code").read_text().strip() == "0", second_log[-3000:]
  assert "Resumed from step 2" in second_log
  assert_trees_close(checkpoint_state(copy, 6), checkpoint_state(reference_run, 6), atol=0)
  assert [r["step"] for r in records(copy, "train")] == [1, 2, 3, 4, 5, 6]
