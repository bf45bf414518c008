"""Inputs the benchmarks and `kmcl_jax.compare` make: random training batches and folders
of VOC-sized JPEG photos (no absl flags here: flag-defining modules import it)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from kmcl_jax.data.image_files import ImageFileSource


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


def write_photos(folder: str, count: int) -> ImageFileSource:
  """`count` 500 x 375 JPEGs of smooth colour fields with noise (photo-like compression)."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:375, 0:500] / 100.0
  paths = []
  for i in range(count):
    phase = rng.uniform(0, 6, size=3)
    field = 127 + 100 * np.sin(x[..., None] * (1 + phase) + y[..., None] * phase)
    pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    paths.append(os.path.join(folder, f"{i:06d}.jpg"))
    Image.fromarray(pixels).save(paths[-1], quality=90)
  labels = (rng.random((count, 20)) < 0.15).astype(np.float32)
  return ImageFileSource(
    paths=paths,
    labels=labels,
    ignore=np.zeros_like(labels, bool),
    ids=[str(i) for i in range(count)],
    class_names=[str(k) for k in range(20)],
    name="benchmark photos",
  )
