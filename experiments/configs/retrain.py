"""Retraining with disagreements (RQ4) on one trained checkpoint, with controls.

  python -m experiments.retrain --config=experiments/configs/retrain.py:checkpoint=runs/lenet5 --workdir=runs/retrain
  python -m experiments.retrain --config=experiments/configs/retrain.py:checkpoint=runs/lenet5,quantizers=w4a4,rounds=3,pool_shifts=c/fog/1+c/shot_noise/2 --workdir=runs/retrain_fog
  python -m experiments.retrain --config=experiments/configs/retrain.py:checkpoint=runs/lenet5,strategies=all+random+search --workdir=runs/retrain_search
  python -m experiments.retrain --config=experiments/configs/retrain.py:checkpoint=runs/lenet5,runlocal --workdir=/tmp/retrain

Lists are tuples ('+'-joined on the command line). For each quantizer x strategy x seed and each round:
find the quantized model's disagreements in the candidate pool (``pool``, by
default the held-out validation end of the training split, plus any
``pool_shifts``), select samples (``all`` disagreements, the ``margin`` top-k,
``random`` k as the control, ``none``: fine-tuning alone, or ``search``: k
inputs found by the white-box disagreement search from ``search_seeds`` pool
samples within ``search_norm`` / ``search_eps``), fine-tune on the
training data plus the selected samples, re-quantize (static ranges
re-calibrated) and re-measure on the test split and the shifted sets
(``shifts``: 'c', 'all', or set names; ``shift_limit`` samples each). The pool
never shares a sample with the fine-tuning data or the evaluated sets
(checked by sample id before any work). Results: workdir/results.csv (one row
per run x round x set: before, after, resolved, persisted, new, accuracies),
workdir/report.md with the before/after plot, one training workdir per round
under workdir/models/. Rerunning the same command resumes.

Expected (2-core CPU, LeNet-5 on Fashion-MNIST, defaults: 2 quantizers x 3
strategies x 3 seeds x 1 round, 1 fine-tuning epoch, 75 shifted sets of 1,000):
about 30 s per round, 10 minutes in all.
"""

from experiments.configs import common

RUNLOCAL = dict(
    pool="val[:300]",
    eval_split="test[:200]",
    shifts=("c/fog/3", "c/rotate/2"),
    shift_limit=100,
    seeds=(0,),
    epochs=0.05,
    train_limit=2000,
    calib_samples=50,
    eval_batch_size=100,
)


def get_config(arg: str = ""):
  import ml_collections

  c = ml_collections.ConfigDict()
  c.checkpoint = ""
  c.quantizers = ("w4a4", "tflite_int8")
  c.strategies = ("all", "margin", "random")
  c.seeds = (0, 1, 2)
  c.rounds = 1
  c.pool = "val"
  c.pool_shifts = ()
  c.eval_split = "test"
  c.shifts = ("c",)
  c.shift_limit = 1000
  c.budget = 0
  c.epochs = 1.0
  c.learning_rate = 1e-4
  c.batch_size = 128
  c.finetune = "float"
  c.qat_quant = ""
  c.repeat = 1
  c.train_limit = -1
  c.calib_samples = 100
  c.eval_batch_size = 500
  c.shift_seed = 0
  c.data_dir = ""
  c.search_norm = "linf"
  c.search_eps = 8 / 255
  c.search_steps = 50
  c.search_seeds = 1000
  return common.apply_args(c, arg, RUNLOCAL)
