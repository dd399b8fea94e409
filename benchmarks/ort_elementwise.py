"""ONNX Runtime's fused QLinearAdd / QLinearMul against qsim's recipes on many calibration ranges (issue 17).

``tests/test_ort_ops.py`` checks ``int8_add(recipe='mlas')`` and ``mlas_mul``
on all 65,536 uint8 operand pairs of one range each; this runs the same
one-op models (ORT's ``quantize_static``, the default session) on ``--draws``
ranges drawn with numpy ``default_rng(--seed)`` (lo in [-4, -0.3], hi in
[0.3, 6]) and counts, over all pairs, where each candidate differs from the
runtime: for the ADD the recipe, the float sum of the dequantized operands
rounded once (``add_requant='fp32'``), the recipe with its zero-point term
unfused (``r_a z_a + r_b z_b`` rounded twice) and with the other product
fused; for the MUL the recipe and the product rounded before adding the zero
point. The same quantized ADD run unfused (graph optimizations off:
DequantizeLinear, float Add, QuantizeLinear, the reference path of
``ort_int8``) against the float sum quantized by dividing by the scale and by
multiplying by its reciprocal (qsim's ``fp32``). Reuses the test's models.

  PYTHONPATH=. python benchmarks/ort_elementwise.py [--draws 25] [--seed 5]

Last line: ``ranges=N pairs=N add_mlas=N add_float=N add_unfused_zero=N
add_other_fused=N mul_mlas=N mul_rounded_first=N ref_divide=N ref_reciprocal=N``.
"""

import argparse
import os
import pathlib
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402

import test_ort_ops as t  # noqa: E402
from qsim.quant import fixed_point  # noqa: E402

f32 = np.float32


def _add_variant(qa, qb, ga, gb, gy, zero_term):
  """The AVX2 recipe with another zero-point term (``zero_term(ra, za, rb, zb)``)."""
  u = lambda v: np.asarray(v, f32) + f32(fixed_point.UINT8_SHIFT)  # noqa: E731
  ra, rb = f32(ga[0] / gy[0]), f32(gb[0] / gy[0])
  fixed = u(gy[1]) - zero_term(ra, u(ga[1]), rb, u(gb[1]))
  v = fixed_point.fma(u(qa), ra, fixed_point.fma(u(qb), rb, fixed))
  return np.rint(np.asarray(v)) - u(gy[1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--draws", type=int, default=25)
  p.add_argument("--seed", type=int, default=5)
  a = p.parse_args(argv)
  rng = np.random.default_rng(a.seed)
  counts = dict.fromkeys(
      [
          "add_mlas",
          "add_float",
          "add_unfused_zero",
          "add_other_fused",
          "mul_mlas",
          "mul_rounded_first",
          "ref_divide",
          "ref_reciprocal",
      ],
      0,
  )
  add = jax.jit(lambda qa, qb, ga, gb, gy: fixed_point.int8_add(qa, qb, ga, gb, gy[0], "mlas", gy[1]))
  pairs = 0
  for i in range(a.draws):
    ranges = tuple(
        float(v) for v in (-rng.uniform(0.3, 4), rng.uniform(0.3, 6), -rng.uniform(0.3, 4), rng.uniform(0.3, 6))
    )
    tmp = pathlib.Path(tempfile.mkdtemp())
    qa, qb, (ga, gb, gy), runtime = t._binary_op("Add", ranges, tmp)
    pairs += len(qa)
    opts = t.ort.SessionOptions()
    opts.graph_optimization_level = t.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = t.ort.InferenceSession(str(tmp / "quant.onnx"), opts, providers=["CPUExecutionProvider"])
    fa, fb = ((qa - ga[1]) * ga[0]).astype(f32), ((qb - gb[1]) * gb[0]).astype(f32)
    ref_q = t._runtime_q(ref.run(None, {"a": fa, "b": fb})[0], gy)
    total = (fa + fb).astype(f32)
    counts["ref_divide"] += int((t._stored(np.rint(total / gy[0]), gy) != ref_q).sum())
    counts["ref_reciprocal"] += int((t._stored(np.rint(total * (f32(1) / gy[0])), gy) != ref_q).sum())
    counts["add_mlas"] += int((t._stored(add(qa, qb, ga, gb, gy), gy) != runtime).sum())
    counts["add_float"] += int((t._float_sum(qa, qb, ga, gb, gy) != runtime).sum())
    unfused = _add_variant(qa, qb, ga, gb, gy, lambda ra, za, rb, zb: f32(f32(ra * za) + f32(rb * zb)))
    other = _add_variant(qa, qb, ga, gb, gy, lambda ra, za, rb, zb: np.asarray(fixed_point.fma(rb, zb, f32(ra * za))))
    counts["add_unfused_zero"] += int((t._stored(unfused, gy) != runtime).sum())
    counts["add_other_fused"] += int((t._stored(other, gy) != runtime).sum())
    qa, qb, (ga, gb, gy), runtime = t._binary_op("Mul", ranges, pathlib.Path(tempfile.mkdtemp()))
    prod = (qa - ga[1]) * (qb - gb[1])
    counts["mul_mlas"] += int(
        (t._stored(jax.jit(fixed_point.mlas_mul)(prod, ga[0], gb[0], gy[0], gy[1]), gy) != runtime).sum()
    )
    first = np.rint((prod.astype(f32) * f32(f32(ga[0] * gb[0]) / gy[0])).astype(f32))
    counts["mul_rounded_first"] += int((t._stored(first, gy) != runtime).sum())
    print(f"[{i + 1}/{a.draws}] {ranges}: {counts}", flush=True)
  print(f"ranges={a.draws} pairs={pairs} " + " ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
  main()
