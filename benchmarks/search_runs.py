"""The white-box search's run schedule: for one checkpoint, quantizer and
query cap, how many seeds each way of spending the cap finds, and with how
many queries per find. Schedules: runs of 100, 25 or 10 steps (a run's step
size is 2.5 eps / its length), restarted from random draws while the cap
allows, and the launcher's (``attacks.whitebox_runs``: a first 10-step run,
then runs of up to 100 steps). Prints a table, then on its last line the
launcher's schedule against the best fixed one::

  whitebox_runs_found=<seeds, summed over budgets> best_fixed_found=<the best fixed schedule's> best_fixed=<its steps>
  queries_ratio=<the launcher's queries per find over the best fixed one's, summed over budgets>

  PYTHONPATH=. python benchmarks/search_runs.py --checkpoint runs/lenet5 --quantizer tflite_int8 --budgets 8,32 [--seeds 64] [--cap 1000]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.runs import Run  # noqa: E402
from qsim.search import attacks  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--quantizer", default="w4a4")
  p.add_argument("--seeds", type=int, default=64)
  p.add_argument("--cap", type=int, default=1000)
  p.add_argument("--budgets", default="8,32")
  args = p.parse_args()
  run = Run.open(args.checkpoint)
  q = build_quantizers(run.model, run.variables, [args.quantizer], run.calibration(100).x)[0]
  pair = attacks.Pair(run.model, run.variables, q.config, q.quant_stats)
  x0 = run.split("test", args.seeds).x
  schedules = {f"{n} steps": {"first": 0, "steps": n, "restarts": max(1, args.cap // (2 * n))} for n in (100, 25, 10)}
  schedules["whitebox_runs"] = attacks.whitebox_runs(args.cap, "linf")
  print(f"{args.quantizer} on {run.path}, {len(x0)} seeds, cap {args.cap} queries")
  print("| budget | schedule | found / searched | queries per found |")
  print("|---|---|---|---|")
  found = {name: 0 for name in schedules}
  queries = {name: 0.0 for name in schedules}
  for b in sorted(float(v) for v in args.budgets.split(",")):
    for name, runs in schedules.items():
      s = attacks.whitebox(pair, x0, attacks.Budget("linf", b / 255), **runs).summary(x0)
      found[name] += s["found"]
      queries[name] += s["queries_per_found"]
      print(f"| {b:g}/255 | {name} {runs} | {s['found']}/{s['seeds']} | {s['queries_per_found']:.1f} |", flush=True)
  best = max((n for n in schedules if n != "whitebox_runs"), key=lambda n: (found[n], -queries[n]))
  print(
      f"whitebox_runs_found={found['whitebox_runs']} best_fixed_found={found[best]} best_fixed={best.split()[0]}"
      f" queries_ratio={queries['whitebox_runs'] / queries[best]:.2f}"
  )


if __name__ == "__main__":
  main()
