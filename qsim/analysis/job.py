"""The debugger's job: statistics, one-at-a-time sweeps, the mixed-precision
search and its verification, each stage resumable.

``run_analysis(AnalysisConfig(...), workdir)`` writes, in ``workdir``:

* ``stats.csv``: per-layer tensor statistics (:mod:`qsim.analysis.stats`);
* ``sweep/``: a results table (the sweep's schema, :mod:`qsim.results`) of
  the whole config, weights-only, activations-only, and enable-one and
  disable-one per layer, on the clean test split and the shifted sets, all
  in one compiled program;
* ``search.json``: the mixed-precision search on the selection set (a
  held-out split, never the test split): per-layer costs, every candidate
  measured, the frontier and the chosen config;
* ``frontier/``: the chosen config, the frontier and the uniform bit-widths
  of the menu on the test split and the shifted sets;
* ``mixed_config.py``: the chosen config as an ``experiments.evaluate``
  config file; ``analysis.md`` and its plots (:mod:`qsim.analysis.report`).

A stage whose output exists is not run again: rerunning the same command
after a crash resumes (the sweeps resume per set).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
import numpy as np

from qsim import configs
from qsim.analysis import layers as layers_lib
from qsim.analysis import mixed
from qsim.analysis import stats as stats_lib
from qsim.evaluate import metrics
from qsim.evaluate import sweep as sweep_lib
from qsim.evaluate.engine import Engine, build_quantizers
from qsim.quant import QuantConfig, layer_preset
from qsim.runs import Run, atomic_write, read_config, write_json

SPLITS = ("train", "val")  # the selection set's split: never the test split


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalysisConfig(configs.FromConfigDict):
  """What the debugger analyses; checked when built.

  Attributes:
    checkpoint: the train workdir.
    quantizer: the preset under analysis (e.g. 'w4a8', 'tflite_int8').
    shifts: shifted sets besides the clean test split (as the sweep reads them).
    limit: samples per test or shifted set (0: all).
    stats_samples: calibration samples the tensor statistics run on.
    search: run the mixed-precision search.
    base: the preset the search varies (integer weights; its activations are kept).
    menu: the weight formats a layer may take (bits 2..16, 'fp16', 'bf16', 'float').
    budget: the largest average weight bits (weighted by weight counts).
    selection: the split the search measures on ('val': held out from training; never 'test').
    selection_samples: samples of it.
    candidates: configs the search measures per round (each round in the same compiled program).
    rounds: rounds of local search after the ILP's proposals.
    frontier_points: the most frontier configs verified on the test split and shifted sets.
    batch_size: samples per compiled batch.
    calib_samples: training samples that calibrate static ranges.
    seed: seeds the synthetic shifts and the search.
    data_dir: the data folder ('': the run's).
  """

  checkpoint: str
  quantizer: str = "w4a8"
  shifts: tuple[str, ...] = ()
  limit: int = 0
  stats_samples: int = 256
  search: bool = True
  base: str = "w4a8"
  menu: tuple[int | str, ...] = (2, 3, 4, 5, 6, 8)
  budget: float = 4.0
  selection: str = "val"
  selection_samples: int = 2000
  candidates: int = 256
  rounds: int = 2
  frontier_points: int = 16
  batch_size: int = 500
  calib_samples: int = 100
  seed: int = 0
  data_dir: str = ""

  def __post_init__(self):
    if not self.checkpoint:
      raise ValueError("checkpoint='' is not valid; give a train workdir, e.g. checkpoint=runs/lenet5")
    layer_preset(self.quantizer)  # an unknown preset fails here, listing the valid ones
    if self.quantizer == "float32":
      raise ValueError("quantizer='float32' is not valid: it quantizes nothing; give a preset such as w4a8")
    mixed.entry_spec(layer_preset(self.base), 8)  # the base needs integer weights
    object.__setattr__(self, "menu", mixed.check_menu(self.menu, self.budget))
    if self.selection not in SPLITS:
      raise ValueError(
          f"selection={self.selection!r} is not valid; choose one of {list(SPLITS)} (the test split is held out)"
      )
    configs.check_at_least(
        self,
        dict(
            limit=0,
            stats_samples=1,
            selection_samples=1,
            candidates=1,
            rounds=0,
            frontier_points=0,
            batch_size=1,
            calib_samples=1,
            seed=0,
        ),
    )


def _atomic_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text.encode()))


def _write_csv(path: str, rows: list[dict]) -> None:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  _atomic_text(path, out.getvalue())


def stage_configs(layers, spec) -> list[QuantConfig]:
  """The sweep's configs: the whole spec, weights only, activations only, then enable-one and disable-one.

  Args:
    layers: the analysed layers.
    spec: the LayerSpec under analysis.

  Returns:
    Named QuantConfigs ('all', 'weights_only', 'acts_only' when the spec has
    both, then ``enable:<layer>`` and ``disable:<layer>``).
  """
  n = len(layers)
  out = [layers_lib.per_layer(layers, [spec] * n, default=spec, name="all")]
  if spec.weight is not None and spec.act is not None:
    w = dataclasses.replace(spec, act=None) if not spec.int_bias else None
    a = dataclasses.replace(spec, weight=None) if not spec.int_bias else None
    if w is not None:  # an int32 bias needs both quantized: such presets have no split runs
      out.append(layers_lib.per_layer(layers, [w] * n, default=w, name="weights_only"))
      out.append(layers_lib.per_layer(layers, [a] * n, default=a, name="acts_only"))
  return out + layers_lib.one_at_a_time(layers, spec)


def _measure(model, variables, quant_configs, calib_x, x, y, batch_size, engine=None) -> tuple[list[dict], Engine]:
  """Each config's sweep row on ``(x, y)`` plus its mean absolute change of the float margin, one program.

  ``engine``: an engine built for configs of the same names and grouping is
  reused (new bits are data: no new compilation); otherwise a new one is built.
  """
  qs = build_quantizers(model, variables, quant_configs, calib_x)
  if engine is not None and engine.names == [q.name for q in qs]:
    try:
      engine.update(variables, qs)
    except ValueError:  # another grouping (another structure): another program
      engine = None
  else:
    engine = None
  if engine is None:
    engine = Engine(model, variables, qs, batch_size=batch_size)
  res = engine.run(x, y, "selection")
  rows = res.rows()
  m = metrics.SCORE_NAMES.index("margin")
  for k, row in enumerate(rows):
    row["margin_change"] = float(np.nanmean(np.abs(res.quant_scores[k][:, m] - res.float_scores[:, m])))
  return rows, engine


def run_search(c: AnalysisConfig, run: Run, layers, calib_x) -> dict:
  """The mixed-precision search on the selection set (see :mod:`qsim.analysis.mixed`).

  Args:
    c: the analysis config.
    run: the opened run.
    layers: its analysed layers.
    calib_x: the calibration samples.

  Returns:
    A JSON-ready dict: the menu, budget, per-layer costs, every candidate
    measured (entries, average bits, disagreements, accuracy), the frontier
    indices, the chosen candidate's index, and the compilations and seconds
    of each measurement.
  """
  base = layer_preset(c.base)
  sel = run.split(c.selection, c.selection_samples, c.data_dir or None)
  model, variables = run.model, run.variables
  menu = list(c.menu)
  n = len(layers)
  t0 = time.time()
  probes = [
      layers_lib.per_layer(
          layers,
          [mixed.entry_spec(base, e) if j == i else None for j in range(n)],
          default=None,
          name=f"{l.name}@{e}",
      )
      for i, l in enumerate(layers)
      for e in menu
  ]
  rows, engine = _measure(model, variables, probes, calib_x, sel.x, sel.y, c.batch_size)
  cost = np.asarray([r["disagreements"] + r["margin_change"] for r in rows]).reshape(n, len(menu))
  probe_s, probe_comp = time.time() - t0, engine.compilations
  _log(f"  per-layer costs: {len(probes)} configs on {len(sel.y)} selection samples in {probe_s:.0f} s")
  t0 = time.time()
  assignments = mixed.candidates(cost, layers, menu, c.budget, count=c.candidates, seed=c.seed)
  measured: list[dict] = []
  engine, programs, width = None, 0, len(assignments)
  for r in range(c.rounds + 1):
    if r:  # local search around the best measured configs within the budget
      fits = sorted(
          (m for m in measured if m["average_bits"] <= c.budget + 1e-9),
          key=lambda m: (m["disagreements"], m["margin_change"]),
      )
      seen = {tuple(m["entries"]) for m in measured}
      assignments = mixed.neighbours(
          [tuple(m["entries"]) for m in fits[:8]], layers, menu, c.budget, cost, exclude=seen, count=width
      )
      if not assignments:
        break
    padded = list(assignments) + [assignments[0]] * (width - len(assignments))  # same names: the same program
    cands = [mixed.config(layers, base, a, name=f"cand{k:04d}") for k, a in enumerate(padded)]
    before = engine
    rows, engine = _measure(model, variables, cands, calib_x, sel.x, sel.y, c.batch_size, engine)
    programs += engine.compilations if engine is not before else 0
    measured += [
        {
            "entries": list(a),
            "average_bits": mixed.average_bits(layers, a),
            "disagreements": row["disagreements"],
            "margin_change": row["margin_change"],
            "quant_accuracy": row["quant_accuracy"],
            "round": r,
        }
        for a, row in zip(assignments, rows)
    ]
    best = min((m for m in measured if m["average_bits"] <= c.budget + 1e-9), key=lambda m: m["disagreements"])
    _log(
        f"  round {r}: {len(assignments)} candidates ({len(measured)} in all) in {time.time() - t0:.0f} s;"
        f" best within budget: {best['disagreements']} disagreements at {best['average_bits']:.2f} bits"
        f" ({programs} compilation(s))"
    )
  cand_s = time.time() - t0
  fits = [k for k, m in enumerate(measured) if m["average_bits"] <= c.budget + 1e-9]
  chosen = min(fits, key=lambda k: (measured[k]["disagreements"], measured[k]["margin_change"]))
  front = mixed.pareto([(m["average_bits"], m["disagreements"] + m["margin_change"] * 1e-3) for m in measured])
  return {
      "base": c.base,
      "menu": menu,
      "budget": c.budget,
      "selection": f"{c.selection}[:{len(sel.y)}]",
      "layers": [dataclasses.asdict(l) for l in layers],
      "cost": cost.tolist(),
      "candidates": measured,
      "frontier": front,
      "chosen": chosen,
      "probe_configs": len(probes),
      "probe_compilations": probe_comp,
      "probe_seconds": probe_s,
      "candidate_compilations": programs,
      "rounds": c.rounds,
      "candidate_seconds": cand_s,
  }


def search_configs(search: dict, layers, points: int = 16) -> list[QuantConfig]:
  """The configs the search verifies on the test split: the chosen one, the
  frontier, and the uniform integer widths of the menu.

  Args:
    search: the search's record (:func:`run_search`).
    layers: the analysed layers.
    points: the most frontier configs verified (evenly spaced along it).

  Returns:
    Named QuantConfigs: 'mixed' (the chosen), 'frontier_<k>', 'uniform_w<b>'.
  """
  base = layer_preset(search["base"])
  cands = search["candidates"]
  out = [mixed.config(layers, base, cands[search["chosen"]]["entries"], name="mixed")]
  front = [k for k in search["frontier"] if k != search["chosen"]]
  if len(front) > points:  # evenly spaced along the frontier, both ends kept
    front = [front[int(round(i))] for i in np.linspace(0, len(front) - 1, points)]
  out += [mixed.config(layers, base, cands[k]["entries"], name=f"frontier_{k:04d}") for k in front]
  for e in search["menu"]:
    if isinstance(e, int):
      out.append(mixed.config(layers, base, [e] * len(layers), name=f"uniform_w{e}"))
  return out


def config_file(config: QuantConfig, checkpoint: str) -> str:
  """An ``experiments.evaluate`` config file that evaluates ``config``.

  Args:
    config: the (mixed) config.
    checkpoint: the train workdir it was chosen for (the file's default).

  Returns:
    The Python source of the config file.
  """
  rules = "\n".join(f"        ({p!r}, {s!r})," for p, s in config.rules)
  return f'''"""The mixed-precision config qsim's debugger chose (written by qsim.analysis).

  python -m experiments.evaluate --config=THIS_FILE --workdir=runs/eval_mixed
  python -m experiments.evaluate --config=THIS_FILE:shifts=c,limit=1000 --workdir=runs/eval_mixed
"""

from experiments.configs import evaluate
from qsim.quant import QuantConfig
from qsim.quant.spec import LayerSpec, TensorSpec

CONFIG = QuantConfig(
    default={config.default!r},
    rules=(
{rules}
    ),
    name={config.name!r},
)


def get_config(arg: str = ""):
  c = evaluate.get_config("checkpoint={checkpoint}," + arg)
  c.quantizers = (CONFIG,)
  return c
'''


def _sweep(c: AnalysisConfig, quant_configs, workdir: str) -> str:
  return sweep_lib.run_sweep(
      sweep_lib.SweepConfig(
          checkpoints=(c.checkpoint,),
          quantizers=tuple(quant_configs),
          shifts=c.shifts,
          limit=c.limit,
          batch_size=c.batch_size,
          calib_samples=c.calib_samples,
          seed=c.seed,
          data_dir=c.data_dir,
      ),
      workdir,
  )


def _same_settings(c: AnalysisConfig, workdir: str) -> None:
  """Records ``c`` in ``workdir``; a workdir made with other settings is refused (its stages would mix)."""
  path = os.path.join(workdir, "analysis_config.json")
  now = json.loads(json.dumps(dataclasses.asdict(c)))
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    if changed:
      raise ValueError(
          f"workdir {workdir!r} holds an analysis with other settings ({', '.join(f'{k}={before.get(k)!r}' for k in changed)});"
          " rerun with those settings to resume, or give a new workdir"
      )
  else:
    write_json(path, now)


def run_analysis(c: AnalysisConfig, workdir: str) -> str:
  """Runs every stage (skipping finished ones) and writes the report.

  Args:
    c: the analysis config.
    workdir: the output folder; a rerun resumes from it.

  Returns:
    The path of analysis.md.

  Raises:
    FileNotFoundError: the checkpoint or a set's data is not there.
    ValueError: the checkpoint does not fit its model, or a shifted set is
      not one of its dataset's.
  """
  from qsim.analysis import report  # pylint: disable=g-import-not-at-top (matplotlib, only when reporting)

  os.makedirs(workdir, exist_ok=True)
  _same_settings(c, workdir)
  cfg = read_config(c.checkpoint)
  sweep_lib.resolve_sets(cfg["dataset"], c.shifts)  # bad set names fail before any work
  run, calib = sweep_lib.open_run(c.checkpoint, cfg, c.calib_samples, c.data_dir or None)
  layers = layers_lib.find_layers(run.model, calib.x, run.variables)
  spec = layer_preset(c.quantizer)
  _log(f"{c.checkpoint}: {cfg['model']}, {len(layers)} layers: {', '.join(l.name for l in layers)}")
  stats_path = os.path.join(workdir, "stats.csv")
  if not os.path.exists(stats_path):
    t0 = time.time()
    x = run.split("train", c.stats_samples, c.data_dir or None).x
    _write_csv(stats_path, stats_lib.layer_statistics(run.model, run.variables, x, layers, spec))
    _log(f"  tensor statistics on {len(x)} samples in {time.time() - t0:.0f} s")
  _sweep(c, stage_configs(layers, spec), os.path.join(workdir, "sweep"))
  search = None
  if c.search:
    search_path = os.path.join(workdir, "search.json")
    if not os.path.exists(search_path):
      write_json(search_path, run_search(c, run, layers, calib.x))
    with open(search_path) as f:
      search = json.load(f)
    chosen = search_configs(search, layers, c.frontier_points)
    _sweep(c, chosen, os.path.join(workdir, "frontier"))
    _atomic_text(os.path.join(workdir, "mixed_config.py"), config_file(chosen[0], os.path.abspath(c.checkpoint)))
  path = report.write(workdir, c, layers, search)
  _log(f"wrote {path}")
  return path
