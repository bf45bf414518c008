"""A slow, obviously-correct float64 NumPy transcription of the loss (docs/method.md, section 2).

Written line by line from the method's equations, with a Python loop over
anchors as the reference has; it shares no code with `kmcl_jax.losses`.
"""

import numpy as np

TINY = 1.17549e-38
HUGE = 1.17549e38
E0 = 1.4901161193847656e-08


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def asl(logits, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-7, focus_logits=None):
  """`focus_logits`: where to evaluate the focusing weight w (default: at `logits`).

  No gradient flows through w; finite differences freeze it this way.
  """
  p = sigmoid(logits)
  pn = np.minimum(1.0 - p + clip, 1.0)
  log_likelihood = y * np.log(np.maximum(p, eps)) + (1 - y) * np.log(np.maximum(pn, eps))
  if focus_logits is not None:
    p_w = sigmoid(focus_logits)
    pt = p_w * y + np.minimum(1.0 - p_w + clip, 1.0) * (1 - y)
  else:
    pt = p * y + pn * (1 - y)
  w = (1 - pt) ** (gamma_pos * y + gamma_neg * (1 - y))
  return -np.sum(log_likelihood * w)


def reconstruction(f, logits, mu, var, y, kernel):
  """Evaluates G and r directly, in float64 (no subnormal issue there)."""
  batch, classes = y.shape
  sigma = np.sqrt(var) + E0
  total = 0.0
  for b in range(batch):
    log_g = np.empty(classes)
    for k in range(classes):
      if kernel == "anisotropic":
        expo = -0.5 * np.sum((f[b] - mu[b, :, k]) ** 2 / sigma[b, :, k] ** 2)
      else:
        expo = -0.5 * np.sum((f[b] - mu[b, k]) ** 2 / sigma[b, k] ** 2)
      log_g[k] = max(expo, np.log(TINY))
    # G = max(G, TINY) in the method; in float64 exp(log_g) may go below TINY's float64
    # neighbourhood only at the clamp, which log space keeps exact.
    s = sigmoid(logits[b])
    w = s * np.exp(log_g - log_g.max())
    r = np.sum(y[b] * w) / np.sum(w)
    total += -np.log(max(r, 1e-7))
  return total / batch


def bhattacharyya_coefficients(mu, var, kernel, m):
  """BC[i, j, k] of every ordered pair, (B, B, K)."""
  batch = mu.shape[0]
  sigma = np.sqrt(var) + E0
  bd = np.zeros((batch, batch, mu.shape[-1]))
  for i in range(batch):
    for j in range(batch):
      a, c = sigma[i] ** 2, sigma[j] ** 2
      val = m / 2 * np.log((a + c) / (2 * sigma[i] * sigma[j])) + m / 4 * (mu[i] - mu[j]) ** 2 / (
        a + c
      )
      bd[i, j] = val.sum(axis=0) if kernel == "anisotropic" else val
  return np.exp(-bd)


def bhattacharyya_means(mu, var, y, kernel, m):
  """(mean BC over pairs i != j and classes k both have, mean BC over the other pairs
  i != j and classes), NaN where there is no such pair."""
  bc = bhattacharyya_coefficients(mu, var, kernel, m)
  positive, negative = [], []
  for i in range(len(y)):
    for j in range(len(y)):
      if i != j:
        for k in range(y.shape[1]):
          (positive if y[i, k] and y[j, k] else negative).append(bc[i, j, k])
  return (np.mean(positive) if positive else np.nan, np.mean(negative) if negative else np.nan)


def contrastive(mu, var, y, kernel, m, temperature=0.17):
  batch, classes = y.shape
  bc = bhattacharyya_coefficients(mu, var, kernel, m)
  e = np.exp(bc / temperature)
  e = np.where(np.isinf(e), HUGE, e)
  total = 0.0
  for i in range(batch):
    den = np.zeros(classes)
    for j in range(batch):
      if j != i:
        den += e[i, j]
    terms = 0.0
    anchors = 0
    for j in range(batch):
      if j == i:
        continue
      p = y[i] * y[j]
      if p.sum() == 0:
        continue
      anchors += 1
      jac = np.sum(np.logical_and(y[i], y[j])) / np.sum(np.logical_or(y[i], y[j]))
      q = np.maximum(e[i, j], TINY) * p / den * jac
      terms += np.sum(np.where(q > 0, np.log(np.where(q > 0, q, 1.0) + 1e-7), 0.0))
    if anchors:
      total += -terms / anchors
  return total / batch


def kmcl(f, logits, mu, var, y, kernel, temperature=0.17, focus_logits=None):
  return {
    "asl": asl(logits, y, focus_logits=focus_logits),
    "reconstruction": reconstruction(f, logits, mu, var, y, kernel),
    "contrastive": contrastive(mu, var, y, kernel, f.shape[1], temperature),
  }
