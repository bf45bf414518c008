r"""The embedded demo set (digit grids built from scikit-learn's digits) on a tiny TResNet.

Trains from scratch on 2 CPU cores in a few minutes to a test mAP above 90:

  python -m kmcl_jax.main --config=configs/demo.py --workdir=/tmp/kmcl_demo

Variants (comma-separated to combine): `smoke` (a few steps, for tests and for trying
the program); `correlated` (the digit grids with label correlations by construction,
data/demo.py's PAIRS, for `python -m kmcl_jax.analyze`).
"""

from kmcl_jax.config import defaults

VARIANTS = ("", "smoke", "correlated", "correlated,smoke")


def get_config(arg=None):
  variants = set(arg.split(",")) if arg else set()
  if variants - {"smoke", "correlated"}:
    raise ValueError(
      f"configs/demo.py: unknown variant {arg!r}; expected 'smoke', 'correlated', both "
      "(comma-separated) or none."
    )
  config = defaults()
  config.model.backbone = "tresnet_tiny"
  config.init_from = "scratch"  # the demo trains from random weights
  config.data.name = "demo"
  config.data.train_split, config.data.eval_split = "train", "test"
  config.data.image_size = 64
  config.data.worker_count = 1
  config.data.read_threads = 2
  config.batch_size = 64
  config.eval_batch_size = 200
  config.num_epochs = 12
  config.optim.lr = 3e-3
  config.ema_decay = 0.99
  config.eval_every_epochs = 3
  config.checkpoint_every_steps = 200
  config.log_every_steps = 20
  if "correlated" in variants:
    config.data.name = "demo_correlated"
  if "smoke" in variants:
    config.batch_size = 8
    config.eval_batch_size = 100
    config.train_steps = 6
    config.data.image_size = 32
    config.data.worker_count = 0
    config.checkpoint_every_steps = 3
    config.log_every_steps = 2
  return config
