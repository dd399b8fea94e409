"""Bit-width ablation: the W x A grid plus the deployment presets, on one or
more checkpoints (e.g. one per training method), over all shifted sets.

  python -m experiments.ablate_bits --config=experiments/configs/ablate.py:checkpoints=runs/lenet5+runs/lenet5_qat --workdir=runs/ablate
  python -m experiments.ablate_bits --config=experiments/configs/ablate.py:checkpoints=runs/lenet5,weight_bits=4+8,act_bits=8+float,shifts=c --workdir=runs/ablate_small
  python -m experiments.ablate_bits --config=experiments/configs/ablate.py:checkpoints=runs/lenet5,runlocal --workdir=/tmp/ablate

Defaults: weights 2..8 and 16 bits, activations 2..8, 16 and float (72
configs) plus tflite_int8, tflite_dynamic, weight_only_int8 and fp16, all in
one compiled program per checkpoint. Lists are tuples ('+'-joined on the command line); other fields
as in evaluate.py. Rerunning the same command resumes. Expected (2-core CPU,
LeNet-5, 10,000 images): about 1 s per quantizer per set, i.e. about 1.5
hours for 76 quantizers x 76 sets; use limit= or shifts= for less.
"""

from experiments.configs import common
from experiments.configs import evaluate

RUNLOCAL = dict(limit=100, shifts=("c",), batch_size=100, calib_samples=50, weight_bits=(4, 8), act_bits=(8, "float"))


def get_config(arg: str = ""):
  import ml_collections

  c = evaluate.fields(ml_collections.ConfigDict())
  c.checkpoints = ()
  c.weight_bits = (2, 3, 4, 5, 6, 7, 8, 16)
  c.act_bits = (2, 3, 4, 5, 6, 7, 8, 16, "float")
  c.presets = evaluate.STUDY_QUANTIZERS
  return common.apply_args(c, arg, RUNLOCAL)
