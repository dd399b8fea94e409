"""TFLite export, runner and fidelity (the optional extra qsim[tflite], which
the test command installs): the exported float graph is the qsim model, and
qsim's tflite_int8 preset reproduces the real int8 model's outputs."""

import json
import os

import flax
import jax
import numpy as np
import pytest

from qsim.evaluate.engine import build_quantizers
from qsim.export import fidelity, tflite
from qsim.models import get_model
from tests import golden

RNG = np.random.default_rng(0)


def _init(name, x, **kw):
  model = get_model(name, num_classes=5, **kw)
  variables = model.init(jax.random.key(1), x[:1])
  if "batch_stats" in variables:  # non-trivial running statistics, as after training
    variables = dict(variables)
    variables["batch_stats"] = jax.tree.map(
        lambda a: a + RNG.uniform(0.1, 0.5, a.shape).astype(np.float32), variables["batch_stats"]
    )
  return model, variables


IMAGES = RNG.uniform(0, 1, (16, 28, 28, 1)).astype(np.float32)
RGB = RNG.uniform(0, 1, (16, 32, 32, 3)).astype(np.float32)
TOKENS = RNG.integers(0, 50, (16, 12)).astype(np.int32)


@pytest.mark.parametrize(
    "name,x",
    [
        ("lenet_tiny", IMAGES),
        ("nin_tiny", RGB),
        ("resnet20_tiny", RGB),
        ("gru_rows_tiny", IMAGES),
        ("lstm_tiny", TOKENS),
    ],
)
def test_float32_export_is_the_qsim_model(name, x):
  model, variables = _init(name, x)
  blob = tflite.export(model, variables, "float32", x[:1])
  got = tflite.TFLiteModel(blob).outputs(x, batch_size=5)  # batches of 5, 5, 5, 1
  want = np.asarray(model.apply(variables, x))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name,x,kw",
    [
        ("resnet50_tiny", IMAGES, {}),
        ("densenet_tiny", IMAGES, {}),
        ("densenet121_tiny", RGB, {}),
        ("densenet121_tiny", IMAGES, {"input_pad": 2}),
    ],
)
def test_float32_export_of_resnet50_and_densenet(name, x, kw):
  """ResNet-50 (stem, bottlenecks, projection shortcuts) and DenseNet (dense
  blocks, transitions with average pooling), with random weights large
  enough that every layer passes a signal (at init ReLUs silence them).
  ``input_pad``: DenseNet-121's depth on 28x28 inputs, padded to 32x32."""
  model, variables = _init(name, x, **kw)
  rng = np.random.default_rng(2)
  variables = {
      **variables,
      "params": jax.tree.map(lambda a: a + rng.normal(0, 0.3, a.shape).astype(np.float32), variables["params"]),
  }
  got = tflite.TFLiteModel(tflite.export(model, variables, "float32", x[:1])).outputs(x, batch_size=5)
  want = np.asarray(model.apply(variables, x))
  assert np.std(want) > 0.01
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_int8_matches_the_tflite_int8_preset():
  """Same calibration samples, same ranges: qsim's integer-bias, int8-logit
  simulation gives the TFLite int8 model's outputs (up to one output step on
  a rare rounding tie) and its predictions."""
  x = RNG.uniform(0, 1, (300, 28, 28, 1)).astype(np.float32)
  x[:, 8:20, 8:20] *= 3.0  # some structure beyond noise
  x = np.clip(x, 0, 1)
  model, variables = _init("lenet5", x)
  calib, test = x[:100], x[100:]
  t = tflite.TFLiteModel(tflite.export(model, variables, "int8", calib[:1], representative=calib))
  (q,) = build_quantizers(model, variables, ["tflite_int8"], calib)
  qlogits = np.asarray(model.clone(quant=q.config).apply({**variables, "quant_stats": q.quant_stats}, test))
  tlogits = t.outputs(test)
  out_range = q.quant_stats["logits"]
  step = float(out_range["output_hi"].max() - out_range["output_lo"].min()) / 255  # the int8 logits' scale
  steps = np.abs(qlogits - tlogits) / step
  assert steps.max() <= 1.01
  assert np.mean(steps > 0.5) < 0.01
  assert np.mean(qlogits.argmax(1) == tlogits.argmax(1)) >= 0.99
  # without the integer details the simulation is further off
  plain = build_quantizers(model, variables, ["w8a8"], calib)[0]
  plogits = np.asarray(model.clone(quant=plain.config).apply(variables, test))
  assert np.mean(np.abs(plogits - tlogits) / step > 0.5) > np.mean(steps > 0.5)


def test_builtin_kernels_are_another_kernel_family(monkeypatch):
  """kernels='builtin' runs TFLite's own kernels, not XNNPACK: the int8
  model's requantization differs (some logit moves), float32 does not."""
  x = RNG.uniform(0, 1, (400, 28, 28, 1)).astype(np.float32)
  x[:, 8:20, 8:20] *= 3.0
  x = np.clip(x, 0, 1)
  model, variables = _init("lenet5", x)
  calib, test = x[:100], x[100:]
  int8 = tflite.export(model, variables, "int8", calib[:1], representative=calib)
  xnn, builtin = (tflite.TFLiteModel(int8, kernels=k).outputs(test) for k in ("xnnpack", "builtin"))
  assert np.any(xnn != builtin)
  f32 = tflite.export(model, variables, "float32", calib[:1])
  want = tflite.TFLiteModel(f32).outputs(test)
  np.testing.assert_allclose(tflite.TFLiteModel(f32, kernels="builtin").outputs(test), want, rtol=1e-4, atol=1e-4)
  # TensorFlow's own interpreter (the fallback without LiteRT) takes its own enum and gives the same kernels
  monkeypatch.setattr(tflite, "_interpreter_cls", lambda: tflite.tensorflow().lite.Interpreter)
  np.testing.assert_array_equal(tflite.TFLiteModel(int8, kernels="builtin").outputs(test), builtin)


def test_study_way_truncates_uint8_input():
  x = np.full((4, 28, 28, 1), 0.5, np.float32)
  model, variables = _init("lenet_tiny", x)
  t = tflite.TFLiteModel(
      tflite.export(model, variables, "int8", x[:1], representative=x, softmax=True, io_type="uint8")
  )
  assert t.input_dtype == np.uint8
  s, z = t._in["quantization"]
  seen = []
  t._invoke = lambda xi: (seen.append(xi.copy()), np.zeros((1, 5), np.uint8))[1]  # record what the runtime gets
  t.predict_study(x[:1])
  assert seen[0].dtype == np.uint8 and int(seen[0].flat[0]) == int(0.5 / s + z)  # truncated, not rounded


def test_export_bad_input():
  model, variables = _init("lenet_tiny", IMAGES)
  with pytest.raises(ValueError, match="mode='int4' is not valid"):
    tflite.export(model, variables, "int4", IMAGES[:1])
  with pytest.raises(ValueError, match="representative"):
    tflite.export(model, variables, "int8", IMAGES[:1])
  with pytest.raises(ValueError, match="io_type='uint8' needs mode='int8'"):
    tflite.export(model, variables, "float16", IMAGES[:1], io_type="uint8")
  other = flax.linen.Dense(5)
  with pytest.raises(ValueError, match="Dense is not supported"):
    tflite.export(other, other.init(jax.random.key(0), IMAGES[:1, 0, 0]), "float32", IMAGES[:1, 0, 0])
  with pytest.raises(ValueError, match="no 'conv1'"):
    tflite.export(model, {"params": {}}, "float32", IMAGES[:1])
  blob = tflite.export(model, variables, "float32", IMAGES[:1])
  with pytest.raises(ValueError, match="batch_size=0"):
    tflite.TFLiteModel(blob).outputs(IMAGES, batch_size=0)
  with pytest.raises(ValueError, match=r"kernels='xnn' is not valid; choose one of \['xnnpack', 'builtin'\]"):
    tflite.TFLiteModel(blob, kernels="xnn")


def _short(name):
  return name.split("/")[-2] if "/" in name else name


def test_fidelity_run_resumes_and_reports(tiny_ckpt, tmp_path):
  kw = dict(modes=("int8", "float32"), shifts=("c/fog/1",), limit=120, calib_samples=40, batch_size=60)
  path = fidelity.run_fidelity(
      fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=("xnnpack",), **kw), str(tmp_path)
  )[str(tiny_ckpt)]
  # the table is byte-identical to the recorded one (tests/golden.py)
  golden.check("fidelity/results.csv", path, {"<WORKDIR>": tmp_path, "<CHECKPOINT>": tiny_ckpt})
  rows = fidelity.ResultsStore(str(tmp_path)).rows()
  assert sorted((_short(r["set"]), r["mode"], r["kernels"]) for r in rows) == [
      ("clean", "float32", "xnnpack"),
      ("clean", "int8", "xnnpack"),
      ("fog", "float32", "xnnpack"),
      ("fog", "int8", "xnnpack"),
  ]
  by = {(r["set"], r["mode"]): r for r in rows}
  assert by[("clean", "float32")]["agreement"] == 1.0 and by[("clean", "float32")]["runtime_disagreements"] == 0
  assert by[("clean", "int8")]["agreement"] >= 0.99
  assert by[("clean", "int8")]["study_disagreements"] is not None
  assert os.path.getsize(tmp_path / "models" / "int8.tflite") > 0
  parts = sorted(os.listdir(tmp_path / "parts"))
  mtimes = [os.path.getmtime(tmp_path / "parts" / p) for p in parts]
  assert (
      fidelity.run_fidelity(
          fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=("xnnpack",), **kw), str(tmp_path)
      )[str(tiny_ckpt)]
      == path
  )  # nothing recomputed
  assert [os.path.getmtime(tmp_path / "parts" / p) for p in parts] == mtimes

  # resumed with the built-in kernels too: exactly their rows are added, the XNNPACK units stay as they are
  fidelity.run_fidelity(
      fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=("xnnpack", "builtin"), **kw), str(tmp_path)
  )[str(tiny_ckpt)]
  assert [os.path.getmtime(tmp_path / "parts" / p) for p in parts] == mtimes
  assert len(os.listdir(tmp_path / "parts")) == len(parts) + 2  # (clean, builtin), (fog, builtin)
  rows2 = fidelity.ResultsStore(str(tmp_path)).rows()
  assert sorted((_short(r["set"]), r["mode"], r["kernels"]) for r in rows2) == sorted(
      (_short(r["set"]), r["mode"], k) for r in rows for k in ("xnnpack", "builtin")
  )
  bb = {(r["set"], r["mode"]): r for r in rows2 if r["kernels"] == "builtin"}
  assert bb[("clean", "float32")]["agreement"] == 1.0 and "study_disagreements" not in bb[("clean", "int8")]
  assert bb[("clean", "int8")]["quantizer"] == "tflite_int8_builtin" and bb[("clean", "int8")]["agreement"] >= 0.99
  table = open(path).read().splitlines()
  assert "kernels" in table[0].split(",") and len(table) == 1 + 8

  # a part written before the kernels option (no column; TFLite-only columns) is read as xnnpack, and is not
  # recomputed
  old = next(p for p in parts if p.startswith("clean"))
  with open(tmp_path / "parts" / old) as f:
    legacy = [
        {k.replace("runtime_", "tflite_"): v for k, v in r.items() if k not in ("kernels", "runtime")}
        for r in json.load(f)
    ]
  with open(tmp_path / "parts" / old, "w") as f:
    json.dump(legacy, f)
  fidelity.run_fidelity(
      fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=("builtin", "xnnpack"), **kw), str(tmp_path)
  )[str(tiny_ckpt)]
  rows3 = fidelity.ResultsStore(str(tmp_path)).rows()
  assert len(rows3) == 8 and sum(r["kernels"] == "xnnpack" for r in rows3) == 4
  migrated = json.load(open(tmp_path / "parts" / old))
  assert [(r["runtime"], r["kernels"]) for r in migrated] == [("tflite", "xnnpack")] * 2
  assert all("runtime_disagreements" in r and not any(k.startswith("tflite_") for k in r) for r in migrated)

  # a unit stored with another preset (qsim's mapping changed since) is recomputed, and only that one
  fog = next(p for p in parts if not p.startswith("clean"))  # the shifted set's (xnnpack) unit
  stale = json.load(open(tmp_path / "parts" / fog))
  stale[0]["quantizer"] += "_before"
  with open(tmp_path / "parts" / fog, "w") as f:
    json.dump(stale, f)
  before = {p: os.path.getmtime(tmp_path / "parts" / p) for p in os.listdir(tmp_path / "parts")}
  fidelity.run_fidelity(
      fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=("builtin", "xnnpack"), **kw), str(tmp_path)
  )[str(tiny_ckpt)]
  after = {p: os.path.getmtime(tmp_path / "parts" / p) for p in os.listdir(tmp_path / "parts")}
  assert [p for p in after if after[p] != before[p]] == [fog]
  assert [r["quantizer"] for r in json.load(open(tmp_path / "parts" / fog))] == [
      fidelity.preset_of(r["mode"], "xnnpack") for r in stale
  ]
  assert fidelity.unit_done(None, ("int8",), "xnnpack") is None
  assert fidelity.unit_done(stale[1:], ("int8", "float32"), "xnnpack") is False  # a mode missing

  report = open(fidelity.write_report(str(tmp_path))).read()
  # int8 on the built-in kernels is compared with the fixed-point preset
  assert (
      "| tflite | int8 | xnnpack | tflite_int8 |" in report
      and "| tflite | int8 | builtin | tflite_int8_builtin |" in report
  )
  assert os.path.exists(tmp_path / "fidelity.png")
  with pytest.raises(ValueError, match="lists a mode twice"):
    fidelity.run_fidelity(
        fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), modes=("int8", "int8")), str(tmp_path)
    )[str(tiny_ckpt)]
  with pytest.raises(ValueError, match="lists a kernel family twice"):
    fidelity.run_fidelity(
        fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=("builtin", "builtin")), str(tmp_path)
    )[str(tiny_ckpt)]
  with pytest.raises(ValueError, match="kernels is empty"):
    fidelity.run_fidelity(fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=()), str(tmp_path))[
        str(tiny_ckpt)
    ]
  with pytest.raises(
      ValueError, match=r"kernels='gpu' is not valid; choose one of \['xnnpack', 'builtin', 'mlas', 'reference'\]"
  ):
    fidelity.run_fidelity(
        fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), kernels=("xnnpack", "gpu")), str(tmp_path)
    )[str(tiny_ckpt)]
  json.dumps(rows2)  # rows are plain JSON


def test_jaccard_and_compare():
  f = np.array([0, 1, 2, 3])
  c = fidelity.compare(f, np.array([0, 1, 0, 0]), np.array([0, 2, 0, 3]))
  assert c["agreement"] == 0.5 and c["qsim_disagreements"] == 2 and c["runtime_disagreements"] == 2
  assert c["both_disagree"] == 1 and c["jaccard"] == pytest.approx(1 / 3)
  assert fidelity.jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def _fid_rows(model, per_set):
  """Fidelity rows of one run: ``per_set`` maps (set, mode, kernels) -> (agreement, jaccard, dq, dt)."""
  return [
      {
          "set": s,
          "set_index": f"{i:05d}",
          "mode": m,
          "kernels": k,
          "runtime": fidelity.runtime_of(m),
          "quantizer": fidelity.preset_of(m, k),
          "agreement": a,
          "jaccard": j,
          "qsim_disagreements": dq,  # pylint: disable=protected-access
          "runtime_disagreements": dt,
          "checkpoint": f"runs/{model}",
          "model": model,
          "dataset": "fashion_mnist",
      }
      for i, ((s, m, k), (a, j, dq, dt)) in enumerate(per_set.items())
  ]


def test_summary_across_architectures(tmp_path):
  runs = {"lenet5": str(tmp_path / "lenet5"), "resnet20": str(tmp_path / "resnet20")}
  fidelity.ResultsStore(runs["lenet5"]).put(
      "a",
      _fid_rows(
          "lenet5",
          {
              ("clean", "int8", "xnnpack"): (1.0, 1.0, 5, 5),
              ("c/fog/1", "int8", "xnnpack"): (0.99, 0.5, 7, 6),
              ("c/rotate/1", "int8", "xnnpack"): (0.995, 0.75, 3, 4),
              ("clean", "ort_int8", "reference"): (0.98, 0.2, 2, 9),
          },
      ),
  )
  fidelity.ResultsStore(runs["resnet20"]).put(
      "a",
      _fid_rows(
          "resnet20",
          {("clean", "int8", "builtin"): (0.97, 0.1, 1, 2), ("c/fog/1", "int8", "builtin"): (0.999, 0.9, 0, 1)},
      ),
  )
  s = fidelity.summarize(fidelity.ResultsStore(runs["lenet5"]).rows())
  assert [(x["runtime"], x["mode"], x["kernels"]) for x in s] == [
      ("onnxruntime", "ort_int8", "reference"),
      ("tflite", "int8", "xnnpack"),
  ]
  ort, tfl = s
  assert (tfl["clean_agreement"], tfl["min_agreement"], tfl["shifted_sets"]) == (1.0, 0.99, 2)
  assert tfl["mean_agreement"] == pytest.approx(0.9925) and tfl["mean_jaccard"] == pytest.approx(0.625)
  assert (tfl["qsim_disagreements"], tfl["runtime_disagreements"], tfl["quantizer"]) == (15, 15, "tflite_int8")
  assert ort["shifted_sets"] == 0 and np.isnan(ort["min_agreement"]) and ort["quantizer"] == "ort_int8"
  text = open(fidelity.write_summary(runs, str(tmp_path))).read()
  assert "| lenet5 (lenet5) | tflite | int8 | xnnpack | tflite_int8 | 1.0000 | 1.000 | 2 | 0.9900 | 0.9925 |" in text
  assert "| lenet5 (lenet5) | onnxruntime | ort_int8 | reference | ort_int8 | 0.9800 | 0.200 | 0 | - | - |" in text
  assert "| resnet20 (resnet20) | tflite | int8 | builtin | tflite_int8_builtin | 0.9700 |" in text
  assert fidelity._lowest(fidelity.summarize(fidelity.ResultsStore(runs["resnet20"]).rows())[0]) == 0.97  # pylint: disable=protected-access
  assert (tmp_path / "summary.png").stat().st_size > 0
  with pytest.raises(ValueError, match="runs is empty"):
    fidelity.write_summary({}, str(tmp_path))
  with pytest.raises(ValueError, match=r"no fidelity rows in '.*empty'; run experiments.fidelity first"):
    fidelity.write_summary({"x": str(tmp_path / "empty")}, str(tmp_path))


def test_launcher_refuses_checkpoints_sharing_a_folder_name(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "experiments.fidelity",
          "--config=experiments/configs/fidelity.py:checkpoint=a/lenet5+b/lenet5",
          f"--workdir={tmp_path}",
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert out.returncode != 0 and "share a folder name" in out.stderr + out.stdout
  assert os.listdir(tmp_path) == []  # refused before any work


def test_tflite_dynamic_is_xnnpacks_dynamic_fully_connected():
  """A dynamic-range FULLY_CONNECTED on TFLite's default XNNPACK kernels
  quantizes each input row with an inverse scale and a nudged zero point
  (``TensorSpec.qparams='xnnpack_qd8'``): qsim's ``tflite_dynamic`` gives
  every output within a quarter of a step of the runtime's (one differing
  input integer moves an output by a whole step times a nonzero weight),
  the standard grid (``tflite_dynamic_builtin``) does not."""
  from qsim import nn as qnn
  from qsim.quant import preset

  tf = tflite.tensorflow()
  rng = np.random.default_rng(5)
  w = rng.normal(0, 0.1, (64, 48)).astype(np.float32)
  b = rng.normal(0, 0.1, (48,)).astype(np.float32)
  # image rows (pixels k/255, as the row-sequence RNNs read them): x / s lands near ties, where x * inv and
  # x / s round apart
  x = (rng.integers(0, 256, (400, 64)) / 255).astype(np.float32)

  @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32)])
  def f(v):
    return tf.matmul(v, w) + b

  conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
  conv.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
  ref = tflite.TFLiteModel(conv.convert()).outputs(x)
  lo, hi = np.minimum(x.min(1, keepdims=True), 0), np.maximum(x.max(1, keepdims=True), 0)
  step = (hi - lo) / 255 * (np.abs(w).max(0) / 127)  # one input integer x one weight integer
  off = {}
  for name in ("tflite_dynamic", "tflite_dynamic_builtin"):
    layer = qnn.Dense(48, quant=preset(name))
    y = np.asarray(layer.apply({"params": {"kernel": w, "bias": b}}, x))
    off[name] = int(np.sum(np.abs(y - ref) > 0.25 * step))
  print("outputs off by more than a quarter step:", off)
  assert off["tflite_dynamic"] == 0 and off["tflite_dynamic_builtin"] > 0, off
