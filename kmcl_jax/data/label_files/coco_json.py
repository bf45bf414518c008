"""A COCO-format annotation file, as CVAT, Label Studio and Roboflow export: any category
ids, any file names (paths relative to the images folder). An image's labels are the
categories of its annotations; an image without annotations is kept, with no label (an
exported background image). Categories that share a name are one class."""

from __future__ import annotations

import json

from kmcl_jax.data import coco
from kmcl_jax.data.label_files.rows import LabelFile, LabelRow
from kmcl_jax.data.label_files.text import LabelFileError


def parse(path: str, text: str) -> LabelFile:
  try:
    data = json.loads(text)
  except json.JSONDecodeError as error:
    raise LabelFileError(f"{path}: not valid JSON ({error}).") from None
  names, image_ids, file_names, classes = coco.instances(data, path, keep_unannotated=True)
  rows = tuple(
    LabelRow(
      where=f"image id {image_id}",
      image=file_name,
      positive=tuple(dict.fromkeys(names[k] for k in image_classes)),
    )
    for image_id, file_name, image_classes in zip(image_ids, file_names, classes, strict=True)
  )
  return LabelFile(path, "coco", rows, tuple(dict.fromkeys(names)))
