"""Contact sheet of a dataset's synthetic shifts.

  python -m experiments.show_shifts --dataset=fashion_mnist --workdir=runs/shifts

Image datasets: writes ``<workdir>/shifts_<dataset>.png``, one row per
corruption of the dataset's suite, one column per severity (plus the clean
images), each cell the same few test images side by side. Text datasets
(``imdb_reviews``, needs a vocabulary-free raw test split): writes
``<workdir>/shifts_<dataset>.md`` with one review under every text shift and
severity. Also prints how many shifted sets the registry offers.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import numpy as np

from qsim.shifts import image
from qsim.shifts import registry
from qsim.shifts import text as text_shifts

_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", f"One of {list(registry.DATASETS)}.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/shifts", "Where the picture goes.")
_SAMPLES = flags.DEFINE_integer("samples", 3, "Test images per cell.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the corruptions.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")
_CORRUPTIONS = flags.DEFINE_list("corruptions", None, "Only these corruptions (default: the whole suite).")


def contact_sheet(dataset: str, path: str, samples: int = 3, seed: int = 0, data_dir: str | None = None,
                  corruptions=None) -> str:
  """Draws corruption x severity for ``samples`` test images into ``path``."""
  if not 1 <= samples <= 16:
    raise ValueError(f"samples={samples} is not valid; give 1..16")
  clean = registry.clean_test(dataset, data_dir=data_dir, download=False, limit=samples)
  return draw_sheet(clean.x, registry.SUITE_OF[dataset], dataset, path, seed, corruptions)


def draw_sheet(images: np.ndarray, suite: str, dataset: str, path: str, seed: int = 0, corruptions=None) -> str:
  """The contact sheet of ``suite`` (or some of its ``corruptions``) on
  ``images`` (N, H, W, C); keys as the registry derives them for
  ``dataset``'s sets."""
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
  ax.set_xticks([j * (cell_w + gap) + cell_w / 2 for j in range(6)], ["clean"] + [f"severity {s}" for s in image.SEVERITIES])
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
  """One test review under every text shift and severity, as markdown."""
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


def main(argv):
  del argv
  dataset = _DATASET.value
  if dataset not in registry.DATASETS:
    raise app.UsageError(f"--dataset={dataset!r} is not valid; choose one of {list(registry.DATASETS)}")
  if dataset in registry.TEXT_DATASETS:
    out = text_sheet(dataset, os.path.join(_WORKDIR.value, f"shifts_{dataset}.md"), _SEED.value, _DATA_DIR.value)
  else:
    out = contact_sheet(dataset, os.path.join(_WORKDIR.value, f"shifts_{dataset}.png"), _SAMPLES.value,
                        _SEED.value, _DATA_DIR.value, _CORRUPTIONS.value)
  counts = registry.count(registry.STUDY_DATASETS)
  print(f"{dataset}: {len(registry.list_shifts(dataset))} shifted sets; the study's datasets:"
        f" {counts} = {sum(counts.values())} (the study used 42)")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
