"""The disagreement engine: a float model and K quantized versions of it,
evaluated in one compiled, batch-sharded program, on any number of datasets.

``Engine(model, variables, quantizers).run(x, y)`` returns a
:class:`SetResult`: per sample, the float and quantized predictions and
uncertainty scores; per quantizer, accuracy, disagreements (rate with a
Wilson 95% interval), flips, and how well each uncertainty score detects
the disagreements. Exact: the last batch is padded and the padding dropped
on the host, where every count is summed in integers.

One compilation per (model, quantizers, batch shape): evaluating more
batches or more datasets reuses it (``Engine.compilations`` counts them).
The batch axis is sharded over every device of every process
(``jax.sharding.Mesh`` axis 'data' + ``NamedSharding``); per-example
computations make the result independent of the device and process count.
In a multi-process run each process passes its own block of the set
(:class:`qsim.distributed.Shard`) and every process gets the whole result
(per-example outputs are gathered). Matmuls and convolutions run at the
highest precision (on TPU, no bf16 passes count as disagreements).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from qsim import distributed
from qsim.evaluate import metrics
from qsim.nn import QUANT_RNG, QUANT_STATS, calibrate, check_rules, require_calibrated, resolved_names
from qsim.quant import presets
from qsim.quant.grid import ConfigGrid
from qsim.quant.spec import QuantConfig

SCORE_SOURCES = ("float", "quant")  # scores from the float model's or the quantized model's outputs


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """A named quant config, with its calibrated static ranges if it has any."""

  name: str
  config: QuantConfig
  quant_stats: Any = None


def check_variables(model: nn.Module, variables: dict, example: np.ndarray) -> None:
  """Raises ``ValueError`` naming the first parameter whose path or shape differs between ``variables`` and ``model``.

  Only the ``params`` and ``batch_stats`` collections are compared.

  Args:
    model: the (float) model the variables are meant for.
    variables: the variables to check, e.g. a loaded checkpoint.
    example: model inputs ``[N, ...]`` (N >= 1); only the first sample's shape is used to trace ``model.init``.

  Raises:
    ValueError: a collection is present on one side only, or a parameter is missing from either side or has a
      different shape.
  """
  expected = jax.eval_shape(model.init, jax.random.key(0), example[:1])
  for col in ("params", "batch_stats"):
    want = expected.get(col)
    got = variables.get(col)
    if want is None and got is None:
      continue
    if (want is None) != (got is None):
      raise ValueError(
          f"checkpoint and model disagree: collection {col!r} is "
          f"{'missing from the checkpoint' if got is None else 'not used by the model'}"
      )
    w = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    g = dict(jax.tree_util.tree_flatten_with_path(got)[0])
    for path in sorted(set(w) | set(g), key=jax.tree_util.keystr):
      name = f"{col}{jax.tree_util.keystr(path)}"
      if path not in g:
        raise ValueError(
            f"checkpoint does not match the model: {name} (shape {tuple(w[path].shape)}) is missing"
            " from the checkpoint"
        )
      if path not in w:
        raise ValueError(
            f"checkpoint does not match the model: {name} (shape {tuple(np.shape(g[path]))}) is not a"
            " parameter of the model"
        )
      if tuple(w[path].shape) != tuple(np.shape(g[path])):
        raise ValueError(
            f"checkpoint does not match the model: {name} has shape {tuple(np.shape(g[path]))} in the"
            f" checkpoint but {tuple(w[path].shape)} in the model"
        )


def build_quantizers(
    model: nn.Module,
    variables: dict,
    specs: Sequence[str | QuantConfig | tuple[str, QuantConfig]],
    calib_x: np.ndarray,
    *,
    calib_batch: int = 100,
) -> list[Quantizer]:
  """Quantizers from preset names, named QuantConfigs, or ``(name, QuantConfig)`` pairs.

  Configs with static activation ranges are calibrated on ``calib_x`` (e.g.
  the first 100 training samples, as TFLite's representative dataset).

  Args:
    model: the float model; each config is applied with ``model.clone(quant=cfg)``.
    variables: the model's trained variables (any existing quant stats are replaced by calibration).
    specs: preset names (see :func:`qsim.quant.presets.preset`), QuantConfigs (named by their ``name``) or
      ``(name, QuantConfig)`` pairs; names must be unique and not empty.
    calib_x: calibration inputs ``[N, ...]``; N >= 1 is required when a config has static ranges.
    calib_batch: calibration batch size, in samples.

  Returns:
    One :class:`Quantizer` per spec, in order; ``quant_stats`` is None for configs without static ranges.

  Raises:
    ValueError: a name is listed twice or is not a valid preset, a rule matches no layer of the model, a config
      with static ranges gets no calibration samples, or calibration leaves a range uncalibrated.
  """
  out = []
  seen = set()
  names = None  # the model's layer names, traced once when a config has rules
  for spec in specs:
    if isinstance(spec, str):
      name, cfg = spec, presets.preset(spec)
    elif isinstance(spec, QuantConfig):
      name, cfg = spec.name, spec
    else:
      name, cfg = spec
    if not name:
      raise ValueError(f"quantizer {cfg!r} has no name; give QuantConfig(name=...) a label for tables and files")
    if name in seen:
      raise ValueError(f"quantizer {name!r} is listed twice")
    seen.add(name)
    if cfg.rules:
      names = resolved_names(model, calib_x) if names is None else names
      check_rules(cfg, names, f"quantizer {name!r}")
    qmodel = model.clone(quant=cfg)
    shapes = jax.eval_shape(qmodel.init, jax.random.key(0), calib_x[:1])
    stats = None
    if QUANT_STATS in shapes:
      if len(calib_x) == 0:
        raise ValueError(f"quantizer {name!r} has static ranges and needs calibration samples; got none")
      init_stats = qmodel.init(jax.random.key(0), calib_x[:1])[QUANT_STATS]
      base = {k: v for k, v in variables.items() if k != QUANT_STATS}
      batches = [calib_x[i : i + calib_batch] for i in range(0, len(calib_x), calib_batch)]
      calibrated = calibrate(qmodel, {**base, QUANT_STATS: init_stats}, batches)
      require_calibrated(calibrated)
      stats = calibrated[QUANT_STATS]
    out.append(Quantizer(name, cfg, stats))
  return out


@dataclasses.dataclass
class SetResult:
  """Everything the engine measured on one dataset.

  Per sample: ``y`` (N,), ``float_pred`` (N,), ``quant_pred`` (K, N),
  ``float_scores`` (N, M) and ``quant_scores`` (K, N, M) with M =
  ``metrics.SCORE_NAMES``, ``float_finite`` (N,) and ``quant_finite``
  (K, N): whether the logits were all finite.
  """

  name: str
  quantizers: list[str]
  y: np.ndarray
  float_pred: np.ndarray
  quant_pred: np.ndarray
  float_scores: np.ndarray
  quant_scores: np.ndarray
  float_finite: np.ndarray
  quant_finite: np.ndarray
  seconds: float = 0.0

  def rows(self) -> list[dict]:
    """One dict per quantizer: counts, rates, flips and detection metrics.

    Samples whose float or quantized logits are not finite are counted in
    ``nonfinite`` and left out of every other figure (never turned into
    predictions).

    Returns:
      One row per quantizer, in order: ``quantizer``, ``n`` (all samples), ``nonfinite``, correct counts and
      accuracies (float and quant), ``disagreements``, ``disagreement_rate`` with its Wilson 95% interval
      (``rate_ci_low``, ``rate_ci_high``), the three flip counts, and ``{float,quant}_{score}_{auroc,aupr,tnr95}``
      for every score in ``metrics.SCORE_NAMES``. Rates and metrics are NaN when undefined.
    """
    out = []
    y = self.y
    for k, qname in enumerate(self.quantizers):
      valid = self.float_finite & self.quant_finite[k]
      n = int(valid.sum())
      fp, qp, yy = self.float_pred[valid], self.quant_pred[k][valid], y[valid]
      dis = fp != qp
      f_ok, q_ok = fp == yy, qp == yy
      n_dis = int(dis.sum())
      lo, hi = metrics.rate_ci(n_dis, n)
      row = {
          "quantizer": qname,
          "n": len(y),
          "nonfinite": len(y) - n,
          "float_correct": int(f_ok.sum()),
          "quant_correct": int(q_ok.sum()),
          "float_accuracy": f_ok.mean() if n else float("nan"),
          "quant_accuracy": q_ok.mean() if n else float("nan"),
          "disagreements": n_dis,
          "disagreement_rate": n_dis / n if n else float("nan"),
          "rate_ci_low": float(lo),
          "rate_ci_high": float(hi),
          "flips_correct_to_wrong": int((f_ok & ~q_ok).sum()),
          "flips_wrong_to_correct": int((~f_ok & q_ok).sum()),
          "flips_wrong_to_other_wrong": int((~f_ok & ~q_ok & dis).sum()),
      }
      for src, scores in (("float", self.float_scores[valid]), ("quant", self.quant_scores[k][valid])):
        for m, mname in enumerate(metrics.SCORE_NAMES):
          rep = metrics.detection_report(dis, scores[:, m])
          row[f"{src}_{mname}_auroc"] = rep["auroc"]
          row[f"{src}_{mname}_aupr"] = rep["aupr"]
          row[f"{src}_{mname}_tnr95"] = rep["tnr_at_95tpr"]
      out.append(row)
    return out


def default_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis 'data'.

  Returns:
    A ``Mesh`` with the single axis ``'data'`` spanning ``jax.devices()``.
  """
  return distributed.data_mesh()


class Engine:
  """Float + K quantizers of one model, compiled once per batch shape."""

  def __init__(
      self,
      model: nn.Module,
      variables: dict,
      quantizers: Sequence[Quantizer],
      *,
      batch_size: int = 500,
      mesh: Mesh | None = None,
      mapping: str = "auto",
  ):
    if not quantizers:
      raise ValueError("Engine needs at least one quantizer")
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} is not valid; give an int >= 1")
    self.model = model.clone(quant=None)
    self.quantizers = list(quantizers)
    self.names = [q.name for q in self.quantizers]
    self.mesh = mesh if mesh is not None else default_mesh()
    n_dev = distributed.mesh_size(self.mesh)
    self.batch_size = -(-batch_size // n_dev) * n_dev  # a multiple of the device count
    self._local_batch = distributed.local_batch_size(self.mesh, self.batch_size)  # this process's rows
    self._grid = ConfigGrid(self._outputs, mapping=mapping)
    self._order = self._sizes = None
    self._place(variables, self.quantizers)
    self._step = jax.jit(self._compute)

  def _place(self, variables: dict, quantizers: Sequence[Quantizer]) -> None:
    for q in quantizers:  # an uncalibrated range (0, 0) would quantize silently with scale 1
      if q.quant_stats is not None:
        try:
          require_calibrated({QUANT_STATS: q.quant_stats})
        except ValueError as e:
          raise ValueError(f"quantizer {q.name!r}: {e}") from None
    stacked, order, sizes = ConfigGrid.prepare([(q.config, q.quant_stats) for q in quantizers])
    if self._order is not None and (order, sizes) != (self._order, self._sizes):
      raise ValueError("the new quantizers group differently from the engine's; build a new Engine")
    self._order, self._sizes = order, sizes
    self.variables = distributed.replicate({k: v for k, v in variables.items() if k != QUANT_STATS}, self.mesh)
    self._stacked = distributed.replicate(stacked, self.mesh)

  def update(self, variables: dict, quantizers: Sequence[Quantizer]) -> None:
    """New weights and re-calibrated ranges for the same quantizers (e.g. a fine-tuned model).

    The compiled program is reused, not rebuilt.

    Args:
      variables: the model's new variables (any ``quant_stats`` collection is ignored).
      quantizers: the engine's quantizers with new ranges: same names in the same order, grouping the same way.

    Raises:
      ValueError: the names differ from the engine's, the quantizers group differently, or a static range is
        uncalibrated.
    """
    names = [q.name for q in quantizers]
    if names != self.names:
      raise ValueError(f"update needs the engine's quantizers {self.names}, got {names}; build a new Engine")
    self._place(variables, quantizers)
    self.quantizers = list(quantizers)

  @property
  def compilations(self) -> int:
    """How many programs the engine has compiled (one per batch shape)."""
    return self._step._cache_size()  # pylint: disable=protected-access

  def _logits(self, cfg, stats, variables, x):
    v = dict(variables)
    if stats is not None:
      v[QUANT_STATS] = stats
    # a fixed 'quant' stream: stochastic rounding is deterministic here
    return self.model.clone(quant=cfg).apply(v, x, rngs={QUANT_RNG: jax.random.key(0)})

  def _outputs(self, item, variables, x):
    """Prediction, uncertainty scores and finite flag per sample."""
    cfg, stats = item
    z = self._logits(cfg, stats, variables, x).astype(jnp.float32)
    return jnp.argmax(z, -1).astype(jnp.int32), metrics.stack_scores(z), metrics.finite_rows(z)

  def _compute(self, stacked_groups, variables, x):
    with jax.default_matmul_precision("highest"):
      f = self._outputs((None, None), variables, x)
      q = self._grid.apply_groups(stacked_groups, (variables, x), order=self._order, sizes=self._sizes)
    return f + q

  def run(self, x: np.ndarray, y: np.ndarray, name: str = "", progress: bool = False) -> SetResult:
    """Evaluates every quantizer on ``(x, y)``: the whole set, or in a
    multi-process run this process's block of it (blocks in process order,
    as :class:`qsim.distributed.Shard` cuts them; every process calls
    ``run`` together). The result holds the whole set, on every process.

    Args:
      x: model inputs ``[n, ...]`` (this process's block); inputs with NaN/Inf give a warning and ``nonfinite`` rows.
      y: integer labels ``[n]``.
      name: the dataset's name, stored in the result and used in messages.
      progress: print per-batch progress to stderr.

    Returns:
      A :class:`SetResult` over the whole set (all processes' blocks, in order).

    Raises:
      ValueError: ``x`` and ``y`` differ in length, or the whole set is empty.
    """
    n = len(y)
    if len(x) != n:
      raise ValueError(f"dataset {name!r}: got {len(x)} inputs and {n} labels; need the same number, >= 1")
    counts = [int(c[0]) for c in distributed.gather_rows(np.asarray([n]))]
    if sum(counts) == 0:
      raise ValueError(f"dataset {name!r}: got 0 inputs and 0 labels; need the same number, >= 1")
    offset = sum(counts[: jax.process_index()])
    x = np.asarray(x)
    if n and np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
      bad = int((~np.isfinite(x.reshape(n, -1))).any(axis=1).sum())
      print(
          f"warning: {name or 'dataset'} has {bad} inputs with NaN/Inf; their rows are counted as"
          " 'nonfinite', not as predictions",
          file=sys.stderr,
          flush=True,
      )
    t0 = time.time()
    parts = []
    bs = self._local_batch
    steps = -(-max(counts) // bs)  # every process runs as many steps (its last ones may be all padding)
    pending = []
    for i in range(steps):
      start = i * bs
      batch = x[start : start + bs]
      real = len(batch)
      ids = np.full(bs, -1, np.int32)  # index in the whole set; -1 = padding
      ids[:real] = offset + start + np.arange(real)
      if real < bs:
        batch = np.concatenate([batch, np.zeros((bs - real,) + x.shape[1:], x.dtype)])
      xs, ids_g = distributed.global_batch(self.mesh, (batch, ids))
      # dispatched asynchronously: the host prepares the next batch meanwhile
      pending.append((ids_g, self._step(self._stacked, self.variables, xs)))
      if len(pending) > 2:
        parts.append(_host(*pending.pop(0)))
      if progress:
        print(f"  {name}: {min(start + bs, n)}/{n}", file=sys.stderr, flush=True)
    parts.extend(_host(*p) for p in pending)
    ids = np.concatenate([p[0] for p in parts])
    order = np.argsort(ids, kind="stable")
    cat = [np.concatenate([p[i] for p in parts], axis=0 if i < 4 else 1) for i in range(1, 7)]
    cat = [c[order] if i < 3 else c[:, order] for i, c in enumerate(cat)]
    y_all = np.concatenate(distributed.gather_rows(np.asarray(y, np.int32)))
    return SetResult(name, self.names, y_all, cat[0], cat[3], cat[1], cat[4], cat[2], cat[5], seconds=time.time() - t0)


def _host(ids, out) -> list[np.ndarray]:
  """Global outputs to numpy on this host (gathered from every process),
  padding dropped: ids first, then float outputs (batch, ...) and quantized
  ones (K, batch, ...)."""
  ids, out = distributed.to_host((ids, out))
  keep = ids >= 0
  return [ids[keep]] + [o[keep] for o in out[:3]] + [o[:, keep] for o in out[3:]]
