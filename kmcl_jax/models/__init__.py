"""Flax modules of kmcl_jax: TResNet backbones, the KMM head and the whole KMCL model."""

from kmcl_jax.models.kmcl import KMCLModel
from kmcl_jax.models.kmm import KMM, KMCLHead
from kmcl_jax.models.tresnet import ARCHITECTURES, TResNet, create_backbone

__all__ = ["ARCHITECTURES", "KMM", "KMCLHead", "KMCLModel", "TResNet", "create_backbone"]
