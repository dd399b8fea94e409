"""Fake-quant numerics: error bounds, levels, monotonicity, STE, edge cases."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from qsim.quant import TensorSpec, calibrated_range, quantize
from qsim.quant._aqt import int_grid

# Jitted with bits traced: one compilation per shape and structure.
jq = jax.jit(quantize, static_argnames=("default_axis", "where"))
jrange = jax.jit(calibrated_range, static_argnames=("default_axis", "where"))


def _scale(lo, hi, bits, symmetric):
  qmin, qmax = (float(v) for v in int_grid(bits, symmetric))
  if symmetric:
    return np.maximum(np.abs(lo), np.abs(hi)) / qmax
  return (hi - lo) / (qmax - qmin)


tensors = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    elements=st.floats(-1e3, 1e3, width=32),
)
int_specs = st.builds(
    TensorSpec,
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["per_tensor", "per_channel"]),
)


@given(x=tensors, spec=int_specs)
def test_error_within_half_step_inside_clip_range(x, spec):
  y = np.asarray(jq(jnp.asarray(x), spec))
  lo, hi = (np.asarray(v) for v in jrange(jnp.asarray(x), spec))
  step = _scale(lo, hi, spec.bits, spec.symmetric)
  # absmax ranges contain every value, so everything is inside the clip range
  tol = 0.5 * step * (1 + 1e-5) + 1e-6 * np.abs(x)
  assert np.all(np.abs(y - x) <= tol)


@given(x=tensors, spec=int_specs)
def test_at_most_2_pow_b_levels_per_scale_group(x, spec):
  y = np.asarray(jq(jnp.asarray(x), spec))
  limit = 2**spec.bits - (1 if spec.symmetric else 0)
  groups = [y] if spec.granularity == "per_tensor" else [np.take(y, i, axis=-1) for i in range(y.shape[-1])]
  for g in groups:
    assert len(np.unique(g)) <= limit


@given(x=tensors, spec=int_specs)
def test_idempotent(x, spec):
  x = jnp.asarray(x)
  lo, hi = jrange(x, spec)
  once = jq(x, spec, lo=lo, hi=hi)
  # with the same range: exactly idempotent
  np.testing.assert_array_equal(jq(once, spec, lo=lo, hi=hi), once)
  # re-calibrated on its own output: equal up to float rounding of the scale
  np.testing.assert_allclose(jq(once, spec), once, rtol=1e-5, atol=1e-30)


@given(seed=st.integers(0, 2**16), symmetric=st.booleans(), granularity=st.sampled_from(["per_tensor", "per_channel"]))
def test_error_non_increasing_in_bits(seed, symmetric, granularity):
  """absmax ranges clip nothing, so only rounding error is left and it must
  shrink with every bit. (Percentile and MSE ranges clip: their error
  saturates at the clip error, which the zero-point nudge moves by less than
  a step, so they are not monotone at 14-16 bits, nor should they be.)"""
  x = jax.random.normal(jax.random.key(seed), (256, 4)) * 3.0
  spec = TensorSpec(symmetric=symmetric, granularity=granularity)
  errs = [float(jnp.mean(jnp.square(jq(x, spec.replace(bits=b)) - x))) for b in range(2, 17)]
  assert all(b <= a for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_scales_along_any_axis(axis, symmetric):
  x = jax.random.normal(jax.random.key(0), (3, 4, 5)) * jnp.arange(1, 6)
  spec = TensorSpec(bits=4, granularity="per_channel", axis=axis, symmetric=symmetric)
  y = quantize(x, spec)
  lo, _ = calibrated_range(x, spec)
  assert lo.shape == tuple(d if a == axis % 3 else 1 for a, d in enumerate(x.shape))
  per_tensor = TensorSpec(bits=4, symmetric=symmetric)
  for i in range(x.shape[axis]):
    np.testing.assert_array_equal(jnp.take(y, i, axis=axis), quantize(jnp.take(x, i, axis=axis), per_tensor))


def test_per_channel_axis_out_of_range_names_axis_and_range():
  spec = TensorSpec(bits=4, granularity="per_channel", axis=3)
  with pytest.raises(ValueError, match=r"axis=3 is out of range for a rank-2 tensor; valid range is \[-2, 1\]"):
    quantize(jnp.ones((2, 3)), spec)


@pytest.mark.parametrize("symmetric", [True, False])
def test_ste_gradient_one_inside_zero_outside_clip_range(symmetric):
  x = jnp.linspace(-3.0, 3.0, 61)
  lo, hi = jnp.full((1,), -1.0), jnp.full((1,), 2.0)
  spec = TensorSpec(bits=4, symmetric=symmetric)
  g = jax.grad(lambda x: jnp.sum(quantize(x, spec, lo=lo, hi=hi)))(x)
  # clip range = the grid's buckets: the extreme levels +- half a step
  step = 4.0 / 14.0 if symmetric else 3.0 / 15.0
  clip_lo, clip_hi = (-2.0 - step / 2, 2.0 + step / 2) if symmetric else (-1.0 - step / 2, 2.0 + step / 2)
  inside = (x >= clip_lo + 1e-6) & (x <= clip_hi - 1e-6)
  outside = (x < clip_lo - 1e-6) | (x > clip_hi + 1e-6)
  np.testing.assert_array_equal(g[inside], 1.0)
  np.testing.assert_array_equal(g[outside], 0.0)
  assert outside.sum() > 0 and inside.sum() > 0


@pytest.mark.parametrize("fmt,dtype", [("fp16", jnp.float16), ("bf16", jnp.bfloat16)])
def test_half_precision_equals_dtype_round_trip(fmt, dtype):
  x = jax.random.normal(jax.random.key(1), (64, 7)) * jnp.logspace(-6, 5, 7)
  y = quantize(x, TensorSpec(format=fmt))
  np.testing.assert_array_equal(y, x.astype(dtype).astype(jnp.float32))
  g = jax.grad(lambda x: jnp.sum(quantize(x, TensorSpec(format=fmt))))(x)
  np.testing.assert_array_equal(g, 1.0)


@pytest.mark.parametrize("fmt,dtype", [("fp8_e4m3", jnp.float8_e4m3fn), ("fp8_e5m2", jnp.float8_e5m2)])
def test_fp8_is_scaled_cast(fmt, dtype):
  x = jax.random.normal(jax.random.key(2), (256,))
  y = quantize(x, TensorSpec(format=fmt))
  s = jnp.max(jnp.abs(x)) / float(jnp.finfo(dtype).max)
  np.testing.assert_allclose(y, (x / s).astype(dtype).astype(jnp.float32) * s, rtol=1e-6)
  assert len(np.unique(np.asarray(y))) < len(np.unique(np.asarray(x)))


ALL_SPECS = [
    TensorSpec(bits=b, symmetric=s, granularity=g, calibration=c)
    for b in (2, 8)
    for s in (True, False)
    for g in ("per_tensor", "per_channel")
    for c in ("absmax", "percentile", "mse")
] + [TensorSpec(format=f) for f in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")]


@pytest.mark.parametrize(
    "spec", ALL_SPECS, ids=lambda s: f"{s.format}{s.bits}-{s.symmetric}-{s.granularity}-{s.calibration}"
)
def test_all_zero_tensor_gives_zeros_and_no_nan(spec):
  x = jnp.zeros((4, 3))
  y, g = jax.value_and_grad(lambda x: jnp.sum(quantize(x, spec)))(x)
  np.testing.assert_array_equal(quantize(x, spec), 0.0)
  assert np.isfinite(float(y)) and np.all(np.isfinite(g))


def test_stochastic_rounding_is_unbiased_and_needs_a_key():
  spec = TensorSpec(bits=4, rounding="stochastic")
  x = jnp.array([-7.0, 0.3, 2.5, 6.9, 7.0])  # absmax 7 -> step 1
  keys = jax.random.split(jax.random.key(0), 4000)
  ys = jax.vmap(lambda k: quantize(x, spec, key=k))(keys)
  assert set(np.unique(np.asarray(ys)).tolist()) <= {-7.0, 0.0, 1.0, 2.0, 3.0, 6.0, 7.0}
  np.testing.assert_allclose(ys.mean(0), x, atol=0.03)
  with pytest.raises(ValueError, match="stochastic"):
    quantize(x, spec)


def test_nearest_away_rounds_ties_away_from_zero():
  """'nearest_away' is std::round (TFLite's built-in QUANTIZE), 'nearest_even' numpy's; they differ
  exactly on ties with an even floor, and equal elsewhere."""
  x = jnp.array([-7.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4, 7.0])  # absmax 7 -> step 1
  away = quantize(x, TensorSpec(bits=4, rounding="nearest_away"))
  even = quantize(x, TensorSpec(bits=4))
  np.testing.assert_array_equal(away, [-7, -3, -2, -1, 1, 2, 3, 2, 7])
  np.testing.assert_array_equal(even, [-7, -2, -2, -0, 0, 2, 2, 2, 7])
  with pytest.raises(ValueError, match="nearest_away.*integer grids only"):
    TensorSpec(format="fp8_e4m3", rounding="nearest_away")


def test_percentile_and_mse_calibration():
  x = jax.random.normal(jax.random.key(3), (10000,))
  lo, hi = calibrated_range(x, TensorSpec(calibration="percentile", percentile=99.0, symmetric=False))
  np.testing.assert_allclose([float(lo[0]), float(hi[0])], np.percentile(np.asarray(x), [1.0, 99.0]), rtol=1e-4)
  x = x.at[0].set(40.0)  # one outlier: MSE clipping must beat absmax at 4 bits
  err = lambda c: float(jnp.mean(jnp.square(quantize(x, TensorSpec(bits=4, calibration=c)) - x)))
  assert err("mse") < 0.5 * err("absmax")
  _, hi_mse = calibrated_range(x, TensorSpec(bits=4, calibration="mse"))
  assert float(hi_mse[0]) < 40.0


@pytest.mark.parametrize("bits", [2, 5, 8, 16])
def test_traced_bits_equal_python_bits(bits):
  x = jax.random.normal(jax.random.key(4), (33, 5))
  spec = TensorSpec(bits=bits, symmetric=False, granularity="per_channel")
  eager = quantize(x, spec)
  traced = jax.jit(lambda b: quantize(x, spec.replace(bits=b)))(bits)
  mapped = jax.lax.map(lambda b: quantize(x, spec.replace(bits=b)), jnp.array([bits]))[0]
  np.testing.assert_array_equal(eager, traced)
  np.testing.assert_array_equal(eager, mapped)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_ste_is_zero_outside_a_static_range(fmt):
  x = jnp.array([-3.0, -0.5, 0.25, 0.9, 3.0])
  lo, hi = jnp.full((1,), -1.0), jnp.full((1,), 1.0)
  g = jax.grad(lambda x: jnp.sum(quantize(x, TensorSpec(format=fmt), lo=lo, hi=hi)))(x)
  np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])


# Edge cases: no NaN from the quantizer itself, and NaN/Inf inputs never
# become finite values (the engine then counts the sample as 'nonfinite').
EDGE_SPECS = [
    TensorSpec(bits=b, symmetric=s, granularity=g, calibration=c)
    for b in (2, 16)
    for s in (True, False)
    for g in ("per_tensor", "per_channel")
    for c in ("absmax", "percentile", "mse")
] + [TensorSpec(format=f) for f in ("fp8_e4m3", "fp8_e5m2")]
edge_specs = st.sampled_from(EDGE_SPECS)
EDGE_SHAPE = (4, 3)  # one shape: one compilation per spec structure
units = hnp.arrays(np.float32, EDGE_SHAPE, elements=st.floats(-1, 1, width=32))


jgrad = jax.jit(jax.grad(lambda x, spec: jnp.sum(quantize(x, spec))))


def _finite_with_grad(x, spec):
  y = np.asarray(jq(jnp.asarray(x), spec))
  assert np.all(np.isfinite(y)) and np.all(np.isfinite(np.asarray(jgrad(jnp.asarray(x), spec))))
  return y


@given(value=st.floats(-float(np.float32(1e38)), float(np.float32(1e38)), width=32), spec=edge_specs)
def test_constant_tensor_stays_finite_and_lands_on_the_grid_end(value, spec):
  x = np.full(EDGE_SHAPE, value, np.float32)
  y = _finite_with_grad(x, spec)
  if spec.is_int and spec.calibration == "absmax":  # the value is the range's end: a level of the grid
    np.testing.assert_allclose(y, x, rtol=1e-5)


@given(x=units, exponent=st.integers(-45, 38), spec=edge_specs)
def test_huge_and_tiny_magnitudes_give_no_nan(x, exponent, spec):
  """From float32's smallest subnormal to 1e38: finite in, finite out.
  (fp16/bf16 are dtype round trips: beyond their range they give +-inf, as
  the deployed dtype does; int and fp8 ranges reach at most float32's max.)"""
  scaled = (x.astype(np.float64) * 10.0**exponent).astype(np.float32)
  _finite_with_grad(scaled, spec)


def test_range_as_wide_as_float32_gives_no_nan():
  big = np.finfo(np.float32).max
  x = jnp.asarray([[big, -big, 1.0], [0.5 * big, -0.5 * big, 0.0], [1e-30, -3.0, 7.0], [0.0, 0.0, 0.0]])
  for spec in EDGE_SPECS:  # (+-inf only where the range ends at +-max: the edge level, after the zero
    assert not np.isnan(np.asarray(jq(x, spec))).any(), spec  # point's rounding, may lie past it)


@given(x=units, zero=st.integers(0, EDGE_SHAPE[1] - 1), spec=edge_specs)
def test_per_channel_zero_channel_is_exactly_zero(x, zero, spec):
  spec = spec.replace(granularity="per_channel") if spec.is_int else spec
  x = x.copy()
  x[:, zero] = 0.0
  y = _finite_with_grad(x, spec)
  np.testing.assert_array_equal(y[:, zero], 0.0)


@given(
    x=units,
    row=st.integers(0, EDGE_SHAPE[0] - 1),
    col=st.integers(0, EDGE_SHAPE[1] - 1),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    spec=st.sampled_from(EDGE_SPECS + [TensorSpec(format="fp16"), TensorSpec(format="bf16")]),
)
def test_nan_and_inf_inputs_are_never_turned_into_finite_values(x, row, col, bad, spec):
  x = x.copy()
  x[row, col] = bad
  y = np.asarray(jq(jnp.asarray(x), spec))
  assert not np.isfinite(y[row, col])
  if spec.granularity == "per_channel":  # other channels have their own range: untouched
    others = np.delete(np.arange(EDGE_SHAPE[1]), col)
    np.testing.assert_array_equal(y[:, others], np.asarray(jq(jnp.asarray(x[:, others]), spec)))


@given(lo=st.floats(-100, 100, width=32), width=st.floats(0, 100, width=32), bits=st.integers(2, 16))
def test_asymmetric_range_always_holds_zero_and_the_zero_point_is_on_the_grid(lo, width, bits):
  """A range that excludes 0 (a user-supplied or calibrated [0.5, 1]) is widened to hold it, as the TFLite
  and ONNX Runtime quantizers do: the zero point lies on the grid and 0 quantizes to exactly 0."""
  from qsim.quant.fake_quant import scale_and_zero_point  # pylint: disable=g-import-not-at-top

  spec = TensorSpec(bits=bits, symmetric=False)
  lo, hi = np.float32(lo), np.float32(lo + width)
  scale, z = (float(v) for v in scale_and_zero_point(spec, jnp.float32(lo), jnp.float32(hi)))
  qmin, qmax = (float(v) for v in int_grid(bits, False))
  assert qmin <= z <= qmax
  y = np.asarray(jq(jnp.asarray([0.0, lo, hi], jnp.float32), spec, lo=jnp.float32(lo), hi=jnp.float32(hi)))
  assert y[0] == 0.0
  assert abs(y[1] - lo) <= scale / 2 + 1e-6 * abs(lo) and abs(y[2] - hi) <= scale / 2 + 1e-6 * abs(hi)


def test_scales_snapped_to_replaces_near_scales_only_and_restores():
  """The fidelity diagnostic ``fake_quant.scales_snapped_to``: a scale within
  ``ulps`` of a table value becomes that value (zero point recomputed from
  the range), one farther away stays, and leaving the context restores qsim's
  own scales."""
  from qsim.quant import fake_quant

  spec = TensorSpec(bits=8, symmetric=False, range="static")
  lo, hi = jnp.float32(-1.3), jnp.float32(2.9)
  s0, z0 = (np.float32(np.ravel(v)[0]) for v in fake_quant.scale_and_zero_point(spec, lo, hi))
  near = np.nextafter(np.nextafter(s0, np.float32(1)), np.float32(1))  # 2 ulp above
  far = s0 * np.float32(1.001)
  with fake_quant.scales_snapped_to([near], ulps=4):
    s, z = (np.float32(np.ravel(v)[0]) for v in fake_quant.scale_and_zero_point(spec, lo, hi))
    assert s == near and z == np.round(-128 - np.float32(-1.3) / near)
  with fake_quant.scales_snapped_to([far], ulps=4):
    assert np.float32(np.ravel(fake_quant.scale_and_zero_point(spec, lo, hi)[0])[0]) == s0
  assert (np.float32(np.ravel(fake_quant.scale_and_zero_point(spec, lo, hi)[0])[0]), z0) == (s0, z0)
  with pytest.raises(ValueError, match="ulps=-1 is not valid"):
    with fake_quant.scales_snapped_to([near], ulps=-1):
      pass
