"""PASCAL VOC 2007 classification from a local VOCdevkit folder.

Layout (ROOT is the folder holding `VOCdevkit`, or `VOCdevkit/VOC2007` itself):
  VOCdevkit/VOC2007/ImageSets/Main/{class}_{split}.txt   lines "<image id> <1|0|-1>"
  VOCdevkit/VOC2007/JPEGImages/<image id>.jpg
Splits: `trainval` (5,011 images), `test` (4,952), also `train` and `val`.

Raw labels are 1 positive, 0 difficult, -1 negative. As in the reference, training
treats difficult as positive (label >= 0); `ignore` marks the difficult entries so that
test AP skips them.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from kmcl_jax.data.image_files import (
  ImageFileSource,
  parse_error,
  require_directory,
  require_file,
)

CLASS_NAMES = (
  "aeroplane",
  "bicycle",
  "bird",
  "boat",
  "bottle",
  "bus",
  "car",
  "cat",
  "chair",
  "cow",
  "diningtable",
  "dog",
  "horse",
  "motorbike",
  "person",
  "pottedplant",
  "sheep",
  "sofa",
  "train",
  "tvmonitor",
)
SPLITS = ("trainval", "test", "train", "val")
LAYOUT = (
  "VOCdevkit/VOC2007/ImageSets/Main/<class>_<split>.txt and VOCdevkit/VOC2007/JPEGImages/ "
  "under it (or ImageSets/ and JPEGImages/ directly, for a VOC2007 folder)"
)


def find_voc2007(root: str) -> str:
  """The VOC2007 folder for a root that is either it or a folder holding VOCdevkit."""
  require_directory(root, "voc2007", LAYOUT)
  for candidate in (
    os.path.join(root, "VOCdevkit", "VOC2007"),
    os.path.join(root, "VOC2007"),
    root,
  ):
    if os.path.isdir(os.path.join(candidate, "ImageSets", "Main")):
      return candidate
  raise FileNotFoundError(f"voc2007: no ImageSets/Main folder under {root!r}; expected {LAYOUT}.")


def read_class_file(path: str) -> dict[str, int]:
  """{image id: raw label in {1, 0, -1}} of one ImageSets/Main/<class>_<split>.txt file.
  An id listed again with the same label is merged (with a warning), with another one
  refused."""
  raw, line_of, repeats = {}, {}, 0
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
        raise parse_error(path, line_number, line, "'<image id> <1|0|-1>'")
      image_id, label = fields[0], int(fields[1])
      if image_id in raw and raw[image_id] != label:
        raise parse_error(
          path,
          line_number,
          line,
          f"one label per image (image {image_id!r} has {raw[image_id]} on line "
          f"{line_of[image_id]})",
        )
      repeats += image_id in raw
      raw[image_id], line_of[image_id] = label, line_of.get(image_id, line_number)
  if repeats:
    logging.warning("%s: %d repeated image lines merged (same labels).", path, repeats)
  return raw


def voc2007_source(split: str, root: str) -> ImageFileSource:
  if split not in SPLITS:
    raise ValueError(f"voc2007: unknown split {split!r}; expected one of {SPLITS}.")
  folder = find_voc2007(root)
  raw_by_class = [
    read_class_file(
      require_file(
        os.path.join(folder, "ImageSets", "Main", f"{name}_{split}.txt"), "voc2007", LAYOUT
      )
    )
    for name in CLASS_NAMES
  ]
  ids = sorted(raw_by_class[0])
  for name, raw in zip(CLASS_NAMES, raw_by_class, strict=True):
    if set(raw) != set(ids):
      raise ValueError(
        f"voc2007: ImageSets/Main/{name}_{split}.txt lists other images than "
        f"{CLASS_NAMES[0]}_{split}.txt."
      )
  raw = np.array([[by_class[i] for by_class in raw_by_class] for i in ids], np.int8).reshape(
    len(ids), len(CLASS_NAMES)
  )
  images = require_directory(os.path.join(folder, "JPEGImages"), "voc2007", LAYOUT)
  return ImageFileSource(
    paths=[os.path.join(images, f"{i}.jpg") for i in ids],
    labels=(raw >= 0).astype(np.float32),
    ignore=raw == 0,
    ids=ids,
    class_names=CLASS_NAMES,
    name=f"voc2007 {split} at {root}",
  )
