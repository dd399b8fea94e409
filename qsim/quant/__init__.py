"""Quantization numerics, specs, presets and config grids.

Every AQT import of qsim lives in :mod:`qsim.quant._aqt`.
"""

from qsim.quant.fake_quant import calibrated_range, quantize, range_shape
from qsim.quant.grid import ConfigGrid, group
from qsim.quant.presets import bit_grid, bit_grid_names, bits_name, layer_preset, make_config, parse_bits, preset, preset_names
from qsim.quant.spec import FORMATS, LayerSpec, QuantConfig, TensorSpec, structure

__all__ = [
    "ConfigGrid",
    "FORMATS",
    "LayerSpec",
    "QuantConfig",
    "TensorSpec",
    "bit_grid",
    "bit_grid_names",
    "bits_name",
    "calibrated_range",
    "group",
    "layer_preset",
    "make_config",
    "parse_bits",
    "preset",
    "preset_names",
    "quantize",
    "range_shape",
    "structure",
]
