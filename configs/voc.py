r"""PASCAL VOC 2007 with the reference's recipe (TResNet-M, 224 px, batch 64, 40 epochs).

  python -m kmcl_jax.main --config=configs/voc.py --workdir=WORKDIR \
      --config.data.root=/data/voc --config.init_from=/data/tresnet_m_imagenet_flax

Variants:
  configs/voc.py:tresnet_l   the reference's multi-GPU settings: TResNet-L, 448 px,
                             batch 128, lr 4e-4, 80 epochs.
  configs/voc.py:tfds        the same data from TFDS `voc/2007` (data.root = data_dir).

`init_from` is an ImageNet TResNet converted with `python -m kmcl_jax.convert`; without
it the backbone starts from scratch, which is not the paper's setting.
"""

from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.data.name = "voc2007"
  config.data.train_split, config.data.eval_split = "trainval", "test"
  variants = set(arg.split(",")) if arg else set()
  unknown = variants - {"tresnet_l", "tfds"}
  if unknown:
    raise ValueError(f"configs/voc.py: unknown variant(s) {sorted(unknown)}; expected "
                     "tresnet_l and/or tfds.")
  if "tresnet_l" in variants:
    config.model.backbone = "tresnet_l"
    config.data.image_size = 448
    config.batch_size = config.eval_batch_size = 128
    config.optim.lr = 4e-4
    config.num_epochs = 80
  if "tfds" in variants:
    config.data.name = "tfds:voc/2007"
  return config
