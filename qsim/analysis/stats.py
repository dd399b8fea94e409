"""Per-layer tensor statistics, float against quantized.

For each analysed layer (:mod:`qsim.analysis.layers`) and each of its
tensors, on a calibration batch run through the model itself:

* ``weight``: the float kernel(s) against the kernel fake-quantized by the
  layer's weight spec (the raw kernel: a preset that folds BatchNorm first
  quantizes the folded one, which this does not show);
* ``input``: the layer's float input against it fake-quantized by the act
  spec (a static range is the batch's own range, as calibrating on that
  batch gives it);
* ``output``: the layer's output in the float model against the same output
  with *this layer alone* quantized (``output_alone``) and with *every layer*
  quantized (``output_all``: in a feed-forward model, everything up to here).

Inputs and outputs are read with flax's method interceptors
(``nn.intercept_methods``) at each layer's call (a recurrent cell's: the RNN
that scans it). Metrics (:func:`tensor_stats`): SQNR in dB, MSE, max abs
error, cosine similarity, and RMSE/scale (the error in grid steps: about
0.289 = 1/sqrt(12) for a well-quantized tensor; NaN without an integer grid).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qsim.analysis.layers import Layer, per_layer
from qsim.nn import QUANT_RNG, QUANT_STATS, calibrate
from qsim.quant import fake_quant
from qsim.quant.spec import LayerSpec, TensorSpec

METRICS = ("sqnr_db", "mse", "max_abs_error", "cosine", "rmse_over_scale")


def tensor_stats(reference: np.ndarray, quantized: np.ndarray, scale: np.ndarray | None = None) -> dict[str, float]:
  """How far ``quantized`` is from ``reference`` (both the same shape).

  Args:
    reference: the float tensor.
    quantized: its quantized (dequantized) version.
    scale: the integer grid's step, broadcastable to the tensor (None: no
      grid, RMSE/scale is NaN).

  Returns:
    ``sqnr_db`` (10 log10 of signal over error power; inf when exact),
    ``mse``, ``max_abs_error``, ``cosine`` (1 when both are zero) and
    ``rmse_over_scale`` (sqrt of the mean squared error in grid steps).

  Raises:
    ValueError: the shapes differ.
  """
  x = np.asarray(reference, np.float64)
  q = np.asarray(quantized, np.float64)
  if x.shape != q.shape:
    raise ValueError(f"tensor_stats: reference shape {x.shape} != quantized shape {q.shape}")
  e = q - x
  signal, noise = float(np.sum(x * x)), float(np.sum(e * e))
  if noise == 0.0:
    sqnr = float("inf")
  elif signal == 0.0:
    sqnr = float("-inf")
  else:
    sqnr = 10.0 * np.log10(signal / noise)
  nx, nq = np.sqrt(signal), np.sqrt(float(np.sum(q * q)))
  cosine = 1.0 if nx == 0.0 and nq == 0.0 else float(np.sum(x * q) / max(nx * nq, np.finfo(np.float64).tiny))
  ratio = float("nan")
  if scale is not None:
    s = np.broadcast_to(np.asarray(scale, np.float64), e.shape)
    ok = s > 0
    ratio = float(np.sqrt(np.mean((e[ok] / s[ok]) ** 2))) if ok.any() else float("nan")
  return {
      "sqnr_db": float(sqnr),
      "mse": float(np.mean(e * e)) if e.size else float("nan"),
      "max_abs_error": float(np.max(np.abs(e))) if e.size else float("nan"),
      "cosine": cosine,
      "rmse_over_scale": ratio,
  }


def _quantized_with_scale(x, spec: TensorSpec, *, default_axis: int, batch_axes=(), where: str):
  """``(quantized x, its grid step or None)``; a static range is ``x``'s own."""
  lo = hi = None
  if spec.range == "static":
    lo, hi = fake_quant.calibrated_range(x, spec, default_axis=default_axis, where=where)
    batch_axes = ()
  q = fake_quant.quantize(
      x, spec, default_axis=default_axis, lo=lo, hi=hi, where=where, batch_axes=batch_axes, key=jax.random.key(0)
  )
  if not spec.is_int:
    return q, None
  if lo is None:
    lo, hi = fake_quant.calibrated_range(x, spec, default_axis=default_axis, where=where, batch_axes=batch_axes)
  scale, _ = fake_quant.scale_and_zero_point(spec, lo, hi)
  return q, scale


def _flat(tree) -> np.ndarray:
  leaves = [np.asarray(l, np.float64).ravel() for l in jax.tree.leaves(tree) if jnp.issubdtype(l.dtype, jnp.floating)]
  return np.concatenate(leaves) if leaves else np.zeros(0)


def _calls(model: nn.Module, variables: dict, x, paths: set[str]) -> dict[str, tuple]:
  """``{path: (first positional input, output)}`` of each module in ``paths``
  (the first call of each, when a module is called more than once), in one jitted apply."""

  def run(v, x):
    seen: dict[str, tuple] = {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      path = "/".join(context.module.scope.path)
      if path in paths and context.method_name == "__call__" and path not in seen:
        seen[path] = (args[0] if args else None, out)
      return out

    with nn.intercept_methods(record):
      model.apply(v, x, rngs={QUANT_RNG: jax.random.key(0)})
    return seen

  return jax.tree.map(np.asarray, jax.jit(run)(variables, x))


def _calibrated(model: nn.Module, variables: dict, x) -> dict:
  """``variables`` with ``model``'s static ranges calibrated on ``x`` (if it has any)."""
  base = {k: v for k, v in variables.items() if k != QUANT_STATS}
  shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])
  if QUANT_STATS not in shapes:
    return base
  stats = model.init(jax.random.key(0), x[:1])[QUANT_STATS]
  return calibrate(model, {**base, QUANT_STATS: stats}, [x])


def _kernel(params: Mapping, path: str):
  node = params
  for part in path.split("/"):
    node = node[part]
  return np.asarray(node)


def layer_statistics(
    model: nn.Module, variables: dict, x: np.ndarray, layers: Sequence[Layer], spec: LayerSpec
) -> list[dict]:
  """Float-vs-quantized statistics of every tensor of every layer under ``spec``.

  Args:
    model: the float model.
    variables: its trained variables.
    x: the calibration batch ``[N, ...]``; static ranges are calibrated on it.
    layers: the analysed layers (:func:`qsim.analysis.layers.find_layers`).
    spec: the spec under analysis (e.g. ``qsim.quant.layer_preset('w4a8')``).

  Returns:
    One dict per (layer, tensor): ``layer``, ``kind``, ``tensor`` ('weight',
    'input', 'output_alone', 'output_all'), ``elements`` and the
    :data:`METRICS`. A tensor the spec leaves float (e.g. the input under a
    weight-only spec) has no row.
  """
  paths = {l.call_path for l in layers}
  reference = _calls(model, variables, x, paths)
  n = len(layers)
  everything = model.clone(quant=per_layer(layers, [spec] * n, default=spec, name="all"))
  all_calls = _calls(everything, _calibrated(everything, variables, x), x, paths)
  rows = []
  for i, layer in enumerate(layers):
    found = {}
    if spec.weight is not None:
      ws, qs, scales = [], [], []
      for k in layer.kernels:
        w = _kernel(variables["params"], k)
        axis = 0 if k.endswith("embedding") else -1
        q, s = _quantized_with_scale(jnp.asarray(w), spec.weight, default_axis=axis, where=f"{layer.name}.weight")
        ws.append(w.ravel())
        qs.append(np.asarray(q).ravel())
        scales.append(np.broadcast_to(np.asarray(s), w.shape).ravel() if s is not None else np.full(w.size, np.nan))
      scale = np.concatenate(scales)
      found["weight"] = (np.concatenate(ws), np.concatenate(qs), None if np.isnan(scale).all() else scale)
    inp = reference[layer.call_path][0]
    if spec.act is not None and inp is not None and np.issubdtype(np.asarray(inp).dtype, np.floating):
      q, s = _quantized_with_scale(
          jnp.asarray(inp), spec.act, default_axis=-1, batch_axes=(0,), where=f"{layer.name}.act"
      )
      found["input"] = (
          np.asarray(inp),
          np.asarray(q),
          None if s is None else np.broadcast_to(np.asarray(s), inp.shape),
      )
    alone = model.clone(quant=per_layer(layers, [spec if j == i else None for j in range(n)], default=None, name=""))
    alone_calls = _calls(alone, _calibrated(alone, variables, x), x, {layer.call_path})
    ref_out = _flat(reference[layer.call_path][1])
    found["output_alone"] = (ref_out, _flat(alone_calls[layer.call_path][1]), None)
    found["output_all"] = (ref_out, _flat(all_calls[layer.call_path][1]), None)
    for tensor, (ref, q, s) in found.items():
      rows.append(
          {
              "layer": layer.name,
              "kind": layer.kind,
              "tensor": tensor,
              "elements": int(np.size(ref)),
              **tensor_stats(ref, q, s),
          }
      )
  return rows
