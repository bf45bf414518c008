"""Datasets in their real folder layouts, image decoding and its errors, the header
check, and the paper's protocol options (COCO subsets, the reference's Chest X-ray14)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from data_fixtures import (
  COCO_ANNOTATIONS,
  COCO_CATEGORIES,
  COCO_IMAGES,
  VOC_TRAINVAL,
  XRAY_ENTRIES,
  cut_short,
  make_chestxray,
  make_coco,
  make_voc,
  write_blank_png,
  write_image,
)
from PIL import Image

from kmcl_jax.data import CorruptImageError, chestxray14, get_source, tfds_source, voc
from kmcl_jax.data.image_files import MAX_DECODED_PIXELS, decode_image, header_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- datasets


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
  categories = [
    {"id": 7, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
  ]
  images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (42, 9, 17, 5)]
  annotations = [
    {"image_id": 42, "category_id": 7},
    {"image_id": 42, "category_id": 1},
    {"image_id": 42, "category_id": 1},
    {"image_id": 5, "category_id": 3},
  ]
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
  rows = [
    ("images/a.jpg", "['sky', 'clouds']", "train"),
    ("images/b.jpg", "[]", "train"),
    ("images/c.jpg", "['water']", "val"),
    ("images/d.jpg", "['sky']", "val"),
  ]
  with open(tmp_path / "nus_wid_data.csv", "w") as f:
    f.write("filepath,label,split_name\n")
    for path, labels, split in rows:
      f.write(f'{path},"{labels}",{split}\n')
      write_image(str(tmp_path / path))
  train = get_source("nuswide", "train", str(tmp_path))
  assert list(train.class_names) == ["clouds", "sky", "water"]
  np.testing.assert_array_equal(
    [train.annotations(i)["labels"] for i in range(2)], [[1, 1, 0], [0, 0, 0]]
  )
  val = get_source("nuswide", "val", str(tmp_path))
  assert [val.annotations(i)["id"] for i in range(2)] == ["images/c.jpg", "images/d.jpg"]
  assert val[0]["image"].shape == (16, 20, 3)


def test_chestxray14_no_finding_is_all_zero_and_grey_becomes_three_channels(tmp_path):
  entries = {
    "00000001_000.png": "Cardiomegaly|Emphysema",
    "00000002_000.png": "No Finding",
    "00000003_000.png": "Hernia",
  }
  make_chestxray(
    str(tmp_path), entries, ["00000001_000.png", "00000002_000.png"], ["00000003_000.png"]
  )
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
  rows = [
    ["p0.png", 1, 1, 0, 0, 0, 0, 0, 0, 1, 0],
    ["p1.png", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ["p2.png", 0, 0, 1, 1, 0, 0, 0, 0, 0, 1],
    ["p3.png", 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
  ]
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


def test_tfds_voc_keeps_its_labels_feature():
  import tensorflow_datasets as tfds

  voc_features = tfds.builder("voc/2007").info.features  # its code's features, no data
  assert tfds_source.labels_keys(voc_features) == (
    ["labels", "labels_no_difficult"],
    ["objects/label", "objects/pose"],
  )
  assert tfds_source.choose_labels_key("voc/2007", voc_features, "") == "labels"
  with pytest.raises(ValueError, match="several multilabel features"):
    tfds_source.choose_labels_key("voc/2007_copy", voc_features, "")


def test_tfds_any_dataset_with_a_sequence_of_class_labels(tfds_data_dir, tmp_path):
  from tfds_fixtures import TAGS, TAGS_SPLITS, _image

  train = get_source("tfds:tiny_tags", "train", tfds_data_dir)
  assert len(train) == 6 and tuple(train.class_names) == TAGS
  for i in range(len(train)):
    record = train[i]
    k = int(record["id"].split("-")[1].split(".")[0])
    assert sorted(np.flatnonzero(record["labels"])) == TAGS_SPLITS["train"][k]
    np.testing.assert_array_equal(record["image"], np.asarray(_image(k)))  # PNG: lossless
    assert not record["ignore"].any()
    np.testing.assert_array_equal(train.annotations(i)["labels"], record["labels"])
  assert len(get_source("tfds:tiny_tags", "train[:2]+test", tfds_data_dir)) == 5
  with pytest.raises(ValueError, match=r"no split 'val'; its splits are \['test', 'train'\]"):
    get_source("tfds:tiny_tags", "val", tfds_data_dir)
  with pytest.raises(FileNotFoundError, match="not prepared|no prepared dataset.*tfds build"):
    get_source("tfds:tiny_tags", "train", str(tmp_path))


def test_tfds_labels_key_chooses_the_feature_difficult_and_objects(tfds_data_dir):
  from tfds_fixtures import VOC_TRAIN

  with pytest.raises(ValueError, match=r"several multilabel features \['labels', "):
    get_source("tfds:tiny_voc", "train", tfds_data_dir)
  with pytest.raises(ValueError, match="tfds_labels_key='boxes'.*'objects/label'"):
    get_source("tfds:tiny_voc", "train", tfds_data_dir, labels_key="boxes")
  by_labels = get_source("tfds:tiny_voc", "train", tfds_data_dir, labels_key="labels")
  by_objects = get_source("tfds:tiny_voc", "train", tfds_data_dir, labels_key="objects/label")
  assert len(by_labels) == 4 and len(by_objects) == 3  # image 3 has no object
  for source in (by_labels, by_objects):
    for i in range(len(source)):
      record = source.annotations(i)
      labels, easy, objects = VOC_TRAIN[int(record["id"][:6])]
      wanted = labels if source is by_labels else sorted(set(objects))
      assert sorted(np.flatnonzero(record["labels"])) == wanted
      difficult = sorted(set(labels) - set(easy)) if source is by_labels else []
      assert sorted(np.flatnonzero(record["ignore"])) == difficult


# --------------------------------------------------------------------- decoding, errors


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


def test_a_normal_image_decodes_exactly_as_pil_reads_it(tmp_path):
  write_image(str(tmp_path / "photo.jpg"), size=(50, 37))
  write_image(str(tmp_path / "scan.png"), size=(50, 37), mode="L", fmt="PNG")
  for name in ("photo.jpg", "scan.png"):
    with Image.open(tmp_path / name) as image:
      expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(decode_image(str(tmp_path / name)), expected)


def test_an_image_past_the_decompression_bomb_limit_is_a_corrupt_image_naming_it(tmp_path):
  path = str(tmp_path / "bomb.png")
  write_blank_png(path, 20000, 20000)  # 400 million pixels, 50 KB
  with pytest.raises(CorruptImageError, match=rf"^{path}: cannot decode .*decompression bomb"):
    decode_image(path)
  assert header_problem(path).startswith(f"{path}: cannot read the image header")


def test_a_huge_image_that_is_not_a_jpeg_is_refused_without_decoding(tmp_path):
  path = str(tmp_path / "wide.png")
  write_blank_png(path, 5000, 4000)  # above MAX_DECODED_PIXELS, below PIL's bomb limit
  with pytest.raises(CorruptImageError, match=rf"^{path}: 5000 x 4000 pixels is more than"):
    decode_image(path)
  assert header_problem(path) == (
    f"{path}: 5000 x 4000 pixels is more than the {MAX_DECODED_PIXELS:,} this pipeline decodes"
  )


# Peak memory of one decode: Linux's high-water mark (VmHWM), reset to the current
# resident size (writing 5 to clear_refs) after the imports, whose own peak would hide it.
PEAK_MEMORY = textwrap.dedent("""
    import sys
    import numpy as np
    from PIL import Image
    from kmcl_jax.data.image_files import decode_image

    def kib(field):
      with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    before = kib("VmRSS")
    if sys.argv[2] == "pipeline":
      image = decode_image(sys.argv[1])
    else:
      with Image.open(sys.argv[1]) as opened:
        image = np.asarray(opened.convert("RGB"))
    print(image.shape[0], image.shape[1], round(float(image.mean()), 1),
          (kib("VmHWM") - before) // 1024)
""")


def test_a_huge_jpeg_decodes_at_a_reduced_scale_in_bounded_memory(tmp_path):
  path = str(tmp_path / "panorama.jpg")
  rows, columns = np.arange(4000, dtype=np.uint16), np.arange(6000, dtype=np.uint16)
  squares = ((rows[:, None] // 40 + columns[None, :] // 40) % 2).astype(np.uint8)
  # 24 million pixels (a checkerboard, 1 MB as JPEG): decoded at 1/2 scale.
  Image.fromarray(squares * 200 + 20).save(path, quality=90)
  del squares

  def decode(how):
    result = subprocess.run(
      [sys.executable, "-c", PEAK_MEMORY, path, how],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    )
    height, width, mean, grown_mib = result.stdout.split()
    return int(height), int(width), float(mean), int(grown_mib)

  height, width, mean, grown_mib = decode("pipeline")
  full_height, full_width, full_mean, full_grown_mib = decode("full")
  assert (height, width) == (2000, 3000) and (full_height, full_width) == (4000, 6000)
  assert abs(mean - full_mean) < 2  # the same picture, at half the resolution
  # The full decode holds the grey image, its 4-byte RGB copy in PIL and the 3-byte one in
  # NumPy (192 MiB of pixels; 252 MiB measured); the reduced one a quarter (57 MiB).
  assert full_grown_mib >= 190
  assert grown_mib < full_grown_mib / 3, (grown_mib, full_grown_mib)


def test_the_header_check_finds_files_cut_short_without_decoding_them(tmp_path):
  write_image(str(tmp_path / "good.jpg"), size=(64, 48))
  write_image(str(tmp_path / "good.png"), size=(64, 48), fmt="PNG")
  for name in ("good.jpg", "good.png"):
    assert header_problem(str(tmp_path / name)) is None
  for name in ("tail.jpg", "tail.png", "head.jpg"):
    write_image(str(tmp_path / name), size=(64, 48), fmt="PNG" if name.endswith("png") else "JPEG")
  cut_short(str(tmp_path / "tail.jpg"), -40)  # the header is intact, the scan is not
  cut_short(str(tmp_path / "tail.png"), -200)
  cut_short(str(tmp_path / "head.jpg"), 100)
  (tmp_path / "text.jpg").write_text("not an image")
  assert header_problem(str(tmp_path / "tail.jpg")) == (
    f"{tmp_path / 'tail.jpg'}: the JPEG file is cut short (no end marker)"
  )
  assert header_problem(str(tmp_path / "tail.png")) == (
    f"{tmp_path / 'tail.png'}: the PNG file is cut short (no end marker)"
  )
  for name in ("head.jpg", "text.jpg", "missing.jpg"):
    assert header_problem(str(tmp_path / name)).startswith(
      f"{tmp_path / name}: cannot read the image header ("
    ), name
  # What the header check flags, decoding refuses too.
  for name in ("tail.jpg", "tail.png", "head.jpg", "text.jpg"):
    with pytest.raises(CorruptImageError):
      decode_image(str(tmp_path / name))


# ------------------------------------------------------------------------- COCO subsets


def test_coco_subset_ids_restrict_the_split_in_the_files_order(tmp_path, caplog):
  make_coco(str(tmp_path), "train", COCO_CATEGORIES, COCO_IMAGES, COCO_ANNOTATIONS)
  ids_file = str(tmp_path / "COCO_Subset_4_Ids.csv")
  # The reference's files are numpy.savetxt output: 4.200000000000000000e+01 per line.
  np.savetxt(ids_file, np.array([42, 5, 9, 777, 61], float), delimiter=",")
  with caplog.at_level(logging.WARNING):
    source = get_source("coco2014", "train", str(tmp_path), subset_ids=ids_file)
  # 9 has no object (not in the split) and 777 is no image: reported, left out.
  assert [source.annotations(i)["id"] for i in range(len(source))] == ["42", "5", "61"]
  np.testing.assert_array_equal(
    [source.annotations(i)["labels"] for i in range(3)], [[0, 1], [1, 0], [1, 0]]
  )
  assert source[0]["image"].shape == (16, 20, 3)
  assert "2 of its 5 image ids are not images of coco2014 train" in caplog.text
  assert "[9, 777]" in caplog.text
  whole = get_source("coco2014", "train", str(tmp_path))
  assert [whole.annotations(i)["id"] for i in range(len(whole))] == ["5", "17", "42", "61"]


def test_coco_subset_file_errors_name_the_file_and_line(tmp_path):
  make_coco(str(tmp_path), "train", COCO_CATEGORIES, COCO_IMAGES, COCO_ANNOTATIONS)
  missing = str(tmp_path / "nowhere.csv")
  with pytest.raises(FileNotFoundError, match=rf"data.subset_ids: '{missing}' does not exist"):
    get_source("coco2014", "train", str(tmp_path), subset_ids=missing)
  cases = {
    "1.700000000000000000e+01\n\n4.25e+01\n": r"line 3: expected one COCO image id",
    "5\nseventeen\n": r"line 2: expected one COCO image id .*'seventeen'",
    "5,17\n": r"line 1: expected one COCO image id",
    "5\n17\n5.0\n": r"line 3: expected each image id once \(this one is also on line 1\)",
  }
  for text, message in cases.items():
    (tmp_path / "ids.csv").write_text(text)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'ids.csv'}, {message}"):
      get_source("coco2014", "train", str(tmp_path), subset_ids=str(tmp_path / "ids.csv"))
  (tmp_path / "ids.csv").write_text("9\n1000\n")
  with pytest.raises(ValueError, match="none of its 2 image ids is an image of coco2014 train"):
    get_source("coco2014", "train", str(tmp_path), subset_ids=str(tmp_path / "ids.csv"))
  with pytest.raises(ValueError, match="dataset 'voc2007' has no option 'subset_ids'"):
    get_source("voc2007", "test", str(tmp_path), subset_ids=str(tmp_path / "ids.csv"))


# -------------------------------------------------------------- the reference's X-ray14


def test_chestxray14_reference_protocol_drops_no_finding_then_keeps_the_first_fraction(tmp_path):
  names = list(XRAY_ENTRIES)
  train, test = names[:8], names[8:][::-1]  # list order is kept, whatever it is
  make_chestxray(str(tmp_path), XRAY_ENTRIES, train, test)

  def ids(split, **options):
    source = get_source("chestxray14", split, str(tmp_path), **options)
    return [source.annotations(i)["id"] for i in range(len(source))]

  assert ids("train_val") == train  # defaults: the official list whole
  with_findings = [n for n in train if XRAY_ENTRIES[n] != "No Finding"]
  assert ids("train_val", drop_no_finding=True) == with_findings  # 5 of 8
  # The reference's int(0.1 * n): 5 -> 0 would be empty here, so 0.5 -> int(2.5) = 2.
  assert ids("train_val", drop_no_finding=True, fraction=0.5) == with_findings[:2]
  assert ids("train_val", fraction=0.5) == train[:4]
  assert ids("test", drop_no_finding=True) == ["00000010_000.png", "00000008_000.png"]
  with pytest.raises(ValueError, match="chestxray14 train_val .* has no images"):
    ids("train_val", drop_no_finding=True, fraction=0.1)
  with pytest.raises(ValueError, match="fraction=1.5; expected a fraction in"):
    ids("train_val", fraction=1.5)
  source = get_source("chestxray14", "train_val", str(tmp_path), drop_no_finding=True)
  assert all(source.annotations(i)["labels"].any() for i in range(len(source)))
  assert chestxray14.CLASS_NAMES.index("Mass") == 4
  np.testing.assert_array_equal(np.flatnonzero(source.annotations(1)["labels"]), [2, 4])
