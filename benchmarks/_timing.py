"""Shared timing helper: interleaved repeats, best-of, so ratios hold on a
noisy shared machine."""

import time
from typing import Callable

import jax


def best_times(fns: dict[str, Callable[[], object]], repeats: int = 7, inner: int = 3) -> dict[str, float]:
  """Seconds per call of each fn (already compiled by a warm-up call),
  measured interleaved, best of ``repeats`` means over ``inner`` calls."""
  for f in fns.values():
    jax.block_until_ready(f())
  best = {k: float("inf") for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t = time.perf_counter()
      for _ in range(inner):
        jax.block_until_ready(f())
      best[k] = min(best[k], (time.perf_counter() - t) / inner)
  return best
