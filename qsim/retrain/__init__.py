"""Retraining with disagreement samples (the study's RQ4), with controls."""

from qsim.retrain.loop import STRATEGIES, RetrainConfig, run_retrain, select
from qsim.retrain.pool import Part, Splits, check_disjoint, parse_split

__all__ = ["STRATEGIES", "Part", "RetrainConfig", "Splits", "check_disjoint", "parse_split", "run_retrain", "select"]
