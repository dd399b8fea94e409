"""LeNet-1 and LeNet-5 (the study's MNIST models), built from qsim layers.

Layer names are stable (``conv1``, ``conv2``, ``dense1``...; the classifier is
``head``) so per-layer quantization rules keep working.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

from qsim import nn as qnn


class LeNet(nn.Module):
  """Convolutions (5x5 'SAME', ReLU, 2x2 max-pool) then dense layers.

  Attributes:
    conv_features: channels of each conv block.
    dense_features: widths of the hidden dense layers.
    num_classes: classifier width.
    quant: QuantConfig (None = float; same code path).
  """

  conv_features: Sequence[int] = (6, 16)
  dense_features: Sequence[int] = (120, 84)
  num_classes: int = 10
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or BatchNorm
    """x: (batch, height, width, channels) floats -> logits (batch, classes)."""
    for i, f in enumerate(self.conv_features):
      x = qnn.Conv(f, (5, 5), padding="SAME", quant=self.quant, name=f"conv{i + 1}")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for i, f in enumerate(self.dense_features):
      x = nn.relu(qnn.Dense(f, quant=self.quant, name=f"dense{i + 1}")(x))
    x = qnn.Dense(self.num_classes, quant=self.quant, name="head")(x)
    return qnn.Output(quant=self.quant, name="logits")(x)


def lenet1(**kw) -> LeNet:
  """LeNet-1: two conv blocks of 4 and 12 channels, no hidden dense layer.

  Args:
    **kw: other :class:`LeNet` attributes (``num_classes``, ``quant``...).

  Returns:
    The (unbound) LeNet module.
  """
  return LeNet(conv_features=(4, 12), dense_features=(), **kw)


def lenet5(**kw) -> LeNet:
  """LeNet-5: two conv blocks of 6 and 16 channels, hidden dense layers of 120 and 84.

  Args:
    **kw: other :class:`LeNet` attributes (``num_classes``, ``quant``...).

  Returns:
    The (unbound) LeNet module.
  """
  return LeNet(conv_features=(6, 16), dense_features=(120, 84), **kw)


def lenet_tiny(**kw) -> LeNet:
  """A test-sized variant: 2 and 4 channels, one 16-wide hidden layer.

  Args:
    **kw: other :class:`LeNet` attributes (``num_classes``, ``quant``...).

  Returns:
    The (unbound) LeNet module.
  """
  return LeNet(conv_features=(2, 4), dense_features=(16,), **kw)
