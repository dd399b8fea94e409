"""Contact sheet of a dataset's synthetic shifts.

  python -m experiments.show_shifts --dataset=fashion_mnist --workdir=runs/shifts

Image datasets: writes ``<workdir>/shifts_<dataset>.png``, one row per
corruption of the dataset's suite, one column per severity (plus the clean
images), each cell the same few test images side by side. Text datasets
(``imdb_reviews``, needs a vocabulary-free raw test split): writes
``<workdir>/shifts_<dataset>.md`` with one review under every text shift and
severity. Also prints how many shifted sets the registry offers. The drawing
is ``qsim.shifts.sheets``.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from experiments import cli
from qsim.shifts import registry
from qsim.shifts.sheets import contact_sheet, text_sheet

_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", f"One of {list(registry.DATASETS)}.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/shifts", "Where the picture goes.")
_SAMPLES = flags.DEFINE_integer("samples", 3, "Test images per cell.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the corruptions.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")
_CORRUPTIONS = flags.DEFINE_list("corruptions", None, "Only these corruptions (default: the whole suite).")


def main(argv):
  del argv
  dataset = _DATASET.value
  if dataset not in registry.DATASETS:
    raise app.UsageError(f"--dataset={dataset!r} is not valid; choose one of {list(registry.DATASETS)}")
  if dataset in registry.TEXT_DATASETS:
    out = text_sheet(dataset, os.path.join(_WORKDIR.value, f"shifts_{dataset}.md"), _SEED.value, _DATA_DIR.value)
  else:
    out = contact_sheet(
        dataset,
        os.path.join(_WORKDIR.value, f"shifts_{dataset}.png"),
        _SAMPLES.value,
        _SEED.value,
        _DATA_DIR.value,
        _CORRUPTIONS.value,
    )
  counts = registry.count(registry.STUDY_DATASETS)
  print(
      f"{dataset}: {len(registry.list_shifts(dataset))} shifted sets; the study's datasets:"
      f" {counts} = {sum(counts.values())} (the study used 42)"
  )
  print(f"wrote {out}")


if __name__ == "__main__":
  cli.run(main)
