"""Bit-width ablation: python -m experiments.ablate_bits --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/ablate.py for the fields and commands.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from experiments import launch
from qsim.evaluate import sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/ablate.py", "Ablation config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, samples/).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  launch.init_distributed()  # multi-process runs only; see experiments/launch.py
  logging.set_verbosity(logging.WARNING)
  path = sweep.run_sweep(sweep.SweepConfig.from_config_dict(_CONFIG.value), _WORKDIR.value)
  print(path)


if __name__ == "__main__":
  cli.run(main)
