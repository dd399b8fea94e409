"""Training throughput per model and method, batch 128, one process: what the study's stages cost.

Prints steps/s of each method (float standard, QAT w8a8, Mixup, PGD at each ``--pgd_iters``: half of each batch
adversarial), then on the last line
  qat_vs_float=<r> pgd_vs_float=<r>
where r = time per step / time per float step (1.0 = as fast as float; PGD at the first ``--pgd_iters``).

  python benchmarks/train_throughput.py                       # LeNet-5, PGD 10 iterations
  python benchmarks/train_throughput.py --model=gru_rows --pgd_iters=10,3,1
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from _timing import best_times  # noqa: E402
from qsim.models import get_model  # noqa: E402
from qsim.quant import preset  # noqa: E402
from qsim.train.loop import init_state, make_optimizer, make_train_step  # noqa: E402
from qsim.train.methods import MethodConfig  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="lenet5", help="a 28x28x1 model (lenet1, lenet5, gru_rows, lstm_rows, ...)")
  p.add_argument("--pgd_iters", default="10", help="comma-separated PGD iteration counts")
  args = p.parse_args()
  iters = [int(i) for i in args.pgd_iters.split(",")]
  if not iters or min(iters) < 1:
    raise SystemExit(f"--pgd_iters={args.pgd_iters!r} is not valid; give ints >= 1")
  key = jax.random.key(0)
  x = jax.random.uniform(key, (128, 28, 28, 1))
  y = jax.random.randint(key, (128,), 0, 10)
  tx = make_optimizer("adam", 1e-3, 1000)
  runs = [("float", None, MethodConfig(method="standard")), ("qat", preset("w8a8"), MethodConfig(method="qat"))]
  runs += [("mixup", None, MethodConfig(method="mixup", mixup_alpha=0.2))]
  runs += [(f"pgd{i}", None, MethodConfig(method="pgd", eps=0.3, step_size=0.1, iters=i)) for i in iters]
  fns = {}
  for name, quant, method in runs:
    model = get_model(args.model, num_classes=10, quant=quant)
    state = init_state(model, x[:1], tx, 0)
    step = make_train_step(model, method)
    fns[name] = lambda step=step, state=state: step(state, x, y, key)
  t = best_times(fns, repeats=5, inner=3)
  print(
      f"backend={jax.default_backend()} model={args.model} batch=128 "
      + " ".join(f"{k}={1 / v:.1f}steps/s" for k, v in t.items())
  )
  print(f"qat_vs_float={t['qat'] / t['float']:.3f} pgd_vs_float={t[f'pgd{iters[0]}'] / t['float']:.3f}")


if __name__ == "__main__":
  main()
