"""kmcl_jax.losses against a float64 NumPy oracle written from the spec, and against
jax.grad of a plain, unblocked JAX transcription."""

import dataclasses
import math
import zlib

import jax
import jax.numpy as jnp
import loss_oracle as oracle
import numpy as np
import pytest

from kmcl_jax import losses

TERMS = ("asl", "reconstruction", "contrastive")


@dataclasses.dataclass(frozen=True)
class Case:
  kernel: str
  batch: int
  classes: int
  density: float  # probability of a positive label
  variance: str = "moderate"  # moderate | large | tiny | mixed
  sharing: str = "BC"  # BC | MKS (shared over classes) | RBF (one per sample)
  dim: int = 16
  labels: str = "random"  # random | disjoint (no two samples share a label) | empty_rows
  seed: int = 0

  def __str__(self):
    return (
      f"{self.kernel[:5]}-B{self.batch}-K{self.classes}-D{self.dim}-p{self.density}-"
      f"{self.variance}-{self.sharing}-{self.labels}-s{self.seed}"
    )


def _cases():
  cases = []
  for kernel in losses.KERNELS:
    sharing = "MKS" if kernel == "anisotropic" else "RBF"
    cases += [
      Case(kernel, 1, 5, 0.5),
      Case(kernel, 2, 1, 1.0),
      Case(kernel, 2, 5, 0.0),
      Case(kernel, 3, 20, 0.3, "tiny"),
      Case(kernel, 3, 1, 0.7, "large"),
      Case(kernel, 17, 5, 0.4),
      Case(kernel, 17, 20, 0.1, "mixed", seed=1),
      Case(kernel, 17, 80, 0.05, "large", sharing),
      Case(kernel, 17, 5, 0.5, "moderate", labels="empty_rows"),
      Case(kernel, 17, 20, 0.0, labels="disjoint"),
      Case(kernel, 17, 5, 1.0, "tiny", sharing),
      Case(kernel, 64, 20, 0.15, dim=128),
      Case(kernel, 64, 80, 0.04, "mixed", sharing, dim=32, seed=2),
      Case(kernel, 64, 5, 0.6, "large", labels="empty_rows", seed=3),
      Case(kernel, 64, 1, 0.5, "moderate", seed=4),
      Case(kernel, 64, 80, 0.0, labels="disjoint", dim=8),
      Case(kernel, 3, 80, 0.9, "mixed"),
      Case(kernel, 17, 80, 0.02, "moderate", dim=128, seed=5),
    ]
  return cases


CASES = _cases()


def make_case(case: Case) -> dict:
  """float64 inputs for one case; the JAX side gets them rounded to float32."""
  rng = np.random.default_rng(zlib.crc32(str(case).encode()))
  b, k, d = case.batch, case.classes, case.dim
  if case.labels == "disjoint":  # each class owned by at most one sample
    y = np.zeros((b, k))
    owner = rng.integers(0, b, size=k)
    y[owner, np.arange(k)] = 1.0
    y[:, :] *= rng.random((1, k)) < 0.8
  else:
    y = (rng.random((b, k)) < case.density).astype(np.float64)
    if case.labels == "empty_rows":
      y[rng.random(b) < 0.3] = 0.0
  shape = (b, d, k) if case.kernel == "anisotropic" else (b, k)
  scale = {"moderate": 1.0, "large": 300.0, "tiny": 1e-3}
  if case.variance == "mixed":
    var = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), size=shape))
  else:
    var = scale[case.variance] * (1.0 + rng.exponential(size=shape))
  if case.sharing == "MKS":  # one variance per dimension, shared by all classes
    var = np.broadcast_to(var[:, :, :1], shape).copy()
  elif case.sharing == "RBF":  # one variance per sample
    var = np.broadcast_to(var[:, :1], shape).copy()
  mu_scale = math.sqrt(scale.get(case.variance, 1.0)) * 0.5
  data = {
    "features": rng.normal(size=(b, d)),
    "logits": rng.normal(scale=3.0, size=(b, k)),
    "mu": rng.normal(scale=mu_scale, size=shape),
    "var": var,
    "labels": y,
  }
  # Round to float32 once so the oracle sees exactly what JAX sees.
  return {name: value.astype(np.float32).astype(np.float64) for name, value in data.items()}


def jax_inputs(data):
  return [jnp.asarray(data[n], jnp.float32) for n in ("features", "logits", "mu", "var", "labels")]


def assert_close(actual, expected, rtol, atol=1e-7, what=""):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = np.maximum(np.abs(expected), atol / rtol)
  worst = float(np.max(np.abs(actual - expected) / scale))
  assert worst <= rtol, f"{what}: max relative error {worst:.3e} > {rtol:.0e}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_terms_match_float64_oracle(case):
  data = make_case(case)
  expected = oracle.kmcl(
    data["features"], data["logits"], data["mu"], data["var"], data["labels"], case.kernel
  )
  total, terms = jax.jit(lambda *a: losses.kmcl_loss(*a, kernel=case.kernel))(*jax_inputs(data))
  for name in TERMS:
    assert_close(terms[name], expected[name], 1e-5, what=name)
  assert_close(total, sum(expected.values()), 1e-5, what="total")


def test_cases_cover_the_edge_conditions():
  """The parametrised cases above really contain the situations the method calls out."""
  seen = {"no_pair": 0, "empty_row": 0, "all_pairs": 0}
  for case in CASES:
    y = make_case(case)["labels"]
    shared = (y @ y.T) - np.diag(np.diag(y @ y.T))
    seen["no_pair"] += int(case.batch > 1 and not shared.any())
    seen["empty_row"] += int((y.sum(1) == 0).any())
    seen["all_pairs"] += int(case.batch > 1 and (shared + np.eye(case.batch) > 0).all())
  assert len(CASES) >= 30
  assert all(count > 0 for count in seen.values()), seen


def test_contrastive_is_zero_without_shared_labels():
  data = make_case(Case("anisotropic", 17, 20, 0.0, labels="disjoint"))
  _, terms = losses.kmcl_loss(*jax_inputs(data))
  assert float(terms["contrastive"]) == 0.0
  assert oracle.contrastive(data["mu"], data["var"], data["labels"], "anisotropic", 16) == 0.0


# --------------------------------------------------------------------------------------
# Gradients.
# --------------------------------------------------------------------------------------


def plain_kmcl(features, logits, mu, var, labels, kernel):
  """The method's formulas as one unblocked broadcast over (B, B, [D,] K), autodiff'd.

  Written for float64 (tests run it under jax.enable_x64), where the reference's
  direct ratio for L_rec has no underflow problem once scaled by its maximum.
  """
  y = labels
  s = jax.nn.sigmoid(logits)
  pn = jnp.minimum(1 - s + 0.05, 1.0)
  ll = y * jnp.log(jnp.maximum(s, 1e-7)) + (1 - y) * jnp.log(jnp.maximum(pn, 1e-7))
  w = jax.lax.stop_gradient((1 - (s * y + pn * (1 - y))) ** (4.0 * (1 - y)))
  asl = -jnp.sum(ll * w)
  sigma = jnp.sqrt(var) + oracle.E0
  if kernel == "isotropic":
    mu, sigma = mu[:, None, :], sigma[:, None, :]
  expo = -0.5 * jnp.sum((features[:, :, None] - mu) ** 2 / sigma**2, axis=1)
  log_w = jax.nn.log_sigmoid(logits) + jnp.maximum(expo, jnp.log(oracle.TINY))
  wt = jnp.exp(log_w - jax.lax.stop_gradient(log_w.max(1, keepdims=True)))
  rec = jnp.mean(-jnp.log(jnp.maximum((y * wt).sum(1) / wt.sum(1), 1e-7)))
  m = features.shape[1]
  a = sigma**2
  total_var = a[:, None] + a[None]
  bd = jnp.sum(
    m / 2 * jnp.log(total_var / (2 * sigma[:, None] * sigma[None]))
    + m / 4 * (mu[:, None] - mu[None]) ** 2 / total_var,
    axis=2,
  )
  e = jnp.exp(jnp.exp(-bd) / 0.17)
  b = y.shape[0]
  off = 1 - jnp.eye(b)[:, :, None]
  p = y[:, None] * y[None] * off
  den = jnp.sum(e * off, axis=1)
  inter = y @ y.T
  union = y.sum(1)[:, None] + y.sum(1)[None] - inter
  jac = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)
  q = e * p / den[:, None] * jac[:, :, None]
  term = jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1) + 1e-7), 0)
  count = jnp.sum(p.sum(2) > 0, axis=1)
  con = jnp.sum(-term.sum((1, 2)) / jnp.maximum(count, 1)) / b
  return asl + rec + con


GRAD_CASES = [c for c in CASES if c.batch in (2, 3, 17) and c.classes <= 20][:10] + [
  Case("anisotropic", 64, 20, 0.15, dim=32, seed=7),
  Case("isotropic", 64, 80, 0.05, dim=32, seed=7),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradients_match_plain_autodiff(case):
  """Ours (float32, blocked, hand-written VJP) against autodiff of the plain form in float64."""
  data = make_case(case)
  args = jax_inputs(data)
  ours = jax.jit(
    jax.grad(lambda *a: losses.kmcl_loss(*a, args[4], kernel=case.kernel)[0], argnums=(0, 1, 2, 3))
  )(*args[:4])
  with jax.enable_x64(True):
    args64 = [
      jnp.asarray(data[n], jnp.float64) for n in ("features", "logits", "mu", "var", "labels")
    ]
    plain = jax.jit(
      jax.grad(lambda *a: plain_kmcl(*a, args64[4], case.kernel), argnums=(0, 1, 2, 3))
    )(*args64[:4])
    plain = [np.asarray(g) for g in plain]
  overall = max(float(np.max(np.abs(g))) for g in plain)
  for name, g_ours, g_plain in zip(("features", "logits", "mu", "var"), ours, plain, strict=True):
    assert np.all(np.isfinite(g_ours)), name
    # 1e-4 of the input's largest gradient entry, plus float32 noise of 1e-6 of the
    # largest gradient of any input: some cases have an identically zero gradient
    # w.r.t. mu and var (K = 1 with every label positive), where only noise is left.
    err = float(np.max(np.abs(np.asarray(g_ours, np.float64) - g_plain)))
    bound = 1e-4 * float(np.max(np.abs(g_plain))) + 1e-6 * overall
    assert err <= bound, f"{name}: error {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize(
  "case",
  [
    Case("anisotropic", 17, 5, 0.4, "mixed", seed=9),
    Case("isotropic", 17, 5, 0.4, "large", seed=9),
  ],
  ids=str,
)
def test_gradients_match_oracle_finite_differences(case):
  """Directional derivatives of the float64 oracle vs <grad, v> of ours."""
  data = make_case(case)
  args = jax_inputs(data)
  grads = jax.grad(
    lambda *a: losses.kmcl_loss(*a, args[4], kernel=case.kernel)[0], argnums=(0, 1, 2, 3)
  )(*args[:4])
  rng = np.random.default_rng(0)
  names = ("features", "logits", "mu", "var")
  for name, grad in zip(names, grads, strict=True):
    for _ in range(2):
      v = rng.normal(size=data[name].shape)
      if name == "var":
        v *= data["var"]  # a relative step keeps var positive
      step = 1e-6

      def total(sign, name=name, v=v, step=step):
        moved = dict(data, **{name: data[name] + sign * step * v})
        return sum(
          oracle.kmcl(
            moved["features"],
            moved["logits"],
            moved["mu"],
            moved["var"],
            moved["labels"],
            case.kernel,
            focus_logits=data["logits"],
          ).values()
        )

      numeric = (total(1) - total(-1)) / (2 * step)
      analytic = float(np.sum(np.asarray(grad, np.float64) * v))
      assert abs(analytic - numeric) <= 1e-4 * max(abs(numeric), 1.0), (name, analytic, numeric)


@pytest.mark.parametrize("kernel", losses.KERNELS)
@pytest.mark.parametrize("batch", [1, 7, 16])
def test_blocked_equals_unblocked(kernel, batch):
  data = make_case(Case(kernel, batch, 5, 0.5, "mixed", seed=batch))
  args = jax_inputs(data)

  def value_and_grads(block_size):
    fn = lambda *a: losses.kmcl_loss(*a, args[4], kernel=kernel, block_size=block_size)[0]
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(*args[:4])

  full_value, full_grads = value_and_grads(batch)
  assert all(np.all(np.isfinite(g)) for g in full_grads)
  for block in sorted({1, 3, batch - 1, batch + 3} - {0}):
    value, grads = value_and_grads(block)
    np.testing.assert_allclose(value, full_value, rtol=1e-6, err_msg=f"block {block}")
    for g, g_full in zip(grads, full_grads, strict=True):
      np.testing.assert_allclose(
        g, g_full, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(g_full))), err_msg=f"block {block}"
      )


def test_asl_focusing_weight_carries_no_gradient():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(scale=2, size=(8, 6)), jnp.float32)
  y = jnp.asarray(rng.random((8, 6)) < 0.4, jnp.float32)
  p = jax.nn.sigmoid(logits)
  pn = jnp.minimum(1 - p + 0.05, 1.0)
  weight = (1 - (p * y + pn * (1 - y))) ** (4.0 * (1 - y))

  def with_weight(x, w):
    s = jax.nn.sigmoid(x)
    sn = jnp.minimum(1 - s + 0.05, 1.0)
    return -jnp.sum(
      (y * jnp.log(jnp.maximum(s, 1e-7)) + (1 - y) * jnp.log(jnp.maximum(sn, 1e-7))) * w
    )

  ours = jax.grad(lambda x: losses.asl_loss(x, y))(logits)
  constant_weight = jax.grad(lambda x: with_weight(x, weight))(logits)
  differentiated_weight = jax.grad(
    lambda x: with_weight(
      x,
      (1 - (jax.nn.sigmoid(x) * y + jnp.minimum(1.05 - jax.nn.sigmoid(x), 1.0) * (1 - y)))
      ** (4.0 * (1 - y)),
    )
  )(logits)
  np.testing.assert_allclose(ours, constant_weight, rtol=1e-6, atol=1e-7)
  assert float(jnp.max(jnp.abs(ours - differentiated_weight))) > 1e-3


def test_bfloat16_inputs_are_computed_in_float32():
  data = make_case(Case("anisotropic", 17, 5, 0.4, seed=11))
  args = jax_inputs(data)
  as_bf16 = [a.astype(jnp.bfloat16) for a in args]
  rounded = [a.astype(jnp.float32) for a in as_bf16]
  total_bf16, terms_bf16 = losses.kmcl_loss(*as_bf16)
  total_f32, _ = losses.kmcl_loss(*rounded)
  assert total_bf16.dtype == jnp.float32 and all(
    t.dtype == jnp.float32 for t in terms_bf16.values()
  )
  assert float(total_bf16) == float(total_f32)


def test_asl_only_mode_reports_zero_for_the_other_terms():
  data = make_case(Case("anisotropic", 5, 4, 0.5))
  args = jax_inputs(data)
  total, terms = losses.kmcl_loss(None, args[1], None, None, args[4], mode="asl_only")
  assert float(terms["reconstruction"]) == 0.0 and float(terms["contrastive"]) == 0.0
  assert_close(total, oracle.asl(data["logits"], data["labels"]), 1e-6)


def test_reconstruction_survives_gaussians_below_float32_range():
  """With far-away means every G is below 1e-38; the reference ratio is then subnormal."""
  data = make_case(Case("anisotropic", 4, 3, 0.5, dim=128, seed=3))
  data["mu"] = data["mu"] + 40.0
  args = jax_inputs(data)
  value = losses.reconstruction_loss(*args[:4], args[4], kernel="anisotropic")
  expected = oracle.reconstruction(
    data["features"], data["logits"], data["mu"], data["var"], data["labels"], "anisotropic"
  )
  assert np.isfinite(float(value))
  assert_close(value, expected, 1e-5)


def test_reconstruction_floor_has_finite_gradients():
  """A row whose positive class has vanishing responsibility sits on the 1e-7 floor:
  value -log(1e-7), zero gradient through that row, and no NaN anywhere."""
  data = make_case(Case("anisotropic", 3, 4, 0.5, dim=8, seed=1))
  data["labels"][0] = [1.0, 0.0, 0.0, 0.0]
  data["mu"][0, :, 0] += 30.0  # class 0 far from sample 0's feature
  data["labels"][1] = 0.0  # no positive class at all: r = 0
  args = jax_inputs(data)
  per_term = lambda *a: losses.reconstruction_loss(*a, args[4], kernel="anisotropic")
  value, grads = jax.value_and_grad(per_term, argnums=(0, 1, 2, 3))(*args[:4])
  expected = oracle.reconstruction(
    data["features"], data["logits"], data["mu"], data["var"], data["labels"], "anisotropic"
  )
  assert_close(value, expected, 1e-5)
  assert all(np.all(np.isfinite(g)) for g in grads)
  for g in grads:  # rows 0 and 1 are on the floor: no gradient reaches their inputs
    np.testing.assert_array_equal(np.asarray(g)[:2], 0.0)
  assert float(jnp.max(jnp.abs(grads[0][2]))) > 0


def test_peak_memory_of_large_batch_under_two_gib():
  from kmcl_jax.benchmarks.loss_programs import peak_temporary_bytes

  assert peak_temporary_bytes(1024, 80, 128) < 2 * 2**30


# --------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------


def _good():
  return jax_inputs(make_case(Case("anisotropic", 4, 3, 0.5)))


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda a: a.__setitem__(0, a[0][:, :5]), "`mu` must have shape (B=4, D=5, K=3)"),
    (lambda a: a.__setitem__(1, a[1][:3]), "`labels` must have the shape of `pi`"),
    (lambda a: a.__setitem__(2, a[2][:, :, :2]), "`mu` must have shape (B=4, D, K=3)"),
    (lambda a: a.__setitem__(3, a[3][:2]), "`var` must have the shape of `mu`"),
    (lambda a: a.__setitem__(4, a[4] * 2), "`labels` must contain only 0 and 1"),
    (lambda a: a.__setitem__(3, a[3].at[0, 0, 0].set(0.0)), "`var` must be strictly positive"),
    (lambda a: a.__setitem__(0, a[0][0]), "`features` must have shape (B, D)"),
  ],
)
def test_bad_input_names_the_argument(change, message):
  args = _good()
  change(args)
  with pytest.raises(ValueError) as error:
    losses.kmcl_loss(*args)
  assert message in str(error.value)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"kernel": "gaussian"}, "`kernel` must be one of"),
    ({"mode": "ASLOnly"}, "`mode` must be one of"),
    ({"block_size": 0}, "`block_size` must be a positive"),
  ],
)
def test_bad_names_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    losses.kmcl_loss(*_good(), **kwargs)


def test_shape_checks_run_at_trace_time():
  args = _good()
  with pytest.raises(ValueError, match="`var` must have the shape of `mu`"):
    jax.jit(lambda f, p, m, v, y: losses.kmcl_loss(f, p, m, v[:2], y))(*args)
  # Under jit values are unknown: value checks are skipped rather than costing a sync.
  total, _ = jax.jit(lambda *a: losses.kmcl_loss(*a))(*args)
  assert np.isfinite(float(total))


# --------------------------------------------------------------------------------------
# The balance of the terms at any batch, their weights, and the diagnostics.
# --------------------------------------------------------------------------------------


def test_at_the_reference_batch_the_balanced_loss_is_todays_to_the_bit():
  data = make_case(Case("anisotropic", 64, 6, 0.3, "moderate", dim=8))
  args = jax_inputs(data)
  plain = jax.jit(lambda *a: losses.kmcl_loss(*a))(*args)
  balanced = jax.jit(lambda *a: losses.kmcl_loss(*a, reference_batch=64))(*args)
  assert float(plain[0]) == float(balanced[0])
  for term in losses.TERMS:
    assert float(plain[1][term]) == float(balanced[1][term]), term


def test_at_four_times_the_reference_batch_asl_is_the_mean_of_the_chunks_sums():
  data = make_case(Case("isotropic", 256, 5, 0.3, "moderate"))
  features, logits, mu, var, labels = jax_inputs(data)
  _, terms = losses.kmcl_loss(
    features, logits, mu, var, labels, kernel="isotropic", reference_batch=64
  )
  chunk_sums = [
    float(losses.asl_loss(logits[i : i + 64], labels[i : i + 64])) for i in range(0, 256, 64)
  ]
  assert float(terms["asl"]) == pytest.approx(np.mean(chunk_sums), rel=1e-6)
  # ... which is the reference-sized sum of the per-image mean: 64 x mean_b asl_b.
  assert float(terms["asl"]) == pytest.approx(64 * sum(chunk_sums) / 256, rel=1e-6)
  # The mean terms are not rescaled.
  unbalanced = losses.kmcl_loss(features, logits, mu, var, labels, kernel="isotropic")[1]
  assert float(unbalanced["asl"]) == pytest.approx(4 * float(terms["asl"]), rel=1e-6)
  for term in ("reconstruction", "contrastive"):
    assert float(terms[term]) == float(unbalanced[term])


@pytest.mark.parametrize("left_out", ["reconstruction", "contrastive", "asl"])
def test_a_zero_weight_gives_the_gradients_of_leaving_the_term_out(left_out):
  data = make_case(Case("anisotropic", 12, 5, 0.4, "moderate", dim=8))
  args = jax_inputs(data)
  kept = [t for t in losses.TERMS if t != left_out]

  def weighted(*a):
    return losses.kmcl_loss(*a, weights={left_out: 0.0})[0]

  def without(*a):
    features, logits, mu, var, labels = a
    terms = {
      "asl": lambda: losses.asl_loss(logits, labels),
      "reconstruction": lambda: losses.reconstruction_loss(
        features, logits, mu, var, labels, kernel="anisotropic"
      ),
      "contrastive": lambda: losses.contrastive_loss(
        mu, var, labels, kernel="anisotropic", feature_dim=8
      ),
    }
    return sum(terms[t]() for t in kept)

  ours = jax.grad(weighted, argnums=(0, 1, 2, 3))(*args)
  reference = jax.grad(without, argnums=(0, 1, 2, 3))(*args)
  for name, a, b in zip(("features", "logits", "mu", "var"), ours, reference, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=name)
  # The term is not computed at all: no pairwise loop without the contrastive term.
  text = jax.jit(weighted).lower(*args).as_text()
  assert ("stablehlo.while" in text) == (left_out != "contrastive")
  assert float(losses.kmcl_loss(*args, weights={left_out: 0.0})[1][left_out]) == 0.0


@pytest.mark.parametrize("kernel", losses.KERNELS)
def test_diagnostics_are_the_mean_coefficients_of_same_class_and_other_pairs(kernel):
  data = make_case(Case(kernel, 9, 4, 0.4, "moderate", dim=6))
  total, terms, diagnostics = jax.jit(
    lambda *a: losses.kmcl_loss(*a, kernel=kernel, with_diagnostics=True)
  )(*jax_inputs(data))
  mu, var = data["mu"], data["var"]
  if kernel == "isotropic":
    mu, var = mu[:, None, :], var[:, None, :]
  positive, negative = oracle.bhattacharyya_means(
    mu, var, data["labels"], "anisotropic", data["features"].shape[1]
  )
  assert float(diagnostics["bc_positive"]) == pytest.approx(positive, rel=1e-5)
  assert float(diagnostics["bc_negative"]) == pytest.approx(negative, rel=1e-5)
  assert float(diagnostics["var_mean"]) == pytest.approx(data["var"].mean(), rel=1e-5)
  assert float(diagnostics["var_std"]) == pytest.approx(data["var"].std(), rel=1e-4)
  # Diagnostics do not change the loss (to float32 round-off: another program).
  assert float(total) == pytest.approx(
    float(losses.kmcl_loss(*jax_inputs(data), kernel=kernel)[0]), rel=1e-6
  )


def test_diagnostics_without_same_class_pairs_are_nan():
  labels = np.eye(4, dtype=np.float32)  # no class shared by two samples
  data = make_case(Case("isotropic", 4, 4, 0.4, "moderate"))
  args = jax_inputs(data)[:4] + [jnp.asarray(labels)]
  _, _, diagnostics = losses.kmcl_loss(*args, kernel="isotropic", with_diagnostics=True)
  assert np.isnan(float(diagnostics["bc_positive"]))
  assert 0 < float(diagnostics["bc_negative"]) <= 1
