"""Training throughput of LeNet-5: float vs QAT w8a8 vs PGD (10 iterations,
half of each batch adversarial), batch 128, one process.

Prints steps/s of each, then
  qat_vs_float=<r> pgd_vs_float=<r>
where r = time per step / time per float step (1.0 = as fast as float).

  python benchmarks/train_throughput.py
"""

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
  key = jax.random.key(0)
  x = jax.random.uniform(key, (128, 28, 28, 1))
  y = jax.random.randint(key, (128,), 0, 10)
  tx = make_optimizer("adam", 1e-3, 1000)
  fns = {}
  for name, quant, method in [("float", None, "standard"), ("qat", preset("w8a8"), "qat"), ("pgd", None, "pgd")]:
    model = get_model("lenet5", num_classes=10, quant=quant)
    state = init_state(model, x[:1], tx, 0)
    step = make_train_step(model, MethodConfig(method=method, eps=0.3, step_size=0.1, iters=10))
    fns[name] = lambda step=step, state=state: step(state, x, y, key)
  t = best_times(fns, repeats=5, inner=3)
  print(f"backend={jax.default_backend()} batch=128 " + " ".join(f"{k}={1 / v:.1f}steps/s" for k, v in t.items()))
  print(f"qat_vs_float={t['qat'] / t['float']:.3f} pgd_vs_float={t['pgd'] / t['float']:.3f}")


if __name__ == "__main__":
  main()
