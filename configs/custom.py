r"""Your own images and label files, with the reference's recipe (TResNet-M, 224 px,
batch 64, 40 epochs, from ImageNet weights):

  python -m kmcl_jax.main --config=configs/custom.py --workdir=WORKDIR \
      --config.data.root=IMAGES --config.data.train_labels=train.csv \
      --config.data.eval_labels=val.csv --config.init_from=/data/tresnet_m_imagenet_flax

The label files may be CSV (an image column and a label column "cat|dog", or one 0/1
column per class, or one row per image and label), JSON lines or a COCO-format export;
the format is found from the content (or --config.data.labels_format). One file for
every split: its split column (data.split_column) holds data.train_split and
data.eval_split, or, without one, a seeded data.holdout_fraction of its images is
evaluated on. Classes are sorted, or in the order of --config.data.class_list=FILE (one
name per line). See kmcl_jax/data/label_files and README.md ("Your own data").

Variants: `:tresnet_l` (TResNet-L, 448 px, batch 128, lr 4e-4, 80 epochs), `:tresnet_l_v2`
(the same on TResNet-L-v2, the authors' multi-GPU default) and `:smoke` (`tresnet_tiny`
at 32 px from random weights, 6 steps: reads your files and trains in a minute or two on
a CPU, to check them before a real run).
"""

from kmcl_jax.config import apply_variants, defaults

VARIANTS = ("", "tresnet_l", "tresnet_l_v2", "smoke")


def get_config(arg=None):
  config = defaults()
  config.data.name = "labels"
  config.data.train_split, config.data.eval_split = "train", "val"  # split-column values
  if arg == "smoke":
    config.model.backbone = "tresnet_tiny"
    config.init_from = "scratch"
    config.data.image_size = 32
    config.data.worker_count = 0
    config.data.read_threads = 2
    config.batch_size = config.eval_batch_size = 8
    config.train_steps = 6
    config.checkpoint_every_steps = 3
    config.log_every_steps = 2
    return config
  return apply_variants(config, arg, "configs/custom.py")
