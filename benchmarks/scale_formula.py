"""qsim's asymmetric int8 scale vs the converter's, on a trained model (issue 17).

qsim (AQT) computes a static asymmetric scale as ``width * float32(1/255)``;
the TFLite converter as ``float32(width) / 255``, one correctly rounded
float32 division. The two differ by one ulp on many widths. For a checkpoint,
this counts the calibrated ranges of ``tflite_int8`` (zero included) on which
the two formulas differ, and, where they differ, which of the two values
appears among the converted int8 model's per-tensor scales (a value can
also coincide with another tensor's scale, so the counts are indicative).

  PYTHONPATH=. python benchmarks/scale_formula.py --checkpoint runs/resnet20

Last line: ``ranges=N differ=N only_reciprocal_in_file=N only_division_in_file=N``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.evaluate.sweep import open_run  # noqa: E402
from qsim.export.tflite import TFLiteModel, export  # noqa: E402
from qsim.quant import fake_quant, preset  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", required=True, help="a train workdir (experiments.train --workdir)")
  ap.add_argument("--calib", type=int, default=100, help="calibration images")
  args = ap.parse_args()
  run, calib = open_run(args.checkpoint, None, args.calib)
  (q,) = build_quantizers(run.model, run.variables, ["tflite_int8"], calib.x)
  blob = export(run.model, run.variables, "int8", calib.x[:1], representative=calib.x)
  in_file = set()
  for d in TFLiteModel(blob).interpreter.get_tensor_details():
    scales = d["quantization_parameters"]["scales"]
    if d["dtype"] == np.int8 and len(scales) == 1:
      in_file.add(np.float32(scales[0]))
  leaves = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(q.quant_stats)[0]}
  spec = preset("tflite_int8").default.output
  ranges = differ = only_recip = only_div = 0
  for key, lo_leaf in leaves.items():
    if not key.endswith("_lo']"):
      continue
    for lo, hi in zip(np.ravel(lo_leaf), np.ravel(leaves[key[: -len("_lo']")] + "_hi']"])):
      lo, hi = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
      if hi == lo:
        continue
      recip = np.float32(np.ravel(fake_quant.scale_and_zero_point(spec, jnp.asarray(lo), jnp.asarray(hi))[0])[0])
      div = np.float32(hi - lo) / np.float32(255)
      ranges += 1
      if recip != div:
        differ += 1
        only_recip += recip in in_file and div not in in_file
        only_div += div in in_file and recip not in in_file
  print(f"ranges={ranges} differ={differ} only_reciprocal_in_file={only_recip} only_division_in_file={only_div}")


if __name__ == "__main__":
  main()
