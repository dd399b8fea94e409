"""Text shifts: determinism, batch independence, monotone severity, each
shift's own contract, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qsim.data.text import build_vocab, encode, tokenize
from qsim.shifts import text
from qsim.shifts.text import SEVERITIES, TEXT_SHIFTS, shift_texts

NAMES = sorted(TEXT_SHIFTS)
_COMMON = [
    "the",
    "a",
    "i",
    "movie",
    "film",
    "was",
    "not",
    "don't",
    "good",
    "bad",
    "10",
    "it's",
    "plot",
    "actors",
    "great",
    "boring",
    "and",
    "of",
    "to",
    "really",
]


def _reviews(n: int = 50, length: int = 40, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  made = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(150)]
  pool = _COMMON + made
  out = []
  for _ in range(n):
    words = [pool[j] for j in rng.integers(len(pool), size=length + rng.integers(-5, 6))]
    words[0] = words[0].capitalize()  # raw text: capitals, punctuation, HTML breaks
    out.append(" ".join(words[:10]) + ". <br /><br />" + " ".join(words[10:]) + "!")
  return out


TEXTS = _reviews()
WORDS = [tokenize(t) for t in TEXTS]


def _levenshtein(a: str, b: str) -> int:
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def _changed(name: str, before: list[str], after: list[str]) -> float:
  """Fraction of token positions changed (dropout: fraction of words lost)."""
  if name == "word_dropout":
    return 1 - len(after) / len(before)
  assert len(after) == len(before)
  return float(np.mean([a != b for a, b in zip(before, after)]))


@pytest.mark.parametrize("name", NAMES)
def test_shift_contract(name):
  means = []
  vocab = build_vocab(TEXTS, 1000)
  for s in SEVERITIES:
    out = shift_texts(name, 7, TEXTS, s)
    assert len(out) == len(TEXTS) and all(isinstance(t, str) for t in out)
    assert out == shift_texts(name, 7, TEXTS, s)  # same seed, same result
    assert out != shift_texts(name, 8, TEXTS, s)  # another seed, another result
    words = [t.split(" ") for t in out]
    assert all(tokenize(t) == w for t, w in zip(out, words))  # words re-tokenize as they are
    changed = [_changed(name, b, a) for b, a in zip(WORDS, words)]
    assert np.mean([c > 0 for c in changed]) >= 0.95, (s, changed)
    means.append(np.mean(changed))
    ids, clean = encode(out, vocab, 64), encode(TEXTS, vocab, 64)
    assert ids.shape == clean.shape == (len(TEXTS), 64) and ids.dtype == clean.dtype
    if name != "word_dropout":  # same number of tokens
      np.testing.assert_array_equal((ids > 0).sum(1), (clean > 0).sum(1))
  assert all(b > a for a, b in zip(means, means[1:])), means
  # the tables' nominal fraction, roughly (k = round(p n) picks per review)
  assert 0.02 < means[0] < 0.1 and 0.35 < means[-1] < 0.7, means


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
  full = shift_texts(name, 3, TEXTS, 4)
  assert shift_texts(name, 3, TEXTS[:9], 4) == full[:9]
  assert shift_texts(name, 3, TEXTS[:1], 4) == full[:1]
  others = ["" if i % 2 else t[::-1] for i, t in enumerate(TEXTS)]  # change every other review
  for i in (0, 5, 20):
    mixed = others[:i] + [TEXTS[i]] + others[i + 1 :]
    assert shift_texts(name, 3, mixed, 4)[i] == full[i]


def test_same_result_in_another_process():
  code = (
      "import json, sys; from qsim.shifts.text import TEXT_SHIFTS, shift_texts; "
      "texts = json.load(sys.stdin); "
      "print(json.dumps({n: shift_texts(n, 11, texts, 3) for n in sorted(TEXT_SHIFTS)}))"
  )
  env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  res = subprocess.run(
      [sys.executable, "-c", code], input=json.dumps(TEXTS[:5]), env=env, capture_output=True, text=True, check=True
  )
  assert json.loads(res.stdout) == {n: shift_texts(n, 11, TEXTS[:5], 3) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_empty_bytes_and_numpy_ints(name):
  raw = "Great <br />MOVIE, I'd watch it again... 10/10"
  assert shift_texts(name, 0, [raw.encode()], 2) == shift_texts(name, 0, [raw], 2)
  assert shift_texts(name, 0, ["", "?!", b""], 5) == ["", "", ""]
  numpy_ints = shift_texts(name, np.int64(4), TEXTS[:3], np.int32(2))
  assert numpy_ints == shift_texts(name, 4, TEXTS[:3], 2)
  assert TEXT_SHIFTS[name](np.random.default_rng(0), [], 3) == []


def test_word_dropout_never_empties():
  short = [" ".join(["w%d" % j for j in range(n)]) for n in range(1, 8)]
  for s in SEVERITIES:
    for seed in range(20):
      out = shift_texts("word_dropout", seed, short + TEXTS[:5], s)
      assert all(o for o in out)
      assert out[0] == "w0"  # a one-word review keeps its word
  words = ["x"] * 3
  assert text.word_dropout(np.random.default_rng(0), words, 5) == ["x"] and words == ["x"] * 3


def test_word_swap_is_a_local_permutation():
  for s in SEVERITIES:
    for before, out in zip(WORDS, shift_texts("word_swap", 1, TEXTS, s)):
      after = out.split(" ")
      assert sorted(after) == sorted(before)
      # each word lands within (swaps x window) of where it was: a local shuffle
      reach = text._count(text.P[s - 1] / 2, len(before)) * text.SWAP_WINDOW[s - 1]
      for j, w in enumerate(after):
        if w != before[j]:
          assert any(before[k] == w for k in range(max(0, j - reach), j + reach + 1))


def test_oov_noise_words_are_out_of_vocabulary():
  vocab = set(build_vocab(TEXTS, 20000))
  for s in SEVERITIES:
    for before, out in zip(WORDS, shift_texts("oov_noise", 2, TEXTS, s)):
      after = out.split(" ")
      new = [a for a, b in zip(after, before) if a != b]
      assert new and all(len(w) == 10 and w.isalpha() and w.islower() for w in new)
      assert not set(new) & vocab
  # with vocab given, drawn words in it are redrawn (a guarantee, not luck)
  words = WORDS[0]
  first = text.oov_noise(np.random.default_rng(5), words, 3)
  drawn = {a for a, b in zip(first, words) if a != b}
  again = text.oov_noise(np.random.default_rng(5), words, 3, vocab=drawn)
  assert [a != b for a, b in zip(again, words)] == [a != b for a, b in zip(first, words)]
  assert not {a for a, b in zip(again, words) if a != b} & drawn
  assert text.oov_noise(np.random.default_rng(5), words, 3, vocab=vocab) == first


def test_typos_are_character_edits():
  allowed = set("abcdefghijklmnopqrstuvwxyz0123456789'")
  firsts, n_changed = 0, 0
  for s in SEVERITIES:
    for before, out in zip(WORDS, shift_texts("typos", 9, TEXTS, s)):
      for a, b in zip(out.split(" "), before):
        if a != b:
          n_changed += 1
          firsts += a[0] == b[0]
          d = _levenshtein(a, b)
          assert d in (1, 2) and set(a) <= allowed, (a, b)
          if d == 2:  # only an adjacent swap costs 2
            assert len(a) == len(b) and sorted(a) == sorted(b)
  assert firsts / n_changed > 0.6  # most words keep their first letter
  rng = np.random.default_rng(0)
  for word in ("a", "i", "7", "'", "aa", "ab", "don't"):
    for _ in range(200):
      new = text._typo(rng, word)
      assert new != word and set(new) <= allowed and _levenshtein(new, word) in (1, 2)
      if len(word) == 1:  # insert or substitute only
        assert len(new) == 2 or (len(new) == 1 and new in text.NEIGHBOURS[word])


def test_keyboard_table_is_symmetric():
  for ch, near in text.NEIGHBOURS.items():
    assert near and ch not in near
    assert all(ch in text.NEIGHBOURS[k] for k in near), ch


def test_bad_input_errors():
  with pytest.raises(ValueError) as e:
    shift_texts("typo", 0, TEXTS, 1)
  assert str(e.value) == (
      "text shift='typo' is not valid; choose one of ['oov_noise', 'typos', 'word_dropout', 'word_swap']"
  )
  for s in (0, 6, 2.0, 2.5, True, "3", None):
    with pytest.raises(ValueError) as e:
      shift_texts("typos", 0, TEXTS, s)
    assert str(e.value) == f"severity={s!r} is not valid; choose one of [1, 2, 3, 4, 5]"
  for seed in (-1, 1.0, True, "0", None):
    with pytest.raises(ValueError) as e:
      shift_texts("typos", seed, TEXTS, 1)
    assert str(e.value) == f"seed={seed!r} is not valid; give an int >= 0"
  with pytest.raises(ValueError, match="texts must be a sequence of reviews, not one string"):
    shift_texts("typos", 0, "one review", 1)
