"""Quantized Flax Linen layers: Dense, Conv, Embed.

Each layer *is* its ``flax.linen`` counterpart (same class, same parameters,
same names) with quantization injected through flax's own hooks
(``dot_general_cls``/``conv_general_dilated_cls``). ``quant=None`` builds the
plain flax layer (Conv: with qsim's CPU lowering for one input channel,
equal to flax's up to float rounding; see :func:`conv_general_dilated`); a
layer whose resolved spec is ``None`` runs the plain op. The quantizer child module owns the layer's 'quant_stats'
variables (static activation ranges).

Modes, chosen by what ``apply`` makes mutable:

* inference (default): weights and activations are fake-quantized; static
  activations use the stored ranges.
* calibration (``mutable=['quant_stats']``): the layer runs in float and
  records the calibration range of its input (running min/max for
  'absmax', running mean for 'percentile' and 'mse'), as TFLite calibrates
  a float model. See :func:`qsim.quant.calibrate`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from qsim.quant import fake_quant
from qsim.quant.spec import LayerSpec, QuantConfig, TensorSpec

QUANT_STATS = "quant_stats"
QUANT_RNG = "quant"

Quant = QuantConfig | LayerSpec | None


def layer_name(module: nn.Module, drop_last: int = 0) -> str:
  path = module.scope.path if module.scope is not None else ()
  return "/".join(path[: len(path) - drop_last])


def resolve(quant: Quant, name: str) -> LayerSpec | None:
  """The LayerSpec for layer ``name`` (a config is looked up by name)."""
  if isinstance(quant, QuantConfig):
    return quant.resolve(name)
  return quant


def _key(module: nn.Module, spec: TensorSpec | None):
  if spec is not None and spec.needs_rng:
    return module.make_rng(QUANT_RNG)
  return None


def quantize_tensor(
    module: nn.Module,
    x: jax.Array,
    spec: TensorSpec | None,
    *,
    slot: str,
    default_axis: int = -1,
    where: str = "",
    batch_axes: tuple[int, ...] = (),
) -> jax.Array:
  """Fake-quantizes ``x`` inside ``module``, handling static ranges.

  Args:
    module: the owning module (for variables and RNG).
    x: the tensor.
    spec: its spec (None = float).
    slot: the variable-name prefix of its stored range (e.g. 'act').
    default_axis: channel axis when ``spec.axis`` is None.
    where: the layer's name, for errors.
    batch_axes: for activations, the batch axis: a dynamic range is computed
      per example (a static range is shared by all examples).
  """
  if spec is None:
    return x
  calibrating = module.is_mutable_collection(QUANT_STATS) and not module.is_initializing()
  if calibrating and spec.range == "dynamic":
    return x  # calibration observes the float model: nothing is quantized
  where = f"{where or layer_name(module)}.{slot}"
  if spec.range == "dynamic":
    return fake_quant.quantize(
        x,
        spec,
        default_axis=default_axis,
        key=_key(module, spec),
        where=where,
        batch_axes=batch_axes,
    )
  shape = fake_quant.range_shape(x.shape, spec, default_axis, where)
  lo = module.variable(QUANT_STATS, f"{slot}_lo", jnp.zeros, shape, jnp.float32)
  hi = module.variable(QUANT_STATS, f"{slot}_hi", jnp.zeros, shape, jnp.float32)
  count = module.variable(
      QUANT_STATS, f"{slot}_count", lambda: jnp.zeros((), jnp.int32)
  )
  if module.is_initializing():
    return x
  if calibrating:
    blo, bhi = fake_quant.calibrated_range(
        x, spec, default_axis=default_axis, where=where
    )
    n = count.value
    if spec.calibration == "absmax":
      new_lo, new_hi = jnp.minimum(lo.value, blo), jnp.maximum(hi.value, bhi)
    else:
      w = 1.0 / (n + 1).astype(jnp.float32)
      new_lo = lo.value + (blo - lo.value) * w
      new_hi = hi.value + (bhi - hi.value) * w
    lo.value = jnp.where(n == 0, blo, new_lo)
    hi.value = jnp.where(n == 0, bhi, new_hi)
    count.value = n + 1
    return x
  return fake_quant.quantize(
      x,
      spec,
      default_axis=default_axis,
      lo=lo.value,
      hi=hi.value,
      key=_key(module, spec),
      where=where,
  )


def _quantizing(module: nn.Module) -> bool:
  """True in inference mode (not while initializing or calibrating)."""
  return not module.is_initializing() and not module.is_mutable_collection(QUANT_STATS)


class _QuantOperands(nn.Module):
  """Base of the op hooks: an ``op(lhs, rhs, ...)`` on fake-quantized operands.

  ``lhs`` is the activation (dynamic ranges per example, batch axis 0),
  ``rhs`` the kernel. The layer's name is the parent's path (the hook is the
  flax layer's child). With ``int_bias``, the parent layer's bias is moved
  onto the int32 grid of the accumulator (see :class:`LayerSpec`).
  """

  quant: Any = None

  def quantized_op(self, op, lhs, rhs, *args, **kwargs):
    name = layer_name(self, drop_last=1)
    spec = resolve(self.quant, name)
    if spec is None or rhs.size < spec.min_weights:
      return op(lhs, rhs, *args, **kwargs)
    lq = quantize_tensor(self, lhs, spec.act, slot="act", where=name, batch_axes=(0,))
    rq = quantize_tensor(self, rhs, spec.weight, slot="weight", where=name)
    y = op(lq, rq, *args, **kwargs)
    if spec.int_bias and _quantizing(self) and self.parent.has_variable("params", "bias"):
      y = y + self._bias_rounding(lhs, rhs, spec, name)
    return y

  def _bias_rounding(self, lhs, rhs, spec: LayerSpec, name: str):
    """``round(b / s) * s - b`` for the parent's bias ``b`` at the
    accumulator scale ``s = act scale * weight scale`` (no gradient: the
    bias itself, added by the flax layer, keeps its own)."""
    bias = self.parent.get_variable("params", "bias")
    s_in = fake_quant.int_scale(
        lhs, spec.act, lo=self.get_variable(QUANT_STATS, "act_lo"),
        hi=self.get_variable(QUANT_STATS, "act_hi"), where=f"{name}.act")
    s_w = fake_quant.int_scale(rhs, spec.weight, where=f"{name}.weight").reshape(-1)
    if s_in.size != 1 or s_w.size not in (1, bias.size):
      raise ValueError(
          f"{name}: int_bias needs a per-tensor activation scale and a per-tensor or per-output-channel"
          f" weight scale; got {s_in.size} activation and {s_w.size} weight scales for {bias.size} outputs")
    s = s_in.reshape(()) * s_w
    return jax.lax.stop_gradient(jnp.round(bias / s) * s - bias)


class QuantDotGeneral(_QuantOperands):
  """``lax.dot_general`` on fake-quantized operands (flax's ``dot_general_cls``)."""

  @nn.compact
  def __call__(self, lhs, rhs, *args, **kwargs):
    return self.quantized_op(lax.dot_general, lhs, rhs, *args, **kwargs)


_CONV_ARGS = inspect.signature(lax.conv_general_dilated)


def conv_general_dilated(lhs, rhs, *args, **kwargs):
  """``lax.conv_general_dilated``, lowered by shape on CPU.

  A stride-1, undilated, ungrouped NHWC/HWIO convolution with ONE input
  channel (LeNet's first layer on gray images) is computed as a sum of
  ``kh * kw`` shifted, scaled copies of the padded input: XLA's CPU
  convolution runs such shapes about 8x slower (BUILD_NOTES.md, fidelity
  benchmark). The result equals XLA's up to float rounding (summation order,
  ~1e-6 relative). Every other case, and every other backend, is XLA's op.
  """
  a = _CONV_ARGS.bind(lhs, rhs, *args, **kwargs).arguments
  ones = lambda v: v is None or all(int(s) == 1 for s in v)  # noqa: E731
  if not (
      jax.default_backend() == "cpu" and lhs.ndim == 4 and rhs.ndim == 4 and rhs.shape[2] == 1
      and ones(a["window_strides"]) and ones(a.get("lhs_dilation")) and ones(a.get("rhs_dilation"))
      and a.get("feature_group_count", 1) == 1 and a.get("batch_group_count", 1) == 1
      and a.get("dimension_numbers") == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  ):
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
  pads = a["padding"]
  if isinstance(pads, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), pads)
  return _shifted_sum_conv(lhs, rhs, tuple(tuple(int(p) for p in pad) for pad in pads))


@functools.partial(jax.jit, static_argnums=2)
def _shifted_sum_conv(lhs, rhs, pads):
  """One-input-channel convolution as a sum of shifted, scaled copies. Jitted
  on its own so that op-by-op (eager) calls compile the same fused loop as
  a jitted model (bit-identical results in every program)."""
  kh, kw = rhs.shape[:2]
  xp = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      term = xp[:, i : i + ho, j : j + wo, :] * rhs[i, j, 0]
      out = term if out is None else out + term
  return out.astype(jnp.result_type(lhs, rhs))


class QuantConv(_QuantOperands):
  """``lax.conv_general_dilated`` on fake-quantized operands.

  The convolution itself is XLA's; only the operands are quantized, so the
  gradients of kernel and input are straight-through (AQT's own convolution
  has zero gradients: upstream issue #285).
  """

  @nn.compact
  def __call__(self, lhs, rhs, *args, **kwargs):
    return self.quantized_op(conv_general_dilated, lhs, rhs, *args, **kwargs)


class Output(nn.Module):
  """A model's output point (qsim's models name it ``logits``): quantized
  by its resolved spec's ``output`` tensor (e.g. ``tflite_int8``: int8 with
  a calibrated static range, as the runtime emits int8 logits); identity
  otherwise."""

  quant: Any = None

  @nn.compact
  def __call__(self, x):
    spec = resolve(self.quant, layer_name(self))
    if spec is None or spec.output is None:
      return x
    return quantize_tensor(self, x, spec.output, slot="output", batch_axes=(0,))


def Dense(features: int, *, quant: Quant = None, **kwargs) -> nn.Dense:  # pylint: disable=invalid-name
  """A ``flax.linen.Dense`` whose matmul is quantized by ``quant``.

  Args:
    features: output features.
    quant: a QuantConfig (looked up by this layer's name), a LayerSpec, or
      None (the plain flax layer).
    **kwargs: any ``flax.linen.Dense`` argument (``name``, ``use_bias``...).
  """
  if quant is not None:
    kwargs["dot_general_cls"] = functools.partial(QuantDotGeneral, quant=quant)
  return nn.Dense(features, **kwargs)


def Conv(features: int, kernel_size, *, quant: Quant = None, **kwargs) -> nn.Conv:  # pylint: disable=invalid-name
  """A ``flax.linen.Conv`` whose convolution is quantized by ``quant``
  (``None``: float), lowered by :func:`conv_general_dilated`."""
  kwargs["conv_general_dilated_cls"] = functools.partial(QuantConv, quant=quant)
  return nn.Conv(features, kernel_size, **kwargs)


class Embed(nn.Embed):
  """``flax.linen.Embed`` with a fake-quantized table.

  The weight spec's default channel axis is 0: one scale per embedding row
  (per token), as integer runtimes quantize gather tables. Activations of an
  embedding are the integer token ids: ``act`` is ignored.
  """

  quant: Any = None

  def __call__(self, inputs):
    spec = resolve(self.quant, layer_name(self))
    if spec is None or spec.weight is None:
      return super().__call__(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError("Input type must be an integer or unsigned integer.")
    (table,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
    table = quantize_tensor(self, table, spec.weight, slot="weight", default_axis=0)
    return jnp.take(table, inputs, axis=0)
