"""The debugger's report: analysis.md, a per-layer bar chart and the Pareto plot."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from qsim.analysis.layers import Layer, rule
from qsim.results import ResultsStore, mean, pyplot, read_rows, save_figure
from qsim.runs import atomic_write
from qsim.shifts.registry import CLEAN


def _csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _num(v: str) -> Any:
  try:
    return float(v)
  except ValueError:
    return v


def _f(x: float, digits: int = 1) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def command_args(c) -> str:
  """The ``key=value`` config arguments that give ``c`` (every field, lists '+'-joined).

  Args:
    c: an analysis config (a dataclass).

  Returns:
    The comma-joined arguments, e.g. ``checkpoint=runs/lenet5,quantizer=w4a8,...``.
  """
  parts = []
  for f in dataclasses.fields(c):
    v = getattr(c, f.name)
    text = "+".join(str(x) for x in v) if isinstance(v, tuple) else str(v).lower() if isinstance(v, bool) else str(v)
    parts.append(f"{f.name}={text}")
  return ",".join(parts)


def summarize(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
  """Per quantizer: clean disagreements and rate, accuracy change, and the mean rate over shifted sets.

  Args:
    rows: a sweep's results rows (one per quantizer x set).

  Returns:
    ``{quantizer: {'clean': count, 'clean_rate', 'accuracy_change', 'shifted_rate', 'shifted_sets'}}``
    (``shifted_rate`` NaN without shifted sets).
  """
  out: dict[str, dict[str, float]] = {}
  for r in rows:
    s = out.setdefault(r["quantizer"], {"shifted": []})
    if r["family"] == "clean":
      s["clean"] = r["disagreements"]
      s["clean_rate"] = r["disagreement_rate"]
      s["accuracy_change"] = r["quant_accuracy"] - r["float_accuracy"]
      s["flips_correct_to_wrong"] = r["flips_correct_to_wrong"]
    else:
      s["shifted"].append(r["disagreement_rate"])
  for s in out.values():
    shifted = s.pop("shifted")
    s["shifted_rate"] = mean(shifted)
    s["shifted_sets"] = len(shifted)
  return out


def class_flips(sweep_dir: str, checkpoint: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
  """Disagreements on the clean split by class, from the sweep's stored per-sample predictions.

  Args:
    sweep_dir: the sweep's workdir (``samples/`` in it).
    checkpoint: the checkpoint it swept (the unit's key).

  Returns:
    ``(quantizers, by_class, pairs)``: ``by_class[k, c]`` counts quantizer k's
    disagreements whose float prediction is class c; ``pairs[k, a, b]`` those
    from float class a to quantized class b. None when the clean unit has no
    stored samples.
  """
  store = ResultsStore(sweep_dir)
  key = ResultsStore.key(os.path.abspath(checkpoint), CLEAN)
  if not os.path.exists(os.path.join(store.samples_dir, f"{key}.npz")):
    return None
  s = store.samples(key)
  f, q = s["float_pred"], s["quant_pred"]
  classes = int(max(s["y"].max(), f.max(), q.max())) + 1
  pairs = np.zeros((len(q), classes, classes), np.int64)
  for k in range(len(q)):
    dis = (q[k] != f) & s["float_finite"] & s["quant_finite"][k]
    np.add.at(pairs[k], (f[dis], q[k][dis]), 1)
  return [str(n) for n in s["quantizers"]], pairs.sum(-1), pairs


def _layer_plot(path: str, layers: Sequence[Layer], stats: dict, summary: dict, quantizer: str) -> None:
  plt = pyplot()
  names = [l.name for l in layers]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(names) + 4), 4.2))
  xs = range(len(names))
  for off, tensor in ((-0.2, "output_alone"), (0.2, "weight")):
    vals = [stats.get((n, tensor), {}).get("sqnr_db", float("nan")) for n in names]
    a1.bar([x + off for x in xs], vals, width=0.4, label=tensor.replace("_", " "))
  a1.set_ylabel("SQNR (dB)")
  a1.set_title(f"per-layer SQNR under {quantizer}")
  a1.legend(fontsize=8)
  alone = [100 * summary.get(f"enable:{n}", {}).get("clean_rate", float("nan")) for n in names]
  removed = [
      100 * (summary["all"]["clean_rate"] - summary.get(f"disable:{n}", {}).get("clean_rate", float("nan")))
      for n in names
  ]
  a2.bar([x - 0.2 for x in xs], alone, width=0.4, label="enable-one: layer alone")
  a2.bar([x + 0.2 for x in xs], removed, width=0.4, label="disable-one: removed by keeping it float")
  a2.set_ylabel("disagreement rate, clean test (%)")
  a2.set_title("disagreement contribution")
  a2.legend(fontsize=8)
  for a in (a1, a2):
    a.set_xticks(list(xs))
    a.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
  fig.tight_layout()
  save_figure(fig, path)


def _pareto_plot(path: str, search: dict, summary: dict) -> None:
  plt = pyplot()
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
  cands = search["candidates"]
  n_sel = int(search["selection"].split(":")[-1].rstrip("]"))
  a1.scatter([c["average_bits"] for c in cands], [100 * c["disagreements"] / n_sel for c in cands], s=8, alpha=0.4)
  front = [cands[k] for k in search["frontier"]]
  a1.plot(
      [c["average_bits"] for c in front], [100 * c["disagreements"] / n_sel for c in front], "r.-", label="frontier"
  )
  a1.axvline(search["budget"], color="gray", ls=":", label="budget")
  a1.set_title(f"{len(cands)} candidates on the selection set ({search['selection']})")
  for a, key, title in ((a2, "clean_rate", "test split"),):
    for prefix, style, label in (
        ("uniform_w", "ks--", "uniform"),
        ("frontier_", "r.-", "frontier"),
        ("mixed", "g*", "chosen"),
    ):
      pts = sorted(
          (summary[q]["average_bits"], 100 * summary[q][key])
          for q in summary
          if q.startswith(prefix) and "average_bits" in summary[q]
      )
      if pts:
        a.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, ms=10 if prefix == "mixed" else 5)
    a.set_title(f"verified on the {title}")
  for a in (a1, a2):
    a.set_xlabel("average weight bits")
    a.set_ylabel("disagreement rate (%)")
    a.set_yscale("symlog", linthresh=0.1)
    a.set_ylim(bottom=0)
    a.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)


def write(workdir: str, c, layers: Sequence[Layer], search: dict | None) -> str:
  """Writes analysis.md (and layers.png, pareto.png) from the stages' outputs.

  Args:
    workdir: the analysis folder (stats.csv, sweep/, search.json, frontier/).
    c: the :class:`qsim.analysis.job.AnalysisConfig`.
    layers: the analysed layers.
    search: the search record, or None when the search did not run.

  Returns:
    The path of analysis.md.
  """
  stats = {(r["layer"], r["tensor"]): r for r in _csv(os.path.join(workdir, "stats.csv"))}
  summary = summarize(read_rows(os.path.join(workdir, "sweep", "results.csv")))
  _layer_plot(os.path.join(workdir, "layers.png"), layers, stats, summary, c.quantizer)
  total = sum(l.weights for l in layers)
  lines = [
      f"# Quantization debugger: `{c.quantizer}` on `{c.checkpoint}`",
      "",
      f"{len(layers)} layers, {total:,} weights. Disagreements are with the float model; 'shifted' is the mean"
      f" rate over {summary['all']['shifted_sets']} shifted sets. Command: `python -m experiments.analyze"
      f" --config=experiments/configs/analyze.py:{command_args(c)} --workdir=...`.",
      "",
      "## Per-layer tensor statistics",
      "",
      f"On {c.stats_samples} training samples. SQNR in dB (higher is better); RMSE/scale in grid steps"
      " (about 0.289 for a well-quantized tensor). 'alone': only this layer quantized; 'all': every layer.",
      "",
      "| layer | kind | weights | weight SQNR | weight RMSE/scale | input SQNR | output SQNR alone | output SQNR all"
      " | output cosine all |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for l in layers:
    g = lambda t, k: stats.get((l.name, t), {}).get(k, float("nan"))  # noqa: E731
    lines.append(
        f"| {l.name} | {l.kind} | {l.weights:,} | {_f(g('weight', 'sqnr_db'))} | {_f(g('weight', 'rmse_over_scale'), 3)}"
        f" | {_f(g('input', 'sqnr_db'))} | {_f(g('output_alone', 'sqnr_db'))} | {_f(g('output_all', 'sqnr_db'))}"
        f" | {_f(g('output_all', 'cosine'), 4)} |"
    )
  lines += [
      "",
      "## One at a time",
      "",
      "Enable-one: only the layer quantized. Disable-one: every layer but it quantized. All configs ran in one"
      " compiled program.",
      "",
      "| config | clean disagreements | clean rate (%) | accuracy change (pts) | correct -> wrong | shifted rate (%) |",
      "|---|---|---|---|---|---|",
  ]
  for q, s in summary.items():
    lines.append(
        f"| {q} | {int(s['clean'])} | {_f(100 * s['clean_rate'], 2)} | {_f(100 * s['accuracy_change'], 2)}"
        f" | {int(s['flips_correct_to_wrong'])} | {_f(100 * s['shifted_rate'], 2)} |"
    )
  lines += ["", "![per-layer](layers.png)", ""]
  flips = class_flips(os.path.join(workdir, "sweep"), c.checkpoint)
  if flips is not None:
    names, by_class, pairs = flips
    keep = [k for k, n in enumerate(names) if not n.startswith("disable:")]
    lines += [
        "Clean-split disagreements by the float model's class (flips out of each class):",
        "",
        "| config | " + " | ".join(str(i) for i in range(by_class.shape[1])) + " |",
        "|---|" + "---|" * by_class.shape[1],
    ]
    lines += [f"| {names[k]} | " + " | ".join(str(int(v)) for v in by_class[k]) + " |" for k in keep]
    top = np.argsort(pairs[0], axis=None)[::-1][:5]
    common = [np.unravel_index(i, pairs[0].shape) for i in top if pairs[0].flat[i] > 0]
    lines += [
        "",
        f"Most frequent flips under `{names[0]}` (float -> quantized class): "
        + ", ".join(f"{a} -> {b} ({int(pairs[0][a, b])})" for a, b in common),
        "",
    ]
  if search is not None:
    lines += _search_section(workdir, search, layers)
  path = os.path.join(workdir, "analysis.md")
  atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
  return path


def _search_section(workdir: str, search: dict, layers: Sequence[Layer]) -> list[str]:
  summary = summarize(read_rows(os.path.join(workdir, "frontier", "results.csv")))
  cands = search["candidates"]
  bits_of = {"mixed": cands[search["chosen"]]["average_bits"]}
  bits_of.update({f"frontier_{k:04d}": cands[k]["average_bits"] for k in search["frontier"]})
  bits_of.update({f"uniform_w{e}": float(e) for e in search["menu"] if isinstance(e, int)})
  for q, s in summary.items():
    s["average_bits"] = bits_of[q]
  _pareto_plot(os.path.join(workdir, "pareto.png"), search, summary)
  chosen = cands[search["chosen"]]
  lines = [
      "## Mixed precision",
      "",
      f"Base `{search['base']}`, menu {search['menu']}, budget {search['budget']} average weight bits. The"
      f" search measured {len(cands)} candidates ({1 + max(m['round'] for m in cands)} rounds: the ILP's proposals, then local"
      f" search until no unmeasured neighbour fits or {search['rounds']} rounds) on the selection set `{search['selection']}` (held out from the test split) in"
      f" {search['candidate_compilations']} compilation(s), {search['candidate_seconds']:.0f} s; the per-layer"
      f" costs took {search['probe_configs']} configs in"
      f" {search['probe_compilations']} compilation(s). The chosen config has {chosen['average_bits']:.2f}"
      f" average weight bits and {chosen['disagreements']} selection disagreements.",
      "",
      "| layer | rule | weights | chosen weight format |",
      "|---|---|---|---|",
  ]
  for l, e in zip(layers, chosen["entries"]):
    lines.append(f"| {l.name} | `{rule(l.name)}` | {l.weights:,} | {e if isinstance(e, str) else f'int{e}'} |")
  lines += [
      "",
      "Verified on the test split and the shifted sets (never seen by the search):",
      "",
      "| config | average weight bits | clean disagreements | clean rate (%) | accuracy change (pts) | shifted rate (%) |",
      "|---|---|---|---|---|---|",
  ]
  for q, s in sorted(summary.items(), key=lambda t: (t[1]["average_bits"], t[0])):
    lines.append(
        f"| {q} | {s['average_bits']:.2f} | {int(s['clean'])} | {_f(100 * s['clean_rate'], 2)}"
        f" | {_f(100 * s['accuracy_change'], 2)} | {_f(100 * s['shifted_rate'], 2)} |"
    )
  same = [q for q in summary if q.startswith("uniform_w") and abs(summary[q]["average_bits"] - search["budget"]) < 1e-9]
  if same:
    u, m = summary[same[0]], summary["mixed"]
    ratio = m["clean"] / u["clean"] if u["clean"] else float("nan")
    lines += [
        "",
        f"At the budget: mixed {int(m['clean'])} vs {same[0]} {int(u['clean'])} clean disagreements"
        f" (ratio {_f(ratio, 3)}); shifted rate {_f(100 * m['shifted_rate'], 2)}% vs {_f(100 * u['shifted_rate'], 2)}%.",
    ]
  lines += [
      "",
      "![pareto](pareto.png)",
      "",
      f"The chosen config, ready to evaluate: `mixed_config.py` in this folder (`QuantConfig` rules, one per layer, the"
      f" base `{search['base']}` with the weight bits above),",
      "(`python -m experiments.evaluate --config=<workdir>/mixed_config.py --workdir=runs/eval_mixed`).",
      "",
  ]
  return lines
