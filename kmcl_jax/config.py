r"""The run configuration: defaults, the variants every dataset config shares, checks.

The files in `configs/` (one per dataset, run as `--config=configs/voc.py[:variant]`)
start from `defaults()` and fill in their data. The defaults are the reference's VOC
recipe (docs/method.md, "Training recipe"); every key a config may set exists here, so a
misspelt `--config.x=y` override is an error.

`RESUMABLE_FIELDS` names what may change when a run is resumed from its workdir; every
other field is part of the run's identity (see `kmcl_jax.workdir`).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os

import jax
import ml_collections
from etils import epath

from kmcl_jax import losses, optim, profiling
from kmcl_jax.data import data_config, transforms
from kmcl_jax.models.kmm import VARIANCES
from kmcl_jax.models.tresnet import ARCHITECTURES, create_backbone
from kmcl_jax.state import compute_dtype

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCOPES = ("global", "device")
SCRATCH = "scratch"  # init_from: random initial weights, on purpose
DTYPES = ("auto", "float32", "bfloat16")

# Fields that change how a run is executed, observed or stored, not what it computes: a
# resumed run may change them (the change is logged). Dotted prefixes: "data.root" covers
# data.root only, "model" would cover every model field.
RESUMABLE_FIELDS = (
  "eval_every_epochs",
  "checkpoint_every_steps",
  "log_every_steps",
  "eval_batch_size",
  "threshold",
  "init_from",
  "keep_checkpoints",
  "trust_workdir",
  "max_consecutive_skipped_steps",
  "model.remat",
  "loss.block_size",
  "data.root",
  # Where the label files are, like data.root; their classes are checked on resume.
  "data.train_labels",
  "data.eval_labels",
  "data.class_list",
  # The resumed input stream starts at the restored step (batch b is a function of the
  # seed and b), so any worker or thread count, like any number of hosts, continues it.
  "data.worker_count",
  "data.read_threads",
  "data.skip_corrupt",
  "profile_steps",
  "compilation_cache",
  "update_layout",
)


def defaults() -> ml_collections.ConfigDict:
  """Every field, set to the reference's VOC recipe; the data fields are left empty."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict(
    dict(
      backbone="tresnet_m",  # tresnet_m/l/xl, tresnet_l_v2, tresnet_tiny (tests)
      kernel="anisotropic",  # anisotropic (D = embedding_dim projection) or isotropic
      embedding_dim=128,  # D of the anisotropic kernel; isotropic keeps the backbone's
      variance="BC",  # BC, MKS (anisotropic), RBF (isotropic)
      mode="all",  # all: ASL + reconstruction + contrastive; asl_only
      remat=False,  # rematerialise each block in the backward pass
    )
  )
  config.dtype = "auto"  # compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU
  # How the step's optimiser, EMA and skip run: per_leaf, flat (a few 1-D buffers: fewer
  # kernels, more copies) or auto (flat on GPU); the same operations either way.
  config.update_layout = "auto"
  # Training starts from ImageNet weights: a folder written by `python -m kmcl_jax.convert`,
  # or "scratch" to train from random weights on purpose.
  config.init_from = ""

  config.loss = ml_collections.ConfigDict(
    dict(
      temperature=0.17,
      gamma_neg=4.0,
      gamma_pos=0.0,
      clip=0.05,
      # Weights of the three terms; 0 leaves a term out (it is not computed).
      weights=ml_collections.ConfigDict(dict(asl=1.0, reconstruction=1.0, contrastive=1.0)),
      # L_asl is a sum over the batch it is computed on, the other terms are means: it
      # enters scaled by reference_batch / batch, so the terms keep the proportions of
      # the reference's loss (its train.py: one GPU, batch 64) at any batch.
      reference_batch=64,
      block_size=0,  # anchors per block of the contrastive term; 0 = automatic
    )
  )
  # global: the KMCL loss over the whole batch (every device, every host);
  # device: each device's batch on its own, averaged (the reference's DDP script).
  config.contrastive_scope = "global"

  config.batch_size = 64  # global, all hosts
  # The global batch the learning rate and the EMA decay were set for: at another batch
  # the EMA keeps its horizon in images (decay ** (batch / recipe_batch) per step) and
  # optim.lr_scaling may rescale the learning rate.
  config.recipe_batch = 64
  config.eval_batch_size = 64
  config.num_epochs = 40
  config.train_steps = 0  # > 0: train (and schedule) this many steps instead

  config.optim = ml_collections.ConfigDict(
    dict(
      lr=2e-4,
      weight_decay=1e-4,
      b2=0.999,
      eps=1e-8,
      lr_scaling="none",  # at another batch than recipe_batch: none, sqrt (Adam), linear
      pct_start=0.2,
      div_factor=25.0,
      final_div_factor=1e4,  # torch OneCycleLR
      beta1_base=0.85,
      beta1_peak=0.95,
    )
  )
  config.ema_decay = 0.9997
  config.threshold = 0.8  # score at which a class counts as predicted (OP, CF1, ...)

  config.eval_every_epochs = 1
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2  # latest checkpoints kept; an older one is the fallback
  # Resume a workdir that holds checkpoints but no run.json (nothing to check the config
  # and classes against): the user vouches that it is this run's.
  config.trust_workdir = False
  # Consecutive steps with a non-finite loss, gradient or update after which the run
  # stops with an error instead of skipping on.
  config.max_consecutive_skipped_steps = 20
  config.log_every_steps = 50
  config.profile_steps = ""  # "START:STOP": a jax.profiler trace of those steps
  # XLA's persistent compilation cache: "auto" (the user's cache folder; WORKDIR/xla_cache
  # for a gs:// workdir), a folder, or "" for none.
  config.compilation_cache = "auto"

  config.data = ml_collections.ConfigDict(
    dict(
      name="",
      root="",
      train_split="",
      eval_split="",
      image_size=224,
      augment="randaugment",
      cutout=0.5,
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      worker_count=4,
      read_threads=8,
      skip_corrupt=False,
      augment_on="host",  # host: PIL on the CPU; device: Cutout + RandAugment in the step
      subset_ids="",  # coco2014: CSV of train image ids (COCO_Subset_<N>_Ids.csv)
      drop_no_finding=False,  # chestxray14: drop "No Finding" images (both splits)
      train_fraction=1.0,  # chestxray14: first fraction of the train list (reference: 0.1)
      eval_fraction=1.0,  # chestxray14: first fraction of the test list (reference: 0.1)
      # name="labels", your own images and label files (kmcl_jax/data/label_files):
      train_labels="",  # the training label file (or the one file of every split)
      eval_labels="",  # the evaluation label file; "": a split column, or a holdout
      labels_format="auto",  # auto, delimited, columns, long, jsonl, coco
      class_list="",  # class names one per line, in label order; "": sorted labels
      image_extension="",  # added to image names without one (".jpg")
      image_column="",  # "": the first column (JSON lines: "image")
      label_column="",  # "": found from the header (JSON lines: "labels")
      split_column="split",  # when a file has it: rows of train_split / eval_split
      holdout_fraction=0.1,  # no eval file nor split column: share of images evaluated on
      split_seed=0,  # the seed of that draw
      tfds_labels_key="",  # tfds:NAME: its multilabel feature (KEY or KEY/FIELD); "" = the only one
    )
  )
  return config


# Variants naming the backbone of the reference's multi-GPU recipe (448 px, batch 128, ...).
MULTI_GPU_BACKBONES = ("tresnet_l", "tresnet_l_v2")


def apply_variants(
  config: ml_collections.ConfigDict, arg: str | None, file_name: str, tfds_name: str | None = None
) -> ml_collections.ConfigDict:
  """Applies the comma-separated variants in `arg` that the dataset configs share:
  `tresnet_l` or `tresnet_l_v2` (the reference's multi-GPU settings, 448 px, batch 128,
  lr 4e-4, 80 epochs, on TResNet-L or on TResNet-L-v2, the multi-GPU script's default
  backbone) and, where the dataset has one, `tfds` (its TFDS source)."""
  variants = set(arg.split(",")) if arg else set()
  known = set(MULTI_GPU_BACKBONES) | ({"tfds"} if tfds_name else set())
  if variants - known:
    raise ValueError(
      f"{file_name}: unknown variant(s) {sorted(variants - known)}; expected {sorted(known)}."
    )
  backbones = sorted(variants & set(MULTI_GPU_BACKBONES))
  if len(backbones) > 1:
    raise ValueError(
      f"{file_name}: variants {backbones} each choose the backbone; expected one of them."
    )
  if backbones:
    config.model.backbone = backbones[0]
    config.data.image_size = 448
    config.batch_size = config.eval_batch_size = config.recipe_batch = 128
    config.optim.lr = 4e-4
    config.num_epochs = 80
    # Their 4 GPUs each summed L_asl over 128 / 4 = 32 images (and the gradients were
    # averaged): the ASL balance of that loss. contrastive_scope="device" on 4 devices
    # also computes the other terms per 32 images, as they did.
    config.loss.reference_batch = 32
  if "tfds" in variants:
    config.data.name = tfds_name
  return config


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of a config file given as `path[:variant]` (what --config takes), from
  any working directory."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"--config={spec!r}: no config file {os.path.abspath(path)!r}; pass the path of one "
      "of the repository's configs/*.py (relative to the working directory, "
      f"{os.getcwd()}), with :VARIANT after it if it has variants."
    )
  module_spec = importlib.util.spec_from_file_location(
    f"kmcl_config_{os.path.splitext(os.path.basename(path))[0]}", path
  )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def initial_weights(config: ml_collections.ConfigDict) -> str | None:
  """The folder of converted weights config.init_from names (None: random weights)."""
  return None if config.init_from in ("", SCRATCH) else config.init_from


def require_initial_weights(config: ml_collections.ConfigDict) -> None:
  """For training: the recipe starts from ImageNet weights, so an empty init_from is an
  error that says how to get them (or to train from scratch on purpose)."""
  if not config.init_from:
    raise ValueError(
      f"config.init_from is empty: the {config.data.name} recipe starts from an ImageNet "
      f"{config.model.backbone}; convert one with `python -m kmcl_jax.convert "
      f"--src=WEIGHTS.pth --arch={config.model.backbone} --dst=DIR` and pass "
      f"--config.init_from=DIR, or pass --config.init_from={SCRATCH} to train from random "
      "weights on purpose."
    )


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first config field with a bad value."""

  def value(field: str):
    node = config
    for part in field.split("."):
      node = node[part]
    return node

  def require(ok: bool, field: str, expected: str) -> None:
    if not ok:
      raise ValueError(f"config.{field}={value(field)!r}: expected {expected}.")

  require(
    config.model.backbone in ARCHITECTURES, "model.backbone", f"one of {sorted(ARCHITECTURES)}"
  )
  require(config.model.kernel in losses.KERNELS, "model.kernel", f"one of {losses.KERNELS}")
  require(config.model.variance in VARIANCES, "model.variance", f"one of {VARIANCES}")
  require(config.model.mode in losses.MODES, "model.mode", f"one of {losses.MODES}")
  require(
    isinstance(config.model.embedding_dim, int) and config.model.embedding_dim > 0,
    "model.embedding_dim",
    "a positive integer",
  )
  require(config.dtype in DTYPES, "dtype", f"one of {DTYPES}")
  require(
    config.update_layout in ("auto", *optim.UPDATE_LAYOUTS),
    "update_layout",
    f"'auto' or one of {optim.UPDATE_LAYOUTS}",
  )
  require(config.contrastive_scope in SCOPES, "contrastive_scope", f"one of {SCOPES}")
  for field in (
    "batch_size",
    "eval_batch_size",
    "num_epochs",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "log_every_steps",
    "keep_checkpoints",
    "max_consecutive_skipped_steps",
  ):
    require(isinstance(value(field), int) and value(field) > 0, field, "a positive integer")
  require(
    isinstance(config.train_steps, int) and config.train_steps >= 0,
    "train_steps",
    "0 (use num_epochs) or a positive integer",
  )
  for field in ("batch_size", "eval_batch_size"):
    require(
      value(field) % jax.device_count() == 0,
      field,
      f"a multiple of the {jax.device_count()} devices",
    )

  def finite(field: str) -> bool:  # NaN fails every comparison, infinity only this one
    return isinstance(value(field), (int, float)) and math.isfinite(value(field))

  require(finite("optim.lr") and config.optim.lr > 0, "optim.lr", "a finite positive learning rate")
  require(
    finite("optim.weight_decay") and config.optim.weight_decay >= 0,
    "optim.weight_decay",
    "a finite non-negative number",
  )
  require(finite("optim.eps") and config.optim.eps > 0, "optim.eps", "a finite positive number")
  for field in ("optim.b2", "optim.beta1_base", "optim.beta1_peak", "ema_decay"):
    require(finite(field) and 0 <= value(field) < 1, field, "a number in [0, 1)")
  for field in ("optim.div_factor", "optim.final_div_factor"):
    require(finite(field) and value(field) > 0, field, "a finite positive number")
  require(0 < config.optim.pct_start < 1, "optim.pct_start", "a fraction in (0, 1)")
  require(
    finite("loss.temperature") and config.loss.temperature > 0,
    "loss.temperature",
    "a finite positive number",
  )
  for field in ("loss.gamma_neg", "loss.gamma_pos"):
    require(finite(field) and value(field) >= 0, field, "a finite non-negative number")
  require(
    finite("loss.clip") and 0 <= config.loss.clip < 1,
    "loss.clip",
    "a probability shift in [0, 1) (0 disables it)",
  )
  require(
    config.optim.lr_scaling in optim.LR_SCALING, "optim.lr_scaling", f"one of {optim.LR_SCALING}"
  )
  for field in ("recipe_batch", "loss.reference_batch"):
    require(isinstance(value(field), int) and value(field) > 0, field, "a positive integer")
  for term, weight in config.loss.weights.items():
    require(
      finite(f"loss.weights.{term}") and weight >= 0,
      f"loss.weights.{term}",
      "a finite non-negative weight",
    )
  require(
    set(config.loss.weights) == set(losses.TERMS),
    "loss.weights",
    f"weights for exactly {losses.TERMS}",
  )
  require(0 < config.threshold < 1, "threshold", "a probability in (0, 1)")
  require(config.loss.block_size >= 0, "loss.block_size", "0 (automatic) or a positive integer")
  require(
    config.data.image_size >= 32 and config.data.image_size % 32 == 0,
    "data.image_size",
    "a multiple of 32 (TResNet downsamples 32x)",
  )
  require(
    config.data.augment in transforms.AUGMENTATIONS,
    "data.augment",
    f"one of {transforms.AUGMENTATIONS}",
  )
  require(0 <= config.data.cutout < 1, "data.cutout", "a fraction in [0, 1) (0 disables)")
  require(len(config.data.mean) == 3, "data.mean", "three numbers, one per channel")
  require(
    len(config.data.std) == 3 and min(config.data.std) > 0,
    "data.std",
    "three positive numbers, one per channel",
  )
  require(config.data.worker_count >= 0, "data.worker_count", "a non-negative integer")
  require(config.data.read_threads >= 1, "data.read_threads", "a positive integer")
  require(bool(config.data.name), "data.name", "a dataset name (see kmcl_jax.data)")
  data_config.check_data_config(config.data)
  profiling.parse_steps(config.profile_steps)
  if initial_weights(config):
    require(
      epath.Path(config.init_from).is_dir(),
      "init_from",
      "a folder written by `python -m kmcl_jax.convert`",
    )


def unknown_field(config: ml_collections.ConfigDict, field: str) -> str | None:
  """What is wrong with overriding config.`field` (dotted, as in --config.FIELD=...) on
  `config`, in one sentence with the nearest field name, or None if `config` has it."""
  node, known = config, []
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return (
        f"config.{'.'.join(known)} is a value, not a group of fields; cannot set config.{field}."
      )
    if part not in node:
      return _no_such_field(config, node, known, part, field)
    node, known = node[part], [*known, part]
  return None


def _no_such_field(config, parent, known: list[str], part: str, field: str) -> str:
  prefix = "".join(f"{name}." for name in known)
  nearest = difflib.get_close_matches(part, list(parent.keys()), n=1, cutoff=0.6)
  if nearest:
    suggestion = prefix + nearest[0]
  else:  # a field of another group (--config.lr for config.optim.lr)
    leaves = {}
    for path in _field_paths(config):
      leaves.setdefault(path.rsplit(".", 1)[-1], path)
    nearest = difflib.get_close_matches(part, list(leaves), n=1, cutoff=0.8)
    suggestion = leaves[nearest[0]] if nearest else None
  if suggestion:
    return f"unknown field config.{field}; did you mean config.{suggestion}?"
  group = f"config.{prefix[:-1]}" if prefix else "config"
  return f"unknown field config.{field}; {group} has the fields {', '.join(sorted(parent))}."


def _field_paths(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  paths = []
  for key, child in node.items():
    if isinstance(child, ml_collections.ConfigDict):
      paths += _field_paths(child, f"{prefix}{key}.")
    else:
      paths.append(prefix + key)
  return paths


def training_memory(config: ml_collections.ConfigDict) -> tuple[int, int, str]:
  """(bytes of activations a train step keeps at least, bytes of memory they share, what
  that memory is): the backbone's `stored_activations` per image at
  config.data.image_size in the compute dtype, times the images on one accelerator, or
  on the CPU, whose devices share the host's memory, on one host."""
  backbone = create_backbone(config.model.backbone, remat=config.model.remat)
  per_image = backbone.stored_activations(config.data.image_size)
  per_image *= jax.numpy.dtype(compute_dtype(config)).itemsize
  device = jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
  if limit:
    images = max(1, config.batch_size // jax.device_count())
    return per_image * images, limit, f"the {limit / 2**30:.1f} GiB of one {device.device_kind}"
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  images = max(1, config.batch_size // jax.process_count())
  return per_image * images, memory, f"the host's {memory / 2**30:.1f} GiB"


def check_training_memory(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming config.data.image_size when a train step cannot fit: the
  activations it keeps for the backward pass alone (a lower bound, `training_memory`)
  exceed the memory of one accelerator (or, on the CPU, of the host)."""
  needed, available, memory = training_memory(config)
  if needed > available:
    raise ValueError(
      f"config.data.image_size={config.data.image_size}: a train step of "
      f"{config.model.backbone} at batch {config.batch_size} keeps at least "
      f"{needed / 2**30:,.1f} GiB of activations for its backward pass (every "
      f"{'block' if config.model.remat else 'convolution'}'s output), more than {memory}; "
      f"lower data.image_size or batch_size"
      f"{'' if config.model.remat else ', or set model.remat=True'}."
    )
