"""Official and natural distribution shifts, read through TFDS.

Test sets only, as :func:`qsim.data.load` returns them (images float32 NHWC
in [0, 1], labels int32; text as int32 token ids of a given vocabulary):

* MNIST-C (TFDS ``mnist_corrupted/<corruption>``), 28x28x1, 10 classes.
* CIFAR-10-C (``cifar10_corrupted/<corruption>_<severity>``), 10 classes.
* CIFAR-10.1 (``cifar10_1/<version>``), new CIFAR-10 test images.
* Yelp polarity (``yelp_polarity_reviews``): 0 = negative (1-2 stars),
  1 = positive (3-4 stars), the same meaning as ``imdb_reviews``'s neg/pos.

``download=False`` by default: data that is not prepared raises
FileNotFoundError naming the dataset/config, the folder looked in and the
``tfds build`` command that prepares it. ``shard`` (a
:class:`qsim.distributed.Shard`) reads only that block of the first
``limit`` examples (one process's part of a multi-process run).
"""

from __future__ import annotations

import numbers
from typing import Sequence

from qsim.data import text as text_lib
from qsim.data.sources import Data, check_limit, image_arrays, read_tfds_split, text_arrays
from qsim.distributed import Shard

# TFDS mnist_corrupted configs (its 'identity' config, clean MNIST, is left out).
MNIST_C = (
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
)
# TFDS cifar10_corrupted config prefixes (configs are '<name>_<severity>').
CIFAR10_C = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "defocus_blur",
    "frosted_glass_blur",
    "motion_blur",
    "zoom_blur",
    "gaussian_blur",
    "snow",
    "frost",
    "fog",
    "spatter",
    "brightness",
    "contrast",
    "saturate",
    "elastic",
    "pixelate",
    "jpeg_compression",
)
# The CIFAR-10-C paper's names for the two corruptions TFDS names differently.
CIFAR10_C_ALIASES = {"glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"}
SEVERITIES = (1, 2, 3, 4, 5)
CIFAR10_1_VERSIONS = ("v4", "v6")
YELP_SPLITS = ("train", "test")


def _check(arg: str, value, choices) -> None:
  kind = numbers.Integral if isinstance(choices[0], int) else str  # True == 1 and 3.0 == 3: reject both
  if isinstance(value, bool) or not isinstance(value, kind) or value not in choices:
    raise ValueError(f"{arg}={value!r} is not valid; choose one of {list(choices)}")


def _images_data(name: str, data_dir, download, limit, shard) -> Data:
  check_limit(limit)
  examples, offset = read_tfds_split(name, "test", data_dir, download, limit, shard)
  x, y = image_arrays(examples)
  return Data(name, "test", x, y, 10, offset=offset)


def mnist_c(
    corruption: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    limit: int | None = None,
    shard: Shard | None = None,
) -> Data:
  """The MNIST-C test set for one of ``MNIST_C``.

  Args:
    corruption: one of ``MNIST_C``.
    data_dir: TFDS data_dir; None = TFDS's default.
    download: let TFDS download and prepare (needs internet).
    limit: only the first ``limit`` test examples; None = all.
    shard: only this block of them (after ``limit``); None = all.

  Returns:
    :class:`Data` named 'mnist_corrupted/<corruption>': images float32 (N, 28, 28, 1) in [0, 1], int32 labels.

  Raises:
    ValueError: for an unknown corruption or a bad ``limit``.
    FileNotFoundError: the data is not prepared on this machine; the message names the dataset/config, where it
      looked, and the ``tfds build`` command that prepares it.
  """
  _check("corruption", corruption, MNIST_C)
  return _images_data(f"mnist_corrupted/{corruption}", data_dir, download, limit, shard)


def cifar10_c(
    corruption: str,
    severity: int,
    *,
    data_dir: str | None = None,
    download: bool = False,
    limit: int | None = None,
    shard: Shard | None = None,
) -> Data:
  """The CIFAR-10-C test set for one of ``CIFAR10_C`` (or its paper alias) at severity 1..5.

  Args:
    corruption: one of ``CIFAR10_C``, or a paper name of ``CIFAR10_C_ALIASES``.
    severity: int in 1..5.
    data_dir: TFDS data_dir; None = TFDS's default.
    download: let TFDS download and prepare (needs internet).
    limit: only the first ``limit`` test examples; None = all.
    shard: only this block of them (after ``limit``); None = all.

  Returns:
    :class:`Data` named 'cifar10_corrupted/<corruption>_<severity>': images float32 (N, 32, 32, 3) in [0, 1], int32
    labels.

  Raises:
    ValueError: for an unknown corruption, a severity outside 1..5, or a bad ``limit``.
    FileNotFoundError: the data is not prepared on this machine; the message names the dataset/config, where it
      looked, and the ``tfds build`` command that prepares it.
  """
  corruption = CIFAR10_C_ALIASES.get(corruption, corruption) if isinstance(corruption, str) else corruption
  _check("corruption", corruption, CIFAR10_C)
  _check("severity", severity, SEVERITIES)
  return _images_data(f"cifar10_corrupted/{corruption}_{severity}", data_dir, download, limit, shard)


def cifar10_1(
    version: str = "v6",
    *,
    data_dir: str | None = None,
    download: bool = False,
    limit: int | None = None,
    shard: Shard | None = None,
) -> Data:
  """CIFAR-10.1 (``v6``: 2,000 images, the paper's main set; ``v4``: 2,021).

  Args:
    version: 'v6' or 'v4'.
    data_dir: TFDS data_dir; None = TFDS's default.
    download: let TFDS download and prepare (needs internet).
    limit: only the first ``limit`` test examples; None = all.
    shard: only this block of them (after ``limit``); None = all.

  Returns:
    :class:`Data` named 'cifar10_1/<version>': images float32 (N, 32, 32, 3) in [0, 1], int32 labels.

  Raises:
    ValueError: for an unknown version or a bad ``limit``.
    FileNotFoundError: the data is not prepared on this machine; the message names the dataset/config, where it
      looked, and the ``tfds build`` command that prepares it.
  """
  _check("version", version, CIFAR10_1_VERSIONS)
  return _images_data(f"cifar10_1/{version}", data_dir, download, limit, shard)


def yelp_polarity(
    split: str = "test",
    *,
    vocab: Sequence[str] | None = None,
    maxlen: int = 200,
    data_dir: str | None = None,
    download: bool = False,
    limit: int | None = None,
    encode: bool = True,
    shard: Shard | None = None,
) -> Data:
  """Yelp polarity reviews (0 = negative, 1 = positive, as IMDb's labels).

  ``vocab`` (e.g. the IMDb training run's) is required unless ``encode=False``,
  which returns ``x`` as the raw review strings.

  Args:
    split: 'test' or 'train'.
    vocab: the vocabulary to encode with (required when ``encode``).
    maxlen: token sequence length.
    data_dir: TFDS data_dir; None = TFDS's default.
    download: let TFDS download and prepare (needs internet).
    limit: only the first ``limit`` reviews; None = all.
    encode: False returns ``x`` as the raw review strings.
    shard: only this block of them (after ``limit``); None = all.

  Returns:
    :class:`Data` named 'yelp_polarity_reviews' with 2 classes: ``x`` int32 token ids (N, ``maxlen``) or a list of
    str, ``y`` int32 labels (N,).

  Raises:
    ValueError: for an unknown split, a bad ``limit``, or no ``vocab`` while ``encode``.
    FileNotFoundError: the data is not prepared on this machine; the message names the dataset/config, where it
      looked, and the ``tfds build`` command that prepares it.
  """
  _check("split", split, YELP_SPLITS)
  check_limit(limit)
  if encode and vocab is None:
    raise ValueError("yelp_polarity needs vocab= (the training run's vocabulary) unless encode=False")
  # TFDS registers its legacy text builders only when ``tensorflow_datasets.text``
  # is imported, which its own import skips when an optional dependency (h5py)
  # of an earlier module is missing.
  import tensorflow_datasets.text.yelp_polarity  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  name = "yelp_polarity_reviews"
  examples, offset = read_tfds_split(name, split, data_dir, download, limit, shard)
  x, y = text_arrays(examples)
  if encode:
    x = text_lib.encode(x, vocab, maxlen)
  return Data(name, split, x, y, 2, list(vocab) if vocab is not None else None, offset)
