"""What the int8 ADD's integer recipe changes on a trained model (issue 17).

TFLite's int8 ADD of two stored tensors is integer arithmetic of its own
(XNNPACK: 21-bit multipliers, one rounding; built-in kernels: Q31
multipliers, three roundings), simulated by ``LayerSpec.add_requant``
(``tests/test_add_requant.py``: equal to the runtime on every int8 operand
pair). This counts, on a checkpoint's clean test split and a shifted set,
how many int8 logits and predictions the recipe changes against the float
sum of the dequantized operands (``add_requant='fp32'``), per preset. A
model without residual ADDs (LeNet) changes nothing by construction.

  PYTHONPATH=. python benchmarks/add_recipes.py --checkpoint runs/resnet50_tiny [--limit 1000]

Prints one line per (preset, set) and a last line
``logits=N changed_xnnpack=N changed_builtin=N``.
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.evaluate.sweep import load_set, open_run, resolve_sets  # noqa: E402
from qsim.quant import QuantConfig, preset  # noqa: E402

PRESETS = {"xnnpack": "tflite_int8", "builtin": "tflite_int8_builtin"}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", required=True, help="a train workdir (experiments.train --workdir)")
  ap.add_argument("--shifts", default="c/fog/1", help="comma-separated shifted sets (the clean split comes first)")
  ap.add_argument("--limit", type=int, default=1000, help="images per set")
  ap.add_argument("--calib", type=int, default=100, help="calibration images")
  ap.add_argument("--batch", type=int, default=250)
  args = ap.parse_args()
  if args.limit < 1:
    raise SystemExit(f"--limit={args.limit} is not valid; give at least 1 image per set")
  run, calib = open_run(args.checkpoint, None, args.calib)
  model, variables = run.model, run.variables
  sets = resolve_sets(run.dataset, args.shifts)
  changed = dict.fromkeys(PRESETS, 0)
  total = 0
  for kernels, name in PRESETS.items():
    cfg = preset(name)
    float_sum = QuantConfig(default=dataclasses.replace(cfg.default, add_requant="fp32"), rules=cfg.rules)
    qs = build_quantizers(model, variables, [(name, cfg), ("float sum", float_sum)], calib.x)
    for shifted in sets:
      set_name = shifted.name
      x = load_set(run, shifted, seed=0, limit=args.limit).x
      logits = []
      for q in qs:
        apply = model.clone(quant=q.config).apply
        logits.append(
            np.concatenate(
                [
                    np.asarray(apply({**variables, "quant_stats": q.quant_stats}, x[i : i + args.batch]))
                    for i in range(0, len(x), args.batch)
                ]
            )
        )
      sim, flt = logits
      n_logits = int(np.sum(sim != flt))
      n_pred = int(np.sum(sim.argmax(-1) != flt.argmax(-1)))
      print(
          f"{name:20s} {set_name:12s} logits changed {n_logits} of {sim.size}, predictions {n_pred} of {len(x)}",
          flush=True,
      )
      changed[kernels] += n_logits
      if kernels == "xnnpack":
        total += sim.size
  print(f"logits={total} changed_xnnpack={changed['xnnpack']} changed_builtin={changed['builtin']}")


if __name__ == "__main__":
  main()
