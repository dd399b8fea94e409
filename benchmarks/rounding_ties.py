"""How often a rounding tie decides an int8 value on real data (issue 19):
qsim rounds half to even; TFLite's reference QUANTIZE source reads
``std::round`` (half away from zero). A tie needs ``x / scale`` to be
exactly k + 1/2 in float32. Whether the runtime really rounds ties away is
measured by the fidelity run with ``TensorSpec.rounding='nearest_away'`` on
the input (BUILD_NOTES, "Rounding ties"): it does not, on either kernel
family.

For Fashion-MNIST's clean test split and its 75 synthetic shifted sets
(MNIST-C style, ``c/<corruption>/<severity>``), the model input's static
int8 grid as tflite_int8 calibrates it (range of the first ``--calib``
training images), counts the input values that are exact ties, under both
arithmetics that appear (``x * (1 / scale)``, qsim's and XNNPACK's; ``x /
scale``, the reference kernel's), and the zero point's own tie
(``qmin - lo / scale``). Prints per family and a last line
``input_values=N ties_mul=N ties_div=N zero_point_tie=0|1``.

  PYTHONPATH=. python benchmarks/rounding_ties.py [--limit 1000]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from qsim import data as data_lib  # noqa: E402
from qsim.evaluate.sweep import resolve_sets  # noqa: E402
from qsim.quant import fake_quant, preset  # noqa: E402
from qsim.shifts import registry  # noqa: E402

DATASET = "fashion_mnist_debian"


def ties(t: np.ndarray) -> int:
  return int(np.count_nonzero(t - np.floor(t) == np.float32(0.5)))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--limit", type=int, default=1000, help="images per set")
  ap.add_argument("--calib", type=int, default=100, help="calibration images (the representative dataset)")
  args = ap.parse_args()
  calib = data_lib.load(DATASET, "train", limit=args.calib).x
  spec = preset("tflite_int8").default.act
  lo, hi = (jnp.asarray(v, jnp.float32).reshape(1, 1, 1, 1) for v in (calib.min(), calib.max()))
  scale, z = (float(np.asarray(v).ravel()[0]) for v in fake_quant.scale_and_zero_point(spec, lo, hi))
  s32 = np.float32(scale)
  zp_raw = np.float32(-128) - np.float32(calib.min()) / s32
  print(
      f"input grid: range [{float(calib.min())}, {float(calib.max())}], scale {scale!r}, zero point {z}"
      f" (qmin - lo/scale = {float(zp_raw)!r})"
  )
  total = tm = td = 0
  per_family = {}
  for shifted in resolve_sets(DATASET, "c"):
    d = (
        data_lib.load(DATASET, "test", limit=args.limit)
        if shifted.family == registry.CLEAN
        else registry.load_shifted(shifted.name, limit=args.limit)
    )
    x = np.asarray(d.x, np.float32)
    a, b = ties(x * (np.float32(1) / s32)), ties(x / s32)
    fam = shifted.family if shifted.family == registry.CLEAN else shifted.shift
    n, ma, mb = per_family.get(fam, (0, 0, 0))
    per_family[fam] = (n + x.size, ma + a, mb + b)
    total, tm, td = total + x.size, tm + a, td + b
  for fam, (n, a, b) in per_family.items():
    print(f"  {fam:18s} values {n:>11,}  ties x*(1/s) {a:>6}  ties x/s {b:>6}")
  print(f"input_values={total} ties_mul={tm} ties_div={td} zero_point_tie={int(zp_raw - np.floor(zp_raw) == 0.5)}")


if __name__ == "__main__":
  main()
