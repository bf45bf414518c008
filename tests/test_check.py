"""The accelerator check (`python -m kmcl_jax.benchmarks.check`): every part runs small on
the CPU (--quick, as on an accelerator but tiny), a part past its limit is stopped with
its children, and the generated VOC folder is what the VOC reader expects."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kmcl_jax.benchmarks import inputs
from kmcl_jax.data import voc


def run_check(output, *flags):
  return subprocess.run(
    [sys.executable, "-m", "kmcl_jax.benchmarks.check", f"--output={output}", "--quick", *flags],
    capture_output=True,
    text=True,
  )


def test_the_generated_voc_folder_reads_as_voc2007(tmp_path):
  root = inputs.write_voc_folder(str(tmp_path), trainval=6, test=3)
  trainval = voc.voc2007_source("trainval", root)
  test = voc.voc2007_source("test", root)
  assert (len(trainval), len(test)) == (6, 3)
  assert not set(trainval.ids) & set(test.ids)
  for source in (trainval, test):
    assert source.labels.shape[1] == 20
    # One to three classes per image, each positive or difficult (kept, not scored).
    present = source.labels.sum(axis=1)
    assert np.all((present >= 1) & (present <= 3))
    assert np.all(source.ignore <= source.labels.astype(bool))
  record = trainval[0]
  assert record["image"].shape == (375, 500, 3) and record["image"].dtype == np.uint8


@pytest.mark.slow
def test_quick_check_runs_every_part_and_writes_its_tables(tmp_path):
  result = run_check(tmp_path)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / "check.json") as f:
    check = json.load(f)
  parts = check["parts"]
  assert parts["compare"]["status"] == "skipped (no --baseline_dir)"
  for name in ("step", "program", "demo", "input", "profile"):
    assert parts[name]["status"] == "done", (name, parts[name]["status"])

  rows = {(r["program"], r["layout"]): r for r in parts["step"]["records"]}
  backbone, step, loss = rows["backbone", "-"], rows["train step", "per_leaf"], rows["loss", "-"]
  assert backbone["batch"] == step["batch"] == 8
  # The step runs the backbone's pass and more: its dense FLOPs per image exceed the
  # backbone's, and its time the loss's alone.
  assert step["dense_gflop_per_image"] > backbone["dense_gflop_per_image"] > 0
  assert 0 < loss["ms"] < step["ms"]
  assert check["goals"]["step_vs_backbone"]["value"] == pytest.approx(
    step["images_per_second"] / backbone["images_per_second"]
  )
  assert check["goals"]["peak_percent"]["met"] is None  # the CPU has no listed peak

  (program,) = parts["program"]["records"]
  # Three epochs of 24 images at batch 8: evaluated after steps 3, 6 and 9.
  assert program["ok"] and program["evaluations"] == [3, 6, 9]
  assert program["best_checkpoints"] and program["train_step_compile_seconds"] > 0
  assert 0 <= program["summary"]["map"] <= 100
  (demo,) = parts["demo"]["records"]
  assert demo["ok"] and demo["summary"]["steps"] == 4

  fed = {r["augment_on"]: r for r in parts["input"]["records"]}
  assert set(fed) == {"host", "device"}
  for r in fed.values():
    assert r["fed_ms"] >= r["wait_ms"] >= 0 and r["resident_ms"] > 0
  (profile,) = parts["profile"]["records"]
  assert profile["device_busy_percent"] is None  # no accelerator
  assert profile["threads"] and profile["threads"][0]["busy_ms"] > 0
  assert os.listdir(tmp_path / "work" / "profile" / "trace" / "plugins" / "profile")

  table = (tmp_path / "check.md").read_text()
  assert f"| {check['date'][:10]} | cpu | {check['jax']} |" in table
  assert "| step | done |" in table and "| compare | skipped (no --baseline_dir) |" in table


@pytest.mark.slow
def test_a_part_past_its_limit_is_stopped_with_its_children_and_the_rest_skipped(tmp_path):
  """The program part runs `python -m kmcl_jax.main`, which starts grain workers: at its
  limit the whole process group goes; what the budget leaves no time for is skipped."""
  result = run_check(tmp_path, "--parts=program,demo", "--limits=program=12", "--budget_seconds=14")
  assert result.returncode == 1
  with open(tmp_path / "check.json") as f:
    parts = json.load(f)["parts"]
  assert parts["program"]["status"] == "stopped at its limit of 12 s"
  assert parts["demo"]["status"] == "skipped (budget spent)"
  survivors = subprocess.run(
    ["pgrep", "-f", f"workdir={tmp_path}"], capture_output=True, text=True
  ).stdout.split()
  assert not survivors
