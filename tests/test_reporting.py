"""metrics.jsonl and summary files: strict JSON, append-only writes, resume truncation,
a cut-off last line, a full disk."""

import errno
import json
import logging
import math

import numpy as np
import pytest

from kmcl_jax import reporting
from kmcl_jax.errors import RunStopped
from kmcl_jax.reporting import MetricsLog, Reporter, read_metrics


def test_non_finite_numbers_are_written_as_null_not_as_bare_nan():
  text = reporting.to_json(
    {
      "loss": math.nan,
      "inf": np.float32(np.inf),
      "ok": np.float64(1.5),
      "ap": np.array([0.5, np.nan]),
      "nested": {"x": -math.inf},
    }
  )
  assert json.loads(text) == {
    "loss": None,
    "inf": None,
    "ok": 1.5,
    "ap": [0.5, None],
    "nested": {"x": None},
  }
  assert "NaN" not in text and "Infinity" not in text


def test_a_resumed_log_drops_the_records_after_the_restored_step(tmp_path):
  log = MetricsLog(str(tmp_path), step=0)
  for step in (1, 2, 3, 4):
    log.append({"step": step, "split": "train", "loss": float(step)})
  log.append({"step": 4, "split": "eval", "variant": "model", "map": 50.0})
  log.close()
  resumed = MetricsLog(str(tmp_path), step=2)  # the checkpoint it resumes from
  resumed.append({"step": 3, "split": "train", "loss": 30.0})
  resumed.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
    (1, 1.0),
    (2, 2.0),
    (3, 30.0),
  ]


def test_a_cut_off_last_line_is_dropped_on_reading_and_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "split": "tr')
  assert read_metrics(str(tmp_path)) == [{"step": 1, "split": "train"}]
  log = MetricsLog(str(tmp_path), step=5)
  log.append({"step": 2, "split": "train"})
  log.close()
  assert path.read_text() == '{"step": 1, "split": "train"}\n{"step": 2, "split": "train"}\n'


def test_a_bad_line_before_the_end_names_the_file_and_line(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
    read_metrics(str(tmp_path))


class FullDisk:
  """A file whose writes fail like a full disk after `room` characters."""

  def __init__(self, real, room):
    self.real, self.room = real, room

  def write(self, text):
    if len(text) > self.room:
      self.real.write(text[: self.room])
      self.real.flush()
      self.room = 0
      raise OSError(errno.ENOSPC, "No space left on device")
    self.room -= len(text)
    return self.real.write(text)

  def flush(self):
    self.real.flush()

  def close(self):
    self.real.close()


def test_a_full_disk_stops_the_run_in_one_sentence_and_the_next_run_reads_the_log(tmp_path):
  log = MetricsLog(str(tmp_path), step=0)
  log.append({"step": 1, "split": "train", "loss": 1.0})
  log._file = FullDisk(log._file, room=10)
  with pytest.raises(RunStopped) as error:
    log.append({"step": 2, "split": "train", "loss": 2.0})
  message = str(error.value)
  assert message.startswith(f"Writing {tmp_path}/metrics.jsonl failed ([Errno 28] No space")
  assert "rerun the same command to resume" in message
  log.close()
  assert (tmp_path / "metrics.jsonl").read_text().endswith('\n{"step": 2')  # cut off
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1]
  resumed = MetricsLog(str(tmp_path), step=1)
  resumed.append({"step": 2, "split": "train", "loss": 2.0})
  resumed.close()
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_an_evaluation_already_logged_is_not_logged_again(tmp_path):
  results = {
    "model": {"map": 50.0, "OF1": 0.5, "CF1": 0.4, "OF1_3": 0.3, "CF1_3": 0.2},
    "ema": {"map": 51.0, "OF1": 0.5, "CF1": 0.4, "OF1_3": 0.3, "CF1_3": 0.2},
  }
  for _ in range(2):  # a finished run scored again after a restart
    reporter = Reporter(
      str(tmp_path), total_steps=4, steps_per_epoch=2, batch_size=8, is_primary=True, start_step=4
    )
    reporter.evaluation(4, results)
    reporter.close()
  evaluations = [r for r in read_metrics(str(tmp_path)) if r["split"] == "eval"]
  assert [(r["step"], r["variant"]) for r in evaluations] == [(4, "model"), (4, "ema")]


@pytest.mark.slow
def test_on_an_object_store_a_record_is_one_write_of_its_own_merged_at_close_and_on_resume(gcs):
  workdir = gcs.workdir("metrics")
  log = MetricsLog(workdir, step=0)
  log.append({"step": 1, "split": "train", "loss": 1.0})
  log.close()
  merged = gcs.bucket.get_blob(gcs.blob(workdir, "metrics.jsonl").name).generation
  log = MetricsLog(workdir, step=1)
  for step in (2, 3, 4):
    log.append({"step": step, "split": "train", "loss": float(step)})
  # Each record is an object of its own; metrics.jsonl is not rewritten.
  assert gcs.names(workdir) == ["metrics.jsonl"] + [
    f"metrics.parts/00000000{index}.jsonl" for index in (1, 2, 3)
  ]
  assert json.loads(gcs.blob(workdir, "metrics.parts/000000002.jsonl").download_as_text()) == {
    "step": 3,
    "split": "train",
    "loss": 3.0,
  }
  assert gcs.bucket.get_blob(gcs.blob(workdir, "metrics.jsonl").name).generation == merged
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]
  # A run killed here never closes its log: the next one, resuming from step 2, drops
  # the later records and merges the rest.
  resumed = MetricsLog(workdir, step=2)
  assert gcs.names(workdir) == ["metrics.jsonl"]
  resumed.append({"step": 3, "split": "train", "loss": 30.0})
  resumed.close()
  assert gcs.names(workdir) == ["metrics.jsonl"]
  assert [(r["step"], r["loss"]) for r in read_metrics(workdir)] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_progress_yields_every_item_and_logs_counts_rate_and_the_full_bar_at_the_end(caplog):
  caplog.set_level(logging.INFO)
  items = list(reporting.progress(iter(range(25)), total=25, what="checking", lines=5))
  assert items == list(range(25))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checking")]
  assert [line.split()[3] for line in lines] == ["5/25", "10/25", "15/25", "20/25", "25/25"]
  assert lines[0].startswith("checking [####................]  20% 5/25 images")
  assert lines[-1].startswith("checking [####################] 100% 25/25 images")
  assert lines[-1].endswith("ETA 0:00:00")
  assert reporting.bar(1, 3) == "[#######.............]  33%"
