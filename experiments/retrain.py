"""Retrain with disagreements: python -m experiments.retrain --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/retrain.py for the fields and commands. Writes
DIR/results.csv and DIR/report.md (with DIR/retrain.png).
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from qsim.retrain import RetrainConfig
from qsim.retrain import run_retrain
from qsim.retrain import report

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/retrain.py", "Retraining config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, report.md, models/).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  path = run_retrain(RetrainConfig.from_config_dict(_CONFIG.value), _WORKDIR.value)
  print(path)
  print(report.write_report(_WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
