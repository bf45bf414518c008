r"""MS-COCO 2014 (80 classes; 82,081 train / 40,137 val images with objects).

  python -m kmcl_jax.main --config=configs/coco.py --workdir=WORKDIR \
      --config.data.root=/data/coco --config.init_from=/data/tresnet_m_imagenet_flax

Variants: `:tresnet_l` (TResNet-L, 448 px, batch 128, lr 4e-4, 80 epochs), `:tresnet_l_v2`
(the same on TResNet-L-v2, the authors' multi-GPU default), `:tfds` (TFDS `coco/2014`,
needs TensorFlow installed; data.root = the TFDS data_dir), and a backbone with tfds
(`:tresnet_l,tfds`, `:tresnet_l_v2,tfds`).
"""

from kmcl_jax.config import apply_variants, defaults

VARIANTS = ("", "tresnet_l", "tresnet_l_v2", "tfds", "tresnet_l,tfds", "tresnet_l_v2,tfds")


def get_config(arg=None):
  config = defaults()
  config.data.name = "coco2014"
  config.data.train_split, config.data.eval_split = "train", "val"
  return apply_variants(config, arg, "configs/coco.py", tfds_name="tfds:coco/2014")
