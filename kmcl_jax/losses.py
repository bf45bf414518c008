"""The KMCL objective, L = L_asl + L_rec + L_con, as docs/method.md (section 2) states it.

The three terms appear below in that order (sections 2a, 2b, 2c), followed by
their sum. Notation: B batch, K classes, D embedding dimension, y the (B, K) binary
labels, s the sigmoid. Every term is computed in float32 whatever dtype its inputs
arrive in, and every function works under `jax.jit` and `jax.grad` for any B >= 1.

Input checks (shapes, kernel and mode names) run at trace time and cost nothing in a
compiled step. Value checks (binary labels, positive variances) run only when the
inputs are concrete arrays, i.e. in eager calls; inside `jit` values are unknown.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kmcl_jax.mesh import DATA_AXIS

KERNELS = ("anisotropic", "isotropic")
MODES = ("all", "asl_only")

# Constants of the reference implementation (docs/method.md, section 2).
FLOAT32_TINY = 1.17549e-38  # the clamp `t` on Gaussians and exponentials
FLOAT32_HUGE = 1.17549e38  # what an infinite exponential is replaced by
SIGMA_EPS = 1.4901161193847656e-08  # added to sqrt(var) to form sigma
LOG_EPS = 1e-7  # floor of the reconstruction ratio; offset inside the contrastive log


# --------------------------------------------------------------------------------------
# Input checks.
# --------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _check_labels(labels, pi_shape: tuple[int, ...] | None = None) -> None:
  if labels.ndim != 2:
    raise ValueError(f"`labels` must have shape (B, K), got {labels.shape}.")
  if pi_shape is not None and tuple(labels.shape) != tuple(pi_shape):
    raise ValueError(f"`labels` must have the shape of `pi` {tuple(pi_shape)}, got {labels.shape}.")
  if _is_concrete(labels):
    values = np.asarray(labels)
    if not np.all((values == 0) | (values == 1)):
      raise ValueError("`labels` must contain only 0 and 1 (the training labels y).")


def _check_gaussians(mu, var, labels, kernel: str, feature_dim: int | None) -> None:
  """Checks mu/var shapes: (B, D, K) anisotropic, (B, K) isotropic; var > 0."""
  _check_choice("kernel", kernel, KERNELS)
  batch, classes = labels.shape
  if kernel == "anisotropic":
    expected = f"(B={batch}, D, K={classes})"
    ok = mu.ndim == 3 and mu.shape[0] == batch and mu.shape[2] == classes
    if ok and feature_dim is not None and mu.shape[1] != feature_dim:
      expected, ok = f"(B={batch}, D={feature_dim}, K={classes})", False
  else:
    expected = f"(B={batch}, K={classes})"
    ok = mu.ndim == 2 and tuple(mu.shape) == (batch, classes)
  if not ok:
    raise ValueError(f"`mu` must have shape {expected} for the {kernel} kernel, got {mu.shape}.")
  if tuple(var.shape) != tuple(mu.shape):
    raise ValueError(f"`var` must have the shape of `mu` {tuple(mu.shape)}, got {var.shape}.")
  if _is_concrete(var) and not np.all(np.asarray(var) > 0):
    raise ValueError("`var` must be strictly positive everywhere.")


# Every matrix product of the loss is float32: JAX's default precision for float32 dots
# is bfloat16 passes on TPU and TF32 on recent GPUs, which would round the contrastive
# denominators, the Jaccard intersections and the gradient sums to 8-10 bits.
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _sigma(var: jax.Array) -> jax.Array:
  return jnp.sqrt(var.astype(jnp.float32)) + SIGMA_EPS


# --------------------------------------------------------------------------------------
# 2a. Asymmetric loss (ASL): a sum over batch and classes.
# --------------------------------------------------------------------------------------


def asl_loss(pi, labels, *, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-7):
  """Asymmetric loss of Ridnik et al., summed (not averaged) over batch and classes.

  Args:
    pi: (B, K) class logits.
    labels: (B, K) binary targets y.
    gamma_neg, gamma_pos: focusing exponents of negatives and positives.
    clip: asymmetric probability margin m added to 1 - p (0 disables it).
    eps: floor of the probabilities inside the logs.

  Returns:
    Scalar float32 L_asl. The focusing weight w carries no gradient.
  """
  if pi.ndim != 2:
    raise ValueError(f"`pi` must have shape (B, K), got {pi.shape}.")
  _check_labels(labels, pi.shape)
  y = labels.astype(jnp.float32)
  p = jax.nn.sigmoid(pi.astype(jnp.float32))
  p_neg = 1.0 - p
  if clip is not None and clip > 0:
    p_neg = jnp.minimum(p_neg + clip, 1.0)
  log_likelihood = y * jnp.log(jnp.maximum(p, eps)) + (1.0 - y) * jnp.log(jnp.maximum(p_neg, eps))
  p_true = p * y + p_neg * (1.0 - y)
  focus = jax.lax.stop_gradient(jnp.power(1.0 - p_true, gamma_pos * y + gamma_neg * (1.0 - y)))
  return -jnp.sum(log_likelihood * focus)


# --------------------------------------------------------------------------------------
# 2b. Reconstruction loss: -log of the mixture responsibility of the true classes.
# --------------------------------------------------------------------------------------


def reconstruction_loss(features, pi, mu, var, labels, *, kernel):
  """Mean over the batch of -log max(r, 1e-7), r = sum_k y s(pi) G / sum_k s(pi) G.

  G[b, k] is the (unnormalised) Gaussian kernel of class k evaluated at the sample's
  own feature. The ratio is evaluated in log space: with D = 128 the reference's G sits
  on its 1.17549e-38 clamp, where float32 subnormals would flush to 0/0. Scaling by
  the per-sample maximum leaves the scale-free ratio unchanged.

  Args:
    features: (B, D) features f.
    pi: (B, K) class logits.
    mu, var: (B, D, K) anisotropic or (B, K) isotropic means and variances.
    labels: (B, K) binary targets y.
    kernel: "anisotropic" or "isotropic".

  Returns:
    Scalar float32 L_rec.
  """
  if features.ndim != 2:
    raise ValueError(f"`features` must have shape (B, D), got {features.shape}.")
  if pi.ndim != 2 or pi.shape[0] != features.shape[0]:
    raise ValueError(f"`pi` must have shape (B={features.shape[0]}, K), got {pi.shape}.")
  _check_labels(labels, pi.shape)
  _check_gaussians(mu, var, labels, kernel, features.shape[1] if kernel == "anisotropic" else None)
  f = features.astype(jnp.float32)
  mu = mu.astype(jnp.float32)
  sigma = _sigma(var)
  if kernel == "anisotropic":
    sq_dist = jnp.sum(jnp.square((f[:, :, None] - mu) / sigma), axis=1)
  else:
    # sum_d (f_d - mu_k)^2 = sum_d (f_d - mean f)^2 + D (mean f - mu_k)^2: two
    # non-negative terms (no cancellation), O(B (D + K)) instead of O(B D K).
    f_mean = jnp.mean(f, axis=1, keepdims=True)
    spread = jnp.sum(jnp.square(f - f_mean), axis=1, keepdims=True)
    sq_dist = (spread + f.shape[1] * jnp.square(f_mean - mu)) / jnp.square(sigma)
  log_gauss = jnp.maximum(-0.5 * sq_dist, math.log(FLOAT32_TINY))
  log_weight = jax.nn.log_sigmoid(pi.astype(jnp.float32)) + log_gauss
  weight = jnp.exp(log_weight - jax.lax.stop_gradient(jnp.max(log_weight, axis=1, keepdims=True)))
  y = labels.astype(jnp.float32)
  # -log max(r, eps) with r = pos / (pos + neg) is log1p(neg / pos) where the floor does
  # not bind: exact also where r is within float32 rounding of 1. Where it binds (pos <
  # eps (pos + neg), no positive class included) it is the constant -log(eps); pos is
  # kept away from 0 in the other branch so that its unused gradient stays finite.
  positive = jnp.sum(y * weight, axis=1)
  negative = jnp.sum((1.0 - y) * weight, axis=1)
  floored = positive < LOG_EPS * (positive + negative)
  ratio = negative / jnp.where(floored, 1.0, positive)
  return jnp.mean(jnp.where(floored, -math.log(LOG_EPS), jnp.log1p(ratio)))


# --------------------------------------------------------------------------------------
# 2c. Kernel contrastive loss over Bhattacharyya similarities.
# --------------------------------------------------------------------------------------
#
# BD[i, j, k] = sum_d M/2 log((a_i + a_j) / (2 s_i s_j)) + M/4 (mu_i - mu_j)^2 / (a_i + a_j)
# with s = sigma, a = s^2 (all indexed [., d, k]). Everything an anchor i contributes
# depends on row i of BD only, so the forward pass walks blocks of anchor rows: one log
# and one division per (j, d, k), reduced over d at once, then the anchor's loss and its
# gradient w.r.t. the row. Only that gradient (B x B x K) is kept for the backward
# pass; nothing B x B x D x K is stored.
# BD is symmetric in (i, j), so the backward pass folds its cotangent g into g + g^T and
# accumulates every anchor's gradient over the columns j in one pass, instead of one
# pass for the anchor side and one for the column side.


def default_block_size(
  batch: int, dim: int, classes: int, budget_elements: int = 1 << 25, max_block: int = 32
) -> int:
  """Anchors per block: a power of two whose block x B x D x K work fits the budget.

  Powers of two split common batch sizes evenly (an uneven last block compiles a second
  loop body). The cap of 32 anchors and the 2^25-element budget were measured on a
  2-core CPU (larger blocks bought no speed there); on an accelerator, where a block
  fills the chip, revisit both with `python -m kmcl_jax.benchmarks.loss`.
  """
  rows = max(1, min(batch, max_block, budget_elements // max(1, batch * dim * classes)))
  return 1 << (rows.bit_length() - 1)


def _bd_anchor(mu_i, sigma_i, mu, sigma, scale):
  """Row i of BD: (D, K) and (B, D, K) -> (B, K)."""
  a_i, a = jnp.square(sigma_i), jnp.square(sigma)
  half_inv_i, half_inv = 1.0 / (math.sqrt(2.0) * sigma_i), 1.0 / (math.sqrt(2.0) * sigma)
  total_var = a_i + a
  log_ratio = jnp.log(total_var * half_inv_i * half_inv)
  mean_term = jnp.square(mu_i - mu) / total_var
  return jnp.sum((0.5 * scale) * log_ratio + (0.25 * scale) * mean_term, axis=1)


def _anchor_loss_and_grad(distance_i, y_i, y, jaccard_i, others_i, temperature):
  """loss_i of docs/method.md, 2c, and its gradient w.r.t. row i of BD.

  Args:
    distance_i: (B, K) row i of BD.
    y_i, y: (K,) labels of anchor i and (B, K) labels of the batch.
    jaccard_i: (B,) Jaccard index of y_i with every y_j.
    others_i: (B,) 1 for j != i, 0 for j = i.
    temperature: tau.

  Returns:
    (loss_i, d loss_i / d distance_i of shape (B, K), statistics (4,)). The gradient is
    written out by hand: it is elementwise but for one sum over j, and costs a fraction
    of what autodiff of this function costs under vmap. Since BC is in [0, 1], 1 <= E <=
    exp(1/tau): the clamps on E never bind and carry gradient 1. The statistics are the
    sums and counts of the Bhattacharyya coefficients BC[i, j, k] (j != i) over the
    classes both samples have and over the rest: what shows whether the kernels
    separate same-class pairs from the others.
  """
  similarity = jnp.exp(-distance_i)  # Bhattacharyya coefficient
  exp_sim = jnp.minimum(jnp.exp(similarity / temperature), FLOAT32_HUGE)
  others = others_i[:, None]
  shared = y_i * y * others  # P[i, j, k], binary
  # den[i, k] over all other samples: >= B - 1 since E >= 1; the floor only guards B = 1.
  denominator = jnp.maximum(_dot(others_i, exp_sim), 1.0)
  # q = max(E, tiny) J / den, used where P = 1; there J > 0, so q > 0 and the
  # "log(q + 1e-7) where q > 0, else 0" is P * log(q + 1e-7).
  ratio = jnp.maximum(exp_sim, FLOAT32_TINY) * (jaccard_i[:, None] / denominator)
  norm = 1.0 / jnp.maximum(jnp.sum(jnp.max(shared, axis=1)), 1.0)  # 1 / |A(i)|
  loss = -jnp.sum(shared * jnp.log(ratio + LOG_EPS)) * norm
  # d log(q + eps) / d log(E), directly and through den; then d log(E) / d BD = -BC/tau.
  direct = shared * (ratio / (ratio + LOG_EPS))
  through_denominator = others * exp_sim * (_dot(others_i, direct) / denominator)
  grad = (similarity / temperature) * (direct - through_denominator) * norm
  unshared = others - shared
  statistics = jnp.stack(
    [
      jnp.sum(shared * similarity),
      jnp.sum(shared),
      jnp.sum(unshared * similarity),
      jnp.sum(unshared),
    ]
  )
  return loss, grad, statistics


def class_pair_distances(mu, var, *, kernel, feature_dim):
  """BD between the class components of each sample: (B, K, K), symmetric, 0 diagonal.

  The distance of the contrastive term (the same M = feature_dim multiplier), taken
  between component k and component l of one sample rather than between two samples'
  components of one class: how close the head places two classes in an image.

  Args:
    mu, var: (B, D, K) anisotropic or (B, K) isotropic means and variances (var > 0).
    kernel: "anisotropic" or "isotropic".
    feature_dim: the multiplier M of the distance (the feature dimension D).
  """
  _check_choice("kernel", kernel, KERNELS)
  mu = mu.astype(jnp.float32)
  sigma = _sigma(var)
  if kernel == "isotropic":
    mu, sigma = mu[:, None, :], sigma[:, None, :]

  def one_sample(mu_b, sigma_b):  # (D, K) against every component as a (K, D, 1) batch
    return _bd_anchor(mu_b, sigma_b, mu_b.T[:, :, None], sigma_b.T[:, :, None], float(feature_dim))

  return jax.vmap(one_sample)(mu, sigma)


def _bd_column_grads(carry, column, mu, sigma, scale):
  """Adds column j's share of the gradient of sum_ij G[i,j] BD(x_i, x_j) to the rows x_i.

  Shapes: carry two (b, D, K) accumulators (mean, variance a) of the b rows held; column
  = (mu_j, sigma_j (D, K), G[rows, j] (b, K)), G symmetric. An elementwise update per
  column: XLA:CPU runs it several times faster than a reduction over j (measured on a
  2-core CPU; on an accelerator a reduction may win: revisit there). The -log(s_i)
  part of the log term is left to the caller (it needs no pairwise work).
  """
  grad_mu, grad_a = carry
  mu_j, sigma_j, g_j = column
  g = g_j[:, None, :]
  inv_total = 1.0 / (jnp.square(sigma) + jnp.square(sigma_j))
  scaled_diff = (mu - mu_j) * inv_total
  grad_mu = grad_mu + g * ((0.5 * scale) * scaled_diff)
  grad_a = grad_a + g * ((0.5 * scale) * inv_total - (0.25 * scale) * jnp.square(scaled_diff))
  return (grad_mu, grad_a), None


def _gathered(x, axis_name):
  """The whole batch from this device's rows (the rows themselves without a mesh axis)."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _blocked_anchor_losses(mu, sigma, labels, scale, temperature, block_size, axis_name):
  """(loss_i (b,), d loss_i / d BD[i] (b, B, K), statistics (b, 4)) over blocks of this
  device's b anchors."""
  mu_all, sigma_all, labels_all = (_gathered(x, axis_name) for x in (mu, sigma, labels))
  rows, batch = labels.shape[0], labels_all.shape[0]
  intersection = _dot(labels, labels_all.T)
  union = jnp.sum(labels, axis=1)[:, None] + jnp.sum(labels_all, axis=1)[None, :] - intersection
  jaccard = jnp.where(union > 0, intersection / jnp.where(union > 0, union, 1.0), 0.0)
  first_row = 0 if axis_name is None else jax.lax.axis_index(axis_name) * rows
  others = (first_row + jnp.arange(rows)[:, None] != jnp.arange(batch)[None, :]).astype(jnp.float32)

  def anchor(x):
    mu_i, sigma_i, y_i, jaccard_i, others_i = x
    distance_i = _bd_anchor(mu_i, sigma_i, mu_all, sigma_all, scale)
    return _anchor_loss_and_grad(distance_i, y_i, labels_all, jaccard_i, others_i, temperature)

  return jax.lax.map(anchor, (mu, sigma, labels, jaccard, others), batch_size=block_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def anchor_contrastive_losses(
  mu, sigma, labels, scale: float, temperature: float, block_size: int, axis_name: str | None = None
):
  """loss_i (docs/method.md, 2c) for every anchor i, in blocks of `block_size` anchors.

  Without `axis_name` the anchors are the whole batch. With it (inside `shard_map` over
  a mesh axis that splits the batch) they are this device's b = B / P rows, compared
  against the batch all-gathered over the axis: the pairwise work and the stored
  gradient (b x B x K) are split P ways. The backward pass needs, for its own rows m,
  d loss_n / d BD[n, m] of every anchor n; one all-to-all brings them, so no device
  ever holds a B x B x K array.

  Args:
    mu, sigma: (b, D, K) float32 means and standard deviations (D = 1 isotropic).
    labels: (b, K) float32 binary labels (no gradient).
    scale: the reference's multiplier M of BD (the feature dimension).
    temperature: tau.
    block_size: anchors per block; the pairwise work in flight is block x B x D x K.
    axis_name: the mesh axis the batch is split over, or None.

  Returns:
    (loss_i (b,) float32, statistics (b, 4)): anchors sharing no label with any other
    sample give 0; the statistics (no gradient) are per anchor the sum and count of BC
    over pairs sharing a class, then over the other pairs (`_anchor_loss_and_grad`).
  """
  per_anchor, _, statistics = _blocked_anchor_losses(
    mu, sigma, labels, scale, temperature, block_size, axis_name
  )
  return per_anchor, statistics


def _anchor_contrastive_fwd(mu, sigma, labels, scale, temperature, block_size, axis_name):
  per_anchor, distance_grad, statistics = _blocked_anchor_losses(
    mu, sigma, labels, scale, temperature, block_size, axis_name
  )
  return (per_anchor, statistics), (mu, sigma, labels, distance_grad)


def _anchor_contrastive_bwd(scale, temperature, block_size, axis_name, residuals, cotangents):
  del temperature, block_size  # the backward pass walks columns, one b x D x K slice each
  cotangent, _ = cotangents  # the statistics carry no gradient
  mu, sigma, labels, distance_grad = residuals  # distance_grad[i, j] = d loss_i / d BD[i, j]
  mu_all, sigma_all, cotangent_all = (_gathered(x, axis_name) for x in (mu, sigma, cotangent))
  # received[n, m] = d loss_n / d BD[n, m] for every anchor n and this device's rows m.
  received = (
    distance_grad
    if axis_name is None
    else jax.lax.all_to_all(distance_grad, axis_name, split_axis=1, concat_axis=0, tiled=True)
  )
  # g[i, n] = cotangent[i] distance_grad[i, n] is d L / d BD. Column n of its symmetric
  # fold g + g^T, restricted to this device's rows, is assembled per step from column n
  # of g and row n of the received block, never transposing anything.

  def column(carry, x):
    mu_n, sigma_n, received_n, cotangent_n, n = x
    grad_column_n = jax.lax.dynamic_index_in_dim(distance_grad, n, axis=1, keepdims=False)
    g_n = cotangent[:, None] * grad_column_n + cotangent_n * received_n
    return _bd_column_grads(carry, (mu_n, sigma_n, g_n), mu, sigma, scale)

  zeros = jnp.zeros_like(mu)
  columns = (mu_all, sigma_all, received, cotangent_all, jnp.arange(mu_all.shape[0]))
  (grad_mu, grad_a), _ = jax.lax.scan(column, (zeros, zeros), columns)
  g_sym_row_sums = cotangent[:, None] * jnp.sum(distance_grad, axis=1) + jnp.einsum(
    "n,nmk->mk", cotangent_all, received, precision=jax.lax.Precision.HIGHEST
  )
  grad_log_sigma = -(0.5 * scale) * g_sym_row_sums[:, None, :]
  grad_sigma = 2.0 * sigma * grad_a + grad_log_sigma / sigma
  return grad_mu, grad_sigma, jnp.zeros_like(labels)


anchor_contrastive_losses.defvjp(_anchor_contrastive_fwd, _anchor_contrastive_bwd)


def contrastive_loss(
  mu,
  var,
  labels,
  *,
  kernel,
  feature_dim,
  temperature=0.17,
  block_size=None,
  mesh: jax.sharding.Mesh | None = None,
  axis_name: str = DATA_AXIS,
  with_statistics: bool = False,
):
  """Kernel contrastive loss L_con over every ordered pair of the batch.

  Args:
    mu, var: (B, D, K) anisotropic or (B, K) isotropic means and variances (var > 0).
    labels: (B, K) binary targets y.
    kernel: "anisotropic" or "isotropic".
    feature_dim: the multiplier M of the distance (the feature dimension D).
    temperature: tau.
    block_size: anchors per block of pairwise work; None picks `default_block_size`,
      which keeps a block under 2^25 elements (128 MiB of float32).
    mesh, axis_name: when given, the anchors are split over the mesh axis `axis_name`
      (B must divide evenly): each device computes the loss of its B / P anchors against
      the whole, all-gathered batch. The value is the same; per-device work and memory
      shrink P-fold. Use it under `jit` with the batch sharded over that axis.

    with_statistics: also return {"bc_positive", "bc_negative"}: the mean Bhattacharyya
      coefficient over pairs of different samples and classes both have, and over the
      other pairs of different samples (NaN where there is no such pair); taken from
      the loss's own pairwise pass.

  Returns:
    Scalar float32 L_con (0 when no two samples share a label), and the statistics if
    asked for.
  """
  _check_labels(labels)
  _check_gaussians(mu, var, labels, kernel, None)
  mu = mu.astype(jnp.float32)
  sigma = _sigma(var)
  if kernel == "isotropic":
    mu, sigma = mu[:, None, :], sigma[:, None, :]
  batch, dim, classes = mu.shape
  if block_size is None:
    block_size = default_block_size(batch, dim, classes)
  if block_size < 1:
    raise ValueError(
      f"`block_size` must be a positive number of anchors or None, got {block_size}."
    )
  devices = 1 if mesh is None else mesh.shape[axis_name]
  if batch % devices:
    raise ValueError(
      f"The batch of {batch} does not split evenly over the {devices} devices of "
      f"mesh axis {axis_name!r}."
    )
  static = (float(feature_dim), float(temperature), int(min(block_size, batch // devices)))
  labels = labels.astype(jnp.float32)
  if devices == 1:
    per_anchor, statistics = anchor_contrastive_losses(mu, sigma, labels, *static)
  else:
    per_anchor, statistics = jax.shard_map(
      lambda *rows: anchor_contrastive_losses(*rows, *static, axis_name),
      mesh=mesh,
      in_specs=jax.sharding.PartitionSpec(axis_name),
      out_specs=jax.sharding.PartitionSpec(axis_name),
    )(mu, sigma, labels)
  value = jnp.sum(per_anchor) / batch
  if not with_statistics:
    return value
  positive_sum, positive_count, negative_sum, negative_count = jnp.sum(statistics, axis=0)
  mean = lambda total, count: jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)
  return value, {
    "bc_positive": mean(positive_sum, positive_count),
    "bc_negative": mean(negative_sum, negative_count),
  }


# --------------------------------------------------------------------------------------
# The total: L = L_asl + L_rec + L_con.
# --------------------------------------------------------------------------------------


TERMS = ("asl", "reconstruction", "contrastive")


def kmcl_loss(
  features,
  pi,
  mu,
  var,
  labels,
  *,
  kernel="anisotropic",
  mode="all",
  temperature=0.17,
  gamma_neg=4.0,
  gamma_pos=0.0,
  clip=0.05,
  weights: Mapping[str, float] | None = None,
  reference_batch: int | None = None,
  block_size=None,
  mesh: jax.sharding.Mesh | None = None,
  axis_name: str = DATA_AXIS,
  with_diagnostics: bool = False,
):
  """The KMCL objective L = w_asl L_asl + w_rec L_rec + w_con L_con.

  L_asl is a sum over the batch, the other two terms are means. With `reference_batch`
  it enters as that sum times reference_batch / B for the B samples it is computed
  over, so the three terms keep the proportions they have at the reference's batch
  whatever the batch: at B = reference_batch nothing changes, at 4x the batch L_asl is
  the mean of its four reference-sized chunks' sums. Without it L_asl is the plain sum
  (the reference's loss at its own batch).

  Args:
    features: (B, D) features f (ignored when mode="asl_only").
    pi: (B, K) class logits.
    mu, var: (B, D, K) anisotropic or (B, K) isotropic (ignored when mode="asl_only").
    labels: (B, K) binary targets y.
    kernel: "anisotropic" or "isotropic".
    mode: "all" for every term, "asl_only" for L_asl alone.
    weights: {"asl", "reconstruction", "contrastive"} -> weight (missing ones are 1); a
      term of weight 0 is not computed at all (and reported as 0).
    reference_batch: the batch size the ASL sum is balanced to (None: no balancing).
    temperature, gamma_neg, gamma_pos, clip, block_size, mesh, axis_name: see the
      individual terms (`mesh` splits the contrastive term's anchors over devices).
    with_diagnostics: also return {"bc_positive", "bc_negative", "var_mean", "var_std"}
      (see `contrastive_loss`; the mean and standard deviation of every predicted
      variance), computed without a second pass; NaN where not computed.

  Returns:
    (total, {"asl", "reconstruction", "contrastive"}) float32 scalars, the terms as they
    enter the total before their weights; and the diagnostics if asked for.
  """
  _check_choice("mode", mode, MODES)
  _check_choice("kernel", kernel, KERNELS)
  weights = {term: 1.0 for term in TERMS} | dict(weights or {})
  if set(weights) != set(TERMS):
    raise ValueError(f"`weights` must name terms of {TERMS}, got {sorted(weights)}.")
  zero = jnp.zeros((), jnp.float32)
  terms = dict.fromkeys(TERMS, zero)
  diagnostics = {
    name: jnp.full((), jnp.nan, jnp.float32)
    for name in ("bc_positive", "bc_negative", "var_mean", "var_std")
  }
  if weights["asl"]:
    terms["asl"] = asl_loss(pi, labels, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    if reference_batch is not None:
      terms["asl"] = terms["asl"] * (reference_batch / labels.shape[0])
  if mode == "all":
    if weights["reconstruction"]:
      terms["reconstruction"] = reconstruction_loss(features, pi, mu, var, labels, kernel=kernel)
    if weights["contrastive"]:
      terms["contrastive"], statistics = contrastive_loss(
        mu,
        var,
        labels,
        kernel=kernel,
        feature_dim=features.shape[-1],
        temperature=temperature,
        block_size=block_size,
        mesh=mesh,
        axis_name=axis_name,
        with_statistics=True,
      )
      diagnostics.update(statistics)
    variances = var.astype(jnp.float32)
    diagnostics.update(var_mean=jnp.mean(variances), var_std=jnp.std(variances))
  total = (
    weights["asl"] * terms["asl"]
    + weights["reconstruction"] * terms["reconstruction"]
    + weights["contrastive"] * terms["contrastive"]
  )
  diagnostics = jax.tree.map(jax.lax.stop_gradient, diagnostics)
  return (total, terms, diagnostics) if with_diagnostics else (total, terms)
