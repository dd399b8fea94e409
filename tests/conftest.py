import os
import sys

# Tests import the checkout's qsim even when run without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypothesis import settings  # noqa: E402

# Each example may compile a small XLA program: no per-example deadline.
settings.register_profile("qsim", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("qsim")
