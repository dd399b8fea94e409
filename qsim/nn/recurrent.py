"""Quantized LSTM and GRU cells, and an RNN that can calibrate them.

The cells are ``flax.linen.LSTMCell``/``GRUCell`` (same parameters and names:
``ii, if, ig, io, hi, hf, hg, ho`` / ``ir, iz, in, hr, hz, hn``) whose gate
matmuls are qsim Dense layers. The cell resolves its LayerSpec once, by its
own name. The input and the hidden state are quantized once with
``spec.act`` (as a fused integer kernel sees them) and fed to every gate;
both the input kernels and the recurrent kernels are quantized with
``spec.weight``; the new carry with ``spec.state`` (optional). flax's cells do not expose ``dot_general``, which
is why they are rebuilt here.

Under a spec with ``output`` (``tflite_int8``) a cell runs as TFLite's int8
graph of the unrolled recurrence (read from the converted GRU/LSTM models):
every gate matmul, ADD, SUB and MUL writes an int8 tensor with its own
calibrated range *per time step* (the RNN keeps one set of ranges per step),
LOGISTIC and TANH write int8 on their fixed grids (scale 1/256, zero point
-128; scale 1/128, zero point 0), the hidden state is the last ADD's int8
output, and the input sequence is quantized once, on one range (the
model's input QUANTIZE; time steps are slices of it). Ranges of operands
that an ADD/MUL overwrites in place are widened as the converter's
calibrator records them (``LayerSpec.inplace_ranges``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qsim.nn import layers
from qsim.nn.layers import QUANT_RNG, QUANT_STATS, Dense, _quantizing, _widen, layer_name, quantize_tensor, resolve
from qsim.quant.spec import LayerSpec

# TFLite's grid for the zero initial state (a FILL of zeros, whose calibrated range is empty): scale
# 2e-6 / 255, zero point 0, read from the converted GRU-rows model
ZERO_STATE_SCALE = 2e-6 / 255


def _gate_dense(quant, features, use_bias, kernel_init, bias_init, dtype, param_dtype, stored_input=False):
  return functools.partial(
      Dense,
      features,
      quant=quant,
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=bias_init,
      dtype=dtype,
      param_dtype=param_dtype,
      stored_input=stored_input,
  )


def _quantize_inputs(cell, spec, x, h):
  """Quantizes the cell's input and hidden state once for all gates.

  Returns the quantized ``x`` and ``h`` and the spec for the gate matmuls
  (weights only: their operands are already quantized). Under
  ``u8s8_pairs`` (ONNX Runtime's MLAS on AVX2 without VNNI) each gate
  matmul quantizes its operand itself (a dynamic range is per example, so
  every gate gets the same grid) and saturates its int16 pair sums as
  MatMulInteger does.
  """
  if spec is None:
    return x, h, None
  if spec.int_bias:
    raise ValueError(
        f"{layer_name(cell)}: int_bias in a recurrent cell needs its int8 graph (an output spec, as"
        " in tflite_int8 / ort_int8): the gates' float graph has no accumulator scale for the bias"
    )
  if spec.u8s8_pairs != "none":
    if spec.act.range != "dynamic":
      raise ValueError(
          f"{layer_name(cell)}: u8s8_pairs in a recurrent cell's float graph needs dynamic activations"
          f" (ORT's dynamic quantizer); got act.range={spec.act.range!r}"
      )
    return x, h, spec.derive(state=None, output=None, const=None)
  n = h.shape[-1]
  # a side whose kernels are under min_weights stays float (as the converter leaves them)
  if x.shape[-1] * n >= spec.min_weights:
    x = quantize_tensor(cell, x, spec.act, slot="act_x", batch_axes=(0,))
  if n * n >= spec.min_weights:
    h = quantize_tensor(cell, h, spec.act, slot="act_h", batch_axes=(0,))
  return x, h, LayerSpec(weight=spec.weight, min_weights=spec.min_weights)


def int8_graph(spec: LayerSpec | None) -> bool:
  """Whether a cell under ``spec`` runs as the converter's unrolled int8 graph.

  In that graph every op's output is stored int8, with ranges per time step.

  Args:
    spec: the cell's resolved spec, or None (float).

  Returns:
    True when ``spec`` has an ``output`` spec.
  """
  return spec is not None and spec.output is not None


def _sigmoid_int8(y):
  """TFLite int8 LOGISTIC's output grid: scale 1/256, zero point -128."""
  return y + jax.lax.stop_gradient(jnp.clip(jnp.round(y * 256.0), 0.0, 255.0) / 256.0 - y)


def _tanh_int8(y):
  """TFLite int8 TANH's output grid: scale 1/128, zero point 0."""
  return y + jax.lax.stop_gradient(jnp.clip(jnp.round(y * 128.0), -128.0, 127.0) / 128.0 - y)


def gate_spec(spec: LayerSpec) -> LayerSpec:
  """The spec of the gate matmuls of a cell's int8 graph under ``spec``.

  Weights only (their operands are tensors the graph stored); in TFLite's
  graph (not ``gemm_gates``) with ``int_bias`` also the int32 bias on the
  accumulator grid of the stored input and the requantization (``requant``),
  as both TFLite kernel families compute FULLY_CONNECTED (traced op by op:
  ``benchmarks/recurrent_trace.py``). ORT's graph (``gemm_gates``) has its
  own: :meth:`_Int8Graph.gate_layers`.

  Args:
    spec: the cell's spec (an int8 graph one: ``output`` set).

  Returns:
    The LayerSpec the gate Dense layers use.
  """
  if not spec.gemm_gates and spec.int_bias:
    return LayerSpec(weight=spec.weight, act=spec.output, output=spec.output, int_bias=True, requant=spec.requant)
  return LayerSpec(weight=spec.weight)


def _ort_qgemm_spec(spec: LayerSpec) -> LayerSpec:
  """ORT's gate Gemm with the constant bias (a QGemm on MLAS): its operand on
  its own range, the bias int32 at operand x weight scale, saturating pairs
  where ``u8s8_pairs``."""
  return LayerSpec(weight=spec.weight, act=spec.output, int_bias=True).derive(u8s8_pairs=spec.u8s8_pairs)


class _Int8Graph:
  """The int8 tensors of one cell step: ``store(y, slot)`` quantizes an op's
  output on its own (per-step) calibrated range; ``in_place(slot, y)``
  declares that the op writing ``y`` overwrites ``slot`` in place.

  Each op is the runtime's: the gate matmuls add their int32 biases to the
  exact accumulator (``int_bias``) and requantize by ``requant``, ADDs
  follow ``add_requant`` (:func:`qsim.nn.layers.add`), MULs ``requant``
  (:func:`qsim.nn.layers.mul`), SUB (``1 - z``) ``add_requant`` with a
  negated operand."""

  def __init__(self, cell: nn.Module, spec: LayerSpec):
    self.cell, self.spec = cell, spec

  @property
  def tflite(self) -> bool:
    """TFLite's graph (every matmul stored, stored inputs), not ORT's."""
    return not self.spec.gemm_gates

  @property
  def stored_inputs(self) -> bool:
    """Whether the gate matmuls read their operands' stored grids: TFLite's
    graph, and ORT's where MLAS saturates (the pairs need the integers)."""
    return self.tflite or self.spec.u8s8_pairs != "none"

  def gate_layers(self, n: int, h_bias: bool):
    """``(dense_h, dense_i)``: partials of the h-side and x-side gate
    matmuls (``n`` features; the bias on the h side or the x side).

    In ORT's graph (``gemm_gates``) only the side with the constant bias is
    a QGemm (its int32 bias in the QDQ graph too; on MLAS integer, with
    saturating pairs where ``u8s8_pairs``); the other side
    is a float Gemm that adds the first one's stored output as its C, which
    ORT's fusion leaves unquantized (read on MLAS's optimized graph: GRU's
    x side and LSTM's h side are QGemm, GRU's r/z h side and LSTM's x side
    Gemm).
    """
    c, stored = self.cell, self.stored_inputs
    if self.spec.gemm_gates:
      biased, other = _ort_qgemm_spec(self.spec), LayerSpec(weight=self.spec.weight)
    else:
      biased = other = gate_spec(self.spec)
    h_spec, i_spec = (biased, other) if h_bias else (other, biased)
    dense_h = _gate_dense(h_spec, n, h_bias, c.recurrent_kernel_init, c.bias_init, c.dtype, c.param_dtype, stored)
    dense_i = _gate_dense(i_spec, n, not h_bias, c.kernel_init, c.bias_init, c.dtype, c.param_dtype, stored)
    return dense_h, dense_i

  def _fixed(self, y, slot: str, on_grid, scale: float, zero_point: float):
    if self.spec.calibrated_gates:
      return self.store(y, slot)
    if not _quantizing(self.cell):
      return y  # float while calibrating, as the converter calibrates
    y = on_grid(y)
    layers._record_grid(layers._registry(self.cell), y, jnp.float32(scale), jnp.float32(zero_point))
    return y

  def sigmoid(self, y, slot: str):
    """LOGISTIC on its fixed grid (scale 1/256, zero point -128), or on
    its own range (``calibrated_gates``)."""
    return self._fixed(jax.nn.sigmoid(y), slot, _sigmoid_int8, 1.0 / 256.0, -128.0)

  def tanh(self, y, slot: str):
    """TANH on its fixed grid (scale 1/128, zero point 0), as ``sigmoid``."""
    return self._fixed(jnp.tanh(y), slot, _tanh_int8, 1.0 / 128.0, 0.0)

  def store(self, y, slot: str):
    return quantize_tensor(self.cell, y, self.spec.output, slot=slot, batch_axes=(0,))

  def state(self, v, slot: str):
    """The carry ``v`` (the previous step's stored output, or the zero
    state) as a stored tensor of this step: its range, calibrated on the same
    values, is the previous output's, so this re-stores nothing; in
    TFLite's graph the zero state's empty range is the converter's (scale
    ``ZERO_STATE_SCALE``, zero point 0), on which the first step's int32
    biases overflow and widen their weight scales
    (:func:`qsim.nn.layers._accumulator_bias`)."""
    y = self.store(v, slot)
    if self.tflite and _quantizing(self.cell):
      reg = layers._registry(self.cell)
      scale, z = layers.stored_grid(self.cell, y)
      lo, hi = (self.cell.get_variable(QUANT_STATS, f"{slot}_{end}") for end in ("lo", "hi"))
      empty = (jnp.maximum(hi, 0.0) - jnp.minimum(lo, 0.0)).reshape(()) == 0
      layers._record_grid(reg, y, jnp.where(empty, jnp.float32(ZERO_STATE_SCALE), scale), jnp.where(empty, 0.0, z))
    return y

  def mul(self, a, b, slot: str):
    """``a * b`` (MUL), stored."""
    return self.store(layers.mul(self.cell, a, b), slot)

  def add(self, a, b, slot: str):
    """``a + b`` (ADD), stored. Under ``add_requant='mlas'`` the float sum
    rounded once: of the cell's ADDs ORT's optimized graph fuses only
    GRU's new_h into a QLinearAdd (the others become a Gemm's C input),
    and that one recipe is not wired here (BUILD_NOTES, mechanism 12)."""
    if self.spec.add_requant == "mlas":
      return self.store(a + b, slot)
    return self.store(layers.add(self.cell, a, b), slot)

  def one_minus(self, z, slot: str):
    """``1 - z`` (SUB), stored. The converter stores the 1.0 as an int8
    constant (127 at scale 1/255, zero point -128); under ``add_requant``
    the SUB is that runtime's ADD recipe with ``z``'s term negated (XNNPACK's
    and the built-in SUB, traced: ``benchmarks/recurrent_trace.py``)."""
    if self.spec.add_requant in ("fp32", "mlas") or not _quantizing(self.cell):  # ORT's Sub stays float
      return self.store(1.0 - z, slot)
    ((_, (scale, zero)),) = layers._operands(self.cell, f"{layer_name(self.cell)} SUB", z)
    reg = layers._registry(self.cell)
    one, neg = jnp.ones((), z.dtype), -z
    layers._record_grid(reg, one, jnp.float32(1.0 / 255.0), jnp.float32(-128.0))
    layers._record_grid(reg, neg, scale, zero)  # -(q - zp) s = ((2 zp - q) - zp) s
    return self.store(layers.add(self.cell, one, neg), slot)

  def in_place(self, slot: str, y) -> None:
    _widen(self.cell, self.spec, y, slot)

  def gate_sum(self, x_part, h_part, gate: str):
    """``x_part + h_part`` (ADD; the x-side matmul, read only here, is
    overwritten in place)."""
    y = self.add(x_part, h_part, f"add_{gate}")
    self.in_place(f"fc_i{gate}", y)
    return y


class LSTMCell(nn.LSTMCell):
  """``flax.linen.LSTMCell`` with quantized gate matmuls and carry."""

  quant: Any = None

  @nn.compact
  def __call__(self, carry, inputs):
    spec = resolve(self.quant, layer_name(self))
    c, h = carry
    if int8_graph(spec):
      return self._int8(spec, c, h, inputs)
    inputs, h_in, g_spec = _quantize_inputs(self, spec, inputs, h)
    n = h.shape[-1]
    dense_h = _gate_dense(g_spec, n, True, self.recurrent_kernel_init, self.bias_init, self.dtype, self.param_dtype)
    dense_i = _gate_dense(g_spec, n, False, self.kernel_init, self.bias_init, self.dtype, self.param_dtype)
    i = self.gate_fn(dense_i(name="ii")(inputs) + dense_h(name="hi")(h_in))
    f = self.gate_fn(dense_i(name="if")(inputs) + dense_h(name="hf")(h_in))
    g = self.activation_fn(dense_i(name="ig")(inputs) + dense_h(name="hg")(h_in))
    o = self.gate_fn(dense_i(name="io")(inputs) + dense_h(name="ho")(h_in))
    new_c = f * c + i * g
    new_h = o * self.activation_fn(new_c)
    if spec is not None and spec.state is not None:
      new_c = quantize_tensor(self, new_c, spec.state, slot="state_c", batch_axes=(0,))
      new_h = quantize_tensor(self, new_h, spec.state, slot="state_h", batch_axes=(0,))
    return (new_c, new_h), new_h

  def _int8(self, spec: LayerSpec, c, h, x):
    """One step of TFLite's int8 LSTM graph (``x``: already int8; ``c``,
    ``h``: the previous step's int8 outputs, or zeros)."""
    g8 = _Int8Graph(self, spec)
    n = h.shape[-1]
    if g8.tflite:
      h, c = g8.state(h, "h_in"), g8.state(c, "c_in")
    elif g8.stored_inputs:
      h = g8.state(h, "h_in")
    dense_h, dense_i = g8.gate_layers(n, h_bias=True)

    if spec.gemm_gates:  # ORT: Gemm(h, W_h, int32 bias) stored, then Gemm(x, W_i, C=it)
      dense_h = _gate_dense(
          _ort_qgemm_spec(spec),
          n,
          True,
          self.recurrent_kernel_init,
          self.bias_init,
          self.dtype,
          self.param_dtype,
      )

    def gate(g, fn):
      if spec.gemm_gates:
        hh = g8.store(dense_h(name=f"h{g}")(h), f"fc_h{g}")
        return fn(g8.store(dense_i(name=f"i{g}")(x) + hh, f"add_{g}"), f"gate_{g}")
      xi = g8.store(dense_i(name=f"i{g}")(x), f"fc_i{g}")
      hh = g8.store(dense_h(name=f"h{g}")(h), f"fc_h{g}")
      return fn(g8.gate_sum(xi, hh, g), f"gate_{g}")

    i, f, g, o = gate("i", g8.sigmoid), gate("f", g8.sigmoid), gate("g", g8.tanh), gate("o", g8.sigmoid)
    fc = g8.mul(f, c, "mul_fc")  # in place on f (a fixed grid: no range to widen)
    ig = g8.mul(i, g, "mul_ig")
    new_c = g8.add(fc, ig, "new_c")
    g8.in_place("mul_fc", new_c)
    new_h = g8.mul(o, g8.tanh(new_c, "tanh_c"), "new_h")
    return (new_c, new_h), new_h


class GRUCell(nn.GRUCell):
  """``flax.linen.GRUCell`` with quantized gate matmuls and carry."""

  quant: Any = None

  @nn.compact
  def __call__(self, carry, inputs):
    spec = resolve(self.quant, layer_name(self))
    h = carry
    if int8_graph(spec):
      return self._int8(spec, h, inputs)
    inputs, h_in, g_spec = _quantize_inputs(self, spec, inputs, h)
    n = h.shape[-1]
    dense_h = _gate_dense(g_spec, n, False, self.recurrent_kernel_init, self.bias_init, self.dtype, self.param_dtype)
    dense_i = _gate_dense(g_spec, n, True, self.kernel_init, self.bias_init, self.dtype, self.param_dtype)
    r = self.gate_fn(dense_i(name="ir")(inputs) + dense_h(name="hr")(h_in))
    z = self.gate_fn(dense_i(name="iz")(inputs) + dense_h(name="hz")(h_in))
    hn = dense_h(name="hn", use_bias=True)(h_in)
    n_ = self.activation_fn(dense_i(name="in")(inputs) + r * hn)
    new_h = (1.0 - z) * n_ + z * h
    if spec is not None and spec.state is not None:
      new_h = quantize_tensor(self, new_h, spec.state, slot="state_h", batch_axes=(0,))
    return new_h, new_h

  def _int8(self, spec: LayerSpec, h, x):
    """One step of TFLite's int8 GRU graph (``x``: already int8; ``h``: the
    previous step's int8 output, or zeros)."""
    g8 = _Int8Graph(self, spec)
    n = h.shape[-1]
    if g8.stored_inputs:
      h = g8.state(h, "h_in")
    dense_h, dense_i = g8.gate_layers(n, h_bias=False)
    xi = {g: g8.store(dense_i(name=f"i{g}")(x), f"fc_i{g}") for g in ("r", "z", "n")}
    if spec.gemm_gates:  # ORT: Gemm(h, W_h, C=x-side), one stored output per gate
      r = g8.sigmoid(g8.store(xi["r"] + dense_h(name="hr")(h), "add_r"), "gate_r")
      z = g8.sigmoid(g8.store(xi["z"] + dense_h(name="hz")(h), "add_z"), "gate_z")
      # hn's bias is int32 at (h's own per-step scale) x (weight scale): h is
      # re-stored on its calibrated range (the previous new_h's: a no-op), and
      # the zero state's empty range gives scale 1
      hn = _gate_dense(
          _ort_qgemm_spec(spec), n, True, self.recurrent_kernel_init, self.bias_init, self.dtype, self.param_dtype
      )(name="hn")(h)
      hn = g8.store(hn, "fc_hn")
    else:
      hh = {g: g8.store(dense_h(name=f"h{g}")(h), f"fc_h{g}") for g in ("r", "z")}
      r = g8.sigmoid(g8.gate_sum(xi["r"], hh["r"], "r"), "gate_r")
      z = g8.sigmoid(g8.gate_sum(xi["z"], hh["z"], "z"), "gate_z")
      hn = g8.store(dense_h(name="hn", use_bias=True)(h), "fc_hn")
    rh = g8.mul(r, hn, "mul_rh")
    g8.in_place("fc_hn", rh)  # r, operand 0, is a LOGISTIC output (fixed grid); hn is read only here
    n_ = g8.tanh(g8.gate_sum(xi["n"], rh, "n"), "gate_n")
    one_minus_z = g8.one_minus(z, "sub_z")
    kept = g8.mul(one_minus_z, n_, "mul_n")
    g8.in_place("sub_z", kept)
    new_h = g8.add(kept, g8.mul(z, h, "mul_h"), "new_h")
    g8.in_place("mul_n", new_h)
    return new_h, new_h


class RNN(nn.Module):
  """Runs a cell over ``inputs[:, t]`` (batch-major), like ``flax.linen.RNN``.

  Same parameter tree as ``nn.RNN(cell)`` (the cell is named 'cell'). Unlike
  ``nn.RNN`` it chooses how the 'quant_stats' collection crosses time steps
  from the mode: broadcast (read-only) in inference, carried (updated every
  step) while calibrating.

  Attributes:
    cell: the recurrent cell.
    return_carry: also return the final carry.
  """

  cell: nn.RNNCellBase
  return_carry: bool = False

  @nn.compact
  def __call__(self, inputs, *, seq_lengths=None, initial_carry=None):
    """Args: inputs (batch, time, features); seq_lengths (batch,) int or None:
    steps at or past a sequence's length leave its carry unchanged."""
    steps = inputs.shape[1]
    if initial_carry is None:
      initial_carry = self.cell.initialize_carry(
          self.make_rng("params") if self.is_initializing() else jax.random.key(0),
          inputs[:, 0].shape,
      )
    calibrating = self.is_mutable_collection(QUANT_STATS) and not self.is_initializing()
    spec = resolve(self.cell.quant, f"{layer_name(self)}/cell") if hasattr(self.cell, "quant") else None
    per_step = int8_graph(spec)
    grid = None
    if per_step:  # the model's input QUANTIZE: one range for the whole sequence
      inputs = quantize_tensor(self, inputs, spec.act, slot="input", batch_axes=(0,))
      grid = layers._registry(self)["grids"].get(id(inputs))  # (recorded in inference)

    def body(cell, carry, xs):
      x, t = xs
      if grid is not None:  # each time step is a slice of the stored input, on its grid
        layers._record_grid(layers._registry(cell), x, grid[1], grid[2])
      new_carry, y = cell(carry, x)
      if seq_lengths is not None:
        live = (t < seq_lengths)[:, None]
        new_carry = jax.tree.map(lambda n, o: jnp.where(live, n, o), new_carry, carry)
      return new_carry, y

    if per_step:  # one set of ranges per time step (the converter unrolls the loop)
      kw = dict(variable_broadcast="params", variable_axes={QUANT_STATS: 0})
    else:
      kw = dict(
          variable_broadcast="params" if calibrating else ["params", QUANT_STATS],
          variable_carry=QUANT_STATS if calibrating else False,
      )
    scan = nn.scan(
        body,
        **kw,
        split_rngs={"params": False, QUANT_RNG: True},
        in_axes=0,
        out_axes=0,
    )
    xs = (jnp.swapaxes(inputs, 0, 1), jnp.arange(steps))
    carry, ys = scan(self.cell, initial_carry, xs)
    ys = jnp.swapaxes(ys, 0, 1)
    return (carry, ys) if self.return_carry else ys
