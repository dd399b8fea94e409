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
import re
from typing import Any, Callable

import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import jax
import jax.numpy as jnp
from jax import lax

from qsim.quant import fake_quant
from qsim.quant import fixed_point
from qsim.quant.spec import LayerSpec, QuantConfig, TensorSpec

QUANT_STATS = "quant_stats"
QUANT_RNG = "quant"

Quant = QuantConfig | LayerSpec | None


def layer_name(module: nn.Module, drop_last: int = 0, then: str | None = None) -> str:
  """``module``'s path joined by '/', with its last parts dropped or one appended.

  Args:
    module: a bound flax module (unbound: the empty path).
    drop_last: how many trailing path parts to drop (0 = none).
    then: a name appended after dropping (e.g. a sibling's name); None or
      empty: nothing appended.

  Returns:
    The path, e.g. ``'block1/conv2'``.
  """
  path = module.scope.path if module.scope is not None else ()
  path = tuple(path[: len(path) - drop_last]) + ((then,) if then else ())
  return "/".join(path)


def resolve(quant: Quant, name: str) -> LayerSpec | None:
  """The LayerSpec for layer ``name`` (a config is looked up by name).

  Args:
    quant: a QuantConfig, a LayerSpec (used for every layer), or None.
    name: the layer's path, as :func:`layer_name` gives it.

  Returns:
    The layer's LayerSpec, or None (float).
  """
  if isinstance(quant, QuantConfig):
    return quant.resolve(name)
  return quant


class _Recording(QuantConfig):
  """A config that records the layer names it resolves (every layer float)."""

  def resolve(self, layer_name: str):  # QuantConfig.resolve, recorded
    self.seen.append(layer_name)  # pylint: disable=no-member
    return super().resolve(layer_name)


def resolved_names(model: nn.Module, example) -> list[str]:
  """The names ``model`` looks its specs up by, in the order it first does.

  Traced once (``jax.eval_shape`` of ``init``), with every layer float. A
  rule pattern of a QuantConfig that matches none of them changes nothing.

  Args:
    model: a model built from qsim's layers (any ``quant`` is replaced).
    example: model inputs ``[N, ...]``; only the first sample is traced.

  Returns:
    The layer names (module paths joined by '/'), without repeats.
  """
  recording = _Recording(default=LayerSpec())
  object.__setattr__(recording, "seen", [])
  jax.eval_shape(model.clone(quant=recording).init, jax.random.key(0), example[:1])
  return list(dict.fromkeys(recording.seen))


def check_rules(config: QuantConfig, names, where: str = "") -> None:
  """Raises ``ValueError`` when a rule of ``config`` matches none of ``names``.

  Args:
    config: a QuantConfig.
    names: the model's layer names (:func:`resolved_names`).
    where: what the config is (e.g. "quantizer 'mixed'"), for the message.

  Raises:
    ValueError: naming the pattern and listing the layer names.
  """
  for pattern, _ in config.rules:
    if not any(re.search(pattern, n) for n in names):
      raise ValueError(
          f"{where or 'config'}: rule {pattern!r} matches no layer of the model; its layers are {list(names)}"
      )


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
    range_of: nn.Module | None = None,
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
    range_of: a static range is still calibrated on ``x`` (its own, for
      inspection), but inference quantizes with ``range_of``'s range of the
      same ``slot`` (a tensor of a same-scale group: see :class:`Output`).

  Returns:
    ``x`` fake-quantized (same shape and dtype); ``x`` itself when ``spec``
    is None, while initializing, and while calibrating (a static range is
    then updated from ``x``).

  Raises:
    ValueError: the spec's per-channel axis is out of range for ``x``, or
      stochastic rounding without a 'quant' PRNG stream.
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
  count = module.variable(QUANT_STATS, f"{slot}_count", lambda: jnp.zeros((), jnp.int32))
  if module.is_initializing():
    return x
  if calibrating:
    blo, bhi = fake_quant.calibrated_range(x, spec, default_axis=default_axis, where=where)
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
  if range_of is not None:
    lo, hi = (range_of.get_variable(QUANT_STATS, f"{slot}_{end}") for end in ("lo", "hi"))
  else:
    lo, hi = lo.value, hi.value
  y = fake_quant.quantize(
      x,
      spec,
      default_axis=default_axis,
      lo=lo,
      hi=hi,
      key=_key(module, spec),
      where=where,
  )
  if spec.is_int and spec.granularity == "per_tensor":
    y = _stored_tensor(module, x, y, spec, lo, hi, where)
  return y


# --- TFLite built-in requantization (LayerSpec.requant='fixed_point') -------
#
# An int8 runtime writes each op's int32 result to the next stored int8
# tensor. qsim's op (conv, matmul, MUL, MEAN) runs where its inputs' scales are
# known, the stored tensor's range lives where it is stored (the next
# layer's input, an Output or BatchNorm point), after any fused ReLU, max-pool
# or reshape (all commute with a monotone per-channel requantization). The
# op therefore leaves a *pending requantization* (its accumulator scale and
# recipe) in a registry of the current ``apply``; the next static per-tensor
# integer point (in program order) consumes it: it recovers the exact int32
# accumulator from its float input and requantizes it with the built-in
# kernel's fixed-point arithmetic. Every point also records its grid, which a
# MUL or MEAN reads as its input's scale. Only in inference, only under
# ``requant='fixed_point'``; the gradient is the float quantizer's
# (straight-through).


def _registry(module: nn.Module) -> dict:
  root = module.scope.root
  reg = getattr(root, "_qsim_requant", None)
  if reg is None:
    # grids: id(stored tensor) -> (tensor, scale, zero point), for the ADDs that read it (the
    # tensor is held so that its id is not reused within the apply)
    reg = {"pending": None, "grid": None, "grids": {}}
    object.__setattr__(root, "_qsim_requant", reg)
  return reg


def _set_pending(module: nn.Module, **pending) -> None:
  reg = _registry(module)
  if reg["pending"] is not None and reg["pending"]["kind"] != "add":  # an ADD's float consumer drops it
    raise ValueError(
        f"{layer_name(module)}: the int32 result of {reg['pending']['where']} was never stored"
        " (requant='fixed_point' and 'mlas' need every op's output to reach an int8 point)"
    )
  reg["pending"] = pending


def _stored_tensor(module: nn.Module, x, y, spec: TensorSpec, lo, hi, where: str):
  """``y`` (``x`` fake-quantized on ``spec``'s static per-tensor grid), or,
  when an op left a pending fixed-point requantization, that op's built-in
  int8 result on the same grid. Records the grid for the next MUL/MEAN."""
  reg = _registry(module)
  scale, z, qmin, qmax = fake_quant.int_grid_params(x, spec, lo=lo, hi=hi, where=where)
  scale, z = scale.reshape(()), z.reshape(())
  reg["grid"] = (scale, z)
  pending, reg["pending"] = reg["pending"], None
  if pending is None or (pending["kind"] == "add" and x is not pending["out"]):
    return _record_grid(reg, y, scale, z)  # (an ADD whose result another op read first was float)
  xs = jax.lax.stop_gradient(x)
  if pending["kind"] == "add":
    total = pending["sum"]
    (a, ga), (b, gb) = pending["operands"]
    qa, qb = (_steps(v, g[0]) + g[1] for v, g in ((a, ga), (b, gb)))
    q_add = fixed_point.int8_add(qa, qb, ga, gb, scale, pending["recipe"], z).astype(jnp.float32)
    # where a fused activation changed the sum (ReLU's zeros), the stored value is the activation's
    q = jnp.where(xs == jax.lax.stop_gradient(total), q_add, _steps(xs, scale))
  elif pending["kind"] == "mean":
    # the int32 sum of q - zp, then TFLite's int8 MEAN (reference QuantizedMeanOrSum: the multiplier of
    # in_scale/out_scale with 1/N folded into it) or MLAS's QLinearGlobalAveragePool
    n, s_in = pending["n"], pending["scale"]
    acc = jnp.round(xs * (n * jax.lax.reciprocal(s_in))).astype(jnp.int32)
    if pending["rounding"] == "mlas":
      q = fixed_point.mlas_mean(acc, n, s_in, scale)
    else:
      m, e = fixed_point.quantize_multiplier(s_in, jnp.float32(1.0), scale)
      sh = jnp.minimum(jnp.minimum(n.bit_length() - 1, 32), 31 + e)
      m = (m // n) * (jnp.int32(1) << sh) + ((m % n) * (jnp.int32(1) << sh)) // n  # floor(m * 2^sh / n), exact
      q = fixed_point.multiply_by_quantized_multiplier(acc, m, e - sh, "half_away")
  else:
    a, b = pending["a"], pending["b"]
    if x.shape[-1] % b.size:
      raise ValueError(
          f"{where}: cannot requantize the output of {pending['where']}: {b.size} channel scales"
          f" for a last axis of {x.shape[-1]}"
      )
    b = jnp.tile(b.reshape(-1), x.shape[-1] // b.size)  # a flattened NHWC map keeps channels last
    acc = _steps(xs, a * b).astype(jnp.int32)
    if pending["rounding"] == "mlas":  # MlasRequantizeOutput: float(acc) * ((a * b) / scale), half to even
      q = jnp.round(acc.astype(jnp.float32) * ((a * b) / scale))
    elif pending["rounding"] == "mlas_mul":
      q = fixed_point.mlas_mul(acc, a, b, scale, z)
    else:
      m, e = fixed_point.quantize_multiplier(a, b, scale)
      q = fixed_point.multiply_by_quantized_multiplier(acc, m, e, pending["rounding"])
  q = jnp.clip(q.astype(jnp.float32) + z, qmin, qmax)
  return _record_grid(reg, y + jax.lax.stop_gradient((q - z) * scale - y), scale, z)


def _steps(v, scale):
  """``v`` in steps of ``scale``, rounded half to even (forward only): the
  integer value of a stored tensor, an accumulator or a bias."""
  return jnp.round(jax.lax.stop_gradient(v) * jax.lax.reciprocal(scale))


def _record_grid(reg: dict, y, scale, z):
  reg["grids"][id(y)] = (y, scale, z)
  return y


def add(module: nn.Module, a, b, act: Callable[[jax.Array], jax.Array] | None = None):
  """``act(a + b)``: a model's ADD of two stored tensors (a residual ADD).

  Under a spec (resolved by ``module``'s name) with ``add_requant`` other
  than 'fp32', in inference, the point that stores the result computes it
  as that runtime's int8 ADD from the operands' integer values
  (:func:`qsim.quant.fixed_point.int8_add`; a fused ``act`` such as ReLU
  commutes with it). ``a`` and ``b`` must then be tensors as a static int8
  point (``Output``, ``BatchNorm``) returned them, and the result is
  simulated only where the next static int8 point stores this very tensor
  (a float consumer in between: the float sum). Otherwise the float sum.

  Args:
    module: the module whose name resolves the spec (``module.quant``).
    a: the first operand.
    b: the second operand (broadcasts with ``a``).
    act: a fused activation applied to the sum (e.g. ReLU); None: identity.

  Returns:
    ``act(a + b)`` in float; the storing point replaces it by the integer
    result where that applies.

  Raises:
    ValueError: under an integer ``add_requant`` in inference, an operand
      that no static per-tensor int8 point stored, or a pending op result
      that was never stored.
  """
  y = a + b
  out = y if act is None else act(y)
  spec = resolve(module.quant, layer_name(module))
  if spec is not None and spec.add_requant != "fp32" and _quantizing(module):
    where = f"{layer_name(module)} ADD"
    operands = _operands(module, where, a, b)
    _set_pending(module, kind="add", operands=operands, sum=y, out=out, recipe=spec.add_requant, where=where)
  return out


def mul(module: nn.Module, a, b):
  """``a * b``: an elementwise MUL of two stored tensors (a recurrent
  cell's gate products). Under a spec (resolved by ``module``'s name) with
  ``requant='fixed_point'``, in inference, the point that stores the
  product applies the built-in int8 MUL: ``(q_a - z_a)(q_b - z_b)`` times
  the Q31 multiplier of ``s_a s_b / s_out``, shifts rounded half away from
  zero (the reference kernel; 1 of 403,200 GRU values differs, measured in
  BUILD_NOTES). Otherwise the float product (the stored point rounds it
  once).

  Args:
    module: the module whose name resolves the spec (``module.quant``).
    a: the first operand.
    b: the second operand (broadcasts with ``a``).

  Returns:
    ``a * b`` in float; the storing point replaces it by the integer result
    where that applies.

  Raises:
    ValueError: under ``requant='fixed_point'`` in inference, an operand that
      no static per-tensor int8 point stored, or a pending op result that was
      never stored.
  """
  spec = resolve(module.quant, layer_name(module))
  if _fixed_point(spec, module):
    where = f"{layer_name(module)} MUL"
    (_, (sa, _)), (_, (sb, _)) = _operands(module, where, a, b)
    _set_pending(module, kind="acc", a=sa, b=sb.reshape(1), rounding="half_away", where=where)
  return a * b


def stored_grid(module: nn.Module, t):
  """The grid of ``t`` if a static per-tensor int8 point stored it in this apply.

  Args:
    module: any module of the current apply (the registry is the root's).
    t: the tensor, matched by identity (not by value).

  Returns:
    ``(scale, zero point)`` (float32 scalars), or None when no such point
    stored this very tensor.
  """
  entry = _registry(module)["grids"].get(id(t))
  return entry[1:] if entry is not None and entry[0] is t else None


def _operands(module: nn.Module, where: str, *tensors):
  """``(tensor, (scale, zero point))`` of each stored int8 tensor."""
  out = []
  for name, t in zip("ab", tensors):
    grid = stored_grid(module, t)
    if grid is None:
      raise ValueError(
          f"{where}: operand {name} is not a stored int8 tensor (the output of a static per-tensor int8"
          f" Output or BatchNorm point); the op's integer recipe needs both operands' grids: store it,"
          f" or give {layer_name(module)!r} (a rule) add_requant='fp32' for a float ADD, requant='fp32'"
          " for a float MUL"
      )
    out.append((t, grid))
  return tuple(out)


def _fixed_point(spec: LayerSpec | None, module: nn.Module) -> bool:
  return spec is not None and spec.requant == "fixed_point" and _quantizing(module)


def _integer_requant(spec: LayerSpec | None, module: nn.Module) -> bool:
  """True where the layer's ops requantize as a runtime's integer kernels ('fixed_point' or 'mlas')."""
  return spec is not None and spec.requant in ("fixed_point", "mlas") and _quantizing(module)


def global_mean(module: nn.Module, x, axis=(1, 2)):
  """``jnp.mean(x, axis)``, the model's global average pool.

  Under ``requant='fixed_point'`` (resolved by ``module``'s name) the point
  that stores it applies TFLite's int8 MEAN recipe to the last stored tensor
  (``x``'s grid); under ``'mlas'`` ONNX Runtime's QLinearGlobalAveragePool
  (the integer sum times ``float32(s_in / (s_out N))``, half to even).

  Args:
    module: the module whose name resolves the spec (``module.quant``).
    x: the feature map, e.g. NHWC.
    axis: the axes averaged over (default: H and W of NHWC).

  Returns:
    ``jnp.mean(x, axis)`` in float; the storing point replaces it by the
    integer result where that applies.

  Raises:
    ValueError: under ``requant='fixed_point'`` or ``'mlas'`` in inference,
      no tensor was stored int8 before, or a pending op result was never
      stored.
  """
  spec = resolve(module.quant, layer_name(module))
  if _integer_requant(spec, module):
    grid = _registry(module)["grid"]
    if grid is None:
      raise ValueError(f"{layer_name(module)}: global_mean under requant={spec.requant!r} needs x stored int8 first")
    n = 1
    for a in axis:
      n *= x.shape[a]
    rounding = "mlas" if spec.requant == "mlas" else "half_away"
    _set_pending(module, kind="mean", n=n, scale=grid[0], rounding=rounding, where=f"{layer_name(module)} MEAN")
  return jnp.mean(x, axis=axis)


def _quantizing(module: nn.Module) -> bool:
  """True in inference mode (not while initializing or calibrating)."""
  return not module.is_initializing() and not module.is_mutable_collection(QUANT_STATS)


class _QuantOperands(nn.Module):
  """Base of the op hooks: an ``op(lhs, rhs, ...)`` on fake-quantized operands.

  ``lhs`` is the activation (dynamic ranges per example, batch axis 0),
  ``rhs`` the kernel. The layer's name is the parent's path (the hook is the
  flax layer's child). The hook also owns the layer's bias as the runtime
  stores it: with ``int_bias`` on the int32 grid of the accumulator, else
  in the ``const`` format (see :class:`LayerSpec`). The hook adds the bias;
  the flax layer adds zeros (:func:`_bias_to_hook`).

  ``batch_norm``: ``(name, epsilon)`` of the sibling BatchNorm that follows
  the layer.
  Under a spec with ``fold_bn`` (inference only) the BatchNorm is folded into
  the kernel and bias before they are quantized, and :class:`BatchNorm`
  skips its own arithmetic.
  """

  quant: Any = None
  batch_norm: tuple[str, float] | None = None
  stored_input: bool = False

  def quantized_op(self, op, lhs, rhs, *args, **kwargs):
    name = layer_name(self, drop_last=1)
    spec = resolve(self.quant, name)
    flax_bias = self.parent.get_variable("params", "bias") if self.parent.has_variable("params", "bias") else None
    bias = flax_bias
    folded = _fold(self, spec, self.batch_norm)
    if folded is not None:  # as the converter folds: kernel * mul, bias * mul + (beta - mean * mul)
      mul, offset = folded
      rhs = rhs * mul  # the kernel's last axis is the output channel (HWIO, (in, out))
      bias = offset if flax_bias is None else flax_bias * mul + offset
    if spec is None or rhs.size < spec.min_weights:
      y = op(lhs, rhs, *args, **kwargs)
    else:
      # a stored input (stored_input) is already on its int8 grid, which the registry holds
      lq = lhs if self.stored_input else quantize_tensor(self, lhs, spec.act, slot="act", where=name, batch_axes=(0,))
      rq = quantize_tensor(self, rhs, spec.weight, slot="weight", where=name)
      s_w = None
      if bias is not None and _quantizing(self):
        if spec.int_bias:
          bias, own, s_w = _accumulator_bias(self, lhs, rhs, bias, spec, name)
          rq = _widened_weights(rhs, rq, own, s_w, spec)
        elif spec.const is not None:
          bias = fake_quant.quantize(bias, spec.const, where=f"{name}.bias")
      y = op(lq, rq, *args, **kwargs)
      saturation = None
      if (spec.u8s8_pairs == "all" or (spec.u8s8_pairs == "dense" and op is lax.dot_general)) and _quantizing(self):
        saturation = _u8s8_saturation(self, op, lhs, lq, rhs, rq, spec, name, args, kwargs)
        y = y + saturation
      if spec.requant != "fp32" and _quantizing(self):
        return _exact_accumulator(
            self, op, (lhs, lq), (rhs, rq), y, bias, spec, name, args, kwargs, saturation, s_w=s_w
        )
    # flax adds zeros in place of its bias (see _bias_to_hook): y + bias is
    # the runtime's one float add, bit for bit.
    return y if bias is None else y + bias.astype(y.dtype)


def _bias_to_hook(*args, dtype=None, inexact=True):
  """A flax ``promote_dtype`` for Dense/Conv whose quantization hook adds the
  bias itself: the layer's own bias add then adds zeros (exact)."""
  inputs, kernel, bias = flax_dtypes.promote_dtype(*args, dtype=dtype, inexact=inexact)
  if inputs.dtype == args[0].dtype:  # the input itself, not a copy: a stored_input is found by identity
    inputs = args[0]
  return inputs, kernel, None if bias is None else jnp.zeros_like(bias)


def batch_norm_constants(params, stats, epsilon: float):
  """An inference BatchNorm as ``x * mul + offset``, the form the TFLite converter lowers it to.

  ``mul = gamma / sqrt(var + eps)``, ``offset = beta - mean * mul``.

  Args:
    params: the BatchNorm's params, with ``'scale'`` (gamma) and ``'bias'``
      (beta).
    stats: its batch stats, with ``'mean'`` and ``'var'``.
    epsilon: the BatchNorm's epsilon.

  Returns:
    ``(mul, offset)``, each of the features' shape.
  """
  mul = params["scale"] * jax.lax.rsqrt(stats["var"] + jnp.float32(epsilon))
  return mul, params["bias"] - stats["mean"] * mul


def _fold(module: nn.Module, spec: LayerSpec | None, batch_norm: tuple[str, float] | None):
  """``(mul, offset)`` of the BatchNorm ``batch_norm`` (a sibling of
  ``module``'s layer) when ``spec`` folds it, else None. Folding happens in
  inference (and calibration, which observes the converter's folded float
  graph), never while training or initializing."""
  if (
      not (batch_norm and spec is not None and spec.fold_bn)
      or module.is_initializing()
      or module.is_mutable_collection("batch_stats")
  ):
    return None
  bn, epsilon = batch_norm
  block = module.parent.parent
  params, stats = block.variables["params"].get(bn), block.variables.get("batch_stats", {}).get(bn)
  if params is None or stats is None:
    raise ValueError(
        f"{layer_name(module, drop_last=1)}: fold_bn needs the BatchNorm {bn!r} beside it; it has no variables there"
    )
  return batch_norm_constants(params, stats, epsilon)


def _exact_accumulator(
    module, op, lhs, rhs, y, bias, spec: LayerSpec, name: str, args, kwargs, saturation=None, s_w=None
):
  """Under ``requant='fixed_point'`` or ``'mlas'``: the layer's output as the
  exact int32 accumulator (integer operands, int32 bias, plus MLAS's pair
  ``saturation`` where given, already in ``y``) times its scale, and a pending
  requantization for the point that stores it (optimized CONV_2D /
  FULLY_CONNECTED: rounding shift half up; MLAS: see :class:`LayerSpec`).
  Forward exact, gradient that of ``y``. ``s_w``: the weight scales where
  :func:`_accumulator_bias` widened them."""
  (lhs, lq), (rhs, rq) = lhs, rhs  # (float, fake-quantized)
  s_in = _act_grid(module, lhs, spec, name)[0].reshape(())
  if s_w is None:
    s_w = fake_quant.int_scale(rhs, spec.weight, where=f"{name}.weight").reshape(-1)
  xi, wi = _steps(lq, s_in), _steps(rq, s_w)
  acc = op(xi, wi, *args, **kwargs)  # integers below 2^24: exact in float32
  s_acc = s_in * s_w
  if saturation is not None:
    acc = acc + jnp.round(saturation * jax.lax.reciprocal(s_acc))
  if bias is not None:
    acc = acc + _steps(bias, s_acc)
    y = y + bias.astype(y.dtype)
  _set_pending(
      module,
      kind="acc",
      a=s_in,
      b=s_w,
      where=name,
      rounding="half_up" if spec.requant == "fixed_point" else spec.requant,
  )
  return y + jax.lax.stop_gradient(acc * s_acc - y)


def pair_saturation_excess(u, w, chunk_elems: int = 1 << 22):
  """``sum(clip16(pairs)) - sum(pairs)`` of ``u @ w``.

  The products of each adjacent pair along K (0-1, 2-3, ...; odd K padded with
  a zero product) summed and saturated to int16, as VPMADDUBSW does; exact in
  float32 (|pair| <= 64,770). Rows in chunks (bounded memory).

  Args:
    u: [M, K] raw uint8 values, as integer-valued floats.
    w: [K, N] int8 values, as integer-valued floats.
    chunk_elems: the most pair products computed at once (sets the rows per
      chunk).

  Returns:
    [M, N] float32: what saturation adds to ``u @ w`` (0 where nothing
    saturates).
  """
  m, k = u.shape
  if k % 2:
    u, w = jnp.pad(u, ((0, 0), (0, 1))), jnp.pad(w, ((0, 1), (0, 0)))
  we, wo = w[0::2], w[1::2]

  def rows(uc):
    p = uc[:, 0::2, None] * we + uc[:, 1::2, None] * wo  # [rows, K/2, N]
    return (jnp.clip(p, -32768.0, 32767.0) - p).sum(1)

  per = max(1, chunk_elems // max(1, (k + 1) // 2 * w.shape[1]))
  if m <= per:
    return rows(u)
  n = -(-m // per)
  up = jnp.pad(u, ((0, n * per - m), (0, 0))).reshape(n, per, -1)
  return lax.map(rows, up).reshape(n * per, -1)[:m]


def _u8s8_saturation(module, op, lhs, lq, rhs, rq, spec: LayerSpec, name: str, args, kwargs):
  """The change MLAS's U8S8 pair saturation (``LayerSpec.u8s8_pairs``) makes
  to the layer's float output ``op(lq, rq)``, no gradient."""
  # LayerSpec checked the operands: asymmetric 8-bit activations, symmetric 8-bit weights.
  s_in, z = _act_grid(module, lhs, spec, name)
  s_w = fake_quant.int_scale(rhs, spec.weight, where=f"{name}.weight").reshape(-1)
  lq, rq = lax.stop_gradient(lq), lax.stop_gradient(rq)
  centered = jnp.round(lq / s_in)  # q - z
  zu8 = jnp.broadcast_to(z + 128.0, s_in.shape)  # ORT's uint8 zero point
  w = jnp.round(rq / s_w)
  if op is lax.dot_general:
    u = (centered + zu8).reshape(-1, lhs.shape[-1])
    ex = pair_saturation_excess(u, w.reshape(w.shape[0], -1)).reshape(lhs.shape[:-1] + (w.shape[-1],))
  else:
    a = _CONV_ARGS.bind(lhs, rhs, *args, **kwargs).arguments
    if (
        any(a.get(d) is not None and any(int(v) != 1 for v in a[d]) for d in ("lhs_dilation", "rhs_dilation"))
        or a.get("feature_group_count", 1) != 1
        or a.get("batch_group_count", 1) != 1
    ):
      raise ValueError(f"{name}: u8s8_pairs supports undilated, ungrouped convolutions only")
    kh, kw = rhs.shape[:2]
    strides = a["window_strides"] or (1, 1)
    pads = a["padding"]
    if isinstance(pads, str):
      pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), strides, pads)
    xp = jnp.pad(centered, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0))) + zu8.reshape(-1, 1, 1, 1)
    ho = (xp.shape[1] - kh) // strides[0] + 1
    wo = (xp.shape[2] - kw) // strides[1] + 1
    cols = [
        xp[:, i : i + (ho - 1) * strides[0] + 1 : strides[0], j : j + (wo - 1) * strides[1] + 1 : strides[1], :]
        for i in range(kh)
        for j in range(kw)
    ]
    u = jnp.stack(cols, 3).reshape(-1, kh * kw * rhs.shape[2])  # NHWC im2col: (kh, kw, cin)
    ex = pair_saturation_excess(u, w.reshape(-1, w.shape[-1])).reshape(lhs.shape[0], ho, wo, -1)
  return ex * (s_in.reshape((-1,) + (1,) * (ex.ndim - 1)) * s_w)


def _act_grid(module: nn.Module, lhs, spec: LayerSpec, name: str):
  """``(scale, zero_point)`` of the layer's input activation grid: its
  calibrated static range, or (dynamic) each example's own range, or (a
  ``stored_input``) the grid of the point that stored it."""
  if getattr(module, "stored_input", False):
    grid = stored_grid(module, lhs)
    if grid is None:
      raise ValueError(
          f"{name}: stored_input=True, but its input is not a tensor a static per-tensor int8 point"
          " stored in this apply (no grid recorded for it); store it first, or drop stored_input"
      )
    return grid
  if spec.act.range == "static":
    lo, hi = module.get_variable(QUANT_STATS, "act_lo"), module.get_variable(QUANT_STATS, "act_hi")
    return fake_quant.int_grid_params(lhs, spec.act, lo=lo, hi=hi, where=f"{name}.act")[:2]
  lo, hi = fake_quant.calibrated_range(lhs, spec.act, where=f"{name}.act", batch_axes=(0,))
  return fake_quant.scale_and_zero_point(spec.act, lo, hi)


BIAS_LIMIT = 2.0**30  # the converter's largest int32 bias before it widens the weight scale


def _accumulator_bias(module: nn.Module, lhs, rhs, bias, spec: LayerSpec, name: str):
  """``(bias, own, s_w)``: ``bias`` rounded onto the int32 grid of the
  accumulator, scale ``act scale * weight scale`` per output channel (no
  gradient through the rounding: straight-through), the kernel's own
  weight scales and the ones used (widened where the bias overflows).

  A bias the grid cannot hold within ``2^30`` steps widens its channel's
  weight scale to ``|bias| / (act scale * 2^30)``, as the TFLite converter
  does (measured on the GRU's first step, whose input is the zero state
  with scale 7.8e-9: 34 of 75 channels widened, their biases stored as
  +-2^30); the kernel is then requantized on the wider scale
  (:func:`_widened_weights`)."""
  s_in = _act_grid(module, lhs, spec, name)[0]
  s_w = fake_quant.int_scale(rhs, spec.weight, where=f"{name}.weight").reshape(-1)
  if s_in.size != 1 or s_w.size not in (1, bias.size):
    raise ValueError(
        f"{name}: int_bias needs a per-tensor activation scale and a per-tensor or per-output-channel"
        f" weight scale; got {s_in.size} activation and {s_w.size} weight scales for {bias.size} outputs"
    )
  s_in = jax.lax.stop_gradient(s_in.reshape(()))
  own = s_w
  if s_w.size == bias.size:  # per channel: the converter widens only the overflowing channels
    s_w = jnp.maximum(s_w, jnp.abs(jax.lax.stop_gradient(bias)) * jax.lax.reciprocal(s_in * BIAS_LIMIT))
  s = s_in * s_w
  q = jnp.clip(jnp.round(bias / s), -(2.0**31), 2.0**31 - 1)
  return bias + jax.lax.stop_gradient(q * s - bias), own, s_w


def _widened_weights(rhs, rq, own, s_w, spec: LayerSpec):
  """The kernel ``rq`` (fake-quantized on its own per-channel scales) with
  the channels whose scale :func:`_accumulator_bias` widened requantized
  on ``s_w`` (straight-through; where nothing widened, ``rq`` itself)."""
  qmax = 2.0 ** (spec.weight.bits - 1) - 1
  wide = jnp.clip(jnp.round(jax.lax.stop_gradient(rhs) / s_w), -qmax, qmax) * s_w
  return jnp.where(s_w > own, rq + jax.lax.stop_gradient(wide - rq), rq)


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

  Args:
    lhs: the input.
    rhs: the kernel.
    *args: further positional arguments of ``lax.conv_general_dilated``.
    **kwargs: further keyword arguments of ``lax.conv_general_dilated``.

  Returns:
    The convolution's output, as ``lax.conv_general_dilated`` returns it.
  """
  a = _CONV_ARGS.bind(lhs, rhs, *args, **kwargs).arguments
  ones = lambda v: v is None or all(int(s) == 1 for s in v)  # noqa: E731
  if not (
      jax.default_backend() == "cpu"
      and lhs.ndim == 4
      and rhs.ndim == 4
      and rhs.shape[2] == 1
      and ones(a["window_strides"])
      and ones(a.get("lhs_dilation"))
      and ones(a.get("rhs_dilation"))
      and a.get("feature_group_count", 1) == 1
      and a.get("batch_group_count", 1) == 1
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
  """A tensor an integer runtime stores between ops (a residual ADD, pooled
  features, a conv output that feeds an ADD; qsim's models name their last
  one ``logits``): quantized by its resolved spec's ``output`` tensor with a
  calibrated static range (``tflite_int8``: int8, as the runtime requantizes
  every op's output); identity when that is ``None``.

  ``range_of``: another ``Output`` whose range this tensor is stored with.
  The TFLite converter gives every tensor of a chain of same-scale ops
  (CONCATENATION, AVERAGE_POOL_2D, MAX_POOL_2D: inputs and output share one
  scale) the calibrated range of the chain's last output; its members name
  that point here (their own range is still calibrated, not used)."""

  quant: Any = None
  range_of: Any = None

  @nn.compact
  def __call__(self, x):
    spec = resolve(self.quant, layer_name(self))
    if spec is None or spec.output is None:
      return x
    return quantize_tensor(self, x, spec.output, slot="output", batch_axes=(0,), range_of=self.range_of)

  def overwritten_by(self, y) -> None:
    """Declares ``y`` the output of an op that overwrites this point's tensor in place.

    The op is elementwise and this tensor's only consumer: under
    ``inplace_ranges`` calibration widens the range to cover ``y`` too.

    Args:
      y: the overwriting op's output (same shape as this point's tensor).
    """
    _widen(self, resolve(self.quant, layer_name(self)), y, "output")


class AvgPool(nn.Module):
  """``flax.linen.avg_pool`` (VALID) as TFLite's int8 AVERAGE_POOL_2D
  computes it, under a spec with an integer ``output`` in inference: the
  op keeps its input's scale and zero point (those of ``range_of``, the
  input's point), and each output is the window's sum of the int8 values
  (zero point included) divided by the window size, rounded half away from
  zero (a float mean rounded to nearest even differs on ties: 10% of a
  2x2 pool's outputs). Otherwise (float, calibration) flax's op; the
  gradient is flax's."""

  window: tuple[int, int]
  strides: tuple[int, int]
  quant: Any = None
  range_of: Any = None

  @nn.compact
  def __call__(self, x):
    y = nn.avg_pool(x, self.window, strides=self.strides)
    spec = resolve(self.quant, layer_name(self))
    if spec is None or spec.output is None or not spec.output.is_int or self.range_of is None or not _quantizing(self):
      return y
    lo, hi = (self.range_of.get_variable(QUANT_STATS, f"output_{end}") for end in ("lo", "hi"))
    s, z = fake_quant.scale_and_zero_point(spec.output, lo, hi)
    q = jnp.round(x / s) + z  # the int8 values (x is on this grid)
    n = 1
    for w in self.window:
      n *= w
    total = nn.pool(q, 0.0, lax.add, self.window, self.strides, "VALID")
    q_out = jnp.sign(total) * jnp.floor((jnp.abs(total) + n // 2) / n)
    return y + jax.lax.stop_gradient((q_out - z) * s - y)


def _widen(module: nn.Module, spec: LayerSpec | None, y, slot: str) -> None:
  """Calibration under ``spec.inplace_ranges``: the static range of
  ``slot`` (already observed this batch) also covers ``y``: the union, as
  min/max calibration records a buffer seen twice."""
  if spec is None or spec.output is None or not spec.inplace_ranges:
    return
  if module.is_mutable_collection(QUANT_STATS) and not module.is_initializing():
    where = f"{layer_name(module)}.{slot}"
    blo, bhi = fake_quant.calibrated_range(y, spec.output, default_axis=-1, where=where)
    for end, new, pick in (("lo", blo, jnp.minimum), ("hi", bhi, jnp.maximum)):
      module.put_variable(QUANT_STATS, f"{slot}_{end}", pick(module.get_variable(QUANT_STATS, f"{slot}_{end}"), new))


class BatchNorm(nn.BatchNorm):
  """``flax.linen.BatchNorm`` (same variables) as a deployment runs it, with
  its fused activation.

  ``folded_into``: the sibling Conv/Dense the BatchNorm follows. Under a spec
  (resolved by that layer's name) with ``fold_bn``, the layer already applied
  the folded BatchNorm (see :class:`QuantConv`): only the activation and the
  output point remain. Otherwise (no layer before it, e.g. the
  pre-activation BatchNorm of a ResNet, or a spec without ``fold_bn``), a
  spec with ``output`` or ``const`` runs it as the converter's elementwise
  ops: ``x * mul`` (MUL, requantized to its own range), ``+ offset`` (ADD
  with the fused activation, requantized), ``mul``/``offset`` stored in the
  ``const`` format. The BatchNorm's output (after ``act``) is quantized by
  ``output``. Training, and ``quant=None``, are exactly flax's BatchNorm
  followed by ``act``.
  """

  quant: Any = None
  act: Callable[[jax.Array], jax.Array] | None = None
  folded_into: str | None = None
  range_of: Any = None  # an Output whose range the output takes (a same-scale group: see Output)

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, **kwargs):  # pylint: disable=arguments-differ
    own = layer_name(self)
    spec = self._spec()
    folded = spec is not None and spec.fold_bn and self.folded_into is not None
    train = not nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    act = self.act or (lambda v: v)
    if spec is None or train or self.is_initializing():
      y = act(super().__call__(x, use_running_average=use_running_average, **kwargs))
      if spec is not None and self.is_initializing():  # create the points' range variables
        if not folded:
          self._point(y, spec, "mul")
        self._point(y, spec, "output")
      return y
    if folded:
      y = x
    elif not spec.fold_bn and spec.output is None and spec.const is None:
      y = super().__call__(x, use_running_average=use_running_average, **kwargs)
    elif spec.output is None and spec.const is None:  # the converter's float MUL and ADD
      mul, offset = batch_norm_constants(self.variables["params"], self.variables["batch_stats"], self.epsilon)
      y = x * mul + offset
    else:
      mul, offset = batch_norm_constants(self.variables["params"], self.variables["batch_stats"], self.epsilon)
      c = self._const(mul, spec, own)
      if _integer_requant(spec, self) and spec.const is not None and spec.const.is_int:
        # the runtime's int8 MUL: (qx - zx) * (qc - zc), requantized (built-in reference kernel: half
        # away; MLAS's QLinearMul: float, the zero point added before rounding half to even)
        grid = _registry(self)["grid"]
        if grid is None:
          raise ValueError(f"{own}: requant={spec.requant!r} needs the BatchNorm's input stored int8 first")
        s_c = fake_quant.int_scale(mul, spec.const, where=f"{own}.const").reshape(())
        rounding = "mlas_mul" if spec.requant == "mlas" else "half_away"
        _set_pending(self, kind="acc", a=grid[0], b=s_c.reshape(1), rounding=rounding, where=f"{own} MUL")
      y = self._point(x * c, spec, "mul")
      offset = self._const(offset, spec, own)
      if spec.const is not None and spec.const.is_int and spec.const.granularity == "per_tensor":
        y = add(self, y, self._stored_const(offset, spec, own), act=act)  # the int8 ADD with an int8 vector
      else:
        y = act(y + offset)
      _widen(self, spec, y, "mul")  # the ADD overwrites the product in place
      return self._point(y, spec, "output")
    return self._point(act(y), spec, "output")

  def overwritten_by(self, y) -> None:
    """As :meth:`Output.overwritten_by`, for this BatchNorm's output.

    Args:
      y: the overwriting op's output (same shape as this BatchNorm's output).
    """
    _widen(self, self._spec(), y, "output")

  def product(self, x):
    """``x * mul`` in float: what the converter's MUL writes when this BatchNorm is not folded.

    For :meth:`Output.overwritten_by` of the tensor it reads, when it is that
    tensor's only consumer.

    Args:
      x: this BatchNorm's input.

    Returns:
      ``x * gamma / sqrt(var + eps)``, same shape as ``x``.
    """
    return x * batch_norm_constants(self.variables["params"], self.variables["batch_stats"], self.epsilon)[0]

  def _spec(self) -> LayerSpec | None:
    """The spec of the folded layer (``folded_into``), else this one's."""
    return resolve(
        self.quant, layer_name(self, drop_last=1, then=self.folded_into) if self.folded_into else layer_name(self)
    )

  def _const(self, v, spec: LayerSpec, name: str):
    if spec.const is None or not _quantizing(self):
      return v
    return fake_quant.quantize(v, spec.const, where=f"{name}.const")

  def _stored_const(self, q, spec: LayerSpec, name: str):
    """The quantized constant ``q`` with its grid recorded (an ADD operand)."""
    if not _quantizing(self):
      return q
    scale, z, _, _ = fake_quant.int_grid_params(q, spec.const, where=f"{name}.const")
    return _record_grid(_registry(self), q, scale.reshape(()), z.reshape(()))

  def _point(self, y, spec: LayerSpec, slot: str):
    if spec.output is None:
      return y
    return quantize_tensor(
        self, y, spec.output, slot=slot, batch_axes=(0,), range_of=self.range_of if slot == "output" else None
    )


def Dense(
    features: int,
    *,
    quant: Quant = None,
    batch_norm: tuple[str, float] | None = None,
    stored_input: bool = False,
    **kwargs,
) -> nn.Dense:  # pylint: disable=invalid-name
  """A ``flax.linen.Dense`` whose matmul is quantized by ``quant``.

  Args:
    features: output features.
    quant: a QuantConfig (looked up by this layer's name), a LayerSpec, or
      None (the plain flax layer).
    batch_norm: ``(name, epsilon)`` of the sibling :class:`BatchNorm` that
      follows this layer (folded into it under ``fold_bn``).
    stored_input: the input is a tensor a static per-tensor int8 point
      already stored in this apply (a recurrent cell's sliced input or
      hidden state): the layer uses that point's grid for its int32 bias
      and accumulator instead of quantizing the input on a range of its own.
    **kwargs: any ``flax.linen.Dense`` argument (``name``, ``use_bias``...).

  Returns:
    The ``flax.linen.Dense`` module (plain when ``quant`` is None).
  """
  if quant is not None:
    kwargs["dot_general_cls"] = functools.partial(
        QuantDotGeneral, quant=quant, batch_norm=batch_norm, stored_input=stored_input
    )
    kwargs["promote_dtype"] = _bias_to_hook
  return nn.Dense(features, **kwargs)


def Conv(
    features: int, kernel_size, *, quant: Quant = None, batch_norm: tuple[str, float] | None = None, **kwargs
) -> nn.Conv:  # pylint: disable=invalid-name
  """A ``flax.linen.Conv`` whose convolution is quantized by ``quant``.

  Lowered by :func:`conv_general_dilated`.

  Args:
    features: output channels.
    kernel_size: the window, e.g. ``(3, 3)``.
    quant: a QuantConfig (looked up by this layer's name), a LayerSpec, or
      None (float).
    batch_norm: ``(name, epsilon)`` of the sibling :class:`BatchNorm` that
      follows this layer (folded into it under ``fold_bn``).
    **kwargs: any ``flax.linen.Conv`` argument (``name``, ``padding``...).

  Returns:
    The ``flax.linen.Conv`` module.
  """
  kwargs["conv_general_dilated_cls"] = functools.partial(QuantConv, quant=quant, batch_norm=batch_norm)
  return nn.Conv(features, kernel_size, promote_dtype=_bias_to_hook, **kwargs)


class Embed(nn.Embed):
  """``flax.linen.Embed`` with a fake-quantized table.

  The weight spec's default channel axis is 0: one scale per embedding row
  (per token), as integer runtimes quantize gather tables. Activations of an
  embedding are the integer token ids: ``act`` is ignored. A table with
  fewer than ``min_weights`` elements stays float, as TFLite's dynamic-range
  converter leaves a GATHER table of 400 elements float and stores one of
  1,600 as int8 (measured with the export of ``lstm_tiny``).
  """

  quant: Any = None

  def __call__(self, inputs):
    spec = resolve(self.quant, layer_name(self))
    if spec is None or spec.weight is None or self.num_embeddings * self.features < spec.min_weights:
      return super().__call__(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError("Input type must be an integer or unsigned integer.")
    (table,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
    table = quantize_tensor(self, table, spec.weight, slot="weight", default_axis=0)
    return jnp.take(table, inputs, axis=0)
