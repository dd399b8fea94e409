"""Distribution shifts: image corruption suites (MNIST-C, CIFAR-10-C) as JAX
functions, seeded text shifts, and a registry of named shifted sets."""

from qsim.shifts.image import CIFAR10_C, MNIST_C, MNIST_C_OFFICIAL, SEVERITIES, SUITES, check, corrupt
from qsim.shifts.text import TEXT_SHIFTS, shift_texts

__all__ = [
    "CIFAR10_C",
    "MNIST_C",
    "MNIST_C_OFFICIAL",
    "SEVERITIES",
    "SUITES",
    "TEXT_SHIFTS",
    "check",
    "corrupt",
    "shift_texts",
]
