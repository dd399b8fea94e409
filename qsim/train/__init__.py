"""Training: standard, QAT, adversarial (PGD/FGSM) and Mixup; orbax
checkpoints with automatic resume."""

from qsim.train.loop import TrainState, accuracy, batch_indices, load_variables, predict, train, variables_of
from qsim.train.methods import METHODS, MethodConfig

__all__ = [
    "METHODS", "MethodConfig", "TrainState", "accuracy", "batch_indices",
    "load_variables", "predict", "train", "variables_of",
]
