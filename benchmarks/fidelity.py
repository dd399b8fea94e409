"""Deployment fidelity across architectures and both runtimes, and qsim's speed
against them.

Trains (or reuses, cached under ``--cache``, default ``runs/bench_fidelity``)
small but really trained Fashion-MNIST checkpoints of LeNet-5, NiN-tiny,
ResNet-20-tiny and GRU-rows-tiny (fixed seed 0), then runs
:func:`qsim.export.fidelity.run_fidelity` on each in every mode of both
runtimes: TFLite int8 / dynamic / float16 on XNNPACK and built-in kernels,
ONNX Runtime ort_int8 / ort_dynamic / ort_dynamic_u8 on MLAS and reference
kernels (clean test split + 5 MNIST-C sets at severity 1, ``--images`` per
set). Resumable: a rerun reuses the checkpoints and the stored rows.

Speed (warm, same samples, same configs; one thread for each runtime, as the
study ran TFLite; qsim's engine compiled before timing): for each
architecture, the qsim engine with the TFLite modes' presets vs the TFLite
models on XNNPACK, and with the ORT presets vs the ORT sessions (MLAS), on
the clean set. ``speedup_vs_X`` = runtime time / qsim time, summed over
architectures.

Prints a table per (runtime, mode, kernels), then on its last line::

  int8_min_agreement= int8_mean_jaccard= dynamic_min_agreement= ort_min_agreement= ort_mean_jaccard=
  speedup_vs_tflite= speedup_vs_ort=

``int8_*``: TFLite int8 over architectures, sets and both kernel families;
``dynamic_min_agreement``: TFLite dynamic, both families; ``ort_*``: every
ONNX Runtime mode and kernel family (on CPUs whose MLAS U8S8 kernels
saturate, see BUILD_NOTES, the MLAS rows of ort_int8/ort_dynamic set it).
About 10-15 minutes on the 2-core CPU from nothing, 3 once cached.

  PYTHONPATH=. python benchmarks/fidelity.py [--images N] [--cache DIR]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from _runs import trained  # noqa: E402
from qsim.evaluate import sweep  # noqa: E402
from qsim.evaluate.engine import Engine, build_quantizers  # noqa: E402
from qsim.export import fidelity  # noqa: E402
from qsim.export.onnx import ORTModel, export_onnx  # noqa: E402
from qsim.shifts import registry  # noqa: E402
from qsim.export.tflite import TFLiteModel, export  # noqa: E402

# model -> training steps (enough for a trained model: the run prints each test accuracy)
ARCHS = {"lenet5": 1500, "nin_tiny": 1500, "resnet20_tiny": 2000, "gru_rows_tiny": 3000}
SHIFTS = ("c/fog/1", "c/shot_noise/1", "c/rotate/1", "c/brightness/1", "c/canny_edges/1")
TFLITE_MODES = ("int8", "dynamic", "float16")
ORT_MODES = ("ort_int8", "ort_dynamic", "ort_dynamic_u8")


def _timed(fn, repeats: int = 3) -> float:
  fn()  # warm
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def _speed(ckpt: str, images: int) -> tuple[float, float, float, float]:
  """(qsim s, TFLite s, qsim s, ORT s) for the TFLite modes and the ORT modes on ``images`` clean images."""
  run, calib = sweep.open_run(ckpt, None, 100)
  model, variables = run.model, run.variables
  d = sweep.load_set(run, registry.clean_set(run.dataset), seed=0, limit=images)
  out = []
  for modes, presets, make in [
      (
          TFLITE_MODES,
          [fidelity.preset_of(m, "xnnpack") for m in TFLITE_MODES],
          lambda m: TFLiteModel(export(model, variables, m, calib.x[:1], representative=calib.x), num_threads=1),
      ),
      (
          ORT_MODES,
          list(ORT_MODES),
          lambda m: ORTModel(export_onnx(model, variables, m, calib.x[:1], representative=calib.x), num_threads=1),
      ),
  ]:
    engine = Engine(model, variables, build_quantizers(model, variables, presets, calib.x), batch_size=500)
    runtimes = [make(m) for m in modes]
    out.append(_timed(lambda: engine.run(d.x, d.y, "clean")))
    out.append(_timed(lambda: [r.predict(d.x, 500) for r in runtimes], repeats=1))
  return tuple(out)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--images", type=int, default=500, help="images per set")
  ap.add_argument("--cache", default="runs/bench_fidelity")
  args = ap.parse_args()
  rows = []
  works = {}
  secs = np.zeros(4)
  for name, steps in ARCHS.items():
    ckpt = trained(args.cache, name, steps)
    work = os.path.join(args.cache, f"fid_{name}_{ARCHS[name]}")
    fidelity.run_fidelity(
        fidelity.FidelityConfig(
            checkpoints=(ckpt,),
            modes=TFLITE_MODES + ORT_MODES,
            kernels=("xnnpack", "builtin", "mlas", "reference"),
            shifts=SHIFTS,
            limit=args.images,
            study=False,
        ),
        work,
    )[ckpt]
    works[name] = work
    rows += [dict(r, arch=name) for r in fidelity.ResultsStore(work).rows()]
    s = np.array(_speed(ckpt, args.images))
    with open(os.path.join(ckpt, "summary.json")) as f:
      acc = json.load(f)["test_accuracy"]
    print(
        f"{name} (test accuracy {acc:.4f}): qsim {s[0]:.2f} s vs TFLite {s[1]:.2f} s (3 modes); qsim {s[2]:.2f} s vs ORT {s[3]:.2f} s"
        f" (3 modes), {args.images} images",
        flush=True,
    )
    secs += s

  print(f"per architecture: {fidelity.write_summary(works, args.cache)}")
  print(f"\n| runtime | mode | kernels | min agreement | mean agreement | mean Jaccard | archs x sets |")
  print("|---|---|---|---|---|---|---|")
  groups = sorted({(r["runtime"], r["mode"], r["kernels"]) for r in rows})
  for g in groups:
    rs = [r for r in rows if (r["runtime"], r["mode"], r["kernels"]) == g]
    print(
        f"| {' | '.join(g)} | {min(r['agreement'] for r in rs):.4f} | {np.mean([r['agreement'] for r in rs]):.4f}"
        f" | {np.mean([r['jaccard'] for r in rs]):.3f} | {len(rs)} |"
    )

  def pick(pred):
    return [r for r in rows if pred(r)]

  int8 = pick(lambda r: r["mode"] == "int8")
  dyn = pick(lambda r: r["mode"] == "dynamic")
  ort = pick(lambda r: r["runtime"] == "onnxruntime")
  simulated = pick(
      lambda r: (r["mode"], r["kernels"])
      in {("ort_int8", "reference"), ("ort_dynamic_u8", "mlas"), ("ort_dynamic_u8", "reference")}
  )
  print(
      f"ort_simulated_min_agreement={min(r['agreement'] for r in simulated):.4f} (ort_int8 on reference kernels,"
      f" ort_dynamic_u8 on both)"
  )
  print(
      f"int8_min_agreement={min(r['agreement'] for r in int8):.4f}"
      f" int8_mean_jaccard={np.mean([r['jaccard'] for r in int8]):.3f}"
      f" dynamic_min_agreement={min(r['agreement'] for r in dyn):.4f}"
      f" ort_min_agreement={min(r['agreement'] for r in ort):.4f}"
      f" ort_mean_jaccard={np.mean([r['jaccard'] for r in ort]):.3f}"
      f" speedup_vs_tflite={secs[1] / secs[0]:.2f} speedup_vs_ort={secs[3] / secs[2]:.2f}"
  )


if __name__ == "__main__":
  main()
