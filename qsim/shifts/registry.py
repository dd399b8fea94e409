"""Named shifted test sets: what exists for a dataset, and loading them.

Names are ``<dataset>/<family>/...``:

* ``<dataset>/c/<corruption>/<severity>``: the dataset's test split with a
  synthetic corruption of its suite (MNIST-C's 15 for the 28x28 gray sets,
  CIFAR-10-C's 19 for CIFAR-10), computed by :mod:`qsim.shifts.image`; the
  key is derived from ``seed`` and the set's name, so a set is the same
  every time and independent of which other sets are loaded.
* ``mnist/official_c/<corruption>``: the published MNIST-C (TFDS
  ``mnist_corrupted``; one severity per corruption).
* ``cifar10/official_c/<corruption>/<severity>``: the published CIFAR-10-C
  (TFDS ``cifar10_corrupted``).
* ``cifar10/natural/cifar10_1_v4`` and ``..._v6``: CIFAR-10.1 (TFDS).
* ``imdb_reviews/text/<shift>/<severity>``: the IMDb test reviews with a
  seeded text shift (:mod:`qsim.shifts.text`) applied before encoding.
* ``imdb_reviews/natural/yelp_polarity``: Yelp polarity test reviews.
* ``iwildcam/natural/ood_test`` and ``.../ood_val``: iWildCam-WILDS's OOD
  test and validation splits, camera locations never seen in training (the
  study's natural shift; :mod:`qsim.data.iwildcam`, whose clean 'test' is
  WILDS's in-distribution id_test).

``fashion_mnist`` reads its clean test split from Debian's
``dataset-fashion-mnist`` files when TFDS's copy is not prepared (the same
10,000 images), so its shifted sets work offline.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator, Sequence

import jax
import numpy as np

from qsim import data as data_lib
from qsim.data import iwildcam
from qsim.data import shifted as official
from qsim.data import sources
from qsim.data import text as text_lib
from qsim.distributed import Shard
from qsim.shifts import image, text

SUITE_OF = {"mnist": "mnist_c", "fashion_mnist": "mnist_c", "fashion_mnist_debian": "mnist_c", "cifar10": "cifar10_c"}
TEXT_DATASETS = ("imdb_reviews",)
NATURAL_ONLY = {"iwildcam": {"ood_test": "test", "ood_val": "val"}}  # set -> WILDS split
DATASETS = tuple(SUITE_OF) + TEXT_DATASETS + tuple(NATURAL_ONLY)
STUDY_DATASETS = ("mnist", "cifar10", "imdb_reviews", "iwildcam")


@dataclasses.dataclass(frozen=True)
class ShiftedSet:
  """One named shifted test set (parsed from its name)."""

  name: str
  dataset: str
  family: str  # 'c' | 'official_c' | 'natural' | 'text'
  shift: str  # corruption, text shift, or natural set
  severity: int | None

  @property
  def offline(self) -> bool:
    """True when it needs nothing but the clean test split (synthetic)."""
    return self.family in ("c", "text")


CLEAN = "clean"  # the name (and family) of a dataset's clean test split


def clean_set(dataset: str) -> ShiftedSet:
  """The clean test split of ``dataset`` as a set object (family 'clean', no shift).

  Args:
    dataset: the dataset's name.

  Returns:
    The set named 'clean'; :func:`qsim.evaluate.sweep.load_set` loads it as the test split.
  """
  return ShiftedSet(CLEAN, dataset, CLEAN, "", None)


def _names(dataset: str) -> list[str]:
  out = []
  if dataset in SUITE_OF:
    suite = image.SUITES[SUITE_OF[dataset]]
    out += [f"{dataset}/c/{c}/{s}" for c in suite for s in image.SEVERITIES]
  if dataset == "mnist":
    out += [f"mnist/official_c/{c}" for c in official.MNIST_C]
  if dataset == "cifar10":
    out += [f"cifar10/official_c/{c}/{s}" for c in official.CIFAR10_C for s in official.SEVERITIES]
    out += [f"cifar10/natural/cifar10_1_{v}" for v in official.CIFAR10_1_VERSIONS]
  if dataset == "imdb_reviews":
    out += [f"imdb_reviews/text/{t}/{s}" for t in sorted(text.TEXT_SHIFTS) for s in text.SEVERITIES]
    out += ["imdb_reviews/natural/yelp_polarity"]
  out += [f"{dataset}/natural/{n}" for n in NATURAL_ONLY.get(dataset, ())]
  return out


def list_shifts(dataset: str, families: Sequence[str] | None = None) -> list[str]:
  """Every shifted set the registry offers for ``dataset``.

  Args:
    dataset: one of ``DATASETS``.
    families: only sets of these families ('c', 'official_c', 'natural', 'text'); None = all.

  Returns:
    The sets' names, in the registry's order.

  Raises:
    ValueError: for an unknown dataset, or a family the dataset has no sets of.
  """
  if dataset not in DATASETS:
    raise ValueError(f"dataset={dataset!r} has no shifted sets; choose one of {list(DATASETS)}")
  names = _names(dataset)
  if families is not None:
    valid = sorted({parse(n).family for n in names})
    bad = [f for f in families if f not in valid]
    if bad:
      raise ValueError(f"families={bad} are not valid for {dataset!r}; choose from {valid}")
    names = [n for n in names if parse(n).family in families]
  return names


def count(datasets: Sequence[str] = STUDY_DATASETS) -> dict[str, int]:
  """Number of shifted sets per dataset (0 for a dataset qsim cannot load).

  Args:
    datasets: the datasets to count (default: the study's four).

  Returns:
    ``{dataset: number of shifted sets}``.
  """
  return {d: len(_names(d)) if d in DATASETS else 0 for d in datasets}


def parse(name: str) -> ShiftedSet:
  """Validates a shifted-set name and splits it into its parts.

  Args:
    name: a name from :func:`list_shifts`, e.g. 'fashion_mnist/c/fog/3'.

  Returns:
    The parsed :class:`ShiftedSet` (``severity`` None for names without one).

  Raises:
    ValueError: if the name is malformed or names no set (the message suggests close names).
  """
  parts = name.split("/") if isinstance(name, str) else []
  if len(parts) < 3 or parts[0] not in DATASETS:
    raise ValueError(
        f"shifted set {name!r} is not valid; names look like 'fashion_mnist/c/fog/3' with a dataset"
        f" in {list(DATASETS)}; list_shifts(dataset) lists them"
    )
  if name not in _names(parts[0]):
    close = [n for n in _names(parts[0]) if n.startswith("/".join(parts[:2]))][:6]
    raise ValueError(
        f"shifted set {name!r} does not exist; e.g. {close or _names(parts[0])[:6]}"
        f" (list_shifts({parts[0]!r}) lists all {len(_names(parts[0]))})"
    )
  severity = int(parts[3]) if len(parts) == 4 else None
  return ShiftedSet(name, parts[0], parts[1], parts[2], severity)


def clean_test(dataset: str, data_dir, download, limit, shard=None, **text_kw) -> data_lib.Data:
  """The test split the dataset's shifted sets are made from.

  Debian's copy for ``fashion_mnist`` when TFDS's is not prepared (and ``data_dir`` is None).

  Args:
    dataset: a dataset of the registry (``DATASETS``).
    data_dir: TFDS data_dir; None = TFDS's default.
    download: let TFDS download and prepare (needs internet).
    limit: only the first ``limit`` test examples; None = all.
    shard: only that block of it (after ``limit``); None = all.
    **text_kw: passed on to :func:`qsim.data.load` (e.g. ``encode=False``, ``vocab``, ``maxlen``).

  Returns:
    The test split as :class:`qsim.data.Data`.

  Raises:
    ValueError: for a bad ``limit`` or other argument (from :func:`qsim.data.load`).
    FileNotFoundError: the data is not on this machine.
  """
  try:
    return data_lib.load(dataset, "test", data_dir=data_dir, download=download, limit=limit, shard=shard, **text_kw)
  except FileNotFoundError:
    if dataset != "fashion_mnist" or data_dir is not None:
      raise
    return data_lib.load("fashion_mnist_debian", "test", limit=limit, shard=shard)


def set_key(seed: int, name: str) -> jax.Array:
  """The PRNG key of a synthetic set: from the seed and the set's name.

  Args:
    seed: the run's seed.
    name: the set's name (its CRC32 is folded into the seed's key).

  Returns:
    A typed PRNG key (``jax.random.key``).
  """
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


def load_shifted(
    name: str,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = False,
    limit: int | None = None,
    vocab: Sequence[str] | None = None,
    maxlen: int = 200,
    clean: data_lib.Data | None = None,
    shard: Shard | None = None,
) -> data_lib.Data:
  """Loads (or computes) one shifted test set as :class:`qsim.data.Data`.

  Args:
    name: a name from :func:`list_shifts`.
    seed: seeds synthetic corruptions and text shifts.
    data_dir, download: where TFDS data lives; download stays off by default.
    limit: only the first ``limit`` test examples.
    vocab, maxlen: text sets: the training run's vocabulary and length.
    clean: the clean test split, to reuse across many synthetic sets
      (``iter_shifted`` passes it); must be the dataset's test split.
    shard: only this block of the set (after ``limit``), e.g. one process's
      part of a multi-process run; synthetic sets corrupt only the block and
      equal the same examples of the whole set. With ``clean``, give that
      same block of the clean split.

  Returns:
    The set as :class:`qsim.data.Data` named ``name``: images float32 NHWC in [0, 1] or int32 token ids
    (N, ``maxlen``), int32 labels.

  Raises:
    ValueError: for an invalid name or seed, or a text set without ``vocab``.
    FileNotFoundError: the set's (or its clean split's) data is not on this machine.
  """
  s = parse(name)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} is not valid; give an int >= 0")
  if s.dataset in TEXT_DATASETS and vocab is None:
    raise ValueError(f"{name!r} needs vocab= (the training run's vocabulary, e.g. load_vocab('<workdir>/vocab.json'))")
  kw = dict(data_dir=data_dir, download=download, limit=limit)
  if s.offline:
    base = (
        clean
        if clean is not None
        else clean_test(s.dataset, **kw, shard=shard, **({"encode": False} if s.family == "text" else {}))
    )
    return apply_synthetic(name, base, seed=seed, vocab=vocab, maxlen=maxlen)
  kw["shard"] = shard
  if s.family == "official_c":
    d = official.mnist_c(s.shift, **kw) if s.dataset == "mnist" else official.cifar10_c(s.shift, s.severity, **kw)
  elif s.dataset in NATURAL_ONLY:  # iWildCam's OOD splits
    limit, shard = kw["limit"], kw["shard"]
    if limit is not None:
      sources.check_limit(limit)
    x, y, domains, offset = iwildcam.load_split(
        NATURAL_ONLY[s.dataset][s.shift], lambda n: sources.span(n, limit, shard), data_dir=data_dir
    )
    d = data_lib.Data(name, "test", x, y, iwildcam.NUM_CLASSES, offset=offset, domains=domains)
  elif s.dataset == "cifar10":  # natural
    d = official.cifar10_1(s.shift.rsplit("_", 1)[1], **kw)
  else:  # natural: Yelp
    d = official.yelp_polarity("test", vocab=vocab, maxlen=maxlen, **kw)
  return dataclasses.replace(d, name=name)


def apply_synthetic(
    name: str,
    base: data_lib.Data,
    *,
    seed: int = 0,
    key_name: str | None = None,
    vocab: Sequence[str] | None = None,
    maxlen: int = 200,
) -> data_lib.Data:
  """The synthetic shift of set ``name`` (family 'c' or 'text') applied to any images or raw texts ``base``.

  ``base`` may be any data (e.g. a candidate pool), not only the test split. The randomness comes from ``seed`` and
  ``key_name`` (default ``name``): the registry's own sets use their name; example i of ``base`` is example
  ``base.offset + i`` of its whole set.

  Args:
    name: a synthetic set's name (family 'c' or 'text').
    base: images (N, H, W, C) in [0, 1], or raw texts (loaded with ``encode=False``) for text sets.
    seed: int seed.
    key_name: name the randomness is derived from; None = ``name``.
    vocab: text sets: the training run's vocabulary to encode with.
    maxlen: text sets: token sequence length.

  Returns:
    :class:`qsim.data.Data` named ``name`` with the shifted ``x`` (images float32, or int32 token ids (N, ``maxlen``))
    and ``base``'s labels, split and offset.

  Raises:
    ValueError: for an invalid or non-synthetic name, a text set without ``vocab``, or encoded (not raw) texts.
  """
  s = parse(name)
  if not s.offline:
    raise ValueError(
        f"{name!r} is a {s.family!r} set (published data), not a synthetic shift; use one of the"
        f" 'c' or 'text' sets of {s.dataset!r}"
    )
  if s.family == "c":
    x = image.corrupt(
        SUITE_OF[s.dataset], s.shift, set_key(seed, key_name or name), base.x, s.severity, offset=base.offset
    )
    return data_lib.Data(name, base.split, np.asarray(x), base.y, base.num_classes, offset=base.offset)
  if vocab is None:
    raise ValueError(f"{name!r} needs vocab= (the training run's vocabulary, e.g. load_vocab('<workdir>/vocab.json'))")
  if len(base.x) and not isinstance(base.x[0], str):
    raise ValueError(f"{name!r} shifts raw review texts; load the base data with encode=False")
  seed_used = seed if key_name is None else zlib.crc32(f"{seed}|{key_name}".encode())
  shifted = text.shift_texts(s.shift, seed_used, base.x, s.severity, offset=base.offset)
  return data_lib.Data(
      name, base.split, text_lib.encode(shifted, vocab, maxlen), base.y, base.num_classes, list(vocab), base.offset
  )


def iter_shifted(
    dataset: str,
    names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = False,
    limit: int | None = None,
    vocab: Sequence[str] | None = None,
    maxlen: int = 200,
    skip_missing: bool = False,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """Yields ``(name, x, y)`` for each shifted set of ``dataset``, loading the clean test split once.

  All names are validated before any work.

  Args:
    dataset: one of ``DATASETS``.
    names: the sets to load (each a set of ``dataset``); None = all of them.
    seed: seeds synthetic corruptions and text shifts.
    data_dir: TFDS data_dir; None = TFDS's default.
    download: let TFDS download and prepare (needs internet).
    limit: only the first ``limit`` test examples of each set; None = all.
    vocab: text sets: the training run's vocabulary.
    maxlen: text sets: token sequence length.
    skip_missing: skip sets whose TFDS data is not on this machine instead of raising.

  Yields:
    ``(name, x, y)``: the set's name, inputs and int32 labels, as :func:`load_shifted` returns them.

  Raises:
    ValueError: for an unknown dataset, an invalid name, or a name of another dataset.
    FileNotFoundError: a set's data is missing and ``skip_missing`` is False.
  """
  names = list_shifts(dataset) if names is None else list(names)
  for n in names:
    if parse(n).dataset != dataset:
      raise ValueError(f"shifted set {n!r} is not a set of dataset {dataset!r}")
  kw = dict(data_dir=data_dir, download=download, limit=limit)
  clean = {}
  for n in names:
    s = parse(n)
    family_base = s.family if s.family in ("c", "text") else None
    try:
      if family_base and family_base not in clean:
        extra = {"encode": False} if family_base == "text" else {}
        clean[family_base] = clean_test(dataset, **kw, **extra)
      d = load_shifted(n, seed=seed, vocab=vocab, maxlen=maxlen, clean=clean.get(family_base), **kw)
    except FileNotFoundError:
      if skip_missing:
        continue
      raise
    yield n, d.x, d.y
