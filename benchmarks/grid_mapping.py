"""Mapping a bit-width grid over configs: lax.map vs vmap vs separate runs.

LeNet-5, batch 500, 8 configs (w2, w3, w4, w5, w6, w8, w12, w16 weights, each
with 8-bit activations). Compares, in one process:
  separate  8 float forwards, one after another (the cost floor of a grid)
  map       ConfigGrid(mapping='map'): one program, lax.map over configs
  vmap      ConfigGrid(mapping='vmap'): one program, vmap over configs
  loop      8 quantized forwards, each its own jit (one compile per config)
Prints  map_vs_separate=<r> vmap_vs_separate=<r> loop_vs_separate=<r>
and which mapping 'auto' picks on this backend.

  python benchmarks/grid_mapping.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from _timing import best_times  # noqa: E402
from qsim.models import lenet5  # noqa: E402
from qsim.quant import ConfigGrid, preset  # noqa: E402
from qsim.quant.grid import resolve_mapping  # noqa: E402

CONFIGS = [preset(f"w{w}a8") for w in (2, 3, 4, 5, 6, 8, 12, 16)]


def main():
  key = jax.random.key(0)
  x = jax.random.uniform(key, (500, 28, 28, 1))
  model = lenet5()
  params = model.init(key, x)["params"]
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
  fn = lambda c, p, x: model.clone(quant=c).apply({"params": p}, x)
  grid_map, grid_vmap = ConfigGrid(fn, "map"), ConfigGrid(fn, "vmap")
  singles = [jax.jit(lambda p, x, c=c: model.clone(quant=c).apply({"params": p}, x)) for c in CONFIGS]

  def separate():
    return [fwd(params, x) for _ in CONFIGS]

  def loop():
    return [f(params, x) for f in singles]

  t = best_times(
      {
          "separate": separate,
          "map": lambda: grid_map(CONFIGS, params, x),
          "vmap": lambda: grid_vmap(CONFIGS, params, x),
          "loop": loop,
      },
      repeats=5,
      inner=2,
  )
  print(f"backend={jax.default_backend()} configs={len(CONFIGS)} batch={x.shape[0]} auto={resolve_mapping('auto')}")
  for k, v in t.items():
    print(f"{k:9s} {1e3 * v:9.1f} ms")
  print(" ".join(f"{k}_vs_separate={t[k] / t['separate']:.3f}" for k in ("map", "vmap", "loop")))


if __name__ == "__main__":
  main()
