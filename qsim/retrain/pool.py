"""The data of a retraining run, every sample with an id saying where it came from.

Ids name a sample's place in the dataset's published splits: ``train:<i>``
(``i`` indexes the whole training split, before the validation part is
carved from its end, so ``val[0]`` of Fashion-MNIST is ``train:55000``) or
``test:<i>``; published shifted sets of other data use their own prefix
(``cifar10_1_v6:<i>``). A shifted copy keeps its base id and adds the shift
(``train:55003~c/fog/1``). Selection and measurement are kept apart by
:func:`check_disjoint` on the base ids: the candidate pool must share no
sample with the fine-tuning data or with any evaluated set.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from qsim import data as data_lib
from qsim.shifts import registry

_SPEC = re.compile(r"^(train|val|test)(?:\[(\d*):(\d*)\])?$")


@dataclasses.dataclass
class Part:
  """Samples (images, token ids or raw texts), labels and ids."""

  name: str
  x: np.ndarray | list
  y: np.ndarray
  ids: np.ndarray

  def __len__(self) -> int:
    return len(self.y)

  def take(self, idx) -> "Part":
    """A subset of the samples, in the order given.

    Args:
      idx: integer indices into this part (repeats allowed).

    Returns:
      A new part with the same name holding the samples, labels and ids at ``idx``.
    """
    idx = np.asarray(idx, np.int64)
    x = self.x[idx] if isinstance(self.x, np.ndarray) else [self.x[i] for i in idx]
    return Part(self.name, x, self.y[idx], self.ids[idx])


def parse_split(spec: str) -> tuple[str, slice]:
  """'val', 'val[:2500]', 'test[5000:]', 'train[50000:55000]' -> (split, slice).

  Args:
    spec: a split name (train, val or test), optionally followed by a Python
      slice ``[start:stop]`` without a step; surrounding whitespace is ignored.

  Returns:
    The split name and the slice (``slice(None, None)`` when unsliced).

  Raises:
    ValueError: ``spec`` is not a string of that form.
  """
  m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
  if not m:
    raise ValueError(
        f"split {spec!r} is not valid; use train, val or test, optionally sliced like 'val[:2500]' or 'test[5000:]'"
    )
  to_int = lambda s: int(s) if s else None  # noqa: E731
  return m.group(1), slice(to_int(m.group(2)), to_int(m.group(3)))


def base_ids(ids: np.ndarray) -> np.ndarray:
  """Ids without their shift suffix.

  Args:
    ids: sample ids, e.g. ``train:55003~c/fog/1``.

  Returns:
    The ids cut at the first '~' (``train:55003``), as a str array.
  """
  return np.asarray([s.split("~", 1)[0] for s in ids.tolist()], dtype=str)


def check_disjoint(pool: np.ndarray, others: dict[str, np.ndarray]) -> None:
  """Raises ``ValueError`` if the pool shares a (base) sample id with any of
  ``others`` (e.g. the fine-tuning data and the evaluation sets).

  Ids are compared without their shift suffix (see :func:`base_ids`).

  Args:
    pool: the candidate pool's sample ids.
    others: the ids of each set the pool must not overlap, by a name used in
      the error message.

  Raises:
    ValueError: the pool shares a sample with one of ``others``.
  """
  pool_set = set(base_ids(pool).tolist())
  for name, ids in others.items():
    shared = pool_set.intersection(base_ids(ids).tolist())
    if shared:
      raise ValueError(
          f"the candidate pool and {name} share {len(shared)} samples (e.g. {sorted(shared)[0]}); choose"
          " a pool outside them (default: pool='val', the held-out end of the training split)"
      )


class Splits:
  """One dataset's splits as :class:`Part` s with ids, loaded once."""

  def __init__(
      self,
      dataset: str,
      *,
      val_size: int | None = None,
      data_dir: str | None = None,
      vocab: Sequence[str] | None = None,
      vocab_size: int = 20000,
  ):
    if dataset not in data_lib.DATASETS:
      raise ValueError(f"dataset={dataset!r} is not valid; choose one of {sorted(data_lib.DATASETS)}")
    self.dataset = dataset
    self.text = data_lib.DATASETS[dataset].kind == "text"
    self._kw = dict(data_dir=data_dir, val_size=val_size)
    self._text_kw = {} if not self.text else {"vocab": vocab, "vocab_size": vocab_size}
    self._cache: dict[tuple[str, bool], data_lib.Data] = {}

  def _load(self, split: str, encode: bool) -> data_lib.Data:
    if (split, encode) not in self._cache:
      extra = self._text_kw if encode else {"encode": False}
      if split == "test" and self.dataset in registry.DATASETS:
        self._cache[(split, encode)] = registry.clean_test(self.dataset, self._kw["data_dir"], False, None, **extra)
      else:
        self._cache[(split, encode)] = data_lib.load(self.dataset, split, **self._kw, **extra)
    return self._cache[(split, encode)]

  def part(self, spec: str, *, encode: bool = True) -> Part:
    """The samples of a split spec (see :func:`parse_split`).

    Args:
      spec: a split spec, e.g. 'val' or 'val[:2500]'.
      encode: for a text dataset, True gives token ids and False the raw
        reviews; ignored for images.

    Returns:
      The selected samples, named ``spec``, with ids ``train:<i>`` (train and
      val, ``i`` indexing the whole training split) or ``test:<i>``.

    Raises:
      ValueError: ``spec`` is not valid or selects no samples.
    """
    split, sl = parse_split(spec)
    d = self._load(split, encode)
    offset = len(self._load("train", encode)) if split == "val" else 0
    idx = np.arange(len(d))[sl]
    if len(idx) == 0:
      raise ValueError(
          f"split {spec!r} selects no samples ({split} of {self.dataset!r} has {len(d)}); give a non-empty slice"
      )
    prefix = "test" if split == "test" else "train"
    ids = np.char.add(f"{prefix}:", (np.arange(len(d)) + offset).astype(str))
    return Part(spec, d.x, d.y, ids).take(idx)
