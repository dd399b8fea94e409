"""The quantization debugger (qsim.analysis): statistics, one-at-a-time
sweeps, the mixed-precision search, its report and its bad input."""

import dataclasses
import importlib.util
import itertools
import json
import os

import jax
import numpy as np
import pytest

from qsim.analysis import job, layers, mixed, stats
from qsim.evaluate.engine import Engine, build_quantizers
from qsim.models import get_model
from qsim.quant import layer_preset, make_config


def _tiny():
  model = get_model("lenet_tiny", num_classes=10)
  x = np.random.RandomState(0).rand(24, 28, 28, 1).astype(np.float32)
  return model, model.init(jax.random.key(1), x[:1]), x


def test_tensor_stats_against_numpy():
  rng = np.random.RandomState(0)
  x = rng.randn(50, 7)
  s = np.full((1, 7), 0.05)
  q = np.round(x / s) * s
  e = q - x
  got = stats.tensor_stats(x, q, s)
  assert got["sqnr_db"] == pytest.approx(10 * np.log10((x**2).sum() / (e**2).sum()))
  assert got["mse"] == pytest.approx((e**2).mean())
  assert got["max_abs_error"] == pytest.approx(np.abs(e).max())
  assert got["cosine"] == pytest.approx((x * q).sum() / np.linalg.norm(x) / np.linalg.norm(q))
  assert got["rmse_over_scale"] == pytest.approx(np.sqrt(((e / s) ** 2).mean()))
  assert 0.25 < got["rmse_over_scale"] < 0.33  # uniform rounding error: about 1/sqrt(12)
  exact = stats.tensor_stats(x, x)
  assert exact["sqnr_db"] == float("inf") and exact["mse"] == 0 and np.isnan(exact["rmse_over_scale"])
  with pytest.raises(ValueError, match="shape"):
    stats.tensor_stats(x, x[:3])


def test_layers_and_weight_statistics_match_a_numpy_quantizer():
  model, variables, x = _tiny()
  found = layers.find_layers(model, x, variables)
  kernels = {l.name: l for l in found}
  assert [l.name for l in found] == ["conv1", "conv2", "dense1", "head"]
  assert all(l.weights == variables["params"][l.name]["kernel"].size for l in found)
  rows = stats.layer_statistics(model, variables, x, found, layer_preset("w4a8"))
  assert {(r["layer"], r["tensor"]) for r in rows} == {
      (n, t) for n in kernels for t in ("weight", "input", "output_alone", "output_all")
  }
  for name in kernels:
    w = np.asarray(variables["params"][name]["kernel"], np.float64)
    scale = np.abs(w).reshape(-1, w.shape[-1]).max(0) / 7.0  # symmetric per-channel int4
    q = np.clip(np.round(w / scale), -7, 7) * scale
    row = next(r for r in rows if r["layer"] == name and r["tensor"] == "weight")
    want = stats.tensor_stats(w, q, scale)
    assert row["sqnr_db"] == pytest.approx(want["sqnr_db"], rel=1e-5)
    assert row["rmse_over_scale"] == pytest.approx(want["rmse_over_scale"], rel=1e-4)
  first = [r for r in rows if r["layer"] == "conv1" and r["tensor"].startswith("output")]
  assert first[0]["sqnr_db"] == first[1]["sqnr_db"]  # nothing is quantized before the first layer
  last = {r["tensor"]: r["sqnr_db"] for r in rows if r["layer"] == "head"}
  assert last["output_all"] < last["output_alone"]  # errors compound


def test_enable_one_is_that_layer_alone_bit_for_bit_and_one_compilation():
  model, variables, x = _tiny()
  found = layers.find_layers(model, x, variables)
  spec = layer_preset("w2a4")
  grid = layers.one_at_a_time(found, spec)
  engine = Engine(model, variables, build_quantizers(model, variables, grid, x), batch_size=24)
  res = engine.run(x, np.zeros(len(x), np.int32))
  assert engine.compilations == 1 and len(grid) == 2 * len(found)
  for i, layer in enumerate(found):
    alone = make_config(None, rules={layers.rule(layer.name): spec}, name="alone")
    one = Engine(model, variables, build_quantizers(model, variables, [alone], x), batch_size=24).run(
        x, np.zeros(len(x), np.int32)
    )
    np.testing.assert_array_equal(res.quant_pred[i], one.quant_pred[0])
    np.testing.assert_array_equal(res.quant_scores[i], one.quant_scores[0])
  assert (res.quant_scores[: len(found)] != res.float_scores[None]).any()  # each does quantize something


def test_the_ilp_is_exact_and_candidates_respect_the_budget():
  rng = np.random.RandomState(0)
  found = [layers.Layer(f"l{i}", "Dense", w, (), f"l{i}") for i, w in enumerate((100, 2000, 50, 700))]
  menu = (2, 4, 8)
  cost = rng.rand(4, 3) * np.asarray([8.0, 2.0, 0.5])
  for budget in (2.0, 3.1, 4.0, 5.5, 8.0):
    idx = mixed.solve(cost, [l.weights for l in found], menu, budget)
    brute = min(
        (sum(cost[i, a] for i, a in enumerate(combo)), combo)
        for combo in itertools.product(range(3), repeat=4)
        if mixed.average_bits(found, [menu[a] for a in combo]) <= budget + 1e-9
    )
    assert sum(cost[i, a] for i, a in enumerate(idx)) == pytest.approx(brute[0])
  cands = mixed.candidates(cost, found, menu, 4.0, count=40)
  assert len(cands) == len(set(cands)) == 40
  assert mixed.average_bits(found, cands[0]) <= 4.0
  assert sum(mixed.average_bits(found, c) <= 4.0 for c in cands) >= 20
  assert mixed.pareto([(2, 5.0), (3, 6.0), (3, 4.0), (4, 4.0), (5, 1.0)]) == [0, 2, 4]


def test_bad_input_fails_before_any_evaluation(tmp_path):
  ok = dict(checkpoint=str(tmp_path / "none"))
  with pytest.raises(ValueError, match=r"budget=1.5 .*below the smallest menu entry \(2 bits\)"):
    job.AnalysisConfig(**ok, budget=1.5)
  with pytest.raises(ValueError, match="menu entry 'int3' is not valid"):
    job.AnalysisConfig(**ok, menu=(4, "int3"))
  with pytest.raises(ValueError, match="menu entry 17 is not valid"):
    job.AnalysisConfig(**ok, menu=(4, 17))
  with pytest.raises(ValueError, match="lists an entry twice"):
    job.AnalysisConfig(**ok, menu=(4, 4))
  with pytest.raises(ValueError, match="selection='test' is not valid"):
    job.AnalysisConfig(**ok, selection="test")
  with pytest.raises(ValueError, match="not a known preset"):
    job.AnalysisConfig(**ok, quantizer="int4")
  with pytest.raises(ValueError, match="integer weights"):
    job.AnalysisConfig(**ok, base="fp16")
  model, variables, x = _tiny()
  typo = make_config("w4a8", rules={"^conv9$": "w8a8"}, name="typo")
  with pytest.raises(ValueError, match=r"quantizer 'typo': rule '\^conv9\$' matches no layer.*'conv1'"):
    build_quantizers(model, variables, [typo], x)


def _load(path):
  spec = importlib.util.spec_from_file_location("mixed_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_job_writes_its_report_and_the_chosen_config_reproduces_it(tiny_ckpt, tmp_path):
  from qsim.evaluate import sweep
  from qsim.results import read_rows

  small = "limit=60,shifts=c/fog/1,batch_size=60,calib_samples=20"
  c = job.AnalysisConfig(
      checkpoint=str(tiny_ckpt),
      shifts=("c/fog/1",),
      limit=60,
      stats_samples=16,
      selection_samples=120,
      candidates=12,
      rounds=1,
      menu=(2, 4, 8),
      budget=4.0,
      batch_size=60,
      calib_samples=20,
  )
  path = job.run_analysis(c, str(tmp_path))
  text = open(path).read()
  for part in ("Per-layer tensor statistics", "enable:conv1", "disable:head", "Mixed precision", "pareto.png"):
    assert part in text
  for f in ("layers.png", "pareto.png", "stats.csv", "search.json", "mixed_config.py"):
    assert os.path.getsize(tmp_path / f) > 0
  search = json.load(open(tmp_path / "search.json"))
  # two rounds of 12 (the ILP's, then local search), in one compiled program
  assert 12 < len(search["candidates"]) <= 24 and search["candidate_compilations"] == 1
  assert len({tuple(m["entries"]) for m in search["candidates"]}) == len(search["candidates"])
  assert search["candidates"][search["chosen"]]["average_bits"] <= 4.0
  assert search["selection"] == "val[:120]"
  swept = read_rows(str(tmp_path / "sweep" / "results.csv"))
  assert len({r["quantizer"] for r in swept}) == 3 + 2 * 4 and len(swept) == 2 * 11
  reported = {
      r["set"]: r["disagreements"]
      for r in read_rows(str(tmp_path / "frontier" / "results.csv"))
      if r["quantizer"] == "mixed"
  }
  cfg = _load(tmp_path / "mixed_config.py").get_config(small)
  again = read_rows(sweep.run_sweep(sweep.SweepConfig.from_config_dict(cfg), str(tmp_path / "eval")))
  assert {r["set"]: r["disagreements"] for r in again} == reported
  os.remove(path)
  assert job.run_analysis(c, str(tmp_path)) == path and open(path).read() == text  # stages resume, same report
  with pytest.raises(ValueError, match=r"other settings \(budget=4.0\)"):
    job.run_analysis(dataclasses.replace(c, budget=5.0), str(tmp_path))
