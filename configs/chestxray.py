r"""NIH Chest X-ray14, 14 findings, official train_val / test lists.

  python -m kmcl_jax.main --config=configs/chestxray.py --workdir=WORKDIR \
      --config.data.root=/data/chestxray14 --config.init_from=/data/tresnet_m_imagenet_flax

As in the reference: Cutout then a random affine map (rotation up to 45 degrees,
translation 15%, scale 0.85-1.15) instead of RandAugment, and the scans' mean grey level
(0.50576) subtracted with unit std. Variants: `:tresnet_l` (TResNet-L, 448 px, batch 128,
lr 4e-4, 80 epochs), `:tresnet_l_v2` (the same on TResNet-L-v2, the authors' multi-GPU
default), `:reference_lists` (the reference loader's protocol, which the published
results used: images with no finding dropped, then the first 10% of each list), and
combinations such as `:tresnet_l_v2,reference_lists`.
"""

from kmcl_jax.config import apply_variants, defaults

VARIANTS = (
  "",
  "tresnet_l",
  "tresnet_l_v2",
  "reference_lists",
  "tresnet_l,reference_lists",
  "tresnet_l_v2,reference_lists",
)


def get_config(arg=None):
  variants = set(arg.split(",")) if arg else set()
  config = defaults()
  config.data.name = "chestxray14"
  config.data.train_split, config.data.eval_split = "train_val", "test"
  config.data.augment = "affine"
  config.data.mean = (0.50576189,) * 3
  config.data.std = (1.0, 1.0, 1.0)
  if "reference_lists" in variants:
    variants.discard("reference_lists")
    config.data.drop_no_finding = True
    config.data.train_fraction = config.data.eval_fraction = 0.1
  return apply_variants(config, ",".join(sorted(variants)), "configs/chestxray.py")
