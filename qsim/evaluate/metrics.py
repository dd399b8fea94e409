"""Uncertainty scores that flag quantization disagreements, and how well they do.

A *disagreement* is a sample whose top-1 prediction under a quantized model
differs from the float model's. Two halves:

* JAX scores from logits (:func:`uncertainty_scores`, :func:`stack_scores`),
  each oriented so that HIGHER = MORE UNCERTAIN = more likely to disagree.
* Exact host-side detection metrics over all samples (:func:`auroc`,
  :func:`aupr`, :func:`tnr_at_tpr`, :func:`roc_curve`,
  :func:`detection_report`) and a Wilson interval for rates (:func:`rate_ci`).

Convention for every detection metric: ``labels`` is True for a disagreement
(the positive class), a sample is flagged when ``score >= t``, and samples with
equal scores are always flagged together (ties are never split).
"""

from __future__ import annotations

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np

SCORE_NAMES = ("margin", "entropy", "gini", "least_confidence", "logit_margin")


# --------------------------------------------------------------------------
# JAX: scores from logits
# --------------------------------------------------------------------------


def finite_rows(logits) -> jax.Array:
  """True where every logit of a sample (the last axis) is finite; shape ``[...]``.

  Args:
    logits: array ``[..., C]``, classes on the last axis.

  Returns:
    Bool array ``[...]``: True where all ``C`` logits of the sample are finite (no NaN or inf).
  """
  return jnp.all(jnp.isfinite(logits), axis=-1)


def uncertainty_scores(logits) -> dict[str, jax.Array]:
  """Uncertainty scores of logits ``[..., C]`` (C >= 2), each of shape ``[...]``.

  Computed in float32 from a stable softmax ``p``; ``p1 >= p2`` and
  ``z1 >= z2`` are the two largest probabilities and logits. All scores are
  oriented HIGHER = MORE UNCERTAIN:

  * ``margin``: ``1 - (p1 - p2)``, in [0, 1].
  * ``entropy``: ``-sum p log p`` (nats, ``0 log 0 = 0``), in [0, log C].
  * ``gini``: ``1 - sum p^2``, in [0, 1 - 1/C].
  * ``least_confidence``: ``1 - p1``, in [0, 1 - 1/C].
  * ``logit_margin``: ``-(z1 - z2)``, in (-inf, 0].

  ``1 - p1`` is evaluated as the mass of the other classes (not by subtracting
  from 1), so confident samples keep distinct, accurate scores in float32
  instead of all collapsing to 0; the same holds for margin, gini and entropy.

  A sample with any NaN or infinite logit gets NaN for every score (see
  :func:`finite_rows`); nothing is masked. Works under ``jit`` and ``vmap``.

  Args:
    logits: array ``[..., C]`` with ``C >= 2`` classes on the last axis (any float dtype; cast to float32).

  Returns:
    Dict from each name in ``SCORE_NAMES`` (in that order) to a float32 array ``[...]``.

  Raises:
    ValueError: ``logits`` has no last axis or fewer than 2 classes.
  """
  z = jnp.asarray(logits, jnp.float32)
  if z.ndim < 1 or z.shape[-1] < 2:
    raise ValueError(f"logits of shape {z.shape}: need a last (class) axis of size >= 2")
  top, idx = jax.lax.top_k(z, 2)
  z1, z2 = top[..., 0], top[..., 1]
  is_top = jnp.arange(z.shape[-1]) == idx[..., :1]  # one class, even on ties
  d = z - z1[..., None]  # <= 0, exactly 0 at the top class
  e = jnp.exp(d)
  r = jnp.sum(jnp.where(is_top, 0.0, e), axis=-1)  # unnormalised mass off the top
  norm = 1.0 + r
  p = e / norm[..., None]
  logp = d - jnp.log1p(r)[..., None]
  rest = r / norm  # 1 - p1
  p2 = jnp.exp(z2 - z1) / norm
  q = jnp.where(is_top, rest[..., None], 1.0 - p)  # 1 - p, accurate for every class
  scores = {
      "margin": rest + p2,
      "entropy": -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1),
      "gini": jnp.sum(p * q, axis=-1),
      "least_confidence": rest,
      "logit_margin": z2 - z1,
  }
  ok = finite_rows(z)
  return {k: jnp.where(ok, scores[k], jnp.nan) for k in SCORE_NAMES}


def stack_scores(logits) -> jax.Array:
  """The scores of :func:`uncertainty_scores` stacked last, ``[..., len(SCORE_NAMES)]``.

  Args:
    logits: array ``[..., C]`` with ``C >= 2`` classes on the last axis.

  Returns:
    Float32 array ``[..., len(SCORE_NAMES)]``, scores in ``SCORE_NAMES`` order.

  Raises:
    ValueError: ``logits`` has no last axis or fewer than 2 classes.
  """
  s = uncertainty_scores(logits)
  return jnp.stack([s[k] for k in SCORE_NAMES], axis=-1)


# --------------------------------------------------------------------------
# Host: detection metrics (exact, numpy, float64)
# --------------------------------------------------------------------------


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  """Flat bool labels and float64 scores; ValueError on NaN scores or bad labels."""
  y = np.asarray(labels)
  s = np.asarray(scores, dtype=np.float64)
  if y.shape != s.shape:
    raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
  y, s = y.ravel(), s.ravel()
  if y.dtype != np.bool_:
    if y.size and not np.isin(y, (0, 1)).all():
      raise ValueError("labels must be bool or 0/1")
    y = y.astype(bool)
  n_nan = int(np.count_nonzero(np.isnan(s)))
  if n_nan:
    raise ValueError(f"{n_nan} of {s.size} scores are NaN; drop the non-finite rows first (see finite_rows)")
  return y, s


def _counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Cumulative (tp, fp) at each distinct threshold, highest first, as int64.

  Entry ``i`` counts the samples with ``score >= t_i`` where ``t_i`` is the
  ``i``-th largest distinct score; ties fall in one step.
  """
  order = np.argsort(s, kind="stable")[::-1]
  s, y = s[order], y[order]
  ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] if s.size else np.zeros(0, np.int64)
  tp = np.cumsum(y, dtype=np.int64)[ends]
  fp = ends.astype(np.int64) + 1 - tp
  return tp, fp


def _auroc(tp, fp) -> float:
  n_pos, n_neg = int(tp[-1]), int(fp[-1])
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  tp0 = np.r_[0, tp]
  # trapezoid on the tie-collapsed ROC, in integers: one rounding at the end
  twice_area = int(np.sum(np.diff(np.r_[0, fp]) * (tp0[1:] + tp0[:-1])))
  return twice_area / (2 * n_pos * n_neg)


def _aupr(tp, fp) -> float:
  n_pos, n_neg = int(tp[-1]), int(fp[-1])
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  d_tp = np.diff(np.r_[0, tp])
  return float(np.sum(d_tp * (tp / (tp + fp))) / n_pos)


def _tnr(tp, fp, tpr: float) -> float:
  n_pos, n_neg = int(tp[-1]), int(fp[-1])
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  tp0, fp0 = np.r_[0, tp], np.r_[0, fp]
  i = int(np.argmax(tp0 / n_pos >= tpr))  # the last point has TPR 1, so one exists
  return (n_neg - int(fp0[i])) / n_neg


def auroc(labels, scores) -> float:
  """Area under the ROC curve of ``scores`` for detecting ``labels`` (True = positive).

  Ties count one half (the trapezoid on the tie-collapsed ROC), as scikit-learn's
  ``roc_auc_score``.

  Args:
    labels: bool or 0/1 array, True for a disagreement (the positive class).
    scores: array of the same shape as ``labels``, higher = more likely positive.

  Returns:
    The AUROC in [0, 1]; NaN when either class is empty.

  Raises:
    ValueError: shapes differ, labels are not bool or 0/1, or a score is NaN.
  """
  return _auroc(*_counts(*_check(labels, scores)))


def aupr(labels, scores) -> float:
  """Average precision, ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds.

  Step-wise (no interpolation), equal to scikit-learn's
  ``average_precision_score``.

  Args:
    labels: bool or 0/1 array, True for a disagreement (the positive class).
    scores: array of the same shape as ``labels``, higher = more likely positive.

  Returns:
    The average precision in [0, 1]; NaN when either class is empty.

  Raises:
    ValueError: shapes differ, labels are not bool or 0/1, or a score is NaN.
  """
  return _aupr(*_counts(*_check(labels, scores)))


def tnr_at_tpr(labels, scores, tpr: float = 0.95) -> float:
  """True-negative rate at the first operating point that reaches ``tpr``.

  Lowering the threshold ``t`` from ``+inf`` (flag ``score >= t``) over the
  distinct scores, stop at the first (so the highest) ``t`` whose TPR, computed
  as ``n_flagged_pos / n_pos >= tpr`` in float64, holds; return
  ``1 - n_flagged_neg / n_neg`` there. Samples tied at ``t`` are all flagged.
  Same as ``1 - fpr[i]`` at the first ``i`` with ``tpr[i] >= tpr`` on
  scikit-learn's ``roc_curve(..., drop_intermediate=False)``. ``tpr=0`` gives 1.

  Args:
    labels: bool or 0/1 array, True for a disagreement (the positive class).
    scores: array of the same shape as ``labels``, higher = more likely positive.
    tpr: the target true-positive rate, in [0, 1].

  Returns:
    The true-negative rate in [0, 1] at that operating point; NaN when either class is empty.

  Raises:
    ValueError: ``tpr`` is outside [0, 1], shapes differ, labels are not bool or 0/1, or a score is NaN.
  """
  if not 0.0 <= tpr <= 1.0:
    raise ValueError(f"tpr={tpr} is not in [0, 1]")
  return _tnr(*_counts(*_check(labels, scores)), tpr)


def roc_curve(labels, scores, max_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
  """ROC curve ``(fpr, tpr)`` from (0, 0) to (1, 1), thinned for plotting.

  The tie-collapsed curve, thinned to at most ``max_points`` points spread
  evenly along its length; both endpoints are kept.

  Args:
    labels: bool or 0/1 array, True for a disagreement (the positive class).
    scores: array of the same shape as ``labels``, higher = more likely positive.
    max_points: the most points to return, at least 2.

  Returns:
    ``(fpr, tpr)``: float64 arrays of equal length, nondecreasing from 0 to 1; both empty when either class is
    empty.

  Raises:
    ValueError: ``max_points < 2``, shapes differ, labels are not bool or 0/1, or a score is NaN.
  """
  if max_points < 2:
    raise ValueError(f"max_points={max_points}: need at least 2")
  tp, fp = _counts(*_check(labels, scores))
  if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
    return np.zeros(0), np.zeros(0)
  fpr = np.r_[0, fp] / fp[-1]
  tpr = np.r_[0, tp] / tp[-1]
  if fpr.size > max_points:
    arc = np.r_[0.0, np.cumsum(np.hypot(np.diff(fpr), np.diff(tpr)))]
    keep = np.searchsorted(arc, np.linspace(0.0, arc[-1], max_points))
    keep = np.unique(np.r_[0, np.minimum(keep, fpr.size - 1), fpr.size - 1])
    fpr, tpr = fpr[keep], tpr[keep]
  return fpr, tpr


def detection_report(labels, scores) -> dict:
  """:func:`auroc`, :func:`aupr` and :func:`tnr_at_tpr` at 95% TPR with class counts, from one sort.

  Args:
    labels: bool or 0/1 array, True for a disagreement (the positive class).
    scores: array of the same shape as ``labels``, higher = more likely positive.

  Returns:
    Dict with ``auroc``, ``aupr``, ``tnr_at_95tpr`` (float, NaN when a class is empty), ``n_pos`` and ``n_neg``
    (int).

  Raises:
    ValueError: shapes differ, labels are not bool or 0/1, or a score is NaN.
  """
  y, s = _check(labels, scores)
  n_pos = int(np.count_nonzero(y))
  out = {
      "auroc": float("nan"),
      "aupr": float("nan"),
      "tnr_at_95tpr": float("nan"),
      "n_pos": n_pos,
      "n_neg": int(y.size - n_pos),
  }
  if n_pos and y.size - n_pos:
    tp, fp = _counts(y, s)
    out.update(auroc=_auroc(tp, fp), aupr=_aupr(tp, fp), tnr_at_95tpr=_tnr(tp, fp, 0.95))
  return out


def rate_ci(k, n, level: float = 0.95):
  """Wilson score interval ``(low, high)`` for the proportion ``k / n``.

  Vectorised: ``k`` and ``n`` broadcast. ``n == 0`` gives ``(nan, nan)``.
  Scalars in, numpy float64 scalars out.

  Args:
    k: number of successes (scalar or array), ``0 <= k <= n``.
    n: number of trials (scalar or array), broadcast against ``k``.
    level: confidence level, in (0, 1).

  Returns:
    ``(low, high)``: float64 bounds in [0, 1] of the broadcast shape (scalars for scalar inputs); NaN where
    ``n == 0``.

  Raises:
    ValueError: ``level`` is outside (0, 1), or some ``k`` is negative or above ``n``.
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} is not in (0, 1)")
  k = np.asarray(k, dtype=np.float64)
  n = np.asarray(n, dtype=np.float64)
  if np.any(k < 0) or np.any(k > n):
    raise ValueError("need 0 <= k <= n")
  z = NormalDist().inv_cdf(0.5 + level / 2)
  z2 = z * z
  with np.errstate(divide="ignore", invalid="ignore"):
    center = (k + z2 / 2) / (n + z2)
    half = z * np.sqrt(k * (n - k) / n + z2 / 4) / (n + z2)
    # exact at the edges: k = 0 gives low 0, k = n gives high 1
    low = np.where(k == 0, 0.0, np.clip(center - half, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(center + half, 0.0, 1.0))
    low = np.where(n > 0, low, np.nan)
    high = np.where(n > 0, high, np.nan)
  return low[()], high[()]
