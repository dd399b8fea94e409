"""The disagreement engine vs one-config-at-a-time evaluation.

LeNet-5 on 2,000 Fashion-MNIST test images, float + 16 quantizers (wXaY
grid points and the deployment presets, two of them with calibrated static
ranges) x 16 shifted sets (MNIST-C corruptions, computed before timing).
One process, interleaved best-of timing (``_timing.best_times``):

  grid    qsim's Engine: one compiled program, all quantizers, per-sample
          predictions + uncertainty scores (what the launchers use)
  loop    for each config its own jitted forward (K+1 compilations), argmax
  eager   the same loop without jit (op by op)
  floor   (K+1) jitted float forwards of the same images: the physical floor

Prints the engine's compile count; ``grid_vs_loop``: loop / grid time for a
fresh session, compilation included (the loop jits K+1 programs, the grid
one); ``grid_vs_loop_warm``: the same with everything compiled;
``grid_vs_eager``; ``floor_ratio``: warm grid time / floor time. Targets on
a 2-core CPU: 1 compilation, grid_vs_loop >= 1.2, floor_ratio <= 1.25.

  PYTHONPATH=. python benchmarks/grid_eval.py [--images N] [--sets N]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _timing import best_times  # noqa: E402
from qsim import data  # noqa: E402
from qsim.evaluate.engine import Engine, build_quantizers  # noqa: E402
from qsim.models import lenet5  # noqa: E402
from qsim.nn import QUANT_RNG, QUANT_STATS  # noqa: E402
from qsim.shifts import MNIST_C, corrupt  # noqa: E402

QUANTIZERS = [
    "w2a2",
    "w3a3",
    "w4a4",
    "w5a5",
    "w6a6",
    "w8a8",
    "w4a8",
    "w8a4",
    "w2",
    "w4",
    "w8",
    "tflite_int8",
    "tflite_dynamic",
    "weight_only_int8",
    "fp16",
    "bf16",
]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--images", type=int, default=2000)
  ap.add_argument("--sets", type=int, default=16)
  ap.add_argument("--batch_size", type=int, default=500)
  args = ap.parse_args()
  test = data.load("fashion_mnist_debian", "test", limit=args.images)
  calib = data.load("fashion_mnist_debian", "train", limit=100)
  names = sorted(MNIST_C)
  sets = [corrupt("mnist_c", names[i % len(names)], jax.random.key(i), test.x, 1 + i % 5) for i in range(args.sets)]
  sets = [np.asarray(s) for s in sets]
  model = lenet5()
  variables = model.init(jax.random.key(0), test.x[:1])
  qs = build_quantizers(model, variables, QUANTIZERS, calib.x)
  bs = args.batch_size
  engine = Engine(model, variables, qs, batch_size=bs)

  def batches(x):
    return [x[i : i + bs] for i in range(0, len(x), bs)]

  def grid():
    return [engine.run(x, test.y).quant_pred for x in sets]

  def forward(cfg, stats):
    v = dict(variables)
    if stats is not None:
      v[QUANT_STATS] = stats
    return lambda x: jnp.argmax(model.clone(quant=cfg).apply(v, x, rngs={QUANT_RNG: jax.random.key(0)}), -1)

  fwds = [forward(None, None)] + [forward(q.config, q.quant_stats) for q in qs]
  jitted = [jax.jit(f) for f in fwds]
  float_fwd = jax.jit(fwds[0])

  def loop(fns):
    return lambda: [[f(b) for b in batches(x)] for x in sets for f in fns]

  def floor():
    return [[float_fwd(b) for b in batches(x)] for x in sets for _ in fwds]

  print(f"jax={jax.__version__} backend={jax.default_backend()} devices={jax.device_count()}")
  print(f"LeNet-5, {args.images} images x {len(sets)} sets, float + {len(qs)} quantizers, batch {bs}")
  # cold: what a fresh session pays, compilation included (new jit objects)
  t = time.perf_counter()
  jax.block_until_ready(grid())
  cold_grid = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(loop([jax.jit(f) for f in fwds])())
  cold_loop = time.perf_counter() - t
  # warm: steady state, everything compiled
  times = best_times({"grid": grid, "loop": loop(jitted), "floor": floor}, repeats=3, inner=1)
  t = time.perf_counter()
  jax.block_until_ready(loop(fwds[:3])())  # eager: 3 of the K+1 configs, scaled
  eager = (time.perf_counter() - t) * len(fwds) / 3
  n = args.images * len(sets)
  print(f"cold (incl. compilation): grid {cold_grid:.2f} s, loop {cold_loop:.2f} s ({len(fwds)} compilations)")
  for k in ("grid", "loop", "floor"):
    print(f"warm {k:>5}: {times[k]:.2f} s  ({n * (len(qs) + 1) / times[k]:.0f} image-configs/s)")
  print(f"eager: {eager:.2f} s (3 configs timed, scaled to {len(fwds)})")
  print(f"compilations={engine.compilations}")
  print(f"grid_vs_loop={cold_loop / cold_grid:.3f}")
  print(f"grid_vs_loop_warm={times['loop'] / times['grid']:.3f}")
  print(f"grid_vs_eager={eager / times['grid']:.3f}")
  print(f"floor_ratio={times['grid'] / times['floor']:.3f}")


if __name__ == "__main__":
  main()
