"""Two tiny TFDS datasets, prepared for real (array_record) in a data_dir; no TensorFlow.

`tiny_tags`: one multilabel feature, `tags` (Sequence(ClassLabel)); class `fish` has
no positive in `train`. `tiny_voc`: VOC's shape, `labels`, `labels_no_difficult` and
`objects/label` (three candidates, so its labels key must be chosen); its train image 3
has no object.
"""

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

TAGS = ("cat", "dog", "bird", "fish")
TAGS_SPLITS = {  # split -> the tags of each image
  "train": [[0], [0, 1], [1, 2], [2], [0, 2], [1]],
  "test": [[0, 3], [1], [2, 3]],
}
VOC_CLASSES = ("car", "person", "tree")
VOC_TRAIN = [  # (labels, labels_no_difficult, objects' labels)
  ([0, 1], [0], [0, 1]),
  ([2], [2], [2, 2]),
  ([1], [1], [1]),
  ([], [], []),
]


def _image(seed: int) -> Image.Image:
  pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
  return Image.fromarray(pixels)


class TinyTags(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3)),
          "image/filename": tfds.features.Text(),
          "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=TAGS)),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in TAGS_SPLITS}

  def _generate_examples(self, split):
    for k, tags in enumerate(TAGS_SPLITS[split]):
      name = f"{split}-{k}.png"
      yield name, {"image": _image(k), "image/filename": name, "tags": tags}


class TinyVoc(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    label = tfds.features.ClassLabel(names=VOC_CLASSES)
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3)),
          "image/filename": tfds.features.Text(),
          "labels": tfds.features.Sequence(label),
          "labels_no_difficult": tfds.features.Sequence(label),
          "objects": tfds.features.Sequence({"label": label, "area": np.int64}),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for k, (labels, easy, objects) in enumerate(VOC_TRAIN):
      name = f"{k:06d}.jpg"
      yield (
        name,
        {
          "image": _image(10 + k),
          "image/filename": name,
          "labels": labels,
          "labels_no_difficult": easy,
          "objects": [{"label": c, "area": 4} for c in objects],
        },
      )


def prepare(data_dir: str) -> str:
  """Prepares both datasets in `data_dir` and returns it."""
  for builder in (TinyTags, TinyVoc):
    builder(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir
