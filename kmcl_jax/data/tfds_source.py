"""VOC 2007 and MS-COCO 2014 from TensorFlow Datasets' random-access `data_source`.

Names `tfds:voc/2007` and `tfds:coco/2014`; ROOT, when given, is the TFDS data_dir. The
datasets must already be prepared there (nothing is downloaded at run time). Splits keep
the local sources' names: VOC `trainval` = TFDS `train+validation`, `test`; COCO `train`,
`val` = TFDS `validation`. VOC difficult entries are `labels` minus `labels_no_difficult`
(positive for training, ignored by AP). COCO images without objects are dropped.
TFDS's COCO builder imports TensorFlow; VOC's does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

SPLITS = {
  "voc/2007": {"trainval": "train+validation", "test": "test"},
  "coco/2014": {"train": "train", "val": "validation"},
}


def voc_record(example: dict, num_classes: int) -> dict:
  labels = np.zeros(num_classes, np.float32)
  labels[np.asarray(example["labels"], np.int64)] = 1.0
  ignore = labels > 0
  ignore[np.asarray(example["labels_no_difficult"], np.int64)] = False
  return {"labels": labels, "ignore": ignore, "id": _text(example["image/filename"])}


def coco_record(example: dict, num_classes: int) -> dict:
  labels = np.zeros(num_classes, np.float32)
  labels[np.asarray(example["objects"]["label"], np.int64)] = 1.0
  return {
    "labels": labels,
    "ignore": np.zeros(num_classes, bool),
    "id": str(int(example["image/id"])),
  }


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _rgb(image: Any) -> np.ndarray:
  image = np.asarray(image, np.uint8)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """grain random-access source over a TFDS data_source, restricted to `rows`."""

  dataset: str
  split: str
  data: Any
  rows: Sequence[int]
  class_names: Sequence[str]

  @property
  def name(self) -> str:
    return f"tfds:{self.dataset} {self.split}"

  def __len__(self) -> int:
    return len(self.rows)

  def annotations(self, index: int) -> dict:
    return self._record(self.data[self.rows[index]])

  def __getitem__(self, index: int) -> dict:
    example = self.data[self.rows[index]]
    return {"image": _rgb(example["image"]), **self._record(example)}

  def _record(self, example: dict) -> dict:
    convert = voc_record if self.dataset == "voc/2007" else coco_record
    return convert(example, len(self.class_names))


def tfds_source(dataset: str, split: str, root: str | None) -> TfdsSource:
  import tensorflow_datasets as tfds

  if dataset not in SPLITS:
    raise ValueError(
      f"tfds:{dataset}: unsupported; expected one of {['tfds:' + d for d in SPLITS]}."
    )
  if split not in SPLITS[dataset]:
    raise ValueError(
      f"tfds:{dataset}: unknown split {split!r}; expected one of {tuple(SPLITS[dataset])}."
    )
  tfds_split = SPLITS[dataset][split]
  data = tfds.data_source(dataset, split=tfds_split, data_dir=root, download=False)
  features = data.dataset_info.features
  if dataset == "voc/2007":
    class_names = features["labels"].feature.names
    rows = list(range(len(data)))
  else:
    class_names = features["objects"]["label"].names
    rows = rows_with_objects(
      tfds.data_source(
        dataset,
        split=tfds_split,
        data_dir=root,
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
      )
    )
  if not rows:
    raise ValueError(f"tfds:{dataset}: split {split!r} ({tfds_split}) has no images.")
  return TfdsSource(dataset, split, data, rows, class_names)


def rows_with_objects(data: Sequence[dict]) -> list[int]:
  """Indices of the COCO examples with at least one object (images are not decoded)."""
  return [i for i in range(len(data)) if len(data[i]["objects"]["label"])]
