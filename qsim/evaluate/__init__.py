"""Evaluation: the disagreement engine, uncertainty metrics, resumable sweeps."""

from qsim.evaluate.engine import Engine, Quantizer, SetResult, build_quantizers, check_variables
from qsim.evaluate.grid_eval import predict_grid

__all__ = ["Engine", "Quantizer", "SetResult", "build_quantizers", "check_variables", "predict_grid"]
