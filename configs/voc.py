r"""PASCAL VOC 2007 with the reference's recipe (TResNet-M, 224 px, batch 64, 40 epochs).

  python -m kmcl_jax.main --config=configs/voc.py --workdir=WORKDIR \
      --config.data.root=/data/voc --config.init_from=/data/tresnet_m_imagenet_flax

Variants: `configs/voc.py:tresnet_l` (TResNet-L, 448 px, batch 128, lr 4e-4, 80 epochs),
`configs/voc.py:tresnet_l_v2` (the same on TResNet-L-v2, the authors' multi-GPU default,
with its ImageNet-21k weights as init_from), `configs/voc.py:tfds` (TFDS `voc/2007`;
data.root = the TFDS data_dir), or a backbone and tfds (`:tresnet_l,tfds`,
`:tresnet_l_v2,tfds`). `init_from` is an ImageNet TResNet converted with
`python -m kmcl_jax.convert`; without it the backbone starts from scratch.
"""

from kmcl_jax.config import apply_variants, defaults

VARIANTS = ("", "tresnet_l", "tresnet_l_v2", "tfds", "tresnet_l,tfds", "tresnet_l_v2,tfds")


def get_config(arg=None):
  config = defaults()
  config.data.name = "voc2007"
  config.data.train_split, config.data.eval_split = "trainval", "test"
  return apply_variants(config, arg, "configs/voc.py", tfds_name="tfds:voc/2007")
