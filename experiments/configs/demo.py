"""The demo: train LeNet-5 on Fashion-MNIST, then measure how a grid of
quantization configs changes its test predictions (disagreement vs float),
with qsim's engine and sweep (one compiled grid).

Command (the README's `make demo`):
  python -m experiments.demo --config=experiments/configs/demo.py --workdir=runs/demo
Smoke run in seconds:
  python -m experiments.demo --config=experiments/configs/demo.py:runlocal --workdir=/tmp/d

Runtime on the 2-core CPU dev machine: a few minutes (see BUILD_NOTES.md).
Expected: float test accuracy around 0.88-0.90 after 2,000 steps; disagreement
falls as bits grow (hundreds of flipped predictions at w2, a handful at w8a8).
"""

import ml_collections

RUNLOCAL = dict(
    model="lenet_tiny", steps=60, val_size=500, test_limit=500, eval_batch_size=250, weight_bits=(2, 8), act_bits=(0, 8)
)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "lenet5"
  c.seed = 0
  c.steps = 2000
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.val_size = 5000  # carved from the end of the training split
  c.calib_samples = 100  # first training samples, as the study's TFLite int8
  c.eval_batch_size = 1000
  c.test_limit = 0  # 0 = the whole test split
  c.weight_bits = (2, 3, 4, 5, 6, 8)
  c.act_bits = (0, 4, 6, 8)  # 0 = float activations (weight-only)
  c.presets = ("fp16", "bf16", "tflite_int8", "tflite_dynamic", "weight_only_int8")
  c.mapping = "auto"
  if arg == "runlocal":
    c.update(RUNLOCAL)
  elif arg:
    raise ValueError(f"config arg {arg!r} is not valid; use '' or 'runlocal'")
  c.lock()
  return c
