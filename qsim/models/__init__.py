"""Models built from qsim's quantized layers (quant=None is the float model).

``get_model(name, num_classes=..., quant=...)`` builds any of the study's
architectures or their tiny test variants; every model is called as
``model.apply(variables, x, train=False)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn

from qsim.models.cnn import DenseNet, NiN, ResNet50, ResNetV2
from qsim.models.lenet import LeNet, lenet1, lenet5, lenet_tiny
from qsim.models.rnn import RNNClassifier

_P = functools.partial
MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet1": lenet1,
    "lenet5": lenet5,
    "lenet_tiny": lenet_tiny,
    "nin": NiN,
    "nin_tiny": _P(NiN, widths=((8, 6, 4), (8, 8, 8), (8, 8)), dropout=0.0),
    "resnet20": ResNetV2,
    "resnet20_tiny": _P(ResNetV2, stage_widths=(4, 8, 8), blocks_per_stage=1),
    "resnet50": ResNet50,
    "resnet50_tiny": _P(ResNet50, stage_sizes=(1, 1, 1, 1), width=4),
    "densenet121": DenseNet,
    "densenet121_tiny": _P(DenseNet, growth=4, block_sizes=(1, 1, 1, 1), stem_width=8),
    # Three dense blocks of two layers: 28x28 inputs (Fashion-MNIST) keep one pixel after the stem's
    # /4 and two transitions (densenet121_tiny's three transitions pool them to nothing).
    "densenet_tiny": _P(DenseNet, growth=4, block_sizes=(2, 2, 2), stem_width=8),
    # Full-width DenseNet-121 for 28x28 inputs (Fashion-MNIST): zero-padded to 32x32 first.
    "densenet121_pad2": _P(DenseNet, input_pad=2),
    # The study's IMDb models: Embedding(20000, 128) -> LSTM(50) / GRU(75).
    "lstm": _P(RNNClassifier, cell="lstm", hidden=50, vocab_size=20000, embed_dim=128),
    "gru": _P(RNNClassifier, cell="gru", hidden=75, vocab_size=20000, embed_dim=128),
    "lstm_tiny": _P(RNNClassifier, cell="lstm", hidden=4, vocab_size=50, embed_dim=8),
    "gru_tiny": _P(RNNClassifier, cell="gru", hidden=4, vocab_size=50, embed_dim=8),
    # The same RNNs over image rows (28 steps of 28 pixels): runs offline.
    "lstm_rows": _P(RNNClassifier, cell="lstm", hidden=50),
    "gru_rows": _P(RNNClassifier, cell="gru", hidden=75),
    "lstm_rows_tiny": _P(RNNClassifier, cell="lstm", hidden=4),
    "gru_rows_tiny": _P(RNNClassifier, cell="gru", hidden=4),
}


def get_model(name: str, *, num_classes: int, quant: Any = None, **overrides) -> nn.Module:
  """Builds model ``name`` with ``num_classes`` outputs.

  Args:
    name: a key of ``MODELS`` (e.g. ``'lenet5'``, ``'resnet20_tiny'``, ``'gru'``).
    num_classes: the classifier width.
    quant: a QuantConfig or LayerSpec, or None (the float model).
    **overrides: other attributes of the model (override the entry's
      defaults).

  Returns:
    The (unbound) flax module.

  Raises:
    ValueError: unknown name (the message lists the valid ones).
  """
  if name not in MODELS:
    raise ValueError(f"model={name!r} is not valid; choose one of {sorted(MODELS)}")
  return MODELS[name](num_classes=num_classes, quant=quant, **overrides)


__all__ = [
    "DenseNet",
    "LeNet",
    "MODELS",
    "NiN",
    "RNNClassifier",
    "ResNet50",
    "ResNetV2",
    "get_model",
    "lenet1",
    "lenet5",
    "lenet_tiny",
]
