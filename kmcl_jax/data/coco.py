"""MS-COCO 2014 from local instance annotations.

Layout (ROOT):
  annotations/instances_train2014.json, annotations/instances_val2014.json
  train2014/<file_name>, val2014/<file_name>     (file names as in the json)
Splits: `train` (82,081 images with at least one object), `val` (40,137). Images without
annotations are dropped, as in the reference. Classes are the 80 categories in id order.
"""

from __future__ import annotations

import json
import os

import numpy as np

from kmcl_jax.data.image_files import (
  ImageFileSource,
  multi_hot,
  require_directory,
  require_file,
)

SPLITS = ("train", "val")
LAYOUT = ("annotations/instances_{train,val}2014.json and the image folders train2014/, "
          "val2014/ under it")


def read_instances(path: str) -> tuple[list[str], list[int], list[str], list[list[int]]]:
  """(class names, image ids, file names, class indices per image) of an instances json.

  Only images with at least one annotation are kept, sorted by image id.
  """
  try:
    with open(path) as f:
      data = json.load(f)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index_of_category = {c["id"]: i for i, c in enumerate(categories)}
    file_names = {image["id"]: image["file_name"] for image in data["images"]}
    classes_of_image: dict[int, set[int]] = {}
    for annotation in data["annotations"]:
      classes_of_image.setdefault(annotation["image_id"], set()).add(
          index_of_category[annotation["category_id"]])
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}).") from error
  except (KeyError, TypeError) as error:
    raise ValueError(f"{path}: expected COCO instances with 'images', 'annotations' and "
                     f"'categories' (missing or unknown {error}).") from error
  image_ids = sorted(classes_of_image)
  missing = [i for i in image_ids if i not in file_names]
  if missing:
    raise ValueError(f"{path}: annotations refer to image id {missing[0]}, which 'images' lacks.")
  return ([c["name"] for c in categories], image_ids, [file_names[i] for i in image_ids],
          [sorted(classes_of_image[i]) for i in image_ids])


def coco2014_source(split: str, root: str) -> ImageFileSource:
  if split not in SPLITS:
    raise ValueError(f"coco2014: unknown split {split!r}; expected one of {SPLITS}.")
  require_directory(root, "coco2014", LAYOUT)
  names, image_ids, file_names, classes = read_instances(require_file(
      os.path.join(root, "annotations", f"instances_{split}2014.json"), "coco2014", LAYOUT))
  images = require_directory(os.path.join(root, f"{split}2014"), "coco2014", LAYOUT)
  labels = multi_hot(classes, len(names))
  return ImageFileSource(
      paths=[os.path.join(images, name) for name in file_names], labels=labels,
      ignore=np.zeros_like(labels, bool), ids=[str(i) for i in image_ids],
      class_names=names, name=f"coco2014 {split} at {root}")
