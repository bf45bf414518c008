"""What a dataset holds, split by split, before anything trains (`python -m
kmcl_jax.data.inspect`): images, positives per class, labels per image, classes absent
from a split, missing or unreadable images, and where classes occur together."""

from __future__ import annotations

from collections.abc import Sequence

from kmcl_jax.data import split_checks
from kmcl_jax.data.data_config import split_source
from kmcl_jax.data.inspect import images, report


def inspect_splits(
  config, splits: Sequence[str], *, decode: bool, threads: int
) -> tuple[dict, dict[str, split_checks.SplitStatistics]]:
  """(the report, {split: its SplitStatistics}) of `splits` of config.data's dataset.

  The report is {"dataset", "root", "classes", "splits": {split: `report.split_report`},
  "problems": [one sentence per split with missing or unreadable images or no images]}.
  A split is read as the trainer reads it (config.data.train_split with the training
  options); the absent-class warning of the training split is the trainer's.
  """
  data = config.data
  records, statistics, classes = {}, {}, None
  for split in splits:
    training = split == data.train_split
    source = split_source(data, split, training)
    counted = split_checks.split_statistics(source)
    problems = images.image_problems(source, decode=decode, threads=threads)
    warning = split_checks.absent_class_warning(counted, training)
    statistics[split] = counted
    records[split] = report.split_report(counted, problems, warning, split)
    classes = classes or list(counted.class_names)
  result = {"dataset": data.name, "root": data.root, "classes": classes, "splits": records}
  empty = [f"{r['name']}: the split has no images." for r in records.values() if not r["images"]]
  result["problems"] = empty + report.problems_found(result)
  return result, statistics
