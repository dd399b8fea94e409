"""The disagreement-search job: every (quantizer, budget) unit resumable,
rows in the results schema, a report with a gallery of found inputs.

``run_search(SearchConfig(...), workdir)`` writes ``results.csv`` (a row per
quantizer x budget x method: success rate, queries and seconds per found
input, perturbation sizes, float confidence; keys ``searcher``, ``norm``,
``eps``, ``cap``), ``samples/`` (per unit: which seeds were found, the
queries, the found inputs), and ``search.md`` with ``success.png`` (success
against budget) and ``gallery.png`` (seed, found input and their
difference, with both models' predictions).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np

from qsim import configs
from qsim.data import text
from qsim.evaluate.engine import build_quantizers
from qsim.quant import preset
from qsim.results import QuantInfo, ResultsStore, Row, RunInfo, SetInfo, pyplot, read_rows, save_figure
from qsim.runs import Run, atomic_write
from qsim.search import attacks
from qsim.shifts import registry

SPLITS = ("test", "val")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig(configs.FromConfigDict):
  """What the search job runs; checked when built.

  Attributes:
    checkpoint: the train workdir.
    quantizers: preset names.
    norm: the perturbation model ('linf', 'l2', 'natural', or 'tokens' for text models).
    budgets: the ball radii, in the input's units (images in [0, 1]: 8/255 =
      0.0314); for 'natural', the fraction (0, 1] of ``attacks.NATURAL_RANGES``;
      for 'tokens', the number of substituted words.
    methods: searchers, of ``attacks.METHODS``.
    seeds: seeds per unit (the first of the split).
    split: where the seeds come from ('test' or 'val').
    cap: queries per seed (a white-box step counts 2).
    seed: seeds the random searchers.
    calib_samples: training samples that calibrate static ranges.
    data_dir: the data folder ('': the run's).
  """

  checkpoint: str
  quantizers: tuple[str, ...] = ("w4a4", "tflite_int8")
  norm: str = "linf"
  budgets: tuple[float, ...] = (2 / 255, 8 / 255, 32 / 255)
  methods: tuple[str, ...] = attacks.METHODS
  seeds: int = 100
  split: str = "test"
  cap: int = 200
  seed: int = 0
  calib_samples: int = 100
  data_dir: str = ""

  def __post_init__(self):
    if not self.checkpoint:
      raise ValueError("checkpoint='' is not valid; give a train workdir, e.g. checkpoint=runs/lenet5")
    if not self.quantizers:
      raise ValueError("quantizers=() is not valid; give preset names, e.g. quantizers=w4a4+tflite_int8")
    for q in self.quantizers:
      attacks.Pair.check_config(preset(q))  # unknown names and float presets fail here
    for b in self.budgets:
      attacks.Budget(self.norm, b)  # a budget <= 0, beyond the data range, or an unknown norm fails here
    if not self.budgets:
      raise ValueError("budgets=() is not valid; give ball radii, e.g. budgets=0.0078+0.0314")
    bad = [m for m in self.methods if m not in attacks.METHODS]
    if bad or not self.methods:
      raise ValueError(f"methods={list(self.methods)} is not valid; choose from {list(attacks.METHODS)}")
    pixel_only = [m for m in self.methods if m in attacks.PIXEL_METHODS]
    if self.norm in ("natural", "tokens") and pixel_only:
      raise ValueError(
          f"methods={list(self.methods)}: {pixel_only} mutate pixels inside a ball and cannot search"
          f" norm={self.norm!r};"
          " give methods=whitebox+random"
      )
    if self.split not in SPLITS:
      raise ValueError(f"split={self.split!r} is not valid; choose one of {list(SPLITS)}")
    configs.check_at_least(self, dict(seeds=1, cap=2, seed=0, calib_samples=1))


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _searcher(method: str, pair, x0, budget, c: SearchConfig):
  if method == "random":
    return attacks.random_search(pair, x0, budget, queries=c.cap, seed=c.seed)
  return attacks.mcmc_search(pair, x0, budget, queries=c.cap, seed=c.seed)


def run_search(c: SearchConfig, workdir: str) -> str:
  """Runs every (quantizer, budget) unit not yet stored, then writes the report.

  Args:
    c: the search config.
    workdir: the output folder; a rerun resumes from it.

  Returns:
    The path of search.md.

  Raises:
    FileNotFoundError: the checkpoint is not there.
    ValueError: the checkpoint does not fit its model, or the white-box
      searcher finds no gradient path.
  """
  run = Run.open(c.checkpoint)
  calib = run.calibration(c.calib_samples, c.data_dir or None)
  seeds = run.split(c.split, c.seeds, c.data_dir or None)
  x0 = np.asarray(seeds.x)
  x0 = x0 if np.issubdtype(x0.dtype, np.integer) else x0.astype(np.float32)
  words = None if run.vocab is None else len(run.vocab)  # substitute words the vocabulary has
  budgets = {eps: attacks.Budget(c.norm, eps).for_model(run.model, words) for eps in c.budgets}
  for budget in budgets.values():
    budget.check(x0)  # images under 'tokens', text under 'natural', too many substitutions: before any work
  store = ResultsStore(workdir)
  run_info = RunInfo.of(c.checkpoint, run.config)
  shifted = registry.clean_set(run.dataset)
  quantizers = build_quantizers(run.model, run.variables, list(c.quantizers), calib.x)
  pairs = [attacks.Pair(run.model, run.variables, q.config, q.quant_stats) for q in quantizers]
  for eps in c.budgets:
    keys = [ResultsStore.key(os.path.abspath(c.checkpoint), q.name, c.norm, repr(float(eps))) for q in quantizers]
    todo = [i for i, key in enumerate(keys) if not store.has(key)]
    if not todo:
      continue
    budget = budgets[eps]
    found = {}  # (quantizer index, method) -> SearchResult
    if "whitebox" in c.methods:  # every quantizer's white-box search in one program
      grid = [(quantizers[i].name, quantizers[i].config, quantizers[i].quant_stats) for i in todo]
      runs = attacks.whitebox_runs(c.cap, c.norm)
      results = attacks.whitebox_grid(run.model, run.variables, grid, x0, budget, seed=c.seed, **runs)
      found.update({(i, "whitebox"): r for i, r in zip(todo, results)})
    for qi in todo:
      q, pair = quantizers[qi], pairs[qi]
      probs = jax.jit(lambda x, pair=pair: jax.nn.softmax(pair.logits(x)[0]))
      rows, samples = [], {}
      for method in c.methods:
        res = found.get((qi, method)) or _searcher(method, pair, x0, budget, c)
        s = res.summary(x0, probs)
        s.pop("method")
        rows.append(
            Row(
                run=run_info,
                set=SetInfo(set=f"{c.split}[:{len(x0)}]", family=shifted.family if c.split == "test" else "pool"),
                quantizer=QuantInfo.of(q.config, qi, q.name),
                keys={"searcher": method, "norm": c.norm, "eps": float(eps), "cap": c.cap},
                metrics=s,
                settings={"search_seed": c.seed, "calib_samples": c.calib_samples},
            ).as_dict()
        )
        samples.update({f"{method}_found": res.found, f"{method}_queries": res.queries, f"{method}_x": res.x})
        _log(
            f"  {q.name} {c.norm} eps={eps:.4f} {method}: {s['found']}/{s['seeds']} found,"
            f" {s['queries_per_found']:.1f} queries per found"
        )
      samples["x0"] = x0
      samples["y"] = np.asarray(seeds.y)
      store.put(keys[qi], rows, samples)
  store.write_table(("quantizer_index", "eps", "searcher"))
  return write_report(workdir, c, store, pairs[0], quantizers[0].name, run.vocab)


def _words(ids, vocab) -> list[str]:
  return ["" if i == text.PAD else "<oov>" if i == text.OOV else vocab[i - 2] for i in ids]


def _text_gallery(store: ResultsStore, key: str, pair, method: str, vocab, n: int = 6, context: int = 6) -> list[str]:
  """Markdown lines: each found review around its substitutions (``~~seed word~~ **new word**``)."""
  s = store.samples(key)
  idx = np.flatnonzero(s[f"{method}_found"])[:n]
  if not len(idx) or vocab is None:
    return []
  x0, x = s["x0"][idx], s[f"{method}_x"][idx]
  zf, zq = (np.asarray(z).argmax(-1) for z in pair.logits(x))
  lines = ["| float | quantized | the review around its substitutions |", "|---|---|---|"]
  for j in range(len(idx)):
    old, new = _words(x0[j], vocab), _words(x[j], vocab)
    at = np.flatnonzero(x0[j] != x[j])
    keep = np.zeros(len(old), bool)
    for t in at:
      keep[max(0, t - context) : t + context + 1] = True
    shown, last = [], -1
    for t in np.flatnonzero(keep & (x0[j] != text.PAD)):
      if last >= 0 and t > last + 1:
        shown.append("...")
      shown.append(f"~~{old[t]}~~ **{new[t]}**" if t in at else old[t])
      last = t
    lines.append(f"| {zf[j]} | {zq[j]} | {' '.join(shown)} |")
  return lines


def _gallery(path: str, store: ResultsStore, key: str, pair, method: str, title: str, n: int = 6) -> bool:
  s = store.samples(key)
  idx = np.flatnonzero(s[f"{method}_found"])[:n]
  if not len(idx):
    return False
  x0, x = s["x0"][idx], s[f"{method}_x"][idx]
  zf, zq = (np.asarray(z) for z in pair.logits(x))
  f0 = np.asarray(pair.logits(x0)[0]).argmax(-1)
  plt = pyplot()
  fig, axes = plt.subplots(3, len(idx), figsize=(1.8 * len(idx) + 0.5, 5.6), squeeze=False)
  for j in range(len(idx)):
    d = x[j] - x0[j]
    for r, (img, label) in enumerate(
        (
            (x0[j], f"seed: float {f0[j]}"),
            (x[j], f"float {zf[j].argmax()}, quant {zq[j].argmax()}"),
            (0.5 + d / (2 * max(np.abs(d).max(), 1e-12)), f"diff, max {255 * np.abs(d).max():.1f}/255"),
        )
    ):
      ax = axes[r, j]
      ax.imshow(np.squeeze(img), cmap="gray", vmin=0, vmax=1)
      ax.set_title(label, fontsize=7)
      ax.axis("off")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)
  return True


def _scale(norm: str) -> float:
  return 1.0 if norm in ("natural", "tokens") else 255.0


def _budget(norm: str, eps: float) -> str:
  if norm == "tokens":
    return f"{eps:g} tokens"
  return f"{eps:.3g}" if norm == "natural" else f"{255 * eps:.3g}/255"


_UNITS = {"natural": " (fraction of the ranges)", "tokens": " (substituted words)"}


def write_report(workdir: str, c: SearchConfig, store: ResultsStore, pair: attacks.Pair, name: str, vocab=None) -> str:
  """search.md with the results table, a success-against-budget plot and a gallery.

  Args:
    workdir: the search folder (results.csv and samples/ in it).
    c: the search config.
    store: the folder's results store.
    pair: the first quantizer's models (its finds make the gallery).
    name: that quantizer's name.
    vocab: the text model's vocabulary (its gallery shows words); None for images.

  Returns:
    The path of search.md.
  """
  rows = read_rows(os.path.join(workdir, "results.csv"))
  plt = pyplot()
  fig, axes = plt.subplots(1, len(c.quantizers), figsize=(5 * len(c.quantizers), 3.8), squeeze=False)
  for ax, qname in zip(axes[0], c.quantizers):
    for method in c.methods:
      pts = sorted((r["eps"], r["success_rate"]) for r in rows if r["quantizer"] == qname and r["searcher"] == method)
      ax.plot([_scale(c.norm) * p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"{c.norm} budget" + _UNITS.get(c.norm, " (x 1/255)"))
    ax.set_ylabel("seeds with a found disagreement")
    ax.set_ylim(0, 1.02)
    ax.set_title(qname)
    ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, os.path.join(workdir, "success.png"))
  lines = [
      f"# Disagreement search on `{c.checkpoint}`",
      "",
      f"{c.seeds} seeds from the {c.split} split; a find is an input within the {c.norm} budget that the quantized"
      " model classifies differently while the float model keeps the seed's class. Cap: "
      f"{c.cap} queries per seed (a query: both models on one input; a white-box step counts 2)."
      + (
          " The natural model: brightness, contrast, rotation, shear, scale and blur, each within the budget times"
          f" its range ({', '.join(f'{k} {lo:g}..{hi:g}' for k, (lo, hi) in attacks.NATURAL_RANGES.items())})."
          if c.norm == "natural"
          else ""
      ),
      "",
      "| quantizer | budget | searcher | found / searched | success | queries per found | seconds per found |"
      " mean L-inf | budget used | float confidence |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    dist = "-" if c.norm == "tokens" else f"{255 * r['linf']:.2f}/255"
    per = (
        f"{r['queries_per_found']:.1f} | {r['seconds_per_found']:.3f} | {dist}"
        f" | {r.get('budget_used', float('nan')):.2f} | {r.get('float_confidence', float('nan')):.3f}"
        if r["found"]
        else "- | - | - | - | -"  # nothing found: no cost per find
    )
    lines.append(
        f"| {r['quantizer']} | {_budget(c.norm, r['eps'])} | {r['searcher']} | {int(r['found'])}/{int(r['seeds'])}"
        f" | {r['success_rate']:.2f} | {per} |"
    )
  lines += ["", "![success](success.png)", ""]
  for eps in sorted(c.budgets):
    key = ResultsStore.key(os.path.abspath(c.checkpoint), name, c.norm, repr(float(eps)))
    if c.norm == "tokens":
      found = _text_gallery(store, key, pair, c.methods[0], vocab)
      if found:
        lines += [
            f"Found substitutions: {name}, {_budget(c.norm, eps)}, {c.methods[0]} (the smallest budget with a find).",
            "",
        ]
        lines += found + [""]
        break
      continue
    title = f"{name}, {c.norm} {_budget(c.norm, eps)}, {c.methods[0]}: seed, found input, difference"
    if _gallery(os.path.join(workdir, "gallery.png"), store, key, pair, c.methods[0], title):
      lines += [f"Gallery: {title} (the smallest budget with a find).", "", "![gallery](gallery.png)", ""]
      break
  path = os.path.join(workdir, "search.md")
  atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
  return path
