"""Evaluation of a model under a grid of quantization configs."""

from qsim.evaluate.grid_eval import predict_grid

__all__ = ["predict_grid"]
