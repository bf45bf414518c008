"""The kernel mixture module (KMM): the head that turns pooled backbone features into
class logits pi and per-class Gaussian kernels (mu, var); docs/method.md, section 1.

    pooled (B, C) -> [anisotropic] projection Dense(C -> embedding_dim) -> f (B, D)
    f -> pi  = Dense(D -> K)                                   (B, K)
    f -> mu  = Dense(D -> D*K), read as (D, K)                  (B, D, K) | Dense(D -> K) (B, K)
    f -> var = 2 + 1e-7 + ELU(Dense(...))                      same shape as mu, > 1

The head computes in float32 whatever the backbone's compute dtype: its input is cast to
float32 and every Dense layer multiplies at full float32 precision
(`jax.lax.Precision.HIGHEST`; the default would round products to bfloat16 on TPUs and
to TF32 on recent GPUs). mu and var feed the loss's exponentials and pairwise distances,
where 8 significant bits would show; the head is a negligible share of the model's
work. Parameters and outputs are float32, ready for `kmcl_jax.losses`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kmcl_jax.losses import KERNELS, MODES

VARIANCES = ("BC", "MKS", "RBF")
DEFAULT_EMBEDDING_DIM = 128  # the reference's anisotropic projection size
VARIANCE_OFFSET = 2.0 + 1e-7  # var = 2 + 1e-7 + ELU(x) > 1


def _check_head(kernel: str, variance: str, mode: str) -> None:
  if kernel not in KERNELS:
    raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}.")
  if variance not in VARIANCES:
    raise ValueError(f"`variance` must be one of {VARIANCES}, got {variance!r}.")
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
  if (variance, kernel) in (("MKS", "isotropic"), ("RBF", "anisotropic")):
    raise ValueError(
      f"`variance`={variance!r} is defined for the "
      f"{'anisotropic' if variance == 'MKS' else 'isotropic'} kernel only, "
      f"got kernel={kernel!r}."
    )


def _float32_dense(features: int, name: str, **kwargs) -> nn.Dense:
  """A Dense layer computing and storing in float32 at full precision."""
  return nn.Dense(
    features,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    precision=jax.lax.Precision.HIGHEST,
    name=name,
    **kwargs,
  )


def _uniform(low: float, high: float):
  """Initialiser drawing U(low, high), as torch's `nn.init.uniform_`."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, low, high)

  return init


class KMM(nn.Module, kw_only=True):
  """pi / mu / var heads on features f (B, D): Dense layers named `pi`, `mu` and `var`.

  Attributes:
    num_classes: K.
    kernel: "anisotropic" (mu, var (B, D, K)) or "isotropic" (mu, var (B, K)).
    variance: "BC" one variance per mean entry; "MKS" one per dimension shared by all
      classes (anisotropic); "RBF" one per sample (isotropic). var always comes back
      broadcast to mu's shape.
    mode: "all", or "asl_only" for the pi head alone (mu and var are None).
  """

  num_classes: int
  kernel: str = "anisotropic"
  variance: str = "BC"
  mode: str = "all"

  @nn.compact
  def __call__(self, features: jax.Array) -> dict[str, jax.Array | None]:
    _check_head(self.kernel, self.variance, self.mode)
    features = features.astype(jnp.float32)
    batch, dim = features.shape
    classes = self.num_classes
    pi = _float32_dense(classes, "pi")(features)
    if self.mode == "asl_only":
      return {"pi": pi, "mu": None, "var": None}

    anisotropic = self.kernel == "anisotropic"
    mu_shape = (batch, dim, classes) if anisotropic else (batch, classes)
    mu_size = dim * classes if anisotropic else classes
    mu = _float32_dense(mu_size, "mu", kernel_init=_uniform(0.0, 0.1))(features)
    # MKS: one variance per dimension, shared by every class; RBF: one per sample.
    var_size, var_shape = {
      "BC": (mu_size, mu_shape),
      "MKS": (dim, (batch, dim, 1)),
      "RBF": (1, (batch, 1)),
    }[self.variance]
    raw_var = _float32_dense(var_size, "var", kernel_init=nn.initializers.ones)(features)
    var = VARIANCE_OFFSET + nn.elu(raw_var)
    return {
      "pi": pi,
      "mu": mu.reshape(mu_shape),
      "var": jnp.broadcast_to(var.reshape(var_shape), mu_shape),
    }


class KMCLHead(nn.Module, kw_only=True):
  """Projection (anisotropic only) followed by the KMM head.

  Input: pooled backbone features (B, C), any float dtype. Output: {"features": f (B, D),
  "pi", "mu", "var"} as `KMM` returns them, all float32 and computed in float32,
  D = embedding_dim anisotropic, D = C isotropic. The projection is the reference's 1x1
  Conv1d "downsampler", i.e. a Dense layer.

  Attributes:
    num_classes, kernel, variance, mode: as `KMM`'s.
    embedding_dim: D of the anisotropic kernel, the projection's output size (the
      reference's 128 by default); the isotropic kernel keeps the backbone's C.
  """

  num_classes: int
  kernel: str = "anisotropic"
  variance: str = "BC"
  mode: str = "all"
  embedding_dim: int = DEFAULT_EMBEDDING_DIM

  @nn.compact
  def __call__(self, pooled: jax.Array) -> dict[str, jax.Array | None]:
    _check_head(self.kernel, self.variance, self.mode)
    if self.embedding_dim < 1:
      raise ValueError(f"`embedding_dim` must be a positive integer, got {self.embedding_dim}.")
    features = pooled.astype(jnp.float32)
    if self.kernel == "anisotropic":  # the reference projects in ASL-only mode too
      features = _float32_dense(self.embedding_dim, "projection")(features)
    outputs = KMM(
      num_classes=self.num_classes,
      kernel=self.kernel,
      variance=self.variance,
      mode=self.mode,
      name="kmm",
    )(features)
    return {"features": features, **outputs}
