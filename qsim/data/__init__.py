"""Datasets: one interface (``load``) for TFDS sets and the offline default."""

from qsim.data.fashion_mnist import DEFAULT_DIR, load_fashion_mnist, read_idx
from qsim.data.sources import DATASETS, SPLITS, Data, load

__all__ = ["DATASETS", "DEFAULT_DIR", "Data", "SPLITS", "load", "load_fashion_mnist", "read_idx"]
