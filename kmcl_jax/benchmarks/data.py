r"""Images/s of the training input pipeline: per stage and per core, and grain vs a torch
DataLoader doing the same work.

  python -m kmcl_jax.benchmarks.data                      # 224 px, 0, 1 and 2 workers
  python -m kmcl_jax.benchmarks.data --image_size=448 --workers=   # stages only
  python -m kmcl_jax.benchmarks.data --workers=0,4,8 --images=2048
  python -m kmcl_jax.benchmarks.data --workers= --header_files=40000  # + the header check

Stages (--stages): one core, no threads, the host path's own functions one after the
other on every image (decode, squish resize, Cutout, RandAugment, to an array, batching,
the copy into shared memory a worker makes), then the whole pipeline read in the main
thread (grain's MapDataset, no threads or workers) with augment_on=host and =device, and
the device path's JAX augmentation on this machine's CPU. Times are CPU time of this
process (time.process_time), so other load on the machine stretches them less than wall
time; the wall-clock rate is printed beside it.

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

import functools
import os
import tempfile
import time

import grain
import numpy as np
from absl import app, flags
from PIL import Image

from kmcl_jax.benchmarks.inputs import write_photos
from kmcl_jax.data import data_config, pipeline, transforms
from kmcl_jax.data.image_files import ImageFileSource, check_image_headers, decode_image, read_rgb

_IMAGES = flags.DEFINE_integer("images", 512, "JPEG files to write and read.")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per batch.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output side in pixels.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts to time.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Timed batches per run.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed batches first.")
_READ_THREADS = flags.DEFINE_integer("read_threads", 2, "grain reader threads per host.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating runs of each loader (median).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time a torch DataLoader when torch imports.")
_STAGES = flags.DEFINE_bool("stages", True, "Time each stage and the whole path on one core.")
_DEVICE = flags.DEFINE_bool(
  "device",
  True,
  "With --stages, also time the JAX augmentation "
  "(augment_on=device) on this machine's default device.",
)
_HEADER_FILES = flags.DEFINE_integer(
  "header_files",
  0,
  "Also write this many small JPEGs and time the start-up header check over them (0: skip).",
)


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
    source,
    seed=0,
    global_batch=_BATCH.value,
    image_size=_IMAGE_SIZE.value,
    cutout_factor=0.5,
    augment="randaugment",
    process_index=0,
    process_count=1,
    worker_count=workers,
    read_threads=_READ_THREADS.value,
  )
  return images_per_second(dataset, _BATCH.value)


class TorchPhotos:
  """A torch map-style dataset over the same files and the same transform functions."""

  def __init__(self, source: ImageFileSource, image_size: int):
    self.source, self.image_size = source, image_size

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    rng = np.random.default_rng([0, index])
    image = transforms.train_image(
      decode_image(self.source.paths[index]),
      rng,
      image_size=self.image_size,
      cutout_factor=0.5,
      augment="randaugment",
    )
    return image, self.source.labels[index]


def torch_rate(source: ImageFileSource, workers: int) -> float:
  import torch

  loader = torch.utils.data.DataLoader(
    TorchPhotos(source, _IMAGE_SIZE.value),
    batch_size=_BATCH.value,
    shuffle=True,
    drop_last=True,
    num_workers=workers,
    persistent_workers=workers > 0,
  )

  def forever():
    while True:
      yield from loader

  return images_per_second(forever(), _BATCH.value)


def cpu_and_wall(fn, count: int) -> tuple[float, float]:
  """(CPU seconds, wall seconds) of `count` calls fn(i), after one untimed call."""
  fn(0)
  cpu, wall = time.process_time(), time.perf_counter()
  for i in range(count):
    fn(i)
  return time.process_time() - cpu, time.perf_counter() - wall


def stage_times(source: ImageFileSource, image_size: int) -> dict[str, float]:
  """CPU ms per image of each stage of the host path, in order. Each image goes through
  every stage before the next (cache-warm, as in the pipeline), each stage timed with
  this thread's CPU clock."""
  stages = (
    ("decode (read, decode to RGB)", lambda i, image, rng: read_rgb(source.paths[i])),
    ("squish resize", lambda i, image, rng: transforms.squish_resize(image, image_size)),
    ("Cutout", lambda i, image, rng: transforms.draw_cutout(image, rng)),
    ("RandAugment", lambda i, image, rng: transforms.rand_augment(image, rng)),
    ("to uint8 array", lambda i, image, rng: transforms.as_array(image)),
  )
  times = dict.fromkeys([name for name, _ in stages], 0.0)
  arrays = []
  for i in range(len(source)):
    image, rng = None, np.random.default_rng([0, i])
    for name, stage in stages:
      start = time.thread_time()
      image = stage(i, image, rng)
      times[name] += time.thread_time() - start
    arrays.append(image)
  times = {name: seconds / len(source) * 1e3 for name, seconds in times.items()}
  records = [{"image": image, **source.annotations(i)} for i, image in enumerate(arrays)]
  batch = _BATCH.value
  cpu, _ = cpu_and_wall(lambda _: pipeline.stack(records[:batch], pipeline.TRAIN_FIELDS), 20)
  times["batching (stack)"] = cpu / (20 * batch) * 1e3
  stacked = pipeline.stack(records[:batch], pipeline.TRAIN_FIELDS)
  shared = {name: np.empty_like(value) for name, value in stacked.items()}
  cpu, _ = cpu_and_wall(lambda _: [np.copyto(shared[k], v) for k, v in stacked.items()], 50)
  times["copy into shared memory (workers)"] = cpu / (50 * batch) * 1e3
  return times


def whole_path_rate(
  source: ImageFileSource, image_size: int, augment_on: str
) -> tuple[float, float]:
  """(images per CPU-second, images per wall-second) of the training pipeline's batches
  read in this thread (grain's MapDataset: no reader threads, no workers)."""
  ds = grain.MapDataset.source(pipeline.DecodedRecords(source, False)).shuffle(0).repeat()
  ds = ds.random_map(
    functools.partial(
      pipeline.augment_record,
      image_size=image_size,
      cutout_factor=0.5,
      augment="randaugment",
      augment_on=augment_on,
    ),
    seed=0,
  )
  ds = pipeline.HostRows(ds, 0, 1, _BATCH.value).batch(
    _BATCH.value,
    drop_remainder=True,
    batch_fn=functools.partial(pipeline.stack, fields=pipeline.TRAIN_FIELDS),
  )
  cpu, wall = cpu_and_wall(lambda b: ds[b + 1], _BATCHES.value)
  images = _BATCHES.value * _BATCH.value
  return images / cpu, images / wall


def device_augment_rate(image_size: int) -> tuple[float, float, str]:
  """(images per CPU-second, per wall-second, device) of device_augment.augment_batch
  under jit on this machine's default JAX device, steady state."""
  import jax

  from kmcl_jax.data import device_augment

  images = jax.device_put(
    np.random.default_rng(0).integers(0, 256, (_BATCH.value, image_size, image_size, 3), np.uint8)
  )
  augment = jax.jit(
    lambda images, step: device_augment.augment_batch(images, device_augment.step_key(0, step))
  )
  cpu, wall = cpu_and_wall(lambda step: augment(images, step).block_until_ready(), 5)
  return 5 * _BATCH.value / cpu, 5 * _BATCH.value / wall, str(jax.devices()[0])


def print_stages(source: ImageFileSource) -> None:
  size = _IMAGE_SIZE.value
  print(f"Stages at {size} px, one core (CPU ms per image, {len(source)} images):")
  times = stage_times(source, size)
  for name, ms in times.items():
    print(f"  {name:<36} {ms:7.3f} ms")
  total = sum(times.values())
  print(f"  {'sum':<36} {total:7.3f} ms = {1e3 / total:6.1f} img/s per core")
  for augment_on in data_config.AUGMENT_ON:
    per_cpu, per_wall = whole_path_rate(source, size, augment_on)
    print(
      f"Whole path, augment_on={augment_on}, read in one thread: {per_cpu:6.1f} img/s per "
      f"core ({per_wall:.1f} img/s wall)"
    )
  if _DEVICE.value:
    per_cpu, per_wall, device = device_augment_rate(size)
    print(
      f"Device augmentation (Cutout + RandAugment in JAX) on {device}: {per_wall:6.1f} img/s "
      f"wall, {per_cpu:.1f} img/s per CPU-second"
    )


def print_header_check(folder: str, count: int) -> None:
  """Writes `count` small JPEGs and times `check_image_headers` over them."""
  rng = np.random.default_rng(1)
  paths = []
  for i in range(count):
    paths.append(os.path.join(folder, f"h{i:06d}.jpg"))
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(paths[-1], quality=90)
  labels = np.zeros((count, 1), np.float32)
  source = ImageFileSource(
    paths=paths,
    labels=labels,
    ignore=labels > 0,
    ids=[str(i) for i in range(count)],
    class_names=["x"],
    name="headers",
  )
  for threads in (1, _READ_THREADS.value, 8):
    start = time.perf_counter()
    check_image_headers(source, skip_corrupt=False, threads=threads)
    seconds = time.perf_counter() - start
    print(
      f"Header check, {count} files (page cache warm), {threads} threads: {seconds:.2f} s = "
      f"{count / seconds:,.0f} images/s"
    )


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
    print(
      f"{len(source)} JPEGs 500x375 -> {_IMAGE_SIZE.value} px, batch {_BATCH.value}, "
      f"{_BATCHES.value} timed batches ({needed} images incl. warm-up), "
      f"{os.cpu_count()} CPUs, grain reader threads {_READ_THREADS.value}"
    )
    if _STAGES.value:
      print_stages(source)
    if _HEADER_FILES.value:
      print_header_check(folder, _HEADER_FILES.value)
    if _WORKERS.value:
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
