"""Records, image decoding and the random-access source shared by every file-based dataset.

A record is a dict:
  image:  uint8 (H, W, 3), RGB whatever the file holds (grayscale, CMYK, RGBA, palette,
          16-bit, PNG or JPEG).
  labels: float32 (K,) in {0, 1}; the training target.
  ignore: bool (K,); entries left out of AP (VOC "difficult"), all False elsewhere.
  id:     str; the dataset's own name for the image.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image


class CorruptImageError(OSError):
  """An image file that cannot be decoded; the message starts with its path."""


def decode_image(path: str) -> np.ndarray:
  """Reads an image file into uint8 (H, W, 3) RGB; raises CorruptImageError naming `path`."""
  try:
    with Image.open(path) as image:
      return to_rgb_array(image)
  except (OSError, ValueError, SyntaxError) as error:
    raise CorruptImageError(f"{path}: cannot decode the image ({error}).") from error


def to_rgb_array(image: Image.Image) -> np.ndarray:
  """A PIL image of any mode as uint8 (H, W, 3) RGB (decodes it fully)."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit scans (some X-ray PNGs): keep the top 8 bits rather than clip at 255.
    depth = 16 if image.mode.startswith("I;16") else 32
    values = np.asarray(image, dtype=np.uint32) >> (depth - 8)
    image = Image.fromarray(values.astype(np.uint8))
  elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    # Transparent pixels become white, as a viewer shows them, not their hidden colour.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, rgba)
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def require_directory(path: str, dataset: str, layout: str) -> str:
  """Returns `path` if it is a directory, else raises naming it and the layout expected."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{dataset}: dataset folder {path!r} does not exist; expected {layout}.")
  return path


def require_file(path: str, dataset: str, layout: str) -> str:
  """Returns `path` if it is a file, else raises naming it and the layout expected."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{dataset}: annotation file {path!r} does not exist; expected {layout}.")
  return path


@dataclasses.dataclass(frozen=True)
class ImageFileSource:
  """A grain random-access source over image files with multilabel targets.

  Attributes:
    paths: N image file paths.
    labels: float32 (N, K) in {0, 1}.
    ignore: bool (N, K).
    ids: N image ids.
    class_names: K class names, in label order.
    name: the dataset and split, for messages.
  """
  paths: Sequence[str]
  labels: np.ndarray
  ignore: np.ndarray
  ids: Sequence[str]
  class_names: Sequence[str]
  name: str

  def __post_init__(self):
    if len(self.paths) == 0:
      raise ValueError(f"{self.name}: the split has no images.")
    n, k = self.labels.shape
    if not (len(self.paths) == len(self.ids) == n and self.ignore.shape == (n, k)
            and len(self.class_names) == k):
      raise ValueError(f"{self.name}: paths, ids, labels {self.labels.shape}, ignore "
                       f"{self.ignore.shape} and {len(self.class_names)} class names disagree.")

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    return {"image": decode_image(self.paths[index]), **self.annotations(index)}

  def annotations(self, index: int) -> dict:
    """The record without its image (no file is read)."""
    return {"labels": self.labels[index], "ignore": self.ignore[index], "id": self.ids[index]}


def multi_hot(label_lists: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
  """float32 (N, K) with ones at each row's class indices."""
  labels = np.zeros((len(label_lists), num_classes), np.float32)
  for row, classes in enumerate(label_lists):
    labels[row, list(classes)] = 1.0
  return labels


def parse_error(path: str, line_number: int, line: str, expected: str) -> ValueError:
  """The error for a malformed annotation line: file, 1-based line number, what was expected."""
  return ValueError(f"{path}, line {line_number}: expected {expected}, got {line.rstrip()!r}.")
