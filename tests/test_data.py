"""Datasets, transforms and the grain pipeline, on small real files in real layouts."""

import dataclasses
import json
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict
from PIL import Image

from kmcl_jax.data import (
  CorruptImageError,
  create_datasets,
  get_source,
  pipeline,
  tfds_source,
  transforms,
  voc,
)
from kmcl_jax.data.image_files import decode_image


def write_image(path, seed=0, size=(20, 16), mode="RGB", fmt="JPEG"):
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
  pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
  Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, fmt)


# ---------------------------------------------------------------------------- fixtures

VOC_TRAINVAL = {  # image id -> {class index: raw label}; every other class is -1.
    "000005": {8: 1, 14: 0}, "000007": {6: 1}, "000009": {12: 1, 14: 1, 8: 0},
    "000012": {}}  # no object of any class
VOC_TEST = {"000001": {11: 1, 14: 1}, "000002": {18: 0}, "000004": {6: 1}}


def make_voc(root, corrupt=None):
  folder = os.path.join(root, "VOCdevkit", "VOC2007")
  os.makedirs(os.path.join(folder, "ImageSets", "Main"))
  for split, images in (("trainval", VOC_TRAINVAL), ("test", VOC_TEST)):
    for k, name in enumerate(voc.CLASS_NAMES):
      with open(os.path.join(folder, "ImageSets", "Main", f"{name}_{split}.txt"), "w") as f:
        for image_id, raw in images.items():
          f.write(f"{image_id} {raw.get(k, -1):2d}\n")
    for seed, image_id in enumerate(images):
      write_image(os.path.join(folder, "JPEGImages", f"{image_id}.jpg"), seed, (30 + seed, 20))
  if corrupt:
    with open(os.path.join(folder, "JPEGImages", f"{corrupt}.jpg"), "r+b") as f:
      f.truncate(200)
  return folder


def test_voc_labels_treat_difficult_as_positive_and_ignore_it(tmp_path):
  folder = make_voc(str(tmp_path))
  for root in (str(tmp_path), folder):
    source = get_source("voc2007", "trainval", root)
    assert len(source) == 4 and list(source.class_names) == list(voc.CLASS_NAMES)
    for index, (image_id, raw) in enumerate(sorted(VOC_TRAINVAL.items())):
      record = source[index]
      assert record["id"] == image_id
      assert sorted(np.flatnonzero(record["labels"])) == sorted(raw)
      assert sorted(np.flatnonzero(record["ignore"])) == sorted(k for k, v in raw.items() if v == 0)
      assert record["labels"].dtype == np.float32 and record["ignore"].dtype == bool
      assert record["image"].shape == (20, 30 + index, 3) and record["image"].dtype == np.uint8
  test = get_source("voc2007", "test", str(tmp_path))
  assert [test.annotations(i)["id"] for i in range(3)] == ["000001", "000002", "000004"]
  assert test.annotations(1)["ignore"][18] and test.annotations(1)["labels"][18] == 1


def test_coco_drops_images_without_objects_and_orders_categories_by_id(tmp_path):
  categories = [{"id": 7, "name": "toothbrush"}, {"id": 1, "name": "person"},
                {"id": 3, "name": "car"}]
  images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (42, 9, 17, 5)]
  annotations = [{"image_id": 42, "category_id": 7}, {"image_id": 42, "category_id": 1},
                 {"image_id": 42, "category_id": 1}, {"image_id": 5, "category_id": 3}]
  os.makedirs(tmp_path / "annotations")
  with open(tmp_path / "annotations" / "instances_val2014.json", "w") as f:
    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  for k, image in enumerate(images):
    write_image(str(tmp_path / "val2014" / image["file_name"]), k)
  source = get_source("coco2014", "val", str(tmp_path))
  assert list(source.class_names) == ["person", "car", "toothbrush"]
  assert len(source) == 2  # images 9 and 17 have no annotation
  assert [source.annotations(i)["id"] for i in range(2)] == ["5", "42"]
  np.testing.assert_array_equal(source.annotations(0)["labels"], [0, 1, 0])
  np.testing.assert_array_equal(source.annotations(1)["labels"], [1, 0, 1])
  assert source[1]["image"].shape == (16, 20, 3)
  with pytest.raises(FileNotFoundError, match="instances_train2014.json"):
    get_source("coco2014", "train", str(tmp_path))


def test_nuswide_reads_the_label_list_csv(tmp_path):
  rows = [("images/a.jpg", "['sky', 'clouds']", "train"), ("images/b.jpg", "[]", "train"),
          ("images/c.jpg", "['water']", "val"), ("images/d.jpg", "['sky']", "val")]
  with open(tmp_path / "nus_wid_data.csv", "w") as f:
    f.write("filepath,label,split_name\n")
    for path, labels, split in rows:
      f.write(f'{path},"{labels}",{split}\n')
      write_image(str(tmp_path / path))
  train = get_source("nuswide", "train", str(tmp_path))
  assert list(train.class_names) == ["clouds", "sky", "water"]
  np.testing.assert_array_equal([train.annotations(i)["labels"] for i in range(2)],
                                [[1, 1, 0], [0, 0, 0]])
  val = get_source("nuswide", "val", str(tmp_path))
  assert [val.annotations(i)["id"] for i in range(2)] == ["images/c.jpg", "images/d.jpg"]
  assert val[0]["image"].shape == (16, 20, 3)


def make_chestxray(root, entries, train, test):
  with open(os.path.join(root, "Data_Entry_2017.csv"), "w") as f:
    f.write("Image Index,Finding Labels,Follow-up #,Patient ID\n")
    for name, findings in entries.items():
      f.write(f"{name},{findings},0,1\n")
  for name, names in (("train_val_list.txt", train), ("test_list.txt", test)):
    with open(os.path.join(root, name), "w") as f:
      f.write("\n".join(names) + "\n")
  for k, name in enumerate(entries):
    folder = "images_001" if k % 2 else "images_002"
    write_image(os.path.join(root, folder, "images", name), k, mode="L", fmt="PNG")


def test_chestxray14_no_finding_is_all_zero_and_grey_becomes_three_channels(tmp_path):
  entries = {"00000001_000.png": "Cardiomegaly|Emphysema", "00000002_000.png": "No Finding",
             "00000003_000.png": "Hernia"}
  make_chestxray(str(tmp_path), entries, ["00000001_000.png", "00000002_000.png"],
                 ["00000003_000.png"])
  train = get_source("chestxray14", "train_val", str(tmp_path))
  assert len(train) == 2 and len(train.class_names) == 14
  assert sorted(np.flatnonzero(train.annotations(0)["labels"])) == [1, 10]
  assert not train.annotations(1)["labels"].any()
  image = train[1]["image"]
  assert image.shape == (16, 20, 3) and (image[..., 0] == image[..., 2]).all()
  assert get_source("chestxray14", "test", str(tmp_path)).annotations(0)["labels"][13] == 1


def test_chestxray14_unknown_finding_names_file_and_line(tmp_path):
  make_chestxray(str(tmp_path), {"a.png": "Mass", "b.png": "Mass|Dragon"}, ["a.png"], ["b.png"])
  with pytest.raises(ValueError, match=r"Data_Entry_2017.csv, line 3: .*Mass\|Dragon"):
    get_source("chestxray14", "test", str(tmp_path))


def test_adp_level_one_drops_unlabelled_patches(tmp_path):
  release = tmp_path / "ADP V1.0 Release"
  header = ["Patch Names", "E", "E.M", "C", "H", "S", "A", "M", "N", "G", "T"]
  rows = [["p0.png", 1, 1, 0, 0, 0, 0, 0, 0, 1, 0], ["p1.png", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
          ["p2.png", 0, 0, 1, 1, 0, 0, 0, 0, 0, 1], ["p3.png", 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]]
  os.makedirs(release / "splits")
  with open(release / "ADP_EncodedLabels_Release1_Flat.csv", "w") as f:
    f.write(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
  np.save(release / "splits" / "train.npy", np.array([2, 1, 0]))
  np.save(release / "splits" / "test.npy", np.array([3]))
  for k, row in enumerate(rows):
    write_image(str(release / "img_res_1um_bicubic" / row[0]), k, fmt="PNG")
  train = get_source("adp", "train", str(tmp_path))
  assert [train.annotations(i)["id"] for i in range(len(train))] == ["p2.png", "p0.png"]
  # L1 classes E C H S A M N G T; the L2 column E.M is not one of them.
  np.testing.assert_array_equal(train.annotations(0)["labels"], [0, 1, 1, 0, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(train.annotations(1)["labels"], [1, 0, 0, 0, 0, 0, 0, 1, 0])
  assert get_source("adp", "test", str(release)).annotations(0)["labels"][4] == 1


def test_demo_set_is_deterministic_and_its_labels_are_the_digits_drawn():
  train, test = get_source("demo", "train"), get_source("demo", "test")
  assert (len(train), len(test)) == (4000, 1000)
  first, again = train[7], get_source("demo", "train")[7]
  np.testing.assert_array_equal(first["image"], again["image"])
  assert first["image"].shape == (64, 64, 3) and first["image"].dtype == np.uint8
  labels = np.stack([train.annotations(i)["labels"] for i in range(len(train))])
  assert 1 <= labels.sum(1).min() and labels.sum(1).max() <= 4
  assert (labels.mean(0) > 0.15).all()  # every digit is common
  _, _, scans = train._layout(7)
  from kmcl_jax.data.demo import digit_pools
  assert sorted(np.flatnonzero(first["labels"])) == sorted(set(digit_pools()["train"][1][scans]))
  # Train and test digits come from disjoint scans.
  train_scans, test_scans = digit_pools()["train"][0], digit_pools()["test"][0]
  assert not any((test_scans[:50, None] == train_scans[None]).all((-1, -2)).any(1))
  assert not np.array_equal(train[0]["image"], test[0]["image"])


def test_tfds_voc_through_mock_data_marks_difficult():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=6):
    source = get_source("tfds:voc/2007", "test")
    assert len(source) == 6 and len(source.class_names) == 20
    examples = tfds.data_source("voc/2007", split="test")
    for i in range(6):
      record, example = source[i], examples[i]
      assert set(np.flatnonzero(record["labels"])) == set(example["labels"])
      difficult = set(example["labels"]) - set(example["labels_no_difficult"])
      assert set(np.flatnonzero(record["ignore"])) == difficult
      assert record["image"].dtype == np.uint8 and record["image"].shape[-1] == 3


def test_tfds_coco_records_and_the_rows_kept():
  examples = [{"objects": {"label": np.array([3, 0, 3])}, "image/id": 11},
              {"objects": {"label": np.array([], np.int64)}, "image/id": 12},
              {"objects": {"label": np.array([79])}, "image/id": 13}]
  assert tfds_source.rows_with_objects(examples) == [0, 2]
  record = tfds_source.coco_record(examples[0], 80)
  assert sorted(np.flatnonzero(record["labels"])) == [0, 3] and record["id"] == "11"
  assert not record["ignore"].any()


# ---------------------------------------------------------------------- decoding, errors

def test_every_image_mode_decodes_to_rgb(tmp_path):
  grey = np.arange(20 * 16, dtype=np.uint8).reshape(16, 20)
  Image.fromarray(grey, "L").save(tmp_path / "grey.png")
  Image.fromarray((grey.astype(np.uint16) << 8) | 0xFF).save(tmp_path / "deep.png")
  rgba = np.zeros((16, 20, 4), np.uint8)
  rgba[..., 0], rgba[:8, :, 3] = 200, 255  # top half opaque red, bottom transparent
  Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
  Image.new("CMYK", (20, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
  Image.fromarray(grey, "L").convert("P").save(tmp_path / "palette.png")
  for name in ("grey.png", "deep.png", "palette.png"):
    image = decode_image(str(tmp_path / name))
    assert image.shape == (16, 20, 3)
    np.testing.assert_array_equal(image[..., 1], grey)
  alpha = decode_image(str(tmp_path / "alpha.png"))
  assert (alpha[:8] == [200, 0, 0]).all() and (alpha[8:] == 255).all()
  red = decode_image(str(tmp_path / "cmyk.jpg")).astype(int)
  assert red[..., 0].min() > 240 and red[..., 1:].max() < 15


def test_corrupt_and_truncated_images_raise_with_their_path(tmp_path):
  (tmp_path / "noise.jpg").write_bytes(b"not an image at all")
  write_image(str(tmp_path / "cut.jpg"), size=(64, 64))
  with open(tmp_path / "cut.jpg", "r+b") as f:
    f.truncate(300)
  for name in ("noise.jpg", "cut.jpg"):
    with pytest.raises(CorruptImageError, match=str(tmp_path / name)):
      decode_image(str(tmp_path / name))


def test_missing_folders_and_files_name_the_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere.*VOCdevkit/VOC2007/ImageSets"):
    get_source("voc2007", "test", str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="Data_Entry_2017.csv"):
    get_source("chestxray14", "test", str(tmp_path))
  with pytest.raises(ValueError, match="data.root"):
    get_source("coco2014", "train")
  with pytest.raises(ValueError, match="unknown dataset 'voc2012'"):
    get_source("voc2012", "test", str(tmp_path))
  with pytest.raises(ValueError, match="unknown split 'train2'.*'trainval'"):
    get_source("voc2007", "train2", str(tmp_path))


def test_malformed_annotation_line_names_file_and_line(tmp_path):
  folder = make_voc(str(tmp_path))
  path = os.path.join(folder, "ImageSets", "Main", "cow_test.txt")
  with open(path, "a") as f:
    f.write("000006 maybe\n")
  with pytest.raises(ValueError, match=r"cow_test.txt, line 4: expected .*'000006 maybe'"):
    get_source("voc2007", "test", str(tmp_path))


def test_empty_split_is_an_error(tmp_path):
  folder = make_voc(str(tmp_path))
  for name in voc.CLASS_NAMES:
    open(os.path.join(folder, "ImageSets", "Main", f"{name}_val.txt"), "w").close()
  with pytest.raises(ValueError, match="voc2007 val .* has no images"):
    get_source("voc2007", "val", str(tmp_path))


# ---------------------------------------------------------------------------- transforms

def test_transforms_match_torchvision_resize_and_affine():
  pytest.importorskip("torchvision")
  from torchvision.transforms import InterpolationMode
  from torchvision.transforms import functional as F
  image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8))
  np.testing.assert_array_equal(transforms.squish_resize(image, 24), F.resize(image, [24, 24]))
  for angle, shift, scale in ((30.0, (3, -2), 1.1), (-44.2, (0, 5), 0.87)):
    np.testing.assert_array_equal(
        transforms.affine(image, angle, shift, scale),
        F.affine(image, angle, list(shift), scale, [0.0, 0.0],
                 interpolation=InterpolationMode.NEAREST, fill=0))


def test_cutout_fills_half_the_side_with_one_colour():
  image = Image.new("RGB", (40, 40), (1, 2, 3))
  for seed in range(20):
    out = np.asarray(transforms.cutout(image, np.random.default_rng(seed), 0.5))
    changed = (out != [1, 2, 3]).any(-1)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    # 20-pixel sides, corners inclusive, clipped at the border.
    assert 1 <= len(rows) <= 21 and 1 <= len(cols) <= 21
    assert changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert len(np.unique(out[changed], axis=0)) == 1
  # A centre far from the borders gives the full 21 x 21 rectangle (corners inclusive).
  full = [seed for seed in range(200) if all(10 <= c < 30 for c in np.random.default_rng(
      seed).integers(40, size=2))][0]
  out = np.asarray(transforms.cutout(image, np.random.default_rng(full), 0.5))
  assert (out != [1, 2, 3]).any(-1).sum() == 21 * 21


def test_rand_augment_is_a_function_of_the_generator():
  image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
  outputs = [np.asarray(transforms.rand_augment(image, np.random.default_rng(s)))
             for s in range(30)]
  again = [np.asarray(transforms.rand_augment(image, np.random.default_rng(s))) for s in range(30)]
  assert all(np.array_equal(a, b) for a, b in zip(outputs, again))
  assert sum(not np.array_equal(o, np.asarray(image)) for o in outputs) >= 10
  for name, operation, values in transforms.RANDAUGMENT_OPS:
    for magnitude in range(1, 10):
      out = operation(image, values[magnitude], np.random.default_rng(magnitude))
      assert out.size == (32, 32) and out.mode == "RGB", name


def test_normalize():
  images = np.array([[[0, 255, 51]]], np.uint8)
  np.testing.assert_allclose(transforms.normalize(images, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1)),
                             [[[-1.0, 2.0, 0.0]]], atol=1e-6)


# ------------------------------------------------------------------------------ pipeline

@dataclasses.dataclass(frozen=True)
class IndexSource:
  """Records whose pixels spell their index: channel 0 = index % 256, 1 = index // 256."""
  size: int
  class_names: tuple = ("a", "b", "c")
  name: str = "index source"

  def __len__(self):
    return self.size

  def annotations(self, index):
    return {"labels": np.eye(3, dtype=np.float32)[index % 3],
            "ignore": np.arange(3) == (index % 2), "id": str(index)}

  def __getitem__(self, index):
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1] = index % 256, index // 256
    return {"image": image, **self.annotations(index)}


def indices(batch):
  return batch["image"][:, 0, 0, 0].astype(int) + 256 * batch["image"][:, 0, 0, 1].astype(int)


def plain(**overrides):
  options = dict(image_size=4, cutout_factor=0.0, augment="none", process_index=0,
                 process_count=1)
  return {**options, **overrides}


def take(dataset, n):
  iterator = iter(dataset)
  batches = [next(iterator) for _ in range(n)]
  iterator.close()
  return batches


def test_train_epochs_are_reshuffled_permutations():
  batches = take(pipeline.train_dataset(IndexSource(20), seed=3, global_batch=4, **plain()), 10)
  order = np.concatenate([indices(b) for b in batches])
  assert sorted(order[:20]) == list(range(20)) and sorted(order[20:]) == list(range(20))
  assert list(order[:20]) != list(order[20:]) and list(order[:20]) != list(range(20))
  for b in batches:
    np.testing.assert_array_equal(b["labels"], np.eye(3)[indices(b) % 3])
    assert b["skipped"].tolist() == [0] * 4
  other_seed = take(pipeline.train_dataset(IndexSource(20), seed=4, global_batch=4, **plain()), 5)
  assert list(np.concatenate([indices(b) for b in other_seed])) != list(order[:20])


def test_two_hosts_read_disjoint_rows_of_the_same_global_batches():
  source = IndexSource(30)
  single = take(pipeline.train_dataset(source, seed=0, global_batch=6, **plain()), 8)
  hosts = [take(pipeline.train_dataset(source, seed=0, global_batch=6, **plain(
      process_index=p, process_count=2)), 8) for p in (0, 1)]
  for step in range(8):
    host_rows = [indices(hosts[p][step]) for p in (0, 1)]
    assert len(host_rows[0]) == 3 and not set(host_rows[0]) & set(host_rows[1])
    np.testing.assert_array_equal(np.concatenate(host_rows), indices(single[step]))


def test_eval_pads_to_whole_batches_and_counts_every_image_once():
  source = IndexSource(11)
  seen = []
  for p in (0, 1):
    batches = list(pipeline.eval_dataset(source, global_batch=4, **{
        k: v for k, v in plain(process_index=p, process_count=2).items()
        if k not in ("cutout_factor", "augment")}))
    assert len(batches) == 3 and all(b["image"].shape == (2, 4, 4, 3) for b in batches)
    for b in batches:
      rows = b["index"][b["mask"]]
      np.testing.assert_array_equal(indices(b)[b["mask"]], rows)
      np.testing.assert_array_equal(b["labels"][b["mask"]], np.eye(3)[rows % 3])
      np.testing.assert_array_equal(b["ignore"][b["mask"]], (rows % 2)[:, None] == np.arange(3))
      assert (b["index"][~b["mask"]] == -1).all()
      seen.extend(rows)
  assert sorted(seen) == list(range(11))


def demo_config(**data):
  return ConfigDict(dict(seed=1, batch_size=8, eval_batch_size=16, data={**dict(
      name="demo", root=None, train_split="train", eval_split="test", image_size=48,
      augment="randaugment", cutout=0.5, worker_count=0, read_threads=2, skip_corrupt=False),
      **data}))


def test_same_seed_same_augmented_batches_with_any_worker_count_and_host_count():
  reference = create_datasets(demo_config())
  expected = [next(reference.train) for _ in range(3)]
  reference.train.close()
  assert (reference.steps_per_epoch, reference.eval_steps) == (500, 63)
  assert reference.class_names == tuple("0123456789")
  workers = create_datasets(demo_config(worker_count=2))
  for batch in expected:
    got = next(workers.train)
    for name in pipeline.TRAIN_FIELDS:
      np.testing.assert_array_equal(got[name], batch[name])
  workers.train.close()
  hosts = [create_datasets(demo_config(), process_index=p, process_count=2) for p in (0, 1)]
  for batch in expected:
    got = [next(h.train) for h in hosts]
    np.testing.assert_array_equal(np.concatenate([g["image"] for g in got]), batch["image"])
  assert expected[0]["image"].shape == (8, 48, 48, 3)
  # Augmentation happened: the records differ from their plainly resized versions.
  plain_batch = take(pipeline.train_dataset(get_source("demo", "train"), seed=1, global_batch=8,
                                            **plain(image_size=48)), 1)[0]
  np.testing.assert_array_equal(plain_batch["labels"], expected[0]["labels"])
  assert (plain_batch["image"] != expected[0]["image"]).any(axis=(1, 2, 3)).sum() >= 4


@pytest.mark.parametrize("worker_count", [0, 2])
def test_resume_from_a_saved_iterator_state_gives_the_same_next_batches(tmp_path, worker_count):
  config = demo_config(worker_count=worker_count)
  first = create_datasets(config).train
  for _ in range(3):
    next(first)
  manager = ocp.CheckpointManager(tmp_path, item_handlers={
      "data": grain.checkpoint.CheckpointHandler()})
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(first)))
  manager.wait_until_finished()
  expected = [next(first) for _ in range(3)]
  first.close()
  resumed = create_datasets(config).train
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  for batch in expected:
    got = next(resumed)
    for name in pipeline.TRAIN_FIELDS:
      np.testing.assert_array_equal(got[name], batch[name])
  resumed.close()


def voc_config(root, **data):
  return ConfigDict(dict(seed=0, batch_size=1, eval_batch_size=2, data={**dict(
      name="voc2007", root=root, train_split="trainval", eval_split="test", image_size=16,
      augment="randaugment", cutout=0.5, worker_count=0, read_threads=2, skip_corrupt=False),
      **data}))


def test_corrupt_image_raises_by_default_and_is_skipped_and_counted_on_request(tmp_path):
  make_voc(str(tmp_path), corrupt="000007")
  strict = create_datasets(voc_config(str(tmp_path)))
  with pytest.raises(CorruptImageError, match="000007.jpg"):
    for _ in range(4):
      next(strict.train)
  config = voc_config(str(tmp_path), skip_corrupt=True)
  config.batch_size = 2
  lenient = create_datasets(config)
  batches = [next(lenient.train) for _ in range(30)]
  lenient.train.close()
  # 60 rows are 15 epochs of the four images: the corrupt one (the only image labelled
  # 'car' alone) was met 15 times, flagged, and another row of its batch stood in.
  assert sum(int(b["skipped"].sum()) for b in batches) == 15
  car_only = np.eye(20)[6]
  assert not any(np.array_equal(row, car_only) for b in batches for row in b["labels"])
  flagged = [b for b in batches if b["skipped"].any()]
  assert all(np.array_equal(b["image"][0], b["image"][1]) for b in flagged)
  make_voc(str(tmp_path / "test"), corrupt="000002")
  evaluation = list(create_datasets(voc_config(str(tmp_path / "test"), skip_corrupt=True)).eval)
  rows = np.concatenate([b["index"] for b in evaluation])
  mask = np.concatenate([b["mask"] for b in evaluation])
  assert rows.tolist() == [0, 1, 2, -1] and mask.tolist() == [True, False, True, False]
  assert np.concatenate([b["skipped"] for b in evaluation]).tolist() == [0, 1, 0, 0]


def test_batch_sizes_are_checked_against_hosts_and_the_split():
  with pytest.raises(ValueError, match=r"config.batch_size=8 must be a positive multiple of .* \(3\)"):
    create_datasets(demo_config(), process_index=0, process_count=3)
  config = demo_config()
  config.batch_size = 5000
  with pytest.raises(ValueError, match="config.batch_size=5000 exceeds the 4000 images"):
    create_datasets(config)
