"""The study report: RQ1-RQ4 answered from the study's own results, each
with a verdict against the original study's claim (``../shared/PAPER.md``).

Statistics: a figure is computed per seed (training seed), then given as the
mean over seeds ± the half-width of its 95% t-interval; comparisons are
paired by seed. With one seed there are no intervals and the verdicts rest
on the means alone (the report says so).

Verdict rules (stated in the report next to each verdict):

* RQ1 "shifted data gives more disagreements than clean data": per (model,
  quantizer) cell with any disagreement, the seed-mean of shifted minus clean
  rate; *supported* when positive in >= 90% of the cells and a two-sided sign
  test over the cells gives p < 0.05, *mixed* when positive in more than
  half, otherwise *not supported*.
* RQ2 "QAT gives the most stable models": per (model, quantizer) cell, the
  method with the lowest mean disagreement rate over all sets; *supported*
  when QAT wins at least 3/4 of the cells, *mixed* from 1/4, otherwise *not
  supported*.
* RQ3 "Margin detects disagreements best": mean AUROC of Margin, Entropy,
  Gini and least confidence (quantized model's outputs); *supported* when
  Margin is highest and its paired difference to the runner-up has an
  interval above 0 (with one seed: highest), *mixed* when Margin is highest
  without that or is within 0.005 of the highest, otherwise *not supported*.
* RQ4 "retraining with disagreements removes old ones but creates many new
  ones": strategy 'all', evaluation split; *supported* when on average at
  least half of the old disagreements are resolved and the new ones number
  at least a quarter of the old, *mixed* when one of the two holds.
"""

from __future__ import annotations

import glob
import math
import os
from collections import defaultdict

import numpy as np

from qsim.evaluate import metrics
from qsim.evaluate import report as eval_report
from qsim.retrain import report as retrain_report
from qsim.results import fmt_ci, mean_ci, pyplot, read_rows, save_figure, set_label
from qsim.runs import atomic_write

DETECTORS = ("margin", "entropy", "gini", "least_confidence")
STUDY_QUANTIZERS = eval_report.STUDY_QUANTIZERS


def _ci(values, scale=1.0, digits=2) -> str:
  m, h = mean_ci(values)
  return fmt_ci(scale * m, scale * h, digits)


def _by_seed(rows, value, *keys) -> dict:
  """{key tuple: {seed: mean of value over the rows}}."""
  acc = defaultdict(lambda: defaultdict(list))
  for r in rows:
    v = value(r)
    if not (isinstance(v, float) and math.isnan(v)):
      acc[tuple(r[k] for k in keys)][int(r["train_seed"])].append(v)
  return {k: {s: float(np.mean(v)) for s, v in d.items()} for k, d in acc.items()}


def _verdict_line(verdict: str, rule: str, evidence: str) -> list[str]:
  return [f"**Verdict: {verdict}.** {evidence}", "", f"_Rule: {rule}_", ""]


def _quantizer_order(rows):
  qs = list(dict.fromkeys(r["quantizer"] for r in rows))
  return [q for q in qs if q not in STUDY_QUANTIZERS] + [q for q in STUDY_QUANTIZERS if q in qs]


def rq1(rows, workdir) -> tuple[list[str], str, str]:
  """RQ1: disagreements on shifted vs clean data, with its verdict (rule in the module docstring).

  Uses the standard-trained models' rows (all rows if there are none) and
  writes ``rq1_severity.png`` into ``workdir``.

  Args:
    rows: the evaluation sweep's rows (as :func:`qsim.results.read_rows` gives
      them).
    workdir: the study workdir the plot is written into.

  Returns:
    The section's Markdown lines, the verdict ('supported', 'mixed' or 'not
    supported') and a one-sentence evidence string for the summary.
  """
  std = [r for r in rows if r["method"] == "standard"] or rows
  models = list(dict.fromkeys(r["model"] for r in std))
  quantizers = _quantizer_order(std)
  clean = _by_seed([r for r in std if r["family"] == "clean"], lambda r: r["disagreement_rate"], "model", "quantizer")
  shifted = _by_seed([r for r in std if r["family"] != "clean"], lambda r: r["disagreement_rate"], "model", "quantizer")
  acc = _by_seed(
      [r for r in std if r["family"] == "clean"],
      lambda r: abs(r["float_accuracy"] - r["quant_accuracy"]),
      "model",
      "quantizer",
  )
  lines = [
      "## RQ1: disagreement on shifted vs clean data",
      "",
      "Standard-trained models; rates in % of samples; shifted = mean over the shifted sets.",
      "",
      "| model | quantizer | clean | shifted | shifted - clean (paired) | worst set (mean rate %) |"
      " clean accuracy change (pts) |",
      "|---|---|---|---|---|---|---|",
  ]
  wins = cells = sure = 0
  for m in models:
    for q in quantizers:
      c, s = clean.get((m, q), {}), shifted.get((m, q), {})
      if not c or not s:
        continue
      diffs = [s[k] - c[k] for k in c if k in s]
      if max(list(c.values()) + list(s.values())) > 0:  # cells without any disagreement say nothing
        cells += 1
        mean, half = mean_ci(diffs)
        wins += mean > 0
        sure += not math.isnan(half) and mean - half > 0
      per_set = defaultdict(list)
      for r in std:
        if r["model"] == m and r["quantizer"] == q and r["family"] != "clean":
          per_set[set_label(r)].append(r["disagreement_rate"])
      worst = max(per_set, key=lambda k: np.mean(per_set[k]))
      lines.append(
          f"| {m} | {q} | {_ci(list(c.values()), 100)} | {_ci(list(s.values()), 100)} |"
          f" {_ci(diffs, 100)} | {worst} ({100 * np.mean(per_set[worst]):.2f}) |"
          f" {_ci(list(acc[(m, q)].values()), 100)} |"
      )
  lines.append("")
  # per family and severity
  sev = defaultdict(list)
  for r in std:
    sev[(r["quantizer"], 0 if r["family"] == "clean" else r["severity"], r["family"])].append(r["disagreement_rate"])
  severities = sorted({k[1] for k in sev if not (isinstance(k[1], float) and math.isnan(k[1]))})
  lines += [
      "Mean disagreement rate % by severity (0 = clean), over models, corruptions and seeds:",
      "",
      "| quantizer | " + " | ".join(f"sev {int(s)}" for s in severities) + " |",
      "|---|" + "---|" * len(severities),
  ]
  for q in quantizers:
    vals = [
        np.mean([v for (qq, ss, _), vs in sev.items() if qq == q and ss == s for v in vs] or [np.nan])
        for s in severities
    ]
    lines.append(f"| {q} | " + " | ".join("-" if np.isnan(v) else f"{100 * v:.2f}" for v in vals) + " |")
  lines.append("")
  families = defaultdict(list)
  for r in std:
    if r["family"] != "clean":
      families[r["shift"]].append(r["disagreement_rate"])
  top = sorted(families, key=lambda k: -np.mean(families[k]))
  lines += [
      "Corruptions by mean disagreement rate (all quantizers): "
      + ", ".join(f"{k} {100 * np.mean(families[k]):.2f}%" for k in top),
      "",
  ]
  _plot_severity(sev, quantizers, severities, os.path.join(workdir, "rq1_severity.png"))
  lines += ["![disagreement by severity](rq1_severity.png)", ""]
  p = _sign_test(wins, cells)
  frac = wins / cells if cells else 0.0
  verdict = "supported" if frac >= 0.9 and p < 0.05 else "mixed" if frac > 0.5 else "not supported"
  rule = (
      "per (model, quantizer) cell with any disagreement, the seed-mean of shifted minus clean rate: supported if"
      " positive in >= 90% of the cells and a two-sided sign test over the cells gives p < 0.05; mixed if positive"
      " in more than half; else not supported"
  )
  evidence = (
      f"Shifted data gives more disagreements in {wins} of {cells} (model, quantizer) cells (sign test"
      f" p = {p:.2g}; {sure} cells with the seed interval above 0)."
  )
  return lines + _verdict_line(verdict, rule, evidence), verdict, evidence


def _sign_test(wins: int, n: int) -> float:
  """Two-sided sign-test p-value of ``wins`` positives in ``n`` (ties left out before)."""
  if n == 0:
    return float("nan")
  from scipy import stats

  return float(stats.binomtest(wins, n, 0.5).pvalue)


def _plot_severity(sev, quantizers, severities, path):
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for q in quantizers:
    ys = [
        np.mean([v for (qq, ss, _), vs in sev.items() if qq == q and ss == s for v in vs] or [np.nan])
        for s in severities
    ]
    ax.plot(severities, [100 * y for y in ys], marker="o", label=q)
  ax.set_xlabel("severity (0 = clean)")
  ax.set_ylabel("disagreement rate (%)")
  ax.set_yscale("symlog", linthresh=0.1)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  save_figure(fig, path)


def rq2(rows, workdir) -> tuple[list[str], str, str]:
  """RQ2: which training method gives the fewest disagreements, with its verdict.

  Writes ``rq2_methods.png`` into ``workdir``.

  Args:
    rows: the evaluation sweep's rows (as :func:`qsim.results.read_rows` gives
      them).
    workdir: the study workdir the plot is written into.

  Returns:
    The section's Markdown lines, the verdict ('supported', 'mixed', 'not
    supported', or 'not tested' without QAT models) and a one-sentence
    evidence string for the summary.
  """
  methods = list(dict.fromkeys(r["method"] for r in rows))
  models = list(dict.fromkeys(r["model"] for r in rows))
  quantizers = _quantizer_order(rows)
  rate = _by_seed(rows, lambda r: r["disagreement_rate"], "model", "quantizer", "method")
  lines = [
      "## RQ2: which training method gives the fewest disagreements",
      "",
      "Mean disagreement rate % over all sets (clean and shifted), per model and quantizer; lowest in bold.",
      "",
      "| model | quantizer | " + " | ".join(methods) + " | fewest |",
      "|---|---|" + "---|" * (len(methods) + 1),
  ]
  wins, cells, best_count = 0, 0, defaultdict(int)
  for m in models:
    for q in quantizers:
      per = {me: rate.get((m, q, me), {}) for me in methods}
      means = {me: np.mean(list(v.values())) for me, v in per.items() if v}
      if not means or max(means.values()) == 0:
        continue
      lowest = min(means.values())
      tied = [me for me, v in means.items() if v == lowest]
      best = tied[0] if len(tied) == 1 else "tie (" + ", ".join(tied) + ")"
      cells += 1
      wins += best == "qat"
      best_count[best if len(tied) == 1 else "tie"] += 1
      cells_txt = [
          (f"**{_ci(list(per[me].values()), 100)}**" if me == best else _ci(list(per[me].values()), 100))
          if per[me]
          else "-"
          for me in methods
      ]
      lines.append(f"| {m} | {q} | " + " | ".join(cells_txt) + f" | {best} |")
  lines += ["", "Cells won: " + ", ".join(f"{me} {best_count[me]}" for me in [*methods, "tie"]) + f" (of {cells}).", ""]
  _plot_methods(rate, models, quantizers, methods, os.path.join(workdir, "rq2_methods.png"))
  lines += ["![disagreement by training method](rq2_methods.png)", ""]
  frac = wins / cells if cells else 0.0
  verdict = "supported" if frac >= 0.75 else "mixed" if frac >= 0.25 else "not supported"
  if "qat" not in methods:
    verdict = "not tested"
  rule = (
      "QAT alone has the lowest mean rate in >= 3/4 of the (model, quantizer) cells with any disagreement:"
      " supported; >= 1/4: mixed; else not supported"
  )
  evidence = (
      f"QAT alone gives the fewest disagreements in {wins} of {cells} cells; "
      + ", ".join(f"{me} {best_count[me]}" for me in [*methods, "tie"] if me != "qat")
      + "."
  )
  return lines + _verdict_line(verdict, rule, evidence), verdict, evidence


def _plot_methods(rate, models, quantizers, methods, path):
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(quantizers) * len(models) + 2), 4))
  labels = [(m, q) for m in models for q in quantizers if any((m, q, me) in rate for me in methods)]
  width = 0.8 / max(1, len(methods))
  for j, me in enumerate(methods):
    ys = [100 * np.mean(list(rate.get((m, q, me), {0: np.nan}).values())) for m, q in labels]
    ax.bar(np.arange(len(labels)) + j * width, ys, width, label=me)
  ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, [f"{m}\n{q}" for m, q in labels], rotation=90, fontsize=6)
  ax.set_ylabel("disagreement rate (%, all sets)")
  ax.set_yscale("symlog", linthresh=0.1)
  ax.legend(fontsize=7)
  fig.tight_layout()
  save_figure(fig, path)


def rq3(rows, workdir) -> tuple[list[str], str, str]:
  """RQ3: which uncertainty score detects disagreements best, with its verdict.

  Only rows with both disagreements and agreements count. Writes
  ``rq3_auroc.png`` into ``workdir``.

  Args:
    rows: the evaluation sweep's rows (as :func:`qsim.results.read_rows` gives
      them).
    workdir: the study workdir the plot is written into.

  Returns:
    The section's Markdown lines, the verdict ('supported', 'mixed', 'not
    supported', or 'not tested' without usable rows) and a one-sentence
    evidence string for the summary.
  """
  usable = [r for r in rows if r["disagreements"] > 0 and r["disagreements"] < r["n"] - r["nonfinite"]]
  seeds = sorted({int(r["train_seed"]) for r in usable})
  lines = [
      "## RQ3: which uncertainty metric detects disagreements best",
      "",
      f"Over every (model, method, quantizer, set) with both disagreements and agreements ({len(usable)} rows);"
      " scores from the quantized model's outputs (as deployed) and from the float model's; mean per seed, then"
      " over seeds.",
      "",
      "| score | source | AUROC | AUPR | TNR@95%TPR |",
      "|---|---|---|---|---|",
  ]
  per_seed = {}
  for src in ("quant", "float"):
    for name in metrics.SCORE_NAMES:
      vals = {}
      for m in ("auroc", "aupr", "tnr95"):
        vals[m] = [np.nanmean([r[f"{src}_{name}_{m}"] for r in usable if int(r["train_seed"]) == s]) for s in seeds]
      per_seed[(src, name)] = vals
      lines.append(f"| {name} | {src} | " + " | ".join(_ci(vals[m], 100) for m in ("auroc", "aupr", "tnr95")) + " |")
  lines.append("")
  auroc = {n: per_seed[("quant", n)]["auroc"] for n in DETECTORS}
  means = {n: float(np.mean(v)) if v else float("nan") for n, v in auroc.items()}
  lines += [
      "Paired by seed, Margin minus each other score (AUROC points, quantized outputs), and the share of rows"
      " where Margin's AUROC is at least the other's:",
      "",
      "| vs | difference | rows Margin >= |",
      "|---|---|---|",
  ]
  paired = {}
  for n in DETECTORS[1:]:
    d = [a - b for a, b in zip(auroc["margin"], auroc[n])]
    paired[n] = mean_ci(d)
    share = np.mean([r["quant_margin_auroc"] >= r[f"quant_{n}_auroc"] for r in usable]) if usable else float("nan")
    lines.append(f"| {n} | {_ci(d, 100)} | {100 * share:.1f}% |")
  lines.append("")
  _plot_auroc(per_seed, os.path.join(workdir, "rq3_auroc.png"))
  lines += ["![AUROC per score](rq3_auroc.png)", ""]
  valid = {n: v for n, v in means.items() if not math.isnan(v)}
  if not valid:
    return lines + ["No set had both disagreements and agreements.", ""], "not tested", "no usable rows"
  best = max(valid, key=valid.get)
  runner_up = max((n for n in valid if n != "margin"), key=valid.get)
  m, h = paired[runner_up]
  if best == "margin" and (m - h > 0 or (math.isnan(h) and m > 0)):
    verdict = "supported"
  elif best == "margin" or valid["margin"] >= valid[best] - 0.005:
    verdict = "mixed"
  else:
    verdict = "not supported"
  rule = (
      "Margin has the highest mean AUROC and its paired difference to the runner-up is above 0 (interval above 0"
      " with several seeds): supported; highest without that, or within 0.005 of the highest: mixed; else not"
  )
  evidence = (
      "Mean AUROC "
      + ", ".join(f"{n} {100 * valid[n]:.1f}" for n in sorted(valid, key=lambda k: -valid[k]))
      + f"; Margin - {runner_up} = {_ci([a - b for a, b in zip(auroc['margin'], auroc[runner_up])], 100)}"
      " points."
  )
  return lines + _verdict_line(verdict, rule, evidence), verdict, evidence


def _plot_auroc(per_seed, path):
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.6))
  names = list(metrics.SCORE_NAMES)
  for j, src in enumerate(("quant", "float")):
    ms = [mean_ci(per_seed[(src, n)]["auroc"]) for n in names]
    ax.bar(
        np.arange(len(names)) + 0.4 * j,
        [100 * m for m, _ in ms],
        0.4,
        label=f"{src} outputs",
        yerr=[0 if math.isnan(h) else 100 * h for _, h in ms],
        capsize=3,
    )
  ax.set_xticks(np.arange(len(names)) + 0.2, names, fontsize=8)
  ax.set_ylabel("AUROC (%)")
  lo = min([100 * mean_ci(v["auroc"])[0] for v in per_seed.values() if v["auroc"]] + [50])
  ax.set_ylim(max(0, lo - 5), 100)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)


def rq4(workdir) -> tuple[list[str], str, str]:
  """RQ4: what retraining with disagreements resolves, keeps and breaks, with its verdict.

  Reads every ``retrain/<model>/seed<s>/results.csv`` under ``workdir`` and writes
  ``retrain.png`` into it.

  Args:
    workdir: the study workdir.

  Returns:
    The section's Markdown lines, the verdict ('supported', 'mixed', 'not
    supported', or 'not tested' without retraining results or 'all' runs with
    disagreements) and a one-sentence evidence string for the summary.

  Raises:
    ValueError: a retraining results table has no rows.
  """
  paths = sorted(glob.glob(os.path.join(workdir, "retrain", "*", "*", "results.csv")))
  rows = [r for p in paths for r in read_rows(p)]
  lines = ["## RQ4: what retraining with disagreements resolves, keeps and breaks", ""]
  if not rows:
    return lines + ["No retraining was run.", ""], "not tested", "no retraining results"
  lines += retrain_report.section(rows)[2:]
  if retrain_report.plot(rows, os.path.join(workdir, "retrain.png")):
    lines += ["![before and after retraining](retrain.png)", ""]
  runs = retrain_report.final_rounds(rows)
  allr = [v["clean"] for k, v in runs.items() if k[2] == "all" and v["clean"]["before"] > 0]
  if not allr:
    return lines + ["No run of strategy 'all' had disagreements before.", ""], "not tested", "no 'all' runs"
  resolved = [c["resolved"] / c["before"] for c in allr]
  new = [c["new"] / c["before"] for c in allr]
  r_m, n_m = float(np.mean(resolved)), float(np.mean(new))
  holds = (r_m >= 0.5) + (n_m >= 0.25)
  verdict = "supported" if holds == 2 else "mixed" if holds == 1 else "not supported"
  ctrl = [
      v["clean"]["after"] - runs[(m, q, "random", seed)]["clean"]["after"]
      for (m, q, strategy, seed), v in runs.items()
      if strategy == "all" and (m, q, "random", seed) in runs
  ]
  rule = (
      "strategy 'all' on the evaluation split: resolved >= 1/2 of the old disagreements and new >= 1/4 of the old:"
      " supported; one of the two: mixed; neither: not supported"
  )
  evidence = (
      f"'all' resolves {_ci(resolved, 100, 1)}% of the old disagreements and creates {_ci(new, 100, 1)}% as"
      f" many new ones ({len(allr)} runs)"
      + (f"; after 'all' minus after 'random' (paired, per run): {_ci(ctrl, 1, 1)} disagreements" if ctrl else "")
      + "."
  )
  return lines + _verdict_line(verdict, rule, evidence), verdict, evidence


def write_report(workdir: str) -> str:
  """Writes ``report.md`` and its plots into ``workdir``.

  Also writes the evaluation sweep's own report, ``eval/report.md``.

  Args:
    workdir: the study workdir, holding ``eval/results.csv`` and optionally
      ``retrain/<model>/seed<s>/results.csv``.

  Returns:
    The path of ``report.md``.

  Raises:
    FileNotFoundError: ``workdir`` has no ``eval/results.csv``.
    ValueError: a results table has no rows.
  """
  rows = read_rows(os.path.join(workdir, "eval", "results.csv"))
  seeds = sorted({int(r["train_seed"]) for r in rows})
  models = list(dict.fromkeys(r["model"] for r in rows))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  sections = [rq1(rows, workdir), rq2(rows, workdir), rq3(rows, workdir), rq4(workdir)]
  claims = [
      "Shifted data gives more disagreements than clean data",
      "QAT gives the most stable models",
      "Margin is the best detector of disagreements",
      "Retraining with disagreements removes old ones but creates many new ones",
  ]
  lines = [
      f"# Study report: {os.path.abspath(workdir)}",
      "",
      f"Dataset {rows[0]['dataset']}; models {', '.join(models)}; training methods {', '.join(methods)};"
      f" {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); {len(set(r['quantizer'] for r in rows))}"
      f" quantizers; {len(set(r['set'] for r in rows))} sets (clean + shifted); {len(rows)} result rows."
      + ("" if len(seeds) > 1 else " One seed: no intervals; verdicts rest on means."),
      "",
      "## Summary",
      "",
      "| RQ | the study's claim | verdict | evidence |",
      "|---|---|---|---|",
  ]
  for i, (claim, (_, verdict, evidence)) in enumerate(zip(claims, sections)):
    lines.append(f"| {i + 1} | {claim} | {verdict} | {evidence} |")
  lines += ["", "Detailed tables of the evaluation sweep: eval/report.md.", ""]
  for body, _, _ in sections:
    lines += body
  eval_report.write_report(os.path.join(workdir, "eval"))
  path = os.path.join(workdir, "report.md")
  atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
  return path
