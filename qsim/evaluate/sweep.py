"""A resumable sweep: checkpoints x quantizers x (clean + shifted sets).

Used by ``experiments.evaluate`` (one checkpoint) and
``experiments.ablate_bits`` (the bit-width grid on several checkpoints).
Everything is validated before any long work; each (checkpoint, set) unit
is stored atomically (:mod:`qsim.results.store`), so rerunning the same
command after a crash resumes where it stopped.

Multi-process (``jax.distributed``): every process runs ``run_sweep`` with
the same arguments, reads only its own block of each set
(:func:`qsim.distributed.process_shard`), the engine gathers the per-sample
outputs, and process 0 alone writes the workdir (and decides what is left
to do, for every process).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
from typing import Sequence

import numpy as np

from qsim import configs
from qsim import data as data_lib
from qsim import distributed
from qsim.evaluate.engine import Engine, build_quantizers, check_variables
from qsim.quant import QuantConfig, presets
from qsim.results import QuantInfo, ResultsStore, Row, RunInfo, SetInfo
from qsim.runs import Run, read_config
from qsim.shifts import registry

CLEAN = registry.CLEAN
SORT_KEYS = ("checkpoint", "set_index", "quantizer_index")


def _log(msg: str) -> None:
  if distributed.is_writer():  # one log for a multi-process run
    print(msg, file=sys.stderr, flush=True)


MAPPINGS = ("auto", "map", "vmap")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
  """What a sweep evaluates; checked when built.

  Attributes:
    checkpoints: train workdirs.
    quantizers: preset names (``qsim.quant.preset_names``; a wXaY grid is
      :func:`qsim.quant.bit_grid_names`) or named QuantConfigs (e.g. a
      mixed-precision config with per-layer rules).
    shifts: shifted sets besides the clean test split, as :func:`resolve_sets` reads them.
    limit: samples per set (0: all).
    shift_limit: samples per shifted set (0: ``limit``); e.g. the whole clean split and a sample of each
      shifted set.
    batch_size: samples per compiled batch.
    calib_samples: training samples that calibrate static ranges (TFLite's representative set).
    seed: seeds the synthetic shifts.
    data_dir: TFDS data folder ('': TFDS's default).
    skip_missing: skip shifted sets whose published data is not on this machine.
    mapping: how the config axis is mapped: 'auto', 'map' or 'vmap'.
    cache_bytes: loaded sets kept for the next checkpoints of a dataset (least recently used dropped first).
  """

  checkpoints: tuple[str, ...]
  quantizers: tuple[str | QuantConfig, ...] = presets.STUDY_PRESETS
  shifts: tuple[str, ...] = ()
  limit: int = 0
  shift_limit: int = 0
  batch_size: int = 500
  calib_samples: int = 100
  seed: int = 0
  data_dir: str = ""
  skip_missing: bool = False
  mapping: str = "auto"
  cache_bytes: int = 2 << 30

  def __post_init__(self):
    if not self.checkpoints or not all(self.checkpoints):
      raise ValueError(
          f"checkpoints={list(self.checkpoints)} is not valid; give train workdirs, e.g. checkpoint=runs/lenet5"
      )
    if not self.quantizers:
      raise ValueError("quantizers=() is not valid; give preset names, e.g. quantizers=w4a4+tflite_int8")
    names = []
    for q in self.quantizers:
      if isinstance(q, QuantConfig):
        if not q.name:
          raise ValueError("a QuantConfig in quantizers has no name; give it QuantConfig(name=...)")
        names.append(q.name)
      else:
        presets.preset(q)  # unknown names fail here, listing the valid ones
        names.append(q)
    if len(set(names)) != len(names):
      raise ValueError(f"quantizers={names} lists one twice")
    configs.check_at_least(self, dict(limit=0, shift_limit=0, batch_size=1, calib_samples=1, seed=0, cache_bytes=0))
    if self.mapping not in MAPPINGS:
      raise ValueError(f"mapping={self.mapping!r} is not valid; choose one of {list(MAPPINGS)}")

  @classmethod
  def from_config_dict(cls, config) -> SweepConfig:
    """The sweep an evaluate or ablation config asks for.

    ``experiments/configs/evaluate.py`` names one ``checkpoint`` and its
    ``quantizers``; ``experiments/configs/ablate.py`` names ``checkpoints``
    and a grid: ``weight_bits`` x ``act_bits`` (ints, 'float' for float
    activations) then the ``presets`` not already in it.

    Args:
      config: the ConfigDict.

    Returns:
      The checked config.

    Raises:
      ValueError: a key that is not valid, a value of the wrong type, or a value that is not valid.
    """
    values = configs.as_dict(config)
    if "checkpoint" in values:
      one = values.pop("checkpoint")
      values["checkpoints"] = (one,) if one else ()
    if "weight_bits" in values:
      weight_bits = tuple(values.pop("weight_bits"))
      act_bits = tuple(values.pop("act_bits"))
      for name, bits, allow_float in (("weight_bits", weight_bits, False), ("act_bits", act_bits, True)):
        bad = [
            b for b in bits if not (b == "float" and allow_float) and (isinstance(b, bool) or not isinstance(b, int))
        ]
        if bad or not bits:
          raise ValueError(
              f"{name}={list(bits)} is not valid; give ints in 2..16{' or float' if allow_float else ''}, e.g. 4+8"
          )
      grid = presets.bit_grid_names(weight_bits, [None if a == "float" else a for a in act_bits])
      values["quantizers"] = tuple(grid) + tuple(p for p in values.pop("presets") if p not in grid)
    return configs.from_config_dict(cls, values)


def resolve_sets(dataset: str, shifts: Sequence[str] | str) -> list[registry.ShiftedSet]:
  """The sets a run measures, as set objects, the clean test split first.

  Args:
    dataset: the checkpoint's dataset.
    shifts: what to add to the clean split: 'all' (every shifted set of the
      dataset), a family name ('c', 'official_c', 'natural', 'text': its sets),
      set names in full or relative to the dataset ('c/fog/3'), or a shift's
      prefix ('c/fog': every severity); a string is split at commas.

  Returns:
    :func:`qsim.shifts.registry.clean_set` then each shifted set once, in the order given.

  Raises:
    ValueError: a name that is not a set of ``dataset`` (the message lists close ones).
  """
  if isinstance(shifts, str):
    shifts = [s for s in shifts.split(",") if s]
  names = []
  for s in shifts:
    if s == CLEAN:
      continue
    if s == "all":
      names += registry.list_shifts(dataset)
    elif "/" not in s:
      names += registry.list_shifts(dataset, [s])
    else:
      if s.split("/", 1)[0] not in registry.DATASETS:
        s = f"{dataset}/{s}"  # relative to the dataset: 'c/fog/3'
      prefixed = [n for n in registry.list_shifts(dataset) if n.startswith(s.rstrip("/") + "/")]
      if prefixed:  # every severity of a shift: 'c/fog'
        names += prefixed
        continue
      if registry.parse(s).dataset != dataset:
        raise ValueError(f"shifted set {s!r} is not a set of the checkpoint's dataset {dataset!r}")
      names.append(s)
  return [registry.clean_set(dataset)] + [registry.parse(n) for n in dict.fromkeys(names)]


def load_set(
    run: Run, shifted: registry.ShiftedSet, *, seed: int, limit: int | None, data_dir: str | None = None, shard=None
) -> data_lib.Data:
  """A set of the run's dataset, encoded as the run's model reads it.

  Args:
    run: the opened run directory.
    shifted: the set (:func:`resolve_sets`; the clean test split is
      :func:`qsim.shifts.registry.clean_set`).
    seed: seeds a synthetic shift (with the set's name).
    limit: its first ``limit`` samples (None: all).
    data_dir: TFDS data folder (None: TFDS's default).
    shard: only this process's block of it (:class:`qsim.distributed.Shard`).

  Returns:
    The set's samples and labels.
  """
  kw = run.data_kwargs(data_dir)
  if shifted.family == CLEAN:
    return data_lib.load(run.dataset, "test", limit=limit, shard=shard, **kw, **run.text_kwargs())
  return registry.load_shifted(shifted.name, seed=seed, limit=limit, vocab=run.vocab, shard=shard, **kw)


def open_run(ckpt: str, cfg: dict | None, calib_samples: int, data_dir: str | None = None) -> tuple[Run, data_lib.Data]:
  """The run directory ``ckpt`` opened (:meth:`qsim.runs.Run.open`) with its first ``calib_samples`` training samples.

  The run's variables are checked against its model on those samples.

  Args:
    ckpt: the training run directory.
    cfg: its already read config.json; None reads it.
    calib_samples: how many training samples to load for calibration (>= 1).
    data_dir: the data directory; None for the run's.

  Returns:
    ``(run, calib)``: the opened :class:`qsim.runs.Run` and its calibration data.

  Raises:
    FileNotFoundError: ``ckpt`` has no config.json or no checkpoint.
    ValueError: config.json or the checkpoint is corrupted, the config names an unknown model, or the variables
      do not fit the model.
  """
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


def run_sweep(c: SweepConfig, workdir: str) -> str:
  """Evaluates each checkpoint under each quantizer on its clean test split and shifted sets.

  Sets loaded or generated for one checkpoint are kept (up to
  ``c.cache_bytes``) for the next checkpoints of the dataset, and checkpoints
  of one model share its compiled engine.

  Args:
    c: what to evaluate.
    workdir: the results folder (parts/, samples/, results.csv); a rerun resumes from it.

  Returns:
    The path of results.csv.

  Raises:
    ValueError: a shifted set that is not a set of a checkpoint's dataset, or
      a checkpoint whose variables do not fit its model.
    FileNotFoundError: a checkpoint or a set's data that is not there (unless ``c.skip_missing``).
  """
  quantizers = list(c.quantizers)
  limit, data_dir, seed, calib_samples = c.limit or None, c.data_dir or None, c.seed, c.calib_samples
  plans = []
  for ckpt in c.checkpoints:
    cfg = read_config(ckpt)
    plans.append((ckpt, cfg, resolve_sets(cfg["dataset"], c.shifts)))
  shard = distributed.process_shard()  # this process's block of every set
  writer = distributed.is_writer()
  store = ResultsStore(workdir) if writer else None
  t0 = time.time()
  cache = _SetCache(c.cache_bytes)  # checkpoints of one dataset share the loaded and generated sets
  engines: dict[tuple, Engine] = {}  # and checkpoints of one model its compiled engine
  for ckpt, cfg, sets in plans:
    done = np.asarray([writer and store.has(ResultsStore.key(os.path.abspath(ckpt), s.name)) for s in sets])
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
      engine = Engine(model, variables, qs, batch_size=c.batch_size, mapping=c.mapping)
      engines[(cfg["model"], info.num_classes)] = engine
    else:  # another checkpoint of the same model: same program, new weights and ranges
      engine.update(variables, qs)
    run_info = RunInfo.of(ckpt, cfg)
    for i, shifted in enumerate(sets):
      if shifted not in todo:
        continue
      name = shifted.name
      key = ResultsStore.key(os.path.abspath(ckpt), name)
      set_limit = limit if shifted.family == registry.CLEAN else (c.shift_limit or limit)
      try:
        set_key = (name, dataset, None if vocab is None else hash(tuple(vocab)), set_limit)
        if set_key not in cache:
          d = load_set(run, shifted, seed=seed, limit=set_limit, data_dir=data_dir, shard=shard)
          cache.put(set_key, (d.x, d.y))
        x, y = cache[set_key]
      except FileNotFoundError as e:
        if c.skip_missing:
          _log(f"  skipped {name}: {e}")
          continue
        raise
      res = engine.run(x, y, name)
      if not writer:  # every process has the whole result; process 0 writes it
        continue
      settings = {"eval_seed": seed, "limit": set_limit, "calib_samples": calib_samples}
      rows = [
          Row(
              run=run_info,
              set=SetInfo.of(shifted, i),
              quantizer=QuantInfo.of(engine.quantizers[k].config, k, m.pop("quantizer")),
              metrics=m,
              settings=settings,
          ).as_dict()
          for k, m in enumerate(res.rows())
      ]
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
