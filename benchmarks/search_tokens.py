"""Token-substitution search on a trained text model: the gradient-ranked
white-box search against random substitutions, same seeds, same budgets
(substituted words), same query cap.

No review dataset exists on these machines (no IMDb offline), so the model
is trained on a synthetic keyword task: reviews of ``--length`` word ids
drawn from a Zipf-like vocabulary of ``--vocab`` ids, each with 3 to 9
sentiment words (50 positive, 50 negative ids); the label is the class with
more of them (ties: a fresh review). The model is the study's IMDb LSTM
shape (Embedding(vocab, 128) -> LSTM(50) -> Dense(2)), trained by qsim's
training loop (``--steps`` steps of 64, Adam, cosine; cached under
``--cache``). The quantized models: ``--quantizers`` (static ranges
calibrated on 100 training reviews). Prints a table per budget, then on its
last line, at the smallest budget where random substitution finds a
disagreement for half the seeds (or the largest, marked ``!``)::

  k=<words> whitebox_success= random_success= query_ratio=<random queries per found / white-box's>

  PYTHONPATH=. python benchmarks/search_tokens.py [--quantizers w4a4,tflite_int8] [--seeds 100] [--cap 200]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from qsim.evaluate.engine import build_quantizers  # noqa: E402
from qsim.models import get_model  # noqa: E402
from qsim.search import attacks  # noqa: E402
from qsim.train import loop  # noqa: E402


def reviews(n: int, vocab: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``n`` synthetic reviews ``[n, length]`` (ids 2..vocab-1) and their labels (0 or 1).

  Args:
    n: reviews.
    vocab: vocabulary size (ids 2..101 are the sentiment words: 2..51 positive).
    length: words per review.
    seed: seeds the draws.

  Returns:
    ``(ids, labels)``.
  """
  rng = np.random.default_rng(seed)
  filler = np.arange(102, vocab)
  p = 1.0 / np.arange(1, len(filler) + 1)  # Zipf-like word frequencies
  x = rng.choice(filler, size=(2 * n, length), p=p / p.sum()).astype(np.int32)
  pos = rng.integers(0, 5, 2 * n)
  neg = rng.integers(0, 5, 2 * n)
  for i in range(2 * n):
    at = rng.choice(length, pos[i] + neg[i], replace=False)
    x[i, at[: pos[i]]] = rng.integers(2, 52, pos[i])
    x[i, at[pos[i] :]] = rng.integers(52, 102, neg[i])
  keep = np.flatnonzero(pos != neg)[:n]
  return x[keep], (pos[keep] > neg[keep]).astype(np.int32)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cache", default="runs/bench_tokens")
  p.add_argument("--quantizers", default="w4a4,tflite_int8")
  p.add_argument("--vocab", type=int, default=2000)
  p.add_argument("--length", type=int, default=100)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--seeds", type=int, default=100)
  p.add_argument("--cap", type=int, default=200)
  p.add_argument("--budgets", default="1,2,4,8")
  args = p.parse_args()
  model = get_model("lstm", num_classes=2, vocab_size=args.vocab)
  x, y = reviews(6000, args.vocab, args.length, seed=0)
  xt, yt = reviews(args.seeds, args.vocab, args.length, seed=1)
  state = loop.train(
      model,
      x,
      y,
      workdir=os.path.join(args.cache, f"lstm_{args.vocab}_{args.steps}"),
      steps=args.steps,
      batch_size=64,
      log_every=200,
      checkpoint_every=args.steps,
  )
  variables = loop.variables_of(state)
  print(f"test accuracy {loop.accuracy(model, variables, xt, yt):.3f} on {len(xt)} synthetic reviews", flush=True)
  names = args.quantizers.split(",")
  runs = attacks.whitebox_runs(args.cap, "tokens")
  print(f"cap {args.cap} queries per seed; white-box: {runs}, {2 + attacks.TOKEN_CANDIDATES} queries a step")
  print("| quantizer | words | method | found / searched | success | queries per found | seconds per found |")
  print("|---|---|---|---|---|---|---|")
  last = ""
  for q in build_quantizers(model, variables, names, x[:100]):
    pair = attacks.Pair(model, variables, q.config, q.quant_stats)
    results = {}
    for k in sorted(int(v) for v in args.budgets.split(",")):
      budget = attacks.Budget("tokens", k)
      for name, fn in (
          ("whitebox", lambda: attacks.whitebox(pair, xt, budget, **runs)),
          ("random", lambda: attacks.random_search(pair, xt, budget, queries=args.cap)),
      ):
        fn()  # compiled
        s = results[(k, name)] = fn().summary(xt)
        print(
            f"| {q.name} | {k} | {name} | {s['found']}/{s['seeds']} | {s['success_rate']:.2f}"
            f" | {s['queries_per_found']:.1f} | {s['seconds_per_found']:.3f} |",
            flush=True,
        )
    budgets = sorted({k for k, _ in results})
    reached = [k for k in budgets if results[(k, "random")]["success_rate"] >= 0.5]
    k = reached[0] if reached else budgets[-1]
    w, r = results[(k, "whitebox")], results[(k, "random")]
    last = (
        f"{q.name}: k={k}{'' if reached else '!'} whitebox_success={w['success_rate']:.3f}"
        f" random_success={r['success_rate']:.3f} query_ratio={r['queries_per_found'] / w['queries_per_found']:.1f}"
    )
    print(last, flush=True)


if __name__ == "__main__":
  main()
