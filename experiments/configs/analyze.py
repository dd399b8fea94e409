"""The quantization debugger: which layer causes the disagreements, and the
mixed-precision config that removes them.

  python -m experiments.analyze --config=experiments/configs/analyze.py:checkpoint=runs/lenet5 --workdir=runs/analyze_lenet5
  python -m experiments.analyze --config=experiments/configs/analyze.py:checkpoint=runs/lenet5,quantizer=tflite_int8,search=false --workdir=runs/analyze_int8
  python -m experiments.analyze --config=experiments/configs/analyze.py:checkpoint=runs/lenet5,runlocal --workdir=/tmp/analyze

``quantizer``: the preset whose layers are analysed (per-layer tensor
statistics, enable-one / disable-one sweeps, weights-only and
activations-only runs). ``base``, ``menu`` and ``budget``: the mixed-precision
search varies the base preset's weight format per layer over the menu
(bits 2..16, fp16, bf16, float; '+'-joined on the command line) within the
budget (average weight bits, weighted by weight counts), measured on
``selection`` (a held-out training split, never the test split), and
verifies the chosen config, the frontier and the uniform widths on the test
split and the shifted sets (``shifts``, as in experiments/configs/evaluate.py).
Writes workdir/analysis.md, layers.png, pareto.png, stats.csv, search.json,
sweep/ and frontier/ (results tables), and mixed_config.py (the chosen
config as an experiments.evaluate config file). Rerunning resumes.
Expected (2-core CPU): LeNet-5 with 15 corruptions at 1,000 images in about
5 minutes; figures in BUILD_NOTES.md ("Quantization debugger").
"""

from experiments.configs import common

RUNLOCAL = dict(
    limit=200,
    shifts=("c/fog/1",),
    stats_samples=32,
    selection_samples=200,
    candidates=16,
    batch_size=100,
    calib_samples=50,
)


def get_config(arg: str = ""):
  import ml_collections

  c = ml_collections.ConfigDict()
  c.checkpoint = ""
  c.quantizer = "w4a8"
  c.shifts = ("c",)
  c.limit = 1000  # samples per test or shifted set (0 = all)
  c.stats_samples = 256
  c.search = True
  c.base = "w4a8"
  c.menu = (2, 3, 4, 5, 6, 8)
  c.budget = 4.0
  c.selection = "val"
  c.selection_samples = 2000
  c.candidates = 256  # configs measured per round, each round in the same compiled program
  c.rounds = 2  # rounds of local search after the ILP's proposals
  c.frontier_points = 16  # frontier configs verified on the test split and shifted sets
  c.batch_size = 500
  c.calib_samples = 100
  c.seed = 0
  c.data_dir = ""
  return common.apply_args(c, arg, RUNLOCAL)
