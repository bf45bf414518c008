"""--mode=eval and --mode=predict on the reference run's checkpoints."""

import csv
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from runs import ROOT, main_command

# Every test here trains, or scores the reference run, in processes of its own.
pytestmark = [pytest.mark.slow, pytest.mark.core]


def test_eval_mode_reproduces_the_trained_map(tmp_path, reference_run):
  workdir = tmp_path / "run"  # eval writes into its workdir; the reference run stays as trained
  shutil.copytree(reference_run, workdir, ignore=shutil.ignore_patterns(".lock"))
  result = subprocess.run(
    main_command(workdir, "--mode=eval"), cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr[-3000:]
  trained = json.loads((reference_run / "summary.json").read_text())
  scored = json.loads((workdir / "eval.json").read_text())
  for key in ("map", "map_model", "map_ema", "OF1", "CF1"):
    assert scored[key] == trained[key], key
  assert scored["images"] == 1000 and len(scored["ap"]) == 10
  assert "class  AP %" in result.stderr


def test_predict_mode_labels_every_readable_image_and_names_the_corrupt_one(
  tmp_path, reference_run
):
  from PIL import Image

  from kmcl_jax.data.demo import DigitGridSource

  source = DigitGridSource("test")
  Image.fromarray(source[0]["image"]).save(tmp_path / "a.jpg")
  Image.fromarray(source[1]["image"]).save(tmp_path / "b.png")
  Image.fromarray(source[2]["image"]).convert("L").save(tmp_path / "c_grey.png")
  Image.fromarray(source[3]["image"]).convert("CMYK").save(tmp_path / "d_cmyk.jpg")
  (tmp_path / "e_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  (tmp_path / "notes.txt").write_text("not an image")
  output = tmp_path / "out" / "predictions.csv"
  result = subprocess.run(
    main_command(reference_run, "--mode=predict", f"--inputs={tmp_path}", f"--output={output}"),
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "e_broken.jpg" in result.stderr and "1 unreadable" in result.stderr
  with open(output) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["path", *"0123456789", "labels"]
  assert [os.path.basename(r[0]) for r in rows[1:]] == [
    "a.jpg",
    "b.png",
    "c_grey.png",
    "d_cmyk.jpg",
  ]
  for row in rows[1:]:
    probabilities = np.array(row[1:11], float)
    assert ((0 < probabilities) & (probabilities < 1)).all()
    predicted = [str(k) for k in range(10) if probabilities[k] >= 0.8]
    assert row[11] == "|".join(predicted)
  # JSON output holds the same numbers.
  result = subprocess.run(
    main_command(
      reference_run, "--mode=predict", f"--inputs={tmp_path}/a.jpg", f"--output={tmp_path}/one.json"
    ),
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (one,) = json.loads((tmp_path / "one.json").read_text())
  assert one["probabilities"]["7"] == pytest.approx(float(rows[1][8]), abs=1e-6)
