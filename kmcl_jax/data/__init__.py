"""Datasets of the paper, an embedded demo set, and the grain input pipeline.

`get_source(name, split, root)` returns a grain random-access source (len, getitem) of
records {"image": uint8 (H, W, 3), "labels": float32 (K,), "ignore": bool (K,), "id": str}
with `class_names`; `create_datasets(config)` builds the sharded training and evaluation
pipelines over it (the training stream from any step: `Datasets.train_from(step)`).
"""

from __future__ import annotations

from kmcl_jax.data.image_files import CorruptImageError
from kmcl_jax.data.pipeline import Datasets, create_datasets, create_eval_dataset
from kmcl_jax.data.sources import get_source

__all__ = ["CorruptImageError", "Datasets", "create_datasets", "create_eval_dataset", "get_source"]
