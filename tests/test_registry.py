"""Registry of shifted sets: names, counts, loading (synthetic on the real
offline Fashion-MNIST, official and natural sets through mocked TFDS, text),
iteration, the contact sheet, bad input."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from qsim import data
from qsim.data import shifted as official
from qsim.data import text as text_lib
from qsim.shifts import image, registry, text


def test_names_and_counts_follow_the_suites():
  n_mnist_c, n_cifar_c, sev = len(image.MNIST_C), len(image.CIFAR10_C), len(image.SEVERITIES)
  counts = registry.count()
  assert counts == {
      "mnist": n_mnist_c * sev + len(official.MNIST_C),
      "cifar10": n_cifar_c * sev + len(official.CIFAR10_C) * sev + len(official.CIFAR10_1_VERSIONS),
      "imdb_reviews": len(text.TEXT_SHIFTS) * len(text.SEVERITIES) + 1,
      "iwildcam": 2,  # its OOD test and validation splits (unseen camera locations)
  }
  assert sum(counts.values()) > 42 * 5  # the study used 42
  names = registry.list_shifts("fashion_mnist")
  assert "fashion_mnist/c/fog/3" in names and len(names) == len(set(names)) == n_mnist_c * sev
  assert "cifar10/official_c/snow/5" in registry.list_shifts("cifar10")
  assert registry.list_shifts("cifar10", ["natural"]) == [
      "cifar10/natural/cifar10_1_v4",
      "cifar10/natural/cifar10_1_v6",
  ]
  s = registry.parse("cifar10/official_c/snow/5")
  assert (s.dataset, s.family, s.shift, s.severity, s.offline) == ("cifar10", "official_c", "snow", 5, False)


def test_bad_names():
  with pytest.raises(ValueError, match=r"shifted set 'svhn/c/fog/1' is not valid; names look like"):
    registry.parse("svhn/c/fog/1")
  with pytest.raises(ValueError, match=r"'fashion_mnist/c/fog/9' does not exist; e.g. \['fashion_mnist/c/"):
    registry.parse("fashion_mnist/c/fog/9")
  with pytest.raises(ValueError, match=r"'fashion_mnist/c/snow/1' does not exist"):
    registry.parse("fashion_mnist/c/snow/1")  # snow is CIFAR-10-C's, not MNIST-C's
  with pytest.raises(ValueError, match=r"dataset='svhn' has no shifted sets; choose one of"):
    registry.list_shifts("svhn")
  with pytest.raises(ValueError, match=r"families=\['official_c'\] are not valid for 'fashion_mnist'"):
    registry.list_shifts("fashion_mnist", ["official_c"])
  with pytest.raises(ValueError, match=r"seed=-1 is not valid"):
    registry.load_shifted("fashion_mnist/c/fog/1", seed=-1, limit=2)
  with pytest.raises(ValueError, match=r"needs vocab="):
    registry.load_shifted("imdb_reviews/text/typos/1")
  with pytest.raises(ValueError, match=r"'cifar10/c/fog/1' is not a set of dataset 'mnist'"):
    next(registry.iter_shifted("mnist", ["cifar10/c/fog/1"]))


def test_synthetic_sets_on_offline_fashion_mnist_are_seeded_by_name():
  clean = data.load("fashion_mnist_debian", "test", limit=6)
  a = registry.load_shifted("fashion_mnist/c/fog/3", limit=6)
  assert a.name == "fashion_mnist/c/fog/3" and a.x.shape == clean.x.shape
  np.testing.assert_array_equal(a.y, clean.y)
  expected = image.corrupt("mnist_c", "fog", registry.set_key(0, a.name), clean.x, 3)
  np.testing.assert_array_equal(a.x, expected)
  np.testing.assert_array_equal(a.x, registry.load_shifted("fashion_mnist/c/fog/3", limit=6).x)
  assert not np.array_equal(a.x, registry.load_shifted("fashion_mnist/c/fog/3", limit=6, seed=1).x)
  # the first images do not depend on how many are loaded
  more = registry.load_shifted("fashion_mnist/c/fog/3", limit=9)
  np.testing.assert_array_equal(more.x[:6], a.x)


def test_iter_shifted_loads_clean_once_and_validates_first(monkeypatch):
  calls = []
  real = data.load
  monkeypatch.setattr(data, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
  names = ["fashion_mnist_debian/c/stripe/1", "fashion_mnist_debian/c/stripe/5", "fashion_mnist_debian/c/shear/2"]
  out = list(registry.iter_shifted("fashion_mnist_debian", names, limit=4))
  assert [n for n, _, _ in out] == names and len(calls) == 1
  assert all(x.shape == (4, 28, 28, 1) and y.shape == (4,) for _, x, y in out)
  with pytest.raises(ValueError, match="does not exist"):
    list(registry.iter_shifted("fashion_mnist_debian", names + ["fashion_mnist_debian/c/stripe/7"], limit=4))
  assert len(calls) == 1  # the bad name was caught before loading anything


def test_official_and_natural_sets_through_tfds():
  with tfds.testing.mock_data(num_examples=5):
    m = registry.load_shifted("mnist/official_c/fog")
    c = registry.load_shifted("cifar10/official_c/snow/5")
    n = registry.load_shifted("cifar10/natural/cifar10_1_v6", limit=3)
    got = list(registry.iter_shifted("cifar10", ["cifar10/c/fog/2", "cifar10/official_c/elastic/1"]))
  assert m.name == "mnist/official_c/fog" and m.x.shape == (5, 28, 28, 1)
  assert c.name == "cifar10/official_c/snow/5" and c.x.shape == (5, 32, 32, 3) and c.x.dtype == np.float32
  assert n.x.shape == (3, 32, 32, 3)
  assert [g[0] for g in got] == ["cifar10/c/fog/2", "cifar10/official_c/elastic/1"]
  assert got[0][1].shape == (5, 32, 32, 3)


def test_official_sets_missing_are_skipped_or_named(tmp_path):
  names = ["mnist/official_c/fog", "mnist/c/fog/1"]
  with pytest.raises(FileNotFoundError, match="mnist_corrupted/fog"):
    registry.load_shifted(names[0], data_dir=str(tmp_path))
  # skip_missing drops what is not on this machine; the clean split is missing too
  assert list(registry.iter_shifted("mnist", names, data_dir=str(tmp_path), skip_missing=True)) == []


def test_text_sets():
  with tfds.testing.mock_data(num_examples=6):
    vocab = data.load("imdb_reviews", "train", val_size=2, vocab_size=50, maxlen=12).vocab
    raw = data.load("imdb_reviews", "test", encode=False)
    t = registry.load_shifted("imdb_reviews/text/word_dropout/5", vocab=vocab, maxlen=12)
    y = registry.load_shifted("imdb_reviews/natural/yelp_polarity", vocab=vocab, maxlen=12)
  expected = text_lib.encode(text.shift_texts("word_dropout", 0, raw.x, 5), vocab, 12)
  np.testing.assert_array_equal(t.x, expected)
  assert t.x.shape == (6, 12) and t.num_classes == 2 and t.vocab == vocab
  assert y.name == "imdb_reviews/natural/yelp_polarity" and y.x.shape == (6, 12)


def test_show_shifts_writes_a_contact_sheet(tmp_path):
  from qsim.shifts import sheets as show_shifts

  path = show_shifts.contact_sheet(
      "fashion_mnist_debian",
      str(tmp_path / "sheet.png"),
      samples=2,
      corruptions=["stripe", "brightness", "canny_edges"],
  )
  from PIL import Image

  img = np.asarray(Image.open(path).convert("L"), np.float32)
  assert img.shape[1] > 600 and img.shape[0] > 200 and not os.path.exists(path + ".tmp.png")
  assert img.std() > 20  # a picture, not a blank page
  with pytest.raises(ValueError, match="corruption='snow' is not valid for suite 'mnist_c'"):
    show_shifts.contact_sheet("fashion_mnist_debian", str(tmp_path / "x.png"), corruptions=["snow"])
  with pytest.raises(ValueError, match="samples=0 is not valid"):
    show_shifts.contact_sheet("fashion_mnist_debian", str(tmp_path / "x.png"), samples=0)


def test_show_shifts_text_sheet(tmp_path):
  from qsim.shifts import sheets as show_shifts

  with tfds.testing.mock_data(num_examples=3):
    path = show_shifts.text_sheet("imdb_reviews", str(tmp_path / "t.md"))
  body = open(path).read()
  assert body.count("## ") == len(text.TEXT_SHIFTS) and body.count("- severity ") == 4 * len(text.SEVERITIES)
