"""Training: standard, QAT, adversarial (PGD/FGSM) and Mixup; orbax
checkpoints with automatic resume (the run directory: :mod:`qsim.runs`)."""

from qsim.train.loop import TrainState, accuracy, batch_indices, predict, train, variables_of
from qsim.train.methods import METHODS, MethodConfig

__all__ = [
    "METHODS",
    "MethodConfig",
    "TrainState",
    "accuracy",
    "batch_indices",
    "predict",
    "train",
    "variables_of",
]
