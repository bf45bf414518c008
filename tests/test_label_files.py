"""Your own images and label files (data.name="labels"): every format, the class list,
the splits, every bad input in one sentence naming file, row and value, a gs:// root, and
one tiny training on generated sets in three formats that evaluates and predicts with the
files' class names."""

import csv
import json
import logging
import os

import numpy as np
import pytest
from data_fixtures import voc_config, write_image
from runs import run_config

from kmcl_jax import config as config_lib
from kmcl_jax.data import get_source
from kmcl_jax.data.image_files import decode_image, header_problem
from kmcl_jax.data.label_files import LabelFileError
from kmcl_jax.errors import raised_on_purpose
from kmcl_jax.workdir import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The generated set: image name -> labels, in the names the files use.
IMAGES = {
  "img_0": ("cat",),
  "img_1": ("dog", "cat"),
  "img_2": (),
  "img_3": ("bird",),
  "img_4": ("dog",),
  "img_5": ("bird", "dog"),
}
CLASSES = ("bird", "cat", "dog")  # sorted


def write_images(root, names=IMAGES, extension=".jpg"):
  for seed, name in enumerate(names):
    write_image(os.path.join(root, name + extension), seed)


def write(path, text, encoding="utf-8", newline="\n"):
  with open(path, "w", encoding=encoding, newline="") as f:
    f.write(text.replace("\n", newline))
  return str(path)


def labels_of(source):
  """{image id: sorted class names} of a source."""
  return {
    source.annotations(i)["id"]: sorted(
      source.class_names[k] for k in np.flatnonzero(source.annotations(i)["labels"])
    )
    for i in range(len(source))
  }


def source(labels, root="", role="train", split="train", **options):
  return get_source("labels", split, str(root), role=role, train_labels=str(labels), **options)


def expected(names=IMAGES, extension=""):
  return {name + extension: sorted(labels) for name, labels in names.items()}


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("delimiter", [" ", "|", ";", ","])
def test_a_delimited_csv_with_names_joined_by_any_delimiter(tmp_path, delimiter):
  write_images(str(tmp_path))
  rows = "".join(f'{name},"{delimiter.join(labels)}"\n' for name, labels in IMAGES.items())
  labels = write(tmp_path / "train.csv", "image_name,tags\n" + rows)
  planet = source(labels, tmp_path, image_extension=".jpg", holdout_fraction=0.5)
  held_out = source(labels, tmp_path, role="eval", image_extension="jpg", holdout_fraction=0.5)
  assert tuple(planet.class_names) == CLASSES == tuple(held_out.class_names)
  assert labels_of(planet) | labels_of(held_out) == expected()
  assert len(planet) == len(held_out) == 3
  assert planet.paths[0] == os.path.join(str(tmp_path), planet.ids[0] + ".jpg")
  assert "(delimited)" in planet.name


def test_integer_ids_are_lines_of_the_class_list_or_sorted_as_numbers(tmp_path):
  write_images(str(tmp_path), ["a", "b", "c"], ".png")
  labels = write(tmp_path / "train.csv", "Id,Target\na,16 0\nb,2\nc,0\n")
  numbers = source(labels, tmp_path, image_extension=".png", eval_labels=labels)
  assert list(numbers.class_names) == ["0", "2", "16"]  # numerically, not "16" < "2"
  names = write(tmp_path / "classes.txt", "\n".join(f"protein {k}" for k in range(17)) + "\n")
  hpa = source(labels, tmp_path, image_extension=".png", eval_labels=labels, class_list=names)
  assert len(hpa.class_names) == 17 and labels_of(hpa)["a"] == ["protein 0", "protein 16"]


def test_one_column_per_class_with_ignored_entries_and_other_columns(tmp_path):
  write_images(str(tmp_path), ["p0", "p1", "p2"], ".png")
  text = "Path,Age,No Finding,Edema,Mass\np0.png,61,1.0,,0\np1.png,40,0,1,-1\np2.png,7,0,-1.0,1\n"
  labels = write(tmp_path / "train.csv", text)
  with pytest.raises(LabelFileError, match=r"line 2: column 'Age' holds '61'"):
    source(labels, tmp_path, eval_labels=labels)
  classes = write(tmp_path / "classes.txt", "No Finding\nMass\nEdema\n")
  chexpert = source(labels, tmp_path, eval_labels=labels, class_list=classes)
  assert list(chexpert.class_names) == ["No Finding", "Mass", "Edema"]  # the list's order
  np.testing.assert_array_equal(chexpert.labels, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])
  np.testing.assert_array_equal(chexpert.ignore, [[0, 0, 0], [0, 1, 0], [0, 0, 1]])
  adp_labels = write(tmp_path / "adp.csv", "Patch Names,E,C\np0.png,1,0\np1.png,0,0\n")
  adp = source(adp_labels, tmp_path, eval_labels=adp_labels)
  assert "(columns)" in adp.name and list(adp.class_names) == ["C", "E"]
  assert labels_of(adp) == {"p0.png": ["E"], "p1.png": []}


def test_a_long_csv_with_verified_absent_labels(tmp_path):
  write_images(str(tmp_path), ["0001", "0002"])
  text = (
    "ImageID,Source,LabelName,Confidence\n0001,verification,/m/cat,1\n0001,crowd,/m/dog,0\n"
    "0002,verification,/m/dog,1\n0001,machine,/m/bird,1\n"
  )
  labels = write(tmp_path / "train.csv", text)
  open_images = source(labels, tmp_path, image_extension=".jpg", eval_labels=labels)
  assert "(long)" in open_images.name
  assert list(open_images.class_names) == ["/m/bird", "/m/cat", "/m/dog"]
  assert labels_of(open_images) == {"0001": ["/m/bird", "/m/cat"], "0002": ["/m/dog"]}


def test_json_lines_with_a_split_key(tmp_path):
  write_images(str(tmp_path / "images"))
  lines = [
    json.dumps(
      {"image": f"images/{n}.jpg", "labels": list(v), "split": "val" if k < 2 else "train"}
    )
    for k, (n, v) in enumerate(IMAGES.items())
  ]
  labels = write(tmp_path / "labels.jsonl", "\n".join(lines) + "\n")
  train = source(labels, tmp_path, split="train")
  val = source(labels, tmp_path, role="eval", split="val")
  assert "(jsonl)" in train.name and list(train.class_names) == list(CLASSES)
  assert labels_of(val) == {f"images/{n}.jpg": expected()[n] for n in ("img_0", "img_1")}
  assert len(train) == 4
  with pytest.raises(LabelFileError, match=r"no row has 'test' in the column 'split'"):
    source(labels, tmp_path, role="eval", split="test")


def coco_file(path, images, categories, annotations):
  return write(
    path, json.dumps({"images": images, "annotations": annotations, "categories": categories})
  )


def test_any_coco_export_with_arbitrary_ids_and_file_names(tmp_path):
  write_images(str(tmp_path / "train"), ["x/a", "b", "c"])
  labels = coco_file(
    tmp_path / "train" / "_annotations.coco.json",
    [
      {"id": 900, "file_name": "x/a.jpg"},
      {"id": 17, "file_name": "b.jpg"},
      {"id": 3, "file_name": "c.jpg"},
    ],
    [
      {"id": 0, "name": "animals", "supercategory": "none"},
      {"id": 41, "name": "zebra"},
      {"id": 5, "name": "cat"},
      {"id": 6, "name": "cat"},
    ],
    [
      {"id": 1, "image_id": 900, "category_id": 41},
      {"id": 2, "image_id": 900, "category_id": 6},
      {"id": 3, "image_id": 17, "category_id": 5},
    ],
  )
  roboflow = source(labels, eval_labels=labels)  # images beside the file
  assert "(coco)" in roboflow.name and list(roboflow.class_names) == ["animals", "cat", "zebra"]
  assert labels_of(roboflow) == {"c.jpg": [], "b.jpg": ["cat"], "x/a.jpg": ["cat", "zebra"]}


def test_the_format_can_be_named_and_byte_order_marks_and_windows_lines_are_read(tmp_path):
  write_images(str(tmp_path))
  rows = "".join(f"{name}.jpg,{label}\n" for name, v in IMAGES.items() for label in v[:1])
  text = "file,label\n" + rows
  labels = write(tmp_path / "l.csv", text, encoding="utf-8-sig", newline="\r\n")
  auto = source(labels, tmp_path, eval_labels=labels)
  long = source(labels, tmp_path, eval_labels=labels, labels_format="long")
  assert "(delimited)" in auto.name and "(long)" in long.name  # one label per image: alike
  assert (
    labels_of(auto) == labels_of(long) == {f"{n}.jpg": list(v[:1]) for n, v in IMAGES.items() if v}
  )
  assert not any("\r" in c or "\ufeff" in c for c in [*auto.class_names, *auto.ids])


def test_the_holdout_is_a_seeded_draw(tmp_path):
  names = {f"i{k}": ("a" if k % 2 else "b",) for k in range(20)}
  write_images(str(tmp_path), names)
  labels = write(
    tmp_path / "l.csv", "image,labels\n" + "".join(f"{n}.jpg,{v[0]}\n" for n, v in names.items())
  )

  def held_out(seed):
    return set(source(labels, tmp_path, role="eval", split_seed=seed, holdout_fraction=0.25).ids)

  train = set(source(labels, tmp_path, split_seed=3, holdout_fraction=0.25).ids)
  assert len(held_out(3)) == 5 and held_out(3) == held_out(3) != held_out(4)
  assert train | held_out(3) == {f"{n}.jpg" for n in names} and not train & held_out(3)


def test_label_files_and_images_on_gs(gcs, tmp_path):
  write_images(str(tmp_path), ["a", "b"])
  folder = gcs.workdir("labels")
  for name in ("a.jpg", "b.jpg"):
    gcs.blob(folder, f"images/{name}").upload_from_filename(str(tmp_path / name))
  gcs.blob(folder, "l.csv").upload_from_string("\ufeffimage,labels\r\na,x y\r\nb,y\r\n")
  labels = f"{folder}/l.csv"
  remote = source(labels, f"{folder}/images", eval_labels=labels, image_extension=".jpg")
  assert remote.paths == [f"{folder}/images/a.jpg", f"{folder}/images/b.jpg"]
  assert labels_of(remote) == {"a": ["x", "y"], "b": ["y"]}
  np.testing.assert_array_equal(remote[1]["image"], decode_image(str(tmp_path / "b.jpg")))
  assert header_problem(remote.paths[0]) is None
  with pytest.raises(
    LabelFileError, match=f"{labels}, line 2: image 'a' is not at '{folder}/a.jpg'"
  ):
    source(labels, folder, eval_labels=labels, image_extension=".jpg")


# ----------------------------------------------------------------------------- bad input


def test_a_missing_image_names_the_row_or_is_skipped_and_listed(tmp_path, caplog):
  write_images(str(tmp_path), ["a", "c"])
  labels = write(tmp_path / "l.csv", "image,labels\na.jpg,x\nb.jpg,y\nc.jpg,x\n")
  with pytest.raises(LabelFileError) as error:
    source(labels, tmp_path, eval_labels=labels)
  assert str(error.value).startswith(
    f"{labels}, line 3: image 'b.jpg' is not at {os.path.join(str(tmp_path), 'b.jpg')!r} "
    "(1 of the 3 images of the train split are missing;"
  )
  with caplog.at_level(logging.WARNING):
    skipped = source(labels, tmp_path, eval_labels=labels, skip_corrupt=True)
  assert skipped.ids == ["a.jpg", "c.jpg"] and list(skipped.class_names) == ["x", "y"]
  assert f"line 3 {os.path.join(str(tmp_path), 'b.jpg')}" in caplog.text


def test_a_label_not_in_the_class_list_names_file_row_and_label(tmp_path):
  write_images(str(tmp_path), ["a", "b"])
  labels = write(tmp_path / "l.csv", "image,labels\na.jpg,x\nb.jpg,x y\n")
  classes = write(tmp_path / "c.txt", "x\n")
  with pytest.raises(LabelFileError) as error:
    source(labels, tmp_path, eval_labels=labels, class_list=classes)
  assert str(error.value) == f"{labels}, line 3: label 'y' is not in the class list {classes}."
  ids = write(tmp_path / "ids.csv", "image,labels\na.jpg,0\nb.jpg,0 1\n")
  with pytest.raises(LabelFileError, match=r"line 3: label id 1 is not a class: .* ids 0 to 0"):
    source(ids, tmp_path, eval_labels=ids, class_list=classes)


def test_duplicate_image_rows_are_merged_with_a_warning(tmp_path, caplog):
  write_images(str(tmp_path), ["a", "b"])
  labels = write(tmp_path / "l.csv", "image,labels\na.jpg,x y\nb.jpg,y\na.jpg,z\n")
  with caplog.at_level(logging.WARNING):
    merged = source(labels, tmp_path, eval_labels=labels)
  assert labels_of(merged) == {"a.jpg": ["x", "y", "z"], "b.jpg": ["y"]}
  assert "1 image row(s) repeat an image of an earlier row" in caplog.text
  assert "(first: 'a.jpg', line 2 and line 4)" in caplog.text


@pytest.mark.parametrize(
  "name, text, message",
  [
    ("l.csv", "image,labels\na.jpg,x|y\nb.jpg,x;y\n", "line 3: the labels 'x;y' are joined by"),
    ("l.csv", "image,labels\na.jpg,cat\nb.jpg,3\n", "line 2: label 'cat' is a name where"),
    ("l.csv", "image,x,y\na.jpg,1,0\nb.jpg,1,yes\n", "line 3: column 'y' holds 'yes'"),
    ("l.jsonl", '{"image": "a.jpg", "labels": "x y"}\n', "line 1: 'labels' is 'x y', not a"),
    ("l.jsonl", '{"image": "a.jpg", "labels": []}\n{"im": 1}\n', "line 2: expected one object"),
    ("l.csv", 'image,labels\n"a.jpg,x\n', "line 2: not valid CSV"),
  ],
)
def test_mixed_or_malformed_labels_name_file_row_and_value(tmp_path, name, text, message):
  write_images(str(tmp_path), ["a", "b"])
  labels = write(tmp_path / name, text)
  with pytest.raises(LabelFileError) as error:
    source(labels, tmp_path, eval_labels=labels)
  assert str(error.value).startswith(f"{labels}, {message}"), str(error.value)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize(
  "content, message",
  [
    (None, "cannot read the file"),
    (b"", "the file is empty"),
    (b"\xef\xbb\xbf\r\n  \r\n", "the file is empty"),
    (b"image,labels\r\n", "has a header but no rows of labels"),
    (b"image,labels\na.jpg,caf\xe9\n", "line 2: byte 0xe9 is not UTF-8 text"),
  ],
)
def test_an_unreadable_or_empty_file_is_one_sentence(tmp_path, content, message):
  path = tmp_path / "l.csv"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(LabelFileError) as error:
    source(path, tmp_path)
  assert message in str(error.value) and str(path) in str(error.value)
  assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


def test_the_config_names_what_is_missing_or_misplaced(tmp_path):
  with pytest.raises(LabelFileError, match="config.data.train_labels is empty"):
    get_source("labels", "train", str(tmp_path), role="train", train_labels="")
  labels = write(tmp_path / "l.csv", "image,labels\na.jpg,x\nb.jpg,y\n")
  with pytest.raises(LabelFileError, match=r"labels_format='tsv': expected 'auto' or one of"):
    source(labels, labels_format="tsv")
  with pytest.raises(
    LabelFileError, match=r"holdout_fraction=1.0: expected a fraction in \(0, 1\)"
  ):
    source(labels, holdout_fraction=1.0)
  voc = voc_config(str(tmp_path), train_labels=labels, image_size=32)
  with pytest.raises(ValueError, match=r"config.data.train_labels applies to data.name='labels'"):
    config_lib.validate(voc)


def test_a_label_file_error_ends_the_program_with_its_sentence(tmp_path):
  with pytest.raises(LabelFileError) as error:
    source(tmp_path / "no_such.csv", tmp_path)
  assert raised_on_purpose(error.value)


# ----------------------------------------------------------------------------- end to end

# 16 generated images of 10 classes: 12 to train on, 4 to evaluate. The runs are the
# reference demo run's (tests/runs.py: 10 classes, 8 images of 32 px a step, 6 steps) on
# them, so they find its compiled programs in the session's compilation cache.
KINDS = ("airplane", "bird", "boat", "car", "cat", "dog", "frog", "horse", "ship", "truck")
SET = {
  f"photo_{k:02d}": (KINDS[k % 10],) + ((KINDS[(k + 3) % 10],) if k % 4 == 0 else ())
  for k in range(16)
}
TRAIN, VAL = list(SET)[:12], list(SET)[12:]
LISTED = KINDS[::-1]  # the class list of the COCO set: not sorted


def delimited_set(folder):
  """(a): train.csv and val.csv, "image_name,tags" with names joined by spaces, ids
  without extension."""
  for name, images in (("train.csv", TRAIN), ("val.csv", VAL)):
    write(folder / name, "image_name,tags\n" + "".join(f"{i},{' '.join(SET[i])}\n" for i in images))
  return {
    "train_labels": str(folder / "train.csv"),
    "eval_labels": str(folder / "val.csv"),
    "image_extension": ".jpg",
  }


def columns_set(folder):
  """(b): one file, a 0/1 column per class and a split column."""
  rows = "".join(
    f"{i}.jpg,{'train' if i in TRAIN else 'val'},"
    + ",".join("1" if c in SET[i] else "0" for c in KINDS)
    + "\n"
    for i in SET
  )
  write(folder / "labels.csv", "Image Index,split," + ",".join(KINDS) + "\n" + rows)
  return {"train_labels": str(folder / "labels.csv")}


def coco_set(folder):
  """(e): a COCO export per split and a class list."""
  categories = [{"id": 10 + k, "name": c} for k, c in enumerate(KINDS)]
  for name, images in (("train.json", TRAIN), ("val.json", VAL)):
    coco_file(
      folder / name,
      [{"id": 100 + k, "file_name": f"{i}.jpg"} for k, i in enumerate(images)],
      categories,
      [
        {"id": k, "image_id": 100 + n, "category_id": 10 + KINDS.index(c)}
        for n, i in enumerate(images)
        for k, c in enumerate(SET[i])
      ],
    )
  write(folder / "classes.txt", "\n".join(LISTED) + "\n")
  return {
    "train_labels": str(folder / "train.json"),
    "eval_labels": str(folder / "val.json"),
    "class_list": str(folder / "classes.txt"),
  }


@pytest.fixture(scope="module")
def trained_on_each_format(tmp_path_factory, reference_run):
  """{format: (workdir, eval.json, predictions)} of the reference run's training (after
  it, for its compiled programs) on the same 16 images described in formats (a), (b)
  and (e)."""
  from absl import flags

  from kmcl_jax.inference import evaluate_checkpoint, predict
  from kmcl_jax.train import train_and_evaluate

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads an absl flag (see test_pipeline.py)
  images = tmp_path_factory.mktemp("images")
  write_images(str(images), SET)
  runs = {}
  for name, make in (("delimited", delimited_set), ("columns", columns_set), ("coco", coco_set)):
    folder = tmp_path_factory.mktemp(name)
    config = run_config()
    config.data.update(name="labels", root=str(images), train_split="train", eval_split="val")
    config.data.update(make(folder))
    config.checkpoint_every_steps = 6  # one save: what eval and predict restore
    workdir = str(folder / "run")
    train_and_evaluate(config, workdir)
    report = evaluate_checkpoint(config, workdir)
    output = str(folder / "predictions.csv")
    # As README's second command: no label file, the classes come from the run.
    bare = run_config()
    bare.data.name = "labels"
    predict(bare, workdir, os.path.join(str(images), "photo_1*.jpg"), output)
    with open(output) as f:
      runs[name] = (workdir, report, list(csv.reader(f)))
  return runs


def test_the_three_generated_sets_hold_the_same_labels(tmp_path):
  write_images(str(tmp_path), SET)
  for make in (delimited_set, columns_set, coco_set):
    options = make(tmp_path)
    train = get_source("labels", "train", str(tmp_path), role="train", **options)
    val = get_source("labels", "val", str(tmp_path), role="eval", **options)
    assert {i.removesuffix(".jpg"): v for i, v in (labels_of(train) | labels_of(val)).items()} == {
      i: sorted(v) for i, v in SET.items()
    }
    assert [i.removesuffix(".jpg") for i in val.ids] == VAL


@pytest.mark.slow
@pytest.mark.parametrize(
  "name, classes", [("delimited", KINDS), ("columns", KINDS), ("coco", LISTED)]
)
def test_each_format_trains_evaluates_and_predicts_with_the_files_classes(
  trained_on_each_format, name, classes
):
  workdir, report, predictions = trained_on_each_format[name]
  assert read_run(workdir)["class_names"] == list(classes)
  assert list(report["ap"]) == list(classes) and report["images"] == len(VAL)
  assert predictions[0] == ["path", *classes, "labels"]
  assert [os.path.basename(row[0]) for row in predictions[1:]] == [
    f"photo_1{k}.jpg" for k in range(6)
  ]
  for row in predictions[1:]:
    probabilities = np.array(row[1:-1], float)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert [c for c, p in zip(classes, probabilities, strict=True) if p >= 0.8] == [
      c for c in row[-1].split("|") if c
    ]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert max(r["step"] for r in map(json.loads, f) if r["split"] == "train") == 6


@pytest.mark.slow
def test_the_same_images_and_labels_in_two_formats_train_the_same_model(trained_on_each_format):
  assert trained_on_each_format["delimited"][1]["ap"] == trained_on_each_format["columns"][1]["ap"]
