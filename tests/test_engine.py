"""The disagreement engine: exact against the plain grid path, one
compilation, accounting identities, NaN rows, checkpoint mismatch, sharding
over 8 fake devices, and a sweep that resumes after kill -9."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from qsim import data
from qsim.evaluate import metrics
from qsim.evaluate.engine import Engine, build_quantizers, check_variables
from qsim.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["fp16", "w4a4", "tflite_int8", "w8", "tflite_dynamic", "w2a8"]


@pytest.fixture(scope="module")
def setup():
  if not os.path.exists("/usr/share/datasets/fashion-mnist"):
    pytest.skip("make test installs dataset-fashion-mnist")
  test = data.load("fashion_mnist_debian", "test", limit=230)
  calib = data.load("fashion_mnist_debian", "train", limit=40)
  model = get_model("lenet_tiny", num_classes=10)
  variables = model.init(jax.random.key(3), test.x[:1])
  qs = build_quantizers(model, variables, NAMES, calib.x)
  return model, variables, qs, test


def test_engine_equals_the_grid_path_and_compiles_once(setup):
  model, variables, qs, test = setup
  engine = Engine(model, variables, qs, batch_size=64)
  res = engine.run(test.x, test.y, "clean")
  # each quantizer alone, the plain flax way (its own apply, its own calibrated ranges, the whole set at once)
  ref = [
      np.argmax(
          np.asarray(
              model.clone(quant=q.config).apply(
                  variables if q.quant_stats is None else {**variables, "quant_stats": q.quant_stats}, test.x
              )
          ),
          -1,
      )
      for q in qs
  ]
  np.testing.assert_array_equal(res.quant_pred, np.stack(ref))
  float_ref = np.argmax(np.asarray(model.apply(variables, test.x)), -1)
  np.testing.assert_array_equal(res.float_pred, float_ref)
  assert res.quant_pred.shape == (len(NAMES), 230) and res.quant_scores.shape == (len(NAMES), 230, 5)
  # more batches and more datasets reuse the one program
  engine.run(test.x[:100], test.y[:100], "part")
  engine.run(test.x[::-1], test.y[::-1], "reversed")
  assert engine.compilations == 1
  # so do new weights with re-calibrated ranges (a fine-tuned model)
  other = model.init(jax.random.key(4), test.x[:1])
  engine.update(other, build_quantizers(model, other, NAMES, test.x[:40]))
  updated = engine.run(test.x, test.y, "clean")
  fresh = Engine(model, other, build_quantizers(model, other, NAMES, test.x[:40]), batch_size=64).run(test.x, test.y)
  np.testing.assert_array_equal(updated.quant_pred, fresh.quant_pred)
  np.testing.assert_array_equal(updated.float_pred, fresh.float_pred)
  assert engine.compilations == 1 and not (updated.quant_pred == res.quant_pred).all()
  with pytest.raises(ValueError, match="update needs the engine's quantizers"):
    engine.update(other, build_quantizers(model, other, NAMES[:2], test.x[:40]))
  # the disagreements are real: some quantizers flip predictions, fp16 almost none
  dis = (res.quant_pred != res.float_pred).sum(1)
  assert dis[NAMES.index("w2a8")] > dis[NAMES.index("fp16")]


def test_rows_account_for_every_sample(setup):
  model, variables, qs, test = setup
  res = Engine(model, variables, qs, batch_size=100).run(test.x, test.y, "clean")
  for k, row in enumerate(res.rows()):
    assert row["quantizer"] == NAMES[k] and row["n"] == 230 and row["nonfinite"] == 0
    dis = res.quant_pred[k] != res.float_pred
    assert row["disagreements"] == int(dis.sum())
    assert (
        row["flips_correct_to_wrong"] + row["flips_wrong_to_correct"] + row["flips_wrong_to_other_wrong"]
        == row["disagreements"]
    )
    assert row["quant_correct"] - row["float_correct"] == row["flips_wrong_to_correct"] - row["flips_correct_to_wrong"]
    assert row["rate_ci_low"] <= row["disagreement_rate"] <= row["rate_ci_high"]
    rep = metrics.detection_report(dis, res.quant_scores[k][:, metrics.SCORE_NAMES.index("entropy")])
    np.testing.assert_equal(row["quant_entropy_auroc"], rep["auroc"])
    np.testing.assert_equal(
        row["float_margin_tnr95"], metrics.detection_report(dis, res.float_scores[:, 0])["tnr_at_95tpr"]
    )


def test_nan_inputs_are_flagged_not_predicted(setup, capsys):
  model, variables, qs, test = setup
  x = test.x[:40].copy()
  x[[3, 17]] = np.nan
  engine = Engine(model, variables, qs, batch_size=64)
  res = engine.run(x, test.y[:40], "nan")
  clean = engine.run(np.delete(x, [3, 17], axis=0), np.delete(test.y[:40], [3, 17]), "clean")
  assert not res.float_finite[[3, 17]].any() and res.float_finite.sum() == 38
  rows, ref = res.rows(), clean.rows()
  for r, c in zip(rows, ref):
    assert r["nonfinite"] == 2 and r["n"] == 40
    assert (r["disagreements"], r["float_correct"], r["quant_correct"]) == (
        c["disagreements"],
        c["float_correct"],
        c["quant_correct"],
    )
  assert "2 inputs with NaN/Inf" in capsys.readouterr().err


def test_bad_input(setup):
  model, variables, qs, test = setup
  other = get_model("lenet5", num_classes=10)
  with pytest.raises(
      ValueError,
      match=r"checkpoint does not match the model: params\['conv1'\]\['bias'\] has shape \(2,\) in the checkpoint but \(6,\) in the model",
  ):
    check_variables(other, variables, test.x)
  with pytest.raises(ValueError, match=r"preset='w9a3x' is not a known preset; valid presets are"):
    build_quantizers(model, variables, ["w9a3x"], test.x[:5])
  with pytest.raises(ValueError, match="listed twice"):
    build_quantizers(model, variables, ["w4a4", "w4a4"], test.x[:5])
  engine = Engine(model, variables, qs[:1], batch_size=64)
  with pytest.raises(ValueError, match="got 0 inputs and 0 labels"):
    engine.run(test.x[:0], test.y[:0], "empty")
  with pytest.raises(ValueError, match="batch_size=0 is not valid"):
    Engine(model, variables, qs, batch_size=0)


SHARD_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from jax.sharding import Mesh
    from qsim import data
    from qsim.evaluate.engine import Engine, build_quantizers
    from qsim.models import get_model
    assert jax.device_count() == 8, jax.devices()
    test = data.load("fashion_mnist_debian", "test", limit=203)
    calib = data.load("fashion_mnist_debian", "train", limit=40)
    model = get_model("lenet_tiny", num_classes=10)
    v = model.init(jax.random.key(3), test.x[:1])
    qs = build_quantizers(model, v, ["w4a4", "tflite_int8", "w8", "fp16"], calib.x)
    eight = Engine(model, v, qs, batch_size=64).run(test.x, test.y)
    one = Engine(model, v, qs, batch_size=64, mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",))).run(test.x, test.y)
    for f in ("float_pred", "quant_pred", "float_finite", "quant_finite"):
      np.testing.assert_array_equal(getattr(eight, f), getattr(one, f))
    # XLA's CPU kernels for 8 vs 64 rows per device may round differently
    # (AMD EPYC: 3 of 1,015 float scores 1 ulp apart): scores to 1e-6.
    for f in ("float_scores", "quant_scores"):
      np.testing.assert_allclose(getattr(eight, f), getattr(one, f), rtol=1e-6, atol=1e-6)
    assert eight.rows() == one.rows() or all(
        all((a[k] == b[k]) or (a[k] != a[k] and b[k] != b[k]) for k in a) for a, b in zip(eight.rows(), one.rows()))
    print("SAME", int((eight.quant_pred != eight.float_pred).sum()))
""")


def test_eight_fake_devices_equal_one(setup):
  out = subprocess.run(
      [sys.executable, "-c", SHARD_SCRIPT],
      cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT},
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "SAME" in out.stdout and int(out.stdout.split()[-1]) > 0


@pytest.fixture(scope="module")
def ckpt(setup, tiny_ckpt):
  return tiny_ckpt


def test_sweep_resumes_after_kill_without_lost_or_duplicated_rows(ckpt, tmp_path):
  args = (
      f"checkpoint={ckpt},quantizers=w4a4+tflite_int8+fp16,limit=150,batch_size=50,calib_samples=30,"
      "shifts=fashion_mnist_debian/c/stripe/1+fashion_mnist_debian/c/fog/2+fashion_mnist_debian/c/shot_noise/5"
      "+fashion_mnist_debian/c/zigzag/3"
  )
  cmd = lambda wd: [
      sys.executable,
      "-m",
      "experiments.evaluate",
      f"--config=experiments/configs/evaluate.py:{args}",
      f"--workdir={wd}",
  ]
  env = {**os.environ, "PYTHONPATH": ROOT}
  killed = tmp_path / "killed"
  proc = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  parts = killed / "parts"
  deadline = time.time() + 300
  while time.time() < deadline and not (
      parts.exists() and len([p for p in os.listdir(parts) if p.endswith(".json")]) >= 2
  ):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = len([p for p in os.listdir(parts) if p.endswith(".json")])
  assert 2 <= done < 5, f"killed after {done} of 5 units"
  assert not (killed / "results.csv").exists()
  subprocess.run(cmd(killed), cwd=ROOT, env=env, check=True, capture_output=True)
  subprocess.run(cmd(tmp_path / "whole"), cwd=ROOT, env=env, check=True, capture_output=True)
  a = open(killed / "results.csv").read().splitlines()
  b = open(tmp_path / "whole" / "results.csv").read().splitlines()
  assert len(a) == 1 + 5 * 3  # header + (clean + 4 sets) x 3 quantizers
  strip = lambda lines: [l.replace(str(killed), "W").replace(str(tmp_path / "whole"), "W") for l in lines]  # noqa: E731
  assert strip(a) == strip(b)
  assert len(set(a)) == len(a)  # no duplicated rows


def test_report_from_a_real_sweep(ckpt, tmp_path):
  from PIL import Image
  from qsim.evaluate import report, sweep

  sets = ["fashion_mnist_debian/c/fog/5", "fashion_mnist_debian/c/rotate/3"]
  path = sweep.run_sweep(
      sweep.SweepConfig(
          checkpoints=(str(ckpt),),
          quantizers=("w2a2", "w4a4", "w8a8", "tflite_int8", "fp16"),
          shifts=tuple(sets),
          limit=120,
          batch_size=60,
          calib_samples=20,
      ),
      str(tmp_path),
  )
  rows = report.read_rows(path)
  assert len(rows) == 3 * 5 and {r["set"] for r in rows} == {"clean", *sets}
  out = report.write_report(str(tmp_path))
  body = open(out).read()
  for section in (
      "## Disagreement per quantizer",
      "## The study's four deployments",
      "## Detecting disagreements",
      "rate_vs_bits.png",
      "heatmap.png",
      "accuracy_vs_disagreement.png",
      "roc.png",
  ):
    assert section in body, section
  w2 = next(r for r in rows if r["quantizer"] == "w2a2" and r["set"] == "clean")
  assert f"| w2a2 | {100 * w2['disagreement_rate']:.2f} |" in body  # the table shows the measured figure
  for png in ("rate_vs_bits.png", "heatmap.png", "accuracy_vs_disagreement.png", "roc.png"):
    assert np.asarray(Image.open(tmp_path / png).convert("L")).std() > 10, png
  with pytest.raises(FileNotFoundError, match="results.csv not found"):
    report.write_report(str(tmp_path / "nothing"))


def test_a_sweep_takes_named_quant_configs(ckpt, tmp_path):
  """Objects end to end: a mixed-precision QuantConfig (per-layer rules) is
  swept like a preset, and its rows carry its name and its default spec's fields."""
  import dataclasses

  from qsim.evaluate import report, sweep
  from qsim.quant import preset

  w4a8 = preset("w4a8")
  mixed = dataclasses.replace(w4a8, name="w4a8_conv1_w8", rules=(("conv1", preset("w8a8").default),))
  c = sweep.SweepConfig(checkpoints=(str(ckpt),), quantizers=("w4a8", mixed), limit=60, batch_size=60, calib_samples=20)
  rows = report.read_rows(sweep.run_sweep(c, str(tmp_path)))
  got = {r["quantizer"]: (r["weight_bits"], r["act_bits"], r["disagreements"]) for r in rows}
  assert set(got) == {"w4a8", "w4a8_conv1_w8"} and got["w4a8_conv1_w8"][:2] == (4.0, 8.0)
  with pytest.raises(ValueError, match="has no name"):
    sweep.SweepConfig(checkpoints=("x",), quantizers=(dataclasses.replace(w4a8, name=""),))
  with pytest.raises(ValueError, match="lists one twice"):
    sweep.SweepConfig(checkpoints=("x",), quantizers=("w4a8", dataclasses.replace(mixed, name="w4a8")))


def test_the_clean_split_whole_and_a_sample_of_each_shifted_set(tiny_ckpt, tmp_path):
  """``shift_limit``: the clean split at ``limit`` (0: whole), each shifted set at its own size; the rows
  say which size each set was measured on."""
  from qsim.evaluate import report, sweep

  sets = ("fashion_mnist_debian/c/fog/5", "fashion_mnist_debian/c/rotate/3")
  c = sweep.SweepConfig(
      checkpoints=(str(tiny_ckpt),), quantizers=("w4a4",), shifts=sets, limit=300, shift_limit=70, calib_samples=20
  )
  rows = {r["set"]: r for r in report.read_rows(sweep.run_sweep(c, str(tmp_path)))}
  assert {k: (r["n"], r["limit"]) for k, r in rows.items()} == {
      "clean": (300, 300),
      sets[0]: (70, 70),
      sets[1]: (70, 70),
  }
  with pytest.raises(ValueError, match="shift_limit"):
    sweep.SweepConfig(checkpoints=(str(tiny_ckpt),), shift_limit=-1)
