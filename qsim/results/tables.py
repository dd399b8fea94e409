"""A results table read back, and the statistics reports print from it."""

from __future__ import annotations

import csv
import math
import os
import re
from typing import Iterable

import numpy as np

_NUM = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)?$")


def read_rows(path: str) -> list[dict]:
  """The results table ``path`` (CSV) with numbers parsed (empty cells become NaN).

  Args:
    path: path of a ``results.csv`` written by ``ResultsStore.write_table``.

  Returns:
    One dict per row, column name to value: numeric cells as float, empty cells as NaN, other cells as str.

  Raises:
    FileNotFoundError: no such table (the message names the command that writes one).
    ValueError: the table has no rows.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found; run experiments.evaluate or experiments.ablate_bits first")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{path} has no rows")
  for r in rows:
    for k, v in r.items():
      if v == "":
        r[k] = float("nan")
      elif _NUM.match(v):
        r[k] = float(v)
  return rows


def mean(xs: Iterable) -> float:
  """The mean of ``xs`` ignoring NaN; NaN when nothing is left.

  Args:
    xs: numbers; float NaNs are dropped before averaging.

  Returns:
    The mean of the non-NaN values, or NaN when there are none.
  """
  xs = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
  return sum(xs) / len(xs) if xs else float("nan")


def mean_ci(values: Iterable) -> tuple[float, float]:
  """Mean and half-width of its 95% t-interval, NaN ignored.

  Args:
    values: numbers (e.g. one metric over seeds); float NaNs are dropped.

  Returns:
    ``(mean, half_width)`` of the two-sided 95% Student-t interval; the half-width is NaN for one value, both are
    NaN for none.
  """
  v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], float)
  if len(v) == 0:
    return float("nan"), float("nan")
  if len(v) == 1:
    return float(v[0]), float("nan")
  from scipy import stats  # pylint: disable=g-import-not-at-top

  return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
  """The 95% Wilson score interval of a binomial rate ``k / n``.

  Args:
    k: successes (e.g. disagreements; may be fractional, an expected count).
    n: trials (samples), > 0.
    z: the normal quantile (1.96 for 95%).

  Returns:
    ``(low, high)`` bounds of the rate, within [0, 1].

  Raises:
    ValueError: ``n`` is not positive or ``k`` is outside [0, n].
  """
  if n <= 0 or not 0 <= k <= n:
    raise ValueError(f"wilson(k={k}, n={n}) is not valid; give n > 0 and 0 <= k <= n")
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return max(0.0, centre - half), min(1.0, centre + half)


def fmt_ci(m: float, h: float, digits: int = 1) -> str:
  """'m ± h' with ``digits`` decimals; 'm' when ``h`` is NaN, '-' when ``m`` is.

  Args:
    m: the mean.
    h: the interval half-width (NaN to print the mean alone).
    digits: decimal places for both numbers.

  Returns:
    The formatted string.
  """
  if math.isnan(m):
    return "-"
  return f"{m:.{digits}f}" if math.isnan(h) else f"{m:.{digits}f} ± {h:.{digits}f}"
