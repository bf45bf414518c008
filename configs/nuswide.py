r"""NUS-WIDE, 81 concepts, in ASL's list layout (nus_wid_data.csv).

  python -m kmcl_jax.main --config=configs/nuswide.py --workdir=WORKDIR \
      --config.data.root=/data/nus_wide --config.init_from=/data/tresnet_m_imagenet_flax

Variants: `:tresnet_l` (TResNet-L, 448 px, batch 128, lr 4e-4, 80 epochs), `:tresnet_l_v2`
(the same on TResNet-L-v2, the authors' multi-GPU default).
"""

from kmcl_jax.config import apply_variants, defaults

VARIANTS = ("", "tresnet_l", "tresnet_l_v2")


def get_config(arg=None):
  config = defaults()
  config.data.name = "nuswide"
  config.data.train_split, config.data.eval_split = "train", "val"
  return apply_variants(config, arg, "configs/nuswide.py")
