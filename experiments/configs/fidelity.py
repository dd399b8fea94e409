"""qsim vs the real TFLite model, on clean and shifted data.

  python -m experiments.fidelity --config=experiments/configs/fidelity.py:checkpoint=runs/lenet5 --workdir=runs/fidelity
  python -m experiments.fidelity --config=experiments/configs/fidelity.py:checkpoint=runs/lenet5,runlocal --workdir=/tmp/fid

Needs the optional extra: pip install 'qsim[tflite]'. ``modes``: '+'-separated
TFLite modes (int8, dynamic, float16, float32); each is compared with the qsim
preset that simulates it (qsim.export.tflite.MODES). ``kernels``: '+'-separated
interpreter kernel families each mode runs on (qsim.export.tflite.KERNELS):
xnnpack (the interpreter's default delegate) and builtin (TFLite's built-in
kernels, fixed-point int8 requantization as in TFLite Micro). ``shifts`` as in
experiments/configs/evaluate.py. ``study``: also run the int8 model the
study's way (uint8 input truncated, one sample at a time; XNNPACK only).
Writes workdir/results.csv (a row per set x mode x kernels), fidelity.md and
fidelity.png, and the .tflite files in workdir/models/. Rerunning resumes,
also with kernel families added. Expected (2-core CPU): LeNet-5, 3 modes on
XNNPACK, 1,000 images x 76 sets in about 5 minutes.
"""

from experiments.configs import common

RUNLOCAL = dict(limit=200, shifts="c/fog/1+c/shot_noise/3", batch_size=100)


def get_config(arg: str = ""):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.checkpoint = ""
  c.modes = "int8+dynamic+float16"
  c.kernels = "xnnpack+builtin"
  c.shifts = "c"
  c.limit = 1000  # images per set (0 = the whole split)
  c.calib_samples = 100  # the representative dataset: the first N training samples
  c.batch_size = 500
  c.seed = 0  # seeds the synthetic shifts
  c.data_dir = ""
  c.study = True
  return common.apply_args(c, arg, RUNLOCAL)
