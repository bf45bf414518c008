"""A gs:// workdir end to end, on the GCS emulator tests/conftest.py starts: train,
SIGTERM, resume to the parameters of the uninterrupted run, eval and predict from it,
a damaged checkpoint's fallback. The run SIGTERM stops is a process of its own; the
rest runs in this process (what the program's modes call), to spare process start-ups."""

import json
import signal
import subprocess

import pytest
from runs import ROOT, assert_trees_close, checkpoint_state, main_command, run_config

from kmcl_jax import inference, train
from kmcl_jax.reporting import read_metrics

# Every test here trains, or scores a run.
pytestmark = pytest.mark.slow


def read_json(path):
  from etils import epath

  return json.loads(epath.Path(path).read_text())


@pytest.fixture(scope="module")
def sigtermed_and_resumed(gcs):
  """The reference run's config in a gs:// workdir, stopped by SIGTERM once it has
  reported step 2, then run again to the end: (workdir, the step it stopped at)."""
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
  train.train_and_evaluate(run_config(), workdir)
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
  assert not any(name.startswith("metrics.parts/") for name in names)  # merged at the end
  assert ".lock" not in names  # the lease is released


def test_eval_and_predict_read_a_gcs_workdir(sigtermed_and_resumed, reference_run, tmp_path):
  from PIL import Image

  from kmcl_jax.data.demo import DigitGridSource

  workdir, _ = sigtermed_and_resumed
  inference.evaluate_checkpoint(run_config(), workdir)  # --mode=eval
  scored, trained = read_json(f"{workdir}/eval.json"), read_json(reference_run / "summary.json")
  for key in ("map", "map_model", "map_ema", "OF1", "CF1"):
    assert scored[key] == trained[key], key
  source = DigitGridSource("test")
  for index in range(3):
    Image.fromarray(source[index]["image"]).save(tmp_path / f"{index}.png")
  output = tmp_path / "predictions.json"
  rows = inference.predict(run_config(), workdir, str(tmp_path), str(output))  # --mode=predict
  assert json.loads(output.read_text()) == rows
  assert [row["path"].rsplit("/", 1)[1] for row in rows] == ["0.png", "1.png", "2.png"]
  for row in rows:
    probabilities = row["probabilities"]
    assert sorted(probabilities) == list("0123456789")
    assert all(0 < p < 1 for p in probabilities.values())
    assert row["labels"] == [name for name, p in probabilities.items() if p >= 0.8]


def test_a_damaged_newest_checkpoint_in_a_gcs_workdir_falls_back_and_training_continues(
  gcs, sigtermed_and_resumed, reference_run, caplog
):
  """Bytes flipped in the newest checkpoint's array data: the run resumes from the one
  before and retrains the lost steps to the same digits."""
  finished, _ = sigtermed_and_resumed
  workdir = gcs.workdir("damaged")
  for name in gcs.names(finished):
    if name != "summary.json":
      gcs.bucket.copy_blob(gcs.blob(finished, name), gcs.bucket, gcs.blob(workdir, name).name)
  data = max(
    (
      gcs.bucket.get_blob(gcs.blob(workdir, name).name)
      for name in gcs.names(workdir)
      if name.startswith("checkpoints/6/state/") and "/d/" in name
    ),
    key=lambda blob: blob.size,
  )
  content = bytearray(data.download_as_bytes())
  content[len(content) // 2] ^= 0x08
  data.upload_from_string(bytes(content))
  train.train_and_evaluate(run_config(), workdir)
  assert "checkpoints/6 is damaged: checksum mismatch" in caplog.text
  assert "checkpoints/4 instead" in caplog.text
  # No rename on an object store: the damaged checkpoint is recorded, then deleted.
  (record,) = json.loads(gcs.blob(workdir, "damaged.json").download_as_text())
  assert record["checkpoint"].endswith("checkpoints/6") and record["deleted"] is True
  assert_trees_close(checkpoint_state(workdir, 6), checkpoint_state(reference_run, 6), atol=0)
  assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  summary = read_json(f"{workdir}/summary.json")
  assert summary["map"] == read_json(reference_run / "summary.json")["map"]
