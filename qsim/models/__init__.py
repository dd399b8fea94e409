"""Models built from qsim's quantized layers (quant=None is the float model)."""

from qsim.models.lenet import LeNet, lenet1, lenet5, lenet_tiny
from qsim.models.rnn import RNNClassifier

__all__ = ["LeNet", "RNNClassifier", "lenet1", "lenet5", "lenet_tiny"]
