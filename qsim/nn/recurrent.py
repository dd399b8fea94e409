"""Quantized LSTM and GRU cells, and an RNN that can calibrate them.

The cells are ``flax.linen.LSTMCell``/``GRUCell`` (same parameters and names:
``ii, if, ig, io, hi, hf, hg, ho`` / ``ir, iz, in, hr, hz, hn``) whose gate
matmuls are qsim Dense layers. The cell resolves its LayerSpec once, by its
own name. The input and the hidden state are quantized once with
``spec.act`` (as a fused integer kernel sees them) and fed to every gate;
both the input kernels and the recurrent kernels are quantized with
``spec.weight``; the new carry with ``spec.state`` (optional). flax's cells do not expose ``dot_general``, which
is why they are rebuilt here.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qsim.nn.layers import QUANT_RNG, QUANT_STATS, Dense, layer_name, quantize_tensor, resolve
from qsim.quant.spec import LayerSpec


def _gate_dense(quant, features, use_bias, kernel_init, bias_init, dtype, param_dtype):
  return functools.partial(
      Dense,
      features,
      quant=quant,
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=bias_init,
      dtype=dtype,
      param_dtype=param_dtype,
  )


def _quantize_inputs(cell, spec, x, h):
  """Quantizes the cell's input and hidden state once for all gates.

  Returns the quantized ``x`` and ``h`` and the spec for the gate matmuls
  (weights only: their operands are already quantized).
  """
  if spec is None:
    return x, h, None
  x = quantize_tensor(cell, x, spec.act, slot="act_x", batch_axes=(0,))
  h = quantize_tensor(cell, h, spec.act, slot="act_h", batch_axes=(0,))
  return x, h, LayerSpec(weight=spec.weight)


class LSTMCell(nn.LSTMCell):
  """``flax.linen.LSTMCell`` with quantized gate matmuls and carry."""

  quant: Any = None

  @nn.compact
  def __call__(self, carry, inputs):
    spec = resolve(self.quant, layer_name(self))
    c, h = carry
    inputs, h_in, gate_spec = _quantize_inputs(self, spec, inputs, h)
    n = h.shape[-1]
    dense_h = _gate_dense(gate_spec, n, True, self.recurrent_kernel_init, self.bias_init, self.dtype, self.param_dtype)
    dense_i = _gate_dense(gate_spec, n, False, self.kernel_init, self.bias_init, self.dtype, self.param_dtype)
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


class GRUCell(nn.GRUCell):
  """``flax.linen.GRUCell`` with quantized gate matmuls and carry."""

  quant: Any = None

  @nn.compact
  def __call__(self, carry, inputs):
    spec = resolve(self.quant, layer_name(self))
    h = carry
    inputs, h_in, gate_spec = _quantize_inputs(self, spec, inputs, h)
    n = h.shape[-1]
    dense_h = _gate_dense(gate_spec, n, False, self.recurrent_kernel_init, self.bias_init, self.dtype, self.param_dtype)
    dense_i = _gate_dense(gate_spec, n, True, self.kernel_init, self.bias_init, self.dtype, self.param_dtype)
    r = self.gate_fn(dense_i(name="ir")(inputs) + dense_h(name="hr")(h_in))
    z = self.gate_fn(dense_i(name="iz")(inputs) + dense_h(name="hz")(h_in))
    hn = dense_h(name="hn", use_bias=True)(h_in)
    n_ = self.activation_fn(dense_i(name="in")(inputs) + r * hn)
    new_h = (1.0 - z) * n_ + z * h
    if spec is not None and spec.state is not None:
      new_h = quantize_tensor(self, new_h, spec.state, slot="state_h", batch_axes=(0,))
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

    def body(cell, carry, xs):
      x, t = xs
      new_carry, y = cell(carry, x)
      if seq_lengths is not None:
        live = (t < seq_lengths)[:, None]
        new_carry = jax.tree.map(
            lambda n, o: jnp.where(live, n, o), new_carry, carry
        )
      return new_carry, y

    scan = nn.scan(
        body,
        variable_broadcast="params" if calibrating else ["params", QUANT_STATS],
        variable_carry=QUANT_STATS if calibrating else False,
        split_rngs={"params": False, QUANT_RNG: True},
        in_axes=0,
        out_axes=0,
    )
    xs = (jnp.swapaxes(inputs, 0, 1), jnp.arange(steps))
    carry, ys = scan(self.cell, initial_carry, xs)
    ys = jnp.swapaxes(ys, 0, 1)
    return (carry, ys) if self.return_carry else ys
