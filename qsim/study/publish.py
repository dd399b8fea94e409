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


def _commit() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "qsim", "experiments"], capture_output=True, text=True)
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"


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
  t = read_timings(workdir)
  total = sum(t["seconds"].values())
  summary = [line for line in report.splitlines() if line.startswith("|")][:6]  # header, rule, RQ1-RQ4
  lines = [
      "# How this study was run",
      "",
      f"Command: `{command or 'not recorded'}`",
      "",
      f"Commit: {_commit()}",
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
