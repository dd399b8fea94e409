"""LSTM(50) / GRU(75) after Embedding(20000, 128) on IMDb reviews padded to
200 tokens (TFDS ``imdb_reviews``, prepared beforehand). As in the study,
only 5,000 training reviews are used (``train_limit``); the vocabulary is
built from them and saved as workdir/vocab.json. Adversarial training and
Mixup act on embeddings, never on token ids.

  python -m experiments.train --config=experiments/configs/imdb.py:model=lstm --workdir=runs/imdb_lstm

Expected: the study reports LSTM 83.78 and GRU 83.14 test accuracy (not
measured here: no IMDb on the dev machines; runlocal runs on mock data).
"""

from experiments.configs import common

RUNLOCAL = dict(model="lstm_tiny", steps=4, batch_size=4, log_every=2, checkpoint_every=2, val_size=4, iters=2)


def get_config(arg: str = ""):
  c = common.base()
  c.dataset = "imdb_reviews"
  c.model = "lstm"
  c.train_limit = 5000
  c.steps = 1500
  c.batch_size = 64
  c.eps, c.step_size, c.iters = 0.05, 0.01, 5  # in embedding space
  c.input_box = None
  return common.apply_args(c, arg, RUNLOCAL)
