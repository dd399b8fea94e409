"""Golden tables: what the study, its sweep, its retraining and a fidelity run
write, recorded once and compared byte for byte, so a refactor that moves code
around proves it changed no number.

Compared exactly (tolerance zero), after one normalisation: the test's
temporary folders (the workdir, the checkpoint), which appear in the
``checkpoint`` column and in the reports' text, are replaced by placeholders
(``<WORKDIR>``, ``<CHECKPOINT>``): they differ on every run. Files
that legitimately vary run to run are not compared (``UNCOMPARED``).

Record (or re-record after a deliberate change of behaviour) with
``QSIM_RECORD_GOLDEN=1``; the test then writes the tables and passes, and the
diff of ``tests/data/golden`` shows what changed.
"""

import os

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden")
RECORD = os.environ.get("QSIM_RECORD_GOLDEN") == "1"

# Written by the runs but not compared, and why.
UNCOMPARED = {
    "metrics.jsonl": "steps_per_s is wall-clock throughput",
    "results.jsonl": "the same rows as results.csv (compared), in another format",
    "*.png": "plots: matplotlib output depends on its version and fonts; their data is in the tables",
    "samples/*.npz, parts/*.json": "the per-unit parts results.csv is built from (compared)",
}


def normalise(text: str, dirs: dict[str, str]) -> str:
  """``text`` with each temporary folder (absolute, as the rows hold it)
  replaced by its placeholder: ``dirs`` maps placeholder -> folder."""
  for placeholder, d in dirs.items():
    text = text.replace(os.path.abspath(str(d)), placeholder)
  return text


def check(name: str, path: str, dirs: dict[str, str]) -> None:
  """Compares the file ``path`` (normalised, see :func:`normalise`) with
  ``GOLDEN_DIR/name``."""
  with open(path) as f:
    got = normalise(f.read(), dirs)
  golden = os.path.join(GOLDEN_DIR, name)
  if RECORD:
    os.makedirs(os.path.dirname(golden), exist_ok=True)
    with open(golden, "w") as f:
      f.write(got)
    return
  assert os.path.exists(golden), f"{golden} missing; record it with QSIM_RECORD_GOLDEN=1"
  with open(golden) as f:
    want = f.read()
  if got != want:
    import difflib
    diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "now"))[:40])
    raise AssertionError(f"{path} differs from the golden table {golden}:\n{diff}")
