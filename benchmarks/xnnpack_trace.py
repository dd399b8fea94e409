"""Which part of qsim's int8 simulation differs from XNNPACK, op by op (issue 17).

Converts a checkpoint to int8 TFLite, makes every operator's output a graph
output (so the XNNPACK delegate must produce it), runs it on clean test
images, and recomputes each int8 op from the runtime's own input tensors
with the recipe qsim simulates for ``tflite_int8``:

- CONV_2D / FULLY_CONNECTED: the exact int32 accumulator plus the int32
  bias, times ``float32(s_in * s_w[c] / s_out)``, rounded half to even;
- MUL: ``(q_a - z_a)(q_b - z_b)`` times ``float32(s_a * s_b / s_out)``;
- ADD: XNNPACK's qs8 VADD (:func:`qsim.quant.fixed_point.int8_add`);
- MEAN: the integer sum times ``float32(s_in / (N s_out))``.

A recipe that reproduces every value of every op means the runtime's
arithmetic is simulated; what is left between qsim and the runtime is then
in the tensors' scales, which the second part compares: how many of the
converted model's per-tensor int8 scales equal one of qsim's calibrated
scales exactly (under qsim's formula or the converter's float32 division),
and how far the rest are (the converter calibrates on TFLite's own float
kernels, qsim on XLA's, so a range can differ in its last bits).

The third part splits qsim's remaining difference between the two: the
share of the runtime's int8 logits qsim gives exactly, for ``tflite_int8``
as is, with the exact-accumulator requantization above (``requant='mlas'``,
the same arithmetic), and each with the converter's scales put in place of
qsim's where they are within 16 ulp (a diagnostic: the scales are matched by
value, not by tensor).

  PYTHONPATH=. python benchmarks/xnnpack_trace.py --checkpoint runs/resnet20 [--images 64]

Last lines: ``values=N wrong=N scales=N scales_exact=N scales_within_4ulp=N
median_rel_diff=X`` and ``exact_logits as_is=X exact_acc=X
converter_scales=X both=X``.
"""

import argparse
from collections import Counter
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.evaluate.sweep import load_set, open_run  # noqa: E402
from qsim.shifts import registry  # noqa: E402
from qsim.export.tflite import TFLiteModel, export  # noqa: E402
from qsim.quant import QuantConfig, fake_quant, fixed_point, preset  # noqa: E402

RELU = 1  # tflite ActivationFunctionType.RELU


def _ops(blob: bytes):
  """(model object, [(op name, inputs, outputs, options)])."""
  from tensorflow.lite.python import schema_py_generated as fb  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top

  m = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
  names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
  ops = []
  for op in m.subgraphs[0].operators:
    code = m.operatorCodes[op.opcodeIndex]
    name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
    ops.append((name, [int(i) for i in op.inputs], [int(o) for o in op.outputs], op.builtinOptions))
  return m, ops


def _all_outputs(blob: bytes) -> bytes:
  """The same model with every operator's output a graph output."""
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top

  m, ops = _ops(blob)
  m.subgraphs[0].outputs = np.array(sorted({o for _, _, outs, _ in ops for o in outs}), np.int32)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def run_traced(blob: bytes, x, kernels: str = "xnnpack"):
  """Runs ``blob`` with every operator's output a graph output (so a
  delegate must produce it) on ``x``. Returns ``(ops, interpreter, details,
  grid)``: the operators, the invoked interpreter, its tensor details by
  index and ``grid(i)``, tensor ``i``'s ``(scale, zero point)`` (arrays if
  per channel)."""
  _, ops = _ops(blob)
  it = TFLiteModel(_all_outputs(blob), kernels=kernels).interpreter
  inp = it.get_input_details()[0]
  it.resize_tensor_input(inp["index"], x.shape)
  it.allocate_tensors()
  it.set_tensor(inp["index"], x.astype(inp["dtype"]))
  it.invoke()
  details = {d["index"]: d for d in it.get_tensor_details()}

  def grid(i):
    p = details[i]["quantization_parameters"]
    s, z = np.asarray(p["scales"], np.float32), np.asarray(p["zero_points"])
    return (s, z) if len(s) > 1 else (s[0], int(z[0]))

  return ops, it, details, grid


def _conv_acc(x, w, stride: int, same: bool):
  """Exact int64 accumulator of an NHWC convolution (OHWI kernel)."""
  kh, kw = w.shape[1], w.shape[2]
  if same:
    pads = []
    for size, k in ((x.shape[1], kh), (x.shape[2], kw)):
      total = max((-(-size // stride) - 1) * stride + k - size, 0)
      pads.append((total // 2, total - total // 2))
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  acc = np.zeros((x.shape[0], oh, ow, w.shape[0]), np.int64)
  for dy in range(kh):
    for dx in range(kw):
      patch = x[:, dy : dy + stride * oh : stride, dx : dx + stride * ow : stride, :]
      acc += np.einsum("nhwc,oc->nhwo", patch, w[:, dy, dx, :])
  return acc


def _recompute(name, ins, out, options, get, grid):
  """The recipe's int8 output of one op from the runtime's inputs (None: not an int8 arithmetic op)."""
  so, zo = grid(out)
  lo = zo if getattr(options, "fusedActivationFunction", 0) == RELU else -128
  if name in ("CONV_2D", "FULLY_CONNECTED"):
    (si, zi), (sw, _) = grid(ins[0]), grid(ins[1])
    x, w = get(ins[0]).astype(np.int64) - zi, get(ins[1]).astype(np.int64)
    if name == "CONV_2D":
      acc = _conv_acc(x, w, options.strideH, options.padding == 0)
    else:
      acc = x.reshape(-1, w.shape[1]) @ w.T
    if len(ins) > 2 and ins[2] >= 0:
      acc = acc + get(ins[2]).astype(np.int64)
    q = np.round(acc.astype(np.float32) * (si * sw / so).astype(np.float32))
  elif name == "MUL":
    (sa, za), (sb, zb) = grid(ins[0]), grid(ins[1])
    prod = (get(ins[0]).astype(np.int64) - za) * (get(ins[1]).astype(np.int64) - zb)
    q = np.round(prod.astype(np.float32) * np.float32(sa * sb / so))
  elif name == "ADD":
    qa, qb = np.broadcast_arrays(get(ins[0]).astype(np.int32), get(ins[1]).astype(np.int32))
    q = np.asarray(fixed_point.int8_add(qa, qb, grid(ins[0]), grid(ins[1]), so, "xnnpack"))
  elif name == "MEAN":
    si, zi = grid(ins[0])
    x = get(ins[0]).astype(np.int64) - zi
    axes = tuple(int(a) for a in np.ravel(get(ins[1])))
    n = int(np.prod([x.shape[a] for a in axes]))
    q = np.round(x.sum(axes).astype(np.float32) * np.float32(si / (np.float32(n) * so)))
  else:
    return None
  return np.clip(q + zo, lo, 127)


def _exact_logits(model, variables, config, calib, x, ref) -> float:
  """The share of the runtime's int8 logits ``ref`` that qsim under ``config`` gives (to 1% of a step)."""
  (q,) = build_quantizers(model, variables, [("q", config)], calib)
  r = q.quant_stats["logits"]
  step = float(r["output_hi"].max() - r["output_lo"].min()) / 255
  logits = np.asarray(model.clone(quant=q.config).apply({**variables, "quant_stats": q.quant_stats}, x))
  return float(np.mean(np.abs(logits - ref) / step < 0.01))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", required=True, help="a train workdir (experiments.train --workdir)")
  ap.add_argument("--images", type=int, default=64, help="clean test images run through the model")
  ap.add_argument("--calib", type=int, default=100, help="calibration images")
  args = ap.parse_args()
  if args.images < 1:
    raise SystemExit(f"--images={args.images} is not valid; give at least 1")
  run, calib = open_run(args.checkpoint, None, args.calib)
  blob = export(run.model, run.variables, "int8", calib.x[:1], representative=calib.x)
  x = load_set(run, registry.clean_set(run.dataset), seed=0, limit=args.images).x
  ops, it, details, grid = run_traced(blob, x)

  def get(i):
    return it.get_tensor(i)  # every op output is a graph output, so the delegate kept it

  wrong, values = Counter(), Counter()
  for name, ins, outs, options in ops:
    if details[outs[0]]["dtype"] != np.int8:
      continue
    want = _recompute(name, ins, outs[0], options, get, grid)
    if want is None:
      continue
    got = it.get_tensor(outs[0]).astype(np.int64)
    wrong[name] += int(np.sum(want != got))
    values[name] += got.size
  for name in values:
    print(f"{name:16s} values {values[name]:>10,}  differing from the recipe {wrong[name]}")

  (q,) = build_quantizers(run.model, run.variables, ["tflite_int8"], calib.x)
  leaves = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(q.quant_stats)[0]}
  spec = preset("tflite_int8").default.output
  ours = set()
  for key, lo_leaf in leaves.items():
    if key.endswith("_lo']"):
      for lo, hi in zip(np.ravel(lo_leaf), np.ravel(leaves[key[: -len("_lo']")] + "_hi']"])):
        lo, hi = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
        if hi > lo:
          s = fake_quant.scale_and_zero_point(spec, jnp.asarray(lo), jnp.asarray(hi))[0]
          ours |= {np.float32(np.ravel(s)[0]), np.float32(hi - lo) / np.float32(255)}
  ours_sorted = np.array(sorted(ours), np.float32)
  theirs = [
      np.float32(d["quantization_parameters"]["scales"][0])
      for d in details.values()
      if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1
  ]
  rel = np.array([np.min(np.abs(ours_sorted - s)) / s for s in theirs])
  ulps = np.array([np.min(np.abs(ours_sorted - s)) / np.spacing(s) for s in theirs])
  print(
      f"values={sum(values.values())} wrong={sum(wrong.values())} scales={len(theirs)}"
      f" scales_exact={int(np.sum(ulps == 0))} scales_within_4ulp={int(np.sum(ulps <= 4))}"
      f" median_rel_diff={float(np.median(rel)):.2e}"
  )

  cfg = preset("tflite_int8")
  exact_acc = QuantConfig(default=dataclasses.replace(cfg.default, requant="mlas"), rules=cfg.rules)
  ref = TFLiteModel(blob, kernels="xnnpack").outputs(x, len(x))
  figures = {}
  for label, c in (("as_is", cfg), ("exact_acc", exact_acc)):
    figures[label] = _exact_logits(run.model, run.variables, c, calib.x, x, ref)
    with fake_quant.scales_snapped_to(theirs):
      figures["converter_scales" if label == "as_is" else "both"] = _exact_logits(
          run.model, run.variables, c, calib.x, x, ref
      )
  print("exact_logits " + " ".join(f"{k}={figures[k]:.4f}" for k in ("as_is", "exact_acc", "converter_scales", "both")))


if __name__ == "__main__":
  main()
