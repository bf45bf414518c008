r"""Defaults every config starts from: the reference's VOC recipe (spec section 3).

Not a run by itself; the dataset configs (demo.py, voc.py) fill in the data. Every key
a config may set exists here, so a misspelt --config.x=y override is an error.
"""

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      backbone="tresnet_m",   # tresnet_m, tresnet_l, tresnet_xl, tresnet_tiny (tests)
      kernel="anisotropic",   # anisotropic (D = 128 projection) or isotropic
      variance="BC",          # BC, MKS (anisotropic), RBF (isotropic)
      mode="all",             # all: ASL + reconstruction + contrastive; asl_only
      remat=False,            # rematerialise each block in the backward pass
  ))
  config.dtype = "auto"       # compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU
  config.init_from = ""       # folder written by `python -m kmcl_jax.convert`

  config.loss = ml_collections.ConfigDict(dict(
      temperature=0.17, gamma_neg=4.0, gamma_pos=0.0, clip=0.05,
      block_size=0,           # anchors per block of the contrastive term; 0 = automatic
  ))
  # global: the KMCL loss over the whole batch (every device, every host);
  # device: each device's batch on its own, averaged (the reference's DDP script).
  config.contrastive_scope = "global"

  config.batch_size = 64      # global, all hosts
  config.eval_batch_size = 64
  config.num_epochs = 40
  config.train_steps = 0      # > 0: train (and schedule) this many steps instead

  config.optim = ml_collections.ConfigDict(dict(
      lr=2e-4, weight_decay=1e-4, b2=0.999, eps=1e-8,
      pct_start=0.2, div_factor=25.0, final_div_factor=1e4,  # torch OneCycleLR
      beta1_base=0.85, beta1_peak=0.95,
  ))
  config.ema_decay = 0.9997
  config.threshold = 0.8      # score at which a class counts as predicted (OP, CF1, ...)

  config.eval_every_epochs = 1
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 50

  config.data = ml_collections.ConfigDict(dict(
      name="", root="", train_split="", eval_split="",
      image_size=224, augment="randaugment", cutout=0.5,
      mean=IMAGENET_MEAN, std=IMAGENET_STD,
      worker_count=4, read_threads=8, skip_corrupt=False,
      augment_on="host",      # host: PIL on the CPU; device: Cutout + RandAugment in the step
      subset_ids="",          # coco2014: CSV of train image ids (COCO_Subset_<N>_Ids.csv)
      drop_no_finding=False,  # chestxray14: drop "No Finding" images (both splits)
      train_fraction=1.0,     # chestxray14: first fraction of the train list (reference: 0.1)
      eval_fraction=1.0,      # chestxray14: first fraction of the test list (reference: 0.1)
  ))
  return config


def apply_variants(config, arg, file_name, tfds_name=None):
  """Applies the comma-separated variants in `arg` shared by the dataset configs:
  `tresnet_l` (the reference's multi-GPU settings: TResNet-L, 448 px, batch 128,
  lr 4e-4, 80 epochs) and, where the dataset has one, `tfds` (its TFDS source)."""
  variants = set(arg.split(",")) if arg else set()
  known = {"tresnet_l"} | ({"tfds"} if tfds_name else set())
  if variants - known:
    raise ValueError(f"{file_name}: unknown variant(s) {sorted(variants - known)}; expected "
                     f"{sorted(known)}.")
  if "tresnet_l" in variants:
    config.model.backbone = "tresnet_l"
    config.data.image_size = 448
    config.batch_size = config.eval_batch_size = 128
    config.optim.lr = 4e-4
    config.num_epochs = 80
  if "tfds" in variants:
    config.data.name = tfds_name
  return config
