"""The whole KMCL model: TResNet backbone -> KMCL head (projection + KMM).

docs/method.md, section 1."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kmcl_jax.models.kmm import DEFAULT_EMBEDDING_DIM, KMCLHead
from kmcl_jax.models.tresnet import create_backbone


class KMCLModel(nn.Module, kw_only=True):
  """images (B, H, W, 3) -> {"features" (B, D), "pi" (B, K), "mu", "var"}, all float32.

  Head settings (num_classes, kernel, variance, mode, embedding_dim) are `KMCLHead`'s.
  `dtype` is the backbone's compute dtype; the head computes in float32 from the pooled
  features on, whatever it is. `remat` rematerialises backbone blocks.

  Variables: {"params": {"backbone": ..., "head": {"projection", "kmm"}},
              "batch_stats": {"backbone": ...}}.
  """

  backbone: str
  num_classes: int
  kernel: str = "anisotropic"
  variance: str = "BC"
  mode: str = "all"
  embedding_dim: int = DEFAULT_EMBEDDING_DIM
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array | None]:
    pooled = create_backbone(self.backbone, dtype=self.dtype, remat=self.remat, name="backbone")(
      images, train
    )
    return KMCLHead(
      num_classes=self.num_classes,
      kernel=self.kernel,
      variance=self.variance,
      mode=self.mode,
      embedding_dim=self.embedding_dim,
      name="head",
    )(pooled)
