"""Predictions of one model under many quant configs, in one compiled program."""

from __future__ import annotations

import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qsim.nn import QUANT_RNG, QUANT_STATS, require_calibrated
from qsim.quant.grid import ConfigGrid
from qsim.quant.spec import QuantConfig


def _split(item) -> tuple[QuantConfig | None, Any]:
  if isinstance(item, tuple):
    return item
  return item, None


def predict_grid(
    model: nn.Module,
    variables: Any,
    items: Sequence[QuantConfig | tuple[QuantConfig, Any]],
    images: np.ndarray,
    *,
    batch_size: int = 500,
    mapping: str = "auto",
    progress: bool = False,
) -> np.ndarray:
  """Argmax predictions of ``model`` under every config, on every image.

  Exact: the last batch is padded to ``batch_size`` (one compiled shape) and
  the padding is dropped on the host.

  Args:
    model: a model with a ``quant`` attribute.
    variables: its float variables ('params', and 'batch_stats' if any).
    items: configs, or ``(config, quant_stats)`` pairs for configs with
      static activation ranges (see :func:`qsim.nn.calibrate`).
    images: inputs, ``(N, ...)``.
    batch_size: images per step.
    mapping: how configs are mapped ('auto', 'map', 'vmap').
    progress: print a progress line per batch to stderr.

  Returns:
    int32 array ``(len(items), N)``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} is not valid; give an int >= 1")
  for item in items:
    _, stats = _split(item)
    if stats is not None:
      require_calibrated({QUANT_STATS: stats})

  def fn(item, base, x):
    cfg, stats = _split(item)
    variables = dict(base)
    if stats is not None:
      variables[QUANT_STATS] = stats
    # a fixed 'quant' stream: stochastic rounding is deterministic here
    logits = model.clone(quant=cfg).apply(variables, x, rngs={QUANT_RNG: jax.random.key(0)})
    return jnp.argmax(logits, axis=-1)

  grid = ConfigGrid(fn, mapping=mapping)
  n = len(images)
  out = []
  for start in range(0, n, batch_size):
    batch = images[start : start + batch_size]
    real = len(batch)
    if real < batch_size:
      pad = np.zeros((batch_size - real,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    out.append(np.asarray(grid(list(items), variables, batch))[:, :real])
    if progress:
      print(f"  evaluated {min(start + batch_size, n)}/{n} images", file=sys.stderr, flush=True)
  return np.concatenate(out, axis=1).astype(np.int32)
