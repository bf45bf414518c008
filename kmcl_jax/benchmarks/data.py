r"""Images/s of the training input pipeline: grain vs a torch DataLoader, same work.

  python -m kmcl_jax.benchmarks.data                      # 224 px, 0, 1 and 2 workers
  python -m kmcl_jax.benchmarks.data --workers=0,4,8 --images=2048

Writes --images JPEG files the size of VOC photos (500 x 375) into a temporary folder,
then times the training pipeline (decode, squish resize, Cutout, RandAugment, batch) in
steady state: the first --warmup batches (worker start-up) are not timed. The torch side
runs the same decode and transform functions in a DataLoader (shuffle, drop_last), so
the comparison is of the loaders, not of the image code. Both use uint8 batches. Each
loader runs --repeats times, alternating, and the median is shown. grain's --read_threads
are per host (split over its workers); with 0 workers they overlap decoding in-process,
which torch's DataLoader does not do.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from kmcl_jax.data import pipeline, transforms
from kmcl_jax.data.image_files import ImageFileSource, decode_image

_IMAGES = flags.DEFINE_integer("images", 512, "JPEG files to write and read.")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per batch.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output side in pixels.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts to time.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Timed batches per run.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed batches first.")
_READ_THREADS = flags.DEFINE_integer("read_threads", 2, "grain reader threads per host.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating runs of each loader (median).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time a torch DataLoader when torch imports.")


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
  return ImageFileSource(paths=paths, labels=labels, ignore=np.zeros_like(labels, bool),
                         ids=[str(i) for i in range(count)], class_names=[str(k) for k in range(20)],
                         name="benchmark photos")


def images_per_second(batches, batch_size: int) -> float:
  iterator = iter(batches)
  for _ in range(_WARMUP.value):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(iterator)
  rate = _BATCHES.value * batch_size / (time.perf_counter() - start)
  getattr(iterator, "close", lambda: None)()
  return rate


def grain_rate(source: ImageFileSource, workers: int) -> float:
  dataset = pipeline.train_dataset(
      source, seed=0, global_batch=_BATCH.value, image_size=_IMAGE_SIZE.value,
      cutout_factor=0.5, augment="randaugment", process_index=0, process_count=1,
      worker_count=workers, read_threads=_READ_THREADS.value)
  return images_per_second(dataset, _BATCH.value)


class TorchPhotos:
  """A torch map-style dataset over the same files and the same transform functions."""

  def __init__(self, source: ImageFileSource, image_size: int):
    self.source, self.image_size = source, image_size

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    rng = np.random.default_rng([0, index])
    image = transforms.train_image(decode_image(self.source.paths[index]), rng,
                                   image_size=self.image_size, cutout_factor=0.5,
                                   augment="randaugment")
    return image, self.source.labels[index]


def torch_rate(source: ImageFileSource, workers: int) -> float:
  import torch
  loader = torch.utils.data.DataLoader(
      TorchPhotos(source, _IMAGE_SIZE.value), batch_size=_BATCH.value, shuffle=True,
      drop_last=True, num_workers=workers, persistent_workers=workers > 0)

  def forever():
    while True:
      yield from loader

  return images_per_second(forever(), _BATCH.value)


def main(argv):
  del argv
  needed = (_WARMUP.value + _BATCHES.value) * _BATCH.value
  if _IMAGES.value < _BATCH.value:
    raise app.UsageError(f"--images={_IMAGES.value} must be at least --batch={_BATCH.value}.")
  try:
    import torch
    torch.set_num_threads(1)
  except ImportError:
    torch = None
  with tempfile.TemporaryDirectory() as folder:
    source = write_photos(folder, _IMAGES.value)
    print(f"{len(source)} JPEGs 500x375 -> {_IMAGE_SIZE.value} px, batch {_BATCH.value}, "
          f"{_BATCHES.value} timed batches ({needed} images incl. warm-up), "
          f"{os.cpu_count()} CPUs, grain reader threads {_READ_THREADS.value}")
    print(f"{'workers':>7} {'grain img/s':>12} {'torch img/s':>12} {'ratio':>6}")
    for workers in map(int, _WORKERS.value):
      # Alternate the two loaders so that drifting machine load hits both alike.
      ours, theirs = [], []
      for _ in range(_REPEATS.value):
        ours.append(grain_rate(source, workers))
        if torch is not None and _TORCH.value:
          theirs.append(torch_rate(source, workers))
      ours, theirs = np.median(ours), np.median(theirs) if theirs else float("nan")
      print(f"{workers:>7} {ours:>12.1f} {theirs:>12.1f} {ours / theirs:>6.2f}")


if __name__ == "__main__":
  app.run(main)
