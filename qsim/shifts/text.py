"""Seeded text shifts for sentiment reviews (IMDb, Yelp), on raw strings.

Each shift is ``fn(rng, words, severity) -> words`` on one review's word list
(``qsim.data.text.tokenize`` output), ``rng`` a ``numpy.random.Generator`` and
``severity`` an int in 1..5. ``shift_texts`` tokenizes each review, applies a
shift and joins the words by single spaces: tokenization lower-cases and
drops punctuation anyway, so the models lose nothing. This is host-side
numpy, like the tokenizer; review ``i`` draws from its own generator
``default_rng([seed, i, crc32(name), severity])``, so its result does not
depend on the rest of the batch and is the same in every process.

With ``n`` words and ``p = P[severity - 1]``, ``P = (.05, .1, .2, .3, .5)``,
exactly ``k = max(1, round(p * n))`` distinct words are picked:

* ``typos`` (keyboard and spelling slips): each picked word gets one
  character edit, chosen at random among those that change it: swap two
  different adjacent characters, delete one (words of 2+ characters), insert
  a random lowercase letter, or replace a letter/digit by a QWERTY neighbour.
  Words keep their positions; the Levenshtein distance is 1 (2 for a swap).
* ``word_dropout`` (missing words, terse writing): the picked words are
  deleted, at most ``n - 1``, so a non-empty review stays non-empty.
* ``word_swap`` (local word-order noise): ``max(1, round(p * n / 2))``
  picked words each swap with a different word at most ``W`` positions
  away, ``W = (1, 1, 2, 2, 3)``; about a fraction ``p`` of positions move.
* ``oov_noise`` (unknown vocabulary: names, slang, misspellings a vocabulary
  never saw): the picked words become random 10-letter lowercase strings
  (26^10 of them, so out of any real vocabulary; ``oov_noise`` also takes a
  ``vocab`` to exclude, for a guarantee).

The number of picked words never falls with severity and rises at every
step for reviews of 15+ words (30+ for ``word_swap``; IMDb reviews average
about 230), so the mean fraction of changed tokens grows strictly.
"""

from __future__ import annotations

import string
import zlib
from typing import Callable, Collection, Sequence

import numpy as np

from qsim.data.text import tokenize

SEVERITIES = (1, 2, 3, 4, 5)
P = (0.05, 0.1, 0.2, 0.3, 0.5)  # fraction of words a shift picks
SWAP_WINDOW = (1, 1, 2, 2, 3)  # word_swap: furthest swap partner
OOV_LEN = 10

TextShift = Callable[[np.random.Generator, list, int], list]

_LETTERS = string.ascii_lowercase
# QWERTY rows; each row sits about half a key right of the one above, so
# (row r, column c) touches columns c - 1, c + 1 in its row, c, c + 1 above
# and c - 1, c below. Letters neighbour letters, digits digits.
_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")


def _qwerty_neighbours() -> dict[str, str]:
  table = {}
  for r, row in enumerate(_ROWS):
    for c, ch in enumerate(row):
      near = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
      keys = [_ROWS[i][j] for i, j in near if 0 <= i < len(_ROWS) and 0 <= j < len(_ROWS[i])]
      table[ch] = "".join(k for k in keys if k.isdigit() == ch.isdigit())
  return table


NEIGHBOURS = _qwerty_neighbours()


def _count(p: float, n: int) -> int:
  """max(1, round(p * n)) for n > 0 (halves round up), at most n; 0 if n = 0."""
  return 0 if n == 0 else min(n, max(1, int(p * n + 0.5)))


def _pick(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
  return rng.choice(n, size=k, replace=False) if k else np.zeros(0, np.int64)


def _typo(rng: np.random.Generator, word: str) -> str:
  """One character edit that changes ``word``."""
  swaps = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
  subs = [i for i, ch in enumerate(word) if NEIGHBOURS.get(ch)]
  ops = ["insert"]
  if swaps:
    ops.append("swap")
  if len(word) >= 2:
    ops.append("delete")
  if subs:
    ops.append("substitute")
  op = ops[rng.integers(len(ops))]
  if op == "insert":
    i = int(rng.integers(len(word) + 1))
    return word[:i] + _LETTERS[rng.integers(26)] + word[i:]
  if op == "swap":
    i = swaps[rng.integers(len(swaps))]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
  if op == "delete":
    i = int(rng.integers(len(word)))
    return word[:i] + word[i + 1 :]
  i = subs[rng.integers(len(subs))]
  near = NEIGHBOURS[word[i]]
  return word[:i] + near[rng.integers(len(near))] + word[i + 1 :]


def typos(rng: np.random.Generator, words: list[str], severity: int) -> list[str]:
  """One character typo (swap, delete, insert, keyboard substitution) in a fraction p of the words.

  p in (.05, .1, .2, .3, .5) by severity.

  Args:
    rng: the review's random generator.
    words: the review's words (``qsim.data.text.tokenize`` output).
    severity: int in 1..5.

  Returns:
    A new list of the same length, the picked words each with one edit.
  """
  out = list(words)
  for i in sorted(_pick(rng, len(out), _count(P[severity - 1], len(out)))):
    out[i] = _typo(rng, out[i])
  return out


def word_dropout(rng: np.random.Generator, words: list[str], severity: int) -> list[str]:
  """Deletes a fraction p of the words, p in (.05, .1, .2, .3, .5), keeping at least one.

  Args:
    rng: the review's random generator.
    words: the review's words (``qsim.data.text.tokenize`` output).
    severity: int in 1..5.

  Returns:
    A new list of the remaining words, in order (an empty review stays empty).
  """
  n = len(words)
  k = min(n - 1, _count(P[severity - 1], n)) if n else 0
  drop = set(_pick(rng, n, k).tolist())
  return [w for i, w in enumerate(words) if i not in drop]


def word_swap(rng: np.random.Generator, words: list[str], severity: int) -> list[str]:
  """Swaps words locally.

  round(p n / 2) words, p in (.05, .1, .2, .3, .5), each swap with a different word at most W in (1, 1, 2, 2, 3)
  positions away.

  Args:
    rng: the review's random generator.
    words: the review's words (``qsim.data.text.tokenize`` output).
    severity: int in 1..5.

  Returns:
    A new list of the same words, some swapped.
  """
  out, n, w = list(words), len(words), SWAP_WINDOW[severity - 1]
  for i in _pick(rng, n, _count(P[severity - 1] / 2, n)):
    near = [j for j in range(max(0, i - w), min(n, i + w + 1)) if out[j] != out[i]]
    if near:
      j = near[rng.integers(len(near))]
      out[i], out[j] = out[j], out[i]
  return out


def _random_word(rng: np.random.Generator, avoid: Collection[str], word: str) -> str:
  while True:
    new = "".join(_LETTERS[c] for c in rng.integers(26, size=OOV_LEN))
    if new != word and new not in avoid:
      return new


def oov_noise(rng: np.random.Generator, words: list[str], severity: int, *, vocab: Collection[str] = ()) -> list[str]:
  """Replaces a fraction p of the words, p in (.05, .1, .2, .3, .5), by random 10-letter lowercase strings.

  A string is redrawn if in ``vocab`` (or equal to the word it replaces): a collision is so rare that the result is the
  same with or without it.

  Args:
    rng: the review's random generator.
    words: the review's words (``qsim.data.text.tokenize`` output).
    severity: int in 1..5.
    vocab: words the new strings must avoid.

  Returns:
    A new list of the same length, the picked words replaced.
  """
  out = list(words)
  for i in sorted(_pick(rng, len(out), _count(P[severity - 1], len(out)))):
    out[i] = _random_word(rng, vocab, out[i])
  return out


TEXT_SHIFTS: dict[str, TextShift] = {
    "typos": typos,
    "word_dropout": word_dropout,
    "word_swap": word_swap,
    "oov_noise": oov_noise,
}


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check(name: str, seed: int, severity: int) -> None:
  """Raises ``ValueError`` unless the shift, seed and severity are valid.

  Args:
    name: a key of ``TEXT_SHIFTS``.
    seed: int >= 0.
    severity: int in 1..5.

  Raises:
    ValueError: for an unknown shift, a severity outside 1..5 (bools and floats included) or a seed that is not an
      int >= 0.
  """
  if name not in TEXT_SHIFTS:
    raise ValueError(f"text shift={name!r} is not valid; choose one of {sorted(TEXT_SHIFTS)}")
  if not _is_int(severity) or severity not in SEVERITIES:
    raise ValueError(f"severity={severity!r} is not valid; choose one of {list(SEVERITIES)}")
  if not _is_int(seed) or seed < 0:
    raise ValueError(f"seed={seed!r} is not valid; give an int >= 0")


def shift_texts(name: str, seed: int, texts: Sequence[str | bytes], severity: int, offset: int = 0) -> list[str]:
  """Shifted reviews: ``name`` at ``severity`` on each text, words joined by single spaces.

  A review without words stays ``""``.

  Args:
    name: a key of ``TEXT_SHIFTS``.
    seed: int >= 0.
    texts: the reviews (str, or UTF-8 bytes), a sequence (not one string).
    severity: int in 1..5.
    offset: int >= 0, the index of ``texts[0]`` in the whole set (review i is seeded by ``offset + i``).

  Returns:
    One shifted, tokenized review string per text.

  Raises:
    ValueError: for an invalid name, seed, severity or offset, or ``texts`` given as one string.
  """
  check(name, seed, severity)
  if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
    raise ValueError(f"offset={offset!r} is not valid; give an int >= 0")
  if isinstance(texts, (str, bytes)):
    raise ValueError("texts must be a sequence of reviews, not one string")
  fn, severity, tag = TEXT_SHIFTS[name], int(severity), zlib.crc32(name.encode())
  out = []
  for i, text in enumerate(texts, start=int(offset)):
    rng = np.random.default_rng([int(seed), i, tag, severity])
    out.append(" ".join(fn(rng, tokenize(text), severity)))
  return out
