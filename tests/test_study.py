"""The study end to end on tiny settings: every section of the report is
produced, from the run's own results; a rerun resumes without redoing work."""

import json
import os

import numpy as np
import pytest

from experiments.configs import study as study_config
from tests import golden
from qsim.evaluate.report import read_rows
from qsim.study import StudyConfig, read_timings, report, run_study, train_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  if not os.path.exists("/usr/share/datasets/fashion-mnist"):
    pytest.skip("make test installs dataset-fashion-mnist")
  wd = str(tmp_path_factory.mktemp("study"))
  c = study_config.get_config("runlocal")
  c = StudyConfig.from_config_dict(c)
  path = run_study(c, wd, study_config.train_config_fn(c))
  return wd, path, c


def test_every_section_comes_from_real_results(study):
  wd, path, _ = study
  body = open(path).read()
  summary = [l for l in body.splitlines() if l.startswith("| ") and l[2:3].isdigit()]
  assert [l.split(" | ")[0] for l in summary] == ["| 1", "| 2", "| 3", "| 4"]
  for line in summary:
    assert line.split(" | ")[2] in report.VERDICTS, line
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
  before = read_timings(wd)
  assert all(before["seconds"][s] > 0 for s in ("train", "evaluate", "retrain", "report")), before
  assert run_study(c, wd, study_config.train_config_fn(c)) == path
  assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
  assert open(path).read() == report
  after = read_timings(wd)  # each stage's time is summed over the processes that ran it
  assert after["processes"] == before["processes"] + 1 and len(after["cpus"]) == after["processes"]
  assert all(after["seconds"][s] >= before["seconds"][s] for s in before["seconds"])


def test_bad_study_config():
  c = study_config.get_config("runlocal,methods=qat")
  with pytest.raises(ValueError, match="method 'qat' fine-tunes the 'standard' checkpoint"):
    StudyConfig.from_config_dict(c).validate()
  with pytest.raises(ValueError, match=r"severities=\[6\] is not valid; give ints in 1..5"):
    StudyConfig.from_config_dict(study_config.get_config("runlocal,severities=6")).validate()
  with pytest.raises(ValueError, match=r"seeds=\('a',\) is not valid; give a tuple of ints"):
    StudyConfig.from_config_dict(study_config.get_config("seeds=a"))
  with pytest.raises(ValueError, match=r"methods=\['sgd'\] is not valid"):
    StudyConfig.from_config_dict(study_config.get_config("methods=sgd")).validate()
  quick = StudyConfig.from_config_dict(study_config.get_config("quick"))
  quick.validate()
  assert quick.seeds == (0, 1) and len(quick.shift_names()) == 15 * 3


def test_the_sweep_engine_shared_across_checkpoints_gives_each_its_own_results(study):
  """The sweep reuses one compiled engine for the standard and QAT checkpoints
  (new weights, re-calibrated ranges); the QAT rows equal a fresh engine's."""
  from qsim import data
  from qsim.evaluate.engine import Engine, build_quantizers
  from qsim.models import get_model
  from qsim.runs import load_variables

  wd, _, c = study
  rows = read_rows(os.path.join(wd, "eval", "results.csv"))
  qat = [r for r in rows if r["method"] == "qat" and r["family"] == "clean"]
  model = get_model("lenet_tiny", num_classes=10)
  v = load_variables(train_dir(wd, "lenet_tiny", "qat", 0))
  calib = data.load("fashion_mnist_debian", "train", limit=c.calib_samples, val_size=c.val_size).x
  test = data.load("fashion_mnist_debian", "test", limit=c.limit)
  names = [r["quantizer"] for r in qat]
  fresh = Engine(model, v, build_quantizers(model, v, names, calib), batch_size=c.eval_batch_size).run(test.x, test.y)
  for r, f in zip(qat, fresh.rows()):
    assert (r["quantizer"], r["disagreements"], r["float_correct"], r["quant_correct"]) == (
        f["quantizer"],
        f["disagreements"],
        f["float_correct"],
        f["quant_correct"],
    )


@pytest.mark.parametrize(
    "name",
    [
        "train/lenet_tiny/standard/seed0/summary.json",
        "train/lenet_tiny/qat/seed0/summary.json",
        "train/lenet_tiny/qat/seed0/config.json",
        "eval/results.csv",
        "eval/report.md",
        "retrain/lenet_tiny/seed0/results.csv",
        "report.md",
    ],
)
def test_tables_equal_the_golden_tables(study, name):
  """Every table the study writes (its training summaries, its sweep, its
  retraining, its reports) is byte-identical to the recorded one (see
  tests/golden.py: only the temporary workdir's path is normalised)."""
  wd, _, _ = study
  golden.check(f"study/{name}", os.path.join(wd, name), {"<WORKDIR>": wd})


def test_a_workdir_from_another_config_is_refused_before_any_work(study):
  wd, _, c = study
  other = StudyConfig.from_config_dict(study_config.get_config("runlocal,seeds=0+1,limit=50"))
  with pytest.raises(
      ValueError, match=r"differing keys: limit: workdir 100, now 50; seeds: workdir \[0\], now \[0, 1\]"
  ):
    run_study(other, wd, study_config.train_config_fn(other))
  assert not os.path.exists(train_dir(wd, "lenet_tiny", "standard", 1))


def test_three_way_verdicts_from_intervals():
  decide = report.decide
  assert decide([(0.1, 0.5)], 0.0, 0.1) == "supported"
  assert decide([(-0.3, 0.05)], 0.0, 0.1) == "not supported"  # rules out an effect of 0.1
  assert decide([(-0.1, 0.3)], 0.0, 0.1) == "inconclusive at this size"
  assert decide([(float("nan"), float("nan"))], 0.0, 0.1) == "inconclusive at this size"  # one network
  assert decide([(0.1, 0.5), (-0.1, 0.3)], 0.0, 0.1) == "inconclusive at this size"  # every comparison must hold
  assert decide([(0.1, 0.5), (-0.5, -0.1)], 0.0, 0.1) == "not supported"


def _rq1_rows(ratios, clean=0.02, n=1000):
  """Standard-trained rows of one quantizer: one network per ratio (3 models x len/3 seeds), clean rate
  ``clean``, two shifted sets at ``clean * ratio``."""
  rows = []
  for i, ratio in enumerate(ratios):
    for family, shift, rate in (("clean", "", clean), ("c", "fog", clean * ratio), ("c", "rotate", clean * ratio)):
      rows.append(
          dict(
              model=f"m{i % 3}",
              train_seed=float(i // 3),
              method="standard",
              quantizer="w4a4",
              dataset="fashion_mnist_debian",
              family=family,
              shift=shift,
              severity=float("nan") if family == "clean" else 1.0,
              disagreement_rate=rate,
              disagreements=round(rate * n),
              n=n,
              nonfinite=0,
              float_accuracy=0.9,
              quant_accuracy=0.9,
          )
      )
  return rows


@pytest.mark.parametrize(
    "ratios, verdict",
    [
        ((3.0, 2.5, 3.5, 2.8, 3.2, 2.9), "supported"),
        ((1.0, 1.02, 0.98, 1.0, 1.01, 0.99), "not supported"),
        ((4.0, 0.3, 3.0, 0.4, 5.0, 0.5), "inconclusive at this size"),  # the mean ratio is above 1, the interval not
    ],
)
def test_rq1_verdict_is_the_interval_of_the_networks_ratios(tmp_path, ratios, verdict):
  lines, got, evidence = report.rq1(_rq1_rows(ratios), str(tmp_path))
  assert got == verdict, evidence
  assert "(6 networks)" in evidence and "The original study: LeNet-1 tflite-8" in "\n".join(lines)


def test_training_workers_run_every_job_and_a_failure_stops_the_study(study, tmp_path):
  """Two training processes, each on its own core(s): every run finishes as it would alone (same config and
  steps, the same model up to float rounding); a failing run raises in the study process. Changing the worker
  count resumes a workdir."""
  from qsim import runs
  from qsim.study import run as study_run

  wd, path, c = study
  make = study_config.train_config_fn(c)
  jobs = [(f"{s}", make("lenet_tiny", "standard", s, ""), str(tmp_path / f"s{s}")) for s in (0, 1)]
  study_run._train_all(jobs, 2, 0.0)
  alone, pinned = runs.read_summary(train_dir(wd, "lenet_tiny", "standard", 0)), runs.read_summary(str(tmp_path / "s0"))
  assert {k: v for k, v in pinned.items() if "accuracy" not in k} == {
      k: v for k, v in alone.items() if "accuracy" not in k
  }
  # one core instead of two sums in another order: the weights may differ in their last bits, not the model
  assert abs(pinned["test_accuracy"] - alone["test_accuracy"]) <= 2 / 256
  assert runs.read_summary(str(tmp_path / "s1"))["seed"] == 1
  bad = make("lenet_tiny", "qat", 0, str(tmp_path / "missing"))  # QAT from a checkpoint that does not exist
  with pytest.raises(FileNotFoundError):
    study_run._train_all([("bad", bad, str(tmp_path / "bad")), jobs[0]], 2, 0.0)
  again = StudyConfig.from_config_dict(study_config.get_config("runlocal,train_workers=2"))
  assert run_study(again, wd, study_config.train_config_fn(again)) == path


def test_publishing_a_study_copies_its_evidence_and_refuses_an_unfinished_one(study, tmp_path):
  import gzip

  from qsim.study import publish as publish_study

  wd, path, _ = study
  run_md = publish_study.publish(wd, str(tmp_path / "pub"), "python -m experiments.study --config=x")
  body = open(run_md).read()
  assert "Command: `python -m experiments.study --config=x`" in body and "| train |" in body and "| total |" in body
  assert "| 1 | Shifted data gives more disagreements" in body and "|---|---|---|---|---|" in body
  with gzip.open(tmp_path / "pub" / "results.csv.gz", "rb") as f:
    assert f.read() == open(os.path.join(wd, "eval", "results.csv"), "rb").read()
  with gzip.open(tmp_path / "pub" / "retrain_results.csv.gz", "rb") as f:
    assert f.read() == open(os.path.join(wd, "retrain", "lenet_tiny", "seed0", "results.csv"), "rb").read()
  published = open(tmp_path / "pub" / "report.md").read()
  assert os.path.abspath(wd) not in published and published.count("<workdir>") == 1
  assert os.path.exists(tmp_path / "pub" / "rq1_severity.png")
  # the trained networks' accuracies, each from its run's summary.json
  for method in ("standard", "qat"):
    run = json.load(open(os.path.join(wd, "train", "lenet_tiny", method, "seed0", "summary.json")))
    acc = f"{100 * run['test_accuracy']:.2f} ({100 * run['val_accuracy']:.2f})"
    assert f"| lenet_tiny | {method} | {run['steps']} | {acc} | {100 * run['test_accuracy']:.2f} |" in body
  # the commit: the study's own (commit.txt, written by experiments.study) wins over the publisher's
  assert "(the publisher's; the study did not record its own)" in body
  with open(os.path.join(wd, "commit.txt"), "w") as f:
    f.write("0123abc\n")
  try:
    body = open(publish_study.publish(wd, str(tmp_path / "pub2"))).read()
  finally:
    os.remove(os.path.join(wd, "commit.txt"))
  assert f"Commit: 0123abc (the study's); published from {publish_study.git_commit()}" in body
  with pytest.raises(FileNotFoundError, match=r"lacks \['report.md', 'eval/results.csv', 'study_config.json'\]"):
    publish_study.publish(str(tmp_path), str(tmp_path / "again"))


def test_sample_noise_is_stated_at_each_family_s_own_set_size():
  """The full setting evaluates the whole clean split (10,000) and 500 per
  shifted set: each rate's Wilson interval is at its own size, not the
  median size of all rows (which a clean rate would get far too wide)."""
  from qsim.results import wilson

  rows = [dict(method="standard", family="clean", n=10000, disagreement_rate=0.0043)]
  rows += [dict(method="standard", family="c", n=500, disagreement_rate=0.01)] * 3
  line = report.sample_noise_line(rows)
  lo, hi = wilson(43, 10000)
  assert "Sample size: 10000 samples per clean set, 500 samples per shifted set;" in line
  assert f"clean 0.43% (Wilson 95% [{100 * lo:.2f}, {100 * hi:.2f}]%)" in line and hi < 0.006
  lo, hi = wilson(5, 500)
  assert f"shifted 1.00% (Wilson 95% [{100 * lo:.2f}, {100 * hi:.2f}]%)" in line
  same = report.sample_noise_line([dict(r, n=500) for r in rows])
  assert same.startswith("Sample size: 500 samples per set;")
