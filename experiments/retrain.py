"""Retrain with disagreements: python -m experiments.retrain --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/retrain.py for the fields and commands. Writes
DIR/results.csv and DIR/report.md (with DIR/retrain.png).
"""

import dataclasses

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from qsim.evaluate import sweep
from qsim.retrain import RetrainConfig, run_retrain
from qsim.retrain import report

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/retrain.py", "Retraining config file[:args].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, report.md, models/).")
flags.mark_flags_as_required(["workdir"])

LISTS = ("quantizers", "strategies", "pool_shifts", "shifts")


def retrain_config(c) -> RetrainConfig:
  """The launcher's ConfigDict as a RetrainConfig ('+'-separated lists)."""
  values = {f.name: c[f.name] for f in dataclasses.fields(RetrainConfig)}
  for k in LISTS:
    values[k] = tuple(sweep.split(values[k]))
  seeds = sweep.split(str(values["seeds"]))
  if not all(s.isdigit() for s in seeds):
    raise ValueError(f"seeds={values['seeds']!r} is not valid; give '+'-separated ints >= 0, e.g. 0+1+2")
  values["seeds"] = tuple(int(s) for s in seeds)
  return RetrainConfig(**values)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  c = _CONFIG.value
  if not c.checkpoint:
    raise app.UsageError("give the checkpoint: --config=experiments/configs/retrain.py:checkpoint=<train workdir>")
  path = run_retrain(retrain_config(c), _WORKDIR.value)
  print(path)
  print(report.write_report(_WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
