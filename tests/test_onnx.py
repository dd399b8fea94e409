"""ONNX Runtime as the second runtime (the optional extra qsim[onnx], which the
test command installs): the exported float graph is the qsim model, ORT's
quantizers produce the models the ort_* presets simulate, the fidelity run
covers both runtimes, and bad input fails before any work."""

import builtins
import json

import flax
import numpy as np
import pytest

from qsim.evaluate.engine import build_quantizers
from qsim.export import fidelity
from qsim.export import onnx as onnx_export

from test_export import IMAGES, RGB, RNG, TOKENS, _init  # the same random models and inputs


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
def test_float_onnx_export_is_the_qsim_model(name, x):
  model, variables = _init(name, x)
  ort = onnx_export.ORTModel(onnx_export.export_onnx(model, variables, "ort_float32", x[:1]))
  got = ort.outputs(x, batch_size=5)  # batches of 5, 5, 5, 1
  np.testing.assert_allclose(got, np.asarray(model.apply(variables, x)), rtol=1e-4, atol=1e-4)


def _structured(n):
  x = RNG.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
  x[:, 8:20, 8:20] *= 3.0  # some structure beyond noise
  return np.clip(x, 0, 1)


def test_ort_int8_preset_is_the_qdq_model():
  """Same calibration samples, same ranges: qsim's ort_int8 gives the QDQ
  model's outputs, run as written (reference kernels), up to one output step
  on a rounding tie (1.0% of these random-weight logits; 0.1% on a trained
  LeNet-5, see test_fidelity_archs); without the int32 bias and 8-bit logits
  it is further off."""
  x = _structured(300)
  model, variables = _init("lenet5", x)
  calib, test = x[:100], x[100:]
  blob = onnx_export.export_onnx(model, variables, "ort_int8", calib[:1], representative=calib)
  ref = onnx_export.ORTModel(blob, kernels="reference")
  assert not ref.per_sample
  (q,) = build_quantizers(model, variables, ["ort_int8"], calib)
  qlogits = np.asarray(model.clone(quant=q.config).apply({**variables, "quant_stats": q.quant_stats}, test))
  rlogits = ref.outputs(test)
  r = q.quant_stats["logits"]
  step = float(r["output_hi"].max() - r["output_lo"].min()) / 255  # the 8-bit logits' scale
  steps = np.abs(qlogits - rlogits) / step
  assert steps.max() <= 1.01
  assert np.mean(qlogits.argmax(1) == rlogits.argmax(1)) >= 0.99
  plain = build_quantizers(model, variables, ["w8a8"], calib)[0]
  plogits = np.asarray(model.clone(quant=plain.config).apply(variables, test))
  assert np.mean(np.abs(plogits - rlogits) / step > 0.5) > np.mean(steps > 0.5)


def test_dynamic_models_run_one_sample_at_a_time():
  """DynamicQuantizeLinear ranges over the whole input tensor: batched, a
  sample's output depends on its batch mates; ORTModel runs a dynamic model
  one sample at a time, which is what qsim's per-example ranges simulate."""
  x = _structured(64)
  model, variables = _init("lenet5", x)
  blob = onnx_export.export_onnx(model, variables, "ort_dynamic_u8", x[:1])
  ort = onnx_export.ORTModel(blob)
  assert ort.per_sample
  one_by_one = ort.outputs(x, batch_size=64)
  alone = np.concatenate([ort.outputs(x[i : i + 1]) for i in range(len(x))])
  np.testing.assert_array_equal(one_by_one, alone)
  x2 = x.copy()
  x2[0] *= 0  # a batch mate with another range changes the others' outputs when batched
  batched = ort._sess.run(None, {"x": x2})[0]  # pylint: disable=protected-access
  assert not np.array_equal(batched[1:], one_by_one[1:])
  (q,) = build_quantizers(model, variables, ["ort_dynamic_u8"], x)
  qlogits = np.asarray(model.clone(quant=q.config).apply(variables, x))
  assert np.mean(qlogits.argmax(1) == one_by_one.argmax(1)) >= 0.98


def test_onnx_bad_input(monkeypatch):
  model, variables = _init("lenet_tiny", IMAGES)
  with pytest.raises(ValueError, match=r"mode='int8' is not valid; choose one of \['ort_int8'"):
    onnx_export.export_onnx(model, variables, "int8", IMAGES[:1])
  with pytest.raises(ValueError, match="representative"):
    onnx_export.export_onnx(model, variables, "ort_int8", IMAGES[:1])
  with pytest.raises(ValueError, match="export: Dense is not supported"):  # before any conversion work
    onnx_export.export_onnx(flax.linen.Dense(3), {}, "ort_float32", RGB[:1])
  blob = onnx_export.export_onnx(model, variables, "ort_float32", IMAGES[:1])
  with pytest.raises(ValueError, match=r"kernels='cuda' is not valid; choose one of \['mlas', 'reference'\]"):
    onnx_export.ORTModel(blob, kernels="cuda")
  with pytest.raises(ValueError, match="batch_size=0"):
    onnx_export.ORTModel(blob).outputs(IMAGES, batch_size=0)
  real_import = builtins.__import__

  def no_ort(name, *a, **kw):
    if name == "onnxruntime":
      raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
    return real_import(name, *a, **kw)

  monkeypatch.setattr(builtins, "__import__", no_ort)
  with pytest.raises(ImportError, match=r"pip install 'qsim\[onnx\]'"):
    onnx_export.export_onnx(model, variables, "ort_float32", IMAGES[:1])


def test_fidelity_run_covers_both_runtimes(tiny_ckpt, tmp_path, monkeypatch):
  kw = dict(shifts=("c/fog/1",), limit=100, calib_samples=40, batch_size=50, study=False)
  with pytest.raises(ValueError, match=r"run on onnxruntime, but kernels=\['xnnpack'\] names none"):
    fidelity.run_fidelity(
        fidelity.FidelityConfig(checkpoints=(str(tiny_ckpt),), modes=("int8", "ort_int8"), kernels=("xnnpack",), **kw),
        str(tmp_path),
    )[str(tiny_ckpt)]
  path = fidelity.run_fidelity(
      fidelity.FidelityConfig(
          checkpoints=(str(tiny_ckpt),),
          modes=("int8", "ort_int8", "ort_float32"),
          kernels=("xnnpack", "mlas", "reference"),
          **kw,
      ),
      str(tmp_path),
  )[str(tiny_ckpt)]
  rows = fidelity.ResultsStore(str(tmp_path)).rows()
  got = sorted(
      (r["set"].split("/")[-2] if "/" in r["set"] else r["set"], r["runtime"], r["mode"], r["kernels"]) for r in rows
  )
  want = sorted(
      (s, rt, m, k)
      for s in ("clean", "fog")
      for rt, m, k in [
          ("tflite", "int8", "xnnpack"),
          ("onnxruntime", "ort_int8", "mlas"),
          ("onnxruntime", "ort_int8", "reference"),
          ("onnxruntime", "ort_float32", "mlas"),
          ("onnxruntime", "ort_float32", "reference"),
      ]
  )
  assert got == want
  by = {(r["set"], r["mode"], r["kernels"]): r for r in rows}
  assert by["clean", "ort_float32", "reference"]["agreement"] == 1.0
  assert by["clean", "ort_int8", "reference"]["agreement"] >= 0.99
  assert all(r["quantizer"] == fidelity.preset_of(r["mode"], r["kernels"]) for r in rows)
  assert {r["quantizer"] for r in rows if r["kernels"] != "mlas"} == {"tflite_int8", "ort_int8", "float32"}
  assert (tmp_path / "models" / "ort_int8.onnx").stat().st_size > 0
  assert not list((tmp_path / "models").glob("*.tmp"))
  report = open(fidelity.write_report(str(tmp_path))).read()
  assert "| onnxruntime | ort_int8 | reference | ort_int8 |" in report and "| tflite | int8 | xnnpack |" in report
  # resumed: nothing recomputed, so a missing runtime is not even needed
  monkeypatch.setattr(fidelity, "export_onnx", lambda *a, **k: pytest.fail("re-exported"))
  assert (
      fidelity.run_fidelity(
          fidelity.FidelityConfig(
              checkpoints=(str(tiny_ckpt),),
              modes=("int8", "ort_int8", "ort_float32"),
              kernels=("xnnpack", "mlas", "reference"),
              **kw,
          ),
          str(tmp_path),
      )[str(tiny_ckpt)]
      == path
  )
  json.dumps(rows)


def test_pair_saturation_excess_is_numpy_int16_pairs():
  """``pair_saturation_excess``: adjacent products along K summed, clipped to
  int16, summed (odd K: the last product alone), minus the exact sum."""
  from qsim.nn.layers import pair_saturation_excess

  rng = np.random.default_rng(0)
  for k in (1, 2, 7, 16, 33):
    u = rng.integers(0, 256, (37, k)).astype(np.int64)
    u[:5] = 255
    w = rng.integers(-127, 128, (k, 6)).astype(np.int64)
    w[:, 0], w[:, 1] = 127, -127
    up, wp = np.pad(u, ((0, 0), (0, k % 2))), np.pad(w, ((0, k % 2), (0, 0)))
    pairs = (up[:, :, None] * wp[None]).reshape(37, -1, 2, 6).sum(2)
    want = np.clip(pairs, -32768, 32767).sum(1) - u @ w
    for chunk in (1 << 22, 50):  # one block; rows in chunks (lax.map)
      got = np.asarray(pair_saturation_excess(u.astype(np.float32), w.astype(np.float32), chunk_elems=chunk))
      np.testing.assert_array_equal(got, want)
    if k > 1:
      assert (want[:5, :2] != 0).all()  # the forced pairs saturate


def test_mlas_u8s8_detection(monkeypatch):
  monkeypatch.delenv("QSIM_ORT_U8S8_SATURATES", raising=False)
  assert onnx_export.mlas_u8s8_saturates("flags : fpu sse avx avx2 fma")
  assert not onnx_export.mlas_u8s8_saturates("flags : fpu avx avx2 avx512f avx512_vnni")
  assert not onnx_export.mlas_u8s8_saturates("flags : fpu avx avx2 avx_vnni")
  assert not onnx_export.mlas_u8s8_saturates("flags : fpu sse4_2")
  assert onnx_export.ort_preset("ort_int8", "mlas", saturates=True) == "ort_int8_avx2"
  assert onnx_export.ort_preset("ort_int8", "reference", saturates=True) == "ort_int8"
  assert onnx_export.ort_preset("ort_dynamic", "reference", saturates=True) == "ort_dynamic_avx2"
  assert onnx_export.ort_preset("ort_dynamic_u8", "mlas", saturates=True) == "ort_dynamic_u8"
  assert onnx_export.ort_preset("ort_int8", "mlas", saturates=False) == "ort_int8_mlas"
  assert onnx_export.ort_preset("ort_int8", "reference", saturates=False) == "ort_int8"
  monkeypatch.setenv("QSIM_ORT_U8S8_SATURATES", "0")
  assert onnx_export.ort_preset("ort_int8", "mlas") == "ort_int8_mlas"


def test_ort_int8_mlas_presets_are_the_fused_model():
  """A LeNet-5 whose convolution kernels are all positive (per-channel int8
  weights near 127) on inputs near the top of their uint8 range, run by
  ORT's default (mlas, fused QLinearConv/QGemm) session. Where MLAS
  saturates the U8S8 int16 pair sums (x86 AVX2 without VNNI) the preset
  ort_preset picks is ort_int8_avx2, elsewhere ort_int8_mlas: it gives the
  session's logits except on rare near-ties of a calibrated scale (ORT
  computes its scales from its own float graph's ranges, a few ulps from
  qsim's), and one step at an intermediate tensor can move a logit by more
  than one step; the other preset is far off. ort_int8 (float arithmetic on
  dequantized operands, the QDQ graph as written) rounds more near-ties
  the other way than the exact-accumulator requantization."""
  import jax

  x = np.random.default_rng(0).uniform(0, 1, (160, 28, 28, 1)).astype(np.float32)  # its own draw: any test order
  x[:, 8:20, 8:20] *= 3.0
  x = np.clip(x * 2.0, 0, 1)
  model, variables = _init("lenet5", x)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: np.abs(v) if "conv" in jax.tree_util.keystr(p) and "kernel" in jax.tree_util.keystr(p) else v,
      flax.core.unfreeze(variables["params"]),
  )
  variables = {**variables, "params": params}
  calib, test = x[:100], x[100:]
  blob = onnx_export.export_onnx(model, variables, "ort_int8", calib[:1], representative=calib)
  rlogits = onnx_export.ORTModel(blob, kernels="mlas", num_threads=1).outputs(
      test
  )  # one thread: a fixed kernel schedule
  chosen = onnx_export.ort_preset("ort_int8", "mlas")
  other = "ort_int8_mlas" if chosen == "ort_int8_avx2" else "ort_int8_avx2"
  names = [chosen, other, "ort_int8"]
  quantizers = build_quantizers(model, variables, names, calib)
  r = quantizers[0].quant_stats["logits"]
  step = float(r["output_hi"].max() - r["output_lo"].min()) / 255
  off = {}
  for name, q in zip(names, quantizers):
    lg = np.asarray(model.clone(quant=q.config).apply({**variables, "quant_stats": q.quant_stats}, test))
    off[name] = np.abs(lg - rlogits) / step
    if name == chosen:
      assert np.mean(lg.argmax(1) == rlogits.argmax(1)) >= 0.98
  # 6 draws of this test on a VNNI CPU: 0-2.7% of logits off by a step, at most 2 steps
  assert np.mean(off[chosen] > 0.5) <= 0.03, np.mean(off[chosen] > 0.5)
  assert off[chosen].max() <= 2.01, off[chosen].max()
  assert np.mean(off[chosen] > 0.5) <= np.mean(off["ort_int8"] > 0.5)
  assert np.mean(off[other] > 0.5) > 0.2, np.mean(off[other] > 0.5)


def _satsum(p):
  """Pair-saturated sum over the last axis (adjacent pairs, odd: last alone)."""
  p = np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, p.shape[-1] % 2)])
  return np.clip(p.reshape(p.shape[:-1] + (-1, 2)).sum(-1), -32768, 32767).sum(-1)


@pytest.mark.skipif(
    not onnx_export.mlas_u8s8_saturates(),
    reason="MLAS saturates U8S8 pairs only on x86 AVX2 without VNNI (or set QSIM_ORT_U8S8_SATURATES=1)",
)
def test_mlas_u8s8_recipe_on_single_ops():
  """The recipe u8s8_pairs simulates, on single ORT ops with inputs that force
  saturation: MatMulInteger pairs adjacent K on raw uint8 (zero point
  subtracted after, exactly); QLinearConv pairs in NHWC im2col order (kh, kw,
  cin) with the padding holding the zero point, then fp32 requantization
  rounded half to even (NCHW order (cin, kh, kw) does not match);
  ConvInteger does not saturate."""
  import onnxruntime as ort
  from onnx import TensorProto as T, helper as h, numpy_helper as nh

  rng = np.random.default_rng(1)

  def run(nodes, inputs, inits, feed, out_type):
    g = h.make_graph(
        nodes,
        "g",
        inputs,
        [h.make_tensor_value_info("Y", out_type, None)],
        [nh.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    blob = h.make_model(g, opset_imports=[h.make_opsetid("", 13)]).SerializeToString()
    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, feed)[0].astype(np.int64)

  # MatMulInteger, odd K, zero point 17
  a = rng.integers(0, 256, (3, 33)).astype(np.uint8)
  a[0] = 255
  b = rng.integers(-128, 128, (33, 5)).astype(np.int8)
  b[:, 0] = 127
  y = run(
      [h.make_node("MatMulInteger", ["A", "B", "za"], ["Y"])],
      [h.make_tensor_value_info("A", T.UINT8, [3, 33])],
      {"B": b, "za": np.uint8(17)},
      {"A": a},
      T.INT32,
  )
  ai, bi = a.astype(np.int64), b.astype(np.int64)
  np.testing.assert_array_equal(y, _satsum(ai[:, :, None].transpose(0, 2, 1) * bi.T[None]) - 17 * bi.sum(0))
  assert (y != (ai - 17) @ bi).any()

  # QLinearConv / ConvInteger, 3 input channels, 3x3, padding 1, zero point 10
  c, o, k, hw, xz = 3, 4, 3, 8, 10
  x = rng.integers(0, 256, (1, c, hw, hw)).astype(np.uint8)
  x[0, :, : hw // 2] = 255
  w = rng.integers(-127, 128, (o, c, k, k)).astype(np.int8)
  w[0] = 127
  xs, ws, ys, bias = np.float32(0.05), np.full(o, 0.01, np.float32), np.float32(0.02), np.arange(o, dtype=np.int32)
  xin = [h.make_tensor_value_info("X", T.UINT8, [1, c, hw, hw])]
  yq = run(
      [
          h.make_node(
              "QLinearConv",
              ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz", "B"],
              ["Y"],
              pads=[1] * 4,
              kernel_shape=[k, k],
          )
      ],
      xin,
      {
          "xs": xs,
          "xz": np.uint8(xz),
          "W": w,
          "ws": ws,
          "wz": np.zeros(o, np.int8),
          "ys": ys,
          "yz": np.uint8(128),
          "B": bias,
      },
      {"X": x},
      T.UINT8,
  )[0]
  yi = run(
      [h.make_node("ConvInteger", ["X", "W", "xz"], ["Y"], pads=[1] * 4, kernel_shape=[k, k])],
      xin,
      {"W": w, "xz": np.uint8(xz)},
      {"X": x},
      T.INT32,
  )[0]
  xp = np.pad(x[0].astype(np.int64), ((0, 0), (1, 1), (1, 1)), constant_values=xz)
  patches = np.stack([xp[:, i : i + hw, j : j + hw] for i in range(k) for j in range(k)], 1)  # c, kk, h, w
  prod = patches[None] * w.astype(np.int64).reshape(o, c, k * k)[:, :, :, None, None]  # o, c, kk, h, w
  corr = xz * w.astype(np.int64).sum((1, 2, 3))[:, None, None]
  nhwc = _satsum(np.moveaxis(prod.transpose(0, 2, 1, 3, 4).reshape(o, -1, hw, hw), 1, -1)) - corr
  nchw = _satsum(np.moveaxis(prod.reshape(o, -1, hw, hw), 1, -1)) - corr
  np.testing.assert_array_equal(yi, prod.sum((1, 2)) - corr)  # ConvInteger: exact

  def requant(acc):
    scale = (xs * ws / ys).astype(np.float32)[:, None, None]
    return np.clip(np.rint((acc + bias[:, None, None]).astype(np.float32) * scale).astype(np.int64) + 128, 0, 255)

  np.testing.assert_array_equal(yq, requant(nhwc))
  assert (yq != requant(nchw)).any() and (yq != requant(prod.sum((1, 2)) - corr)).any()


@pytest.mark.parametrize("mode", ["ort_dynamic", "ort_int8"])
def test_recurrent_gates_saturate_as_mlas_does(mode):
  """A GRU-rows-tiny whose kernels are all positive (int8 weights near 127)
  on bright image rows (uint8 activations near 255), run by ORT's default
  session: where MLAS saturates U8S8 int16 pair sums (x86 AVX2 without
  VNNI) its gate MatMulInteger / QGemm outputs saturate, and the preset
  ``ort_preset`` picks (``ort_dynamic_avx2`` / ``ort_int8_avx2`` there)
  saturates each gate matmul the same way (the cell's operands are
  quantized per gate, or read from their stored grids); the other preset
  is far off. Elsewhere the roles swap."""
  import jax

  rng = np.random.default_rng(1)
  x = np.clip(rng.uniform(0.6, 1.0, (200, 28, 28)), 0, 1).astype(np.float32)
  model, variables = _init("gru_rows_tiny", x)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: np.abs(v) if "kernel" in jax.tree_util.keystr(p) else v, flax.core.unfreeze(variables["params"])
  )
  variables = {**variables, "params": params}
  calib, test = x[:100], x[100:]
  blob = onnx_export.export_onnx(model, variables, mode, calib[:1], representative=calib)
  rlogits = onnx_export.ORTModel(blob, kernels="mlas", num_threads=1).outputs(test)
  chosen = onnx_export.ort_preset(mode, "mlas")
  pair = {"ort_dynamic": ("ort_dynamic_avx2", "ort_dynamic"), "ort_int8": ("ort_int8_avx2", "ort_int8_mlas")}[mode]
  (other,) = set(pair) - {chosen}
  quantizers = build_quantizers(model, variables, [chosen, other], calib)
  diff = {}
  for q in quantizers:
    v = dict(variables, **({} if q.quant_stats is None else {"quant_stats": q.quant_stats}))
    diff[q.name] = np.abs(np.asarray(model.clone(quant=q.config).apply(v, test)) - rlogits)
  scale = np.abs(rlogits).max()
  print(mode, {k: (float(np.mean(d > 0.01 * scale)), float(d.max() / scale)) for k, d in diff.items()})
  # measured on an AVX2 CPU without VNNI (share of logits off by > 1% of the largest, largest difference):
  # ort_dynamic_avx2 0 / 1.6e-5, ort_dynamic 1.0 / 0.28; ort_int8_avx2 0 / 0.009, ort_int8_mlas 0.84 / 0.34.
  # ort_int8_avx2 saturates only the QGemm side of each gate (the side with the constant bias); with the
  # other side (a float Gemm in ORT's fused graph) saturating too it was 0.49 / 0.036.
  assert diff[chosen].max() * 5 < diff[other].max(), (chosen, other)
  assert np.mean(diff[chosen] > 0.01 * scale) < np.mean(diff[other] > 0.01 * scale)
  if chosen in ("ort_dynamic_avx2", "ort_int8_avx2"):
    assert np.mean(diff[chosen] > 0.01 * scale) <= 0.01
