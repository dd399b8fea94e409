"""Disagreement search: python -m experiments.search --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/search.py for the fields and commands.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/search.py", "Search config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, search.md, success.png, gallery.png).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from qsim.search import job  # pylint: disable=g-import-not-at-top

  print(job.run_search(job.SearchConfig.from_config_dict(_CONFIG.value), _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
