"""Tiny image files in the datasets' real layouts, shared by the data tests."""

import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

from kmcl_jax.config import defaults
from kmcl_jax.data import voc


def write_image(path, seed=0, size=(20, 16), mode="RGB", fmt="JPEG"):
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
  pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
  Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, fmt)


def write_blank_png(path, width, height):
  """A valid 1-bit black PNG of any size, written row by row: a 20000 x 20000 one is
  about 50 KB and takes no image-sized memory to make."""

  def chunk(kind, data):
    return (
      struct.pack(">I", len(data))
      + kind
      + data
      + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  compressor = zlib.compressobj(9)
  row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
  data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
  with open(path, "wb") as f:
    f.write(
      b"\x89PNG\r\n\x1a\n"
      + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
      + chunk(b"IDAT", data)
      + chunk(b"IEND", b"")
    )


def cut_short(path, keep_bytes):
  """Truncates a file to its first `keep_bytes` bytes (negative: drops that many)."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(keep_bytes if keep_bytes >= 0 else size + keep_bytes)


VOC_TRAINVAL = {  # image id -> {class index: raw label}; every other class is -1.
  "000005": {8: 1, 14: 0},
  "000007": {6: 1},
  "000009": {12: 1, 14: 1, 8: 0},
  "000012": {},
}  # no object of any class
VOC_TEST = {"000001": {11: 1, 14: 1}, "000002": {18: 0}, "000004": {6: 1}}


def make_voc(root, corrupt=None):
  """VOCdevkit/VOC2007 with VOC_TRAINVAL and VOC_TEST; image `corrupt` cut to 200 bytes."""
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
    cut_short(os.path.join(folder, "JPEGImages", f"{corrupt}.jpg"), 200)
  return folder


def voc_image(root, image_id):
  return os.path.join(root, "VOCdevkit", "VOC2007", "JPEGImages", f"{image_id}.jpg")


XRAY_ENTRIES = {
  f"{k:08d}_000.png": findings
  for k, findings in enumerate(
    [
      "Mass",
      "No Finding",
      "Effusion|Mass",
      "No Finding",
      "Hernia",
      "Nodule",
      "No Finding",
      "Edema",
      "Fibrosis",
      "No Finding",
      "Mass",
    ]
  )
}


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


# COCO: image 9 has no object; categories out of id order.
COCO_CATEGORIES = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]
COCO_IMAGES = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg"} for i in (5, 9, 17, 42, 61)]
COCO_ANNOTATIONS = [{"image_id": i, "category_id": 1 if i % 2 else 3} for i in (5, 17, 42, 61)]


def make_coco(root, split, categories, images, annotations):
  """annotations/instances_<split>2014.json and a JPEG per image in <split>2014/."""
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  with open(os.path.join(root, "annotations", f"instances_{split}2014.json"), "w") as f:
    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  for k, image in enumerate(images):
    write_image(os.path.join(root, f"{split}2014", image["file_name"]), k)


def pipeline_config(seed, batch_size, eval_batch_size, **data):
  """The defaults of kmcl_jax.config with these batches and data fields."""
  config = defaults()
  config.seed, config.batch_size, config.eval_batch_size = seed, batch_size, eval_batch_size
  config.data.update(dict(worker_count=0, read_threads=2) | data)
  return config


def demo_config(**data):
  return pipeline_config(
    1, 8, 16, **(dict(name="demo", train_split="train", eval_split="test", image_size=48) | data)
  )


def voc_config(root, **data):
  return pipeline_config(
    0,
    1,
    2,
    **(
      dict(name="voc2007", root=root, train_split="trainval", eval_split="test", image_size=16)
      | data
    ),
  )
