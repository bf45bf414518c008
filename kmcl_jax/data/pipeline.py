"""The grain input pipelines: sharded by JAX process, deterministic, checkpointable.

Training (per host):
  source -> shuffle (reshuffled every epoch) -> repeat forever
         -> decode + augment with a Generator seeded by (seed, position in the stream)
         -> this host's rows of every global batch -> batch -> [worker processes]
         -> prefetch thread
Global batch b is elements [b * B, (b + 1) * B) of one stream that every host computes
the same way, and host p holds rows [p * B/P, (p + 1) * B/P) of it, reading only those
images. Batch b is a function of (seed, b) alone, so batches are identical for any
worker count and read_threads and, for any host count, the global batch is the same in
the same order. A resumed run therefore starts its stream at the restored step
(`Datasets.train_from`), not from an iterator state saved by a run with other workers or
hosts: positioning is index arithmetic, as fast at step 10^6 as at step 0.

Evaluation pads the split to whole global batches; `mask` is False on padding (and on
images skipped as corrupt), so every test image counts exactly once over all hosts.

With data.augment_on="device" the training images are only resized here; Cutout and
RandAugment run in the compiled train step (`device_augment`).

Worker processes end with the process that started them, however it ends (`workers`).
grain 0.2.18 reads one absl flag (--grain_enable_multiprocess_worker_profiling) in the
process that starts them, so absl flags must be parsed there: programs run under
`absl.app.run`; a notebook or test calls `absl.flags.FLAGS.mark_as_parsed()` first. Nothing
here touches flags: that is the program's to decide.

Batches are dicts of NumPy arrays: `image` uint8 (b, S, S, 3), `labels` float32 (b, K),
`ignore` bool (b, K), `skipped` int32 (b,) (1 where the row's image was undecodable and
data.skip_corrupt let it through: in training another row of the batch stands in for
it, in evaluation the row is masked); evaluation adds `mask` bool (b,) and `index`
int64 (b,) (the row of the split, -1 on padding).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import logging

from kmcl_jax.data import split_checks, transforms, workers
from kmcl_jax.data.data_config import check_data_config, split_source
from kmcl_jax.data.image_files import (
  CorruptImageError,
  ImageFileSource,
  check_image_files,
  check_image_headers,
)

TRAIN_FIELDS = ("image", "labels", "ignore", "skipped")
EVAL_FIELDS = TRAIN_FIELDS + ("mask", "index")


@dataclasses.dataclass(frozen=True)
class DecodedRecords:
  """Random access to a source's records; with skip_corrupt, an undecodable image gives
  its record with `image` None instead of raising."""

  source: Any
  skip_corrupt: bool

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    try:
      # File sources hand over PIL images: the resize reads them without an array copy.
      if isinstance(self.source, ImageFileSource):
        return self.source.read(index)
      return self.source[index]
    except CorruptImageError as error:
      if not self.skip_corrupt:
        raise
      logging.warning("Skipping an undecodable image: %s", error)
      return {**self.source.annotations(index), "image": None}


@dataclasses.dataclass(frozen=True)
class EvalRecords:
  """Test records resized, padded to `length` (a whole number of global batches)."""

  records: DecodedRecords
  length: int
  image_size: int
  num_classes: int

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict:
    record = self.records[index] if index < len(self.records) else None
    if record is None or record["image"] is None:
      return {
        "image": np.zeros((self.image_size, self.image_size, 3), np.uint8),
        "labels": np.zeros(self.num_classes, np.float32),
        "ignore": np.ones(self.num_classes, bool),
        "mask": False,
        "index": -1 if record is None else index,
        "skipped": int(record is not None),
      }
    return {
      "image": transforms.eval_image(record["image"], self.image_size),
      "labels": record["labels"],
      "ignore": record["ignore"],
      "mask": True,
      "index": index,
      "skipped": 0,
    }


def augment_record(
  record: dict, rng: np.random.Generator, *, augment_on: str = "host", **image_options
) -> dict:
  """The record with its training image: resized and augmented on the host, or only
  resized when the accelerator augments (augment_on="device")."""
  if record["image"] is None:
    return record
  if augment_on == "device":
    return {**record, "image": transforms.eval_image(record["image"], image_options["image_size"])}
  return {**record, "image": transforms.train_image(record["image"], rng, **image_options)}


class HostRows(grain.MapDataset):
  """Host `process_index`'s rows of every global batch of `parent`.

  Element i of this host is parent element (i // b) * b * P + process_index * b + i % b,
  with b = per_host_batch and P = process_count.
  """

  def __init__(
    self, parent: grain.MapDataset, process_index: int, process_count: int, per_host_batch: int
  ):
    super().__init__(parent)
    self._offset = process_index * per_host_batch
    self._batch = per_host_batch
    self._stride = per_host_batch * process_count
    self._length = len(parent) // self._stride * per_host_batch

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._batch)
    return self._parent[batch * self._stride + self._offset + row]

  def __str__(self) -> str:
    return f"HostRows(offset={self._offset}, batch={self._batch}, stride={self._stride})"


class WorkersStartedSafely(grain.IterDataset):
  """`parent` (a ThreadPrefetchIterDataset) whose iterator starts its prefetch thread,
  the one that spawns the worker processes, with SIGTERM blocked: the workers start with
  it blocked and ignore it once running (`workers`), so a SIGTERM to the process group
  never kills a worker, however early it comes."""

  def __iter__(self) -> grain.DatasetIterator:
    iterator = self._parent.__iter__()
    with workers.sigterm_blocked():
      iterator.start_prefetch()
    return iterator

  def __str__(self) -> str:
    return "WorkersStartedSafely"


def stack(records: Sequence[dict], fields: Sequence[str]) -> dict[str, np.ndarray]:
  """One batch of `fields` from records. A record whose image could not be decoded
  (image None) is replaced by the nearest earlier decodable record of the batch and
  flagged in `skipped`, so batch shapes and contents never depend on other batches."""
  usable = [i for i, record in enumerate(records) if record["image"] is not None]
  if not usable:
    raise CorruptImageError(
      f"All {len(records)} images of a batch are undecodable, "
      f"ids {[r['id'] for r in records[:4]]}..."
    )
  stand_in, last = [], usable[0]
  for i, record in enumerate(records):
    last = i if record["image"] is not None else last
    stand_in.append(last)
  batch = {
    name: np.stack([records[j][name] for j in stand_in]) for name in fields if name != "skipped"
  }
  batch["skipped"] = np.array(
    [int(r["image"] is None) or r.get("skipped", 0) for r in records], np.int32
  )
  return batch


def _host_batches(
  ds: grain.MapDataset,
  fields: Sequence[str],
  *,
  process_index: int,
  process_count: int,
  per_host_batch: int,
  worker_count: int,
  read_threads: int,
  start_batch: int = 0,
) -> grain.IterDataset:
  # Batching in the index space (before the workers) makes batch b a function of b
  # alone: worker w builds batches w, w + W, ... and grain interleaves them in order, so
  # any worker count gives the same stream; workers also send whole batches, not images
  # (1.4x the images/s of per-image transfer on 2 cores).
  ds = HostRows(ds, process_index, process_count, per_host_batch)
  ds = ds.batch(
    per_host_batch, drop_remainder=True, batch_fn=functools.partial(stack, fields=fields)
  )[start_batch:]
  # read_threads is per host: with workers, each runs its share.
  threads = max(1, read_threads // max(1, worker_count))
  it = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads))
  )
  if worker_count:
    it = it.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2),
      worker_init_fn=functools.partial(workers.init_worker, os.getpid()),
    )
  return WorkersStartedSafely(
    grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=2)
  )


def train_dataset(
  source,
  *,
  seed: int,
  global_batch: int,
  image_size: int,
  cutout_factor: float,
  augment: str,
  process_index: int,
  process_count: int,
  worker_count: int = 0,
  read_threads: int = 8,
  skip_corrupt: bool = False,
  augment_on: str = "host",
  start_step: int = 0,
) -> grain.IterDataset:
  """The endless, shuffled, augmented training batches of this host from global batch
  `start_step` on (see module doc); with augment_on="device" the images are resized only."""
  ds = grain.MapDataset.source(DecodedRecords(source, skip_corrupt)).shuffle(seed).repeat()
  ds = ds.random_map(
    functools.partial(
      augment_record,
      image_size=image_size,
      cutout_factor=cutout_factor,
      augment=augment,
      augment_on=augment_on,
    ),
    seed=seed,
  )
  return _host_batches(
    ds,
    TRAIN_FIELDS,
    process_index=process_index,
    process_count=process_count,
    per_host_batch=global_batch // process_count,
    worker_count=worker_count,
    read_threads=read_threads,
    start_batch=start_step,
  )


def eval_dataset(
  source,
  *,
  global_batch: int,
  image_size: int,
  process_index: int,
  process_count: int,
  worker_count: int = 0,
  read_threads: int = 8,
  skip_corrupt: bool = False,
) -> grain.IterDataset:
  """One pass over the split in order, padded to whole global batches (see module doc)."""
  length = math.ceil(len(source) / global_batch) * global_batch
  ds = grain.MapDataset.source(
    EvalRecords(DecodedRecords(source, skip_corrupt), length, image_size, len(source.class_names))
  )
  return _host_batches(
    ds,
    EVAL_FIELDS,
    process_index=process_index,
    process_count=process_count,
    per_host_batch=global_batch // process_count,
    worker_count=worker_count,
    read_threads=read_threads,
  )


@dataclasses.dataclass(frozen=True)
class Datasets:
  """What `create_datasets` returns.

  Attributes:
    train_from: train_from(step) is a new iterator over this host's endless training
      batches from global batch `step` on (a grain DatasetIterator; close it when done):
      what a run resumed at `step` reads next, whatever worker count, read_threads or
      number of hosts the run that saved `step` had.
    eval: iterate it once per evaluation (a fresh pass each time).
    class_names: K names.
    num_train, num_eval: images in each split (before skipping undecodable ones).
    steps_per_epoch: num_train // global batch (a partial last batch is not a step).
  """

  train_from: Callable[[int], grain.DatasetIterator]
  eval: grain.IterDataset
  class_names: tuple[str, ...]
  num_train: int
  num_eval: int
  steps_per_epoch: int


def _process(process_index, process_count) -> tuple[int, int]:
  return (
    jax.process_index() if process_index is None else process_index,
    jax.process_count() if process_count is None else process_count,
  )


def _check_batch(config, field: str, process_count: int) -> None:
  if config[field] <= 0 or config[field] % process_count:
    raise ValueError(
      f"config.{field}={config[field]} must be a positive multiple of the "
      f"number of JAX processes ({process_count})."
    )


def create_eval_dataset(config, process_index: int | None = None, process_count: int | None = None):
  """(eval dataset, its source) of config.data.eval_split; see `create_datasets`.

  Every image file's header is read first (every host checks the whole split, so all
  fail alike): a broken file fails here, before any training, unless data.skip_corrupt.
  """
  data = config.data
  process_index, process_count = _process(process_index, process_count)
  check_data_config(data)
  _check_batch(config, "eval_batch_size", process_count)
  source = split_source(data, data.eval_split, training=False)
  split_checks.require_images(source)
  check_image_headers(source, skip_corrupt=data.skip_corrupt, threads=data.read_threads)
  return eval_dataset(
    source,
    global_batch=config.eval_batch_size,
    image_size=data.image_size,
    process_index=process_index,
    process_count=process_count,
    worker_count=data.worker_count,
    read_threads=data.read_threads,
    skip_corrupt=data.skip_corrupt,
  ), source


def create_datasets(
  config, process_index: int | None = None, process_count: int | None = None
) -> Datasets:
  """The training stream (`Datasets.train_from`) and evaluation dataset of `config`.

  Reads config.seed, config.batch_size and config.eval_batch_size (global, all hosts),
  and config.data: name, root, train_split, eval_split, image_size, augment, cutout,
  worker_count, read_threads, skip_corrupt, augment_on, subset_ids, drop_no_finding,
  train_fraction, eval_fraction, tfds_labels_key. The process index and count default to JAX's.
  """
  data = config.data
  process_index, process_count = _process(process_index, process_count)
  _check_batch(config, "batch_size", process_count)
  evaluation, eval_source = create_eval_dataset(config, process_index, process_count)
  train_source = split_source(data, data.train_split, training=True)
  split_checks.check_training_splits(train_source, eval_source)
  check_image_files(train_source, skip_corrupt=data.skip_corrupt, threads=data.read_threads)
  if tuple(train_source.class_names) != tuple(eval_source.class_names):
    raise ValueError(
      f"data: splits {data.train_split!r} and {data.eval_split!r} of "
      f"{data.name!r} have different classes."
    )
  if len(train_source) < config.batch_size:
    raise ValueError(
      f"config.batch_size={config.batch_size} exceeds the "
      f"{len(train_source)} images of {train_source.name}."
    )
  train = functools.partial(
    train_dataset,
    train_source,
    seed=config.seed,
    global_batch=config.batch_size,
    image_size=data.image_size,
    cutout_factor=data.cutout,
    augment=data.augment,
    process_index=process_index,
    process_count=process_count,
    worker_count=data.worker_count,
    read_threads=data.read_threads,
    skip_corrupt=data.skip_corrupt,
    augment_on=data.augment_on,
  )
  return Datasets(
    train_from=lambda step: iter(train(start_step=step)),
    eval=evaluation,
    class_names=tuple(train_source.class_names),
    num_train=len(train_source),
    num_eval=len(eval_source),
    steps_per_epoch=len(train_source) // config.batch_size,
  )
