"""LSTM / GRU classifiers: (Embedding ->) RNN -> Dense.

With ``vocab_size`` set, inputs are token ids (the study's IMDb models);
without it, inputs are float sequences, e.g. images as sequences of rows
(``(batch, 28, 28, 1)`` -> 28 steps of 28 features).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from qsim import nn as qnn


class RNNClassifier(nn.Module):
  """Attributes: cell ('lstm' | 'gru'), hidden size, classes, optional
  vocabulary and embedding size, quant config."""

  cell: str = "lstm"
  hidden: int = 50
  num_classes: int = 10
  vocab_size: int | None = None
  embed_dim: int = 128
  quant: Any = None

  @nn.compact
  def __call__(self, x):
    if self.vocab_size is not None:
      x = qnn.Embed(self.vocab_size, self.embed_dim, quant=self.quant, name="embed")(x)
    elif x.ndim == 4:  # images: one step per row
      x = x.reshape(x.shape[0], x.shape[1], -1)
    cells = {"lstm": qnn.LSTMCell, "gru": qnn.GRUCell}
    if self.cell not in cells:
      raise ValueError(f"cell={self.cell!r} is not valid; choose one of {list(cells)}")
    # parent=None: the RNN adopts the cell, so its path is rnn/cell/...
    cell = cells[self.cell](self.hidden, quant=self.quant, parent=None)
    carry, _ = qnn.RNN(cell, return_carry=True, name="rnn")(x)
    h = carry[1] if self.cell == "lstm" else carry
    return qnn.Dense(self.num_classes, quant=self.quant, name="head")(h)
