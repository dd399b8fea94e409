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

Byte for byte holds on one kind of CPU, not across kinds: XLA's CPU code
and its GEMM kernels follow the vector ISA, and a float sum in another order
moves a fake-quantized value across a rounding tie now and then. Measured:
the study's tables recorded on an AVX2 CPU (AMD EPYC without AVX-512) differ
on an AVX-512 one (AMD EPYC with AVX-512 VNNI/BF16) in the ``quant_*``
uncertainty columns of a few ``tflite_int8`` rows (a logit one int8 step
apart), never in a count; ``--xla_cpu_max_isa=AVX2`` does not remove it. So
a table that differs by CPU kind has a second recording under
``<kind>/`` (:func:`cpu_kind`), which wins on that kind:
``QSIM_RECORD_GOLDEN=kind`` records it (only where it differs from the
shared one). Both kinds seen on these machines are recorded.
"""

import os

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden")
RECORD = os.environ.get("QSIM_RECORD_GOLDEN", "")


def cpu_kind(flags: str | None = None) -> str:
  """'avx512' where /proc/cpuinfo lists avx512f, else 'avx2' (the golden
  tables' two recordings)."""
  if flags is None:
    try:
      with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
      flags = ""
  return "avx512" if "avx512f" in flags.split() else "avx2"


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
  shared, own = os.path.join(GOLDEN_DIR, name), os.path.join(GOLDEN_DIR, cpu_kind(), name)
  if RECORD == "1" or (RECORD == "kind" and not os.path.exists(shared)):
    _write(shared, got)
    return
  if RECORD == "kind":
    with open(shared) as f:
      if f.read() != got:
        _write(own, got)
      elif os.path.exists(own):
        os.remove(own)
    return
  golden = own if os.path.exists(own) else shared
  assert os.path.exists(golden), f"{golden} missing; record it with QSIM_RECORD_GOLDEN=1"
  with open(golden) as f:
    want = f.read()
  if got != want:
    import difflib

    diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "now"))[:40])
    raise AssertionError(f"{path} differs from the golden table {golden}:\n{diff}")


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
