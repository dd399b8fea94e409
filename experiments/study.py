"""The study end to end: python -m experiments.study --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/study.py for the settings (quick, full, runlocal),
the fields and the expected runtimes. Prints where the report is.
"""

import os
import shlex
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from experiments.configs.study import train_config_fn
from qsim.study import StudyConfig
from qsim.study import run_study
from qsim.study.publish import git_commit

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/study.py", "Study config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (train/, eval/, retrain/, report.md).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  c = StudyConfig.from_config_dict(_CONFIG.value)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  command = os.path.join(_WORKDIR.value, "command.txt")
  if not os.path.exists(os.path.join(_WORKDIR.value, "study_config.json")):  # a new study: its command, for publish
    with open(command, "w") as f:
      f.write("python -m experiments.study " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n")
    with open(os.path.join(_WORKDIR.value, "commit.txt"), "w") as f:  # the code the study ran, for publish
      f.write(git_commit() + "\n")
  path = run_study(c, _WORKDIR.value, train_config_fn(c))
  print(f"report: {path}")


if __name__ == "__main__":
  cli.run(main)
