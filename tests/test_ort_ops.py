"""ONNX Runtime's fused integer elementwise ops, as the ``ort_int8_mlas`` /
``ort_int8_avx2`` presets simulate them (``qsim.quant.fixed_point``:
``fma``, ``int8_add(recipe='mlas')``, ``mlas_mul``, ``mlas_mean``), checked
against the runtime: a one-op float ONNX model (Add, Mul or
GlobalAveragePool), quantized by ORT's own ``quantize_static`` (QDQ, uint8
activations, MinMax), run on ORT's default session, which fuses it into
QLinearAdd / QLinearMul / QLinearGlobalAveragePool on MLAS. Each recipe is
fed the quantized model's own scales and zero points, so what is compared
is the arithmetic alone. Needs the qsim[onnx] extra (installed by the test
extra)."""

from fractions import Fraction

import jax
import numpy as np
import pytest

from qsim.quant import fixed_point

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

f32 = np.float32
U8 = fixed_point.UINT8_SHIFT


def _exact_f32(value: Fraction) -> np.float32:
  """``value`` rounded once to float32, half to even (exact: compared as fractions)."""
  x = f32(float(value))
  cands = [x, np.nextafter(x, f32(np.inf)), np.nextafter(x, f32(-np.inf))]
  best = min(cands, key=lambda c: (abs(Fraction(float(c)) - value), int(np.asarray(c).view(np.int32)) & 1))
  return f32(best)


def test_fma_is_one_rounding():
  """The emulated FMA equals the exactly rounded ``a * b + c`` on random triples and on near-ties
  (products a hair above or below half a unit of ``c``'s last place, where a float64 sum rounded again
  to float32 is wrong)."""
  rng = np.random.default_rng(0)
  n = 4000
  a = (rng.uniform(0.5, 2, n) * 2.0 ** rng.integers(-12, 12, n)).astype(f32)
  b = (rng.uniform(0.5, 2, n) * 2.0 ** rng.integers(-12, 12, n) * rng.choice([-1, 1], n)).astype(f32)
  c = (rng.uniform(0.5, 2, n) * 2.0 ** rng.integers(-20, 20, n) * rng.choice([-1, 1], n)).astype(f32)
  # near-ties: c = 2^e, a * b = half an ulp of c times (1 + a few ulps of a*b)
  e = rng.integers(-4, 9, n)
  half_ulp = np.ldexp(1.0, e - 24)
  a2 = rng.integers(1, 256, n).astype(f32)  # as MLAS's uint8 operands
  b2 = (half_ulp / a2.astype(np.float64) * (1 + rng.integers(-3, 4, n) * 2.0**-23)).astype(f32)
  c2 = np.ldexp(1.0, e).astype(f32) * rng.choice([-1, 1], n).astype(f32)
  a, b, c = (np.concatenate(v) for v in ((a, a2), (b, b2), (c, c2)))
  got = np.asarray(jax.jit(fixed_point.fma)(a, b, c))
  want = np.array(
      [_exact_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))) for x, y, z in zip(a, b, c)]
  )
  via_f64 = (a.astype(np.float64) * b + c).astype(f32)
  assert (via_f64 != want).sum() > 0, "no near-tie among the triples: the test would not catch a double rounding"
  np.testing.assert_array_equal(got, want)


def _model(nodes, inputs, outputs, initializers=()):
  from onnx import helper

  graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
  return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fused(model, feeds, tmp_path, op: str):
  """ORT's quantized model of ``model`` (calibrated on ``feeds``), its default session, and its
  initializers (scales, zero points, quantized constants); asserts the session fused ``op``."""
  from onnx import numpy_helper
  from onnxruntime import quantization as q

  raw, out = str(tmp_path / "float.onnx"), str(tmp_path / "quant.onnx")
  onnx.save(model, raw)

  class Reader:

    def __init__(self):
      self.i = 0

    def get_next(self):
      self.i += 1
      return feeds[self.i - 1] if self.i <= len(feeds) else None

    def rewind(self):
      self.i = 0

  q.quantize_static(
      raw,
      out,
      Reader(),
      quant_format=q.QuantFormat.QDQ,
      per_channel=True,
      activation_type=q.QuantType.QUInt8,
      weight_type=q.QuantType.QInt8,
      calibrate_method=q.CalibrationMethod.MinMax,
  )
  opts = ort.SessionOptions()
  opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
  sess = ort.InferenceSession(out, opts, providers=["CPUExecutionProvider"])
  assert op in {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}
  init = {i.name: numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
  return sess, init


def _grid(init, name):
  """A tensor's (scale, zero point) in the quantized model, the zero point on qsim's int8 grid."""
  return f32(init[f"{name}_scale"]), int(init[f"{name}_zero_point"]) - U8


def _runtime_q(out, grid):
  """The runtime's stored values (on qsim's int8 grid) from its dequantized float output."""
  s, z = grid
  return np.rint(out / s).astype(np.int64) + z


def _value(name, shape):
  from onnx import helper, TensorProto

  return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _calibration(lo, hi, seed):
  t = np.linspace(0.0, 1.0, 64, dtype=f32)
  return lo + (hi - lo) * np.random.default_rng(seed).permutation(t)


def _pairs():
  ua, ub = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
  return ua.ravel() - U8, ub.ravel() - U8  # every uint8 pair, on qsim's int8 grid


def _binary_op(op, ranges, tmp_path, seed=0):
  """The fused one-op model of ``a <op> b`` run on every operand pair: (qa, qb, grids, runtime values)."""
  lo_a, hi_a, lo_b, hi_b = ranges
  ca, cb = _calibration(lo_a, hi_a, seed), _calibration(lo_b, hi_b, seed + 1)
  model = _model(
      [onnx.helper.make_node(op, ["a", "b"], ["y"])], [_value("a", [None]), _value("b", [None])], [_value("y", [None])]
  )
  sess, init = _fused(
      model, [{"a": ca[i : i + 1], "b": cb[i : i + 1]} for i in range(len(ca))], tmp_path, f"QLinear{op}"
  )
  ga, gb, gy = _grid(init, "a"), _grid(init, "b"), _grid(init, "y")
  qa, qb = _pairs()
  out = sess.run(None, {"a": ((qa - ga[1]) * ga[0]).astype(f32), "b": ((qb - gb[1]) * gb[0]).astype(f32)})[0]
  return qa, qb, (ga, gb, gy), _runtime_q(out, gy)


def _stored(q, grid):
  return np.clip(np.asarray(q) + grid[1], -128, 127)


def _float_sum(qa, qb, ga, gb, gy):
  """The sum of the dequantized operands rounded once (qsim's add_requant='fp32')."""
  x = ((qa - ga[1]) * ga[0]).astype(f32) + ((qb - gb[1]) * gb[0]).astype(f32)
  return np.clip(np.rint(x * (f32(1) / gy[0])) + gy[1], -128, 127)


# (lo_a, hi_a, lo_b, hi_b) calibration ranges on which the float sum, or the MUL rounded before its zero
# point, differs from the runtime on some pairs (found by scanning; the recipes match on every range tried)
ADD_RANGES = [(-1.0, 3.0, -2.0, 5.0)]
MUL_RANGES = [(-3.47, 5.02, -0.82, 3.3)]
MEAN_SEED = 4  # the mean's calibration draw


@pytest.mark.parametrize("ranges", ADD_RANGES)
def test_mlas_add_is_qlinearadd(ranges, tmp_path):
  qa, qb, (ga, gb, gy), runtime = _binary_op("Add", ranges, tmp_path)
  got = _stored(jax.jit(lambda a, b: fixed_point.int8_add(a, b, ga, gb, gy[0], "mlas", gy[1]))(qa, qb), gy)
  np.testing.assert_array_equal(got, runtime)
  assert (_float_sum(qa, qb, ga, gb, gy) != runtime).sum() > 0, "the float sum matches here: not a test of the recipe"


@pytest.mark.parametrize("ranges", MUL_RANGES)
def test_mlas_mul_is_qlinearmul(ranges, tmp_path):
  qa, qb, (ga, gb, gy), runtime = _binary_op("Mul", ranges, tmp_path)
  prod = (qa - ga[1]) * (qb - gb[1])
  np.testing.assert_array_equal(_stored(jax.jit(fixed_point.mlas_mul)(prod, ga[0], gb[0], gy[0], gy[1]), gy), runtime)
  rounded_first = np.rint((prod.astype(f32) * f32(f32(ga[0] * gb[0]) / gy[0])).astype(f32))
  assert (_stored(rounded_first, gy) != runtime).sum() > 0, "rounding before the zero point matches here"


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_per_channel_constants(op, layout, tmp_path):
  """An unfolded BatchNorm's MUL and ADD: a per-channel constant broadcast over the map (NCHW: MLAS gets
  it as a scalar per span; NHWC: as a vector)."""
  rng = np.random.default_rng(1)
  channels, shape = 16, (16, 8, 8) if layout == "nchw" else (8, 8, 16)
  cshape = (1, channels, 1, 1) if layout == "nchw" else (1, 1, 1, channels)
  const = onnx.numpy_helper.from_array(rng.uniform(-2, 2, channels).astype(f32).reshape(cshape), "c")
  model = _model(
      [onnx.helper.make_node(op, ["x", "c"], ["y"])],
      [_value("x", [None, *shape])],
      [_value("y", [None, *shape])],
      [const],
  )
  calib = rng.uniform(-3, 5, (32, *shape)).astype(f32)
  sess, init = _fused(model, [{"x": calib[i : i + 1]} for i in range(len(calib))], tmp_path, f"QLinear{op}")
  gx, gy = _grid(init, "x"), _grid(init, "y")
  gc = _grid(init, "c")
  qc = np.broadcast_to(init["c_quantized"].astype(np.int64).reshape(cshape) - U8, (2048, *shape))
  qx = rng.integers(-128, 128, (2048, *shape))
  runtime = _runtime_q(sess.run(None, {"x": ((qx - gx[1]) * gx[0]).astype(f32)})[0], gy)
  if op == "Add":
    got = jax.jit(lambda a, b: fixed_point.int8_add(a, b, gx, gc, gy[0], "mlas", gy[1]))(qx, qc)
  else:
    got = jax.jit(fixed_point.mlas_mul)((qx - gx[1]) * (qc - gc[1]), gx[0], gc[0], gy[0], gy[1])
  np.testing.assert_array_equal(_stored(got, gy), runtime)


def test_mlas_mean_is_qlinearglobalaveragepool(tmp_path):
  """Every integer sum an 8 x 8 uint8 map can have (0 to 64 x 255), on a calibration where the float mean
  of the dequantized map rounds some of them the other way."""
  rng = np.random.default_rng(MEAN_SEED)
  shape = (16, 8, 8)
  model = _model(
      [onnx.helper.make_node("GlobalAveragePool", ["x"], ["y"])],
      [_value("x", [None, *shape])],
      [_value("y", [None, 16, 1, 1])],
  )
  calib = (rng.uniform(-1, 4, (32, *shape)) * rng.uniform(0, 1, (32, 16, 1, 1))).astype(f32)
  sess, init = _fused(model, [{"x": calib[i : i + 1]} for i in range(len(calib))], tmp_path, "QLinearGlobalAveragePool")
  gx, gy = _grid(init, "x"), _grid(init, "y")
  sums = np.arange(64 * 255 + 1)
  sums = np.concatenate([sums, np.zeros(-len(sums) % 16, int)])
  ux = sums[:, None] // 64 + (np.arange(64)[None] < sums[:, None] % 64)  # each map's 64 values sum to its total
  qx = ux.reshape(-1, 16, 8, 8) - U8
  runtime = _runtime_q(sess.run(None, {"x": ((qx - gx[1]) * gx[0]).astype(f32)})[0], gy)
  acc = (qx - gx[1]).sum((2, 3), keepdims=True)
  mean = jax.jit(fixed_point.mlas_mean, static_argnums=1)
  np.testing.assert_array_equal(_stored(mean(acc, 64, gx[0], gy[0]), gy), runtime)
  float_mean = np.rint(((qx - gx[1]) * gx[0]).astype(f32).mean((2, 3), keepdims=True) * (f32(1) / gy[0]))
  assert (_stored(float_mean, gy) != runtime).sum() > 0, "the float mean matches here: not a test of the recipe"
