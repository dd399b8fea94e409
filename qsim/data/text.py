"""Text to token ids, as the study's IMDb models see it.

Lower-cased words (``[a-z0-9']+``, HTML line breaks removed), a vocabulary of
the most frequent training words (id 0 = padding, 1 = out-of-vocabulary),
sequences padded and truncated at the front to ``maxlen`` (Keras
``pad_sequences`` defaults, as in the study's code).
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

PAD, OOV = 0, 1
_WORD = re.compile(r"[a-z0-9']+")


def tokenize(text: str | bytes) -> list[str]:
  """Lower-cased words ``[a-z0-9']+`` of a text, HTML line breaks (``<br />``) removed.

  Args:
    text: the text; bytes are decoded as UTF-8 (bad bytes replaced).

  Returns:
    The words, in order.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  return _WORD.findall(text.lower().replace("<br />", " "))


def build_vocab(texts: Iterable[str | bytes], size: int = 20000) -> list[str]:
  """The ``size - 2`` most frequent words (ties broken alphabetically).

  Args:
    texts: the training texts (str, or UTF-8 bytes).
    size: vocabulary size counting the pad and OOV ids, >= 3.

  Returns:
    At most ``size - 2`` words, most frequent first; word i gets id i + 2.

  Raises:
    ValueError: ``size`` < 3.
  """
  if size < 3:
    raise ValueError(f"vocab size={size} is not valid; give an int >= 3")
  counts = collections.Counter(w for t in texts for w in tokenize(t))
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return [w for w, _ in ranked[: size - 2]]


def encode(texts: Sequence[str | bytes], vocab: Sequence[str], maxlen: int = 200) -> np.ndarray:
  """Token ids ``(len(texts), maxlen)`` int32, pre-padded and pre-truncated.

  Args:
    texts: the texts (str, or UTF-8 bytes).
    vocab: the vocabulary; word i gets id i + 2 (0 = padding, 1 = out-of-vocabulary).
    maxlen: sequence length; longer texts keep their last ``maxlen`` tokens.

  Returns:
    int32 array (len(texts), maxlen), each row left-padded with 0.
  """
  index = {w: i + 2 for i, w in enumerate(vocab)}
  out = np.zeros((len(texts), maxlen), np.int32)
  for row, t in enumerate(texts):
    ids = [index.get(w, OOV) for w in tokenize(t)][-maxlen:]
    if ids:
      out[row, maxlen - len(ids) :] = ids
  return out


def save_vocab(path: str, vocab: Sequence[str]) -> None:
  """Writes a vocabulary as a JSON list of words (atomically, through ``path + '.tmp'``).

  Args:
    path: the file to write.
    vocab: the words in id order (word i has id i + 2).
  """
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(list(vocab), f)
  os.replace(tmp, path)


def load_vocab(path: str) -> list[str]:
  """Reads a vocabulary written by :func:`save_vocab`.

  Args:
    path: the JSON file.

  Returns:
    The words in id order (word i has id i + 2).

  Raises:
    FileNotFoundError: there is no file at ``path``.
    ValueError: the file is not JSON, or not a JSON list of strings.
  """
  with open(path) as f:
    vocab = json.load(f)
  if not (isinstance(vocab, list) and all(isinstance(w, str) for w in vocab)):
    raise ValueError(f"{path} is not a qsim vocabulary (a JSON list of words)")
  return vocab
