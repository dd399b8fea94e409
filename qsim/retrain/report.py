"""The retraining section of a report: what retraining resolved, kept and
broke, per quantizer and strategy, against the random-selection control.

``write_report(workdir)`` reads the retraining ``results.csv`` and writes
``report.md`` and ``retrain.png`` (per quantizer: a bar pair per strategy,
disagreements before = resolved + persisted and after = persisted + new,
stacked; on the evaluation split and summed over the shifted sets). Figures
are the last round of each run, summed over sets, then averaged over seeds
with a 95% t-interval; ``section(rows)`` gives the Markdown alone (the study
report embeds it).
"""

from __future__ import annotations

import os

import numpy as np

from qsim.results import fmt_ci, mean, mean_ci, pyplot, read_rows, save_figure
from qsim.runs import atomic_write

COUNTS = ("before", "after", "resolved", "persisted", "new")


def final_rounds(rows) -> dict:
  """Each run's last completed round, its counts summed over sets.

  Args:
    rows: the retraining table's rows (as :func:`qsim.results.read_rows` gives
      them); only rows with status 'done' count.

  Returns:
    {(model, quantizer, strategy, seed): {'round': r, 'clean': {count: n},
    'shifted': {count: n} or None, 'acc': (before, after), 'added': n}}: the
    counts of ``COUNTS`` summed over the evaluation split ('clean') and over
    the shifted sets ('shifted', None without any), the float accuracy
    (fraction) on the evaluation split before and after, and the samples added
    to the training data so far.
  """
  done = [r for r in rows if r.get("status") == "done"]
  run_key = lambda r: (r["model"], r["quantizer"], r["strategy"], int(r["seed"]))  # noqa: E731
  last = {}
  for r in done:
    last[run_key(r)] = max(last.get(run_key(r), 0), int(r["round"]))
  out = {}
  for k, rnd in last.items():
    rs = [r for r in done if run_key(r) == k and int(r["round"]) == rnd]
    clean = [r for r in rs if r["family"] == "clean"]
    shifted = [r for r in rs if r["family"] != "clean"]
    out[k] = {
        "round": rnd,
        "clean": {c: sum(int(r[c]) for r in clean) for c in COUNTS},
        "shifted": {c: sum(int(r[c]) for r in shifted) for c in COUNTS} if shifted else None,
        "acc": (mean([r["float_accuracy_before"] for r in clean]), mean([r["float_accuracy_after"] for r in clean])),
        "added": int(rs[0]["added_total"]),
    }
  return out


def _cells(runs) -> list[tuple[str, str]]:
  """(model, quantizer) pairs in first-seen order."""
  return list(dict.fromkeys((k[0], k[1]) for k in runs))


def section(rows) -> list[str]:
  """The retraining section of a report, in Markdown.

  Tables of disagreements (before, after, resolved, persisted, new; mean ±
  95% t-interval over seeds, with the paired difference to the random
  control) on the evaluation split and the shifted sets, the float accuracy
  before and after, and the runs stopped for lack of disagreements.

  Args:
    rows: the retraining table's rows (as :func:`qsim.results.read_rows` gives
      them).

  Returns:
    The section's lines, without line ends.
  """
  runs = final_rounds(rows)
  cells = _cells(runs)
  strategies = list(dict.fromkeys(r["strategy"] for r in rows))
  seeds = sorted({int(r["seed"]) for r in rows})
  lines = [
      "## Retraining with disagreements",
      "",
      f"{len(cells)} (model, quantizer) pair(s) x {len(strategies)} strategies x {len(seeds)} seed(s); last round"
      " of each run; disagreements summed over the sets of each kind, then mean ± 95% t-interval over seeds."
      " before = resolved + persisted, after = persisted + new.",
      "",
  ]
  stopped = sorted(
      {
          (r["model"], r["quantizer"], r["strategy"], int(r["seed"]), int(r["round"]))
          for r in rows
          if r.get("status") == "no_disagreements"
      }
  )
  for kind in ("clean", "shifted"):
    if not any(v[kind] for v in runs.values()):
      continue
    title = "evaluation split" if kind == "clean" else "shifted sets (summed)"
    lines += [
        f"### {title}",
        "",
        "| model | quantizer | strategy | added | before | after | resolved | persisted |"
        " new | after - after of random (paired) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, q in cells:
      for s in strategies:
        ks = [k for k in runs if k[:3] == (m, q, s) and runs[k][kind]]
        if not ks:
          continue
        counts = [fmt_ci(*mean_ci([runs[k][kind][c] for k in ks])) for c in COUNTS]
        paired = [
            runs[k][kind]["after"] - runs[(m, q, "random", k[3])][kind]["after"]
            for k in ks
            if s != "random" and runs.get((m, q, "random", k[3]), {}).get(kind)
        ]
        added = fmt_ci(*mean_ci([runs[k]["added"] for k in ks]), digits=0)
        lines.append(
            f"| {m} | {q} | {s} | {added} | "
            + " | ".join(counts)
            + f" | {fmt_ci(*mean_ci(paired)) if paired else '-'} |"
        )
    lines.append("")
  lines += [
      "### Float accuracy on the evaluation split (%)",
      "",
      "| model | quantizer | strategy | before | after |",
      "|---|---|---|---|---|",
  ]
  for m, q in cells:
    for s in strategies:
      ks = [k for k in runs if k[:3] == (m, q, s)]
      if ks:
        b, a = mean_ci([runs[k]["acc"][0] for k in ks]), mean_ci([runs[k]["acc"][1] for k in ks])
        lines.append(f"| {m} | {q} | {s} | {fmt_ci(100 * b[0], 100 * b[1], 2)} | {fmt_ci(100 * a[0], 100 * a[1], 2)} |")
  lines.append("")
  if stopped:
    lines += [
        "Runs stopped because the pool had no disagreements left: "
        + ", ".join(f"{m} {q}/{s}/seed {sd} (round {rd})" for m, q, s, sd, rd in stopped),
        "",
    ]
  return lines


def plot(rows, path) -> bool:
  """Per (model, quantizer) and kind of set: a before | after bar pair per strategy.

  Bars are stacked (before = persisted + resolved, after = persisted + new)
  and averaged over seeds, from each run's last round.

  Args:
    rows: the retraining table's rows (as :func:`qsim.results.read_rows` gives
      them).
    path: where to write the PNG figure.

  Returns:
    True if the figure was written; False (nothing written) when no run has a
    completed round.
  """
  runs = final_rounds(rows)
  if not runs:
    return False
  cells = _cells(runs)
  strategies = list(dict.fromkeys(k[2] for k in runs))
  kinds = [k for k in ("clean", "shifted") if any(v[k] for v in runs.values())]
  plt = pyplot()
  fig, axes = plt.subplots(len(kinds), len(cells), figsize=(3.2 + 2.2 * len(cells), 3.2 * len(kinds)), squeeze=False)
  colors = {"resolved": "#4c9f70", "persisted": "#888888", "new": "#d1495b"}
  for i, kind in enumerate(kinds):
    for j, (m, q) in enumerate(cells):
      ax = axes[i][j]
      for x, s in enumerate(strategies):
        ks = [k for k in runs if k[:3] == (m, q, s) and runs[k][kind]]
        if not ks:
          continue
        avg = {c: float(np.mean([runs[k][kind][c] for k in ks])) for c in COUNTS}
        ax.bar(x - 0.2, avg["persisted"], 0.38, color=colors["persisted"])
        ax.bar(x - 0.2, avg["resolved"], 0.38, bottom=avg["persisted"], color=colors["resolved"])
        ax.bar(x + 0.2, avg["persisted"], 0.38, color=colors["persisted"])
        ax.bar(x + 0.2, avg["new"], 0.38, bottom=avg["persisted"], color=colors["new"])
      ax.set_xticks(range(len(strategies)), [f"{s}\nbefore | after" for s in strategies], fontsize=7)
      ax.set_title(f"{m} {q}: {'evaluation split' if kind == 'clean' else 'shifted sets'}", fontsize=8)
      ax.set_ylabel("disagreements (mean over seeds)", fontsize=8)
      ax.grid(axis="y", alpha=0.3)
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
  fig.legend(handles, list(colors), loc="lower center", ncol=3, fontsize=8)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  save_figure(fig, path)
  return True


def write_report(workdir: str) -> str:
  """Writes ``report.md`` and ``retrain.png`` into ``workdir``.

  Args:
    workdir: a retraining workdir holding ``results.csv``.

  Returns:
    The path of ``report.md``.

  Raises:
    FileNotFoundError: ``workdir`` has no ``results.csv``.
    ValueError: the table has no rows or is not a retraining table.
  """
  rows = read_rows(os.path.join(workdir, "results.csv"))
  if "strategy" not in rows[0]:
    raise ValueError(
        f"{workdir}/results.csv is not a retraining table (no 'strategy' column); use"
        " qsim.evaluate.report for evaluation sweeps"
    )
  lines = [f"# Retraining report: {os.path.abspath(workdir)}", ""] + section(rows)
  if plot(rows, os.path.join(workdir, "retrain.png")):
    lines += ["![before and after retraining](retrain.png)", ""]
  path = os.path.join(workdir, "report.md")
  atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
  return path
