"""Quantized Flax Linen layers (Dense, Conv, Embed, LSTMCell, GRUCell, RNN)."""

from qsim.nn.layers import AvgPool, BatchNorm, Conv, Dense, Embed, QUANT_RNG, QUANT_STATS, Output, QuantConv, QuantDotGeneral, add, check_rules, global_mean, quantize_tensor, resolved_names
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
    "check_rules",
    "global_mean",
    "quantize_tensor",
    "require_calibrated",
    "resolved_names",
    "uncalibrated",
]
