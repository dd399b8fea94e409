"""qsim.quant.fixed_point (TFLite's built-in int8 requantization, int32-only
JAX) against a numpy int64 transcription of the same arithmetic."""

import jax.numpy as jnp
import numpy as np
import pytest

from qsim.quant import fixed_point as fp

RNG = np.random.default_rng(0)
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def ref_high_mul(a, b):
  """(a * b + nudge) / 2^31, C division (towards zero), nudge +-2^30."""
  ab = a.astype(np.int64) * b.astype(np.int64)
  s = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
  return np.where(s >= 0, s >> 31, -((-s) >> 31))


def ref_shift(x, s, rounding):
  x = x.astype(np.int64)
  if rounding == "half_up":
    return np.where(s > 0, (x + (np.int64(1) << np.maximum(s - 1, 0))) >> s, x)
  mask = (np.int64(1) << s) - 1
  return (x >> s) + ((x & mask) > ((mask >> 1) + (x < 0)))


def ref_multiplier(real):
  m, e = np.frexp(np.asarray(real, np.float64))
  q = np.floor(m * 2.0**31 + 0.5).astype(np.int64)
  return np.where(q == 2**31, q // 2, q), np.where(q == 2**31, e + 1, e)


def _i32(v):
  return jnp.asarray(np.asarray(v, np.int64), jnp.int32)


def test_high_mul_matches_int64_reference():
  edges_a = np.array([I32_MIN, I32_MIN, I32_MAX, I32_MAX, 0, -1, 1, -1, 1, 1 << 30, -(1 << 30), 3, -3])
  edges_b = np.array(
      [I32_MAX, 1 << 30, I32_MAX, 1, I32_MAX, 1 << 30, 1 << 30, 1, 1, 1 << 30, 1 << 30, 1 << 30, 1 << 30]
  )  # -1 * 2^30 and 3 * 2^30: exact halves (ties), both signs
  a = np.concatenate([edges_a, RNG.integers(I32_MIN, I32_MAX + 1, 100_000)])
  b = np.concatenate([edges_b, RNG.integers(0, 2**31, 100_000)])
  np.testing.assert_array_equal(np.asarray(fp.high_mul(_i32(a), _i32(b))), ref_high_mul(a, b))


@pytest.mark.parametrize("rounding", fp.ROUNDINGS)
def test_rounding_right_shift_matches_int64_reference(rounding):
  s = RNG.integers(0, 32, 50_000)
  x = RNG.integers(I32_MIN, I32_MAX + 1, s.size)
  # exact halves of both signs (the only values where the two roundings differ)
  k = RNG.integers(-1000, 1000, s.size) * 2 + 1
  small = RNG.integers(1, 20, s.size)
  halves = k * (np.int64(1) << (small - 1))
  x = np.concatenate([x, halves, [I32_MIN, I32_MAX, -1, 0, 1]])
  s = np.concatenate([s, small, [31, 31, 1, 0, 1]])
  got = np.asarray(fp.rounding_right_shift(_i32(x), _i32(s), rounding))
  np.testing.assert_array_equal(got, ref_shift(x, s, rounding))
  if rounding == "half_up":
    assert fp.rounding_right_shift(_i32([-3]), _i32([1]), rounding) == -1  # -1.5 -> -1
  else:
    assert fp.rounding_right_shift(_i32([-3]), _i32([1]), rounding) == -2  # -1.5 -> -2


def test_quantize_multiplier_is_the_double_precision_one():
  n = 100_000
  sa = RNG.uniform(1e-4, 0.1, n).astype(np.float32)
  sw = RNG.uniform(1e-5, 1e-2, n).astype(np.float32)
  so = np.exp(RNG.uniform(-9, 3, n)).astype(np.float32)  # ratios from 2^-30 to above 1 (left shifts)
  m, e = fp.quantize_multiplier(sa, sw, so)
  m_ref, e_ref = ref_multiplier(sa.astype(np.float64) * sw.astype(np.float64) / so.astype(np.float64))
  np.testing.assert_array_equal(np.asarray(m), m_ref)
  np.testing.assert_array_equal(np.asarray(e), e_ref)
  # powers of two: the mantissa is exactly 0.5 (m31 = 2^30)
  m, e = fp.quantize_multiplier(np.float32(0.5), np.float32(0.25), np.float32(1.0))
  assert int(m) == 1 << 30 and int(e) == -2
  m, e = fp.quantize_multiplier(np.float32(0.0), np.float32(1.0), np.float32(1.0))
  assert int(m) == 0 and int(e) == 0
  # below 2^-32 (shift < -31) TFLite's QuantizeMultiplier flushes to zero, so every result is 0 (a MUL
  # of a recurrent cell's zero state, scale 7.8e-9, stored on an empty range: scale 1); just above, the
  # shift is -31
  m, e = fp.quantize_multiplier(np.float32(1 / 256), np.float32(2e-6 / 255), np.float32(1.0))
  assert int(m) == 0 and int(e) == 0
  assert int(fp.multiply_by_quantized_multiplier(_i32([2**30]), m, e)[0]) == 0
  m, e = fp.quantize_multiplier(np.float32(2.0**-32), np.float32(1.0), np.float32(1.0))
  assert int(m) == 1 << 30 and int(e) == -31


@pytest.mark.parametrize("rounding", fp.ROUNDINGS)
def test_multiply_by_quantized_multiplier(rounding):
  n = 50_000
  acc = RNG.integers(-(2**22), 2**22, n)
  real = np.exp(RNG.uniform(-12, 0.5, n))
  m, e = ref_multiplier(real)
  left = np.maximum(e, 0)
  ref = ref_shift(ref_high_mul(acc * (np.int64(1) << left), m), np.maximum(-e, 0), rounding)
  got = np.asarray(fp.multiply_by_quantized_multiplier(_i32(acc), _i32(m), _i32(e), rounding))
  np.testing.assert_array_equal(got, ref)
  # double rounding: 2.4998 -> 2.5 on the 2^-10 grid -> 3, where one rounding gives 2
  m, e = ref_multiplier(np.array([2.4998 / 1000]))
  assert int(fp.multiply_by_quantized_multiplier(_i32([1000]), _i32(m), _i32(e), rounding)[0]) == 3
