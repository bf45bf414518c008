r"""The paper's ablations: the VOC recipe (configs/voc.py) with one thing changed.

  python -m kmcl_jax.main --config=configs/ablations.py:isotropic --workdir=WORKDIR \
      --config.data.root=/data/voc --config.init_from=/data/tresnet_m_imagenet_flax

Each variant differs from the base recipe in the line that sets it below:
  isotropic           the isotropic kernel (one mean and variance per class)
  mks                 anisotropic, one variance per dimension shared by all classes
  rbf                 isotropic, one variance per sample (an RBF kernel)
  asl_only            ASL alone: the head has only pi (no kernels)
  asl_reconstruction  ASL + reconstruction (contrastive weight 0)
  asl_contrastive     ASL + contrastive (reconstruction weight 0)
  temperature_0.1, temperature_0.5    tau of the contrastive term (0.17 in the recipe)
  embedding_64, embedding_256         D of the anisotropic kernel (128 in the recipe)
  coco_subset=CSV     MS-COCO 2014 trained on one of the authors' subsets of training
                      images, CSV a file in their COCO_Subset_<N>_Ids.csv format, e.g.
                      --config=configs/ablations.py:coco_subset=/data/COCO_Subset_20_Ids.csv
                      (and --config.data.root=/data/coco)
"""

from kmcl_jax.config import defaults

ABLATIONS = {
  "isotropic": {"model.kernel": "isotropic"},
  "mks": {"model.variance": "MKS"},
  "rbf": {"model.kernel": "isotropic", "model.variance": "RBF"},
  "asl_only": {"model.mode": "asl_only"},
  "asl_reconstruction": {"loss.weights.contrastive": 0.0},
  "asl_contrastive": {"loss.weights.reconstruction": 0.0},
  "temperature_0.1": {"loss.temperature": 0.1},
  "temperature_0.5": {"loss.temperature": 0.5},
  "embedding_64": {"model.embedding_dim": 64},
  "embedding_256": {"model.embedding_dim": 256},
  "coco_subset": {
    "data.name": "coco2014",
    "data.train_split": "train",
    "data.eval_split": "val",
  },  # and data.subset_ids, from the variant
}
VARIANTS = tuple(a for a in ABLATIONS if a != "coco_subset") + (
  "coco_subset=COCO_Subset_20_Ids.csv",
)


def get_config(arg=None):
  name, _, subset_ids = (arg or "").partition("=")
  if name not in ABLATIONS or (name == "coco_subset") != bool(subset_ids):
    raise ValueError(
      f"configs/ablations.py: unknown variant {arg!r}; expected one of "
      f"{sorted(set(ABLATIONS) - {'coco_subset'})} or coco_subset=CSV."
    )
  config = defaults()
  config.data.name = "voc2007"
  config.data.train_split, config.data.eval_split = "trainval", "test"
  config.update_from_flattened_dict(ABLATIONS[name])
  if subset_ids:
    config.data.subset_ids = subset_ids
  return config
