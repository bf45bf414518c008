"""`python -m kmcl_jax.data.inspect` and the split checks the trainer runs at start, on
the demo set, a VOC folder with a broken and a missing image, and a tiny TFDS dataset."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from data_fixtures import (
  VOC_TEST,
  VOC_TRAINVAL,
  demo_config,
  make_voc,
  pipeline_config,
  write_image,
)
from data_fixtures import voc_image as voc_image_path
from PIL import Image
from runs import ROOT
from tfds_fixtures import TAGS, TAGS_SPLITS

from kmcl_jax import errors
from kmcl_jax.data import create_datasets, get_source, split_checks
from kmcl_jax.data.inspect import images, inspect_splits, report
from kmcl_jax.data.voc import CLASS_NAMES as VOC_CLASSES


def tags_config(data_dir, **data):
  return pipeline_config(
    0,
    2,
    3,
    **(
      dict(name="tfds:tiny_tags", root=data_dir, train_split="train", eval_split="test")
      | dict(image_size=32)
      | data
    ),
  )


def voc_counts(images):
  """(positives, ignored) per VOC class of VOC_TRAINVAL-style {id: {class: raw}}."""
  positives, ignored = np.zeros(20, int), np.zeros(20, int)
  for raw in images.values():
    for k, value in raw.items():
      positives[k] += 1  # 1 and 0 (difficult) are both positives
      ignored[k] += value == 0
  return positives, ignored


def test_the_demo_sets_statistics_are_its_records_counted(tmp_path):
  result, statistics = inspect_splits(demo_config(), ["test"], decode=False, threads=2)
  source = get_source("demo", "test")
  labels = np.stack([source.annotations(i)["labels"] for i in range(len(source))]) > 0
  test = result["splits"]["test"]
  assert test["images"] == 1000 and test["images_checked"] == "none"
  assert list(test["positives"].values()) == labels.sum(0).tolist()
  per_image = np.bincount(labels.sum(1))
  assert test["labels_per_image"]["histogram"] == {str(n): int(c) for n, c in enumerate(per_image)}
  assert test["labels_per_image"]["mean"] == pytest.approx(labels.sum() / 1000)
  np.testing.assert_array_equal(statistics["test"].cooccurrence, labels.T.astype(int) @ labels)
  assert test["absent_classes"] == [] and result["problems"] == []
  report.write_report(result, statistics, str(tmp_path))
  with Image.open(tmp_path / "cooccurrence_test.png") as heat_map:
    assert heat_map.size[0] > 400
  assert json.loads((tmp_path / "report.json").read_text())["splits"]["test"]["images"] == 1000


def test_the_command_names_the_broken_and_missing_images_of_a_voc_folder(tmp_path):
  root = str(tmp_path / "voc")
  make_voc(root, corrupt="000009")
  os.remove(voc_image_path(root, "000004"))
  output = tmp_path / "report"
  result = subprocess.run(
    [sys.executable, "-m", "kmcl_jax.data.inspect", "--config=configs/voc.py"]
    + [f"--config.data.root={root}", f"--output={output}", "--threads=2"],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  written = json.loads((output / "report.json").read_text())
  trainval, test = written["splits"]["trainval"], written["splits"]["test"]
  assert (trainval["images"], test["images"]) == (4, 3)
  broken = voc_image_path(root, "000009")
  assert [line.split(": ")[0] for line in trainval["unreadable_images"]] == [broken]
  assert trainval["missing_images"] == []
  assert test["missing_images"] == [voc_image_path(root, "000004")]
  positives, ignored = voc_counts(VOC_TRAINVAL)
  assert list(trainval["positives"].values()) == positives.tolist()
  assert list(trainval["ignored"].values()) == ignored.tolist()
  assert trainval["labels_per_image"]["histogram"] == {"0": 1, "1": 1, "2": 1, "3": 1}
  assert trainval["absent_classes"] == [
    c for c, n in zip(VOC_CLASSES, positives, strict=True) if not n
  ]
  assert list(test["positives"].values()) == voc_counts(VOC_TEST)[0].tolist()
  assert sorted(os.listdir(output)) == [
    "cooccurrence_test.png",
    "cooccurrence_trainval.png",
    "report.json",
  ]
  # The table, the images named, the progress bar and the verdict, in one sentence each.
  assert f"test: missing {voc_image_path(root, '000004')}" in result.stdout
  assert f"trainval: unreadable {broken}: cannot read the image header" in result.stdout
  assert "Checking the images of voc2007 test at" in result.stderr and "100%" in result.stderr
  assert "1 missing and 0 unreadable of 3 images." in result.stderr
  assert "Traceback" not in result.stderr


def test_decoding_finds_damage_that_the_header_check_cannot(tmp_path):
  root = str(tmp_path)
  make_voc(root)
  damaged = voc_image_path(root, "000007")
  write_image(damaged, 7, (200, 150), fmt="PNG")  # opened by content, whatever its name
  with open(damaged, "r+b") as f:  # zeros in the compressed data; header and end intact
    f.seek(os.path.getsize(damaged) // 2)
    f.write(bytes(64))
  source = get_source("voc2007", "trainval", root)
  headers = images.image_problems(source, decode=False, threads=2)
  decoded = images.image_problems(source, decode=True, threads=2)
  assert (headers.checked, headers.unreadable) == ("headers", [])
  assert decoded.checked == "decoded"
  assert [line.split(": ")[0] for line in decoded.unreadable] == [damaged]


def test_a_tfds_dataset_is_inspected_and_its_images_decoded(tfds_data_dir):
  result, statistics = inspect_splits(
    tags_config(tfds_data_dir), ["train", "test"], decode=True, threads=2
  )
  assert result["classes"] == list(TAGS) and result["problems"] == []
  for split, tags in TAGS_SPLITS.items():
    record = result["splits"][split]
    expected = np.bincount([c for image in tags for c in image], minlength=len(TAGS))
    assert list(record["positives"].values()) == expected.tolist()
    assert record["images"] == len(tags) and record["images_checked"] == "decoded"
  train = result["splits"]["train"]
  assert train["absent_classes"] == ["fish"] and "('fish')" in train["absent_warning"]
  assert statistics["train"].cooccurrence[0, 1] == 1  # cat and dog share one image
  assert result["splits"]["test"]["absent_warning"] is None


def test_the_trainer_warns_of_a_class_without_positives_and_refuses_an_empty_split(
  tfds_data_dir, caplog
):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads an absl flag (see test_pipeline.py)
  with caplog.at_level(logging.WARNING):
    datasets = create_datasets(tags_config(tfds_data_dir))
  assert (datasets.num_train, datasets.num_eval) == (6, 3)
  stream = datasets.train_from(0)
  batches = [next(stream) for _ in range(3)]  # one epoch: each tfds image once
  stream.close()
  assert batches[0]["image"].shape == (2, 32, 32, 3)
  tags = sorted(tuple(np.flatnonzero(row)) for b in batches for row in b["labels"])
  assert tags == sorted(tuple(t) for t in TAGS_SPLITS["train"])
  warnings = [r.getMessage() for r in caplog.records if "no positive image" in r.getMessage()]
  assert warnings == [
    "tfds:tiny_tags train: no positive image of 1 class ('fish'), so the model cannot "
    "learn it and its AP is undefined as a measure of what it learnt."
  ]
  with pytest.raises(
    ValueError, match=r"^tfds:tiny_tags train\[:0\]: the split has no images"
  ) as empty:
    create_datasets(tags_config(tfds_data_dir, train_split="train[:0]"))
  assert errors.raised_on_purpose(empty.value)  # the program prints it as one sentence


def test_absent_classes_are_listed_with_a_count_beyond_ten():
  names = tuple(f"c{k}" for k in range(13))
  positives = np.array([0] * 12 + [3])
  counted = split_checks.SplitStatistics(
    "x test", names, 3, positives, positives * 0, np.array([0, 3]), np.diag(positives)
  )
  line = split_checks.absent_class_warning(counted, training=False)
  assert line.startswith("x test: no positive image of 12 classes ('c0', 'c1',")
  assert "'c9' and 2 more), so their APs are undefined (scored 0" in line
