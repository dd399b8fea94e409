"""Datasets through one interface: TFDS (mocked) and the offline default."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from qsim import data
from qsim.data import text


def test_unknown_dataset_and_split_list_choices():
  with pytest.raises(ValueError, match=r"dataset='svhn' is not valid; choose one of .*'cifar10'"):
    data.load("svhn", "train")
  with pytest.raises(ValueError, match=r"split='dev' is not valid; choose one of \['train', 'val', 'test'\]"):
    data.load("mnist", "dev")


def test_missing_tfds_dataset_names_dataset_folder_and_command(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load("mnist", "train", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "'mnist'" in msg and str(tmp_path) in msg and "tfds build mnist" in msg


@pytest.mark.parametrize(
    "name,shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]
)
def test_tfds_images_splits_are_disjoint_and_scaled(name, shape):
  with tfds.testing.mock_data(num_examples=30):
    tr = data.load(name, "train", val_size=10)
    va = data.load(name, "val", val_size=10)
    te = data.load(name, "test")
  assert (len(tr), len(va), len(te)) == (20, 10, 30)
  assert tr.x.shape[1:] == shape and tr.x.dtype == np.float32
  assert 0.0 <= tr.x.min() and tr.x.max() <= 1.0
  assert tr.num_classes == 10 and tr.y.dtype == np.int32
  # train and val partition the training split (no example in both)
  rows = {r.tobytes() for r in tr.x}
  assert not any(r.tobytes() in rows for r in va.x)


def test_imdb_vocab_from_train_part_only_and_padding():
  with tfds.testing.mock_data(num_examples=12):
    tr = data.load("imdb_reviews", "train", val_size=4, vocab_size=30, maxlen=9)
    va = data.load("imdb_reviews", "val", val_size=4, vocab_size=30, maxlen=9, vocab=tr.vocab)
    with pytest.raises(ValueError, match="needs vocab="):
      data.load("imdb_reviews", "test")
    small = data.load("imdb_reviews", "train", val_size=4, vocab_size=10, maxlen=9)
    import tensorflow_datasets as t  # the raw training texts, to check the vocabulary's origin

    raw = t.data_source("imdb_reviews", split="train")
    train_words = {w for i in range(8) for w in text.tokenize(raw[i]["text"])}
  assert tr.x.shape == (8, 9) and tr.x.dtype == np.int32
  assert va.vocab == tr.vocab and set(tr.vocab) <= train_words
  assert int(small.x.max()) <= 9  # ids fit an embedding table of vocab_size rows
  assert tr.num_classes == 2


def test_text_encoding_pre_pads_and_pre_truncates(tmp_path):
  vocab = text.build_vocab(["b a a", "c <br />A"], size=5)
  assert vocab == ["a", "b", "c"]
  ids = text.encode(["a b", "c c c c a zzz"], vocab, maxlen=4)
  np.testing.assert_array_equal(ids, [[0, 0, 2, 3], [4, 4, 2, 1]])
  path = str(tmp_path / "vocab.json")
  text.save_vocab(path, vocab)
  assert text.load_vocab(path) == vocab


@pytest.mark.skipif(not os.path.exists(data.DEFAULT_DIR), reason="make test installs dataset-fashion-mnist")
def test_fashion_mnist_debian_on_real_files():
  tr = data.load("fashion_mnist_debian", "train")
  va = data.load("fashion_mnist_debian", "val")
  te = data.load("fashion_mnist_debian", "test")
  assert (len(tr), len(va), len(te)) == (55000, 5000, 10000)
  assert tr.x.shape[1:] == (28, 28, 1) and tr.x.max() == 1.0
  assert np.bincount(te.y).tolist() == [1000] * 10


def test_bad_sizes():
  with tfds.testing.mock_data(num_examples=5):
    with pytest.raises(ValueError, match=r"val_size=5 is not valid"):
      data.load("mnist", "train", val_size=5)
    with pytest.raises(ValueError, match=r"limit=0 is not valid"):
      data.load("mnist", "test", limit=0)


def test_ci_refuses_to_skip_the_dataset_tests(tmp_path):
  """In CI a missing Fashion-MNIST fails the run at start-up instead of skipping ~40% of the suite."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-p",
      "no:cacheprovider",
      "-p",
      "no:xdist",
      "--collect-only",
      "tests/test_spec.py",
  ]
  env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER")}
  missing = str(tmp_path / "no-such-dir")
  ci = subprocess.run(
      cmd, cwd=root, capture_output=True, text=True, timeout=300, env={**env, "CI": "true", "QSIM_FMNIST_DIR": missing}
  )
  assert ci.returncode != 0 and f"missing from {missing}" in ci.stdout + ci.stderr
  assert "apt-get install -y dataset-fashion-mnist" in ci.stdout + ci.stderr
  local = subprocess.run(
      cmd, cwd=root, capture_output=True, text=True, timeout=300, env={**env, "QSIM_FMNIST_DIR": missing}
  )
  assert local.returncode == 0, local.stdout + local.stderr
