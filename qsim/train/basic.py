"""A seeded, jit-compiled classifier training loop (optax, cross-entropy).

With a quantized model (``model.quant`` set) this is quantization-aware
training: the layers fake-quantize with straight-through gradients.
"""

from __future__ import annotations

import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    log_every: int = 0,
) -> Any:
  """Trains ``model`` with Adam on shuffled mini-batches; returns its params.

  Deterministic for a given seed (initialisation and batch order both derive
  from it). Raises ``FloatingPointError`` naming the step if the loss is NaN.
  """
  if steps < 1 or batch_size < 1:
    raise ValueError(f"steps={steps} and batch_size={batch_size} must be >= 1")
  key = jax.random.key(seed)
  params = model.init(key, images[:1])["params"]
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  order = rng.permutation(len(images))
  pos = 0
  for i in range(steps):
    if pos + batch_size > len(order):
      order, pos = rng.permutation(len(images)), 0
    idx = order[pos : pos + batch_size]
    pos += batch_size
    params, opt_state, loss = step(params, opt_state, images[idx], labels[idx])
    if log_every and ((i + 1) % log_every == 0 or i + 1 == steps):
      loss = float(loss)
      if not np.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {i + 1}")
      print(f"  step {i + 1}/{steps} loss {loss:.4f}", file=sys.stderr, flush=True)
  return params


def accuracy(model: nn.Module, params: Any, images, labels, batch_size=1000) -> float:
  """Top-1 accuracy (exact, all samples)."""
  fwd = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
  correct = 0
  for s in range(0, len(images), batch_size):
    correct += int(np.sum(np.asarray(fwd(params, images[s : s + batch_size])) == labels[s : s + batch_size]))
  return correct / len(images)
