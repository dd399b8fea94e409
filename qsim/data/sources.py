"""One interface for every dataset: ``load(name, split) -> Data``.

Sources:
* ``fashion_mnist_debian``: the embedded offline default, read directly from
  Debian's ``dataset-fashion-mnist`` IDX files (no TFDS preparation needed).
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``imdb_reviews``: through
  ``tfds.data_source`` (array_record files; no TensorFlow needed) with
  ``download=False`` by default.

Splits: 'train' and 'val' partition the dataset's training split (the last
``val_size`` examples are validation: model selection never sees the test
set); 'test' is the test split. Images come as float32 NHWC in [0, 1]; text
as int32 token ids (see :mod:`qsim.data.text`; the vocabulary is built from
the 'train' part only and returned with the data so a run can save it), or as
the raw review strings with ``encode=False``. Shifted test sets (MNIST-C,
CIFAR-10-C, CIFAR-10.1, Yelp polarity) are in :mod:`qsim.data.shifted`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from qsim.data import iwildcam
from qsim.data import text as text_lib
from qsim.data.fashion_mnist import load_fashion_mnist
from qsim.distributed import Shard

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  kind: str  # 'image' | 'text'
  num_classes: int
  val_size: int
  source: str  # 'debian' | 'tfds' | 'wilds'


DATASETS = {
    "fashion_mnist_debian": DatasetInfo("image", 10, 5000, "debian"),
    "mnist": DatasetInfo("image", 10, 5000, "tfds"),
    "fashion_mnist": DatasetInfo("image", 10, 5000, "tfds"),
    "cifar10": DatasetInfo("image", 10, 5000, "tfds"),
    "imdb_reviews": DatasetInfo("text", 2, 2500, "tfds"),
    # WILDS's own splits: 'val' is id_val, not carved from train (qsim.data.iwildcam)
    "iwildcam": DatasetInfo("image", iwildcam.NUM_CLASSES, 0, "wilds"),
}


@dataclasses.dataclass
class Data:
  """A split as arrays: ``x`` (images, token ids or raw texts), ``y`` int32 labels."""

  name: str
  split: str
  x: np.ndarray | list[str]
  y: np.ndarray
  num_classes: int
  vocab: list[str] | None = None
  offset: int = 0  # index of x[0] in the whole set (a process's block starts there)
  domains: np.ndarray | None = None  # per-example domain (iWildCam: the camera location), where the data has one

  def __len__(self) -> int:
    return len(self.y)


def _not_prepared_error(name: str, looked_in: str, data_dir: str | None) -> FileNotFoundError:
  """The error for a TFDS dataset (``name`` may be 'name/config') not on this machine."""
  return FileNotFoundError(
      f"dataset {name!r} is not prepared: looked in {looked_in}."
      f" Prepare it where there is internet with: tfds build {name}"
      f" --data_dir={data_dir or '~/tensorflow_datasets'} --file_format=array_record,"
      " then copy that folder here (or pass download=True)"
  )


def span(n: int, limit: int | None = None, shard: Shard | None = None, start: int = 0) -> tuple[int, int]:
  """``(start, stop)`` of ``shard``'s block of the first ``limit`` of the ``n`` examples that begin at ``start``.

  Args:
    n: number of examples.
    limit: keep only the first ``limit`` of them; None = all.
    shard: the block to take; None = all.
    start: index of the first example in the source.

  Returns:
    ``(start, stop)``: the block's indices in the source, ``stop`` exclusive.
  """
  n = n if limit is None else min(limit, n)
  a, b = (shard or Shard()).bounds(n)
  return start + a, start + b


def read_tfds_split(
    name: str,
    split: str,
    data_dir: str | None,
    download: bool,
    limit: int | None = None,
    shard: Shard | None = None,
    select=None,
):
  """Examples of a TFDS split (``name`` may be 'name/config').

  ``shard``'s block of the first ``limit`` (default all), or ``select(len) -> (start, stop)``; only those are read.

  Args:
    name: TFDS dataset name, optionally 'name/config'.
    split: TFDS split name, e.g. 'train' or 'test'.
    data_dir: TFDS data_dir; None = TFDS's default.
    download: let TFDS download and prepare (needs internet).
    limit: only the first ``limit`` examples; None = all.
    shard: only this block of them; None = all.
    select: if given, ``select(len(split)) -> (start, stop)`` picks the examples (``limit`` and ``shard`` unused).

  Returns:
    ``(examples, start)``: the example dicts, and the split index of the first one.

  Raises:
    FileNotFoundError: the data is not prepared on this machine; the message names the dataset/config, where it
      looked, and the ``tfds build`` command that prepares it.
  """
  import tensorflow_datasets as tfds  # heavy import: only when used

  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except Exception as e:  # pylint: disable=broad-except
    builder = tfds.builder(name, data_dir=data_dir)
    if download or builder.is_prepared():
      raise
    raise _not_prepared_error(name, str(builder.data_dir), data_dir) from e
  start, stop = select(len(source)) if select is not None else span(len(source), limit, shard)
  # One index at a time: ``__getitems__`` is broken under tfds.testing.mock_data.
  return [source[i] for i in range(start, stop)], start


def image_arrays(examples) -> tuple[np.ndarray, np.ndarray]:
  """TFDS image examples as (float32 images in [0, 1], int32 labels).

  Args:
    examples: TFDS example dicts with a uint8 'image' (H, W, C) and a 'label'.

  Returns:
    ``(x, y)``: images float32 (N, H, W, C) in [0, 1], labels int32 (N,).
  """
  x = np.stack([np.asarray(e["image"]) for e in examples]).astype(np.float32) / 255.0
  y = np.asarray([int(e["label"]) for e in examples], np.int32)
  return x, y


def text_arrays(examples) -> tuple[list[str], np.ndarray]:
  """TFDS text examples as (decoded strings, int32 labels).

  Args:
    examples: TFDS example dicts with a 'text' (bytes or str) and a 'label'.

  Returns:
    ``(x, y)``: a list of N strings (bytes decoded as UTF-8, bad bytes replaced), labels int32 (N,).
  """
  raw = (e["text"] for e in examples)
  x = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in raw]
  return x, np.asarray([int(e["label"]) for e in examples], np.int32)


def check_limit(limit: int | None) -> None:
  """Raises ``ValueError`` unless ``limit`` is None or an int >= 1.

  Args:
    limit: the value to check.

  Raises:
    ValueError: ``limit`` is not None or an int >= 1 (bools rejected).
  """
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
    raise ValueError(f"limit={limit!r} is not valid; give an int >= 1 or None")


def _raw(name: str, tfds_split: str, data_dir: str | None, download: bool, select):
  """Examples ``select(len) -> (start, stop)`` of a split; TFDS reads only those."""
  info = DATASETS[name]
  if info.source == "debian":  # one gzipped file per split: read whole, then cut
    x, y = load_fashion_mnist(tfds_split, **({} if data_dir is None else {"data_dir": data_dir}))
    start, stop = select(len(y))
    return x[start:stop], y[start:stop]
  examples, _ = read_tfds_split(name, tfds_split, data_dir, download, select=select)
  return image_arrays(examples) if info.kind == "image" else text_arrays(examples)


def _take(x, idx):
  return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def load(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    val_size: int | None = None,
    limit: int | None = None,
    vocab: Sequence[str] | None = None,
    vocab_size: int = 20000,
    maxlen: int = 200,
    encode: bool = True,
    shard: Shard | None = None,
) -> Data:
  """Loads one split of a dataset as arrays.

  Args:
    name: one of ``DATASETS``.
    split: 'train', 'val' or 'test'.
    data_dir: where the data lives (TFDS data_dir, the IDX folder for
      ``fashion_mnist_debian``, the ``iwildcam_v2.0`` folder for
      ``iwildcam``); None = the source's default.
    download: let TFDS download and prepare (needs internet).
    val_size: examples carved from the end of the training split for 'val'
      (default: the dataset's, e.g. 5,000 for the image sets; iWildCam's
      'val' is WILDS's id_val split, 'test' its id_test).
    limit: keep only the first ``limit`` examples of the split (e.g. the
      study's 5,000 IMDb training reviews).
    vocab: text only: the vocabulary to encode with; None = built from this
      'train' split (then required for 'val' and 'test').
    vocab_size, maxlen: text only: vocabulary size (with pad and OOV ids) and
      sequence length.
    encode: text only: False returns ``x`` as the raw texts (a list of str)
      instead of token ids; no vocabulary is then built or needed.
    shard: only this block of the split (after ``val_size`` and ``limit``),
      e.g. ``qsim.distributed.process_shard()`` in a multi-process run; only
      the block's examples are read from TFDS (Debian's gzipped files are read
      whole, then cut); ``Data.offset`` says where the block starts. A text
      'train' split loaded without ``vocab`` still reads every text: the
      vocabulary is built from all of them.

  Returns:
    :class:`Data` with ``x`` as float32 images (N, H, W, C) in [0, 1], int32 token ids (N, ``maxlen``), or raw texts
    (``encode=False``); ``y`` int32 labels (N,); ``vocab`` the text vocabulary (None when none was given or
    built); ``offset`` the index of ``x[0]`` in the split; ``domains`` iWildCam's camera locations.

  Raises:
    ValueError: unknown dataset or split, or a bad size (message lists the
      valid choices).
    FileNotFoundError: the data is not on this machine; the message names the
      dataset, where it looked, and the command that prepares it.
  """
  if name not in DATASETS:
    raise ValueError(f"dataset={name!r} is not valid; choose one of {sorted(DATASETS)}")
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not valid; choose one of {list(SPLITS)}")
  info = DATASETS[name]
  val_size = info.val_size if val_size is None else val_size
  if limit is not None:
    check_limit(limit)
  shard = shard or Shard()
  if info.source == "wilds":
    x, y, domains, offset = iwildcam.load_split(
        iwildcam.QSIM_SPLITS[split], lambda n: span(n, limit, shard), data_dir=data_dir
    )
    return Data(name, split, x, y, info.num_classes, offset=offset, domains=domains)
  where = {}

  def select(part: Shard):
    def f(n):  # the split's (start, stop) in the source; remembers the block's offset within the split
      first = 0
      if split != "test":
        if not 0 < val_size < n:
          raise ValueError(f"val_size={val_size} is not valid for {name!r}; give 0 < val_size < {n}")
        n, first = (n - val_size, 0) if split == "train" else (val_size, n - val_size)
      start, stop = span(n, limit, part, first)
      where["offset"] = start - first
      return start, stop

    return f

  # a vocabulary built here needs every training text: read them all, cut the block after
  whole_for_vocab = info.kind == "text" and encode and vocab is None and split == "train" and not shard.whole
  x, y = _raw(
      name, "test" if split == "test" else "train", data_dir, download, select(Shard() if whole_for_vocab else shard)
  )
  offset = where["offset"]
  if whole_for_vocab:
    vocab = text_lib.build_vocab(x, vocab_size)
    offset, stop = shard.bounds(len(y))
    x, y = _take(x, np.arange(offset, stop)), y[offset:stop]
  if info.kind == "text" and encode:
    if vocab is None:
      if split != "train":
        raise ValueError(
            f"split={split!r} of {name!r} needs vocab=: the vocabulary of the training run"
            " (qsim.data.text.load_vocab('<workdir>/vocab.json'), or load(..., 'train').vocab)"
        )
      vocab = text_lib.build_vocab(x, vocab_size)
    if len(vocab) + 2 > vocab_size:
      raise ValueError(f"vocab has {len(vocab)} words (+2 ids for pad and OOV) but vocab_size={vocab_size}")
    x = text_lib.encode(x, vocab, maxlen)
  return Data(name, split, x, y, info.num_classes, list(vocab) if vocab is not None else None, offset)
