"""Flax modules of kmcl_jax: the KMM head (and, with the backbone issue, TResNet)."""

from kmcl_jax.models.kmm import KMM, KMCLHead

__all__ = ["KMM", "KMCLHead"]
