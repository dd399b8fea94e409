"""Plots for reports: matplotlib without a display, figures written atomically."""

from __future__ import annotations

from qsim.runs import atomic_write


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (imported only when plotting).

  Returns:
    The ``matplotlib.pyplot`` module, with the non-interactive Agg backend selected.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def save_figure(fig, path: str) -> None:
  """Writes ``fig`` as PNG (110 dpi) to ``path`` atomically and closes it.

  Args:
    fig: the matplotlib figure to save; it is closed afterwards.
    path: destination file path (PNG is written whatever the extension).
  """
  atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  pyplot().close(fig)
