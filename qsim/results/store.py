"""Crash-safe results: one part file per unit of work, one tidy table.

A sweep's unit of work is (checkpoint, dataset or shifted set). When a unit
finishes, its per-sample arrays go to ``samples/<key>.npz`` and then its
rows to ``parts/<key>.json``, each written to a temporary file, flushed,
fsynced and renamed over the final name (atomic on POSIX,
:func:`qsim.runs.atomic_write`). A part file is
the unit's commit marker: a sweep killed at any point restarts, skips the
units whose part exists and recomputes the rest, so the table never has a
lost, partial or duplicated row. ``write_table`` rebuilds ``results.csv``
and ``results.jsonl`` from the parts (also atomically).

Files are JSON and ``.npz`` without pickles (``allow_pickle=False``): reading
results cannot execute code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from typing import Sequence

import numpy as np

from qsim.runs import atomic_write


def _json_default(v):
  if isinstance(v, np.generic):
    return v.item()
  raise TypeError(f"cannot store {type(v).__name__} in a results row")


def _clean(v):
  if isinstance(v, np.generic):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return None  # JSON has no NaN; None reads back as NaN
  return v


class ResultsStore:
  """Part files under ``workdir``; see the module docstring."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.parts_dir = os.path.join(workdir, "parts")
    self.samples_dir = os.path.join(workdir, "samples")
    try:
      os.makedirs(self.parts_dir, exist_ok=True)
      os.makedirs(self.samples_dir, exist_ok=True)
    except OSError as e:
      raise OSError(f"cannot create results folders in {workdir!r}: {e.strerror}; pass a writable --workdir") from e
    if not os.access(self.parts_dir, os.W_OK):
      raise PermissionError(f"workdir {workdir!r} is not writable; pass a writable --workdir")

  @staticmethod
  def key(*parts: str) -> str:
    """A file-name-safe, unique key for a unit of work.

    Args:
      *parts: strings identifying the unit (e.g. checkpoint path, dataset name); paths contribute their last
        component to the readable slug.

    Returns:
      ``<slug>-<hash>``: the parts' last path components joined by ``__`` with unsafe characters replaced by ``_``
      (at most 80 characters), then the first 12 hex digits of the SHA-1 of all parts in full.
    """
    text = "|".join(parts)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(p.rstrip("/").split("/")[-1] for p in parts))[:80]
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"

  def _part(self, key: str) -> str:
    return os.path.join(self.parts_dir, f"{key}.json")

  def has(self, key: str) -> bool:
    """Whether the unit ``key`` is finished (its part file exists).

    Args:
      key: a unit key from :meth:`key`.

    Returns:
      True when ``parts/<key>.json`` exists.
    """
    return os.path.exists(self._part(key))

  def put(self, key: str, rows: Sequence[dict], samples: dict[str, np.ndarray] | None = None) -> None:
    """Stores a finished unit: samples first, rows last (the commit).

    Args:
      key: the unit key from :meth:`key`.
      rows: the unit's result rows (JSON-serialisable values; NumPy scalars are converted, non-finite floats are
        stored as null and read back as NaN).
      samples: optional per-sample arrays, saved to ``samples/<key>.npz``; None stores none.
    """
    if samples is not None:
      atomic_write(os.path.join(self.samples_dir, f"{key}.npz"), lambda f: np.savez_compressed(f, **samples))
    body = json.dumps([{k: _clean(v) for k, v in r.items()} for r in rows], default=_json_default, allow_nan=False)
    atomic_write(self._part(key), lambda f: f.write(body.encode()))

  def samples(self, key: str) -> dict[str, np.ndarray]:
    """The per-sample arrays stored for the unit ``key``.

    Args:
      key: a unit key from :meth:`key` whose :meth:`put` was given ``samples``.

    Returns:
      Array name to array, as saved in ``samples/<key>.npz``.
    """
    path = os.path.join(self.samples_dir, f"{key}.npz")
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}

  @staticmethod
  def _read(path: str) -> list[dict]:
    try:
      with open(path) as f:
        rows = json.load(f)
      if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("not a list of rows")
    except ValueError as e:
      raise ValueError(
          f"results part {path} is corrupted ({e}); delete it and rerun the same command to recompute that unit"
      ) from e
    return rows

  def get(self, key: str) -> list[dict] | None:
    """The rows of the unit ``key``, or None when it is not stored.

    Args:
      key: a unit key from :meth:`key`.

    Returns:
      The stored rows, or None when the unit has no part file.

    Raises:
      ValueError: the part file is corrupted (not a JSON list of rows).
    """
    return self._read(self._part(key)) if self.has(key) else None

  def rows(self) -> list[dict]:
    """Every stored row, parts in name order, rows in stored order.

    Returns:
      The rows of all part files concatenated (temporary files are skipped).

    Raises:
      ValueError: a part file is corrupted.
    """
    out = []
    for fname in sorted(os.listdir(self.parts_dir)):
      if not fname.endswith(".json"):
        continue  # a temporary file left by a killed writer
      out.extend(self._read(os.path.join(self.parts_dir, fname)))
    return out

  def write_table(self, sort_keys: Sequence[str] = ()) -> str:
    """Writes ``results.csv`` and ``results.jsonl`` from all parts; returns the CSV path.

    Args:
      sort_keys: columns to sort rows by (compared as strings, missing values first); empty keeps
        :meth:`rows` order.

    Returns:
      The path of ``results.csv`` under ``workdir``.

    Raises:
      ValueError: a part file is corrupted.
    """
    rows = self.rows()
    if sort_keys:
      rows.sort(key=lambda r: tuple("" if r.get(k) is None else str(r.get(k)) for k in sort_keys))
    columns: list[str] = []
    for r in rows:
      columns.extend(k for k in r if k not in columns)
    csv_path = os.path.join(self.workdir, "results.csv")

    def write_csv(f):
      import io

      text = io.StringIO()
      w = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
      w.writeheader()
      w.writerows(rows)
      f.write(text.getvalue().encode())

    atomic_write(csv_path, write_csv)
    atomic_write(
        os.path.join(self.workdir, "results.jsonl"),
        lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()),
    )
    return csv_path
