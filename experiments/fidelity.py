"""qsim vs the real runtimes: python -m experiments.fidelity --config=CONFIG[:ARGS] --workdir=DIR

Several checkpoints (``checkpoint=runs/a+runs/b``) run one after the other,
each in workdir/<its folder name>, and workdir/summary.md compares them.

See experiments/configs/fidelity.py for the fields and commands.
"""

import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/fidelity.py", "Fidelity config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, fidelity.md, models/).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from qsim.export import fidelity  # pylint: disable=g-import-not-at-top

  c = fidelity.FidelityConfig.from_config_dict(_CONFIG.value)
  runs = c.workdirs(_WORKDIR.value)
  for ckpt, path in fidelity.run_fidelity(c, _WORKDIR.value).items():
    print(path)
    print(fidelity.write_report(runs[ckpt]))
  if len(runs) > 1:
    labels = {os.path.basename(wd): wd for wd in runs.values()}
    print(fidelity.write_summary(labels, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
