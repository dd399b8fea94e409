"""Clip-range calibration: absmax, percentile and MSE-optimal search.

Pure ``jax.numpy``; no AQT here. Ranges are returned as ``(lo, hi)`` with the
reduced axes kept (size 1), so they broadcast against the tensor. Ranges
always contain zero, so that zero is exactly representable (as in TFLite).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from qsim.quant.spec import TensorSpec


def channel_axis(ndim: int, axis: int, where: str = "tensor") -> int:
  """Normalises ``axis`` for a rank-``ndim`` tensor, with a clear error.

  Args:
    ndim: the tensor's rank.
    axis: the channel axis, in ``[-ndim, ndim - 1]``.
    where: a name for error messages (e.g. the layer).

  Returns:
    ``axis`` as a non-negative index in ``[0, ndim - 1]``.

  Raises:
    ValueError: ``axis`` is out of range.
  """
  if not -ndim <= axis < ndim:
    raise ValueError(
        f"{where}: per-channel axis={axis} is out of range for a rank-{ndim}"
        f" tensor; valid range is [{-ndim}, {ndim - 1}]"
    )
  return axis % ndim


def shared_axes(
    ndim: int,
    spec: TensorSpec,
    default_axis: int,
    where: str = "tensor",
    batch_axes: Sequence[int] = (),
) -> tuple[int, ...]:
  """The axes that share one scale.

  All axes but the channel axis (if any) and the ``batch_axes`` (each example
  gets its own range).

  Args:
    ndim: the tensor's rank.
    spec: the tensor's spec (its granularity and axis).
    default_axis: the channel axis when ``spec.axis`` is None.
    where: a name for error messages (e.g. the layer).
    batch_axes: axes whose entries get their own range (may be negative).

  Returns:
    The shared axes, ascending non-negative indices.

  Raises:
    ValueError: the per-channel axis is out of range.
  """
  keep = {a % ndim for a in batch_axes}
  if spec.granularity == "per_channel":
    axis = default_axis if spec.axis is None else spec.axis
    keep.add(channel_axis(ndim, axis, where))
  return tuple(a for a in range(ndim) if a not in keep)


def _include_zero(lo, hi):
  return jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)


def _quantile(x, q, axes):
  # jnp.quantile wants one axis: move the reduced axes to the end, flatten.
  keep = [a for a in range(x.ndim) if a not in axes]
  moved = jnp.transpose(x, keep + list(axes))
  flat = moved.reshape(moved.shape[: len(keep)] + (-1,))
  out = jnp.quantile(flat, q, axis=-1, method="linear")
  shape = [1 if a in axes else x.shape[a] for a in range(x.ndim)]
  return out.reshape(shape)


def data_range(x: jax.Array, spec: TensorSpec, axes: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """The absmax or percentile range of ``x`` over ``axes`` (kept as size 1).

  Symmetric specs get ``(-m, m)``; asymmetric specs get ``(min, max)``
  widened to include zero.

  Args:
    x: the tensor.
    spec: its spec: 'percentile' calibration uses ``spec.percentile``, any
      other calibration gives the absmax (min/max) range.
    axes: the axes that share a scale (reduced).

  Returns:
    ``(lo, hi)``, float32, shape of ``x`` with ``axes`` set to 1.
  """
  axes = tuple(axes)
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  if spec.calibration == "percentile":
    q = spec.percentile / 100.0
    if spec.symmetric:
      m = _quantile(jnp.abs(x), q, axes)
      return -m, m
    lo, hi = _quantile(x, 1.0 - q, axes), _quantile(x, q, axes)
    return _include_zero(lo, hi)
  if spec.symmetric:
    m = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    return -m, m
  lo = jnp.min(x, axis=axes, keepdims=True)
  hi = jnp.max(x, axis=axes, keepdims=True)
  return _include_zero(lo, hi)


def mse_range(
    x: jax.Array,
    spec: TensorSpec,
    axes: Sequence[int],
    quantize: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
) -> tuple[jax.Array, jax.Array]:
  """The clip range, a ratio of the absmax range, minimising squared error.

  Args:
    x: the tensor.
    spec: its spec (``mse_steps`` candidate ratios in ``[mse_min_ratio, 1]``).
    axes: the axes that share a scale.
    quantize: ``quantize(x, lo, hi) -> fake-quantized x`` for a given range.

  Returns:
    ``(lo, hi)`` per channel, each channel with its own best ratio.
  """
  axes = tuple(axes)
  x = jax.lax.stop_gradient(x)
  lo0, hi0 = data_range(x, spec.replace(calibration="absmax"), axes)
  ratios = jnp.linspace(spec.mse_min_ratio, 1.0, spec.mse_steps)

  def err(r):
    y = quantize(x, lo0 * r, hi0 * r)
    return jnp.sum(jnp.square(y - x), axis=axes, keepdims=True)

  errs = jax.lax.map(err, ratios)  # (steps, *kept)
  best = ratios[jnp.argmin(errs, axis=0)]
  return lo0 * best, hi0 * best
