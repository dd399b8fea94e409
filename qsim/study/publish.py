"""Publishing a finished study: its report, plots, tables and run record copied into a folder meant for the
repository (``docs/results/<dataset>/``); the launcher is ``experiments/publish_study.py``."""

from __future__ import annotations

import glob
import gzip
import json
import os
import platform
import shutil
import subprocess

from qsim.study.run import read_timings


def _gzip(src: str, dst: str) -> None:
  with open(src, "rb") as f, gzip.GzipFile(dst, "wb", mtime=0) as g:  # mtime 0: the same table, the same bytes
    shutil.copyfileobj(f, g)


def git_commit() -> str:
  """The checkout's commit, for the record of a run.

  Returns:
    ``git rev-parse HEAD``, with " (with uncommitted changes)" when ``qsim/`` or ``experiments/`` differ from it,
    or "unknown (not a git checkout)".
  """
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "qsim", "experiments"], capture_output=True, text=True)
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"


def training_table(workdir: str) -> list[str]:
  """The trained networks' accuracies, as markdown lines: one row per (model, method), each seed's test and
  validation accuracy (``train/<model>/<method>/seed<s>/summary.json``) and the mean test accuracy.

  Args:
    workdir: the study workdir.

  Returns:
    The section's lines; an empty list when the workdir holds no training summaries.
  """
  runs: dict[tuple[str, str], dict[int, dict]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "train", "*", "*", "seed*", "summary.json"))):
    _, model, method, seed, _ = os.path.relpath(path, workdir).split(os.sep)
    with open(path) as f:
      runs.setdefault((model, method), {})[int(seed[len("seed") :])] = json.load(f)
  if not runs:
    return []
  seeds = sorted({s for r in runs.values() for s in r})
  lines = [
      "## Trained networks",
      "",
      "Test accuracy (validation accuracy) of each training run, in %, and the mean test accuracy over seeds.",
      "",
      "| model | method | steps | " + " | ".join(f"seed {s}" for s in seeds) + " | mean test |",
      "|---|---|---|" + "---|" * len(seeds) + "---|",
  ]
  for (model, method), by_seed in sorted(runs.items()):
    cells = [
        f"{100 * by_seed[s]['test_accuracy']:.2f} ({100 * by_seed[s]['val_accuracy']:.2f})" if s in by_seed else "-"
        for s in seeds
    ]
    steps = sorted({int(r["steps"]) for r in by_seed.values()})
    mean = 100 * sum(r["test_accuracy"] for r in by_seed.values()) / len(by_seed)
    lines.append(f"| {model} | {method} | {'/'.join(map(str, steps))} | {' | '.join(cells)} | {mean:.2f} |")
  return lines


def publish(workdir: str, out: str, command: str = "") -> str:
  """Copies a finished study's evidence into ``out``; returns the path of ``out/RUN.md``.

  Args:
    workdir: the study workdir.
    out: the folder to publish into.
    command: the command that ran the study; '' reads ``workdir/command.txt`` (written by
      ``experiments.study``).

  Returns:
    The path of RUN.md.

  Raises:
    FileNotFoundError: the workdir has no report.md, eval/results.csv or study_config.json (the study has not
      finished; rerun its command, it resumes).
  """
  need = ["report.md", "eval/results.csv", "study_config.json"]
  missing = [n for n in need if not os.path.exists(os.path.join(workdir, n))]
  if missing:
    raise FileNotFoundError(f"{workdir} lacks {missing}: the study has not finished; rerun its command (it resumes)")
  os.makedirs(out, exist_ok=True)
  report = open(os.path.join(workdir, "report.md")).read().replace(os.path.abspath(workdir), "<workdir>")
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report)
  for png in glob.glob(os.path.join(workdir, "*.png")):
    shutil.copy(png, out)
  _gzip(os.path.join(workdir, "eval", "results.csv"), os.path.join(out, "results.csv.gz"))
  retrain = sorted(glob.glob(os.path.join(workdir, "retrain", "*", "*", "results.csv")))
  if retrain:
    with gzip.GzipFile(os.path.join(out, "retrain_results.csv.gz"), "wb", mtime=0) as g:
      for i, p in enumerate(retrain):  # one table: the header once
        lines = open(p, "rb").read().splitlines(keepends=True)
        g.writelines(lines if i == 0 else lines[1:])
  shutil.copy(os.path.join(workdir, "study_config.json"), out)
  if not command and os.path.exists(os.path.join(workdir, "command.txt")):
    command = open(os.path.join(workdir, "command.txt")).read().strip()
  publisher = git_commit()
  recorded = os.path.join(workdir, "commit.txt")  # written by experiments.study when the study began
  study_commit = open(recorded).read().strip() if os.path.exists(recorded) else ""
  if not study_commit:
    commit_line = f"Commit: {publisher} (the publisher's; the study did not record its own)"
  elif study_commit == publisher:
    commit_line = f"Commit: {study_commit} (the study's)"
  else:
    commit_line = f"Commit: {study_commit} (the study's); published from {publisher}"
  t = read_timings(workdir)
  total = sum(t["seconds"].values())
  summary = [line for line in report.splitlines() if line.startswith("|")][:6]  # header, rule, RQ1-RQ4
  lines = [
      "# How this study was run",
      "",
      f"Command: `{command or 'not recorded'}`",
      "",
      commit_line,
      "",
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs seen by the publisher"
      + (f"; the study ran in {t['processes']} process(es) with {t['cpus']} CPUs." if t["processes"] else "."),
      "",
      *(
          [
              "| stage | wall time |",
              "|---|---|",
              *[f"| {s} | {v / 60:.1f} min |" for s, v in t["seconds"].items()],
              f"| total | {total / 60:.1f} min ({total / 3600:.2f} h) |",
          ]
          if t["processes"]
          else ["Wall time per stage: not recorded (the study ran before qsim recorded timings.json)."]
      ),
      "",
      "Files: report.md (the research questions, with rules and intervals), the plots, results.csv.gz (the"
      " evaluation sweep, one row per checkpoint x quantizer x set), retrain_results.csv.gz, study_config.json.",
      "",
      *training_table(workdir),
      "",
      "## Summary (from report.md)",
      "",
      *summary,
      "",
  ]
  path = os.path.join(out, "RUN.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  with open(os.path.join(out, "timings.json"), "w") as f:
    json.dump(t, f, indent=1, sort_keys=True)
  return path
