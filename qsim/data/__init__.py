"""Datasets: one interface (``load``) for TFDS sets and the offline default;
shifted test sets (MNIST-C, CIFAR-10-C, CIFAR-10.1, Yelp) in ``shifted``."""

from qsim.data.fashion_mnist import DEFAULT_DIR, load_fashion_mnist, read_idx
from qsim.data.shifted import CIFAR10_1_VERSIONS, CIFAR10_C, MNIST_C, cifar10_1, cifar10_c, mnist_c, yelp_polarity
from qsim.data.sources import DATASETS, SPLITS, Data, load

__all__ = [
    "CIFAR10_1_VERSIONS",
    "CIFAR10_C",
    "DATASETS",
    "DEFAULT_DIR",
    "Data",
    "MNIST_C",
    "SPLITS",
    "cifar10_1",
    "cifar10_c",
    "load",
    "load_fashion_mnist",
    "mnist_c",
    "read_idx",
    "yelp_polarity",
]
