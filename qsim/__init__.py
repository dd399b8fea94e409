"""qsim: simulate quantized deployment of neural networks in JAX."""

__version__ = "0.1.0"
