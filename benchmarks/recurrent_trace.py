"""What TFLite's int8 kernels compute in a recurrent model, op by op, and what qsim needs of it (issue 17).

Converts a GRU/LSTM checkpoint to int8 TFLite (the unrolled cell: FULLY_CONNECTED,
ADD, SUB, MUL, LOGISTIC, TANH per time step), makes every operator's output a
graph output, runs it on clean test images with each kernel family
(``xnnpack``, ``builtin``) and recomputes every int8 op from the runtime's own
input tensors with each candidate recipe, counting the outputs a recipe gets
wrong:

- FULLY_CONNECTED: exact int32 accumulator + the model's int32 bias, times
  ``float32(s_in s_w / s_out)`` rounded half to even (``fp32``), or the Q31
  multiplier and shift with the last shift rounded half up / half away
  (``fx_half_up``, ``fx_half_away``);
- MUL: the integer product ``(q_a - z_a)(q_b - z_b)`` with the same three;
- ADD: XNNPACK's and the built-in ADD (:func:`qsim.quant.fixed_point.int8_add`)
  and the float sum rounded once; SUB (``1 - z``): the same with the second
  operand negated;
- LOGISTIC / TANH: the float function of the dequantized input, rounded
  half away (the built-in kernels' lookup table) or half to even.

The dynamic-range model's FULLY_CONNECTEDs (float input, int8 weights) are
recomputed from the runtime's float inputs with each way qsim can quantize
them (``TensorSpec.qparams``: the standard grid, XNNPACK's qd8).

Then the share of the runtime's int8 logits that qsim's preset for each family
gives exactly, and its prediction agreement, with all of its recurrent
mechanisms and with one of them off at a time: the MUL recipe
(:func:`qsim.nn.layers.mul`), the gate matmuls' int32 bias and
requantization (:func:`qsim.nn.recurrent.gate_spec`), TFLite's grid for the
zero initial state (``qsim.nn.recurrent.ZERO_STATE_SCALE``, on which the first
step's biases widen their weight scales), the ADD and SUB recipes
(``add_requant``).

  PYTHONPATH=. python benchmarks/recurrent_trace.py --checkpoint runs/gru_rows [--images 64 --logit-images 500]

Last line: ``recurrent exact_logits xnnpack=X builtin=X agreement xnnpack=X builtin=X``.
"""

import argparse
from collections import Counter
import contextlib
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.evaluate.sweep import load_set, open_run  # noqa: E402
from qsim.shifts import registry  # noqa: E402
from qsim.export.tflite import TFLiteModel, export, preset_for  # noqa: E402
from qsim.nn import layers, recurrent  # noqa: E402
from qsim.quant import LayerSpec, QuantConfig, fake_quant, fixed_point, preset  # noqa: E402
from qsim.quant.spec import QPARAMS  # noqa: E402
from xnnpack_trace import RELU, run_traced  # noqa: E402

KERNELS = ("xnnpack", "builtin")
MECHANISMS = ("all", "float MUL", "float gate bias", "zero state scale 1", "float ADD and SUB")


def _requant(acc, a, b, out_scale, rounding):
  """``acc`` (int64 numpy) times the Q31 multiplier of ``a b / out_scale``."""
  m, e = fixed_point.quantize_multiplier(a, b, out_scale)
  return np.asarray(fixed_point.multiply_by_quantized_multiplier(jnp.asarray(acc, jnp.int32), m, e, rounding))


def _round_away(v):
  return np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5))


def _candidates(name, ins, out, options, get, grid):
  """{recipe: int8 output} for one op from the runtime's inputs (None: not traced)."""
  so, zo = grid(out)
  lo = zo if getattr(options, "fusedActivationFunction", 0) == RELU else -128
  c = {}
  if name in ("FULLY_CONNECTED", "MUL"):
    (sa, za), (sb, zb) = grid(ins[0]), grid(ins[1])
    a = get(ins[0]).astype(np.int64) - za
    if name == "FULLY_CONNECTED":
      w = get(ins[1]).astype(np.int64)
      acc = a.reshape(-1, w.shape[1]) @ w.T
      if len(ins) > 2 and ins[2] >= 0:
        acc = acc + get(ins[2]).astype(np.int64)
    else:
      acc = a * (get(ins[1]).astype(np.int64) - zb)
    c["fp32"] = np.round(acc.astype(np.float32) * np.float32(np.float32(sa * sb) / so))
    for r in fixed_point.ROUNDINGS:
      c[f"fx_{r}"] = _requant(acc, sa, sb, so, r)
  elif name in ("ADD", "SUB"):
    (sa, za), (sb, zb) = grid(ins[0]), grid(ins[1])
    qa, qb = np.broadcast_arrays(get(ins[0]).astype(np.int32), get(ins[1]).astype(np.int32))
    if name == "SUB":
      qb = 2 * zb - qb  # (q_b - z_b) negated
    for recipe in fixed_point.ADD_RECIPES:
      c[recipe] = np.asarray(fixed_point.int8_add(qa, qb, (sa, za), (sb, zb), so, recipe))
    c["float"] = np.round((sa * (qa - za).astype(np.float32) + sb * (qb - zb).astype(np.float32)) / so)
  elif name in ("LOGISTIC", "TANH"):
    si, zi = grid(ins[0])
    x = np.float32(si) * (get(ins[0]).astype(np.float32) - zi)
    y = np.float32(1) / (np.float32(1) + np.exp(-x)) if name == "LOGISTIC" else np.tanh(x)
    c["lut_half_away"] = _round_away(y * np.float32(1 / so))
    c["half_even"] = np.round(y / so)
  else:
    return None
  return {k: np.clip(v + zo, lo, 127) for k, v in c.items()}


def trace_ops(blob, x, kernels):
  """Per (op, recipe): ``(values, wrong)`` over every int8 op of the model."""
  ops, it, details, grid = run_traced(blob, x, kernels)
  values, wrong = Counter(), Counter()
  for name, ins, outs, options in ops:
    if details[outs[0]]["dtype"] != np.int8:
      continue
    cands = _candidates(name, ins, outs[0], options, it.get_tensor, grid)
    if cands is None:
      continue
    got = it.get_tensor(outs[0]).astype(np.int64)
    values[name] += got.size
    for recipe, want in cands.items():
      wrong[name, recipe] += int(np.sum(want.reshape(got.shape) != got))
  return values, wrong


def trace_dynamic(blob, x, kernels):
  """Per qparams: ``(outputs, off)``, the dynamic-range model's int8-weight
  FULLY_CONNECTED outputs and how many of them qsim's input quantization
  (``tflite_dynamic``'s act spec with that ``qparams``) puts more than a
  quarter of a step (one input integer times one weight integer) from the
  runtime's, recomputed from the runtime's own float inputs."""
  ops, it, details, _ = run_traced(blob, x, kernels)
  act = preset("tflite_dynamic").default.act
  outputs, off = 0, Counter()
  for name, ins, outs, _ in ops:
    if name != "FULLY_CONNECTED" or details[ins[1]]["dtype"] != np.int8 or details[ins[0]]["dtype"] != np.float32:
      continue
    w = it.get_tensor(ins[1]).astype(np.float64)
    sw = np.asarray(details[ins[1]]["quantization_parameters"]["scales"], np.float64)
    v = it.get_tensor(ins[0]).reshape(-1, w.shape[1]).astype(np.float32)
    b = it.get_tensor(ins[2]).astype(np.float64) if len(ins) > 2 and ins[2] >= 0 else 0.0
    got = it.get_tensor(outs[0]).reshape(len(v), -1).astype(np.float64)
    lo, hi = np.minimum(v.min(1, keepdims=True), 0), np.maximum(v.max(1, keepdims=True), 0)
    step = (hi - lo).astype(np.float64) / 255 * sw
    outputs += got.size
    for qparams in QPARAMS:
      vq = np.asarray(fake_quant.quantize(jnp.asarray(v), act.replace(qparams=qparams), batch_axes=(0,)))
      want = vq.astype(np.float64) @ (w * sw[:, None]).T + b
      off[qparams] += int(np.sum(np.abs(want - got) > 0.25 * step))
  return outputs, off


@contextlib.contextmanager
def mechanism_off(which: str):
  """qsim with one recurrent mechanism switched off (``'all'``: none; the
  ADD/SUB recipes are a spec field: see :func:`config`)."""
  saved = layers.mul, recurrent.gate_spec, recurrent.ZERO_STATE_SCALE
  if which == "float MUL":
    layers.mul = lambda module, a, b: a * b
  elif which == "float gate bias":
    recurrent.gate_spec = lambda spec: LayerSpec(weight=spec.weight)
  elif which == "zero state scale 1":
    recurrent.ZERO_STATE_SCALE = 1.0
  try:
    yield
  finally:
    layers.mul, recurrent.gate_spec, recurrent.ZERO_STATE_SCALE = saved


def config(preset_name: str, which: str) -> QuantConfig:
  """The preset, with float ADD/SUB (``add_requant='fp32'``) for that variant."""
  spec = preset(preset_name).default
  if which == "float ADD and SUB":
    spec = dataclasses.replace(spec, add_requant="fp32")
  return QuantConfig(default=spec, name=preset_name)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", required=True, help="a GRU/LSTM train workdir (experiments.train --workdir)")
  ap.add_argument("--images", type=int, default=64, help="clean test images for the op trace")
  ap.add_argument("--logit-images", type=int, default=500, help="clean test images for the logit comparison")
  ap.add_argument("--calib", type=int, default=100, help="calibration images")
  args = ap.parse_args()
  for flag in ("images", "logit_images", "calib"):
    if getattr(args, flag) < 1:
      raise SystemExit(f"--{flag.replace('_', '-')}={getattr(args, flag)} is not valid; give at least 1")
  run, calib = open_run(args.checkpoint, None, args.calib)
  if "rnn" not in run.variables.get("params", {}):
    raise SystemExit(f"--checkpoint={args.checkpoint}: model {type(run.model).__name__} is not recurrent")
  blob = export(run.model, run.variables, "int8", calib.x[:1], representative=calib.x)
  x = load_set(run, registry.clean_set(run.dataset), seed=0, limit=max(args.images, args.logit_images)).x

  for kernels in KERNELS:
    values, wrong = trace_ops(blob, x[: args.images], kernels)
    print(f"== {kernels}: int8 values differing from each recipe, {args.images} images")
    for op in values:
      recipes = ", ".join(f"{r} {n}" for (o, r), n in wrong.items() if o == op)
      print(f"  {op:16s} {values[op]:>10,}  {recipes}")

  dyn = export(run.model, run.variables, "dynamic", calib.x[:1])
  for kernels in KERNELS:
    outputs, off = trace_dynamic(dyn, x[: args.images], kernels)
    print(
        f"== {kernels}, dynamic range: FULLY_CONNECTED outputs off by > 1/4 step, of {outputs:,}: "
        + ", ".join(f"{q} {off[q]}" for q in QPARAMS)
    )

  best = {}
  for kernels in KERNELS:
    ref = TFLiteModel(blob, kernels=kernels).outputs(x[: args.logit_images])
    preset_name = preset_for("int8", kernels)
    print(f"== qsim {preset_name} vs {kernels}: exact int8 logits, prediction agreement ({args.logit_images} images)")
    for which in MECHANISMS:
      with mechanism_off(which):
        (q,) = build_quantizers(run.model, run.variables, [(which, config(preset_name, which))], calib.x)
        r = q.quant_stats["logits"]
        step = float(r["output_hi"].max() - r["output_lo"].min()) / 255
        model = run.model.clone(quant=q.config)
        logits = np.asarray(
            jax.jit(lambda v, xb: model.apply(v, xb))(
                {**run.variables, "quant_stats": q.quant_stats}, x[: args.logit_images]
            )
        )
      exact = float(np.mean(np.abs(logits - ref) / step < 0.01))
      agree = float(np.mean(logits.argmax(-1) == ref.argmax(-1)))
      print(f"  {which:20s} exact_logits={exact:.4f} agreement={agree:.4f}")
      if which == "all":
        best[kernels] = (exact, agree)
  print(
      f"recurrent exact_logits xnnpack={best['xnnpack'][0]:.4f} builtin={best['builtin'][0]:.4f}"
      f" agreement xnnpack={best['xnnpack'][1]:.4f} builtin={best['builtin'][1]:.4f}"
  )


if __name__ == "__main__":
  main()
