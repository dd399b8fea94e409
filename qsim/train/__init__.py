"""Training (standard method; QAT through the same quantized layers)."""

from qsim.train.basic import accuracy, train_classifier

__all__ = ["accuracy", "train_classifier"]
