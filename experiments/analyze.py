"""The quantization debugger: python -m experiments.analyze --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/analyze.py for the fields and commands.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/analyze.py", "Analysis config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (analysis.md, stats.csv, sweep/, search.json, ...).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from qsim.analysis import job  # pylint: disable=g-import-not-at-top

  print(job.run_analysis(job.AnalysisConfig.from_config_dict(_CONFIG.value), _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
