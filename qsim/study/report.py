"""The study report: RQ1-RQ4 answered from the study's own results, each
with a verdict against the original study's claim (``../shared/PAPER.md``).

Statistics: a figure is computed per seed (training seed), then given as the
mean over seeds ± the half-width of its 95% t-interval; comparisons are
paired by seed.

Verdicts come from intervals, never from point estimates. The unit is a
trained network, a (model, training seed) pair: each research question's
effect is computed within every unit (paired: the same network's clean and
shifted sets, its training methods, its detectors, its retraining), then its
mean over units gets a 95% t-interval (units - 1 degrees of freedom). An
effect's interval gives one of three verdicts:

* *supported*: the interval lies on the claim's side of no effect;
* *not supported*: the interval rules out an effect as large as the
  smallest one that matters (the claim's threshold, or: a 10% ratio, half an
  AUROC point), including an effect of the opposite sign;
* *inconclusive at this size*: neither (and always with one network: no
  interval); more seeds, models or samples would decide it.

The effects:

* RQ1 "shifted data gives more disagreements than clean data": per unit, the
  geometric mean over quantizers (those with any disagreement) of the
  shifted-to-clean rate ratio (shifted = mean over the shifted sets; rates
  smoothed by half a sample); supported if the ratio's interval is above 1,
  not supported if it is below 1.1.
* RQ2 "QAT gives the most stable models": per unit and per other method, the
  geometric mean over quantizers of that method's rate over QAT's (all sets);
  supported if every interval is above 1, not supported if any is below 1.1.
* RQ3 "Margin detects disagreements best": per unit, Margin's mean AUROC
  minus each other detector's (quantized outputs); supported if every
  interval is above 0, not supported if any is below 0.005.
* RQ4 "retraining with disagreements removes old ones but creates many new
  ones": strategy 'all' on the evaluation split, per unit (mean over its
  quantizers) the resolved share of the old disagreements and the new ones
  as a share of the old; supported if the intervals lie above 1/2 and 1/4,
  not supported if either lies below its threshold.

The units share their test samples, so sample noise common to all of them is
not in the intervals; the report prints the Wilson half-width of a rate at
the sets' size to show how much it could add.
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
from qsim.results import fmt_ci, mean_ci, pyplot, read_rows, save_figure, set_label, wilson
from qsim.runs import atomic_write

DETECTORS = ("margin", "entropy", "gini", "least_confidence")
STUDY_QUANTIZERS = eval_report.STUDY_QUANTIZERS
VERDICTS = ("supported", "not supported", "inconclusive at this size")
RATIO_THAT_MATTERS = 1.1  # RQ1, RQ2: a ratio of rates below this is no effect
AUROC_THAT_MATTERS = 0.005  # RQ3: half an AUROC point

# The original study's figure for the closest setting (../shared/PAPER.md), per research question.
ORIGINAL = (
    "LeNet-1 tflite-8 on MNIST: 14 of 10,000 clean vs 115 mean over MNIST-C (8.2x); ResNet-20 coreml-8 on"
    " CIFAR-10: 181 vs 313 over CIFAR-10-C (1.7x)",
    "QAT most stable: clearly for tflite-16 (dynamic range) in its released tables, weakly elsewhere; one run,"
    " no intervals",
    "mean AUROC Margin 93.7, least confidence 91.1, Entropy 87.5, Gini 86.5 (LeNet-1: Margin 94.8 vs Entropy"
    " 83.7), with a uint8-quantized softmax that favours Margin",
    "NiN on CIFAR-10: 47 old disagreements remain, 354 new; ResNet-50 on iWildCam: 24 remain, 438 new",
)
ORIGINAL_DATA = (
    "the original study used MNIST, CIFAR-10, IMDb and iWildCam, with the published MNIST-C and CIFAR-10-C sets"
    " (CIFAR-10-C at severity 1 only), one training run per model"
)


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


def _verdict_line(verdict: str, rule: str, evidence: str, rq: int, dataset: str) -> list[str]:
  return [
      f"**Verdict: {verdict}.** {evidence}",
      "",
      f"_Rule: {rule}_",
      "",
      f"The original study: {ORIGINAL[rq - 1]} ({ORIGINAL_DATA}; here {dataset} with qsim's shifted sets).",
      "",
  ]


def _units(values: dict) -> dict:
  """{unit: [values]} -> {unit: mean}, units without a value dropped."""
  return {u: float(np.mean(v)) for u, v in values.items() if v}


def _interval(per_unit: dict) -> tuple[float, float, float]:
  """(mean, low, high) of the 95% t-interval over units (bounds NaN with one unit)."""
  m, h = mean_ci(list(per_unit.values()))
  return m, m - h, m + h


def decide(intervals: list[tuple[float, float]], null: float, matters: float) -> str:
  """The verdict from effect intervals oriented so the claim says "above ``null``".

  Args:
    intervals: one (low, high) per comparison the claim makes (all must hold);
      NaN bounds (one unit) decide nothing.
    null: no effect.
    matters: the smallest effect that matters (>= ``null``).

  Returns:
    'supported' if every interval lies above ``null``; 'not supported' if any
    lies below ``matters`` (the data rule that effect out); else
    'inconclusive at this size'.
  """
  if intervals and all(lo > null for lo, _ in intervals):
    return VERDICTS[0]
  if any(hi < matters for _, hi in intervals):
    return VERDICTS[1]
  return VERDICTS[2]


def _fmt_interval(m: float, lo: float, hi: float, scale=1.0, digits=2, exp=False, unit="") -> str:
  f = math.exp if exp else (lambda v: v)
  if math.isnan(m):
    return "-"
  if math.isnan(lo):
    return f"{scale * f(m):.{digits}f}{unit} (one network, no interval)"
  return f"{scale * f(m):.{digits}f}{unit} [{scale * f(lo):.{digits}f}, {scale * f(hi):.{digits}f}]"


def _networks(n: int) -> str:
  return f"{n} network" + ("" if n == 1 else "s")


def _smooth(r) -> float:
  """Half a sample: keeps a log ratio of rates finite when a set has no disagreement."""
  return 0.5 / max(1.0, r["n"] - r["nonfinite"])


def sample_noise_line(rows) -> str:
  """How wide a set's own sampling interval is at the observed rates (Wilson, 95%).

  Args:
    rows: the evaluation sweep's rows.

  Returns:
    One Markdown sentence: the set sizes (the clean set's and the shifted
    sets' median, named apart when they differ), the median clean and
    shifted disagreement rates of the standard-trained models, and the
    Wilson 95% interval of a rate at each, at its own set size.
  """
  std = [r for r in rows if r["method"] == "standard"] or rows
  sizes, parts = {}, []
  for label, fam in (("clean", True), ("shifted", False)):
    fam_rows = [r for r in std if (r["family"] == "clean") == fam]
    if fam_rows:
      n = sizes[label] = int(np.median([r["n"] for r in fam_rows]))
      p = float(np.median([r["disagreement_rate"] for r in fam_rows]))
      lo, hi = wilson(p * n, n)
      parts.append(f"{label} {100 * p:.2f}% (Wilson 95% [{100 * lo:.2f}, {100 * hi:.2f}]%)")
  if len(set(sizes.values())) == 1:
    size = f"{next(iter(sizes.values()))} samples per set"
  else:
    size = ", ".join(f"{n} samples per {label} set" for label, n in sizes.items())
  return (
      f"Sample size: {size}; median disagreement rate of a (model, quantizer, set):"
      f" {'; '.join(parts)}. The units share these samples, so this noise is not in the intervals."
  )


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
    The section's Markdown lines, the verdict (one of ``VERDICTS``) and a one-sentence evidence string for the summary.
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
  ratio = defaultdict(list)  # per unit (model, seed): log shifted/clean rate ratio per quantizer
  by_unit = defaultdict(lambda: ([], []))
  for r in std:
    by_unit[(r["model"], int(r["train_seed"]), r["quantizer"])][r["family"] != "clean"].append(r)
  for (m, seed, q), (c_rows, s_rows) in by_unit.items():
    if c_rows and s_rows and max(r["disagreements"] for r in c_rows + s_rows) > 0:
      c = np.mean([r["disagreement_rate"] + _smooth(r) for r in c_rows])
      s = np.mean([r["disagreement_rate"] + _smooth(r) for r in s_rows])
      ratio[(m, seed)].append(math.log(s / c))
  per_unit = _units(ratio)
  mean, lo, hi = _interval(per_unit)
  verdict = decide([(lo, hi)], 0.0, math.log(RATIO_THAT_MATTERS))
  rule = (
      "per trained network (model, seed), the geometric mean over quantizers with any disagreement of the"
      " shifted-to-clean rate ratio; 95% t-interval over networks: supported if above 1, not supported if below"
      f" {RATIO_THAT_MATTERS}, else inconclusive at this size"
  )
  evidence = (
      f"Shifted data gives {_fmt_interval(mean, lo, hi, exp=True, unit='x')} the clean rate of disagreement"
      f" ({_networks(len(per_unit))}); shifted > clean in {wins} of {cells} (model, quantizer) cells, {sure} with"
      " the seed interval above 0."
  )
  return lines + _verdict_line(verdict, rule, evidence, 1, std[0]["dataset"]), verdict, evidence


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
    The section's Markdown lines, the verdict (one of ``VERDICTS``, or 'not
    tested' without QAT models and another method) and a one-sentence
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
  others = [me for me in methods if me != "qat"]
  if "qat" not in methods or not others:
    evidence = "No QAT models and another method to compare them with."
    return lines + [evidence, ""], "not tested", evidence
  per_q = defaultdict(lambda: defaultdict(list))  # (model, seed, quantizer) -> method -> rows
  for r in rows:
    per_q[(r["model"], int(r["train_seed"]), r["quantizer"])][r["method"]].append(r)
  ratios = {me: defaultdict(list) for me in others}  # method -> unit -> log(rate_method / rate_qat) per quantizer
  for (m, seed, _), by_method in per_q.items():
    smoothed = {me: np.mean([r["disagreement_rate"] + _smooth(r) for r in rs]) for me, rs in by_method.items()}
    for me in others:
      pair = by_method.get(me, []) + by_method.get("qat", [])
      if me in by_method and "qat" in by_method and max(r["disagreements"] for r in pair) > 0:
        ratios[me][(m, seed)].append(math.log(smoothed[me] / smoothed["qat"]))
  lines += [
      "Paired per trained network (model, seed): each method's disagreement rate over QAT's (geometric mean over"
      " quantizers, all sets; above 1: QAT has fewer), mean and 95% t-interval over networks:",
      "",
      "| method | rate / QAT's rate | networks |",
      "|---|---|---|",
  ]
  intervals = []
  for me in others:
    per_unit = _units(ratios[me])
    mean, lo, hi = _interval(per_unit)
    intervals.append((lo, hi))
    lines.append(f"| {me} | {_fmt_interval(mean, lo, hi, exp=True, unit='x')} | {len(per_unit)} |")
  lines.append("")
  verdict = decide(intervals, 0.0, math.log(RATIO_THAT_MATTERS))
  rule = (
      "per trained network, each other method's rate over QAT's (geometric mean over quantizers); 95% t-interval"
      f" over networks: supported if every interval is above 1, not supported if any is below {RATIO_THAT_MATTERS},"
      " else inconclusive at this size"
  )
  evidence = (
      "Rate over QAT's: "
      + ", ".join(f"{me} {_fmt_interval(*_interval(_units(ratios[me])), exp=True, unit='x')}" for me in others)
      + f"; QAT alone fewest in {wins} of {cells} cells."
  )
  return lines + _verdict_line(verdict, rule, evidence, 2, rows[0]["dataset"]), verdict, evidence


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
    The section's Markdown lines, the verdict (one of ``VERDICTS``, or 'not
    tested' without usable rows) and a one-sentence
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
  by_unit = defaultdict(lambda: defaultdict(list))  # (model, seed) -> detector -> AUROCs of its rows
  for r in usable:
    for n in DETECTORS:
      if not math.isnan(r[f"quant_{n}_auroc"]):
        by_unit[(r["model"], int(r["train_seed"]))][n].append(r[f"quant_{n}_auroc"])
  unit_auroc = {u: {n: float(np.mean(v)) for n, v in d.items() if v} for u, d in by_unit.items()}
  lines += [
      "Paired per trained network (model, seed), Margin's mean AUROC minus each other score's (points, quantized"
      " outputs), mean and 95% t-interval over networks, and the share of rows where Margin's AUROC is at least"
      " the other's:",
      "",
      "| vs | Margin - other | networks | rows Margin >= |",
      "|---|---|---|---|",
  ]
  intervals, diffs = [], {}
  for n in DETECTORS[1:]:
    per_unit = {u: d["margin"] - d[n] for u, d in unit_auroc.items() if "margin" in d and n in d}
    diffs[n] = _interval(per_unit)
    intervals.append(diffs[n][1:])
    share = np.mean([r["quant_margin_auroc"] >= r[f"quant_{n}_auroc"] for r in usable]) if usable else float("nan")
    lines.append(f"| {n} | {_fmt_interval(*diffs[n], scale=100)} | {len(per_unit)} | {100 * share:.1f}% |")
  lines.append("")
  _plot_auroc(per_seed, os.path.join(workdir, "rq3_auroc.png"))
  lines += ["![AUROC per score](rq3_auroc.png)", ""]
  means = {n: [d[n] for d in unit_auroc.values() if n in d] for n in DETECTORS}
  valid = {n: float(np.mean(v)) for n, v in means.items() if v}
  if "margin" not in valid or len(valid) < 2:
    return lines + ["No set had both disagreements and agreements.", ""], "not tested", "no usable rows"
  verdict = decide(intervals, 0.0, AUROC_THAT_MATTERS)
  rule = (
      "per trained network, Margin's mean AUROC minus each other detector's; 95% t-interval over networks:"
      f" supported if every interval is above 0, not supported if any is below {AUROC_THAT_MATTERS} (half a"
      " point), else inconclusive at this size"
  )
  evidence = (
      "Mean AUROC "
      + ", ".join(f"{n} {100 * valid[n]:.1f}" for n in sorted(valid, key=lambda k: -valid[k]))
      + "; Margin minus "
      + ", ".join(f"{n} {_fmt_interval(*diffs[n], scale=100)}" for n in DETECTORS[1:])
      + " points."
  )
  return lines + _verdict_line(verdict, rule, evidence, 3, rows[0]["dataset"]), verdict, evidence


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


def rq4(workdir: str, dataset: str) -> tuple[list[str], str, str]:
  """RQ4: what retraining with disagreements resolves, keeps and breaks, with its verdict.

  Reads every ``retrain/<model>/seed<s>/results.csv`` under ``workdir`` and writes
  ``retrain.png`` into it.

  Args:
    workdir: the study workdir.
    dataset: the study's dataset (named next to the original study's figure).

  Returns:
    The section's Markdown lines, the verdict (one of ``VERDICTS``, or 'not
    tested' without retraining results or 'all' runs with disagreements) and a one-sentence evidence string for the summary.

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
  shares = defaultdict(lambda: ([], []))  # (model, seed) -> (resolved / old, new / old) per quantizer
  for (m, _, strategy, seed), v in runs.items():
    if strategy == "all" and v["clean"]["before"] > 0:
      c = v["clean"]
      shares[(m, seed)][0].append(c["resolved"] / c["before"])
      shares[(m, seed)][1].append(c["new"] / c["before"])
  resolved = _interval(_units({u: r for u, (r, _) in shares.items()}))
  new = _interval(_units({u: n for u, (_, n) in shares.items()}))
  # oriented so the claim says "above 0": resolved - 1/2 and new - 1/4
  verdict = decide([(resolved[1] - 0.5, resolved[2] - 0.5), (new[1] - 0.25, new[2] - 0.25)], 0.0, 0.0)
  ctrl = [
      v["clean"]["after"] - runs[(m, q, "random", seed)]["clean"]["after"]
      for (m, q, strategy, seed), v in runs.items()
      if strategy == "all" and (m, q, "random", seed) in runs
  ]
  rule = (
      "strategy 'all' on the evaluation split, per trained network (mean over its quantizers): the resolved share"
      " of the old disagreements and the new ones as a share of the old; 95% t-interval over networks: supported"
      " if they lie above 1/2 and 1/4, not supported if either lies below, else inconclusive at this size"
  )
  evidence = (
      f"'all' resolves {_fmt_interval(*resolved, scale=100, digits=1, unit='%')} of the old disagreements and"
      f" creates {_fmt_interval(*new, scale=100, digits=1, unit='%')} as many new ones ({_networks(len(shares))},"
      f" {len(allr)} runs)"
      + (f"; after 'all' minus after 'random' (paired, per run): {_ci(ctrl, 1, 1)} disagreements" if ctrl else "")
      + "."
  )
  return lines + _verdict_line(verdict, rule, evidence, 4, dataset), verdict, evidence


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
  sections = [rq1(rows, workdir), rq2(rows, workdir), rq3(rows, workdir), rq4(workdir, rows[0]["dataset"])]
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
      + ("" if len(seeds) > 1 else " One seed: intervals need several networks per model or several models."),
      "",
      "## Summary",
      "",
      "| RQ | the study's claim | verdict | evidence | the original study (closest setting) |",
      "|---|---|---|---|---|",
  ]
  for i, (claim, (_, verdict, evidence)) in enumerate(zip(claims, sections)):
    lines.append(f"| {i + 1} | {claim} | {verdict} | {evidence} | {ORIGINAL[i]} |")
  lines += [
      "",
      "Verdicts come from 95% t-intervals over trained networks (model, seed), never from point estimates:"
      " supported (the interval lies on the claim's side), not supported (it rules out the smallest effect that"
      " matters), inconclusive at this size (neither). Each section states its rule. " + sample_noise_line(rows),
      "",
      "Detailed tables of the evaluation sweep: eval/report.md.",
      "",
  ]
  for body, _, _ in sections:
    lines += body
  eval_report.write_report(os.path.join(workdir, "eval"))
  path = os.path.join(workdir, "report.md")
  atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
  return path
