"""What config.data selects: checks on its fields, and the source of a split with the
options the config gives it (every entry point builds its sources here)."""

from __future__ import annotations

from kmcl_jax.data import label_files, sources
from kmcl_jax.data.sources import get_source

AUGMENT_ON = ("host", "device")
# config.data fields of the label-file source that name something (empty elsewhere).
LABEL_FILE_FIELDS = (
  "train_labels",
  "eval_labels",
  "class_list",
  "image_extension",
  "image_column",
  "label_column",
)


def check_data_config(data) -> None:
  """Raises ValueError naming the first of config.data's pipeline options with a bad value
  (the fields `create_datasets` reads beyond those the trainer checks)."""
  augment_on = data.augment_on
  if augment_on not in AUGMENT_ON:
    raise ValueError(f"config.data.augment_on={augment_on!r}: expected one of {AUGMENT_ON}.")
  if augment_on == "device" and data.augment not in ("randaugment", "none"):
    raise ValueError(
      f"config.data.augment_on='device' runs Cutout and RandAugment only; "
      f"config.data.augment={data.augment!r} needs augment_on='host'."
    )
  for field in ("train_fraction", "eval_fraction"):
    fraction = data[field]
    if not 0 < fraction <= 1:
      raise ValueError(f"config.data.{field}={fraction!r}: expected a fraction in (0, 1].")
    if fraction != 1 and data.name != "chestxray14":
      raise ValueError(
        f"config.data.{field}={fraction!r} applies to chestxray14 only, not {data.name!r}."
      )
  if data.drop_no_finding and data.name != "chestxray14":
    raise ValueError(f"config.data.drop_no_finding applies to chestxray14 only, not {data.name!r}.")
  if data.tfds_labels_key and not data.name.startswith("tfds:"):
    raise ValueError(
      f"config.data.tfds_labels_key applies to tfds: datasets only, not {data.name!r}."
    )
  if data.subset_ids and data.name != "coco2014":
    raise ValueError(
      f"config.data.subset_ids applies to the coco2014 train split only, not {data.name!r}."
    )
  if data.name != label_files.NAME:
    for field in LABEL_FILE_FIELDS:
      if data[field]:
        raise ValueError(
          f"config.data.{field} applies to data.name={label_files.NAME!r} (your own label "
          f"files, configs/custom.py) only, not {data.name!r}."
        )


def source_options(data, training: bool) -> dict:
  """get_source's keyword options for the training or the evaluation split."""
  options = {}
  if data.name == "chestxray14":
    options["drop_no_finding"] = bool(data.drop_no_finding)
    options["fraction"] = data.train_fraction if training else data.eval_fraction
  if data.name == "coco2014" and training and data.subset_ids:
    options["subset_ids"] = data.subset_ids
  if data.tfds_labels_key:
    options["labels_key"] = data.tfds_labels_key
  if data.name == label_files.NAME:
    options = {field: data[field] for field in sources.OPTIONS[label_files.NAME] if field in data}
    options["role"] = "train" if training else "eval"
  return options


def split_source(data, split: str, training: bool):
  """The source of `split` of config.data's dataset, with the options for training or
  evaluation (`source_options`)."""
  return get_source(data.name, split, data.root, **source_options(data, training))
