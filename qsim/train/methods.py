"""The four training methods as loss functions on one batch.

* standard: cross-entropy on the clean batch;
* qat: the same loss on a model built with a quant config (fake-quant
  forward, straight-through backward); the loop builds that model;
* pgd / fgsm: a fraction of the batch replaced by adversarial examples
  (PGD with random start inside the eps-ball, iterates clipped to the valid
  input box *after preprocessing*; FGSM = one step of size eps, no random
  start); text models are attacked in embedding space;
* mixup: convex combinations of inputs (images) or embeddings (text, never
  token ids) with Beta(alpha, alpha) weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

METHODS = ("standard", "qat", "pgd", "fgsm", "mixup")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """Hyper-parameters of the training method (validated)."""

  method: str = "standard"
  eps: float = 0.3
  step_size: float = 0.1
  iters: int = 10
  adv_fraction: float = 0.5
  random_start: bool = True
  mixup_alpha: float = 0.2
  box: tuple[float, float] | None = (0.0, 1.0)

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r} is not valid; choose one of {list(METHODS)}")
    if self.method in ("pgd", "fgsm"):
      if not self.eps > 0:
        raise ValueError(f"eps={self.eps} is not valid; give eps > 0")
      if not 0.0 < self.adv_fraction <= 1.0:
        raise ValueError(f"adv_fraction={self.adv_fraction} is not valid; valid range is (0, 1]")
      if self.method == "pgd" and (self.iters < 1 or not self.step_size > 0):
        raise ValueError(
            f"iters={self.iters}, step_size={self.step_size} are not valid; give iters >= 1, step_size > 0"
        )
    if self.method == "mixup" and not self.mixup_alpha > 0:
      raise ValueError(f"mixup_alpha={self.mixup_alpha} is not valid; give alpha > 0")

  @property
  def attack(self) -> tuple[float, int, bool]:
    """(step size, iterations, random start) of the attack."""
    if self.method == "fgsm":
      return self.eps, 1, False
    return self.step_size, self.iters, self.random_start


def cross_entropy(logits, labels):
  """The mean softmax cross-entropy of ``logits`` against integer ``labels``.

  Args:
    logits: the logits, shape (batch, classes).
    labels: the integer class labels, shape (batch,).

  Returns:
    The mean loss over the batch (a scalar).
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# A forward function: (inputs, dropout key) -> (logits, new batch_stats).
Forward = Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


def pgd(forward: Forward, x, y, key, cfg: MethodConfig, box):
  """Adversarial version of ``x``: ``x + delta`` with the perturbation treated as a constant.

  The gradient still reaches whatever produced ``x`` (for text: the embedding
  table). ``cfg.attack`` sets the step size, iterations and random start
  (FGSM: one step of size eps, no random start).

  Args:
    forward: ``(inputs, dropout key) -> (logits, batch_stats)``.
    x: the clean inputs, batch first.
    y: their integer labels.
    key: the random key of the random start and the forward's dropout.
    cfg: the method config (``eps``: the L-inf radius of the perturbation).
    box: ``(low, high)`` the iterates are clipped to, or None for no clipping.

  Returns:
    The adversarial inputs, shaped as ``x``.
  """
  step, iters, random_start = cfg.attack
  k_init, k_drop = jax.random.split(key)
  x_in, x = x, jax.lax.stop_gradient(x)
  delta = jax.random.uniform(k_init, x.shape, x.dtype, -cfg.eps, cfg.eps) if random_start else jnp.zeros_like(x)

  def project(d):
    d = jnp.clip(d, -cfg.eps, cfg.eps)
    if box is not None:
      d = jnp.clip(x + d, box[0], box[1]) - x
    return d

  def body(_, d):
    g = jax.grad(lambda d: cross_entropy(forward(x + d, k_drop)[0], y))(d)
    return project(d + step * jnp.sign(g))

  delta = jax.lax.fori_loop(0, iters, body, project(delta))
  return x_in + jax.lax.stop_gradient(delta)


def batch_loss(forward: Forward, x, y, key, cfg: MethodConfig, box):
  """The method's loss on one batch; returns (loss, (logits, batch_stats)).

  Args:
    forward: ``(inputs, dropout key) -> (logits, batch_stats)``.
    x: the inputs, batch first (embeddings where a text model is attacked or mixed).
    y: their integer labels.
    key: the step's random key (attack, Mixup weights and dropout).
    cfg: the training method and its hyper-parameters.
    box: the valid input range ``(low, high)`` for attacks, or None.

  Returns:
    ``(loss, (logits, batch_stats))``: the scalar loss, the logits of the
    (attacked or mixed) batch and the new BatchNorm statistics.
  """
  k_method, k_drop = jax.random.split(key)
  if cfg.method in ("pgd", "fgsm"):
    n_adv = max(1, int(round(cfg.adv_fraction * x.shape[0])))
    adv = pgd(forward, x[:n_adv], y[:n_adv], k_method, cfg, box)
    x = jnp.concatenate([adv, x[n_adv:]], axis=0)
  if cfg.method == "mixup":
    k_lam, k_perm = jax.random.split(k_method)
    lam = jax.random.beta(k_lam, cfg.mixup_alpha, cfg.mixup_alpha)
    perm = jax.random.permutation(k_perm, x.shape[0])
    logits, stats = forward(lam * x + (1.0 - lam) * x[perm], k_drop)
    loss = lam * cross_entropy(logits, y) + (1.0 - lam) * cross_entropy(logits, y[perm])
    return loss, (logits, stats)
  logits, stats = forward(x, k_drop)
  return cross_entropy(logits, y), (logits, stats)
