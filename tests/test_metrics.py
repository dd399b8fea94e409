"""Uncertainty scores from logits, and exact detection metrics vs scikit-learn."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsim.evaluate.metrics import (
    SCORE_NAMES,
    aupr,
    auroc,
    detection_report,
    finite_rows,
    rate_ci,
    roc_curve,
    stack_scores,
    tnr_at_tpr,
    uncertainty_scores,
)

# Eager JAX compiles each op per shape; one jit per shape is much cheaper.
jscores = jax.jit(uncertainty_scores)
jstack = jax.jit(stack_scores)


def _ref_scores(z):
  """float64 numpy reference for one logit vector."""
  z = np.asarray(z, np.float64)
  p = np.exp(z - z.max())
  p /= p.sum()
  ps, zs = np.sort(p)[::-1], np.sort(z)[::-1]
  return {
      "margin": 1 - (ps[0] - ps[1]),
      "entropy": -np.sum(p[p > 0] * np.log(p[p > 0])),
      "gini": 1 - np.sum(p**2),
      "least_confidence": 1 - ps[0],
      "logit_margin": -(zs[0] - zs[1]),
  }


# ---------------------------------------------------------------- scores


def test_hand_computed_2_1_0():
  e = math.exp
  s = e(0) + e(-1) + e(-2)
  p = [1 / s, e(-1) / s, e(-2) / s]
  want = {
      "margin": 1 - (p[0] - p[1]),
      "entropy": -sum(q * math.log(q) for q in p),
      "gini": 1 - sum(q * q for q in p),
      "least_confidence": 1 - p[0],
      "logit_margin": -1.0,
  }
  got = uncertainty_scores(jnp.array([2.0, 1.0, 0.0]))
  assert set(got) == set(SCORE_NAMES)
  for k in SCORE_NAMES:
    assert got[k].dtype == jnp.float32 and got[k].shape == ()
    np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-6, err_msg=k)
  # jit agrees with eager; the order of the classes does not matter
  for z in ([2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]):
    other = jscores(jnp.array(z))
    for k in SCORE_NAMES:
      np.testing.assert_allclose(other[k], got[k], rtol=1e-6)


def test_uniform_and_ties():
  got = jscores(jnp.zeros(4))
  np.testing.assert_allclose(got["margin"], 1.0)
  np.testing.assert_allclose(got["entropy"], math.log(4), rtol=1e-6)
  np.testing.assert_allclose(got["gini"], 0.75, rtol=1e-6)
  np.testing.assert_allclose(got["least_confidence"], 0.75, rtol=1e-6)
  assert float(got["logit_margin"]) == 0.0
  tie = jscores(jnp.array([3.0, 3.0, -50.0]))
  np.testing.assert_allclose(tie["margin"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(tie["least_confidence"], 0.5, rtol=1e-6)


def test_orientation_confident_scores_lower():
  confident = jscores(jnp.array([8.0, 0.5, 0.0, -1.0]))
  uncertain = jscores(jnp.array([1.0, 0.9, 0.8, 0.7]))
  for k in SCORE_NAMES:
    assert confident[k] < uncertain[k], k


def test_random_logits_match_float64_reference():
  z = np.random.default_rng(0).normal(0, 3, (50, 10)).astype(np.float32)
  got = {k: np.asarray(v) for k, v in jscores(z).items()}
  for i in range(len(z)):
    ref = _ref_scores(z[i])
    for k in SCORE_NAMES:
      np.testing.assert_allclose(got[k][i], ref[k], rtol=2e-5, atol=1e-6, err_msg=k)


def _exact_scores(z):
  """float64 forms without cancellation near p1 = 1 (top class first in ``z``)."""
  z = np.asarray(z, np.float64)
  d = z - z[0]
  e = np.exp(d)
  r = e[1:].sum()
  p = e / (1 + r)
  rest = r / (1 + r)
  return {
      "margin": rest + p[1:].max(),
      "entropy": math.log1p(r) - np.sum(p[1:] * d[1:]),
      "gini": np.sum(p * np.r_[rest, 1 - p[1:]]),
      "least_confidence": rest,
  }


def test_confident_samples_keep_accurate_scores():
  # 1 - p1 ~ 1e-13 cannot be formed as 1 - p1 in float32; it must not collapse to 0
  z = jnp.array([[30.0, 0.0, 0.0], [31.0, 0.0, 0.0], [40.0, 1.0, 0.0]])
  got = jscores(z)
  for k in ("margin", "entropy", "gini", "least_confidence"):
    v = np.asarray(got[k])
    assert np.all(v > 0) and v[0] > v[1] > v[2], k
    for i in range(3):
      np.testing.assert_allclose(v[i], _exact_scores(z[i])[k], rtol=1e-5, err_msg=k)


def test_jit_and_vmap_over_k_n_c_equal_per_slice():
  z = jax.random.normal(jax.random.key(0), (3, 7, 5)) * 4
  jitted = np.asarray(jstack(z))
  assert jitted.shape == (3, 7, len(SCORE_NAMES))
  vmapped = np.asarray(jax.jit(jax.vmap(jax.vmap(stack_scores)))(z))
  dicts = jax.jit(jax.vmap(uncertainty_scores))(z)
  for k in range(3):
    per_config = np.asarray(jstack(z[k]))  # (N, C) alone
    for n in range(7):  # single samples, (C,) alone
      np.testing.assert_allclose(per_config[n], jstack(z[k, n]), rtol=1e-6, atol=1e-7)
    for got in (jitted[k], vmapped[k]):
      np.testing.assert_allclose(got, per_config, rtol=1e-6, atol=1e-7)
    for j, name in enumerate(SCORE_NAMES):
      np.testing.assert_allclose(dicts[name][k], per_config[:, j], rtol=1e-6, atol=1e-7)


def test_low_precision_logits_are_scored_in_float32():
  z = jnp.array([2.0, 1.0, 0.0], jnp.bfloat16)
  got = jscores(z)
  assert all(got[k].dtype == jnp.float32 for k in SCORE_NAMES)
  np.testing.assert_allclose(got["entropy"], jscores(z.astype(jnp.float32))["entropy"])


def test_non_finite_logits_give_nan_scores():
  z = jnp.array([[1.0, 0.0, -1.0], [jnp.nan, 0.0, 1.0], [jnp.inf, 0.0, 1.0], [-jnp.inf, 0.0, 1.0]])
  np.testing.assert_array_equal(finite_rows(z), [True, False, False, False])
  s = np.asarray(jstack(z))
  assert np.all(np.isfinite(s[0]))
  assert np.all(np.isnan(s[1:]))


def test_extreme_finite_logits_stay_finite_where_defined():
  z = jnp.array([3e38, -3e38, 0.0])
  got = jscores(z)
  for k in ("margin", "entropy", "gini", "least_confidence"):
    assert float(got[k]) == 0.0, k


def test_one_class_rejected():
  with pytest.raises(ValueError, match="size >= 2"):
    uncertainty_scores(jnp.zeros((4, 1)))


# ---------------------------------------------------------------- detection


def _data(seed, kind, n=2000):
  rng = np.random.default_rng(seed)
  pos_rate = {"balanced": 0.5, "imbalanced": 0.01, "ties": 0.2, "ties_rare": 0.01, "binary": 0.3}[kind]
  y = rng.random(n) < pos_rate
  y[rng.integers(n)] = True  # both classes present
  y[rng.integers(n)] = False
  if kind.startswith("ties"):
    s = rng.integers(0, 6, n) + y * rng.integers(0, 3, n)  # integer scores, heavy ties
  elif kind == "binary":
    s = (rng.random(n) < 0.3 + 0.4 * y).astype(float)
  else:
    s = rng.normal(size=n) + 1.5 * y
  return y, s.astype(np.float64)


CASES = [(seed, kind) for kind in ("balanced", "imbalanced", "ties", "ties_rare", "binary") for seed in range(4)]


def _brute_tnr(y, s, tpr):
  """Over every candidate threshold, highest first: the first with TPR >= tpr."""
  n_pos, n_neg = y.sum(), (~y).sum()
  for t in np.r_[np.inf, np.unique(s)[::-1]]:
    flag = s >= t
    if (flag & y).sum() / n_pos >= tpr:
      return 1 - (flag & ~y).sum() / n_neg
  raise AssertionError("unreachable")


@pytest.mark.parametrize("seed,kind", CASES)
def test_against_sklearn(seed, kind):
  sk = pytest.importorskip("sklearn.metrics")
  y, s = _data(seed, kind)
  assert abs(auroc(y, s) - sk.roc_auc_score(y, s)) < 1e-12
  assert abs(aupr(y, s) - sk.average_precision_score(y, s)) < 1e-12
  fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
  for target in (0.5, 0.9, 0.95, 0.99, 1.0):
    want = 1 - fpr[np.argmax(tpr >= target)]
    assert abs(tnr_at_tpr(y, s, target) - want) < 1e-12, target
  rep = detection_report(y, s)
  assert rep["n_pos"] == y.sum() and rep["n_neg"] == (~y).sum()
  assert rep["auroc"] == auroc(y, s) and rep["aupr"] == aupr(y, s)
  assert rep["tnr_at_95tpr"] == tnr_at_tpr(y, s)


@pytest.mark.parametrize("seed,kind", CASES)
def test_tnr_against_brute_force(seed, kind):
  y, s = _data(seed, kind, n=400)
  for target in (0.0, 0.3, 0.9, 0.95, 1.0):
    assert tnr_at_tpr(y, s, target) == pytest.approx(_brute_tnr(y, s, target), abs=1e-12)


def test_auroc_against_pairwise_count():
  y, s = _data(7, "ties", n=300)
  pos, neg = s[y], s[~y]
  wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
  assert auroc(y, s) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


def test_tnr_ties_flagged_together():
  # 20 positives: 19 at 2.0 give TPR 0.95 with TNR 1; the 20th is tied with every negative
  y = np.r_[np.ones(20, bool), np.zeros(10, bool)]
  s = np.r_[np.full(19, 2.0), 1.0, np.full(10, 1.0)]
  assert tnr_at_tpr(y, s, 0.95) == 1.0
  assert tnr_at_tpr(y, s, 0.96) == 0.0  # the tie at 1.0 flags every negative
  assert tnr_at_tpr(y, s, 0.0) == 1.0


def test_hand_computed_small():
  y = np.array([0, 0, 1, 1], bool)
  s = np.array([0.1, 0.4, 0.35, 0.8])
  assert auroc(y, s) == 0.75
  assert aupr(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)
  assert tnr_at_tpr(y, s, 0.95) == 0.5


def test_labels_as_ints_and_any_shape():
  y, s = _data(1, "balanced", n=100)
  assert auroc(y.astype(int).reshape(10, 10), s.reshape(10, 10)) == auroc(y, s)
  with pytest.raises(ValueError, match="0/1"):
    auroc(np.r_[y.astype(int)[:-1], 2], s)
  with pytest.raises(ValueError, match="shape"):
    auroc(y, s[:-1])


def test_infinite_scores_are_ordered():
  y = np.array([1, 0, 1, 0], bool)
  s = np.array([np.inf, -np.inf, np.inf, 0.0])
  assert auroc(y, s) == 1.0 and aupr(y, s) == 1.0


def test_degenerate_cases():
  s = np.random.default_rng(0).normal(size=50)
  for y in (np.ones(50, bool), np.zeros(50, bool)):
    assert math.isnan(auroc(y, s)) and math.isnan(aupr(y, s)) and math.isnan(tnr_at_tpr(y, s))
    rep = detection_report(y, s)
    assert math.isnan(rep["auroc"]) and math.isnan(rep["aupr"]) and math.isnan(rep["tnr_at_95tpr"])
    assert rep["n_pos"] + rep["n_neg"] == 50
    fpr, tpr = roc_curve(y, s)
    assert fpr.size == tpr.size == 0
  rep = detection_report(np.zeros(0, bool), np.zeros(0))
  assert rep["n_pos"] == rep["n_neg"] == 0 and math.isnan(rep["auroc"])
  y = np.arange(50) % 7 == 0
  const = np.full(50, 3.0)
  assert auroc(y, const) == 0.5
  assert aupr(y, const) == pytest.approx(y.mean(), abs=1e-15)
  assert tnr_at_tpr(y, const) == 0.0


def test_nan_scores_raise_with_count():
  y, s = _data(0, "balanced", n=100)
  s[[3, 10, 50]] = np.nan
  for fn in (auroc, aupr, tnr_at_tpr, roc_curve, detection_report):
    with pytest.raises(ValueError, match="3 of 100 scores are NaN"):
      fn(y, s)


def test_roc_curve_thinned_with_endpoints():
  sk = pytest.importorskip("sklearn.metrics")
  y, s = _data(2, "balanced", n=5000)
  fpr, tpr = roc_curve(y, s, max_points=50)
  assert 2 <= fpr.size <= 50 and fpr.size == tpr.size
  assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  # every kept point lies on the full curve
  full_fpr, full_tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
  pts = set(zip(full_fpr.round(12), full_tpr.round(12)))
  assert all((a, b) in pts for a, b in zip(fpr.round(12), tpr.round(12)))
  # small curves come back whole
  y, s = _data(2, "ties", n=200)
  fpr, tpr = roc_curve(y, s)
  full_fpr, full_tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, full_fpr, atol=1e-15)
  np.testing.assert_allclose(tpr, full_tpr, atol=1e-15)
  # the trapezoid on the thinned curve is close to the exact area
  y, s = _data(3, "balanced", n=20000)
  fpr, tpr = roc_curve(y, s)
  assert abs(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) - auroc(y, s)) < 2e-3


# ---------------------------------------------------------------- rate_ci


def test_rate_ci_hand_computed():
  # Wilson, k=3, n=10, z=1.959963984540054
  z = 1.959963984540054
  k, n = 3, 10
  c = (k + z * z / 2) / (n + z * z)
  h = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
  lo, hi = rate_ci(k, n)
  assert lo == pytest.approx(c - h, abs=1e-14) and hi == pytest.approx(c + h, abs=1e-14)
  assert lo == pytest.approx(0.10779126740630095, abs=1e-12)
  assert hi == pytest.approx(0.6032218525388546, abs=1e-12)


def test_rate_ci_edges_and_vectorised():
  lo, hi = rate_ci(np.array([0, 10, 5, 0]), np.array([10, 10, 10, 0]))
  assert lo.shape == hi.shape == (4,)
  assert lo[0] == 0.0 and hi[1] == 1.0 and 0 < hi[0] < 1 and 0 < lo[1] < 1
  assert lo[2] + hi[2] == pytest.approx(1.0, abs=1e-15)  # symmetric at 1/2
  assert math.isnan(lo[3]) and math.isnan(hi[3])
  assert np.isnan(rate_ci(0, 0)).all()
  for i in range(3):
    assert (lo[i], hi[i]) == rate_ci([0, 10, 5][i], 10)
  w99 = rate_ci(5, 10, level=0.99)
  assert w99[0] < lo[2] and w99[1] > hi[2]
  with pytest.raises(ValueError):
    rate_ci(11, 10)
  with pytest.raises(ValueError):
    rate_ci(1, 10, level=1.0)


def test_rate_ci_against_scipy_wilson():
  from scipy import stats

  k = np.array([0, 1, 3, 50, 99, 100, 7])
  n = np.array([100, 100, 10, 100, 100, 100, 1000])
  for level in (0.9, 0.95, 0.99):
    lo, hi = rate_ci(k, n, level)
    for i in range(len(k)):
      ci = stats.binomtest(int(k[i]), int(n[i])).proportion_ci(confidence_level=level, method="wilson")
      np.testing.assert_allclose([lo[i], hi[i]], [ci.low, ci.high], atol=1e-12)
