"""Mixed precision under a budget: per-layer weight formats from a menu.

A *menu* lists the weight formats a layer may take: integer bit-widths
(2..16, symmetric per-channel as the base spec has them), 'fp16', 'bf16' or
'float' (float32 weights). Activations keep the base spec's. The budget is
the *average weight bits*, weighted by each layer's weight count (the model's
weight bytes are ``budget x weights / 8``); a float format counts its width
(fp16 16, float 32).

The search (:func:`candidates`) reads one cost per (layer, menu entry), the
disagreements on a selection set with that layer alone at that entry, and
picks assignments with an integer linear program (``scipy.optimize.milp``):
minimise the summed per-layer costs subject to the budget, one entry per
layer. The layers' costs are not additive (errors compound), so the program
proposes and the grid decides: many proposals (exact optima over a grid of
budgets, and optima of randomly perturbed costs near the target budget, which
are the next-best assignments under a wrong additivity assumption) are all
evaluated as real configs in one compiled program, and the measured
disagreements choose. Then rounds of local search (:func:`neighbours`: one
layer a menu step up or down, or one up and another down, around the best
measured configs within the budget) are measured the same way, in the same
compiled program (bits are data). An ILP rather than a greedy for the
proposals: it is exact for the additive model at any budget, and with tens
of layers and a handful of entries it solves in milliseconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from scipy import optimize

from qsim.analysis.layers import Layer, per_layer
from qsim.quant import QuantConfig
from qsim.quant.spec import BF16, FP16, INT, LayerSpec, MAX_BITS, MIN_BITS, TensorSpec

FLOAT_ENTRIES = {"fp16": 16, "bf16": 16, "float": 32}


def entry_bits(entry: Any) -> int:
  """The weight bits of a menu entry (a float format: its width).

  Args:
    entry: an int in [2, 16], 'fp16', 'bf16' or 'float'.

  Returns:
    The bits per weight.

  Raises:
    ValueError: ``entry`` is not a valid menu entry.
  """
  if isinstance(entry, str) and entry in FLOAT_ENTRIES:
    return FLOAT_ENTRIES[entry]
  if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool) and MIN_BITS <= entry <= MAX_BITS:
    return int(entry)
  raise ValueError(
      f"menu entry {entry!r} is not valid; give integer bits in [{MIN_BITS}, {MAX_BITS}] or one of"
      f" {sorted(FLOAT_ENTRIES)}"
  )


def check_menu(menu: Sequence[Any], budget: float | None = None) -> tuple:
  """The menu as a tuple, checked (and the budget against it).

  Args:
    menu: the entries (see :func:`entry_bits`), at least one, no repeats.
    budget: the average weight bits asked for (None: not checked).

  Returns:
    The menu, sorted by bits.

  Raises:
    ValueError: an entry that is not valid, a repeat, an empty menu, or a
      budget below the smallest entry's bits.
  """
  menu = tuple(menu)
  if not menu:
    raise ValueError("menu=() is not valid; give weight formats, e.g. 2+3+4+6+8")
  bits = [entry_bits(e) for e in menu]
  if len(set(menu)) != len(menu):
    raise ValueError(f"menu={list(menu)} lists an entry twice")
  if budget is not None and not budget >= min(bits):
    raise ValueError(
        f"budget={budget!r} average weight bits is not valid: below the smallest menu entry"
        f" ({min(bits)} bits); give a budget in [{min(bits)}, {max(bits)}]"
    )
  return tuple(e for _, e in sorted(zip(bits, menu), key=lambda t: t[0]))


def entry_spec(base: LayerSpec, entry: Any) -> LayerSpec:
  """``base`` with its weights at a menu entry (activations unchanged).

  Args:
    base: the base spec; integer weights (the menu changes their bits).
    entry: a menu entry.

  Returns:
    The layer's spec.

  Raises:
    ValueError: ``base`` has no integer weights, or ``entry`` is not valid.
  """
  if base is None or base.weight is None or base.weight.format != INT:
    raise ValueError(f"mixed precision needs a base spec with integer weights (e.g. preset w4a8); got {base}")
  bits = entry_bits(entry)
  if entry == "float":
    weight = None
  elif entry in ("fp16", "bf16"):
    weight = TensorSpec(format=FP16 if entry == "fp16" else BF16)
  else:
    weight = base.weight.replace(bits=bits)
  return dataclasses.replace(base, weight=weight)


def average_bits(layers: Sequence[Layer], entries: Sequence[Any]) -> float:
  """The weight-count-weighted average bits of an assignment.

  Args:
    layers: the analysed layers.
    entries: one menu entry per layer.

  Returns:
    ``sum(weights_i * bits_i) / sum(weights_i)``.
  """
  w = np.asarray([l.weights for l in layers], np.float64)
  b = np.asarray([entry_bits(e) for e in entries], np.float64)
  return float(np.sum(w * b) / np.sum(w))


def config(layers: Sequence[Layer], base: LayerSpec, entries: Sequence[Any], name: str = "") -> QuantConfig:
  """The mixed config of an assignment: one rule per layer.

  Args:
    layers: the analysed layers.
    base: the base spec (activations, granularity, calibration).
    entries: one menu entry per layer.
    name: its label (default: ``mixed@<average bits>``).

  Returns:
    The QuantConfig (other names float: the base's weight-less points).
  """
  specs = [entry_spec(base, e) for e in entries]
  return per_layer(layers, specs, default=None, name=name or f"mixed@{average_bits(layers, entries):.2f}b")


def solve(cost: np.ndarray, weights: Sequence[int], bits: Sequence[int], budget: float) -> np.ndarray | None:
  """The assignment minimising the summed cost within the budget (exact ILP).

  Args:
    cost: ``[layers, entries]`` cost of each layer at each entry.
    weights: each layer's weight count.
    bits: each entry's bits.
    budget: the largest average weight bits allowed.

  Returns:
    The chosen entry index per layer, or None when no assignment fits.
  """
  n_l, n_e = cost.shape
  w = np.asarray(weights, np.float64)
  b = np.asarray(bits, np.float64)
  c = cost.ravel()
  one = np.kron(np.eye(n_l), np.ones((1, n_e)))  # one entry per layer
  size = (w[:, None] * b[None, :]).ravel() / w.sum()
  res = optimize.milp(
      c,
      constraints=[optimize.LinearConstraint(one, 1, 1), optimize.LinearConstraint(size[None], -np.inf, budget + 1e-9)],
      integrality=np.ones_like(c),
      bounds=optimize.Bounds(0, 1),
  )
  if res.x is None:
    return None
  return np.argmax(res.x.reshape(n_l, n_e), axis=1)


def candidates(
    cost: np.ndarray,
    layers: Sequence[Layer],
    menu: Sequence[Any],
    budget: float,
    *,
    count: int = 256,
    seed: int = 0,
    noise: float = 0.5,
    max_tries: int = 20_000,
) -> list[tuple]:
  """Distinct assignments for the grid to measure: exact ILP optima over a
  grid of budgets (the predicted frontier), then optima of perturbed costs
  (each cost times ``exp(noise x N(0, 1))``), half at the target budget and
  half at budgets drawn below it.

  Args:
    cost: ``[layers, entries]`` per-layer costs (entries in ``menu`` order).
    layers: the analysed layers.
    menu: the entries (sorted by bits, :func:`check_menu`).
    budget: the target average weight bits.
    count: how many distinct assignments to return (fewer when the menu and
      layers have fewer).
    seed: seeds the perturbations.
    noise: the perturbations' log-normal spread.
    max_tries: the most ILPs solved.

  Returns:
    Assignments as tuples of menu entries (one per layer); the first is the
    unperturbed optimum at ``budget``; every one fits ``budget`` except those
    of the frontier grid above it.
  """
  bits = [entry_bits(e) for e in menu]
  weights = [l.weights for l in layers]
  found: dict[tuple, None] = {}

  def add(idx):
    if idx is not None:
      found.setdefault(tuple(menu[i] for i in idx), None)

  add(solve(cost, weights, bits, budget))
  for b in np.linspace(min(bits), max(bits), 4 * (max(bits) - min(bits)) + 1):
    add(solve(cost, weights, bits, float(b)))
  rng = np.random.default_rng(seed)
  scale = np.abs(cost) + 1e-3 * (np.abs(cost).max() + 1.0)  # zero costs move too
  total = len(menu) ** len(layers)
  tries = 0
  while len(found) < min(count, total) and tries < max_tries:
    tries += 1
    at = budget if tries % 2 else rng.uniform(min(bits), budget)
    add(solve(cost + scale * (np.exp(noise * rng.standard_normal(cost.shape)) - 1.0), weights, bits, at))
  return list(found)[:count]


def neighbours(
    parents: Sequence[tuple],
    layers: Sequence[Layer],
    menu: Sequence[Any],
    budget: float,
    cost: np.ndarray,
    *,
    exclude: set,
    count: int,
) -> list[tuple]:
  """Unmeasured assignments one move from the best measured ones, within the budget.

  A move changes one layer's entry by one menu step, or moves one layer up
  a step and another down a step. Candidates come parent by parent (the
  best first), each parent's by the predicted change of the summed
  per-layer cost (smallest first).

  Args:
    parents: measured assignments, best first.
    layers: the analysed layers.
    menu: the entries (sorted by bits).
    budget: the largest average weight bits.
    cost: ``[layers, entries]`` per-layer costs (the prediction).
    exclude: assignments already measured (not returned).
    count: the most to return.

  Returns:
    Distinct assignments (tuples of entries), at most ``count``.
  """
  pos = {e: i for i, e in enumerate(menu)}
  out: dict[tuple, None] = {}
  n = len(layers)
  for parent in parents:
    idx = [pos[e] for e in parent]
    moves = []
    for i in range(n):
      for step in (-1, 1):
        moves.append({i: idx[i] + step})
        for j in range(n):
          if j != i:
            moves.append({i: idx[i] + step, j: idx[j] - step})
    scored = []
    for move in moves:
      if not all(0 <= v < len(menu) for v in move.values()):
        continue
      new = list(idx)
      for i, v in move.items():
        new[i] = v
      cand = tuple(menu[v] for v in new)
      if cand in exclude or cand in out or average_bits(layers, cand) > budget + 1e-9:
        continue
      scored.append((sum(cost[i, v] - cost[i, idx[i]] for i, v in move.items()), cand))
    for _, cand in sorted(scored, key=lambda t: t[0]):
      out.setdefault(cand, None)
      if len(out) >= count:
        return list(out)
  return list(out)


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point dominates (smaller or equal in
  both, smaller in one), sorted by the first coordinate.

  Args:
    points: ``(size, error)`` pairs.

  Returns:
    The frontier's indices, by increasing size.
  """
  order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
  out, best = [], float("inf")
  for i in order:
    if points[i][1] < best:
      out.append(i)
      best = points[i][1]
  return out
