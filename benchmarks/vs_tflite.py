"""qsim's compiled grid vs the study's TFLite pipeline.

LeNet-5 on 2,000 Fashion-MNIST test images x the 15 MNIST-C corruptions
(severity 1, as the study; computed before timing), one process:

  qsim    the Engine: float + the 4 study quantizers (tflite_int8,
          tflite_dynamic, weight_only_int8, fp16) in one compiled program,
          per-sample predictions + uncertainty scores
  tflite  the study's pipeline: the real TFLite models (float32, full int8
          with uint8 input/output, dynamic range, float16; CoreML's 8-bit
          has no TFLite form, so the pipeline runs 4 models to qsim's 5)
          through the interpreter one sample at a time, argmax of the output

Prints ``speedup`` = TFLite pipeline time / qsim time, steady state (qsim
compiled once before timing: a sweep compiles once per model), and
``speedup_cold`` with qsim's compilation included. Target: speedup >= 1.

  PYTHONPATH=. python benchmarks/vs_tflite.py [--images N] [--sets N]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from qsim import data  # noqa: E402
from qsim.evaluate.engine import Engine, build_quantizers  # noqa: E402
from qsim.export.tflite import TFLiteModel, export  # noqa: E402
from qsim.models import lenet5  # noqa: E402
from qsim.shifts import MNIST_C, corrupt  # noqa: E402
from qsim.runs import load_variables  # noqa: E402

QUANTIZERS = ["tflite_int8", "tflite_dynamic", "weight_only_int8", "fp16"]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--images", type=int, default=2000)
  ap.add_argument("--sets", type=int, default=15)
  ap.add_argument("--batch_size", type=int, default=1000)
  ap.add_argument("--checkpoint", default="", help="a LeNet-5 training workdir (default: random init)")
  args = ap.parse_args()
  test = data.load("fashion_mnist_debian", "test", limit=args.images)
  calib = data.load("fashion_mnist_debian", "train", limit=100)
  names = sorted(MNIST_C)[: args.sets]
  sets = [np.asarray(corrupt("mnist_c", n, jax.random.key(i), test.x, 1)) for i, n in enumerate(names)]
  model = lenet5()
  variables = load_variables(args.checkpoint) if args.checkpoint else model.init(jax.random.key(0), test.x[:1])
  tfl = [
      TFLiteModel(export(model, variables, "float32", calib.x[:1]), num_threads=1),
      TFLiteModel(
          export(model, variables, "int8", calib.x[:1], representative=calib.x, softmax=True, io_type="uint8"),
          num_threads=1,
      ),
      TFLiteModel(export(model, variables, "dynamic", calib.x[:1]), num_threads=1),
      TFLiteModel(export(model, variables, "float16", calib.x[:1]), num_threads=1),
  ]
  n = args.images * len(sets)
  print(f"jax={jax.__version__} backend={jax.default_backend()} devices={jax.device_count()}")
  print(f"LeNet-5, {args.images} images x {len(sets)} corruptions = {n} images")

  t = time.perf_counter()
  engine = Engine(model, variables, build_quantizers(model, variables, QUANTIZERS, calib.x), batch_size=args.batch_size)
  engine.run(sets[0], test.y)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  qsim_preds = [engine.run(x, test.y).quant_pred for x in sets]
  qsim_s = time.perf_counter() - t

  t = time.perf_counter()
  tfl_preds = [[m.predict_study(x) for m in tfl] for x in sets]
  tfl_s = time.perf_counter() - t
  assert len(qsim_preds) == len(tfl_preds) == len(sets)
  print(
      f"qsim: {qsim_s:.2f} s warm ({n * (len(QUANTIZERS) + 1) / qsim_s:.0f} image-configs/s;"
      f" {1e6 * qsim_s / n / (len(QUANTIZERS) + 1):.1f} us per image-config), first run incl. compile"
      f" {compile_s:.2f} s"
  )
  print(f"tflite: {tfl_s:.2f} s ({1e6 * tfl_s / n / len(tfl):.1f} us per image-model, one at a time)")
  print(f"speedup={tfl_s / qsim_s:.3f} speedup_cold={tfl_s / (compile_s + qsim_s * (len(sets) - 1) / len(sets)):.3f}")


if __name__ == "__main__":
  main()
