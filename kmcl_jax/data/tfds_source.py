"""Any TensorFlow Datasets dataset with a multilabel feature, through TFDS's random-access
`data_source`.

Name `tfds:NAME` (`tfds:voc/2007`, `tfds:coco/2014`, `tfds:my_dataset/config:1.0.0`, ...);
ROOT, when given, is the TFDS data_dir. The dataset must already be prepared there in a
random-access format (array_record or parquet: `tfds build NAME --data_dir=ROOT
--file_format=array_record`); nothing is downloaded at run time.

The labels are one feature, `labels_key` (config.data.tfds_labels_key): a
`Sequence(ClassLabel)` at the top level (`labels`, `tags`: KEY) or a ClassLabel of a
sequence of objects (COCO's `objects/label`: KEY/FIELD); when it is empty the one such
feature is taken, a top-level sequence before an objects' one. The class names are the
ClassLabel's. A feature `<KEY>_no_difficult` beside a top-level key (VOC's
`labels_no_difficult`) marks the difficult entries: positive for training, ignored by AP.
Images without any object are dropped when the labels are objects' (COCO's rule);
with a top-level sequence an image without labels is a negative of every class.

Splits are TFDS split expressions (`train`, `train+validation`, `train[:90%]`); VOC 2007
and COCO 2014 also take the local sources' names: VOC `trainval` = `train+validation`,
COCO `val` = `validation`. The labels of a split are read once, without decoding images,
when its source is made. TFDS's COCO builder imports TensorFlow; VOC's does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from kmcl_jax import reporting

SPLIT_ALIASES = {
  "voc/2007": {"trainval": "train+validation"},
  "coco/2014": {"val": "validation"},
}
DEFAULT_LABELS_KEYS = {"voc/2007": "labels", "coco/2014": "objects/label"}
# A record's id: the first of these features it has (COCO's numeric id before its file
# name), else its row in the TFDS split.
ID_KEYS = ("image/id", "image/filename", "image_id", "id", "filename", "file_name")
DIFFICULT_SUFFIX = "_no_difficult"


def labels_keys(features) -> tuple[list[str], list[str]]:
  """(top-level Sequence(ClassLabel) keys, KEY/FIELD keys of ClassLabels in sequences of
  objects) of a TFDS FeaturesDict."""
  import tensorflow_datasets as tfds

  top, nested = [], []
  for key, feature in features.items():
    if not isinstance(feature, tfds.features.Sequence):
      continue
    inner = feature.feature
    if isinstance(inner, tfds.features.ClassLabel):
      top.append(key)
    elif isinstance(inner, tfds.features.FeaturesDict):
      nested += [
        f"{key}/{field}"
        for field, leaf in inner.items()
        if isinstance(leaf, tfds.features.ClassLabel)
      ]
  return top, nested


def choose_labels_key(dataset: str, features, requested: str) -> str:
  """The labels feature of `dataset`: `requested` if it is one, else the only candidate
  (see the module doc); raises ValueError naming the candidates otherwise."""
  top, nested = labels_keys(features)
  candidates = top + nested
  if requested:
    if requested not in candidates:
      raise ValueError(
        f"config.data.tfds_labels_key={requested!r}: tfds:{dataset} has no such multilabel "
        f"feature; its Sequence(ClassLabel) features are {candidates}."
      )
    return requested
  if dataset in DEFAULT_LABELS_KEYS:
    return DEFAULT_LABELS_KEYS[dataset]
  if len(top) == 1 or (not top and len(nested) == 1):
    return candidates[0]
  if not candidates:
    raise ValueError(
      f"tfds:{dataset} has no multilabel feature (a Sequence(ClassLabel), or a ClassLabel "
      f"in a sequence of objects) among its features {list(features)}."
    )
  raise ValueError(
    f"tfds:{dataset} has several multilabel features {candidates}; choose one with "
    "--config.data.tfds_labels_key=KEY."
  )


def image_key(dataset: str, features) -> str:
  """`image` if the dataset has that Image feature, else its only Image feature."""
  import tensorflow_datasets as tfds

  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  if "image" in images or len(images) == 1:
    return "image" if "image" in images else images[0]
  raise ValueError(
    f"tfds:{dataset}: expected one Image feature (or one named 'image'), found {images}."
  )


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _rgb(image: Any) -> np.ndarray:
  image = np.asarray(image, np.uint8)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


@dataclasses.dataclass(frozen=True)
class SplitLabels:
  """A split's labels, read without decoding its images.

  Attributes:
    rows: the TFDS rows kept, in order (N,).
    labels: bool (N, K).
    ignore: bool (N, K).
    ids: N image ids.
  """

  rows: Sequence[int]
  labels: np.ndarray
  ignore: np.ndarray
  ids: Sequence[str]


def read_split_labels(
  examples: Sequence[dict], labels_key: str, num_classes: int, what: str, difficult: bool
) -> SplitLabels:
  """The labels of every example (images not decoded) under `labels_key` (KEY or
  KEY/FIELD); with `difficult`, KEY minus KEY_no_difficult is ignored; with a KEY/FIELD
  key, examples without objects are dropped."""
  key, _, field = labels_key.partition("/")
  rows, positive, ignored, ids = [], [], [], []
  for row in reporting.progress(
    range(len(examples)), len(examples), f"Reading the labels of {what}"
  ):
    example = examples[row]
    classes = np.asarray(example[key][field] if field else example[key], np.int64)
    if field and not len(classes):
      continue
    rows.append(row)
    positive.append(classes)
    ignored.append(
      np.setdiff1d(classes, np.asarray(example[key + DIFFICULT_SUFFIX], np.int64))
      if difficult
      else classes[:0]
    )
    id_key = next((k for k in ID_KEYS if k in example), None)
    ids.append(_text(example[id_key]) if id_key else str(row))
  labels = np.zeros((len(rows), num_classes), bool)
  ignore = np.zeros((len(rows), num_classes), bool)
  for n, (classes, hard) in enumerate(zip(positive, ignored, strict=True)):
    labels[n, classes] = True
    ignore[n, hard] = True
  return SplitLabels(rows, labels, ignore, ids)


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """grain random-access source over a TFDS data_source, restricted to `split_labels.rows`.

  `labels` (float32 (N, K)) and `ignore` (bool (N, K)) are the whole split's, as an
  ImageFileSource has them."""

  dataset: str
  split: str
  data: Any
  split_labels: SplitLabels
  class_names: Sequence[str]
  image_key: str = "image"

  @property
  def name(self) -> str:
    return f"tfds:{self.dataset} {self.split}"

  @property
  def labels(self) -> np.ndarray:
    return self.split_labels.labels.astype(np.float32)

  @property
  def ignore(self) -> np.ndarray:
    return self.split_labels.ignore

  def __len__(self) -> int:
    return len(self.split_labels.rows)

  def annotations(self, index: int) -> dict:
    """The record without its image (nothing is read)."""
    return {
      "labels": self.split_labels.labels[index].astype(np.float32),
      "ignore": self.split_labels.ignore[index],
      "id": self.split_labels.ids[index],
    }

  def __getitem__(self, index: int) -> dict:
    example = self.data[self.split_labels.rows[index]]
    return {"image": _rgb(example[self.image_key]), **self.annotations(index)}


def prepared_builder(dataset: str, root: str | None):
  """The TFDS builder of `dataset` prepared in data_dir `root` (TFDS's default when None)
  in a random-access format; raises FileNotFoundError or ValueError saying what to do."""
  import tensorflow_datasets as tfds

  where = root or "TFDS's default data_dir"
  build = (
    f"prepare it with `tfds build {dataset} --file_format=array_record"
    f"{f' --data_dir={root}' if root else ''}`"
  )
  try:
    builder = tfds.builder(dataset, data_dir=root or None)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise FileNotFoundError(
      f"tfds:{dataset}: no prepared dataset of that name in {where}; {build} "
      "(or set data.root to the data_dir that holds it)."
    ) from error
  if not builder.is_prepared():
    raise FileNotFoundError(f"tfds:{dataset}: not prepared in {where}; {build}.")
  random_access = tfds.core.file_adapters.FileFormat.with_random_access()
  formats = [builder.info.file_format, *getattr(builder.info, "alternative_file_formats", [])]
  if not any(f in random_access for f in formats):
    raise ValueError(
      f"tfds:{dataset} is prepared in {where} as {builder.info.file_format.value}, which "
      f"has no random access; {build}."
    )
  return builder


def tfds_source(dataset: str, split: str, root: str | None, labels_key: str = "") -> TfdsSource:
  """The TfdsSource of `split` of the prepared TFDS `dataset` (see the module doc)."""
  import tensorflow_datasets as tfds

  builder = prepared_builder(dataset, root)
  features = builder.info.features
  key = choose_labels_key(dataset, features, labels_key)
  images = image_key(dataset, features)
  tfds_split = SPLIT_ALIASES.get(dataset, {}).get(split, split)
  try:
    examples = builder.info.splits[tfds_split].num_examples
  except ValueError as error:
    raise ValueError(
      f"tfds:{dataset}: no split {split!r}; its splits are {sorted(builder.info.splits)} "
      "(TFDS split expressions such as train[:90%] or train+validation also work)."
    ) from error
  top, _, field = key.partition("/")
  label_feature = features[top].feature[field] if field else features[top].feature
  # An empty split is left to the split checks (`split_checks`), as for every source.
  data = builder.as_data_source(split=tfds_split) if examples else []
  split_labels = read_split_labels(
    builder.as_data_source(split=tfds_split, decoders={images: tfds.decode.SkipDecoding()})
    if examples
    else [],
    key,
    label_feature.num_classes,
    f"tfds:{dataset} {split}",
    difficult=not field and key + DIFFICULT_SUFFIX in features,
  )
  return TfdsSource(dataset, split, data, split_labels, tuple(label_feature.names), images)
