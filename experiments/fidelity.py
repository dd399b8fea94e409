"""qsim vs TFLite: python -m experiments.fidelity --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/fidelity.py for the fields and commands.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from qsim.evaluate import sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/fidelity.py", "Fidelity config file[:args].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, fidelity.md, models/).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  c = _CONFIG.value
  if not c.checkpoint:
    raise app.UsageError("give the checkpoint: --config=experiments/configs/fidelity.py:checkpoint=<train workdir>")
  from qsim.export import fidelity  # pylint: disable=g-import-not-at-top
  path = fidelity.run_fidelity(c.checkpoint, _WORKDIR.value, modes=sweep.split(c.modes),
                               kernels=sweep.split(c.kernels), shifts=sweep.split(c.shifts), limit=c.limit or None,
                               calib_samples=c.calib_samples, batch_size=c.batch_size, seed=c.seed,
                               data_dir=c.data_dir or None, study=c.study)
  print(path)
  print(fidelity.write_report(_WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
