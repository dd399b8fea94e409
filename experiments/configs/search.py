"""Disagreement search: inputs near test images that a quantized model
classifies differently while the float model keeps its class.

  python -m experiments.search --config=experiments/configs/search.py:checkpoint=runs/lenet5 --workdir=runs/search_lenet5
  python -m experiments.search --config=experiments/configs/search.py:checkpoint=runs/lenet5,quantizers=w4a4,budgets=0.0078+0.0314,cap=1000 --workdir=runs/search
  python -m experiments.search --config=experiments/configs/search.py:checkpoint=runs/lenet5,norm=natural,budgets=0.25+0.5+1.0,methods=whitebox+random --workdir=runs/search_natural
  python -m experiments.search --config=experiments/configs/search.py:checkpoint=runs/imdb_lstm,norm=tokens,budgets=1+2+4,methods=whitebox+random --workdir=runs/search_tokens
  python -m experiments.search --config=experiments/configs/search.py:checkpoint=runs/lenet5,runlocal --workdir=/tmp/search

``budgets``: ball radii in the input's units ('+'-joined; images are in [0, 1], so
8/255 = 0.0314). ``norm``: linf, l2, or natural (brightness, contrast,
rotation, shear, scale and blur as continuous parameters; budgets are then
fractions in (0, 1] of their ranges, and methods whitebox+random), or tokens
(text checkpoints: budgets are numbers of substituted words, methods
whitebox+random; the white-box search ranks substitutions by the gradient). ``methods``: whitebox (through the straight-through
estimator), random, mcmc (DFlare-style). ``cap``: queries per seed (a query
is both models on one input; a white-box step counts 2). Writes
workdir/results.csv (a row per quantizer x budget x method), search.md,
success.png and gallery.png (text: the found reviews' words in search.md).
Every quantizer's white-box search of a budget runs in one compiled program.
Rerunning resumes per (quantizer, budget).
Expected (2-core CPU): LeNet-5, 2 quantizers x 3 budgets x 3 methods on 100
seeds with cap 200 in about 10 minutes; figures in BUILD_NOTES.md
("Disagreement search").
"""

from experiments.configs import common

RUNLOCAL = dict(seeds=8, cap=10, quantizers=("w4a4",), budgets=(8 / 255, 32 / 255), calib_samples=20)


def get_config(arg: str = ""):
  import ml_collections

  c = ml_collections.ConfigDict()
  c.checkpoint = ""
  c.quantizers = ("w4a4", "tflite_int8")
  c.norm = "linf"
  c.budgets = (2 / 255, 8 / 255, 32 / 255)
  c.methods = ("whitebox", "random", "mcmc")
  c.seeds = 100
  c.split = "test"
  c.cap = 200
  c.seed = 0
  c.calib_samples = 100
  c.data_dir = ""
  return common.apply_args(c, arg, RUNLOCAL)
