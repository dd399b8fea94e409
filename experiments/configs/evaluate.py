"""Evaluate one trained checkpoint: quantizers x (clean test + shifted sets).

  python -m experiments.evaluate --config=experiments/configs/evaluate.py:checkpoint=runs/lenet5 --workdir=runs/eval_lenet5
  python -m experiments.evaluate --config=experiments/configs/evaluate.py:checkpoint=runs/lenet5,quantizers=w4a4+tflite_int8,shifts=c --workdir=runs/eval
  python -m experiments.evaluate --config=experiments/configs/evaluate.py:checkpoint=runs/lenet5,runlocal --workdir=/tmp/eval

Lists are tuples ('+'-joined on the command line). ``quantizers``: preset names (default: the study's
four deployments). ``shifts``: 'all', a family ('c', 'official_c', 'natural',
'text') or shifted-set names (``qsim.shifts.registry.list_shifts``); the
clean test split is always evaluated. Results: workdir/results.csv (one row
per quantizer x set), per-sample arrays in workdir/samples/. Rerunning the
same command resumes. Expected (2-core CPU): LeNet-5, 4 quantizers, 10,000
images x 76 sets in about 10 minutes.
"""

from experiments.configs import common

STUDY_QUANTIZERS = ("tflite_int8", "tflite_dynamic", "weight_only_int8", "fp16")
RUNLOCAL = dict(limit=200, shifts=("c",), batch_size=100, calib_samples=50)


def fields(c):
  """Fields shared with the ablation config."""
  c.shifts = ("all",)
  c.limit = 0  # 0 = the whole test split
  c.batch_size = 500
  c.calib_samples = 100  # training samples that calibrate static ranges (TFLite's representative set)
  c.seed = 0  # seeds the synthetic shifts
  c.data_dir = ""
  c.skip_missing = False  # skip shifted sets whose TFDS data is not on this machine
  c.mapping = "auto"  # how the config axis is mapped: auto | map | vmap
  return c


def get_config(arg: str = ""):
  import ml_collections

  c = fields(ml_collections.ConfigDict())
  c.checkpoint = ""
  c.quantizers = STUDY_QUANTIZERS
  return common.apply_args(c, arg, RUNLOCAL)
