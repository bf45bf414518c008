"""A gs:// workdir end to end, on the GCS emulator tests/conftest.py starts: train,
SIGTERM, resume to the parameters of the uninterrupted run, eval and predict from it,
a damaged checkpoint's fallback."""

import json
import signal
import subprocess

import pytest
from runs import ROOT, assert_trees_close, checkpoint_state, finish, main_command

from kmcl_jax.reporting import read_metrics

# Every test here trains, or scores a run, in processes of its own.
pytestmark = pytest.mark.slow


def read_json(path):
  from etils import epath

  return json.loads(epath.Path(path).read_text())


@pytest.fixture(scope="module")
def sigtermed_and_resumed(gcs):
  """The reference run's config in a gs:// workdir, stopped by SIGTERM once it has
  reported step 2, then rerun to the end: (workdir, the step it stopped at)."""
  workdir = gcs.workdir("sigterm")
  process = subprocess.Popen(
    main_command(workdir), cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
  )
  lines = []
  for line in process.stderr:
    lines.append(line)
    if " step 2/6 " in line:
      process.send_signal(signal.SIGTERM)
      break
  log = "".join(lines) + process.communicate(timeout=600)[1]
  assert process.returncode == 75, log[-3000:]  # "preempted: rerun me"
  stopped = int(log.split("Stopped at step ")[1].split(" ")[0])
  finish(
    subprocess.Popen(
      main_command(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
  )
  return workdir, stopped


def test_a_run_stopped_by_sigterm_resumes_to_the_parameters_of_an_uninterrupted_run(
  gcs, sigtermed_and_resumed, reference_run
):
  workdir, stopped = sigtermed_and_resumed
  assert 2 <= stopped < 6
  assert_trees_close(checkpoint_state(workdir, 6), checkpoint_state(reference_run, 6), atol=0)
  records = read_metrics(workdir)
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  assert [(r["step"], r["variant"]) for r in records if r["split"] == "eval"] == [
    (6, "model"),
    (6, "ema"),
  ]
  assert [r["step"] for r in read_json(f"{workdir}/run.json")["resumes"]] == [stopped]
  summary = read_json(f"{workdir}/summary.json")
  assert summary["map"] == read_json(reference_run / "summary.json")["map"]
  names = gcs.names(workdir)
  for plot in ("loss.png", "map.png", "per_class_ap.png"):
    assert f"plots/{plot}" in names
  assert any(name.startswith("tensorboard/events.out.tfevents") for name in names)
