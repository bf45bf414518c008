"""The kernel mixture module (KMM): the head that turns pooled backbone features into
class logits pi and per-class Gaussian kernels (mu, var), spec section 1.

    pooled (B, C) -> [anisotropic] projection Dense(C -> 128) -> f (B, D)
    f -> pi  = Dense(D -> K)                                   (B, K)
    f -> mu  = Dense(D -> D*K), read as (D, K)                  (B, D, K) | Dense(D -> K) (B, K)
    f -> var = 2 + 1e-7 + ELU(Dense(...))                      same shape as mu, > 1

Parameters are float32; `dtype` sets the compute dtype of the Dense layers (bfloat16 on
accelerators) and every output is float32, ready for `kmcl_jax.losses`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kmcl_jax.losses import KERNELS, MODES

VARIANCES = ("BC", "MKS", "RBF")
PROJECTION_DIM = 128  # the reference's anisotropic embedding size
VARIANCE_OFFSET = 2.0 + 1e-7  # var = 2 + 1e-7 + ELU(x) > 1


def _check_head(kernel: str, variance: str, mode: str) -> None:
  if kernel not in KERNELS:
    raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}.")
  if variance not in VARIANCES:
    raise ValueError(f"`variance` must be one of {VARIANCES}, got {variance!r}.")
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
  if (variance, kernel) in (("MKS", "isotropic"), ("RBF", "anisotropic")):
    raise ValueError(f"`variance`={variance!r} is defined for the "
                     f"{'anisotropic' if variance == 'MKS' else 'isotropic'} kernel only, "
                     f"got kernel={kernel!r}.")


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
    dtype: compute dtype of the Dense layers.
  """

  num_classes: int
  kernel: str = "anisotropic"
  variance: str = "BC"
  mode: str = "all"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array) -> dict[str, jax.Array | None]:
    _check_head(self.kernel, self.variance, self.mode)
    batch, dim = features.shape
    classes = self.num_classes
    dense = lambda n, name, **kw: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32,
                                           name=name, **kw)
    pi = dense(classes, "pi")(features).astype(jnp.float32)
    if self.mode == "asl_only":
      return {"pi": pi, "mu": None, "var": None}

    anisotropic = self.kernel == "anisotropic"
    mu_shape = (batch, dim, classes) if anisotropic else (batch, classes)
    mu_size = dim * classes if anisotropic else classes
    mu = dense(mu_size, "mu", kernel_init=_uniform(0.0, 0.1))(features)
    # MKS: one variance per dimension, shared by every class; RBF: one per sample.
    var_size, var_shape = {"BC": (mu_size, mu_shape), "MKS": (dim, (batch, dim, 1)),
                           "RBF": (1, (batch, 1))}[self.variance]
    raw_var = dense(var_size, "var", kernel_init=nn.initializers.ones)(features)
    var = VARIANCE_OFFSET + nn.elu(raw_var.astype(jnp.float32))
    return {
        "pi": pi,
        "mu": mu.astype(jnp.float32).reshape(mu_shape),
        "var": jnp.broadcast_to(var.reshape(var_shape), mu_shape),
    }


class KMCLHead(nn.Module, kw_only=True):
  """Projection (anisotropic only) followed by the KMM head.

  Input: pooled backbone features (B, C). Output: {"features": f (B, D) float32,
  "pi", "mu", "var"} as `KMM` returns them, D = 128 anisotropic, D = C isotropic. The
  projection is the reference's 1x1 Conv1d "downsampler", i.e. a Dense layer.

  Attributes:
    num_classes, kernel, variance, mode, dtype: as `KMM`'s.
  """

  num_classes: int
  kernel: str = "anisotropic"
  variance: str = "BC"
  mode: str = "all"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> dict[str, jax.Array | None]:
    _check_head(self.kernel, self.variance, self.mode)
    features = pooled
    if self.kernel == "anisotropic":  # the reference projects in ASL-only mode too
      features = nn.Dense(PROJECTION_DIM, dtype=self.dtype, param_dtype=jnp.float32,
                          name="projection")(pooled)
    outputs = KMM(num_classes=self.num_classes, kernel=self.kernel, variance=self.variance,
                  mode=self.mode, dtype=self.dtype, name="kmm")(features)
    return {"features": features.astype(jnp.float32), **outputs}
