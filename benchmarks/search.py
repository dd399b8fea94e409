"""Disagreement search: white-box through the STE against the black-box
DFlare-style MCMC search and random search, same seeds, same budgets, same
query cap.

Trains (or reuses, cached under ``--cache``) LeNet-5 on Fashion-MNIST (1,500
steps, seed 0; or ``--checkpoint`` a train workdir), takes ``--seeds`` test
images as seeds, and for each L-inf budget in ``--budgets`` (in 1/255) runs
the three searchers on the ``--quantizer`` (static ranges calibrated on 100
training samples) with ``--cap`` queries per seed (a white-box step is a
forward and a backward pass: 2 queries; the white-box search runs 100 steps
from the seed, then again from random draws in the ball until the cap).
Prints a table per budget, then on its last line::

  budget=<the smallest budget where the MCMC search finds a disagreement for at least half the seeds>
  whitebox_success= blackbox_success= query_ratio=<MCMC queries per found / white-box's>
  time_ratio=<the same in wall time>

(the largest budget, marked ``budget=<b>!``, when the MCMC search never
reaches half; budgets above the first where it does are skipped). Each
searcher is compiled before it is timed.

  PYTHONPATH=. python benchmarks/search.py [--quantizer w4a4] [--seeds 64] [--cap 1000]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from _runs import trained  # noqa: E402
from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.runs import Run  # noqa: E402
from qsim.search import attacks  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", default="")
  p.add_argument("--cache", default="runs/bench_fidelity")
  p.add_argument("--quantizer", default="w4a4")
  p.add_argument("--seeds", type=int, default=64)
  p.add_argument("--cap", type=int, default=1000)
  p.add_argument("--budgets", default="1,2,4,8,16,32,64")
  args = p.parse_args()
  run = Run.open(args.checkpoint or trained(args.cache, "lenet5", 1500))
  q = build_quantizers(run.model, run.variables, [args.quantizer], run.calibration(100).x)[0]
  pair = attacks.Pair(run.model, run.variables, q.config, q.quant_stats)
  x0 = run.split("test", args.seeds).x
  runs = attacks.whitebox_runs(args.cap, "linf")
  searchers = {
      "whitebox": lambda b: attacks.whitebox(pair, x0, b, **runs),
      "mcmc": lambda b: attacks.mcmc_search(pair, x0, b, queries=args.cap),
      "random": lambda b: attacks.random_search(pair, x0, b, queries=args.cap),
  }
  for fn in searchers.values():  # compile (the budget is a constant of each program: compiled per budget below too)
    fn(attacks.Budget("linf", 1 / 255))
  results = {}
  print(f"{args.quantizer} on {run.path}, {len(x0)} seeds, cap {args.cap} queries")
  print("| budget | method | found / searched | success | queries per found | seconds per found | mean L-inf |")
  print("|---|---|---|---|---|---|---|")
  for b in sorted(float(v) for v in args.budgets.split(",")):
    budget = attacks.Budget("linf", b / 255)
    for name, fn in searchers.items():
      fn(budget)  # compiled for this budget
      s = fn(budget).summary(x0)
      results[(b, name)] = s
      print(
          f"| {b:g}/255 | {name} | {s['found']}/{s['seeds']} | {s['success_rate']:.2f} | {s['queries_per_found']:.1f}"
          f" | {s['seconds_per_found']:.3f} | {255 * s['linf']:.2f}/255 |",
          flush=True,
      )
    if results[(b, "mcmc")]["success_rate"] >= 0.5:  # the rule's budget is found: larger ones cannot change it
      print(f"(budgets above {b:g}/255 skipped: the MCMC search reached half the seeds)")
      break
  budgets = sorted({b for b, _ in results})
  reached = [b for b in budgets if results[(b, "mcmc")]["success_rate"] >= 0.5]
  b = reached[0] if reached else budgets[-1]
  w, m = results[(b, "whitebox")], results[(b, "mcmc")]
  print(
      f"budget={b:g}/255{'' if reached else '!'} whitebox_success={w['success_rate']:.3f}"
      f" blackbox_success={m['success_rate']:.3f} query_ratio={m['queries_per_found'] / w['queries_per_found']:.1f}"
      f" time_ratio={m['seconds_per_found'] / w['seconds_per_found']:.1f}"
  )


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
