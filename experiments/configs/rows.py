"""LSTM(50) / GRU(75) reading 28x28 images as 28 rows: the study's RNNs on
real offline data (Fashion-MNIST from Debian).

  python -m experiments.train --config=experiments/configs/rows.py:model=gru_rows --workdir=runs/gru_rows
  python -m experiments.train --config=experiments/configs/rows.py:model=lstm_rows --workdir=runs/lstm_rows

Expected (2-core CPU): >= 0.87 test accuracy for both in 5,000 steps.
Measured figures: BUILD_NOTES.md.
"""

from experiments.configs import common

RUNLOCAL = dict(
    model="gru_rows_tiny",
    steps=4,
    batch_size=32,
    log_every=2,
    checkpoint_every=2,
    train_limit=256,
    test_limit=128,
    val_size=128,
    iters=2,
)


def get_config(arg: str = ""):
  c = common.base()
  c.model = "lstm_rows"
  c.steps = 5000
  c.learning_rate = 2e-3
  c.eps, c.step_size, c.iters = 0.3, 0.1, 10
  return common.apply_args(c, arg, RUNLOCAL)
