"""A Markdown report with PNG plots from a sweep's results table.

``write_report(workdir)`` reads ``results.csv`` (and the per-sample arrays
in ``samples/`` for ROC curves) and writes ``report.md`` plus plots:

* ``rate_vs_bits.png``: disagreement rate against bit-width (wNaN, or wN
  when no wNaN was run), one line per shift family;
* ``heatmap.png``: disagreement rate, quantizer x set;
* ``accuracy_vs_disagreement.png``: accuracy change against disagreement
  rate, one point per (quantizer, set);
* ``roc.png``: ROC curves of the uncertainty scores (from the quantized
  model's outputs) for the quantizer with most disagreements, pooled over
  all sets;
and tables: the study's four deployments side by side, and the detection
quality (AUROC / AUPR / TNR@95) of each score.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections import defaultdict

import numpy as np

from qsim.evaluate import metrics
from qsim.quant import bits_name
from qsim.quant.presets import STUDY_PRESETS
from qsim.results import ResultsStore, mean, pyplot, read_rows, save_figure, set_label, with_quant_fields
from qsim.runs import atomic_write

STUDY_QUANTIZERS = STUDY_PRESETS


def _bits(r) -> tuple[int, int | None] | None:
  """(weight bits, activation bits or None) of a bit-grid row (a ``wXaY`` /
  ``wX`` preset, by its fields), None for any other quantizer."""
  w, a = r.get("weight_bits"), r.get("act_bits")
  if r.get("weight_format") != "int" or r.get("act_format") not in ("int", "float") or _missing(w):
    return None
  bits = (int(w), None if _missing(a) else int(a))
  return bits if r["quantizer"] == bits_name(*bits) else None


def _missing(v) -> bool:
  return v is None or (isinstance(v, float) and math.isnan(v))


def _family(r) -> str:
  return "clean" if r["family"] == "clean" else f"{r['family']}"


def plot_rate_vs_bits(rows, path) -> bool:
  """Plots disagreement rate against bit-width, one line per set family.

  Uses the bit-grid quantizers with equal weight and activation bits (``wNaN``), or the weight-only ones (``wN``)
  when no ``wNaN`` was run; each point is the mean rate over that family's rows, in %, on a symlog axis.

  Args:
    rows: results rows with the quantizer fields filled in (see ``with_quant_fields``).
    path: the PNG file to write.

  Returns:
    True when the plot was written, False when ``rows`` hold no such bit-grid quantizer (nothing written).
  """
  by = defaultdict(list)
  diag = {r["quantizer"] for r in rows if _bits(r) and _bits(r)[0] == _bits(r)[1]}
  use = diag or {r["quantizer"] for r in rows if _bits(r) and _bits(r)[1] is None}
  if not use:
    return False
  for r in rows:
    if r["quantizer"] in use:
      by[(_family(r), _bits(r)[0])].append(r["disagreement_rate"])
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for fam in sorted({f for f, _ in by}):
    xs = sorted(b for f, b in by if f == fam)
    ax.plot(xs, [100 * mean(by[(fam, b)]) for b in xs], marker="o", label=fam)
  ax.set_xlabel("bits (" + ("weights = activations" if diag else "weights only") + ")")
  ax.set_ylabel("disagreement rate (%, mean over sets)")
  ax.set_yscale("symlog", linthresh=0.1)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  save_figure(fig, path)
  return True


def plot_heatmap(rows, quantizers, sets, path):
  """Plots a quantizer x set heatmap of the disagreement rate (mean over rows, in %, log colour scale).

  Args:
    rows: results rows; each row's ``quantizer`` and ``set`` must be in ``quantizers`` and ``sets``.
    quantizers: quantizer names, one heatmap row each, in this order.
    sets: set names, one heatmap column each, in this order (labelled by :func:`qsim.results.set_label`).
    path: the PNG file to write.
  """
  grid = np.full((len(quantizers), len(sets)), np.nan)
  qi = {q: i for i, q in enumerate(quantizers)}
  si = {s: j for j, s in enumerate(sets)}
  acc = defaultdict(list)
  for r in rows:
    acc[(qi[r["quantizer"]], si[r["set"]])].append(r["disagreement_rate"])
  for (i, j), v in acc.items():
    grid[i, j] = 100 * mean(v)
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(min(30, 3 + 0.16 * len(sets)), 1.5 + 0.22 * len(quantizers)))
  im = ax.imshow(np.log10(grid + 0.01), aspect="auto", cmap="magma_r")
  ax.set_yticks(range(len(quantizers)), quantizers, fontsize=7)
  labels = {r["set"]: set_label(r) for r in rows}
  ax.set_xticks(range(len(sets)), [labels[s] for s in sets], rotation=90, fontsize=6)
  fig.colorbar(im, ax=ax, label="log10(disagreement % + 0.01)")
  ax.set_title("Disagreement rate, quantizer x set")
  fig.tight_layout()
  save_figure(fig, path)


def plot_scatter(rows, path):
  """Plots disagreement rate (%) against accuracy drop (float minus quantized, in points), one point per row.

  Args:
    rows: results rows with ``float_accuracy``, ``quant_accuracy`` and ``disagreement_rate`` (fractions).
    path: the PNG file to write.
  """
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  xs = [100 * (r["float_accuracy"] - r["quant_accuracy"]) for r in rows]
  ys = [100 * r["disagreement_rate"] for r in rows]
  ax.scatter(xs, ys, s=6, alpha=0.5)
  lim = max([1.0] + [abs(x) for x in xs if not math.isnan(x)] + [y for y in ys if not math.isnan(y)])
  ax.plot([0, lim], [0, lim], color="gray", lw=0.8, ls="--", label="disagreement = accuracy drop")
  ax.set_xlabel("accuracy drop (points)")
  ax.set_ylabel("disagreement rate (%)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  save_figure(fig, path)


def pooled_samples(workdir, quantizer):
  """Disagreement labels and quantized-model scores of ``quantizer``, pooled over every stored set.

  Only samples whose float and quantized logits are all finite are kept.

  Args:
    workdir: the sweep's work directory (per-sample arrays in ``samples/``).
    quantizer: the quantizer's name.

  Returns:
    ``(labels, scores)``: bool ``[N]`` (True = the quantized prediction differs from the float one) and
    ``[N, len(metrics.SCORE_NAMES)]`` scores from the quantized model's outputs; ``(None, None)`` when no stored
    set has that quantizer.

  Raises:
    ValueError: a samples file is corrupted or not a qsim samples file.
  """
  store = ResultsStore(workdir)
  labels, scores = [], []
  for fname in sorted(os.listdir(store.samples_dir)):
    if not fname.endswith(".npz"):
      continue
    try:
      s = store.samples(fname[:-4])  # allow_pickle=False: an object array is refused, never unpickled
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(
          f"results file {os.path.join(store.samples_dir, fname)} is corrupted or not a qsim"
          f" samples file ({e}); delete it and parts/{fname[:-4]}.json, then rerun the sweep"
          " command to recompute that unit"
      ) from e
    names = list(s["quantizers"])
    if quantizer not in names:
      continue
    k = names.index(quantizer)
    ok = s["float_finite"] & s["quant_finite"][k]
    labels.append((s["quant_pred"][k] != s["float_pred"])[ok])
    scores.append(s["quant_scores"][k][ok])
  if not labels:
    return None, None
  return np.concatenate(labels), np.concatenate(scores)


def plot_roc(workdir, quantizer, path) -> dict | None:
  """Plots the ROC curve of every uncertainty score for ``quantizer``, all stored sets pooled.

  Args:
    workdir: the sweep's work directory (per-sample arrays in ``samples/``).
    quantizer: the quantizer's name.
    path: the PNG file to write.

  Returns:
    Score name to its :func:`metrics.detection_report` on the pooled samples, or None (nothing written) when no
    samples are stored for ``quantizer`` or they are all, or none, disagreements.

  Raises:
    ValueError: a samples file is corrupted or not a qsim samples file.
  """
  labels, scores = pooled_samples(workdir, quantizer)
  if labels is None or labels.all() or not labels.any():
    return None
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(4.8, 4.4))
  out = {}
  for m, name in enumerate(metrics.SCORE_NAMES):
    fpr, tpr = metrics.roc_curve(labels, scores[:, m])
    rep = metrics.detection_report(labels, scores[:, m])
    out[name] = rep
    ax.plot(fpr, tpr, label=f"{name} (AUROC {rep['auroc']:.3f})")
  ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate (disagreements found)")
  ax.set_title(f"{quantizer}: {int(labels.sum())} disagreements of {len(labels)}", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  save_figure(fig, path)
  return out


def _fmt(v, pct=False):
  if isinstance(v, float) and math.isnan(v):
    return "-"
  return f"{100 * v:.2f}" if pct else (f"{v:.3f}" if isinstance(v, float) else str(v))


def write_report(workdir: str) -> str:
  """Writes report.md and the plots into ``workdir``; returns the report path.

  Args:
    workdir: a sweep's work directory holding ``results.csv`` (and ``samples/`` for the ROC plot).

  Returns:
    The path of ``report.md`` in ``workdir``.

  Raises:
    FileNotFoundError: ``workdir`` has no ``results.csv``.
    ValueError: the table has no rows, or a samples file is corrupted.
  """
  rows = [with_quant_fields(r) for r in read_rows(os.path.join(workdir, "results.csv"))]
  quantizers = list(dict.fromkeys(r["quantizer"] for r in rows))
  sets = list(dict.fromkeys(r["set"] for r in rows))
  ckpts = list(dict.fromkeys(r["checkpoint"] for r in rows))
  lines = [
      f"# Disagreement report: {os.path.abspath(workdir)}",
      "",
      f"{len(ckpts)} checkpoint(s), {len(quantizers)} quantizers, {len(sets)} sets, {len(rows)} rows"
      " (rates: % of samples whose quantized prediction differs from the float model's).",
      "",
  ]
  # per quantizer: clean vs shifted
  lines += [
      "## Disagreement per quantizer",
      "",
      "| quantizer | clean rate % | 95% CI | mean shifted rate % | worst set | worst rate % | accuracy drop on clean (pts) |",
      "|---|---|---|---|---|---|---|",
  ]
  for q in quantizers:
    qr = [r for r in rows if r["quantizer"] == q]
    clean = [r for r in qr if r["family"] == "clean"]
    shifted = [r for r in qr if r["family"] != "clean"]
    worst = max(shifted, key=lambda r: r["disagreement_rate"]) if shifted else None
    c = clean[0] if clean else None
    lines.append(
        f"| {q} | {_fmt(mean([r['disagreement_rate'] for r in clean]), True)} | "
        f"{'-' if c is None else _fmt(c['rate_ci_low'], True) + '-' + _fmt(c['rate_ci_high'], True)} | "
        f"{_fmt(mean([r['disagreement_rate'] for r in shifted]), True)} | {worst['set'] if worst else '-'} | "
        f"{_fmt(worst['disagreement_rate'], True) if worst else '-'} | "
        f"{_fmt(mean([r['float_accuracy'] - r['quant_accuracy'] for r in clean]), True)} |"
    )
  lines.append("")
  present = [q for q in STUDY_QUANTIZERS if q in quantizers]
  if present:
    fams = list(dict.fromkeys(_family(r) for r in rows))
    lines += [
        "## The study's four deployments",
        "",
        "Mean disagreement rate % by set family.",
        "",
        "| family | " + " | ".join(present) + " |",
        "|---|" + "---|" * len(present),
    ]
    for fam in fams:
      cells = [
          _fmt(mean([r["disagreement_rate"] for r in rows if r["quantizer"] == q and _family(r) == fam]), True)
          for q in present
      ]
      lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines.append("")
  # detection quality, mean over (quantizer, set) rows with both classes
  lines += [
      "## Detecting disagreements",
      "",
      "Mean over (quantizer, set) rows that have disagreements; scores from the float model's and the"
      " quantized model's outputs; higher is better.",
      "",
      "| score | source | AUROC | AUPR | TNR@95%TPR |",
      "|---|---|---|---|---|",
  ]
  for src in ("float", "quant"):
    for name in metrics.SCORE_NAMES:
      vals = [mean([r[f"{src}_{name}_{m}"] for r in rows]) for m in ("auroc", "aupr", "tnr95")]
      lines.append(f"| {name} | {src} | " + " | ".join(_fmt(v) for v in vals) + " |")
  lines.append("")
  plots = []
  if plot_rate_vs_bits(rows, os.path.join(workdir, "rate_vs_bits.png")):
    plots.append(("Disagreement vs bits", "rate_vs_bits.png"))
  plot_heatmap(rows, quantizers, sets, os.path.join(workdir, "heatmap.png"))
  plots.append(("Quantizer x set", "heatmap.png"))
  plot_scatter(rows, os.path.join(workdir, "accuracy_vs_disagreement.png"))
  plots.append(("Accuracy drop vs disagreement", "accuracy_vs_disagreement.png"))
  most = max(quantizers, key=lambda q: sum(r["disagreements"] for r in rows if r["quantizer"] == q))
  if plot_roc(workdir, most, os.path.join(workdir, "roc.png")) is not None:
    plots.append((f"ROC of the uncertainty scores ({most}, all sets pooled)", "roc.png"))
  for title, fname in plots:
    lines += [f"## {title}", "", f"![{title}]({fname})", ""]
  path = os.path.join(workdir, "report.md")
  atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
  return path


def plot_bit_grid(counts: np.ndarray, weight_bits, act_bits, path: str, n: int) -> None:
  """A weight-bits x activation-bits heatmap of disagreement counts (of ``n`` samples).

  ``counts[i, j]`` is the count at ``weight_bits[i]`` and ``act_bits[j]``
  (``None`` = float activations). The caller indexes the grid by the bits it
  built the quantizers from (no name parsing).

  Args:
    counts: integer disagreement counts, shape ``(len(weight_bits), len(act_bits))``.
    weight_bits: the weight bit-widths, one heatmap row each.
    act_bits: the activation bit-widths (None = float activations), one heatmap column each.
    path: the PNG file to write.
    n: the number of samples the counts are out of (shown in the title).

  Raises:
    ValueError: ``counts`` does not have shape ``(len(weight_bits), len(act_bits))``.
  """
  counts = np.asarray(counts)
  if counts.shape != (len(weight_bits), len(act_bits)):
    raise ValueError(
        f"counts has shape {counts.shape}; expected (len(weight_bits), len(act_bits))"
        f" = {(len(weight_bits), len(act_bits))}"
    )
  plt = pyplot()
  scaled = np.log10(counts + 1)
  fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(act_bits), 1.2 + 0.6 * len(weight_bits)))
  im = ax.imshow(scaled, cmap="magma_r", aspect="auto")
  for (i, j), c in np.ndenumerate(counts):
    ax.text(j, i, f"{c}", ha="center", va="center", color="white" if scaled[i, j] > scaled.max() * 0.6 else "black")
  ax.set_xticks(range(len(act_bits)), ["float" if a is None else str(a) for a in act_bits])
  ax.set_yticks(range(len(weight_bits)), [str(w) for w in weight_bits])
  ax.set_xlabel("activation bits")
  ax.set_ylabel("weight bits")
  ax.set_title(f"Predictions flipped vs float (of {n})")
  fig.colorbar(im, ax=ax, label="log10(disagreements + 1)")
  fig.tight_layout()
  save_figure(fig, path)
