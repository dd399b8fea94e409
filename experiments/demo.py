"""The demo: python -m experiments.demo [--config=experiments/configs/demo.py[:runlocal]] --workdir=DIR

Trains the float model (``qsim.train.job``, into DIR/train; a rerun of a
finished training skips to evaluation), evaluates the presets and the
weight x activation bit grid on the clean test split with the sweep
(``qsim.evaluate.sweep``, one compiled grid, into DIR/eval, resumable), and
writes DIR/disagreement.png (the bit grid) and the sweep's report
(DIR/eval/report.md).
"""

import os

from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from experiments import cli
from experiments.configs import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/demo.py", "Demo config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where results go.")


def bit_grid_counts(by_quantizer: dict, weight_bits, act_bits) -> np.ndarray:
  """Disagreements as a weight x activation array, from the sweep's rows
  keyed by quantizer name, in the order ``bit_grid_names`` builds them."""
  from qsim.quant import bit_grid_names  # pylint: disable=g-import-not-at-top

  names = bit_grid_names(weight_bits, act_bits)
  return np.array([int(by_quantizer[n]["disagreements"]) for n in names]).reshape(len(weight_bits), len(act_bits))


def run(c, workdir: str) -> list[dict]:
  """Runs the demo; returns the sweep's rows (one per quantizer, clean set)."""
  from qsim.evaluate import report, sweep  # pylint: disable=g-import-not-at-top
  from qsim.quant import bit_grid_names  # pylint: disable=g-import-not-at-top
  from qsim.results import read_rows  # pylint: disable=g-import-not-at-top
  from qsim.train import job  # pylint: disable=g-import-not-at-top

  acts = [None if a == 0 else a for a in c.act_bits]
  grid = bit_grid_names(c.weight_bits, acts)
  quantizers = list(dict.fromkeys([*c.presets, *grid]))
  train_cfg = job.TrainConfig.from_config_dict(
      common.base(),
      model=c.model,
      seed=c.seed,
      steps=c.steps,
      batch_size=c.batch_size,
      learning_rate=c.learning_rate,
      val_size=c.val_size,
      log_every=max(1, c.steps // 10),
      checkpoint_every=c.steps,
  )
  train_dir, eval_dir = os.path.join(workdir, "train"), os.path.join(workdir, "eval")
  print(f"[1/3] training {c.model} (float) for {c.steps} steps, seed {c.seed} -> {train_dir}", flush=True)
  job.run(train_cfg, train_dir)
  print(f"[2/3] {len(quantizers)} quantizers on the clean test split, one compiled grid -> {eval_dir}", flush=True)
  path = sweep.run_sweep(
      sweep.SweepConfig(
          checkpoints=(train_dir,),
          quantizers=tuple(quantizers),
          limit=c.test_limit,
          batch_size=c.eval_batch_size,
          calib_samples=c.calib_samples,
          seed=c.seed,
          mapping=c.mapping,
      ),
      eval_dir,
  )
  rows = read_rows(path)
  by = {r["quantizer"]: r for r in rows}
  n = int(rows[0]["n"])
  report.plot_bit_grid(
      bit_grid_counts(by, c.weight_bits, acts), list(c.weight_bits), acts, os.path.join(workdir, "disagreement.png"), n
  )
  print(f"[3/3] report: {report.write_report(eval_dir)}", flush=True)
  print(f"\n{c.model} on Fashion-MNIST test ({n} images), float accuracy {rows[0]['float_accuracy']:.4f}")
  print(f"{'quantizer':<18}{'accuracy':>10}{'delta(pts)':>12}{'flipped':>9}{'rate%':>8}")
  for r in rows:
    print(
        f"{r['quantizer']:<18}{r['quant_accuracy']:>10.4f}{100 * (r['quant_accuracy'] - r['float_accuracy']):>12.2f}"
        f"{int(r['disagreements']):>9d}{100 * r['disagreement_rate']:>8.2f}"
    )
  print(f"\nwrote {path} and {os.path.join(workdir, 'disagreement.png')}")
  return rows


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
