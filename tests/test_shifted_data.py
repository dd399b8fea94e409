"""Shifted test sets through TFDS (mocked): MNIST-C, CIFAR-10-C, CIFAR-10.1, Yelp."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from qsim import data
from qsim.data import shifted


def _check_images(d, n, shape, name):
  assert d.name == name and d.split == "test" and len(d) == n
  assert d.x.shape == (n, *shape) and d.x.dtype == np.float32
  assert 0.0 <= d.x.min() and d.x.max() <= 1.0 and d.x.max() > 0.0
  assert d.y.dtype == np.int32 and set(d.y.tolist()) <= set(range(10)) and d.num_classes == 10


def test_config_names_are_tfds_configs():
  mnist = {c.name for c in tfds.builder_cls("mnist_corrupted").BUILDER_CONFIGS}
  cifar = {c.name for c in tfds.builder_cls("cifar10_corrupted").BUILDER_CONFIGS}
  assert len(data.MNIST_C) == 15 and mnist == set(data.MNIST_C) | {"identity"}
  assert len(data.CIFAR10_C) == 19 and cifar == {f"{c}_{s}" for c in data.CIFAR10_C for s in range(1, 6)}
  assert {c.name for c in tfds.builder_cls("cifar10_1").BUILDER_CONFIGS} == set(data.CIFAR10_1_VERSIONS)


@pytest.mark.parametrize("corruption", ["fog", "canny_edges"])
def test_mnist_c(corruption):
  with tfds.testing.mock_data(num_examples=6):
    d = data.mnist_c(corruption)
  _check_images(d, 6, (28, 28, 1), f"mnist_corrupted/{corruption}")


@pytest.mark.parametrize(
    "corruption,severity,config",
    [
        ("fog", 3, "fog_3"),
        ("gaussian_noise", 1, "gaussian_noise_1"),
        ("elastic", 5, "elastic_5"),
        ("glass_blur", np.int64(5), "frosted_glass_blur_5"),
        ("elastic_transform", 2, "elastic_2"),
    ],
)
def test_cifar10_c(corruption, severity, config):
  with tfds.testing.mock_data(num_examples=5):
    d = data.cifar10_c(corruption, severity)
  _check_images(d, 5, (32, 32, 3), f"cifar10_corrupted/{config}")


@pytest.mark.parametrize("version", [None, "v4"])
def test_cifar10_1(version):
  with tfds.testing.mock_data(num_examples=5):
    d = data.cifar10_1() if version is None else data.cifar10_1(version)
  _check_images(d, 5, (32, 32, 3), f"cifar10_1/{version or 'v6'}")


def test_limit_keeps_the_first_examples():
  with tfds.testing.mock_data(num_examples=8):
    full = data.cifar10_c("snow", 2)
    few = data.cifar10_c("snow", 2, limit=3)
    more = data.mnist_c("fog", limit=100)
  assert len(few) == 3 and len(more) == 8
  np.testing.assert_array_equal(few.x, full.x[:3])
  np.testing.assert_array_equal(few.y, full.y[:3])


def test_yelp_encodes_with_imdb_vocab_and_raw_strings():
  with tfds.testing.mock_data(num_examples=10):
    vocab = data.load("imdb_reviews", "train", val_size=2, vocab_size=40).vocab
    enc = data.yelp_polarity(vocab=vocab, maxlen=7)
    raw = data.yelp_polarity(encode=False, limit=4)
    train = data.yelp_polarity("train", vocab=vocab, maxlen=7, limit=3)
    imdb_raw = data.load("imdb_reviews", "test", encode=False)
  assert enc.name == "yelp_polarity_reviews" and enc.split == "test" and enc.num_classes == 2
  assert enc.x.shape == (10, 7) and enc.x.dtype == np.int32 and enc.vocab == vocab
  assert 0 <= enc.x.min() and enc.x.max() < len(vocab) + 2
  assert enc.y.dtype == np.int32 and set(enc.y.tolist()) <= {0, 1}
  assert train.split == "train" and train.x.shape == (3, 7)
  assert isinstance(raw.x, list) and len(raw.x) == 4 and all(isinstance(t, str) for t in raw.x)
  np.testing.assert_array_equal(data.text.encode(raw.x, vocab, 7), enc.x[:4])
  assert isinstance(imdb_raw.x, list) and len(imdb_raw) == 10 and all(isinstance(t, str) for t in imdb_raw.x)
  assert imdb_raw.vocab is None and imdb_raw.num_classes == 2


def test_yelp_labels_mean_negative_then_positive(tmp_path):
  # TFDS maps the CSV's class '1' (1-2 stars, negative) to 0 and '2' (positive) to 1, as imdb's neg/pos.
  import tensorflow_datasets.text.yelp_polarity  # noqa: F401  (registers the builder)

  yelp = tfds.builder("yelp_polarity_reviews", data_dir=str(tmp_path)).info.features["label"]
  imdb = tfds.builder("imdb_reviews", data_dir=str(tmp_path)).info.features["label"]
  assert yelp.names == ["1", "2"] and imdb.names == ["neg", "pos"]


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: data.mnist_c("snow"),
            r"corruption='snow' is not valid; choose one of \['shot_noise', .*'canny_edges'\]",
        ),
        (lambda: data.mnist_c("identity"), r"corruption='identity' is not valid"),
        (lambda: data.cifar10_c("stripe", 1), r"corruption='stripe' is not valid; choose one of \['gaussian_noise', "),
        (lambda: data.cifar10_c("fog", 0), r"severity=0 is not valid; choose one of \[1, 2, 3, 4, 5\]"),
        (lambda: data.cifar10_c("fog", 6), r"severity=6 is not valid; choose one of \[1, 2, 3, 4, 5\]"),
        (lambda: data.cifar10_c("fog", True), r"severity=True is not valid"),
        (lambda: data.cifar10_c("fog", 3.0), r"severity=3.0 is not valid"),
        (lambda: data.cifar10_c("fog", "3"), r"severity='3' is not valid"),
        (lambda: data.cifar10_1("v5"), r"version='v5' is not valid; choose one of \['v4', 'v6'\]"),
        (lambda: data.cifar10_c("fog", 1, limit=0), r"limit=0 is not valid"),
        (lambda: data.mnist_c("fog", limit=-1), r"limit=-1 is not valid"),
        (lambda: data.cifar10_1(limit=0), r"limit=0 is not valid"),
        (lambda: data.yelp_polarity(encode=False, limit=0), r"limit=0 is not valid"),
        (
            lambda: data.yelp_polarity("validation", encode=False),
            r"split='validation' is not valid; choose one of \['train', 'test'\]",
        ),
        (lambda: data.yelp_polarity(), r"needs vocab="),
    ],
)
def test_bad_inputs_list_choices(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize(
    "call,config",
    [
        (lambda d: data.mnist_c("fog", data_dir=d), "mnist_corrupted/fog"),
        (lambda d: data.cifar10_c("fog", 3, data_dir=d), "cifar10_corrupted/fog_3"),
        (lambda d: data.cifar10_1(data_dir=d), "cifar10_1/v6"),
        (lambda d: data.yelp_polarity(data_dir=d, encode=False), "yelp_polarity_reviews"),
    ],
)
def test_missing_data_names_config_folder_and_command(tmp_path, call, config):
  with pytest.raises(FileNotFoundError) as e:
    call(str(tmp_path))
  msg = str(e.value)
  assert f"dataset '{config}' is not prepared" in msg and str(tmp_path / config) in msg
  assert f"tfds build {config} --data_dir={tmp_path}" in msg and "--file_format=array_record" in msg


def test_module_exports():
  assert data.cifar10_c is shifted.cifar10_c and data.yelp_polarity is shifted.yelp_polarity


def _fixed_examples(labels, shape, seen):
  """A TFDS ``as_data_source`` stand-in with known content (image i filled with 10 * labels[i]) that
  records the ``dataset/config`` and split asked for in ``seen``."""

  def as_data_source(self, split=None, *args, **kwargs):  # pylint: disable=unused-argument,keyword-arg-before-vararg
    seen.append(f"{self.name}/{self.builder_config.name}:{split}")
    return [{"image": np.full(shape, 10 * lab, np.uint8), "label": np.int64(lab)} for lab in labels]

  return as_data_source


@pytest.mark.parametrize(
    "name,shape,config",
    [
        ("mnist/official_c/rotate", (28, 28, 1), "mnist_corrupted/rotate"),
        ("cifar10/official_c/frosted_glass_blur/5", (32, 32, 3), "cifar10_corrupted/frosted_glass_blur_5"),
        ("cifar10/official_c/elastic/2", (32, 32, 3), "cifar10_corrupted/elastic_2"),
        ("cifar10/natural/cifar10_1_v4", (32, 32, 3), "cifar10_1/v4"),
    ],
)
def test_official_sets_keep_each_examples_label_and_read_their_config(name, shape, config):
  """A shifted set's name reaches the TFDS config it means, and each example keeps its own label, in
  order, as the class index of the clean dataset (TFDS's mnist_corrupted / cifar10_corrupted /
  cifar10_1 declare the same 10 classes as mnist / cifar10); images are that example's pixels / 255."""
  from qsim.shifts import registry

  labels, seen = [3, 1, 4, 1, 5, 9, 2, 6], []
  with tfds.testing.mock_data(as_data_source_fn=_fixed_examples(labels, shape, seen)):
    d = registry.load_shifted(name)
  assert seen == [f"{config}:test"] and d.name == name and d.num_classes == 10
  assert d.y.tolist() == labels and d.y.dtype == np.int32
  np.testing.assert_array_equal(d.x, np.stack([np.full(shape, 10 * lab / 255.0, np.float32) for lab in labels]))
  clean = "mnist" if config.startswith("mnist") else "cifar10"
  assert tfds.builder(config).info.features["label"].names == tfds.builder(clean).info.features["label"].names
