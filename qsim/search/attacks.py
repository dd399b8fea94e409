"""Disagreement search: inputs near a seed where the quantized model's top-1
differs from the float model's while the float model still predicts the
seed's class.

Three searchers over a batch of seeds, each one jitted program with a fixed
iteration count (a seed stops counting once found):

* :func:`whitebox`: signed-gradient (L-inf) or normalised-gradient (L2)
  steps through the quantized model's straight-through estimator, minimising
  the quantized margin of the seed's float class while a hinge keeps the
  float margin above ``kappa``; projected onto the budget ball and the
  input box after every step. Under ``Budget(norm='natural')`` the same
  steps move six continuous corruption parameters (brightness, contrast,
  rotation, shear, scale, blur; :func:`qsim.shifts.image.natural`) instead
  of pixels.
* :func:`random_search`: a uniform draw in the budget per iteration.
* :func:`mcmc_search`: DFlare's black-box search (Tian et al., TOSEM 2023),
  from its description and its authors' code, with its seven mutation
  operators on [0, 1] images (Gaussian, salt-and-pepper, multiplicative
  noise, pixel change, box, Gaussian and median blur), mutations accumulating
  on the current image, the operator chosen by Metropolis-Hastings over
  operators ranked by success rate (target ``(1 - p)^rank``, ``p = 1/7``,
  from the rank of the last accepted operator), and a mutant kept when the
  output difference ``|P_float(top) - P_quant(top)|`` moves by more than
  1e-3 or its joint probability vector is new (no stored one within
  squared distance 0.5). DFlare has no distance bound; here every mutant is
  projected onto the same ball as the other searchers.

Queries: one query is one evaluation of the float and quantized models on
one input. A white-box step is a forward and a backward pass: it counts as
2 queries. The seed's own evaluation is not counted (seeds that already
disagree are not searched, as DFlare skips them).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qsim.nn import QUANT_RNG, QUANT_STATS
from qsim.quant.grid import ConfigGrid
from qsim.data import text
from qsim.shifts import image

NORMS = ("linf", "l2", "natural", "tokens")
METHODS = ("whitebox", "random", "mcmc")
TOKEN_CANDIDATES = 8  # token search: substitutions evaluated per step (the gradient's best-ranked)
PIXEL_METHODS = ("mcmc",)  # searchers that mutate pixels (need an L-inf / L2 ball)
# The natural model's parameter ranges at eps = 1 (eps in (0, 1] scales them):
# about MNIST-C's severity 3 for brightness (0.3), rotation and shear (0.6 rad)
# and scale (0.3); contrast by half; blur fully mixed with a sigma-1 blur.
NATURAL_RANGES = {
    "brightness": (-0.3, 0.3),
    "contrast": (-0.5, 0.5),
    "rotate": (-0.6, 0.6),
    "shear": (-0.6, 0.6),
    "scale": (-0.3, 0.3),
    "blur": (0.0, 1.0),
}
assert tuple(NATURAL_RANGES) == image.NATURAL_PARAMS


def _norm(v):
  """The L2 norm of each sample of ``v`` ``[B, ...]``, shape ``[B, 1, ...]``."""
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


@dataclasses.dataclass(frozen=True)
class Budget:
  """The perturbation model around each seed, inside ``box``.

  ``norm='linf'`` / ``'l2'``: any input in the ``eps`` ball of that norm
  (pixels). ``norm='natural'``: :func:`qsim.shifts.image.natural` with its six
  parameters (brightness, contrast, rotation, shear, scale, blur) each within
  ``eps`` times its range in ``NATURAL_RANGES`` (eps in (0, 1]; images in
  [0, 1] only). ``norm='tokens'``: token ids ``[B, T]`` of a text model with
  at most ``eps`` (an integer >= 1) positions substituted by other
  vocabulary words (ids >= 2: never padding or out-of-vocabulary; padding
  positions never change); ``vocab`` is the model's vocabulary size (filled
  in by the searchers, :meth:`for_model`). A searcher moves a per-seed
  parameter ``theta``: the input itself for the pixel norms and tokens, the
  six numbers for ``natural``.
  """

  norm: str = "linf"
  eps: float = 8 / 255
  box: tuple[float, float] = (0.0, 1.0)
  vocab: int | None = None

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ValueError(f"norm={self.norm!r} is not a known perturbation model; choose one of {list(NORMS)}")
    if self.norm == "tokens":
      if not (float(self.eps).is_integer() and self.eps >= 1):
        raise ValueError(f"eps={self.eps!r} is not valid for norm='tokens': give a whole number of substitutions >= 1")
      if self.vocab is not None and self.vocab < 3:
        raise ValueError(f"vocab={self.vocab!r} is not valid: a vocabulary has ids 0 (pad), 1 (OOV) and words >= 2")
      return
    lo, hi = self.box
    if not lo < hi:
      raise ValueError(f"box={self.box!r} is not valid; give (low, high) with low < high")
    if self.norm == "natural" and tuple(self.box) != (0.0, 1.0):
      raise ValueError(f"norm='natural' perturbs images in [0, 1]; box={self.box!r} is not valid")
    most = {"linf": hi - lo, "l2": float("inf"), "natural": 1.0}[self.norm]
    if not 0 < self.eps <= most:
      unit = " (the fraction of NATURAL_RANGES)" if self.norm == "natural" else f" (the data range {self.box})"
      raise ValueError(f"eps={self.eps!r} is not valid for norm={self.norm!r}: give 0 < eps <= {most}{unit}")

  @property
  def pixels(self) -> bool:
    """Whether the perturbation is a pixel ball (L-inf or L2)."""
    return self.norm in ("linf", "l2")

  @property
  def tokens(self) -> bool:
    """Whether the perturbation substitutes token ids."""
    return self.norm == "tokens"

  def for_model(self, model: nn.Module, words: int | None = None) -> Budget:
    """This budget with ``vocab`` taken from a text model (unchanged for other norms).

    Args:
      model: the float model.
      words: the words of its vocabulary (ids 2..words+1; e.g. a run's
        ``vocab.json`` holds fewer than the embedding's rows when the
        training texts have fewer distinct words); None: every row.

    Returns:
      The budget to search with.

    Raises:
      ValueError: ``norm='tokens'`` and the model has no vocabulary.
    """
    if not self.tokens or self.vocab is not None:
      return self
    vocab = getattr(model, "vocab_size", None)
    if not vocab:
      raise ValueError(
          f"norm='tokens' substitutes the token ids of a text model; {type(model).__name__} has no vocabulary"
          " (vocab_size)"
      )
    return dataclasses.replace(self, vocab=int(vocab) if words is None else min(int(vocab), words + 2))

  def _bounds(self):
    r = np.asarray(list(NATURAL_RANGES.values()), np.float32) * self.eps
    return jnp.asarray(r[:, 0]), jnp.asarray(r[:, 1])

  def check(self, x0) -> None:
    """Raises ``ValueError`` when the seeds do not fit the perturbation model.

    Args:
      x0: the seeds.

    Raises:
      ValueError: ``norm='natural'`` on inputs that are not images ``[B, H,
        W, C]``; ``norm='tokens'`` on inputs that are not integer ids ``[B,
        T]`` in the vocabulary, or with ``eps`` above ``T``.
    """
    if self.norm == "natural" and np.ndim(x0) != 4:
      raise ValueError(f"norm='natural' perturbs images [B, H, W, C]; got shape {tuple(np.shape(x0))}")
    if self.tokens:
      x0 = np.asarray(x0)
      if x0.ndim != 2 or not np.issubdtype(x0.dtype, np.integer):
        raise ValueError(f"norm='tokens' substitutes token ids [B, T] (integers); got {x0.dtype} {x0.shape}")
      if self.eps > x0.shape[1]:
        raise ValueError(f"eps={self.eps:g} substitutions is not valid for sequences of {x0.shape[1]} tokens")
      if self.vocab is not None and x0.size and not 0 <= x0.min() <= x0.max() < self.vocab:
        raise ValueError(f"token ids {x0.min()}..{x0.max()} are outside the vocabulary 0..{self.vocab - 1}")

  def prepare(self, x0):
    """The seeds, checked (:meth:`check`), as a jax array: int32 ids or float32.

    Args:
      x0: the seeds.

    Returns:
      ``x0`` as the searchers take it.
    """
    self.check(x0)
    return jnp.asarray(x0, jnp.int32 if self.tokens else jnp.float32)

  def init(self, x0):
    """The identity parameter of each seed: the seed itself, or six zeros.

    Args:
      x0: the seeds ``[B, ...]``.

    Returns:
      ``theta`` for :meth:`apply`.
    """
    if self.norm == "natural":
      return jnp.zeros((x0.shape[0], len(NATURAL_RANGES)), jnp.float32)
    return x0

  def apply(self, x0, theta):
    """The perturbed inputs.

    Args:
      x0: the seeds.
      theta: per-seed parameters (see the class doc).

    Returns:
      The inputs, shaped as ``x0``.
    """
    return jax.vmap(image.natural)(x0, theta) if self.norm == "natural" else theta

  def project(self, x0, theta):
    """``theta`` moved into the budget (per sample).

    Args:
      x0: the seeds ``[B, ...]``.
      theta: the candidates.

    Returns:
      The projected parameters: for the pixel norms the L-inf ball by
      clipping, the L2 ball by scaling the difference, then clipped to the
      box; for ``natural`` each parameter clipped to its range.

    Raises:
      ValueError: ``norm='tokens'`` (substitutions are chosen inside the budget, not projected).
    """
    if self.tokens:
      raise ValueError("norm='tokens' has no projection: its searchers substitute within the budget")
    if not self.pixels:
      return jnp.clip(theta, *self._bounds())
    d = theta - x0
    if self.norm == "linf":
      d = jnp.clip(d, -self.eps, self.eps)
    else:
      d = d * jnp.minimum(1.0, self.eps / jnp.maximum(_norm(d), 1e-12))
    return jnp.clip(x0 + d, *self.box)

  def descend(self, x0, theta, g, steps: int, step_size: float | None = None):
    """One projected step against the gradient ``g`` of ``theta``.

    Args:
      x0: the seeds.
      theta: the current parameters.
      g: the loss gradient with respect to ``theta``.
      steps: the search's step count (sets the default step size).
      step_size: per step, in the units of ``eps`` (default ``2.5 eps /
        steps`` for L-inf, as PGD takes it, ``eps / 4`` for L2, and ``2.5 /
        steps`` of each parameter's half range for ``natural``).

    Returns:
      The next ``theta``.
    """
    if step_size is None:
      step_size = self.eps / 4 if self.norm == "l2" else 2.5 * self.eps / steps
    if self.norm == "l2":
      step = step_size * g / jnp.maximum(_norm(g), 1e-12)
    elif self.norm == "linf":
      step = step_size * jnp.sign(g)
    else:
      lo, hi = self._bounds()
      step = step_size / self.eps * (hi - lo) / 2 * jnp.sign(g)
    return self.project(x0, theta - step)

  def sample(self, key, x0):
    """A uniform draw in the budget per seed.

    Args:
      key: a PRNG key.
      x0: the seeds.

    Returns:
      ``theta`` for :meth:`apply`.
    """
    if self.tokens:  # eps distinct non-padding positions, each a uniform word id in 2..vocab-1
      k1, k2 = jax.random.split(key)
      r = jnp.where(x0 != text.PAD, jax.random.uniform(k1, x0.shape), -1.0)
      kth = -jnp.sort(-r, axis=1)[:, int(self.eps) - 1 : int(self.eps)]
      words = jax.random.randint(k2, x0.shape, 2, self.vocab)
      return jnp.where((r >= kth) & (x0 != text.PAD), words, x0)
    if not self.pixels:
      lo, hi = self._bounds()
      return jax.random.uniform(key, (x0.shape[0], len(lo)), minval=lo, maxval=hi)
    if self.norm == "linf":
      d = jax.random.uniform(key, x0.shape, minval=-self.eps, maxval=self.eps)
    else:  # uniform in the L2 ball: a direction times eps u^(1/dim)
      k1, k2 = jax.random.split(key)
      g = jax.random.normal(k1, x0.shape)
      dim = int(np.prod(x0.shape[1:]))
      r = self.eps * jax.random.uniform(k2, (x0.shape[0],) + (1,) * (x0.ndim - 1)) ** (1.0 / dim)
      d = g / jnp.maximum(_norm(g), 1e-12) * r
    return self.project(x0, x0 + d)

  def used(self, x0, x, theta) -> np.ndarray:
    """The fraction of the budget each perturbed input uses (0..1).

    Args:
      x0: the seeds.
      x: the perturbed inputs.
      theta: their parameters.

    Returns:
      Per sample: the norm of ``x - x0`` over ``eps``, for ``natural`` the
      largest parameter over its bound, for ``tokens`` the substituted
      positions over ``eps``.
    """
    if self.tokens:
      return (np.asarray(x) != np.asarray(x0)).sum(1) / self.eps
    if self.norm == "natural":
      lo, hi = (np.asarray(v) for v in self._bounds())
      bound = np.maximum(np.abs(lo), np.abs(hi))
      return (np.abs(np.asarray(theta)) / bound).max(-1)
    d = np.asarray(x - x0).reshape(len(x0), -1)
    size = np.abs(d).max(1) if self.norm == "linf" else np.sqrt((d * d).sum(1))
    return size / self.eps


@dataclasses.dataclass
class SearchResult:
  """Per seed: ``found`` (bool), ``queries`` (to the first find; the cap when
  not found), ``x`` (the found input, or the seed), ``skipped`` (the seed
  already disagreed), ``used`` (the fraction of the budget the found input
  uses, :meth:`Budget.used`), ``theta`` (the natural model's parameters of
  the found input; None for the pixel norms), and the wall ``seconds`` of
  the whole batch."""

  method: str
  found: np.ndarray
  queries: np.ndarray
  x: np.ndarray
  skipped: np.ndarray
  seconds: float
  cap: int
  used: np.ndarray
  theta: np.ndarray | None = None

  def summary(self, x0: np.ndarray, float_probs: Callable | None = None) -> dict[str, float]:
    """Success rate, queries and seconds per found input, and perturbation sizes.

    Args:
      x0: the seeds.
      float_probs: ``x -> float model's probabilities`` (for the found inputs' float confidence); None: left out.

    Returns:
      ``seeds`` (searched), ``found``, ``success_rate``, ``queries_per_found``
      (all queries spent, failed seeds at the cap, over the number found),
      ``seconds_per_found``, mean ``linf`` and ``l2`` of the found
      perturbations, the mean ``budget_used`` by them, and
      ``float_confidence`` of the found inputs.
    """
    searched = ~self.skipped
    n, k = int(searched.sum()), int((self.found & searched).sum())
    spent = float(np.where(self.found, self.queries, self.cap)[searched].sum())
    d = (self.x - x0).reshape(len(x0), -1)[self.found & searched].astype(np.float32)
    if np.issubdtype(np.asarray(self.x).dtype, np.integer):  # token ids: the distance is budget_used x eps
      d = np.full_like(d, np.nan)
    out = {
        "method": self.method,
        "seeds": n,
        "found": k,
        "success_rate": k / n if n else float("nan"),
        "queries_per_found": spent / k if k else float("inf"),
        "seconds_per_found": self.seconds / k if k else float("inf"),
        "linf": float(np.abs(d).max(1).mean()) if k else float("nan"),
        "l2": float(np.sqrt((d * d).sum(1)).mean()) if k else float("nan"),
        "budget_used": float(self.used[self.found & searched].mean()) if k else float("nan"),
    }
    if float_probs is not None and k:
      out["float_confidence"] = float(np.asarray(float_probs(self.x[self.found & searched])).max(-1).mean())
    return out


def _margin(z, cls):
  """``z[cls] - max_{j != cls} z[j]`` per row."""
  own = jnp.take_along_axis(z, cls[:, None], axis=1)[:, 0]
  other = jnp.max(jnp.where(jax.nn.one_hot(cls, z.shape[-1], dtype=bool), -jnp.inf, z), axis=-1)
  return own - other


class Pair:
  """The float model and one quantized version of it, on the same variables."""

  def __init__(self, model: nn.Module, variables: dict, config, quant_stats=None, check: bool = True):
    if check:  # off where ``config`` is traced (a grid): checked before tracing
      self.check_config(config)
    base = {k: v for k, v in variables.items() if k != QUANT_STATS}
    self.float_model = model.clone(quant=None)
    self.quant_model = model.clone(quant=config)
    self.fv = base
    self.qv = {**base, QUANT_STATS: quant_stats} if quant_stats is not None else base
    self.name = getattr(config, "name", "")

  @staticmethod
  def check_config(config) -> None:
    """Raises ``ValueError`` when ``config`` quantizes nothing (no disagreement to search for).

    Args:
      config: a QuantConfig (or None).

    Raises:
      ValueError: ``config`` is None or every spec it hands out is float.
    """
    specs = config.layer_specs() if hasattr(config, "layer_specs") else [config]
    if all(s is None or s.is_float for s in specs):
      raise ValueError(
          f"quantizer {getattr(config, 'name', config)!r} quantizes nothing: the float and quantized models are"
          " the same, there is no disagreement to search for (give a preset such as w4a8 or tflite_int8)"
      )

  def logits(self, x):
    """Both models' logits.

    Args:
      x: model inputs ``[B, ...]``.

    Returns:
      ``(float logits, quantized logits)``, float32 ``[B, classes]``, at the
      highest matmul precision.
    """
    with jax.default_matmul_precision("highest"):
      zf = self.float_model.apply(self.fv, x)
      zq = self.quant_model.apply(self.qv, x, rngs={QUANT_RNG: jax.random.key(0)})
    return zf.astype(jnp.float32), zq.astype(jnp.float32)

  def embed(self, ids):
    """Both text models' embeddings of token ids (the quantized model's from its quantized table).

    Args:
      ids: token ids ``[B, T]``.

    Returns:
      ``(float embeddings, quantized embeddings)``, each ``[B, T, D]``.
    """
    rngs = {QUANT_RNG: jax.random.key(0)}
    ef = self.float_model.apply(self.fv, ids, method="embed_tokens")
    return ef, self.quant_model.apply(self.qv, ids, method="embed_tokens", rngs=rngs)

  def logits_embedded(self, ef, eq):
    """Both text models' logits from embeddings (:meth:`embed`): equal to :meth:`logits` on the ids.

    Args:
      ef: the float model's embeddings.
      eq: the quantized model's.

    Returns:
      ``(float logits, quantized logits)``, float32.
    """
    with jax.default_matmul_precision("highest"):
      zf = self.float_model.apply(self.fv, ef, embedded=True)
      zq = self.quant_model.apply(self.qv, eq, embedded=True, rngs={QUANT_RNG: jax.random.key(0)})
    return zf.astype(jnp.float32), zq.astype(jnp.float32)


def _found(zf, zq, cls):
  pf, pq = jnp.argmax(zf, -1), jnp.argmax(zq, -1)
  return (pf == cls) & (pq != pf)


def _start(pair: Pair, x0):
  zf, zq = pair.logits(x0)
  cls = jnp.argmax(zf, -1)
  return cls, jnp.argmax(zq, -1) != cls


def _state(x0, theta0, skipped):
  """The searchers' per-seed record: found, queries at the find, the found input and parameters, queries spent."""
  b = x0.shape[0]
  return (skipped, jnp.zeros(b, jnp.int32), x0, theta0, jnp.zeros(b, jnp.int32))


def _record(state, hit, x, theta, cost):
  """Marks seeds found at this iteration (the first time only)."""
  found, queries, best, best_theta, spent = state
  new = hit & ~found

  def keep(new_v, old_v):
    return jnp.where(new.reshape((-1,) + (1,) * (new_v.ndim - 1)), new_v, old_v)

  spent = spent + jnp.where(found, 0, cost)
  return found | new, jnp.where(new, spent, queries), keep(x, best), keep(theta, best_theta), spent


def _chunked(fn, args: tuple, batch_size: int | None):
  """``fn(*args)`` (arrays with the seeds' leading axis), run in chunks of
  ``batch_size`` seeds by ``lax.map``: one program, bounded memory."""
  b = args[0].shape[0]
  if not batch_size or b <= batch_size:
    return fn(*args)
  n = -(-b // batch_size)
  pad = n * batch_size - b

  def split(v):
    v = jnp.concatenate([v, jnp.repeat(v[:1], pad, 0)]) if pad else v
    return v.reshape((n, batch_size) + v.shape[1:])

  out = jax.lax.map(lambda a: fn(*a), tuple(split(v) for v in args))
  return jax.tree.map(lambda v: v.reshape((n * batch_size,) + v.shape[2:])[:b], out)


def whitebox_runs(cap: int, norm: str) -> dict[str, int]:
  """The white-box search's runs for a query cap (a step counts 2).

  Pixel norms: a first run of 10 steps from the seed (large steps: on
  ResNet-20 w4a4 at 16/255 such runs find with 4x fewer queries than 100-step
  runs), then runs of up to 100 steps (small steps: on LeNet-5 ``tflite_int8``
  at 32/255 they find 60 of 64 seeds where 10-step runs find 51), the first
  from the seed, the others from random draws, while the cap allows (figures:
  BUILD_NOTES, "Disagreement search"). ``natural``: runs of 10 steps only
  (restarts find more there). ``tokens``: one run of ``cap / (2 +
  TOKEN_CANDIDATES)`` substitution steps.

  Args:
    cap: queries per seed.
    norm: the perturbation model.

  Returns:
    ``first``, ``steps`` and ``restarts`` for :func:`whitebox`, at most ``cap`` queries in all.
  """
  if norm == "tokens":  # one run of substitutions, each step a gradient and TOKEN_CANDIDATES evaluations
    return {"first": 0, "steps": max(1, cap // (2 + TOKEN_CANDIDATES)), "restarts": 1}
  if norm == "natural":
    steps = min(10, cap // 2)
    return {"first": 0, "steps": steps, "restarts": max(1, cap // (2 * steps))}
  first = 10 if cap >= 60 else 0  # a short first run only where a long one still fits
  rest = cap // 2 - first
  restarts = max(1, -(-rest // 100))
  return {"first": first, "steps": rest // restarts, "restarts": restarts}


def _token_step(pair: Pair, budget: Budget, kappa: float, candidates: int):
  """The token search's step and gradient check (first-order ranking as in
  HotFlip, Ebrahimi et al. 2018). The gradients of both models' margins at
  their embeddings predict, for every (position, word) substitution, each
  margin after it: ``m + (E[v] - E[x_t]) . dm/de_t``. A substitution is
  ranked by its predicted distance from a find, ``max(m_quant, kappa -
  m_float)`` (negative: the quantized model flips while the float model
  keeps its class; ranking by the summed loss instead prefers words that
  flip both models). The ``candidates`` best allowed ones are evaluated (a
  query each) and the search moves to a find, or to the candidate with the
  lowest true distance. Allowed: a non-padding position and a word id >= 2
  other than the current one; with ``eps`` positions already changed, a
  new position is substituted and the first changed one restored, so the
  budget always holds."""
  k, vocab = int(budget.eps), budget.vocab

  def prepare():  # once per chunk, not per step
    return tuple(t[0] for t in pair.embed(jnp.arange(vocab)[None]))

  def margins(ef, eq, cls):
    zf, zq = pair.logits_embedded(ef, eq)
    mf, mq = _margin(zf, cls), _margin(zq, cls)
    return jnp.sum(mf) + jnp.sum(mq), (mf, mq)  # separable: the gradients are each model's own

  def distance(mf, mq):
    return jnp.maximum(mq, kappa - mf)

  def path(x0, cls):
    ef, eq = pair.embed(x0)
    return jax.grad(lambda eq: jnp.sum(_margin(pair.logits_embedded(ef, eq)[1], cls)))(eq)

  def step(ids, x0, cls, n, tables):  # tables: (float, quantized) embedding tables, from ``prepare``
    del n  # the step is a substitution whatever the run's length
    ef_table, eq_table = tables
    b, t = ids.shape
    ef, eq = ef_table[ids], eq_table[ids]
    (_, (mf, mq)), (gf, gq) = jax.value_and_grad(margins, argnums=(0, 1), has_aux=True)(ef, eq, cls)
    pf = mf[:, None, None] + jnp.einsum("btd,vd->btv", gf, ef_table) - jnp.sum(gf * ef, -1)[..., None]
    pq = mq[:, None, None] + jnp.einsum("btd,vd->btv", gq, eq_table) - jnp.sum(gq * eq, -1)[..., None]
    word = jnp.arange(vocab)
    ok = (x0 != text.PAD)[..., None] & (word >= 2) & (word != ids[..., None])
    best, idx = jax.lax.top_k(-jnp.where(ok, distance(pf, pq), jnp.inf).reshape(b, -1), candidates)
    at, to = idx // vocab, idx % vocab
    changed = ids != x0
    full = changed.sum(1) >= k
    first = jnp.argmax(changed, 1)
    restored = jnp.where(jnp.arange(t) == first[:, None], x0, ids)  # the first changed position back to the seed's
    new_pos = ~jnp.take_along_axis(changed, at, 1)  # [b, candidates]
    base = jnp.where((full[:, None] & new_pos)[..., None], restored[:, None, :], ids[:, None, :])
    cand = jnp.where(jnp.arange(t) == at[..., None], to[..., None], base)
    cand = jnp.where(jnp.isfinite(best)[..., None], cand, ids[:, None, :])  # nothing allowed: stay
    zf, zq = pair.logits(cand.reshape(b * candidates, t))
    cls_c = jnp.repeat(cls, candidates)
    value = distance(_margin(zf, cls_c), _margin(zq, cls_c)).reshape(b, candidates)
    hit = _found(zf, zq, cls_c).reshape(b, candidates)
    pick = jnp.where(hit.any(1), jnp.argmax(hit, 1), jnp.argmin(value, 1))
    nxt = jnp.take_along_axis(cand, pick[:, None, None], 1)[:, 0]
    return nxt, hit.any(1), nxt, nxt, 2 + candidates

  return step, path, prepare


def _step_cost(budget: Budget) -> int:
  """Queries a white-box step costs: a gradient (2), plus the evaluated substitutions for tokens."""
  return 2 + TOKEN_CANDIDATES if budget.tokens else 2


def _whitebox_program(pair: Pair, budget: Budget, steps, step_size, kappa, restarts, batch_size, first):
  """The white-box search's traceable pieces for one pair: ``path(x0) ->
  (skipped, moves)`` (whether each seed already disagrees, and whether the
  quantized margin's gradient is nonzero there), ``search(x0, keys) ->
  (state, skipped)`` (both in chunks of ``batch_size`` seeds), and the
  queries a step costs."""

  def objective(theta, x0, cls):
    x = budget.apply(x0, theta)
    zf, zq = pair.logits(x)
    loss = jnp.sum(_margin(zq, cls) + jax.nn.relu(kappa - _margin(zf, cls)))
    return loss, (x, zf, zq)

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def pixel_path(x0, cls):
    return jax.grad(lambda theta: jnp.sum(_margin(pair.logits(budget.apply(x0, theta))[1], cls)))(budget.init(x0))

  def pixel_step(theta, x0, cls, n, _):  # n: the run's length (sets the step size)
    (_, (x, zf, zq)), g = grad_fn(theta, x0, cls)
    return budget.descend(x0, theta, g, n, step_size), _found(zf, zq, cls), x, theta, 2

  if budget.tokens:
    step, grad_at, prepare = _token_step(pair, budget, kappa, TOKEN_CANDIDATES)
  else:
    step, grad_at, prepare = pixel_step, pixel_path, lambda: None
  cost = _step_cost(budget)

  def path_chunk(x0):
    cls, skipped = _start(pair, x0)
    g0 = grad_at(x0, cls)
    return skipped, jnp.any(g0 != 0, axis=tuple(range(1, g0.ndim)))

  def draw(keys, x0):  # one draw per seed from its own key: the same in any chunking
    return jax.vmap(lambda k, x: budget.sample(k, x[None])[0])(keys, x0)

  def chunk(x0, keys):
    cls, skipped = _start(pair, x0)
    ctx = prepare()

    def descent(state, theta0, n):  # n steps from theta0
      def body(carry, _):
        theta, state = carry
        nxt, hit, x, at, c = step(theta, x0, cls, n, ctx)
        return (nxt, _record(state, hit, x, at, c)), None

      (_, state), _ = jax.lax.scan(body, (theta0, state), None, length=n)
      return state

    def unless_all_found(state, run):  # a run is skipped once every seed of the chunk is found (or skipped)
      return jax.lax.cond(jnp.all(state[0]), lambda s: s, run, state)

    def restart(state, r):
      theta0 = jnp.where(r == 0, budget.init(x0), draw(jax.vmap(jax.random.fold_in, (0, None))(keys, r), x0))
      return unless_all_found(state, lambda s: descent(s, theta0, steps)), None

    state = _state(x0, budget.init(x0), skipped)
    if first:
      state = unless_all_found(state, lambda s: descent(s, budget.init(x0), first))
    state, _ = jax.lax.scan(restart, state, jnp.arange(restarts))
    return state, skipped

  def chunked(fn, args):
    size = batch_size
    if budget.tokens and not size:  # the step's scores are [seeds, T, vocab]: at most 256 MB a chunk
      size = max(1, (1 << 26) // (args[0].shape[1] * budget.vocab))
    return _chunked(fn, args, size)

  return (lambda x0: chunked(path_chunk, (x0,)), lambda x0, keys: chunked(chunk, (x0, keys)), cost)


def _check_path(name: str, skipped, moves) -> None:
  skipped, moves = np.asarray(skipped), np.asarray(moves)
  if (~skipped).any() and not (moves & ~skipped).any():
    raise ValueError(
        f"quantizer {name!r}: the quantized margin has zero gradient at every seed; it has no gradient path"
        " to the input (the white-box search needs one)"
    )


def whitebox(
    pair: Pair,
    x0,
    budget: Budget,
    *,
    steps: int = 50,
    step_size: float | None = None,
    kappa: float = 0.1,
    batch_size: int | None = None,
    restarts: int = 1,
    seed: int = 0,
    first: int = 0,
):
  """The white-box search (see the module doc): ``steps`` gradient steps per seed.

  Args:
    pair: the float and quantized models.
    x0: seeds ``[B, ...]`` in the budget's box.
    budget: the perturbation model (pixel ball, natural parameters, or token substitutions).
    steps: gradient steps per run (each 2 queries; a token step 2 + ``TOKEN_CANDIDATES``).
    step_size: per step (default: :meth:`Budget.descend`'s; not used by token steps).
    kappa: the float margin (in logits) the hinge keeps (measured on LeNet-5
      w4a4: 0.1 finds more than 1.0 or 0; a term rewarding the float-quantized
      margin gap found fewer).
    batch_size: seeds per chunk of the one compiled program (None: all at once).
    restarts: runs of ``steps`` steps each, the first from the seed, the
      others from a uniform draw in the budget.
    seed: seeds the restarts' draws.
    first: steps of a first run from the seed before the others (0: none),
      its step size set by its length (``Budget.descend``); a seed never
      found costs ``2 (first + steps restarts)`` queries. A run is skipped
      once every seed of its chunk is found.

  Returns:
    A :class:`SearchResult`.

  Raises:
    ValueError: the seeds do not fit the budget, or the quantized model has
      no gradient path to its input (its margin's gradient is zero at every
      seed).
  """
  budget = budget.for_model(pair.float_model)
  x0 = budget.prepare(x0)
  path, search, cost = _whitebox_program(pair, budget, steps, step_size, kappa, restarts, batch_size, first)
  _check_path(pair.name, *jax.jit(path)(x0))  # before any search
  t0 = time.perf_counter()
  state, skipped = jax.block_until_ready(jax.jit(search)(x0, jax.random.split(jax.random.key(seed), x0.shape[0])))
  cap = cost * (first + steps * restarts)
  return _result("whitebox", state, skipped, time.perf_counter() - t0, cap, budget, x0)


def whitebox_grid(
    model: nn.Module,
    variables: dict,
    quantizers,
    x0,
    budget: Budget,
    *,
    steps: int = 50,
    step_size: float | None = None,
    kappa: float = 0.1,
    batch_size: int | None = None,
    restarts: int = 1,
    seed: int = 0,
    first: int = 0,
    mapping: str = "auto",
) -> list[SearchResult]:
  """:func:`whitebox` for several quantized versions of one model in one
  compiled program: the configs' bits are data (:class:`qsim.quant.grid.ConfigGrid`),
  mapped over as the grid maps them, each config's search batched over the seeds.

  Args:
    model: the float model.
    variables: its variables (quant stats, if any, are replaced per config).
    quantizers: ``(name, config, quant_stats)`` per quantized version
      (``quant_stats`` None for configs without static ranges), e.g. from
      :func:`qsim.evaluate.engine.build_quantizers`.
    x0: seeds ``[B, ...]`` in the budget's box.
    budget: the perturbation model.
    steps: see :func:`whitebox`.
    step_size: see :func:`whitebox`.
    kappa: see :func:`whitebox`.
    batch_size: see :func:`whitebox`.
    restarts: see :func:`whitebox`.
    seed: see :func:`whitebox` (every config gets the same draws).
    first: see :func:`whitebox`.
    mapping: over the configs: ``'map'``, ``'vmap'`` or ``'auto'`` (see
      :mod:`qsim.quant.grid`).

  Returns:
    One :class:`SearchResult` per quantizer, in order; their finds equal
    :func:`whitebox`'s for each config alone. ``seconds`` is the whole
    program's wall time shared equally among the configs.

  Raises:
    ValueError: no quantizers, a config quantizes nothing, the seeds do not
      fit the budget, or a config's quantized margin has zero gradient at
      every seed.
  """
  if not quantizers:
    raise ValueError("whitebox_grid: quantizers=[] is not valid; give (name, config, quant_stats) per version")
  for _, config, _ in quantizers:
    Pair.check_config(config)
  budget = budget.for_model(model)
  x0 = budget.prepare(x0)

  def program(item):
    config, stats = item
    return _whitebox_program(
        Pair(model, variables, config, stats, check=False),
        budget,
        steps,
        step_size,
        kappa,
        restarts,
        batch_size,
        first,
    )

  items = [(config, stats) for _, config, stats in quantizers]
  path = ConfigGrid(lambda item, x0: program(item)[0](x0), mapping)
  for (name, _, _), skipped, moves in zip(quantizers, *path(items, x0)):
    _check_path(name, skipped, moves)
  search = ConfigGrid(lambda item, x0, keys: program(item)[1](x0, keys), mapping)
  t0 = time.perf_counter()
  states, skipped = jax.block_until_ready(search(items, x0, jax.random.split(jax.random.key(seed), x0.shape[0])))
  seconds = (time.perf_counter() - t0) / len(items)
  cap = _step_cost(budget) * (first + steps * restarts)
  return [
      _result("whitebox", tuple(v[i] for v in states), skipped[i], seconds, cap, budget, x0) for i in range(len(items))
  ]


def _result(method, state, skipped, seconds, cap, budget: Budget, x0) -> SearchResult:
  found, queries, best, theta, _ = (np.asarray(v) for v in state)
  skipped = np.asarray(skipped)
  return SearchResult(
      method,
      found & ~skipped,
      queries,
      best,
      skipped,
      seconds,
      cap,
      budget.used(np.asarray(x0), best, theta),
      theta if budget.norm == "natural" else None,
  )


def random_search(pair: Pair, x0, budget: Budget, *, queries: int = 100, seed: int = 0) -> SearchResult:
  """Black-box random search: one uniform draw in the budget per query.

  Args:
    pair: the float and quantized models.
    x0: seeds ``[B, ...]``.
    budget: the perturbation model.
    queries: draws per seed.
    seed: seeds the draws.

  Returns:
    A :class:`SearchResult`.

  Raises:
    ValueError: the seeds do not fit the budget.
  """
  budget = budget.for_model(pair.float_model)
  x0 = budget.prepare(x0)

  @jax.jit
  def run(x0, key):
    cls, skipped = _start(pair, x0)

    def body(state, k):
      theta = budget.sample(k, x0)
      x = budget.apply(x0, theta)
      zf, zq = pair.logits(x)
      return _record(state, _found(zf, zq, cls), x, theta, 1), None

    state, _ = jax.lax.scan(body, _state(x0, budget.init(x0), skipped), jax.random.split(key, queries))
    return state, skipped

  t0 = time.perf_counter()
  state, skipped = jax.block_until_ready(run(x0, jax.random.key(seed)))
  return _result("random", state, skipped, time.perf_counter() - t0, queries, budget, x0)


# --- DFlare's mutation operators, on [0, 1] images [B, H, W, C] -------------


def _box_blur(x, k):
  """Mean over a k x k window (edges replicated), k a traced int in 1..7 (odd or even as cv2.blur)."""
  return _window_stat(x, k, jnp.mean)


def _median_blur(x, k):
  return _window_stat(x, k, jnp.median)


def _window_stat(x, k, stat, size: int = 7):
  """``stat`` over the k x k window (k <= size) around each pixel; edges replicated."""
  pad = size // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
  h, w = x.shape[1], x.shape[2]
  offs = jnp.arange(size) - pad
  lo = -(k // 2)  # cv2's anchor: the window starts k // 2 before the pixel
  keep = (offs >= lo) & (offs < lo + k)
  patches = jnp.stack(
      [
          xp[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
          for dy in range(-pad, pad + 1)
          for dx in range(-pad, pad + 1)
      ],
      axis=-1,
  )
  mask = (keep[:, None] & keep[None, :]).reshape(-1)
  if stat is jnp.mean:
    return jnp.sum(patches * mask, -1) / jnp.sum(mask)
  return jnp.nanmedian(jnp.where(mask, patches, jnp.nan), axis=-1)


def _gauss_blur(x, k):
  sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a k-tap kernel with sigma=0
  offs = jnp.arange(7) - 3
  w = jnp.where(jnp.abs(offs) <= k // 2, jnp.exp(-(offs**2) / (2 * sigma**2)), 0.0)
  w = w / w.sum()
  xp = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
  h, wd = x.shape[1], x.shape[2]
  rows = sum(w[i] * xp[:, i : i + h, :, :] for i in range(7))
  return sum(w[i] * rows[:, :, i : i + wd, :] for i in range(7))


def _mutate(op, x, key):
  """Operator ``op`` (0..6, traced) applied to each image of ``x`` (values in [0, 1])."""
  ks = jax.random.split(key, 8)
  b = x.shape[0]
  shape = (b,) + (1,) * (x.ndim - 1)
  gauss = x + jax.random.normal(ks[0], x.shape) * (0.1**0.5 / 255)
  u = jax.random.uniform(ks[1], x.shape)
  salt = jnp.where(u < 0.002, 1.0, jnp.where(u > 0.998, 0.0, x))
  mu = jax.random.uniform(ks[2], shape, minval=-0.5, maxval=0.5)
  var = 0.05 * jax.random.uniform(ks[3], shape)
  mult = x + x * (mu + jnp.sqrt(var) * jax.random.normal(ks[4], x.shape))
  flat = x.reshape(b, -1)
  npix = jax.random.randint(ks[5], (b, 1), 0, 10)
  pick = jax.random.uniform(ks[6], flat.shape) < npix / flat.shape[1]
  pixel = jnp.where(pick, jax.random.uniform(ks[7], flat.shape), flat).reshape(x.shape)
  kb = jax.random.randint(ks[0], (), 1, 6)
  kg = 2 * jax.random.randint(ks[1], (), 0, 4) + 1
  km = 2 * jax.random.randint(ks[2], (), 0, 4) + 1
  return jax.lax.switch(
      op,
      [
          lambda: gauss,
          lambda: salt,
          lambda: mult,
          lambda: pixel,
          lambda: _box_blur(x, kb),
          lambda: _gauss_blur(x, kg),
          lambda: _median_blur(x, km),
      ],
  )


OPERATORS = ("gaussian", "salt_pepper", "multiplicative", "pixel_change", "box_blur", "gaussian_blur", "median_blur")


def mcmc_search(
    pair: Pair, x0, budget: Budget, *, queries: int = 100, seed: int = 0, novelty: float = 0.5
) -> SearchResult:
  """DFlare-style black-box search (see the module doc), one seed per chain.

  Args:
    pair: the float and quantized models.
    x0: seeds ``[B, H, W, C]`` in [0, 1].
    budget: the ball and box every mutant is projected onto.
    queries: mutants per seed.
    seed: seeds the chains.
    novelty: the squared distance beyond which a joint probability vector is new.

  Returns:
    A :class:`SearchResult`.

  Raises:
    ValueError: the seeds are not images ``[B, H, W, C]``, or the budget is
      not a pixel ball.
  """
  if not budget.pixels:
    raise ValueError(
        f"mcmc_search mutates pixels (DFlare's operators) inside an L-inf or L2 ball; norm={budget.norm!r} is"
        " searched by whitebox and random"
    )
  x0 = jnp.asarray(x0, jnp.float32)
  if x0.ndim != 4:
    raise ValueError(f"mcmc_search mutates images [B, H, W, C]; got shape {tuple(x0.shape)}")
  n_ops = len(OPERATORS)
  p = 1.0 / n_ops
  b = x0.shape[0]

  def per_seed(x0s, key):
    x0s = x0s[None]
    zf, zq = pair.logits(x0s)
    cls = jnp.argmax(zf[0])
    skipped = jnp.argmax(zq[0]) != cls
    states = jnp.full((queries + 1, 2 * zf.shape[-1]), jnp.inf, jnp.float32)  # joint probability vectors seen
    states = states.at[0].set(jnp.concatenate([jax.nn.softmax(zf[0]), jax.nn.softmax(zq[0])]))

    def body(c, k):
      x, best_d, last, chosen, wins, states, n_states, found, q_at, xf, t = c
      k_op, k_mut, k_acc = jax.random.split(k, 3)
      order = jnp.argsort(-(wins / (chosen + 1e-7)) + 1e-9 * jax.random.uniform(k_op, (n_ops,)))  # ties at random
      k1 = jnp.argsort(order)[jnp.maximum(last, 0)]
      # Metropolis-Hastings over ranks: uniform proposals, accepted with min(1, (1 - p)^(k2 - k1))
      props = jax.random.randint(k_acc, (64,), 0, n_ops)
      ok = jax.random.uniform(jax.random.fold_in(k_acc, 1), (64,)) < (1 - p) ** jnp.maximum(props - k1, 0)
      op = jnp.where(last < 0, jax.random.randint(k_op, (), 0, n_ops), order[props[jnp.argmax(ok)]])
      xm = budget.project(x0s, jnp.clip(_mutate(op, x, k_mut), *budget.box))
      zf, zq = pair.logits(xm)
      pf, pq = jax.nn.softmax(zf[0]), jax.nn.softmax(zq[0])
      top = jnp.argmax(pf)
      hit = (top == cls) & (jnp.argmax(pq) != top) & ~found
      d = jnp.abs(pf[top] - pq[top])
      joint = jnp.concatenate([pf, pq])
      new_state = (jnp.min(jnp.sum((states - joint) ** 2, -1)) > novelty) & ~found
      keep = ((jnp.abs(d - best_d) > 1e-3) | new_state) & ~found
      live = jnp.where(found, 0.0, 1.0)
      return (
          jnp.where(keep, xm, x),
          jnp.where(keep, d, best_d),
          jnp.where(keep, op, last),
          chosen.at[op].add(live),
          wins.at[op].add(jnp.where(keep | hit, live, 0.0)),
          jnp.where(new_state, states.at[n_states].set(joint), states),
          n_states + new_state.astype(jnp.int32),
          found | hit,
          jnp.where(hit, t + 1, q_at),
          jnp.where(hit, xm, xf),
          t + 1,
      ), None

    init = (x0s, 0.0, -1, jnp.zeros(n_ops), jnp.zeros(n_ops), states, 1, skipped, 0, x0s, 0)
    final, _ = jax.lax.scan(body, init, jax.random.split(key, queries))
    found, q_at, xf = final[7], final[8], final[9]
    return found & ~skipped, jnp.where(found & ~skipped, q_at, queries), xf[0], skipped

  run = jax.jit(jax.vmap(per_seed))
  t0 = time.perf_counter()
  found, q, best, skipped = jax.block_until_ready(run(x0, jax.random.split(jax.random.key(seed), b)))
  state = (found, q, best, best, None)
  return _result("mcmc", state, skipped, time.perf_counter() - t0, queries, budget, x0)
