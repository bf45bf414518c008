r"""Inspect a dataset before training on it: per split the images, positives per class,
labels per image, classes absent, missing or unreadable images, and class co-occurrence.

  python -m kmcl_jax.data.inspect --config=configs/voc.py --config.data.root=/data/voc \
      --output=/tmp/voc_report
  python -m kmcl_jax.data.inspect --config=configs/demo.py --output=/tmp/demo_report
  python -m kmcl_jax.data.inspect --config=configs/coco.py --config.data.root=/data/coco \
      --output=/tmp/coco_report --splits=val --decode --threads=16

Reads the splits the config trains and evaluates on (or --splits) exactly as the trainer
does. Every image file is checked to exist and its header and end are read (a
cut-short or unknown file); --decode decodes every image instead (damage inside the
compressed data too; also decodes the records of sources without files, like TFDS).
Both show a progress bar.

Writes OUTPUT/report.json (per split: images, mean and histogram of labels per image,
positives and ignored entries per class, classes absent, missing and unreadable images
with their paths, the K x K co-occurrence counts) and OUTPUT/cooccurrence_<split>.png,
and prints a table. Exit status 1 when a split has no images or has missing or
unreadable ones (each named), else 0.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from kmcl_jax.data.inspect import inspect_splits, report
from kmcl_jax.errors import run_program

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (path[:variant]) naming the dataset.", lock_config=True
)
_OUTPUT = flags.DEFINE_string("output", None, "Folder for report.json and the heat maps.")
_SPLITS = flags.DEFINE_list(
  "splits", None, "Splits to inspect; default the config's train_split and eval_split."
)
_DECODE = flags.DEFINE_bool(
  "decode", False, "Decode every image (slower) instead of reading file headers only."
)
_THREADS = flags.DEFINE_integer("threads", 0, "Threads reading images; 0: data.read_threads.")
flags.mark_flags_as_required(["config", "output"])


def _inspect() -> None:
  config = _CONFIG.value
  data = config.data
  splits = _SPLITS.value or list(dict.fromkeys([data.train_split, data.eval_split]))
  result, statistics = inspect_splits(
    config, splits, decode=_DECODE.value, threads=_THREADS.value or data.read_threads
  )
  report.write_report(result, statistics, _OUTPUT.value)
  print(report.table(result))
  logging.info("Wrote %s/%s and the co-occurrence heat maps.", _OUTPUT.value, report.REPORT_FILE)
  for problem in result["problems"]:
    logging.error("%s", problem)
  if result["problems"]:
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_program(_inspect)


if __name__ == "__main__":
  app.run(main)
