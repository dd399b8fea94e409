"""The quantization debugger's mixed-precision search against uniform bit-widths,
and the grid against a per-config loop.

Trains (or reuses, cached under ``--cache``) a Fashion-MNIST checkpoint
(``--model``, default LeNet-5, 1,500 steps, seed 0; or ``--checkpoint`` a
train workdir), runs :func:`qsim.analysis.job.run_analysis` on it (base w4a8,
menu int 2/3/4/5/6/8, budget 4 average weight bits, ``--candidates`` per
round, three rounds, measured on ``--selection`` held-out validation samples; verified on ``--images`` test images
and 5 MNIST-C sets at severity 1), then times the same ``--loop`` candidate
configs' logits on the selection samples as one grid (``ConfigGrid``, one
program) and as a loop of one jitted program per config, both compiled
first (interleaved best-of). Prints the report's verification table, then on its last line::

  mixed_vs_uniform=<mixed / uniform_w4 clean test disagreements> configs=<candidates in one program>
  compilations=<programs they took> grid_vs_loop=<loop time / grid time, warm>

Resumable (the analysis workdir under the cache). About 5 minutes for
LeNet-5 on the 2-core CPU once trained.

  PYTHONPATH=. python benchmarks/sensitivity.py [--model lenet5] [--checkpoint DIR] [--candidates 256]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from _runs import trained  # noqa: E402
from _timing import best_times  # noqa: E402
from qsim.analysis import job, layers, mixed  # noqa: E402
from qsim.quant import ConfigGrid, layer_preset  # noqa: E402
from qsim.results import read_rows  # noqa: E402
from qsim.runs import Run  # noqa: E402

SHIFTS = ("c/fog/1", "c/shot_noise/1", "c/rotate/1", "c/brightness/1", "c/canny_edges/1")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="lenet5")
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--checkpoint", default="", help="a train workdir (instead of training --model)")
  p.add_argument("--cache", default="runs/bench_sensitivity")
  p.add_argument("--images", type=int, default=1000)
  p.add_argument("--candidates", type=int, default=256, help="configs measured per search round")
  p.add_argument("--selection", type=int, default=2000, help="held-out validation samples the search measures on")
  p.add_argument("--loop", type=int, default=16, help="configs timed as a grid and as a loop")
  args = p.parse_args()
  ckpt = args.checkpoint or trained(args.cache, args.model, args.steps)
  workdir = os.path.join(
      args.cache, f"analyze_{os.path.basename(os.path.normpath(ckpt))}_{args.images}_{args.candidates}_{args.selection}"
  )
  c = job.AnalysisConfig(
      checkpoint=ckpt,
      shifts=SHIFTS,
      limit=args.images,
      candidates=args.candidates,
      selection_samples=args.selection,
  )
  report = job.run_analysis(c, workdir)
  text = open(report).read()
  print(text[text.index("Verified on the test split") :].split("![pareto]")[0])
  rows = {
      r["quantizer"]: r for r in read_rows(os.path.join(workdir, "frontier", "results.csv")) if r["family"] == "clean"
  }
  search = json.load(open(os.path.join(workdir, "search.json")))

  run = Run.open(ckpt)
  calib = run.calibration(c.calib_samples)
  sel = run.split("val", c.selection_samples)
  found = layers.find_layers(run.model, calib.x, run.variables)
  base = layer_preset(c.base)
  configs = [
      mixed.config(found, base, cand["entries"], name=f"c{k}")
      for k, cand in enumerate(search["candidates"][: args.loop])
  ]
  # the same configs' logits, batch by batch: one grid program vs one jitted program per config
  variables = run.variables
  batches = [sel.x[i : i + 500] for i in range(0, len(sel.x), 500)]
  grid = ConfigGrid(lambda cfg, v, x: run.model.clone(quant=cfg).apply(v, x))
  loop = [jax.jit(lambda v, x, cfg=cfg: run.model.clone(quant=cfg).apply(v, x)) for cfg in configs]
  fns = {
      "grid": lambda: [grid(configs, variables, b) for b in batches],
      "loop": lambda: [f(variables, b) for b in batches for f in loop],
  }
  cold = {}
  for k, fn in fns.items():  # the first call compiles: one program for the grid, one per config for the loop
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    cold[k] = time.perf_counter() - t0
  t = best_times(
      fns,
      repeats=3,
      inner=1,
  )
  print(
      f"grid of {len(configs)} configs on {len(sel.x)} samples: {t['grid']:.2f} s warm, {cold['grid']:.2f} s cold;"
      f" per-config loop: {t['loop']:.2f} s warm, {cold['loop']:.2f} s cold"
  )
  print(
      f"mixed_vs_uniform={rows['mixed']['disagreements'] / max(rows['uniform_w4']['disagreements'], 1):.3f}"
      f" configs={len(search['candidates'])} compilations={search['candidate_compilations']}"
      f" grid_vs_loop={t['loop'] / t['grid']:.2f} grid_vs_loop_cold={cold['loop'] / cold['grid']:.2f}"
  )


if __name__ == "__main__":
  main()
