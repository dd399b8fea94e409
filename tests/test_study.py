"""The study end to end on tiny settings: every section of the report is
produced, from the run's own results; a rerun resumes without redoing work."""

import os

import numpy as np
import pytest

from experiments import study as launcher
from experiments.configs import study as study_config
from qsim.evaluate.report import read_rows
from qsim.study import run_study, train_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  if not os.path.exists("/usr/share/datasets/fashion-mnist"):
    pytest.skip("make test installs dataset-fashion-mnist")
  wd = str(tmp_path_factory.mktemp("study"))
  c = study_config.get_config("runlocal")
  path = run_study(launcher.study_config(c), wd, launcher.train_config_fn(c))
  return wd, path, c


def test_every_section_comes_from_real_results(study):
  wd, path, _ = study
  body = open(path).read()
  summary = [l for l in body.splitlines() if l.startswith("| ") and l[2:3].isdigit()]
  assert [l.split(" | ")[0] for l in summary] == ["| 1", "| 2", "| 3", "| 4"]
  for line in summary:
    assert line.split(" | ")[2] in ("supported", "mixed", "not supported"), line
  for section in ("## RQ1", "## RQ2", "## RQ3", "## RQ4", "### evaluation split", "Verdict:", "_Rule:"):
    assert section in body, section
  for png in ("rq1_severity.png", "rq2_methods.png", "rq3_auroc.png", "retrain.png"):
    assert f"]({png})" in body and os.path.getsize(os.path.join(wd, png)) > 5000, png
  assert os.path.exists(os.path.join(wd, "eval", "report.md"))
  rows = read_rows(os.path.join(wd, "eval", "results.csv"))
  assert {r["method"] for r in rows} == {"standard", "qat"}
  assert {r["quantizer"] for r in rows} == {"w4a4", "tflite_int8", "fp16"}
  assert len({r["set"] for r in rows}) == 1 + 2 * 2  # clean + fog and rotate at severities 2 and 5
  # RQ1's clean rate is the sweep's measured rate
  clean = next(r for r in rows if r["method"] == "standard" and r["quantizer"] == "w4a4" and r["family"] == "clean")
  assert f"| lenet_tiny | w4a4 | {100 * clean['disagreement_rate']:.2f} |" in body
  # RQ3's Margin AUROC is the mean over the rows with both classes
  usable = [r for r in rows if 0 < r["disagreements"] < r["n"] - r["nonfinite"]]
  assert f"| margin | quant | {100 * np.nanmean([r['quant_margin_auroc'] for r in usable]):.2f} |" in body
  # RQ4 counts the retraining run's disagreements
  rt = read_rows(os.path.join(wd, "retrain", "lenet_tiny", "seed0", "results.csv"))
  before = sum(r["before"] for r in rt if r["strategy"] == "all" and r["family"] == "clean")
  assert f"| w4a4 | all | " in body and f" | {before:.1f} | " in body


def test_a_rerun_resumes_without_redoing_work(study):
  wd, path, c = study
  summary = os.path.join(train_dir(wd, "lenet_tiny", "qat", 0), "summary.json")
  parts = os.path.join(wd, "retrain", "lenet_tiny", "seed0", "parts")
  stamps = {p: os.stat(p).st_mtime_ns for p in [summary] + [os.path.join(parts, f) for f in os.listdir(parts)]}
  report = open(path).read()
  assert run_study(launcher.study_config(c), wd, launcher.train_config_fn(c)) == path
  assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
  assert open(path).read() == report


def test_bad_study_config():
  c = study_config.get_config("runlocal,methods=qat")
  with pytest.raises(ValueError, match="method 'qat' fine-tunes the 'standard' checkpoint"):
    launcher.study_config(c).validate()
  with pytest.raises(ValueError, match=r"severities=\[6\] is not valid; give ints in 1..5"):
    launcher.study_config(study_config.get_config("runlocal,severities=6")).validate()
  with pytest.raises(ValueError, match="seeds='a' is not valid"):
    launcher.study_config(study_config.get_config("seeds=a"))
  with pytest.raises(ValueError, match=r"methods=\['sgd'\] is not valid"):
    launcher.study_config(study_config.get_config("methods=sgd")).validate()
  quick = launcher.study_config(study_config.get_config("quick"))
  quick.validate()
  assert quick.seeds == (0, 1) and len(quick.shift_names()) == 15 * 3
