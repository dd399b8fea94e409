"""Pictures of the shifted sets: a contact sheet of an image dataset's
corruptions (corruption x severity) and a markdown sheet of a review under
every text shift (``python -m experiments.show_shifts`` draws them)."""

from __future__ import annotations

import os

import numpy as np

from qsim.shifts import image
from qsim.shifts import registry
from qsim.shifts import text as text_shifts


def contact_sheet(
    dataset: str, path: str, samples: int = 3, seed: int = 0, data_dir: str | None = None, corruptions=None
) -> str:
  """Draws corruption x severity for ``samples`` test images into ``path``.

  Args:
    dataset: an image dataset of the registry (a key of ``registry.SUITE_OF``).
    path: the PNG file to write (folders are created).
    samples: number of test images per cell, 1..16.
    seed: the seed the registry's sets use.
    data_dir: TFDS data_dir; None = TFDS's default.
    corruptions: the corruptions to draw (rows); None = all of the suite.

  Returns:
    ``path``.

  Raises:
    ValueError: for ``samples`` outside 1..16, or an unknown corruption.
    FileNotFoundError: the test split is not on this machine.
  """
  if not 1 <= samples <= 16:
    raise ValueError(f"samples={samples} is not valid; give 1..16")
  clean = registry.clean_test(dataset, data_dir=data_dir, download=False, limit=samples)
  return draw_sheet(clean.x, registry.SUITE_OF[dataset], dataset, path, seed, corruptions)


def draw_sheet(images: np.ndarray, suite: str, dataset: str, path: str, seed: int = 0, corruptions=None) -> str:
  """The contact sheet of ``suite`` (or some of its ``corruptions``) on ``images`` (N, H, W, C).

  Keys as the registry derives them for ``dataset``'s sets.

  Args:
    images: the clean images (N, H, W, C), float in [0, 1]; all N are drawn in each cell.
    suite: 'mnist_c' or 'cifar10_c'.
    dataset: the dataset's name (for the keys and the title).
    path: the file to write, as PNG (written atomically; folders are created).
    seed: the seed the registry's sets use.
    corruptions: the corruptions to draw (rows); None = all of the suite.

  Returns:
    ``path``.

  Raises:
    ValueError: for an unknown suite or corruption, or images of an unsupported shape.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  samples = len(images)
  names = sorted(image.SUITES[suite]) if corruptions is None else list(corruptions)
  for c in names:
    image.check(suite, c, images.shape, 1)
  rows = []
  for c in names:
    cells = [images]
    for s in image.SEVERITIES:
      n = f"{dataset}/c/{c}/{s}"
      cells.append(np.asarray(image.corrupt(suite, c, registry.set_key(seed, n), images, s)))
    rows.append(cells)
  h, w, ch = images.shape[1:]
  gap = 2
  cell_w = samples * w + (samples - 1)
  sheet = np.ones((len(rows) * (h + gap), 6 * (cell_w + gap), 3), np.float32)
  for i, cells in enumerate(rows):
    for j, imgs in enumerate(cells):
      for k in range(samples):
        y0, x0 = i * (h + gap), j * (cell_w + gap) + k * (w + 1)
        sheet[y0 : y0 + h, x0 : x0 + w] = imgs[k] if ch == 3 else np.repeat(imgs[k], 3, axis=-1)
  fig, ax = plt.subplots(figsize=(2.2 * 6 * samples / 3 + 1.5, 0.55 * len(rows) + 1), dpi=110)
  ax.imshow(sheet, interpolation="nearest")
  ax.set_xticks(
      [j * (cell_w + gap) + cell_w / 2 for j in range(6)], ["clean"] + [f"severity {s}" for s in image.SEVERITIES]
  )
  ax.set_yticks([i * (h + gap) + h / 2 for i in range(len(rows))], names)
  ax.xaxis.tick_top()
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  ax.set_title(f"{dataset}: {suite} corruptions (seed {seed})", pad=24)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)
  return path


def text_sheet(dataset: str, path: str, seed: int = 0, data_dir: str | None = None) -> str:
  """One test review under every text shift and severity, as markdown.

  The review is the first 40 words of the first test review.

  Args:
    dataset: a text dataset of the registry ('imdb_reviews').
    path: the markdown file to write (written atomically; folders are created).
    seed: the seed of the shifts.
    data_dir: TFDS data_dir; None = TFDS's default.

  Returns:
    ``path``.

  Raises:
    FileNotFoundError: the test split is not on this machine.
  """
  clean = registry.clean_test(dataset, data_dir=data_dir, download=False, limit=1, encode=False)
  review = " ".join(clean.x[0].split()[:40])
  lines = [f"# {dataset}: text shifts (seed {seed})", "", f"**clean**: {review}", ""]
  for name in sorted(text_shifts.TEXT_SHIFTS):
    lines.append(f"## {name}")
    for s in text_shifts.SEVERITIES:
      lines.append(f"- severity {s}: {text_shifts.shift_texts(name, seed, [review], s)[0]}")
    lines.append("")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines))
  os.replace(path + ".tmp", path)
  return path
