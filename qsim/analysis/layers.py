"""The layers a debugger analyses, and configs that quantize some of them.

A *layer* here is a named unit that owns weights (a Dense or Conv kernel, an
embedding table, a recurrent cell's gate kernels) and whose spec a
:class:`~qsim.quant.QuantConfig` resolves by that name (``'conv1'``,
``'block1/conv2'``, ``'rnn/cell'``). Every config built here gives each
analysed layer its own rule (``^name$``), so configs that differ only in bits
share one structure and stack on the grid (:mod:`qsim.quant.grid`): bits are
data, a new per-layer bit assignment does not recompile.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from qsim import nn as qnn
from qsim.quant import QuantConfig
from qsim.quant.spec import LayerSpec

WEIGHT_PARAMS = ("kernel", "embedding")  # the parameters a layer's weight spec quantizes
CELL_TYPES = (nn.RNNCellBase,)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One analysed layer.

  Attributes:
    name: its name as a config resolves it (module path joined by '/').
    kind: its module's class name ('Dense', 'Conv', 'Embed', 'GRUCell', ...).
    weights: the number of weight elements its weight spec quantizes.
    kernels: the '/'-joined paths of those weight parameters.
    call_path: the module whose calls carry its input and output (the layer
      itself; for a recurrent cell, the RNN that scans it).
  """

  name: str
  kind: str
  weights: int
  kernels: tuple[str, ...]
  call_path: str


def find_layers(model: nn.Module, example: np.ndarray, variables: Mapping | None = None) -> list[Layer]:
  """The layers of ``model`` that own weights, in the order the model calls them.

  Args:
    model: the float model (any ``quant`` is replaced).
    example: model inputs ``[N, ...]``; only the first sample is traced.
    variables: the model's variables (their params give the weight counts);
      None traces ``init`` for the shapes.

  Returns:
    One :class:`Layer` per named unit whose config entry decides weights.

  Raises:
    ValueError: the model has no layer with weights.
  """
  types: dict[str, type] = {}

  def note(next_fun, args, kwargs, context):
    types.setdefault("/".join(context.module.scope.path), type(context.module))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(note):
    names = qnn.resolved_names(model, example)
  if variables is None:
    variables = jax.eval_shape(model.init, jax.random.key(0), example[:1])
  params = variables["params"]
  flat = {
      "/".join(str(getattr(k, "key", k)) for k in path): leaf
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  owner: dict[str, list[str]] = {}
  for p in flat:  # each weight belongs to the deepest resolved name above it (a block's conv, not the block)
    above = [n for n in names if p.rsplit("/", 1)[-1] in WEIGHT_PARAMS and p.startswith(n + "/")]
    if above:
      owner.setdefault(max(above, key=len), []).append(p)
  out: list[Layer] = []
  for name in names:
    kernels = tuple(owner.get(name, ()))
    if not kernels:
      continue
    kind = types.get(name, object)
    call_path = name.rsplit("/", 1)[0] if isinstance(kind, type) and issubclass(kind, CELL_TYPES) else name
    out.append(
        Layer(
            name=name,
            kind=getattr(kind, "__name__", "?"),
            weights=int(sum(np.prod(np.shape(flat[k])) for k in kernels)),
            kernels=kernels,
            call_path=call_path,
        )
    )
  if not out:
    raise ValueError(f"{type(model).__name__} has no layer with weights (kernels or embeddings) to analyse")
  return out


def rule(name: str) -> str:
  """The pattern that matches the layer called ``name`` and no other.

  Args:
    name: a layer name.

  Returns:
    ``'^' + re.escape(name) + '$'``.
  """
  return "^" + re.escape(name) + "$"


def per_layer(
    layers: Sequence[Layer], specs: Sequence[LayerSpec | None], *, default: LayerSpec | None, name: str
) -> QuantConfig:
  """A config with one rule per layer (in ``layers`` order) and ``default`` for the rest.

  Args:
    layers: the analysed layers.
    specs: each layer's spec (None: float), same length as ``layers``.
    default: the spec of every other resolved name (None: float).
    name: the config's label.

  Returns:
    The QuantConfig.

  Raises:
    ValueError: ``specs`` and ``layers`` differ in length.
  """
  if len(specs) != len(layers):
    raise ValueError(f"got {len(specs)} specs for {len(layers)} layers")
  return QuantConfig(default=default, rules=tuple((rule(l.name), s) for l, s in zip(layers, specs)), name=name)


def one_at_a_time(layers: Sequence[Layer], spec: LayerSpec, label: str = "") -> list[QuantConfig]:
  """Enable-one and disable-one configs of ``spec``, two per layer.

  ``enable:<layer>`` quantizes that layer alone (every other name float);
  ``disable:<layer>`` quantizes everything but it (every other name under
  ``spec``, including names that own no weights, such as stored outputs).

  Args:
    layers: the analysed layers.
    spec: the spec being debugged (a preset's LayerSpec).
    label: a suffix for the names (e.g. '@w4a8'); empty: none.

  Returns:
    ``[enable:L1, ..., enable:Ln, disable:L1, ..., disable:Ln]``.
  """
  n = len(layers)
  enable = [
      per_layer(layers, [spec if j == i else None for j in range(n)], default=None, name=f"enable:{l.name}{label}")
      for i, l in enumerate(layers)
  ]
  disable = [
      per_layer(layers, [None if j == i else spec for j in range(n)], default=spec, name=f"disable:{l.name}{label}")
      for i, l in enumerate(layers)
  ]
  return enable + disable
