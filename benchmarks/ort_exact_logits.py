"""How much of ONNX Runtime's fused int8 model qsim reproduces exactly (issue 17).

Runs a checkpoint's ``ort_int8`` model (exported as ``experiments.fidelity``
does: the first ``--calib`` training samples as ORT's calibration set) on ORT's
default session (MLAS's fused QLinearConv / QLinearAdd / QLinearMul /
QLinearGlobalAveragePool / QGemm) and qsim's preset for it, with each of the
preset's elementwise recipes in turn put back to the float arithmetic, and
prints per set the share of images whose logits are the runtime's on every
class (compared on each one's int8 logit grid: a scale an ulp apart does not count), the share of logits exact, and the
top-1 agreement.

  PYTHONPATH=. python benchmarks/ort_exact_logits.py --checkpoint runs/resnet20 --shifts c/brightness/1,c/fog/1

Last line: ``exact_images=<min over sets, the preset as is> exact_logits=<min> agreement=<min>``.
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.evaluate.sweep import load_set, open_run, resolve_sets  # noqa: E402
from qsim.export.onnx import ORTModel, export_onnx, ort_preset  # noqa: E402
from qsim.quant import QuantConfig, preset  # noqa: E402


def variants(name: str) -> dict[str, QuantConfig]:
  """The preset, and the preset with its ADD's recipe put back to the float sum."""
  cfg = preset(name)
  out = {name: cfg}
  if cfg.default.add_requant != "fp32":
    out[f"{name} with float ADDs"] = dataclasses.replace(
        cfg, default=dataclasses.replace(cfg.default, add_requant="fp32")
    )
  return out


def _steps(logits: np.ndarray) -> np.ndarray:
  """Dequantized logits back on their int8 grid (``q - zero point``), the step read from the values."""
  step = np.min(np.diff(np.unique(logits)))
  return np.rint(logits / step).astype(np.int64)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument(
      "--shifts", default="c/brightness/1,c/fog/1", help="shifted sets besides the clean test split (comma-separated)"
  )
  p.add_argument("--limit", type=int, default=1000)
  p.add_argument("--calib", type=int, default=100)
  p.add_argument(
      "--preset", default="", help="qsim's preset (default: the one the fidelity run picks for MLAS on this CPU)"
  )
  a = p.parse_args(argv)
  run, calib = open_run(a.checkpoint, None, a.calib)
  model, variables = run.model, run.variables
  name = a.preset or ort_preset("ort_int8", "mlas")
  ort_model = ORTModel(export_onnx(model, variables, "ort_int8", calib.x[:1], representative=calib.x))
  configs = variants(name)
  quantizers = build_quantizers(model, variables, list(configs.items()), calib.x)
  lows = None
  for shifted in resolve_sets(run.dataset, a.shifts):
    set_name = shifted.name
    d = load_set(run, shifted, seed=0, limit=a.limit)
    runtime = ort_model.outputs(d.x)
    for q in quantizers:
      z = np.asarray(model.clone(quant=q.config).apply({**variables, "quant_stats": q.quant_stats}, d.x))
      same = _steps(z) == _steps(runtime)
      row = (same.all(1).mean(), same.mean(), (z.argmax(1) == runtime.argmax(1)).mean())
      print(
          f"{set_name:24s} {q.name:36s} exact images {row[0]:.4f}  exact logits {row[1]:.4f}  agreement {row[2]:.4f}",
          flush=True,
      )
      if q.name == name:
        lows = row if lows is None else tuple(min(u, v) for u, v in zip(lows, row))
  print(f"exact_images={lows[0]:.4f} exact_logits={lows[1]:.4f} agreement={lows[2]:.4f}")


if __name__ == "__main__":
  main()
