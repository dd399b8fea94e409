"""Fake quantization of one tensor by its :class:`TensorSpec`."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from qsim.quant import _aqt
from qsim.quant import ranges
from qsim.quant.spec import BF16, FP16, TensorSpec
from qsim.quant.ste import straight_through

_CAST_DTYPES = {FP16: jnp.float16, BF16: jnp.bfloat16}


def quantize(
    x: jax.Array,
    spec: TensorSpec | None,
    *,
    default_axis: int = -1,
    lo: jax.Array | None = None,
    hi: jax.Array | None = None,
    key: jax.Array | None = None,
    where: str = "tensor",
    batch_axes: tuple[int, ...] = (),
) -> jax.Array:
  """Fake-quantizes ``x``: same shape and dtype, values on the spec's grid.

  The gradient is straight-through: 1 inside the clip range, 0 outside.

  Args:
    x: a float array.
    spec: how to quantize; ``None`` returns ``x`` unchanged.
    default_axis: the channel axis when ``spec.axis`` is None.
    lo, hi: a stored static range (shape of ``x`` with the shared axes set
      to 1); ``None`` = computed from ``x`` by ``spec.calibration``.
    key: PRNG key for stochastic rounding.
    where: a name for error messages (e.g. the layer).
    batch_axes: axes whose entries get their own range (dynamic activation
      ranges are per example, as a deployed model sees one input at a time;
      this also keeps results independent of batch composition and padding).

  Returns:
    The dequantized array.

  Raises:
    ValueError: stochastic rounding without ``key``, or a per-channel axis
      out of range for ``x``.
  """
  if spec is None:
    return x
  if spec.format in _CAST_DTYPES:
    y = x.astype(_CAST_DTYPES[spec.format]).astype(x.dtype)
    return straight_through(x, y, jnp.ones_like(x))
  if spec.needs_rng and key is None:
    raise ValueError(f"{where}: rounding='stochastic' needs a PRNG key (pass" " rngs={'quant': key} to apply)")
  axes = ranges.shared_axes(x.ndim, spec, default_axis, where, batch_axes)
  return _aqt.quantize(x, spec, axes, lo=lo, hi=hi, key=key)


def int_scale(
    x: jax.Array,
    spec: TensorSpec,
    *,
    default_axis: int = -1,
    lo: jax.Array | None = None,
    hi: jax.Array | None = None,
    where: str = "tensor",
) -> jax.Array:
  """The scale of the integer grid ``quantize`` puts ``x`` on.

  Args:
    x: a float array.
    spec: an integer spec.
    default_axis: the channel axis when ``spec.axis`` is None.
    lo, hi: a stored range (shape of ``x`` with the shared axes set to 1);
      ``None`` = computed from ``x`` by ``spec.calibration``.
    where: a name for error messages (e.g. the layer).

  Returns:
    The float32 scale, shape of ``x`` with the shared axes set to 1.

  Raises:
    ValueError: ``spec`` is not an integer spec, or its per-channel axis is
      out of range for ``x``.
  """
  if not spec.is_int:
    raise ValueError(f"{where}: int_scale needs an integer spec; got format={spec.format!r}")
  axes = ranges.shared_axes(x.ndim, spec, default_axis, where)
  return _aqt.int_scale(x, spec, axes, lo=lo, hi=hi)


def scale_and_zero_point(spec: TensorSpec, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(scale, zero_point)`` of the grid ``quantize`` uses for a stored range.

  Under ``spec`` with the stored range ``lo``/``hi``, value ``x`` is the
  integer ``round(x / scale) + zero_point``.

  Args:
    spec: an integer spec.
    lo, hi: the range (any matching shapes, e.g. kept dims); asymmetric specs
      widen it to hold 0.

  Returns:
    ``(scale, zero_point)``, float32 arrays of the range's shape;
    ``zero_point`` is integer-valued, 0 when symmetric.

  Raises:
    ValueError: ``spec`` is not an integer spec.
  """
  if not spec.is_int:
    raise ValueError(f"scale_and_zero_point needs an integer spec; got format={spec.format!r}")
  return _aqt.scale_and_zero_point(lo, hi, _aqt._int_numerics(spec))  # pylint: disable=protected-access


def int_grid_params(
    x: jax.Array,
    spec: TensorSpec,
    *,
    default_axis: int = -1,
    lo: jax.Array | None = None,
    hi: jax.Array | None = None,
    where: str = "tensor",
):
  """``(scale, zero_point, qmin, qmax)`` of the integer grid ``quantize`` puts ``x`` on.

  Args:
    x: a float array.
    spec: an integer spec.
    default_axis: the channel axis when ``spec.axis`` is None.
    lo, hi: a stored range (shape of ``x`` with the shared axes set to 1);
      ``None`` = computed from ``x`` by ``spec.calibration``.
    where: a name for error messages (e.g. the layer).

  Returns:
    ``(scale, zero_point, qmin, qmax)``: float32 ``scale`` and
    ``zero_point`` (integer-valued; 0 if symmetric) of the range's shape, and
    the float32 grid ends ``qmin``, ``qmax``.

  Raises:
    ValueError: ``spec`` is not an integer spec, or its per-channel axis is
      out of range for ``x``.
  """
  if not spec.is_int:
    raise ValueError(f"{where}: int_grid_params needs an integer spec; got format={spec.format!r}")
  axes = ranges.shared_axes(x.ndim, spec, default_axis, where)
  if lo is None:
    lo, hi = _aqt.calibrated_range(x, spec, axes)
  scale, z = scale_and_zero_point(spec, lo, hi)
  qmin, qmax = _aqt.int_grid(spec.bits, spec.symmetric)
  return scale, z, qmin, qmax


def calibrated_range(
    x: jax.Array,
    spec: TensorSpec,
    *,
    default_axis: int = -1,
    where: str = "tensor",
    batch_axes: tuple[int, ...] = (),
) -> tuple[jax.Array, jax.Array]:
  """The range ``spec.calibration`` picks for ``x``, as ``(lo, hi)``.

  Args:
    x: a float array.
    spec: the tensor's spec.
    default_axis: the channel axis when ``spec.axis`` is None.
    where: a name for error messages (e.g. the layer).
    batch_axes: axes whose entries get their own range.

  Returns:
    ``(lo, hi)``, each of shape of ``x`` with the shared axes set to 1.

  Raises:
    ValueError: the per-channel axis is out of range for ``x``.
  """
  axes = ranges.shared_axes(x.ndim, spec, default_axis, where, batch_axes)
  return _aqt.calibrated_range(x, spec, axes)


def range_shape(shape, spec: TensorSpec, default_axis: int = -1, where="tensor"):
  """The shape of a stored range for a tensor of ``shape``.

  Args:
    shape: the tensor's shape.
    spec: the tensor's spec.
    default_axis: the channel axis when ``spec.axis`` is None.
    where: a name for error messages (e.g. the layer).

  Returns:
    ``shape`` with the axes that share one scale set to 1, as a tuple.

  Raises:
    ValueError: the per-channel axis is out of range for ``shape``.
  """
  axes = ranges.shared_axes(len(shape), spec, default_axis, where)
  return tuple(1 if a in axes else d for a, d in enumerate(shape))


@contextlib.contextmanager
def scales_snapped_to(table, ulps: int = 16):
  """A diagnostic context that snaps qsim's integer scales to a table.

  While active, every integer scale qsim computes is replaced by the nearest
  value of ``table`` (e.g. a converted model's per-tensor scales) when it lies
  within ``ulps`` ulp of it, and an asymmetric zero point is recomputed from
  the range's low end with that scale (``round(qmin - lo / scale)``). It asks
  "what if qsim had the runtime's scales", matching by value, not by tensor;
  not for results. Applies to programs traced while active (jit caches traced
  outside it are not affected).

  Args:
    table: the scales to snap to (any array-like, flattened, as float32).
    ulps: the largest distance, in ulps of qsim's scale, that is snapped (>= 0).

  Yields:
    None; the snapping is undone on exit.

  Raises:
    ValueError: ``ulps`` is negative or ``table`` is empty.
  """
  if int(ulps) < 0:
    raise ValueError(f"ulps={ulps!r} is not valid; give 0 or more")
  values = np.sort(np.asarray(table, np.float32).ravel())
  if values.size == 0:
    raise ValueError("table is empty; give at least one scale")
  original = _aqt.scale_and_zero_point
  table_j = jnp.asarray(values)

  def snapped(lo, hi, numerics_):
    scale, z = original(lo, hi, numerics_)
    d = jnp.abs(scale[..., None] - table_j)
    near = table_j[jnp.argmin(d, -1)]
    scale = jnp.where(jnp.min(d, -1) <= int(ulps) * jnp.spacing(scale), near, scale)
    if isinstance(numerics_, _aqt.IntNumerics) and not numerics_.symmetric:
      qmin, _ = _aqt.int_grid(numerics_.bits, False)
      z = jnp.round(qmin - jnp.minimum(jax.lax.stop_gradient(lo).astype(jnp.float32), 0.0) / scale)
    return scale, z

  _aqt.scale_and_zero_point = snapped
  try:
    yield
  finally:
    _aqt.scale_and_zero_point = original
