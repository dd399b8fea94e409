"""Evaluation throughput of the disagreement engine on 1, 2, 4, 8 devices.

LeNet-5, float + 4 quantizers (w4a4, w8a8, w4, fp16), the same Fashion-MNIST
test images on each mesh (``qsim.distributed.data_mesh`` over the first N
devices, batch split over 'data'). One process, interleaved best-of timing
(``_timing.best_times``); each mesh is compiled before timing. Prints
images/s per device count and, last, ``scaling_N`` = throughput on N devices
over throughput on 1 device (ideal: N).

On a CPU host the N devices are fake (``--xla_force_host_platform_device_count``)
and share the same cores, so the figures only check that sharding costs
little; on a GPU/TPU host the devices are real and the ratios are the
scaling.

  PYTHONPATH=. python benchmarks/scaling.py [--images N] [--batch_size B]
"""

import argparse
import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # the host platform only: real accelerators are unaffected
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from _timing import best_times  # noqa: E402
from qsim import data, distributed  # noqa: E402
from qsim.evaluate.engine import Engine, build_quantizers  # noqa: E402
from qsim.models import lenet5  # noqa: E402

QUANTIZERS = ["w4a4", "w8a8", "w4", "fp16"]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--images", type=int, default=4096)
  ap.add_argument("--batch_size", type=int, default=512)
  args = ap.parse_args()
  counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
  if args.batch_size % counts[-1]:
    raise SystemExit(f"--batch_size={args.batch_size} is not valid; give a multiple of {counts[-1]}")
  test = data.load("fashion_mnist_debian", "test", limit=args.images)
  model = lenet5()
  variables = model.init(jax.random.key(0), test.x[:1])
  qs = build_quantizers(model, variables, QUANTIZERS, test.x[:1])
  engines = {
      n: Engine(model, variables, qs, batch_size=args.batch_size, mesh=distributed.data_mesh(jax.devices()[:n]))
      for n in counts
  }
  results = {n: e.run(test.x, test.y) for n, e in engines.items()}  # compiles each mesh's program
  for n in counts[1:]:  # sharding must not change a prediction
    np.testing.assert_array_equal(results[n].quant_pred, results[1].quant_pred)
  times = best_times(
      {n: (lambda e=e: e.run(test.x, test.y).quant_pred) for n, e in engines.items()}, repeats=3, inner=1
  )
  print(
      f"jax={jax.__version__} backend={jax.default_backend()} devices={jax.device_count()}"
      f" ({jax.devices()[0].device_kind})"
  )
  print(f"LeNet-5, {len(test.y)} images, float + {len(qs)} quantizers, batch {engines[1].batch_size}")
  for n in counts:
    print(f"devices={n}: {times[n]:.3f} s, {len(test.y) / times[n]:.0f} images/s")
  print(" ".join(f"scaling_{n}={times[1] / times[n]:.3f}" for n in counts[1:]))


if __name__ == "__main__":
  main()
