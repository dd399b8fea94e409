"""Cost of qsim's fake quantization: w8a8 vs float, forward and train step.

Models: LeNet-5 on 28x28x1 and an LSTM(50) over 28 rows of 28 features,
batch 256, same shapes, one process. Prints per-model ratios, then
  overhead_fwd=<max ratio> overhead_train=<max ratio>
(the worse of the two models). Target on CPU: both <= 1.3.

  python benchmarks/quant_overhead.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from _timing import best_times  # noqa: E402
from qsim.models import RNNClassifier, lenet5  # noqa: E402
from qsim.quant import preset  # noqa: E402

BATCH = 256


def _fns(model, params, x, y):
  tx = optax.sgd(1e-3)
  opt = tx.init(params)
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))

  @jax.jit
  def train(p, o, x, y):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    g = jax.grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  return (lambda: fwd(params, x)), (lambda: train(params, opt, x, y))


def main():
  key = jax.random.key(0)
  x = jax.random.uniform(key, (BATCH, 28, 28, 1))
  y = jax.random.randint(key, (BATCH,), 0, 10)
  ratios = {"fwd": [], "train": []}
  print(f"backend={jax.default_backend()} batch={BATCH}")
  for name, make in [("lenet5", lenet5), ("lstm50", lambda **k: RNNClassifier(cell="lstm", hidden=50, **k))]:
    params = make().init(key, x)["params"]
    f_fwd, f_train = _fns(make(), params, x, y)
    q_fwd, q_train = _fns(make(quant=preset("w8a8")), params, x, y)
    t = best_times({"f_fwd": f_fwd, "q_fwd": q_fwd, "f_train": f_train, "q_train": q_train})
    for kind in ("fwd", "train"):
      r = t[f"q_{kind}"] / t[f"f_{kind}"]
      ratios[kind].append(r)
      print(
          f"{name:8s} {kind:5s} float {1e3 * t[f'f_{kind}']:8.2f} ms  w8a8 {1e3 * t[f'q_{kind}']:8.2f} ms  ratio {r:.3f}"
      )
  print(f"overhead_fwd={max(ratios['fwd']):.3f} overhead_train={max(ratios['train']):.3f}")


if __name__ == "__main__":
  main()
