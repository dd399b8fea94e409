"""qsim vs the real runtimes: python -m experiments.fidelity --config=CONFIG[:ARGS] --workdir=DIR

Several checkpoints (``checkpoint=runs/a+runs/b``) run one after the other,
each in workdir/<its folder name>, and workdir/summary.md compares them.

See experiments/configs/fidelity.py for the fields and commands.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from qsim.evaluate import sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/fidelity.py", "Fidelity config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, fidelity.md, models/).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  c = _CONFIG.value
  if not c.checkpoint:
    raise app.UsageError("give the checkpoint: --config=experiments/configs/fidelity.py:checkpoint=<train workdir>")
  from qsim.export import fidelity  # pylint: disable=g-import-not-at-top

  checkpoints = sweep.split(c.checkpoint)
  labels = [os.path.basename(os.path.normpath(p)) for p in checkpoints]
  if len(checkpoints) == 1:
    runs = {labels[0]: _WORKDIR.value}
  elif len(set(labels)) < len(labels):
    raise app.UsageError(
        f"checkpoints {checkpoints} share a folder name; each runs in workdir/<folder name>, so"
        " give checkpoints with distinct folder names"
    )
  else:
    runs = {label: os.path.join(_WORKDIR.value, label) for label in labels}
  for (label, workdir), ckpt in zip(runs.items(), checkpoints):
    if len(runs) > 1:
      print(f"== {label}: {ckpt} -> {workdir}", flush=True)
    path = fidelity.run_fidelity(
        ckpt,
        workdir,
        modes=sweep.split(c.modes),
        kernels=sweep.split(c.kernels),
        shifts=sweep.split(c.shifts),
        limit=c.limit or None,
        calib_samples=c.calib_samples,
        batch_size=c.batch_size,
        seed=c.seed,
        data_dir=c.data_dir or None,
        study=c.study,
    )
    print(path)
    print(fidelity.write_report(workdir))
  if len(runs) > 1:
    print(fidelity.write_summary(runs, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
