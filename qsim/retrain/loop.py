"""Retraining with disagreements (the study's RQ4), with selection and
measurement kept apart and with controls.

One *run* is (quantizer, selection strategy, seed). Each round of a run:

1. quantizes the current float model (static ranges re-calibrated on the
   first ``calib_samples`` training samples) and evaluates it on the
   candidate pool (a held-out part of the training data, optionally with
   shifted copies), minus the samples earlier rounds added;
2. selects samples: ``all`` the pool's disagreements (the study's choice),
   the ``margin`` top-k (smallest float Margin, i.e. no disagreement labels
   needed: the deployable variant), ``random`` samples of the same size (the
   control), ``none`` (fine-tuning alone, a second control), or ``search``:
   the white-box disagreement search (:func:`qsim.search.attacks.whitebox`,
   ``search_norm`` / ``search_eps`` / ``search_steps``) run from up to
   ``search_seeds`` pool samples drawn at random, adding ``k`` of the inputs
   it finds (drawn at random when it finds more), each labelled with its
   seed's true label. ``k`` is ``budget``, or by default the number of
   disagreements in the pool, so every strategy adds as many samples as
   ``all`` does (``search`` fewer when it finds fewer);
3. fine-tunes the float model (or QAT) on the training data plus every
   sample selected so far, with their true labels; the round's workdir is a
   training workdir (checkpoints, metrics.jsonl, config.json), usable by
   ``experiments.evaluate``;
4. re-quantizes and re-measures on the evaluation split and the shifted sets,
   which never share a sample with the pool (checked by sample id before any
   work, :func:`qsim.retrain.pool.check_disjoint`).

Per (run, round, set) a row counts the disagreements ``before`` (the original
checkpoint under the same quantizer) and ``after``, split into ``resolved``
(before, not after), ``persisted`` (both) and ``new`` (after, not before), and
the float and quantized accuracy before and after. A pool without
disagreements stops the run cleanly with a ``no_disagreements`` row. Every
round and its rows are stored atomically: rerunning the same command resumes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import zlib
import numpy as np

from qsim import configs
from qsim import data as data_lib
from qsim.evaluate import metrics
from qsim.evaluate.engine import Engine, build_quantizers, check_variables
from qsim.results import QuantInfo, ResultsStore, Row, RunInfo, SetInfo
from qsim.evaluate.sweep import resolve_sets
from qsim.models import get_model
from qsim.quant import presets
from qsim.retrain.pool import Part, Splits, check_disjoint, parse_split
from qsim.runs import Run, atomic_write, load_variables, write_json
from qsim.search import attacks
from qsim.shifts import registry
from qsim.train import job
from qsim.train.loop import train

STRATEGIES = ("all", "margin", "random", "none", "search")
FINETUNE = ("float", "qat")
SORT_KEYS = ("quantizer", "strategy", "seed", "round", "set_index")
_MARGIN = metrics.SCORE_NAMES.index("margin")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class RetrainConfig(configs.FromConfigDict):
  """What to retrain and how; see the module docstring and
  ``experiments/configs/retrain.py``."""

  checkpoint: str
  quantizers: tuple[str, ...]
  strategies: tuple[str, ...] = ("all", "margin", "random")
  seeds: tuple[int, ...] = (0,)
  rounds: int = 1
  pool: str = "val"  # a split spec: train | val | test, optionally sliced ('val[:2500]')
  pool_shifts: tuple[str, ...] = ()  # synthetic shifts added to the pool: 'c/fog/1', 'c/fog' (all severities), 'c'
  eval_split: str = "test"
  shifts: tuple[str, ...] = ("c",)  # shifted sets re-measured, as in experiments.evaluate
  shift_limit: int = 1000  # samples per shifted set (the first ones of the evaluation split); 0 = all
  budget: int = 0  # samples per round for margin/random; 0 = as many as the pool's disagreements
  epochs: float = 1.0  # fine-tuning epochs over training data + selected samples
  learning_rate: float = 1e-4
  batch_size: int = 128
  finetune: str = "float"  # float | qat
  qat_quant: str = ""  # QAT config for finetune=qat; '' = the quantizer itself
  repeat: int = 1  # how many copies of each selected sample join the training data
  train_limit: int = -1  # training samples to fine-tune on; -1 = as the checkpoint was trained, 0 = all
  calib_samples: int = 100
  eval_batch_size: int = 500
  shift_seed: int = 0  # seeds the synthetic shifts (as experiments.evaluate's seed)
  data_dir: str = ""
  search_norm: str = "linf"  # strategy 'search': the perturbation model (qsim.search.attacks.NORMS)
  search_eps: float = 8 / 255  # its budget (images in [0, 1]; for 'natural' a fraction of the ranges)
  search_steps: int = 50  # white-box steps per seed
  search_seeds: int = 1000  # pool samples the search starts from per round (drawn at random)

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Checks every field before any work.

    Raises:
      ValueError: naming the field, the bad value and the valid range.
    """
    if not self.checkpoint:
      raise ValueError("checkpoint='' is not valid; give a train workdir, e.g. checkpoint=runs/lenet5")
    if not self.quantizers:
      raise ValueError("no quantizers given; e.g. quantizers=w4a4+tflite_int8")
    for q in self.quantizers:
      presets.preset(q)
    if len(set(self.quantizers)) != len(self.quantizers):
      raise ValueError(f"quantizers={list(self.quantizers)} lists one twice")
    bad = [s for s in self.strategies if s not in STRATEGIES]
    if bad or not self.strategies:
      raise ValueError(f"strategies={list(self.strategies)} is not valid; choose from {list(STRATEGIES)}")
    if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
      raise ValueError(f"seeds={list(self.seeds)} is not valid; give ints >= 0")
    for name, v, lo in (
        ("rounds", self.rounds, 1),
        ("batch_size", self.batch_size, 1),
        ("repeat", self.repeat, 1),
        ("calib_samples", self.calib_samples, 1),
        ("eval_batch_size", self.eval_batch_size, 1),
        ("budget", self.budget, 0),
        ("shift_limit", self.shift_limit, 0),
        ("train_limit", self.train_limit, -1),
        ("shift_seed", self.shift_seed, 0),
        ("search_steps", self.search_steps, 1),
        ("search_seeds", self.search_seeds, 1),
    ):
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}={v!r} is not valid; give an int >= {lo}")
    if not self.epochs > 0:
      raise ValueError(f"epochs={self.epochs!r} is not valid; give a number > 0")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate={self.learning_rate!r} is not valid; give a number > 0")
    if self.finetune not in FINETUNE:
      raise ValueError(f"finetune={self.finetune!r} is not valid; choose one of {list(FINETUNE)}")
    if self.finetune == "qat":
      for q in ([self.qat_quant] if self.qat_quant else self.quantizers):
        job.qat_config(q)
    parse_split(self.pool)
    parse_split(self.eval_split)
    if "search" in self.strategies:
      attacks.Budget(self.search_norm, self.search_eps)  # an unknown model or a bad budget fails here


def select(strategy: str, disagree: np.ndarray, margin: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """Indices (sorted) of the samples a strategy picks from the pool.

  Args:
    strategy: one of ``STRATEGIES``: 'all' (every disagreement), 'margin' (the
      ``k`` highest Margin scores), 'random' (``k`` at random) or 'none'.
    disagree: bool per pool sample, True where float and quantized disagree.
    margin: the float model's Margin score per pool sample (higher = less sure;
      NaN = never picked first); used by 'margin' only.
    k: the selection size for 'margin' and 'random', capped at the pool size.
    rng: draws the 'random' selection.

  Returns:
    The picked pool indices, sorted ascending (empty for 'none').

  Raises:
    ValueError: ``strategy`` is not one of ``STRATEGIES``.
  """
  n = len(disagree)
  k = min(int(k), n)
  if strategy == "all":
    return np.flatnonzero(disagree)
  if strategy == "margin":
    order = np.argsort(-np.nan_to_num(margin, nan=-np.inf), kind="stable")
    return np.sort(order[:k])
  if strategy == "random":
    return np.sort(rng.choice(n, size=k, replace=False))
  if strategy == "none":
    return np.zeros(0, np.int64)
  raise ValueError(f"strategy={strategy!r} is not valid; choose one of {list(STRATEGIES)}")


def _shifted_copy(name: str, raw: Part, seed: int, vocab, key_name: str | None = None) -> Part:
  """Synthetic shift ``name`` of ``raw`` (images, or raw texts), ids
  suffixed with the shift ('train:55003~c/fog/1')."""
  d = registry.apply_synthetic(
      name, data_lib.Data(name, raw.name, raw.x, raw.y, 0), seed=seed, key_name=key_name, vocab=vocab
  )
  return Part(name, d.x, d.y, np.char.add(raw.ids, "~" + name.split("/", 1)[1]))


def _pool_with_shifts(splits: Splits, cfg: RetrainConfig, vocab) -> Part:
  pool = splits.part(cfg.pool)
  if not cfg.pool_shifts:
    return pool
  names = []
  offered = registry.list_shifts(splits.dataset) if splits.dataset in registry.DATASETS else []
  for entry in cfg.pool_shifts:
    full = f"{splits.dataset}/{entry}"
    match = [n for n in offered if (n == full or n.startswith(full + "/")) and registry.parse(n).offline]
    if not match:
      raise ValueError(
          f"pool shift {entry!r} is not a synthetic shift of {splits.dataset!r}; e.g."
          f" {[n.split('/', 1)[1] for n in offered if registry.parse(n).offline][:4]}"
      )
    names += [n for n in match if n not in names]
  raw = splits.part(cfg.pool, encode=False) if splits.text else pool
  parts = [pool]
  for name in names:
    parts.append(_shifted_copy(name, raw, cfg.shift_seed, vocab, key_name=f"pool|{cfg.pool}|{name}"))
  return Part(
      pool.name,
      np.concatenate([p.x for p in parts]),
      np.concatenate([p.y for p in parts]),
      np.concatenate([p.ids for p in parts]),
  )


def _eval_sets(splits: Splits, cfg: RetrainConfig, dataset: str, vocab) -> list[tuple[registry.ShiftedSet, Part]]:
  """The evaluation split, then each shifted set built on its first
  ``shift_limit`` samples (the same sets ``experiments.evaluate`` measures
  when the evaluation split is 'test')."""
  ev = splits.part(cfg.eval_split)
  clean, *shifted = resolve_sets(dataset, list(cfg.shifts))
  out = [(clean, Part(clean.name, ev.x, ev.y, ev.ids))]
  n = len(ev) if cfg.shift_limit == 0 else min(cfg.shift_limit, len(ev))
  raw = splits.part(cfg.eval_split, encode=False).take(np.arange(n)) if splits.text else ev.take(np.arange(n))
  for s in shifted:
    if s.offline:
      out.append((s, _shifted_copy(s.name, raw, cfg.shift_seed, vocab)))
    else:  # published data: official corruptions follow the test split's order
      d = registry.load_shifted(s.name, seed=cfg.shift_seed, limit=n, vocab=vocab, data_dir=cfg.data_dir or None)
      prefix = "test" if s.family == "official_c" else s.shift
      out.append((s, Part(s.name, d.x, d.y, np.char.add(f"{prefix}:", np.arange(len(d.y)).astype(str)))))
  return out


def _outcome(before: dict, res, k: int = 0) -> dict:
  """Accounting of one set: disagreements before/after and how they moved."""
  valid_a = res.float_finite & res.quant_finite[k]
  dis_b = before["disagree"]
  dis_a = (res.float_pred != res.quant_pred[k]) & valid_a
  ok = before["valid"] & valid_a
  acc = lambda pred, v: float(np.mean(pred[v] == res.y[v])) if v.any() else float("nan")  # noqa: E731
  return {
      "n": len(res.y),
      "nonfinite": int((~ok).sum()),
      "before": int(dis_b.sum()),
      "after": int(dis_a.sum()),
      "resolved": int((dis_b & ~dis_a).sum()),
      "persisted": int((dis_b & dis_a).sum()),
      "new": int((dis_a & ~dis_b).sum()),
      "float_accuracy_before": acc(before["float_pred"], before["valid"]),
      "float_accuracy_after": acc(res.float_pred, valid_a),
      "quant_accuracy_before": acc(before["quant_pred"], before["valid"]),
      "quant_accuracy_after": acc(res.quant_pred[k], valid_a),
  }


class _Runner:
  """Holds the loaded data, the model and one engine per quantizer."""

  def __init__(self, cfg: RetrainConfig, workdir: str):
    self.cfg = cfg
    self.workdir = workdir
    self.origin = Run.open(cfg.checkpoint)
    self.ck = self.origin.config
    self.run_info = RunInfo.of(cfg.checkpoint, self.ck)
    dataset = self.origin.dataset
    self.num_classes = self.origin.num_classes
    self.model = self.origin.model
    vocab = self.origin.vocab
    splits = Splits(
        dataset,
        val_size=self.ck.get("val_size") or None,
        data_dir=cfg.data_dir or None,
        vocab=vocab,
        vocab_size=getattr(self.model, "vocab_size", None) or 20000,
    )
    limit = self.ck.get("train_limit", 0) if cfg.train_limit == -1 else cfg.train_limit
    self.train = splits.part(f"train[:{limit or ''}]")
    self.pool = _pool_with_shifts(splits, cfg, vocab)
    self.shifted, self.sets = zip(*_eval_sets(splits, cfg, dataset, vocab))
    if np.shape(self.pool.x)[1:] != np.shape(self.train.x)[1:]:
      raise ValueError(
          f"candidate pool samples have shape {np.shape(self.pool.x)[1:]} but the training data"
          f" {np.shape(self.train.x)[1:]}"
      )
    if "search" in cfg.strategies and (
        not isinstance(self.pool.x, np.ndarray) or self.pool.x.ndim != 4 or self.pool.x.dtype.kind != "f"
    ):
      raise ValueError(
          f"strategy 'search' perturbs images (float [N, H, W, C]); the {dataset} pool holds"
          f" {type(self.pool.x).__name__} samples of shape {np.shape(self.pool.x)}"
      )
    check_disjoint(
        self.pool.ids,
        {"the fine-tuning data": self.train.ids, **{f"evaluation set {p.name!r}": p.ids for p in self.sets}},
    )
    self.calib = self.train.take(np.arange(min(cfg.calib_samples, len(self.train))))
    self.variables = self.origin.variables
    check_variables(self.model, self.variables, self.calib.x)
    self.store = ResultsStore(workdir)
    self.before_store = ResultsStore(os.path.join(workdir, "before"))
    self.engines: dict[str, Engine] = {}
    self.quantizers: dict = {}  # per quantizer name: the last calibrated one (the search's model pair)
    ids = {"pool": self.pool.ids, "train": self.train.ids, **{f"set{i}": p.ids for i, p in enumerate(self.sets)}}
    names = np.asarray([p.name for p in self.sets], dtype=str)
    atomic_write(os.path.join(workdir, "sample_ids.npz"), lambda f: np.savez_compressed(f, set_names=names, **ids))

  def engine(self, q: str, variables: dict) -> Engine:
    """The quantizer's engine on ``variables`` (re-calibrated), compiled once."""
    qz = build_quantizers(self.model, variables, [q], self.calib.x)
    self.quantizers[q] = qz[0]
    if q not in self.engines:
      self.engines[q] = Engine(self.model, variables, qz, batch_size=self.cfg.eval_batch_size)
    else:
      self.engines[q].update(variables, qz)
    return self.engines[q]

  def before(self, q: str) -> list[dict]:
    """Per set: the original checkpoint's predictions under quantizer ``q``."""
    key = self.before_store.key(q)
    if not self.before_store.has(key):
      eng = self.engine(q, self.variables)
      samples, rows = {}, []
      for i, p in enumerate(self.sets):
        res = eng.run(p.x, p.y, p.name)
        valid = res.float_finite & res.quant_finite[0]
        samples[f"s{i}_float_pred"] = res.float_pred
        samples[f"s{i}_quant_pred"] = res.quant_pred[0]
        samples[f"s{i}_valid"] = valid
        m = res.rows()[0]
        rows.append(
            Row(
                run=self.run_info,
                set=SetInfo.of(self.shifted[i], i),
                quantizer=QuantInfo.of_preset(m.pop("quantizer")),
                metrics=m,
            ).as_dict()
        )
      self.before_store.put(key, rows, samples)
      _log(
          f"{q}: original checkpoint measured on {len(self.sets)} sets; clean disagreements"
          f" {rows[0]['disagreements']} of {rows[0]['n']}"
      )
    s = self.before_store.samples(key)
    out = []
    for i in range(len(self.sets)):
      fp, qp, v = s[f"s{i}_float_pred"], s[f"s{i}_quant_pred"], s[f"s{i}_valid"]
      out.append({"float_pred": fp, "quant_pred": qp, "valid": v, "disagree": (fp != qp) & v})
    return out

  def _row_keys(self, q, strategy, seed, r):
    return {
        "strategy": strategy,
        "seed": seed,
        "round": r,
        "finetune": self.cfg.finetune if self.cfg.finetune == "float" else f"qat:{self.cfg.qat_quant or q}",
    }

  def run(self, q: str, strategy: str, seed: int) -> None:
    cfg = self.cfg
    before = self.before(q)
    prev, chosen_all = os.path.abspath(cfg.checkpoint), np.zeros(0, np.int64)
    added_x = []  # per round: the inputs it adds (pool samples, or the search's finds)
    for r in range(1, cfg.rounds + 1):
      rdir = os.path.join(self.workdir, "models", q, strategy, f"seed{seed}", f"round{r}")
      key = self.store.key(q, strategy, str(seed), str(r))
      tag = f"{q} / {strategy} / seed {seed} / round {r}"
      sel_path = os.path.join(rdir, "selection.npz")
      if self.store.has(key):
        sel = dict(np.load(sel_path, allow_pickle=False))
        if int(sel["pool_disagreements"]) == 0:
          return
        chosen_all, prev = np.concatenate([chosen_all, sel["index"]]), rdir
        added_x.append(self._inputs(sel))
        continue
      os.makedirs(rdir, exist_ok=True)
      variables = self.variables if r == 1 else load_variables(prev)
      if os.path.exists(sel_path):
        sel = dict(np.load(sel_path, allow_pickle=False))
      else:
        sel = self._select(q, strategy, seed, r, variables, chosen_all)
        atomic_write(sel_path, lambda f, s=sel: np.savez(f, **s))
      keys = self._row_keys(q, strategy, seed, r)
      quant = QuantInfo.of_preset(q, self.cfg.quantizers.index(q))
      pool_info = {
          "pool_size": int(sel["pool_size"]),
          "pool_disagreements": int(sel["pool_disagreements"]),
          "selected": len(sel["index"]),
          **{k: int(sel[k]) for k in ("search_seeds", "search_found") if k in sel},
      }
      if int(sel["pool_disagreements"]) == 0:
        _log(
            f"{tag}: the quantized model has no disagreements in the {int(sel['pool_size'])} remaining pool"
            " samples; nothing to retrain on, run stopped"
        )
        self.store.put(
            key,
            [
                Row(
                    run=self.run_info,
                    set=SetInfo(set="pool", family="pool"),
                    quantizer=quant,
                    keys={**keys, "status": "no_disagreements"},
                    metrics=pool_info,
                ).as_dict()
            ],
        )
        return
      chosen_all = np.concatenate([chosen_all, sel["index"]])
      added_x.append(self._inputs(sel))
      added = self.pool.take(np.repeat(chosen_all, cfg.repeat))
      x = (
          np.concatenate([self.train.x, np.repeat(np.concatenate(added_x), cfg.repeat, axis=0)])
          if len(added)
          else self.train.x  # nothing added (e.g. strategy 'none'): the training data as it is, of any sample type
      )
      y = np.concatenate([self.train.y, added.y])
      steps = max(1, math.ceil(cfg.epochs * len(y) / cfg.batch_size))
      _log(
          f"{tag}: {pool_info['pool_disagreements']} disagreements in {pool_info['pool_size']} pool samples;"
          f" selected {pool_info['selected']} ({len(chosen_all)} in all); fine-tuning {steps} steps on {len(y)}"
      )
      ft_quant = job.qat_config(cfg.qat_quant or q) if cfg.finetune == "qat" else None
      ft_model = (
          get_model(self.ck["model"], num_classes=self.num_classes, quant=ft_quant)
          if ft_quant is not None
          else self.model
      )
      t0 = time.time()
      train(
          ft_model,
          x,
          y,
          workdir=rdir,
          steps=steps,
          batch_size=min(cfg.batch_size, len(y)),
          learning_rate=cfg.learning_rate,
          seed=seed * 1000 + r,
          log_every=max(1, steps // 4),
          checkpoint_every=max(1, min(500, steps)),
          init_from=prev,
      )
      write_json(
          os.path.join(rdir, "config.json"),
          {
              **self.ck,
              "steps": steps,
              "seed": seed * 1000 + r,
              "init_from": prev,
              "retrain": {**dataclasses.asdict(cfg), "quantizer": q, "strategy": strategy, "round": r},
          },
      )
      variables = load_variables(rdir)
      eng = self.engine(q, variables)
      rows, samples = [], {"selected_ids": self.pool.ids[sel["index"]]}
      for i, p in enumerate(self.sets):
        res = eng.run(p.x, p.y, p.name)
        rows.append(
            Row(
                run=self.run_info,
                set=SetInfo.of(self.shifted[i], i),
                quantizer=quant,
                keys={**keys, "status": "done"},
                metrics={
                    **pool_info,
                    "added_total": len(chosen_all),
                    "finetune_steps": steps,
                    **_outcome(before[i], res),
                },
            ).as_dict()
        )
        samples[f"s{i}_float_pred"] = res.float_pred
        samples[f"s{i}_quant_pred"] = res.quant_pred[0]
      self.store.put(key, rows, samples)
      c = rows[0]
      shifted = rows[1:]
      _log(
          f"{tag}: clean disagreements {c['before']} -> {c['after']} (resolved {c['resolved']}, persisted"
          f" {c['persisted']}, new {c['new']}); float acc {c['float_accuracy_before']:.4f} ->"
          f" {c['float_accuracy_after']:.4f}"
          + (
              f"; shifted sets {sum(s['before'] for s in shifted)} -> {sum(s['after'] for s in shifted)}"
              if shifted
              else ""
          )
          + f" ({time.time() - t0:.0f} s)"
      )
      prev = rdir

  def _inputs(self, sel: dict) -> np.ndarray:
    """The inputs a round's selection adds: its own (the search's finds) or the pool's samples."""
    return sel["x"] if "x" in sel else np.asarray(self.pool.take(sel["index"]).x)

  def _select(self, q, strategy, seed, r, variables, chosen_all) -> dict:
    remaining = np.setdiff1d(np.arange(len(self.pool)), chosen_all)
    cand = self.pool.take(remaining)
    res = self.engine(q, variables).run(cand.x, cand.y, "pool")
    disagree = (res.float_pred != res.quant_pred[0]) & res.float_finite & res.quant_finite[0]
    k = self.cfg.budget or int(disagree.sum())
    rng = np.random.default_rng([seed, r, zlib.crc32(q.encode())])
    out = {"pool_size": np.int64(len(cand)), "pool_disagreements": np.int64(disagree.sum())}
    if strategy == "search" and disagree.any():
      return {**out, **self._search(q, variables, cand, disagree, k, rng, remaining)}
    pick = select(strategy, disagree, res.float_scores[:, _MARGIN], k, rng) if disagree.any() else np.zeros(0, int)
    return {**out, "index": remaining[pick].astype(np.int64), "ids": cand.ids[pick]}

  def _search(self, q, variables, cand: Part, disagree, k, rng, remaining) -> dict:
    """Strategy 'search': white-box finds from pool seeds that do not disagree yet, ``k`` of them at random."""
    cfg = self.cfg
    seeds = np.flatnonzero(~disagree)
    seeds = np.sort(rng.permutation(seeds)[: cfg.search_seeds])
    qz = self.quantizers[q]  # calibrated on ``variables`` by the engine call just before
    pair = attacks.Pair(self.model, variables, qz.config, qz.quant_stats)
    x0 = np.asarray(cand.x[seeds], np.float32)
    t0 = time.time()
    res = attacks.whitebox(
        pair,
        x0,
        attacks.Budget(cfg.search_norm, cfg.search_eps),
        steps=cfg.search_steps,
        batch_size=cfg.eval_batch_size,
    )
    found = np.flatnonzero(res.found)
    keep = np.sort(rng.choice(found, size=min(k, len(found)), replace=False))
    _log(
        f"{q}: search ({cfg.search_norm} {cfg.search_eps:.4g}, {cfg.search_steps} steps) found disagreements"
        f" from {len(found)} of {len(seeds)} pool seeds in {time.time() - t0:.0f} s; adding {len(keep)}"
    )
    return {
        "index": remaining[seeds[keep]].astype(np.int64),
        "ids": cand.ids[seeds[keep]],
        "x": res.x[keep].astype(np.asarray(cand.x).dtype),
        "search_seeds": np.int64(len(seeds)),
        "search_found": np.int64(len(found)),
    }


def run_retrain(cfg: RetrainConfig, workdir: str) -> str:
  """Runs every (quantizer, strategy, seed) for ``cfg.rounds`` rounds.

  Resumes from whatever ``workdir`` holds.

  Args:
    cfg: what to retrain and how.
    workdir: the output directory: results, per-round models under
      ``models/``, the original checkpoint's measurements under ``before/``.

  Returns:
    The path of results.csv.

  Raises:
    ValueError: an invalid ``cfg``, a candidate pool that shares a sample with
      the fine-tuning data or an evaluation set, or a pool shift that is not a
      synthetic shift of the dataset.
    FileNotFoundError: ``cfg.checkpoint`` has no config.json or no checkpoint.
  """
  t0 = time.time()
  runner = _Runner(cfg, workdir)
  _log(
      f"retraining {runner.ck['model']} ({runner.ck['method']}) on {runner.ck['dataset']}:"
      f" {len(runner.train)} training samples, pool {cfg.pool} ({len(runner.pool)} samples), evaluation"
      f" {cfg.eval_split} + {len(runner.sets) - 1} shifted sets; {len(cfg.quantizers)} quantizers x"
      f" {len(cfg.strategies)} strategies x {len(cfg.seeds)} seeds x {cfg.rounds} rounds"
  )
  for seed in cfg.seeds:
    for q in cfg.quantizers:
      for strategy in cfg.strategies:
        runner.run(q, strategy, seed)
  path = runner.store.write_table(SORT_KEYS)
  _log(f"wrote {path} ({time.time() - t0:.0f} s)")
  return path
