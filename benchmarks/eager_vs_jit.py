"""Where "the same result in every program" stops holding: eager vs jit on a checkpoint.

``tests/test_grid.py::test_grid_equals_each_config_alone`` asserts that a
config gives bit-identical logits eagerly, jitted and inside a grid, on
lenet_tiny and an LSTM. This measures the same comparison (one config,
op by op vs one jitted program) on a trained checkpoint and several
presets, so models with BatchNorm can be checked: per preset, how many of
the logits differ and by how much.

  PYTHONPATH=. python benchmarks/eager_vs_jit.py --checkpoint runs/resnet20 [--images 100]

One line per preset: ``<preset> differ=N of N max=X``.
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.evaluate.sweep import load_set, open_run  # noqa: E402
from qsim.shifts import registry  # noqa: E402
from qsim.quant import QuantConfig, preset  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", required=True, help="a train workdir (experiments.train --workdir)")
  ap.add_argument("--images", type=int, default=100, help="clean test images")
  args = ap.parse_args()
  if args.images < 1:
    raise SystemExit(f"--images={args.images} is not valid; give at least 1")
  run, calib = open_run(args.checkpoint, None, 100)
  model, variables = run.model, run.variables
  x = load_set(run, registry.clean_set(run.dataset), seed=0, limit=args.images).x
  int8 = preset("tflite_int8")
  variants = [
      ("float32", preset("float32")),
      ("tflite_int8", int8),
      ("tflite_int8 fold_bn=False", QuantConfig(default=dataclasses.replace(int8.default, fold_bn=False))),
      ("tflite_dynamic", preset("tflite_dynamic")),
      ("fp16", preset("fp16")),
  ]
  for q in build_quantizers(model, variables, variants, calib.x):
    apply = model.clone(quant=q.config).apply
    v = {**variables, **({"quant_stats": q.quant_stats} if q.quant_stats else {})}
    eager, jitted = np.asarray(apply(v, x)), np.asarray(jax.jit(apply)(v, x))
    print(
        f"{q.name} differ={int(np.sum(eager != jitted))} of {eager.size} max={float(np.max(np.abs(eager - jitted))):.3g}",
        flush=True,
    )


if __name__ == "__main__":
  main()
