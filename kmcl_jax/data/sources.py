"""`get_source`: one entry point to every dataset."""

from __future__ import annotations

from kmcl_jax.data.adp import adp_source
from kmcl_jax.data.chestxray14 import chestxray14_source
from kmcl_jax.data.coco import coco2014_source
from kmcl_jax.data.demo import DigitGridSource
from kmcl_jax.data.label_files import NAME as LABEL_FILES
from kmcl_jax.data.label_files import labels_source
from kmcl_jax.data.nuswide import nuswide_source
from kmcl_jax.data.tfds_source import tfds_source
from kmcl_jax.data.voc import voc2007_source

LOCAL_SOURCES = {
  "voc2007": voc2007_source,
  "coco2014": coco2014_source,
  "nuswide": nuswide_source,
  "chestxray14": chestxray14_source,
  "adp": adp_source,
}
TFDS_PREFIX = "tfds:"
DEMO_NAMES = ("demo", "demo_correlated")
NAMES = tuple(LOCAL_SOURCES) + (
  *DEMO_NAMES,
  LABEL_FILES,
  "tfds:voc/2007",
  "tfds:coco/2014",
  "tfds:NAME",
)
OPTIONS = {
  "coco2014": ("subset_ids",),
  "chestxray14": ("drop_no_finding", "fraction"),
  TFDS_PREFIX: ("labels_key",),
  LABEL_FILES: (
    "train_labels",
    "eval_labels",
    "labels_format",
    "class_list",
    "image_extension",
    "image_column",
    "label_column",
    "split_column",
    "holdout_fraction",
    "split_seed",
    "role",
    "skip_corrupt",
  ),
}


def get_source(name: str, split: str, root: str | None = None, **options):
  """The records of `split` of dataset `name`, a grain random-access source.

  Records are {"image": uint8 (H, W, 3), "labels": float32 (K,) in {0, 1}, "ignore":
  bool (K,), "id": str}; the source also has `class_names` (K,), `name` and
  `annotations(index)` (the record without decoding its image).

  Args:
    name: one of NAMES (`tfds:NAME`: any prepared TFDS dataset with a multilabel feature).
    split: the dataset's own split name (VOC `trainval`/`test`, COCO `train`/`val`, a
      TFDS split expression, ...).
    root: the dataset folder (the TFDS data_dir for `tfds:` names); unused by the demo sets;
      for `labels`, the folder image names are relative to ("": the label file's).
    **options: the dataset's own options, OPTIONS[name]: `coco2014` subset_ids (a CSV of
      image ids the split is restricted to), `chestxray14` drop_no_finding and fraction,
      `tfds:` labels_key (the multilabel feature; see `tfds_source`), `labels` the label
      files and how to read them (`label_files.labels_source`).
  """
  allowed = OPTIONS.get(TFDS_PREFIX if name.startswith(TFDS_PREFIX) else name, ())
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(
      f"data: dataset {name!r} has no option {unknown[0]!r}; its options are {allowed}."
    )
  if name in DEMO_NAMES:
    return DigitGridSource(split, correlated=name == "demo_correlated")
  if name == LABEL_FILES:
    return labels_source(split, root or "", **options)
  if name.startswith(TFDS_PREFIX):
    return tfds_source(name[len(TFDS_PREFIX) :], split, root, **options)
  if name not in LOCAL_SOURCES:
    raise ValueError(f"data.name: unknown dataset {name!r}; expected one of {NAMES}.")
  if not root:
    raise ValueError(
      f"data.root: dataset {name!r} needs its folder (--config.data.root=/path/to/{name})."
    )
  return LOCAL_SOURCES[name](split, root, **options)
