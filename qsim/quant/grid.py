"""Bits are data: evaluate a grid of quant configs in one compiled program.

Configs whose static structure is equal (same formats, granularities,
calibrations, rules; any bits) are stacked into one pytree with a leading
config axis and mapped over; configs of different structures form groups in
the same compiled program. Changing bits does not
recompile; a new structure (or a new order of groups) does.

Mapping over the config axis, by backend (see BUILD_NOTES.md and
``benchmarks/grid_mapping.py``):

* ``'map'`` (``lax.map``): one config after another, each at full batch. On
  CPU this runs at about the cost of separate forwards.
* ``'vmap'``: all configs at once; on CPU per-config kernels turn convolutions
  into grouped convolutions (measured 4-5x slower); on GPU/TPU it can fill
  the device better.
* ``'auto'``: 'map' on CPU, 'vmap' on GPU and TPU.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qsim.quant.spec import QuantConfig

MAPPINGS = ("auto", "map", "vmap")


def _unnamed(tree):
  return jax.tree.map(
      lambda c: c.replace(name="") if isinstance(c, QuantConfig) else c,
      tree,
      is_leaf=lambda c: isinstance(c, QuantConfig),
  )


def group(items: Sequence[Any]) -> list[tuple[list[int], Any]]:
  """Groups configs (or pytrees holding configs) by structure and stacks each.

  Config names are ignored (cleared) for grouping and in the stacked result.

  Args:
    items: configs, or pytrees holding configs (e.g. ``(config, quant_stats)``).

  Returns:
    ``[(indices, stacked), ...]``: the positions in ``items`` of each group
    and the group stacked along a new leading axis.
  """
  groups: dict[Any, list[int]] = {}
  items = [_unnamed(it) for it in items]
  for i, it in enumerate(items):
    groups.setdefault(jax.tree.structure(it), []).append(i)
  out = []
  for idx in groups.values():
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *[items[i] for i in idx])
    out.append((idx, stacked))
  return out


def resolve_mapping(mapping: str) -> str:
  """The concrete mapping over the config axis for ``mapping``.

  Args:
    mapping: ``'auto'``, ``'map'`` or ``'vmap'``.

  Returns:
    ``'map'`` or ``'vmap'``; ``'auto'`` is 'map' on CPU, 'vmap' otherwise.

  Raises:
    ValueError: ``mapping`` is not one of ``MAPPINGS``.
  """
  if mapping not in MAPPINGS:
    raise ValueError(f"mapping={mapping!r} is not valid; choose one of {list(MAPPINGS)}")
  if mapping == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return mapping


class ConfigGrid:
  """A jit-compiled ``fn`` mapped over a list of configs.

  ``fn(item, *args) -> pytree`` is called with one config (or one pytree
  holding a config, e.g. ``(config, quant_stats)``) whose leaves are traced;
  the result gets a leading axis over ``items``, in their order.

  Example::

    grid = ConfigGrid(lambda cfg, v, x: model.clone(quant=cfg).apply(v, x))
    logits = grid(bit_grid([2, 4, 8], [4, 8]), variables, images)
  """

  def __init__(self, fn: Callable[..., Any], mapping: str = "auto"):
    self.fn = fn
    self.mapping = resolve_mapping(mapping)
    self._jitted = jax.jit(self.apply_groups, static_argnames=("order", "sizes"))

  def apply_groups(self, stacked_groups, args, order, sizes):
    """The traceable body (call it inside another jit).

    Applies ``fn`` over each stacked group (from :func:`group`) and puts the
    results back in item order.

    Args:
      stacked_groups: the stacked groups, from :meth:`prepare`.
      args: the extra arguments of ``fn``, as a tuple.
      order: static tuple: the position, in group-concatenated order, of each
        item.
      sizes: static tuple: the number of items in each group.

    Returns:
      ``fn``'s result pytree with a leading axis over all items, in item
      order.
    """
    outs = []
    for stacked, size in zip(stacked_groups, sizes):
      if not jax.tree.leaves(stacked):  # e.g. float32, fp16: nothing to map
        one = self.fn(stacked, *args)
        outs.append(jax.tree.map(lambda y: jnp.broadcast_to(y, (size,) + y.shape), one))
      elif self.mapping == "vmap":
        outs.append(jax.vmap(lambda c: self.fn(c, *args))(stacked))
      else:
        outs.append(jax.lax.map(lambda c: self.fn(c, *args), stacked))
    out = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)
    if order != tuple(range(len(order))):
      out = jax.tree.map(lambda x: x[np.asarray(order)], out)
    return out

  @staticmethod
  def prepare(items: Sequence[Any]):
    """``(stacked_groups, order, sizes)`` for :meth:`apply_groups`.

    Args:
      items: configs, or pytrees holding configs; at least one.

    Returns:
      ``(stacked_groups, order, sizes)``: a tuple of stacked groups, the
      static tuple mapping item positions into the concatenated group
      results, and the static tuple of group sizes.

    Raises:
      ValueError: ``items`` is empty.
    """
    if not items:
      raise ValueError("ConfigGrid: got an empty list of configs")
    groups = group(items)
    flat_idx = [i for idx, _ in groups for i in idx]
    order = tuple(int(k) for k in np.argsort(flat_idx))
    sizes = tuple(len(idx) for idx, _ in groups)
    return tuple(s for _, s in groups), order, sizes

  def __call__(self, items: Sequence[Any], *args):
    stacked, order, sizes = self.prepare(items)
    return self._jitted(stacked, args, order=order, sizes=sizes)
