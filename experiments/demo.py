"""Launcher of the main job; the logic is demo_job.run()."""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import demo_job

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/demo.py", "Job config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where results go.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  demo_job.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
