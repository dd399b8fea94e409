"""Datasets (the embedded default: Fashion-MNIST from Debian)."""

from qsim.data.fashion_mnist import DEFAULT_DIR, load_fashion_mnist, read_idx

__all__ = ["DEFAULT_DIR", "load_fashion_mnist", "read_idx"]
