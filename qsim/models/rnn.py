"""LSTM / GRU classifiers: (Embedding ->) RNN -> Dense.

With ``vocab_size`` set, inputs are token ids (the study's IMDb models);
without it, inputs are float sequences, e.g. images as sequences of rows
(``(batch, 28, 28, 1)`` -> 28 steps of 28 features).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

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

  def setup(self):
    """Builds the embedding (with ``vocab_size``), the RNN, the head and the logits point.

    Raises:
      ValueError: ``cell`` is not 'lstm' or 'gru'.
    """
    if self.vocab_size is not None:
      self.embed = qnn.Embed(self.vocab_size, self.embed_dim, quant=self.quant)
    cells = {"lstm": qnn.LSTMCell, "gru": qnn.GRUCell}
    if self.cell not in cells:
      raise ValueError(f"cell={self.cell!r} is not valid; choose one of {list(cells)}")
    # parent=None: the RNN adopts the cell, so its path is rnn/cell/...
    cell = cells[self.cell](self.hidden, quant=self.quant, parent=None)
    self.rnn = qnn.RNN(cell, return_carry=True)
    self.head = qnn.Dense(self.num_classes, quant=self.quant)
    self.logits = qnn.Output(quant=self.quant)

  def embed_tokens(self, tokens):
    """Token ids -> embeddings (text models only).

    Args:
      tokens: integer token ids, (batch, time), each in ``[0, vocab_size)``.

    Returns:
      The embeddings, (batch, time, embed_dim).

    Raises:
      ValueError: the model has no vocabulary (``vocab_size`` is None).
    """
    if self.vocab_size is None:
      raise ValueError("embed_tokens: this RNNClassifier has no vocabulary (vocab_size=None)")
    return self.embed(tokens)

  def __call__(self, x, train: bool = False, embedded: bool = False):
    """x: token ids (batch, time), or images (batch, rows, cols, 1), or
    float sequences; ``embedded=True``: x are embeddings already (for
    adversarial training and Mixup in embedding space)."""
    del train  # no dropout or BatchNorm
    if self.vocab_size is not None and not embedded:
      x = self.embed_tokens(x)
    elif x.ndim == 4:  # images: one step per row
      x = x.reshape(x.shape[0], x.shape[1], -1)
    carry, _ = self.rnn(x)
    h = carry[1] if self.cell == "lstm" else carry
    return self.logits(self.head(h))
