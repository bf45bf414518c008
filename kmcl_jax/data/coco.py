"""MS-COCO 2014 from local instance annotations.

Layout (ROOT):
  annotations/instances_train2014.json, annotations/instances_val2014.json
  train2014/<file_name>, val2014/<file_name>     (file names as in the json)
Splits: `train` (82,081 images with at least one object), `val` (40,137). Images without
annotations are dropped, as in the reference. Classes are the 80 categories in id order.

`subset_ids` restricts a split to the images listed in a CSV, the reference's
`COCO_Subset_<N>_Ids.csv` format (numpy.savetxt of the ids: one per line, e.g.
`4.714550000000000000e+05`; plain integers work too; blank lines and `#` comments are
skipped), in the file's order, as the reference's COCO-subset loader indexes them.
Ids that are not images of the split (with objects) are reported and left out.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import logging

from kmcl_jax.data.image_files import (
  ImageFileSource,
  multi_hot,
  parse_error,
  require_directory,
  require_file,
)

SPLITS = ("train", "val")
LAYOUT = (
  "annotations/instances_{train,val}2014.json and the image folders train2014/, val2014/ under it"
)


def read_instances(path: str) -> tuple[list[str], list[int], list[str], list[list[int]]]:
  """(class names, image ids, file names, class indices per image) of an instances json.

  Only images with at least one annotation are kept, sorted by image id.
  """
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}).") from error
  return instances(data, path)


def instances(
  data: dict, path: str, keep_unannotated: bool = False
) -> tuple[list[str], list, list[str], list[list[int]]]:
  """(class names in category id order, image ids, file names, class indices per image)
  of the parsed COCO instances `data` of file `path`, sorted by image id: the images with
  at least one annotation, or every image if `keep_unannotated`."""
  try:
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index_of_category = {c["id"]: i for i, c in enumerate(categories)}
    file_names = {}
    for image in data["images"]:
      if file_names.setdefault(image["id"], image["file_name"]) != image["file_name"]:
        raise ValueError(
          f"{path}: image id {image['id']} is listed twice, as {file_names[image['id']]!r} "
          f"and {image['file_name']!r}; keep one of its entries."
        )
    if len(file_names) < len(data["images"]):
      logging.warning(
        "%s: %d repeated image entries merged (same labels).",
        path,
        len(data["images"]) - len(file_names),
      )
    classes_of_image: dict[int, set[int]] = {}
    for annotation in data["annotations"]:
      classes_of_image.setdefault(annotation["image_id"], set()).add(
        index_of_category[annotation["category_id"]]
      )
  except (KeyError, TypeError) as error:
    raise ValueError(
      f"{path}: expected COCO instances with 'images', 'annotations' and "
      f"'categories' (missing or unknown {error})."
    ) from error
  image_ids = sorted(set(classes_of_image) | (set(file_names) if keep_unannotated else set()))
  missing = [i for i in image_ids if i not in file_names]
  if missing:
    raise ValueError(f"{path}: annotations refer to image id {missing[0]}, which 'images' lacks.")
  return (
    [c["name"] for c in categories],
    image_ids,
    [file_names[i] for i in image_ids],
    [sorted(classes_of_image.get(i, ())) for i in image_ids],
  )


def read_subset_ids(path: str) -> list[int]:
  """The image ids of a COCO subset CSV (see the module docstring), in file order."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"data.subset_ids: {path!r} does not exist; expected a CSV of COCO "
      "image ids, one per line (the reference's COCO_Subset_<N>_Ids.csv)."
    )
  ids, line_of = [], {}
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      text = line.strip()
      if not text or text.startswith("#"):
        continue
      try:
        value = float(text)
      except ValueError:
        value = math.nan
      if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise parse_error(
          path,
          line_number,
          line,
          "one COCO image id per line (an integer "
          "such as 471455 or numpy.savetxt's 4.714550000000000000e+05)",
        )
      if int(value) in line_of:
        raise parse_error(
          path,
          line_number,
          line,
          f"each image id once (this one is also on line {line_of[int(value)]})",
        )
      line_of[int(value)] = line_number
      ids.append(int(value))
  if not ids:
    raise ValueError(f"{path}: no image id; expected one COCO image id per line.")
  return ids


def restrict_to_ids(rows: list[int], subset: list[int], path: str, split: str) -> list[int]:
  """The positions in `rows` (the split's image ids) of the subset's ids, in the subset's
  order; ids the split lacks are logged and left out."""
  position = {image_id: i for i, image_id in enumerate(rows)}
  missing = [i for i in subset if i not in position]
  if len(missing) == len(subset):
    raise ValueError(
      f"{path}: none of its {len(subset)} image ids is an image of coco2014 "
      f"{split} with objects (first: {subset[0]})."
    )
  if missing:
    logging.warning(
      "%s: %d of its %d image ids are not images of coco2014 %s with objects "
      "and are left out: %s%s",
      path,
      len(missing),
      len(subset),
      split,
      missing[:10],
      " ..." if len(missing) > 10 else "",
    )
  return [position[i] for i in subset if i in position]


def coco2014_source(split: str, root: str, subset_ids: str = "") -> ImageFileSource:
  """The split's images with objects; only those listed in the CSV `subset_ids`, if given."""
  if split not in SPLITS:
    raise ValueError(f"coco2014: unknown split {split!r}; expected one of {SPLITS}.")
  require_directory(root, "coco2014", LAYOUT)
  names, image_ids, file_names, classes = read_instances(
    require_file(
      os.path.join(root, "annotations", f"instances_{split}2014.json"), "coco2014", LAYOUT
    )
  )
  images = require_directory(os.path.join(root, f"{split}2014"), "coco2014", LAYOUT)
  rows = list(range(len(image_ids)))
  if subset_ids:
    rows = restrict_to_ids(image_ids, read_subset_ids(subset_ids), subset_ids, split)
  labels = multi_hot([classes[r] for r in rows], len(names))
  return ImageFileSource(
    paths=[os.path.join(images, file_names[r]) for r in rows],
    labels=labels,
    ignore=np.zeros_like(labels, bool),
    ids=[str(image_ids[r]) for r in rows],
    class_names=names,
    name=f"coco2014 {split} at {root}"
    + (f" ({len(rows)} ids of {subset_ids})" if subset_ids else ""),
  )
