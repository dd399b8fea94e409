"""The one module of qsim that imports AQT (``aqtp``).

qsim quantizes a tensor with AQT's own machinery: ``config.Quantizer`` builds
a ``QTensor`` (scale and bias from a calibration class), AQT's numerics round
and clip it, ``QTensor.dequant`` maps it back. qsim plugs into AQT's extension
points where AQT lacks what the study needs (see BUILD_NOTES.md):

* :class:`IntNumerics` (an ``AqtNumerics``): integer numerics whose bit-width
  is *data* (a traced array), symmetric or asymmetric (integer zero point),
  round-to-nearest-even or stochastic rounding, and a straight-through
  gradient that is 1 inside the clip range and 0 outside.
* :class:`ScaleCalibration` (an AQT ``Calibration``) hands AQT the scale
  qsim computed from a clip range: absmax, percentile or MSE-optimal
  (:mod:`qsim.quant.ranges`), or a stored static range.

AQT's fp8 numerics (``Fp8Numerics``) are used as they are. The matmul and the
convolution themselves run in float on the fake-quantized operands
(``lax.dot_general`` / ``lax.conv_general_dilated``), a thin wrapper instead of
AQT's ``AqtDotGeneral``/``AqtConvGeneralDilated``: AQT's convolution has zero
gradients (upstream issue #285), its static bits cannot form a grid, and it
has no asymmetric path (upstream issue #725).

To swap the backend (e.g. for qwix), re-implement :func:`quantize` and
:func:`calibrated_range` with the same signatures.
"""

from __future__ import annotations

import functools
from typing import Sequence

from aqt.jax.v2 import calibration as aqt_calibration
from aqt.jax.v2 import aqt_quantizer
from aqt.jax.v2 import utils as aqt_utils
from aqt.jax.v2.numerics import fp8_numerics as aqt_fp8
from aqt.jax.v2.numerics import numerics as aqt_numerics
import jax
import jax.numpy as jnp

from qsim.quant import ranges
from qsim.quant.ste import straight_through
from qsim.quant.spec import TensorSpec


def int_grid(bits, symmetric: bool):
  """The integer grid ``(qmin, qmax)`` for ``bits`` (a number or an array)."""
  # Exact powers of two: XLA's exp2 on a traced exponent is approximate.
  half = jnp.left_shift(1, jnp.asarray(bits, jnp.int32) - 1).astype(jnp.float32)
  if symmetric:
    return -(half - 1.0), half - 1.0
  return -half, half - 1.0


@aqt_utils.flax_slots_kw_only_dataclass
class IntNumerics(aqt_numerics.AqtNumerics):
  """Integer numerics with traced bits, zero point and stochastic rounding.

  AQT hands ``vjp_fwd`` the scaled tensor ``x / s``. It returns ``q - z``
  where ``q = clip(round(x / s) + z, qmin, qmax)`` is an integer of
  ``int_grid(bits, symmetric)`` and ``z`` the integer zero point (0 when
  symmetric), so AQT's dequantization ``(q - z) * s`` is one rounding: the
  result is bit-identical whatever XLA fuses (``q * s - b`` is not: it may
  contract to an FMA in one program and not in another).

  The backward pass is the straight-through estimator masked to the clip
  range (the buckets of the grid).
  """

  bits: jax.Array | int
  zero_point: jax.Array | float = 0.0
  symmetric: bool = aqt_utils.static_field(default=True)
  stochastic: bool = aqt_utils.static_field(default=False)
  away: bool = aqt_utils.static_field(default=False)  # ties away from zero (std::round)

  def get_dtype(self):
    return None  # keep the input dtype: this is fake quantization

  def get_quant_bound(self):
    qmin, qmax = int_grid(self.bits, self.symmetric)
    # Symmetric: absmax maps to qmax. Asymmetric: the range width maps to the
    # grid width.
    return qmax if self.symmetric else qmax - qmin

  def vjp_fwd(self, x, context):
    qmin, qmax = int_grid(self.bits, self.symmetric)
    res = (x + self.zero_point, qmin, qmax)
    if self.stochastic:
      if context.key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key: pass rngs={'quant': key} to apply")
      u = jax.random.uniform(context.key, x.shape, x.dtype)
      x = jnp.floor(x + u)
    else:
      x = jax.lax.round(
          x, jax.lax.RoundingMethod.AWAY_FROM_ZERO if self.away else jax.lax.RoundingMethod.TO_NEAREST_EVEN
      )
    return jnp.clip(x + self.zero_point, qmin, qmax) - self.zero_point, res

  def vjp_bwd(self, res, grad):
    # The clip range is the span of the grid's buckets, [qmin - 1/2,
    # qmax + 1/2] in integer units: a value there is rounded, not clipped (the
    # calibrated extremes themselves may sit up to half a step past qmin/qmax
    # after the zero point is rounded, and must keep their gradient).
    x, qmin, qmax = res
    inside = (x >= qmin - 0.5) & (x <= qmax + 0.5)
    return (grad * inside.astype(grad.dtype), None)


@aqt_utils.flax_slots_kw_only_dataclass
class ScaleCalibration(aqt_calibration.Calibration):
  """AQT calibration that hands out a scale qsim computed from a range."""

  scale: jax.Array | None = None

  def get_scale_and_bias_and_sparsity(self, x, shared_axes, numerics_, context=None):
    del shared_axes, numerics_, context
    return [self.scale.astype(x.dtype)], [], None


def scale_and_zero_point(lo, hi, numerics_):
  """Scale ``s`` and integer zero point ``z`` mapping [lo, hi] onto the grid.

  Symmetric (and fp8): ``s = max(|lo|, |hi|) / quant_bound``, ``z = 0``.
  Asymmetric: the range is first widened to hold 0 (``lo = min(lo, 0)``,
  ``hi = max(hi, 0)``, as the TFLite and ONNX Runtime quantizers do), then
  ``s = (hi - lo) / (2^b - 1)``, ``z = round(qmin - lo / s)`` (zero stays
  exactly representable, ``z`` on the grid). A zero range gives ``s = 1``; a
  range wider than float32 (``hi - lo`` overflows) is scaled term by term,
  so finite inputs never give NaN; a NaN or infinite range (from NaN/Inf
  inputs) gives a NaN or infinite scale, so the group's output is not finite
  and the engine counts it as 'nonfinite' instead of a prediction.
  """
  lo = jax.lax.stop_gradient(lo).astype(jnp.float32)
  hi = jax.lax.stop_gradient(hi).astype(jnp.float32)
  # Multiplications by explicit reciprocals only: XLA rewrites a division by
  # a compile-time constant into a multiplication, which would make a config
  # with constant bits round differently from the same config with traced bits.
  inv_qb = jax.lax.reciprocal(jnp.asarray(numerics_.get_quant_bound(), jnp.float32))
  if isinstance(numerics_, IntNumerics) and not numerics_.symmetric:
    # the range always holds zero (TFLite's and ONNX Runtime's quantizers nudge it so): with lo > 0 or
    # hi < 0 the zero point would fall outside the grid and 0 (padding, ReLU zeros) would not be representable
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    width = hi - lo
    scale = jnp.where(jnp.isfinite(width), width * inv_qb, hi * inv_qb - lo * inv_qb)
    scale = jnp.where(scale == 0, 1.0, scale)
    qmin, _ = int_grid(numerics_.bits, False)
    return scale, jnp.round(qmin - lo * jax.lax.reciprocal(scale))
  scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) * inv_qb
  return jnp.where(scale == 0, 1.0, scale), jnp.zeros_like(scale)


def _with_zero_point(numerics_, z):
  if isinstance(numerics_, IntNumerics) and not numerics_.symmetric:
    return numerics_.replace(zero_point=z)
  return numerics_


def _deterministic(numerics_):
  if isinstance(numerics_, IntNumerics):
    return numerics_.replace(stochastic=False)
  return numerics_.replace(stochastic_rounding=False)


def _range(x, spec, axes, numerics_):
  if spec.calibration != "mse":
    return ranges.data_range(x, spec, axes)
  # The search rounds deterministically, whatever the spec's rounding.
  quantize_ = functools.partial(_fake_quant_from_range, numerics_=_deterministic(numerics_))
  return ranges.mse_range(x, spec, axes, quantize_)


def _fake_quant_from_range(x, lo, hi, *, numerics_):
  scale, z = scale_and_zero_point(lo, hi, numerics_)
  numerics_ = _with_zero_point(numerics_, z)
  q, _ = numerics_.vjp_fwd(x * jax.lax.reciprocal(scale), aqt_utils.Context(key=None, train_step=None))
  return q.astype(x.dtype) * scale


def _run_quantizer(x, numerics_, lo, hi, axes, key):
  """Calibrates, then quantizes with AQT's Quantizer and QTensor."""
  xs = jax.lax.stop_gradient(x)
  scale, z = scale_and_zero_point(lo, hi, numerics_)
  quantizer = aqt_quantizer.Quantizer(
      numerics=_with_zero_point(numerics_, z),
      calib_shared_axes=None,
      scale_stop_grad=True,
      calibration=functools.partial(ScaleCalibration, scale=scale),
      context=aqt_utils.Context(key=key, train_step=None),
  )
  quantizer.init_calibration()
  qt, quant_grad = quantizer.quant(xs, calibration_axes=list(axes))
  y = qt.dequant()
  # AQT's gradient of the rounding step, evaluated on ones, is the STE mask.
  (mask,) = quant_grad(jnp.ones_like(qt.qvalue))[:1]
  return straight_through(x, y.astype(x.dtype), mask.astype(x.dtype))


FP8_DTYPES = {"fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2"}


def _int_numerics(spec: TensorSpec) -> IntNumerics:
  return IntNumerics(
      bits=spec.bits,
      symmetric=spec.symmetric,
      stochastic=spec.rounding == "stochastic",
      away=spec.rounding == "nearest_away",
  )


@aqt_utils.flax_slots_kw_only_dataclass
class Fp8Numerics(aqt_fp8.Fp8Numerics):
  """AQT's fp8 numerics with the straight-through gradient masked to the
  clip range (AQT's passes the gradient of clipped values unchanged)."""

  def vjp_bwd(self, res, grad):
    (x,) = res
    bound = jnp.asarray(self.get_quant_bound(), jnp.float32)
    return (grad * (jnp.abs(x) <= bound).astype(grad.dtype), None)


def _fp8_numerics(spec: TensorSpec) -> aqt_fp8.Fp8Numerics:
  name = FP8_DTYPES[spec.format]
  return Fp8Numerics(
      dtype=aqt_fp8.fp8_map[name],
      exponent_bits=int(name[1]),
      mantissa_bits=int(name[3]),
      stochastic_rounding=spec.rounding == "stochastic",
  )


def _numerics(spec: TensorSpec):
  return _int_numerics(spec) if spec.is_int else _fp8_numerics(spec)


def calibrated_range(x: jax.Array, spec: TensorSpec, axes: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """The clip range ``spec.calibration`` picks for ``x`` (kept dims)."""
  if not spec.is_int:
    spec = spec.replace(symmetric=True)
  return _range(jax.lax.stop_gradient(x), spec, tuple(axes), _numerics(spec))


def quantize(
    x: jax.Array,
    spec: TensorSpec,
    axes: Sequence[int],
    *,
    lo: jax.Array | None = None,
    hi: jax.Array | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
  """Fake-quantizes ``x`` (integer or fp8 ``spec``) with an STE gradient.

  Integer specs: ``spec.bits`` may be a traced array. fp8 specs: scaled fp8
  (the range's absmax maps to the format's largest finite value), rounded to
  nearest even in the fp8 grid (stochastic: mantissa noise).

  Args:
    x: the tensor.
    spec: an integer or fp8 TensorSpec.
    axes: axes that share one scale (all axes = per tensor).
    lo, hi: a static range (kept dims); ``None`` = computed from ``x`` by
      ``spec.calibration``.
    key: PRNG key, needed for stochastic rounding.
  """
  if not spec.is_int:
    spec = spec.replace(symmetric=True)
  numerics_ = _numerics(spec)
  if lo is None:
    lo, hi = _range(jax.lax.stop_gradient(x), spec, tuple(axes), numerics_)
  if spec.qparams == "xnnpack_qd8":
    return _xnnpack_qd8(x, lo, hi, spec.bits)
  return _run_quantizer(x, numerics_, lo, hi, axes, key)


def _xnnpack_qd8(x, lo, hi, bits):
  """XNNPACK's dynamic quantization (``TensorSpec.qparams='xnnpack_qd8'``):
  the inverse scale ``(2^b - 1) / (hi - lo)`` in float32, the nudged zero
  point, ``q = rint(x * inv) + z``, dequantized with ``1 / inv``;
  straight-through gradient masked to the grid."""
  qmin, qmax = int_grid(bits, False)
  lo = jnp.minimum(jax.lax.stop_gradient(lo).astype(jnp.float32), 0.0)
  hi = jnp.maximum(jax.lax.stop_gradient(hi).astype(jnp.float32), 0.0)
  empty = hi == lo
  inv = jnp.where(empty, 1.0, (qmax - qmin) / jnp.where(empty, 1.0, hi - lo))
  a, b = lo * inv, hi * inv
  z = jnp.where((qmin + a) + (qmax + b) > 0, qmin - a, qmax - b)  # the end with the smaller error
  z = jnp.round(jnp.clip(z, qmin, qmax))
  t = jax.lax.stop_gradient(x).astype(jnp.float32) * inv
  q = jnp.clip(jnp.round(t) + z, qmin, qmax)
  y = ((q - z) * (1.0 / inv)).astype(x.dtype)
  mask = ((t + z >= qmin - 0.5) & (t + z <= qmax + 0.5)).astype(x.dtype)
  return straight_through(x, y, mask)


def int_scale(
    x: jax.Array,
    spec: TensorSpec,
    axes: Sequence[int],
    *,
    lo: jax.Array | None = None,
    hi: jax.Array | None = None,
) -> jax.Array:
  """The scale ``quantize`` uses for ``x`` under the integer ``spec`` (kept
  dims): the stored range if given, else the one calibrated from ``x``."""
  numerics_ = _int_numerics(spec)
  if lo is None:
    lo, hi = _range(jax.lax.stop_gradient(x), spec, tuple(axes), numerics_)
  return scale_and_zero_point(lo, hi, numerics_)[0]
