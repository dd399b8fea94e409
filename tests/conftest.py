import os
import sys

# Tests import the checkout's qsim even when run without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypothesis import settings  # noqa: E402

# Each example may compile a small XLA program: no per-example deadline.
settings.register_profile("qsim", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("qsim")

import pytest  # noqa: E402

FMNIST_DIR = os.environ.get("QSIM_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")  # override: this check's test


def _ci() -> bool:
  return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config):
  """Without the Debian Fashion-MNIST files about 40% of the suite skips; in CI
  (``CI=true``, as ``.ci/run`` sets) that is a failure, not a skip."""
  del config
  if _ci() and not os.path.isdir(FMNIST_DIR):
    raise pytest.UsageError(
        f"CI={os.environ['CI']!r} but the Fashion-MNIST files are missing from {FMNIST_DIR}: in CI the tests that"
        " need them must run, not skip. Install them: sudo apt-get update && sudo apt-get install -y"
        " dataset-fashion-mnist (make test does)"
    )


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
  """A lenet_tiny training workdir (20 steps on 512 Fashion-MNIST images),
  shared by the engine, sweep and retraining tests."""
  if not os.path.exists(FMNIST_DIR):
    pytest.skip("make test installs dataset-fashion-mnist")
  from experiments.configs import mnist
  from qsim.train import job

  path = tmp_path_factory.mktemp("tiny_ckpt")
  job.run(job.TrainConfig.from_config_dict(mnist.get_config("runlocal,steps=20")), str(path))
  return path
