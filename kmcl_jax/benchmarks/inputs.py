"""Inputs the benchmarks and `kmcl_jax.compare` make: random training batches, folders
of VOC-sized JPEG photos and whole VOC-layout datasets of them (no absl flags here:
flag-defining modules import it)."""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from PIL import Image

from kmcl_jax.data.image_files import ImageFileSource
from kmcl_jax.data.voc import CLASS_NAMES


def random_batch(batch: int, image_size: int, classes: int, seed: int = 0) -> dict:
  """A host batch with the fields and dtypes of the training pipeline's
  (`pipeline.TRAIN_FIELDS`): uint8 images (B, S, S, 3), float32 binary labels (B, K) with
  at least one label per row, no ignored labels (bool (B, K)) and no corrupt images
  ("skipped", int32 (B,))."""
  rng = np.random.default_rng(seed)
  labels = rng.random((batch, classes)) < 2.0 / classes
  labels[np.arange(batch), rng.integers(0, classes, batch)] = True
  return {
    "image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
    "labels": labels.astype(np.float32),
    "ignore": np.zeros((batch, classes), bool),
    "skipped": np.zeros((batch,), np.int32),
  }


def _photo(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """A 375 x 500 RGB uint8 smooth colour field with noise (photo-like compression)."""
  phase = rng.uniform(0, 6, size=3)
  field = 127 + 100 * np.sin(x[..., None] * (1 + phase) + y[..., None] * phase)
  return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


def _write_photos(paths: list[str], seed: int) -> None:
  """Photo i from the Generator seeded by (seed, i); written by a thread pool (PIL's
  encoder releases the GIL), so hundreds take seconds on a many-core host."""
  y, x = np.mgrid[0:375, 0:500] / 100.0

  def write(i: int) -> None:
    Image.fromarray(_photo(np.random.default_rng((seed, i)), y, x)).save(paths[i], quality=90)

  with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
    list(pool.map(write, range(len(paths))))


def write_photos(folder: str, count: int) -> ImageFileSource:
  """`count` 500 x 375 JPEGs (VOC's usual size) with random labels over 20 classes."""
  paths = [os.path.join(folder, f"{i:06d}.jpg") for i in range(count)]
  _write_photos(paths, seed=0)
  labels = (np.random.default_rng(1).random((count, 20)) < 0.15).astype(np.float32)
  return ImageFileSource(
    paths=paths,
    labels=labels,
    ignore=np.zeros_like(labels, bool),
    ids=[str(i) for i in range(count)],
    class_names=[str(k) for k in range(20)],
    name="benchmark photos",
  )


def write_voc_folder(root: str, trainval: int, test: int, seed: int = 0) -> str:
  """ROOT/VOCdevkit/VOC2007 in VOC's layout (what `data.name="voc2007"` reads) with
  `trainval` + `test` 500 x 375 JPEG photos and random labels: every image has one to
  three of the 20 classes, and about one positive in eight is marked difficult (0).
  Returns ROOT."""
  folder = os.path.join(root, "VOCdevkit", "VOC2007")
  os.makedirs(os.path.join(folder, "ImageSets", "Main"), exist_ok=True)
  os.makedirs(os.path.join(folder, "JPEGImages"), exist_ok=True)
  rng = np.random.default_rng(seed)
  ids = {"trainval": range(trainval), "test": range(trainval, trainval + test)}
  for split, numbers in ids.items():
    raw = np.full((len(numbers), len(CLASS_NAMES)), -1, int)
    for row in raw:
      positives = rng.choice(len(CLASS_NAMES), size=rng.integers(1, 4), replace=False)
      row[positives] = np.where(rng.random(positives.size) < 0.125, 0, 1)
    for k, name in enumerate(CLASS_NAMES):
      lines = [f"{n:06d} {raw[i, k]:2d}\n" for i, n in enumerate(numbers)]
      with open(os.path.join(folder, "ImageSets", "Main", f"{name}_{split}.txt"), "w") as f:
        f.writelines(lines)
    _write_photos(
      [os.path.join(folder, "JPEGImages", f"{n:06d}.jpg") for n in numbers], seed + len(split)
    )
  return root
