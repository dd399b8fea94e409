"""Train one model: python -m experiments.train --config=CONFIG[:ARGS] --workdir=DIR

Configs: experiments/configs/{mnist,rows,cifar,imdb}.py; each docstring has
its commands and expected accuracy. A rerun with the same workdir resumes.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from experiments import launch
from qsim.train import job

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file[:args].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  launch.init_distributed()  # multi-process runs only; see experiments/launch.py
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  job.run(job.TrainConfig.from_config_dict(_CONFIG.value), _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
