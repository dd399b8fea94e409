"""Static activation ranges: calibrate them, and check they were calibrated."""

from __future__ import annotations

from typing import Any, Iterable

import flax.linen as nn
import jax
import numpy as np

from qsim.nn.layers import QUANT_STATS


def calibrate(
    model: nn.Module,
    variables: dict[str, Any],
    batches: Iterable[Any],
    **apply_kwargs,
) -> dict[str, Any]:
  """Runs ``model`` over ``batches`` and records static activation ranges.

  Layers run in float while calibrating (as TFLite calibrates the float
  model) and keep a running min/max ('absmax') or a running mean
  ('percentile', 'mse') of each batch's range.

  Args:
    model: a model whose config has static-range activation specs.
    variables: its variables (the 'quant_stats' collection from ``init``).
    batches: model inputs (each passed as ``model.apply(v, batch)``).
    **apply_kwargs: passed to ``apply`` (e.g. ``rngs=``).

  Returns:
    ``variables`` with the calibrated 'quant_stats' collection (unchanged
    when there is none).

  Raises:
    ValueError: ``batches`` is empty (and there are ranges to calibrate).
  """
  if QUANT_STATS not in variables:
    return variables

  @jax.jit
  def step(v, batch):
    _, upd = model.apply(v, batch, mutable=[QUANT_STATS], **apply_kwargs)
    return {**v, **upd}

  n = 0
  for batch in batches:
    variables = step(variables, batch)
    n += 1
  if n == 0:
    raise ValueError("calibrate: got no batches to calibrate on")
  return variables


def uncalibrated(variables: dict[str, Any]) -> list[str]:
  """Names of static ranges that no calibration batch has reached.

  Args:
    variables: a model's variables (those without 'quant_stats' have none).

  Returns:
    The ranges' paths in 'quant_stats', '/'-joined, without the ``_count``
    suffix (e.g. ``'conv1/QuantConv_0/act'``); empty when all are calibrated.
  """
  stats = variables.get(QUANT_STATS, {})
  missing = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(stats):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name.endswith("_count") and int(np.min(np.asarray(leaf))) == 0:
      missing.append(name[: -len("_count")])
  return missing


def require_calibrated(variables: dict[str, Any]) -> None:
  """Raises ``ValueError`` naming every static range not yet calibrated.

  Args:
    variables: a model's variables.

  Raises:
    ValueError: some static range was never calibrated (see
      :func:`uncalibrated`).
  """
  missing = uncalibrated(variables)
  if missing:
    raise ValueError(
        f"static activation ranges are not calibrated for {missing}; run"
        " qsim.nn.calibrate(model, variables, batches) first"
    )
