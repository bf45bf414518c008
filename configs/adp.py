r"""Atlas of Digital Pathology (ADP V1.0), level L1, 9 classes.

  python -m kmcl_jax.main --config=configs/adp.py --workdir=WORKDIR \
      --config.data.root=/data/adp --config.init_from=/data/tresnet_m_imagenet_flax

Normalised with the ADP statistics the reference uses. Variants: `:tresnet_l` (TResNet-L,
448 px, batch 128, lr 4e-4, 80 epochs), `:tresnet_l_v2` (the same on TResNet-L-v2, the
authors' multi-GPU default).
"""

from kmcl_jax.config import apply_variants, defaults

VARIANTS = ("", "tresnet_l", "tresnet_l_v2")


def get_config(arg=None):
  config = defaults()
  config.data.name = "adp"
  config.data.train_split, config.data.eval_split = "train", "test"
  config.data.mean = (0.81233799, 0.64032477, 0.81902153)
  config.data.std = (0.18129702, 0.25731668, 0.16800649)
  return apply_variants(config, arg, "configs/adp.py")
