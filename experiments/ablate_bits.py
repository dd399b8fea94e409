"""Bit-width ablation: python -m experiments.ablate_bits --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/ablate.py for the fields and commands.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from experiments import launch
from qsim.evaluate import sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/ablate.py", "Ablation config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (results.csv, samples/).")
flags.mark_flags_as_required(["workdir"])


def quantizer_names(c) -> list[str]:
  """The W x A grid names then the presets (validated by the sweep)."""

  def bits(v, allow_float):
    out = []
    for s in sweep.split(v):
      if s == "float" and allow_float:
        out.append(None)
      elif s.isdigit():
        out.append(int(s))
      else:
        raise ValueError(f"bit-width {s!r} is not valid; give integers 2..16{' or float' if allow_float else ''}")
    return out

  names = sweep.bit_grid_names(bits(c.weight_bits, False), bits(c.act_bits, True))
  return names + [p for p in sweep.split(c.presets) if p not in names]


def main(argv):
  del argv
  launch.init_distributed()  # multi-process runs only; see experiments/launch.py
  logging.set_verbosity(logging.WARNING)
  c = _CONFIG.value
  if not sweep.split(c.checkpoints):
    raise app.UsageError("give checkpoints: --config=experiments/configs/ablate.py:checkpoints=<dir>+<dir>")
  path = sweep.run_sweep(
      sweep.split(c.checkpoints), quantizer_names(c), sweep.split(c.shifts), _WORKDIR.value, **sweep.config_kwargs(c)
  )
  print(path)


if __name__ == "__main__":
  cli.run(main)
