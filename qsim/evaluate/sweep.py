"""A resumable sweep: checkpoints x quantizers x (clean + shifted sets).

Used by ``experiments.evaluate`` (one checkpoint) and
``experiments.ablate_bits`` (the bit-width grid on several checkpoints).
Everything is validated before any long work; each (checkpoint, set) unit
is stored atomically (:mod:`qsim.evaluate.results`), so rerunning the same
command after a crash resumes where it stopped.

Multi-process (``jax.distributed``): every process runs ``run_sweep`` with
the same arguments, reads only its own block of each set
(:func:`qsim.distributed.process_shard`), the engine gathers the per-sample
outputs, and process 0 alone writes the workdir (and decides what is left
to do, for every process).
"""

from __future__ import annotations

import collections
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

import qsim
from qsim import data as data_lib
from qsim import distributed
from qsim.evaluate.engine import Engine, build_quantizers, check_variables
from qsim.evaluate.results import ResultsStore
from qsim.quant import presets
from qsim.runs import Run, read_config
from qsim.shifts import registry

CLEAN = "clean"
SORT_KEYS = ("checkpoint", "set_index", "quantizer_index")


def _log(msg: str) -> None:
  if distributed.is_writer():  # one log for a multi-process run
    print(msg, file=sys.stderr, flush=True)


def split(value: str) -> list[str]:
  """A '+'-separated config list ('w4a4+tflite_int8') as a list."""
  return [s for s in str(value).split("+") if s]


def config_kwargs(c) -> dict:
  """``run_sweep`` keyword arguments from an evaluate/ablate config."""
  return dict(
      limit=c.limit or None,
      batch_size=c.batch_size,
      calib_samples=c.calib_samples,
      seed=c.seed,
      data_dir=c.data_dir or None,
      skip_missing=c.skip_missing,
      mapping=c.mapping,
  )


def bit_grid_names(weight_bits: Sequence[int], act_bits: Sequence[int | None]) -> list[str]:
  """Preset names of a W x A grid (``None`` activation bits = float)."""
  return [presets.bits_name(w, a) for w in weight_bits for a in act_bits]


def resolve_sets(dataset: str, shifts: Sequence[str] | str) -> list[str]:
  """'all' = every shifted set of the dataset; a family name ('c',
  'official_c', 'natural', 'text') = its sets; otherwise set names, in full
  or relative to the dataset ('c/fog/3'), or a shift's prefix ('c/fog': every
  severity). The clean
  test split ('clean') always comes first."""
  if isinstance(shifts, str):
    shifts = [s for s in shifts.split(",") if s]
  out = [CLEAN]
  for s in shifts:
    if s == CLEAN:
      continue
    if s == "all":
      out += registry.list_shifts(dataset)
    elif "/" not in s:
      out += registry.list_shifts(dataset, [s])
    else:
      if s.split("/", 1)[0] not in registry.DATASETS:
        s = f"{dataset}/{s}"  # relative to the dataset: 'c/fog/3'
      prefixed = [n for n in registry.list_shifts(dataset) if n.startswith(s.rstrip("/") + "/")]
      if prefixed:  # every severity of a shift: 'c/fog'
        out += prefixed
        continue
      if registry.parse(s).dataset != dataset:
        raise ValueError(f"shifted set {s!r} is not a set of the checkpoint's dataset {dataset!r}")
      out.append(s)
  seen = set()
  return [s for s in out if not (s in seen or seen.add(s))]


def load_set(run: Run, name: str, *, seed: int, limit: int | None, data_dir: str | None = None, shard=None):
  """The run's clean test split (``name == 'clean'``) or a shifted set of its
  dataset, as Data, encoded as the run's model reads it (``shard``: only this
  process's block, see :class:`qsim.distributed.Shard`)."""
  kw = run.data_kwargs(data_dir)
  if name == CLEAN:
    return data_lib.load(run.dataset, "test", limit=limit, shard=shard, **kw, **run.text_kwargs())
  return registry.load_shifted(name, seed=seed, limit=limit, vocab=run.vocab, shard=shard, **kw)


def open_run(ckpt: str, cfg: dict | None, calib_samples: int, data_dir: str | None = None) -> tuple[Run, data_lib.Data]:
  """The run directory ``ckpt`` opened (:meth:`qsim.runs.Run.open`) with its
  first ``calib_samples`` training samples, its variables checked against its
  model on them."""
  run = Run.open(ckpt, cfg)
  calib = run.calibration(calib_samples, data_dir)
  check_variables(run.model, run.variables, calib.x)
  return run, calib


class _SetCache:
  """Loaded sets by key, least recently used dropped beyond ``max_bytes``."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self._items: collections.OrderedDict = collections.OrderedDict()

  def __contains__(self, key) -> bool:
    return key in self._items

  def __getitem__(self, key):
    self._items.move_to_end(key)
    return self._items[key]

  def put(self, key, value) -> None:
    self._items[key] = value
    while len(self._items) > 1 and sum(_nbytes(v) for v in self._items.values()) > self.max_bytes:
      self._items.popitem(last=False)


def _nbytes(item) -> int:
  x, y = item
  return (x.nbytes if isinstance(x, np.ndarray) else sum(len(t) for t in x)) + y.nbytes


def run_sweep(
    checkpoints: Sequence[str],
    quantizers: Sequence[str],
    shifts: Sequence[str] | str,
    workdir: str,
    *,
    limit: int | None = None,
    batch_size: int = 500,
    calib_samples: int = 100,
    seed: int = 0,
    data_dir: str | None = None,
    skip_missing: bool = False,
    mapping: str = "auto",
    cache_bytes: int = 2 << 30,
) -> str:
  """Evaluates each checkpoint under each quantizer on its clean test split
  and shifted sets; returns the path of results.csv. Sets loaded or
  generated for one checkpoint are kept (up to ``cache_bytes``, least
  recently used dropped first) for the next checkpoints of the dataset."""
  if not checkpoints:
    raise ValueError("no checkpoints given")
  quantizers = list(quantizers)
  for q in quantizers:
    presets.preset(q)  # unknown names fail here, listing the valid ones
  if calib_samples < 1:
    raise ValueError(f"calib_samples={calib_samples} is not valid; give an int >= 1")
  plans = []
  for ckpt in checkpoints:
    cfg = read_config(ckpt)
    plans.append((ckpt, cfg, resolve_sets(cfg["dataset"], shifts)))
  shard = distributed.process_shard()  # this process's block of every set
  writer = distributed.is_writer()
  store = ResultsStore(workdir) if writer else None
  t0 = time.time()
  cache = _SetCache(cache_bytes)  # checkpoints of one dataset share the loaded and generated sets
  engines: dict[tuple, Engine] = {}  # and checkpoints of one model its compiled engine
  for ckpt, cfg, sets in plans:
    done = np.asarray([writer and store.has(ResultsStore.key(os.path.abspath(ckpt), s)) for s in sets])
    todo = [s for s, d in zip(sets, distributed.broadcast(done)) if not d]  # process 0 decides for all
    _log(
        f"{ckpt}: {cfg['model']} ({cfg['method']}) on {cfg['dataset']}: {len(sets)} sets x"
        f" {len(quantizers)} quantizers; {len(sets) - len(todo)} sets already done"
    )
    if not todo:
      continue
    dataset = cfg["dataset"]
    run, calib = open_run(ckpt, cfg, calib_samples, data_dir)
    model, variables, vocab = run.model, run.variables, run.vocab
    info = data_lib.DATASETS[dataset]
    qs = build_quantizers(model, variables, quantizers, calib.x)
    engine = engines.get((cfg["model"], info.num_classes))
    if engine is None:
      engine = Engine(model, variables, qs, batch_size=batch_size, mapping=mapping)
      engines[(cfg["model"], info.num_classes)] = engine
    else:  # another checkpoint of the same model: same program, new weights and ranges
      engine.update(variables, qs)
    for i, name in enumerate(sets):
      if name not in todo:
        continue
      key = ResultsStore.key(os.path.abspath(ckpt), name)
      try:
        set_key = (name, dataset, None if vocab is None else hash(tuple(vocab)))
        if set_key not in cache:
          d = load_set(run, name, seed=seed, limit=limit, data_dir=data_dir, shard=shard)
          cache.put(set_key, (d.x, d.y))
        x, y = cache[set_key]
      except FileNotFoundError as e:
        if skip_missing:
          _log(f"  skipped {name}: {e}")
          continue
        raise
      res = engine.run(x, y, name)
      if not writer:  # every process has the whole result; process 0 writes it
        continue
      rows = []
      meta = registry.parse(name) if name != CLEAN else None
      for k, r in enumerate(res.rows()):
        rows.append(
            {
                "checkpoint": os.path.abspath(ckpt),
                "model": cfg["model"],
                "method": cfg["method"],
                "train_seed": cfg.get("seed"),
                "dataset": dataset,
                "set": name,
                "set_index": f"{i:05d}",
                "family": meta.family if meta else CLEAN,
                "shift": meta.shift if meta else "",
                "severity": meta.severity if meta else None,
                "quantizer_index": f"{k:03d}",
                **r,
                "eval_seed": seed,
                "limit": limit,
                "calib_samples": calib_samples,
                "qsim_version": qsim.__version__,
                "jax_version": jax.__version__,
                "backend": jax.default_backend(),
                "devices": jax.device_count(),
                "processes": jax.process_count(),
            }
        )
      store.put(
          key,
          rows,
          {
              "y": res.y,
              "float_pred": res.float_pred,
              "quant_pred": res.quant_pred,
              "float_scores": res.float_scores.astype(np.float32),
              "quant_scores": res.quant_scores.astype(np.float32),
              "float_finite": res.float_finite,
              "quant_finite": res.quant_finite,
              "quantizers": np.asarray(res.quantizers),
          },
      )
      worst = max(rows, key=lambda r: r["disagreements"])
      _log(
          f"  [{i + 1}/{len(sets)}] {name}: {len(res.y)} samples in {res.seconds:.1f} s; float acc"
          f" {rows[0]['float_accuracy']:.4f}; most disagreements: {worst['quantizer']} {worst['disagreements']}"
          f" ({engine.compilations} compilation{'s' if engine.compilations != 1 else ''})"
      )
  if not writer:
    return os.path.join(workdir, "results.csv")
  path = store.write_table(SORT_KEYS)
  _log(f"wrote {path} ({time.time() - t0:.0f} s)")
  return path
