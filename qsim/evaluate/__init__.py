"""Evaluation: the disagreement engine, uncertainty metrics, resumable sweeps."""

from qsim.evaluate.engine import Engine, Quantizer, SetResult, build_quantizers, check_variables

__all__ = ["Engine", "Quantizer", "SetResult", "build_quantizers", "check_variables"]
