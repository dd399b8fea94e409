"""TFLite's built-in int8 requantization: a Q31 multiplier and a shift.

TFLite's built-in kernels (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``)
rescale an int32 accumulator to int8 in integer arithmetic: the converter's
double-precision ratio ``real = in_scale * w_scale / out_scale`` becomes
``real = m * 2^shift`` with ``m`` in [0.5, 1) stored as the int32 ``round(m *
2^31)``, and the kernel computes

    ``rounding_right_shift(high_mul(acc * 2^max(shift, 0), m31), max(-shift, 0))``

where ``high_mul`` is gemmlowp's saturating rounding doubling high multiply
(``(a * b + nudge) / 2^31``, rounded half away from zero) and the right shift
rounds again: half away from zero in the reference kernels (MUL, MEAN), half
up (towards +inf) in the optimized convolution (measured: BUILD_NOTES,
"Deployment fidelity"). Rounding twice differs from rounding ``acc * real``
once when the product lies within ``2^-(k+1)`` of a half (``k`` = the right
shift, 7-12 here): about 0.1% of a layer's outputs move by one step, which is
what the XNNPACK-exact ``tflite_int8`` preset misses on these kernels.

Everything here is int32/uint32 arithmetic (JAX runs without x64): the 62-bit
product is built from 16-bit halves, and the multiplier is derived from
float32 scales with an exact two-float product and quotient, so it equals
the converter's double-precision ``QuantizeMultiplier`` (to within one unit
in the 2^-48 place of the ratio).
"""

from __future__ import annotations

from jax import lax
import jax.numpy as jnp
import numpy as np

ROUNDINGS = ("half_up", "half_away")

_U16 = np.uint32(0xFFFF)  # numpy, not jnp: a jnp constant at import would start the XLA backend (and
# jax.distributed.initialize must run before that)


def _split(a):
  """Dekker's split of float32 ``a`` into two 12-bit halves (exact sum)."""
  c = a * jnp.float32(4097.0)
  hi = c - (c - a)
  return hi, a - hi


def _two_product(a, b):
  """``a * b = p + e`` exactly (float32, no FMA needed)."""
  p = a * b
  ah, al = _split(a)
  bh, bl = _split(b)
  e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
  return p, e


def quantize_multiplier(a, b, c):
  """TFLite's ``QuantizeMultiplier(double(a) * double(b) / double(c))``.

  A ratio below about ``2^-32`` (``shift < -31``) is flushed to ``m31 = 0``,
  shift 0, as TFLite's ``QuantizeMultiplier`` does (every bit would be shifted
  out; met by a MUL with the zero initial state of a recurrent cell, scale
  7.8e-9).

  Args:
    a: a positive float32 scale (the numerator's first factor).
    b: a positive float32 scale (the numerator's second factor).
    c: a positive float32 scale (the denominator); all three broadcast
      together.

  Returns:
    ``(m31, shift)``, int32 arrays of the broadcast shape: ``a * b / c = m31 *
    2^(shift - 31)``, ``m31`` in ``[2^30, 2^31)`` (0 and shift 0 for a zero
    ratio).
  """
  a, b, c = (jnp.asarray(v, jnp.float32) for v in (a, b, c))
  p, pe = _two_product(a, b)  # a*b = p + pe exactly
  q = p / c
  t, te = _two_product(q, c)  # q*c = t + te exactly; p - t is exact (Sterbenz)
  ql = (((p - t) - te) + pe) / c  # a*b/c = q + ql to ~48 bits
  mant, exp = jnp.frexp(q)  # q = mant * 2^exp, mant in [0.5, 1)
  hi = mant * jnp.float32(2.0**31) - jnp.float32(2.0**31)  # in [-2^30, 0], a multiple of 2^7: exact
  lo = jnp.ldexp(ql, 31 - exp)  # |lo| <= 2^6
  d = hi.astype(jnp.int32) + jnp.floor(lo + jnp.float32(0.5)).astype(jnp.int32)  # round(m * 2^31) - 2^31
  full = d >= 0  # rounded up to 2^31: m31 = 2^30, one more in the exponent
  m31 = jnp.where(full, jnp.int32(1 << 30), (d.astype(jnp.uint32) + jnp.uint32(1 << 31)).astype(jnp.int32))
  shift = jnp.where(full, exp + 1, exp).astype(jnp.int32)
  zero = (q == 0) | (shift < -31)
  return jnp.where(zero, 0, m31), jnp.where(zero, 0, shift)


def high_mul(a, b):
  """gemmlowp's ``SaturatingRoundingDoublingHighMul(a, b)`` for ``b >= 0``.

  The saturating case ``a = b = -2^31`` cannot occur with ``b >= 0``.

  Args:
    a: int32 values.
    b: int32 values in ``[0, 2^31)`` (e.g. a Q31 multiplier); broadcasts with
      ``a``.

  Returns:
    int32 ``a * b / 2^31`` rounded half away from zero.
  """
  a = jnp.asarray(a, jnp.int32)
  b = jnp.asarray(b, jnp.int32)
  neg = a < 0
  ua = jnp.where(neg, -a, a).astype(jnp.uint32)  # -(-2^31) wraps to 2^31 as uint32: right
  ub = b.astype(jnp.uint32)
  a1, a0 = ua >> 16, ua & _U16
  b1, b0 = ub >> 16, ub & _U16
  p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1  # each < 2^32
  mid = (p00 >> 16) + (p01 & _U16) + (p10 & _U16)
  lo = (p00 & _U16) | (mid << 16)
  hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)  # |a*b| = hi * 2^32 + lo, hi < 2^30
  # |result| = floor((|a*b| + 2^30 - [a*b < 0]) / 2^31) (C's division truncates towards zero)
  nudge = jnp.where(neg, jnp.uint32((1 << 30) - 1), jnp.uint32(1 << 30))
  lo2 = lo + nudge
  hi2 = hi + (lo2 < lo).astype(jnp.uint32)
  mag = (hi2 << 1) | (lo2 >> 31)  # <= 2^31 - 1
  mag = mag.astype(jnp.int32)
  return jnp.where(neg, -mag, mag)


def rounding_right_shift(x, s, rounding: str):
  """``x / 2^s`` for int32 ``x`` and ``0 <= s <= 31``, rounded.

  Args:
    x: int32 values.
    s: the shift, int32 in ``[0, 31]``; broadcasts with ``x``.
    rounding: ``'half_up'`` (the optimized kernels' rounding shift) or
      ``'half_away'`` (half away from zero, gemmlowp's
      ``RoundingDivideByPOT``).

  Returns:
    int32 ``x / 2^s``, rounded as ``rounding`` says.

  Raises:
    ValueError: ``rounding`` is not one of ``ROUNDINGS``.
  """
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding={rounding!r} is not valid; choose one of {list(ROUNDINGS)}")
  x = jnp.asarray(x, jnp.int32)
  s = jnp.asarray(s, jnp.int32)
  floor = x >> s
  if rounding == "half_up":
    half_bit = (x >> jnp.maximum(s - 1, 0)) & 1
    return jnp.where(s > 0, floor + half_bit, x)
  mask = (jnp.int32(1) << s) - 1  # s = 31 wraps to 2^31 - 1: right
  threshold = (mask >> 1) + (x < 0).astype(jnp.int32)
  return floor + ((x & mask) > threshold).astype(jnp.int32)


def multiply_by_quantized_multiplier(acc, m31, shift, rounding: str = "half_away"):
  """TFLite's ``MultiplyByQuantizedMultiplier(acc, m31, shift)`` (int32).

  Args:
    acc: int32 accumulator values.
    m31: the Q31 multiplier from :func:`quantize_multiplier`, int32 in
      ``[0, 2^31)``.
    shift: its shift, int32 (positive: left shift before the multiply;
      negative: rounding right shift after it, at most 31).
    rounding: the right shift's rounding, ``'half_away'`` (reference
      kernels) or ``'half_up'`` (optimized convolution).

  Returns:
    int32 ``acc * m31 * 2^(shift - 31)``, rounded twice.

  Raises:
    ValueError: ``rounding`` is not one of ``ROUNDINGS``.
  """
  shift = jnp.asarray(shift, jnp.int32)
  x = jnp.asarray(acc, jnp.int32) << jnp.maximum(shift, 0)
  return rounding_right_shift(high_mul(x, m31), jnp.maximum(-shift, 0), rounding)


def _two_sum(a, b):
  """``a + b = s + e`` exactly (Knuth's TwoSum, float32)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def _add_round_to_odd(a, b):
  """``a + b`` rounded to odd: exact sums as they are, an inexact one to the
  neighbouring float32 whose last significand bit is 1."""
  s, e = _two_sum(a, b)
  bits = lax.bitcast_convert_type(s, jnp.int32)
  beyond = (e > 0) == (s > 0)  # the exact sum is further from zero than s
  odd = lax.bitcast_convert_type(bits + jnp.where(beyond, 1, -1), jnp.float32)
  return jnp.where((e != 0) & ((bits & 1) == 0), odd, s)


def fma(a, b, c):
  """float32 ``a * b + c`` rounded once, as the FMA instruction computes it.

  Emulated exactly without an FMA (XLA does not promise one): the exact
  product as two floats (Dekker), the exact sum with ``c`` (TwoSum), and the
  two low parts added with rounding to odd before the one final rounding
  (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved
  algorithms using rounding to odd", IEEE TC 2008). Exact for finite float32
  operands whose product and sum neither overflow nor fall below the normal
  range (checked, jit-compiled, against exact rational arithmetic on 8,000
  random and near-tie triples: ``tests/test_ort_ops.py``).

  Args:
    a: float32 factor.
    b: float32 factor.
    c: float32 addend.

  Returns:
    float32 ``RN(a * b + c)`` (broadcast shape).
  """
  a, b, c = (jnp.asarray(v, jnp.float32) for v in (a, b, c))
  p, e = _two_product(a, b)
  th, tl = _two_sum(c, p)
  return th + _add_round_to_odd(tl, e)


ADD_RECIPES = ("xnnpack", "fixed_point", "mlas")
UINT8_SHIFT = 128  # ONNX Runtime's uint8 activations: qsim's int8 grid plus 128 (values and zero points)


def int8_add(qa, qb, grid_a, grid_b, out_scale, recipe: str, out_zero_point=None):
  """An int8 runtime's ADD of two stored tensors, before the output zero point.

  The recipes:

  - ``'xnnpack'`` (XNNPACK's qs8 VADD, TFLite's default delegate): each
    ratio ``float32(s_x / s_out)`` becomes an integer multiplier with 20-21
    significant bits (``lrintf(ratio * 2^shift)``, ``shift = 20 -
    exponent(max ratio)``), and ``q = (rounding + (qa - za) ma + (qb - zb)
    mb) >> shift``: one rounding, half up, of a slightly inexact sum.
  - ``'fixed_point'`` (TFLite's built-in ADD, the reference kernel's
    recipe): each ``(q - z) * 2^20`` is scaled by the Q31 multiplier of
    ``s_x / (2 max(s_a, s_b))``, the two are summed and scaled by that of
    ``2 max(s_a, s_b) / (2^20 s_out)``, every shift rounded half away from
    zero. Measured on 29 calibration ranges (1.9 M operand pairs): 0
    differing sums; with the optimized convolution's half-up shift on the
    inputs, 1.
  - ``'mlas'`` (ONNX Runtime's QLinearAdd on x86 with AVX2, the fused
    session's kernel for uint8 tensors): ratios ``r = float32(s_x /
    s_out)``, a fixed part ``float32(z_out) - fma(r_a, z_a, r_b z_b)``,
    then ``fma(u_a, r_a, fma(u_b, r_b, fixed))`` rounded half to even, on
    the uint8 values ``u = q + 128`` (zero points likewise): the zero
    points are inside the float sum, so ``out_zero_point`` is needed. The
    same for a per-span scalar operand (an NCHW per-channel constant).

  Each measured against the runtime on all 65,536 operand pairs
  (``tests/test_add_requant.py``; ``'mlas'``: ``tests/test_ort_ops.py``).

  Args:
    qa: the first operand's integer values (zero point included).
    qb: the second operand's integer values (zero point included).
    grid_a: ``qa``'s ``(scale, zero_point)`` (float32 scalars).
    grid_b: ``qb``'s ``(scale, zero_point)`` (float32 scalars).
    out_scale: the stored output's scale.
    recipe: one of ``ADD_RECIPES`` (see above).
    out_zero_point: the stored output's zero point (int8 grid); ``'mlas'``
      only, where it is needed.

  Returns:
    int32 ``q`` (the broadcast shape of ``qa`` and ``qb``) such that the
    runtime's int8 output is ``clip(q + out_zero_point)``.

  Raises:
    ValueError: ``recipe`` is not one of ``ADD_RECIPES``, or ``'mlas'``
      without ``out_zero_point``.
  """
  if recipe not in ADD_RECIPES:
    raise ValueError(f"recipe={recipe!r} is not valid; choose one of {list(ADD_RECIPES)}")
  (sa, za), (sb, zb) = grid_a, grid_b
  sa, sb, so = (jnp.asarray(v, jnp.float32) for v in (sa, sb, out_scale))
  if recipe == "mlas":  # MlasQLinearAddKernelAvx2Helper (qladd_avx2.cpp)
    if out_zero_point is None:
      raise ValueError("recipe='mlas' needs out_zero_point (the zero points are inside its float sum)")

    def u8(v):
      return jnp.asarray(v).astype(jnp.int32).astype(jnp.float32) + UINT8_SHIFT

    ra, rb = sa / so, sb / so
    fixed = u8(out_zero_point) - fma(ra, u8(za), rb * u8(zb))
    t = fma(u8(qa), ra, fma(u8(qb), rb, fixed))
    return jnp.round(t).astype(jnp.int32) - u8(out_zero_point).astype(jnp.int32)
  da = jnp.asarray(qa, jnp.int32) - jnp.asarray(za).astype(jnp.int32)
  db = jnp.asarray(qb, jnp.int32) - jnp.asarray(zb).astype(jnp.int32)
  if recipe == "xnnpack":  # xnn_init_qs8_add_minmax_scalar_params + the qs8-vadd microkernels
    ra, rb = sa / so, sb / so
    exponent = (lax.bitcast_convert_type(jnp.maximum(ra, rb), jnp.int32) >> 23) - 127
    shift = 20 - exponent
    ma = jnp.round(jnp.ldexp(ra, shift)).astype(jnp.int32)
    mb = jnp.round(jnp.ldexp(rb, shift)).astype(jnp.int32)
    return ((jnp.int32(1) << (shift - 1)) + da * ma + db * mb) >> shift
  twice_max = 2 * jnp.maximum(sa, sb)  # exact in float32
  m1, e1 = quantize_multiplier(sa, 1.0, twice_max)
  m2, e2 = quantize_multiplier(sb, 1.0, twice_max)
  mo, eo = quantize_multiplier(twice_max, 1.0, so * jnp.float32(2.0**20))
  raw = multiply_by_quantized_multiplier(da << 20, m1, e1, "half_away")
  raw = raw + multiply_by_quantized_multiplier(db << 20, m2, e2, "half_away")
  return multiply_by_quantized_multiplier(raw, mo, eo, "half_away")


def mlas_mul(prod, scale_a, scale_b, out_scale, out_zero_point):
  """ONNX Runtime's QLinearMul on x86 (MlasQLinearMulKernel, SSE2), before the output zero point.

  ``float32(prod) * float32(s_a * s_b / s_out)`` plus the uint8 output zero
  point, in float32, rounded half to even: the zero point is added before
  the rounding, so a product a hair from a half can round the other way
  than ``round(prod * ratio) + z``.

  Args:
    prod: the exact integer product ``(q_a - z_a)(q_b - z_b)``.
    scale_a: the first operand's scale.
    scale_b: the second operand's scale (a scalar or per-channel).
    out_scale: the stored output's scale.
    out_zero_point: the stored output's zero point (int8 grid).

  Returns:
    float32 ``q`` (integer-valued) such that the runtime's value on qsim's
    int8 grid is ``clip(q + out_zero_point)``.
  """
  zu = jnp.asarray(out_zero_point).astype(jnp.float32) + UINT8_SHIFT
  ratio = (jnp.asarray(scale_a, jnp.float32) * jnp.asarray(scale_b, jnp.float32)) / out_scale
  return jnp.round(jnp.asarray(prod).astype(jnp.float32) * ratio + zu) - zu


def mlas_mean(acc, n: int, in_scale, out_scale):
  """ONNX Runtime's QLinearGlobalAveragePool on x86 (MLAS), before the output zero point.

  The exact integer sum of ``q - z_in`` over the ``n`` pooled values times
  ``float32(s_in / (s_out * n))``, rounded half to even (the zero point is
  added after the rounding).

  Args:
    acc: the integer sums.
    n: the number of values pooled.
    in_scale: the pooled tensor's scale.
    out_scale: the stored output's scale.

  Returns:
    float32 ``q`` (integer-valued) such that the runtime's value is
    ``clip(q + out_zero_point)``.
  """
  scale = jnp.asarray(in_scale, jnp.float32) / (jnp.asarray(out_scale, jnp.float32) * jnp.float32(n))
  return jnp.round(jnp.asarray(acc).astype(jnp.float32) * scale)
