"""qsim vs the real runtimes (TFLite, ONNX Runtime), on clean and shifted data.

  python -m experiments.fidelity --config=experiments/configs/fidelity.py:checkpoint=runs/lenet5 --workdir=runs/fidelity
  python -m experiments.fidelity --config=experiments/configs/fidelity.py:checkpoint=runs/lenet5,runlocal --workdir=/tmp/fid
  python -m experiments.fidelity --config=experiments/configs/fidelity.py:checkpoint=runs/lenet5+runs/resnet20 --workdir=runs/fid_all

``checkpoint``: a train workdir, or several ('+'-joined on the command line): each runs in
workdir/<its folder name> (fidelity.md there), and workdir/summary.md (with
summary.png, a heatmap of the lowest agreement) compares them per mode and
kernel family.

Needs the optional extras: pip install 'qsim[tflite,onnx]' (qsim[onnx] only for
the ort_* modes). ``modes``: deployment modes, TFLite's (int8,
dynamic, float16, float32; qsim.export.tflite.MODES) and ONNX Runtime's
(ort_int8, ort_dynamic, ort_dynamic_u8; qsim.export.onnx.ORT_MODES); each is
compared with the qsim preset that simulates it. ``kernels``: the
kernel families each mode runs on, for TFLite (qsim.export.tflite.KERNELS):
xnnpack (the interpreter's default delegate) and builtin (TFLite's built-in
kernels, fixed-point int8 requantization as in TFLite Micro); for ONNX Runtime
(qsim.export.onnx.ORT_KERNELS): mlas (the default session, fused integer
kernels) and reference (graph optimizations off: the QDQ graph as written). ``shifts`` as in
experiments/configs/evaluate.py. ``study``: also run the int8 model the
study's way (uint8 input truncated, one sample at a time; XNNPACK only).
Writes workdir/results.csv (a row per set x mode x kernels), fidelity.md and
fidelity.png, and the .tflite / .onnx files in workdir/models/. Rerunning resumes,
also with kernel families added. Expected (2-core CPU): LeNet-5, 3 modes on
XNNPACK, 1,000 images x 76 sets in about 5 minutes.
"""

from experiments.configs import common

RUNLOCAL = dict(limit=200, shifts=("c/fog/1", "c/shot_noise/3"), batch_size=100)


def get_config(arg: str = ""):
  import ml_collections

  c = ml_collections.ConfigDict()
  c.checkpoint = ()
  c.modes = ("int8", "dynamic", "float16", "ort_int8", "ort_dynamic", "ort_dynamic_u8")
  c.kernels = ("xnnpack", "builtin", "mlas", "reference")
  c.shifts = ("c",)
  c.limit = 1000  # images per set (0 = the whole split)
  c.calib_samples = 100  # the representative dataset: the first N training samples
  c.batch_size = 500
  c.seed = 0  # seeds the synthetic shifts
  c.data_dir = ""
  c.study = True
  return common.apply_args(c, arg, RUNLOCAL)
