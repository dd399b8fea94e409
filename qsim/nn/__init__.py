"""Quantized Flax Linen layers (Dense, Conv, Embed, LSTMCell, GRUCell, RNN)."""

from qsim.nn.layers import AvgPool, BatchNorm, Conv, Dense, Embed, QUANT_RNG, QUANT_STATS, Output, QuantConv, QuantDotGeneral, add, global_mean, quantize_tensor
from qsim.nn.recurrent import GRUCell, LSTMCell, RNN
from qsim.nn.calibration import calibrate, require_calibrated, uncalibrated

__all__ = [
    "AvgPool",
    "BatchNorm",
    "Conv",
    "Dense",
    "Embed",
    "GRUCell",
    "LSTMCell",
    "RNN",
    "QUANT_RNG",
    "Output",
    "QUANT_STATS",
    "QuantConv",
    "QuantDotGeneral",
    "add",
    "calibrate",
    "global_mean",
    "quantize_tensor",
    "require_calibrated",
    "uncalibrated",
]
