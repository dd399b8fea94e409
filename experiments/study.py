"""The study end to end: python -m experiments.study --config=CONFIG[:ARGS] --workdir=DIR

See experiments/configs/study.py for the settings (quick, full, runlocal),
the fields and the expected runtimes. Prints where the report is.
"""

import dataclasses

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments.configs import cifar, imdb, mnist, rows
from qsim.evaluate import sweep
from qsim.study import StudyConfig, run_study

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/study.py", "Study config file[:args].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (train/, eval/, retrain/, report.md).")
flags.mark_flags_as_required(["workdir"])

TUPLES = {"models": str, "methods": str, "seeds": int, "quantizers": str, "bits": int, "shifts": str,
          "severities": int, "retrain_quantizers": str, "retrain_strategies": str}


def study_config(c) -> StudyConfig:
  """The launcher's ConfigDict as a StudyConfig ('+'-separated lists)."""
  values = {}
  for f in dataclasses.fields(StudyConfig):
    v = c[f.name]
    if f.name in TUPLES:
      items = sweep.split(str(v))
      if TUPLES[f.name] is int and not all(s.isdigit() for s in items):
        raise ValueError(f"{f.name}={v!r} is not valid; give '+'-separated ints, e.g. 0+1+2")
      v = tuple(TUPLES[f.name](s) for s in items)
    values[f.name] = v
  return StudyConfig(**values)


def _train_module(model: str):
  if model.startswith("lenet"):
    return mnist
  if "rows" in model:
    return rows
  if model.startswith(("lstm", "gru")):
    return imdb
  return cifar


def train_config_fn(c):
  """(model, method, seed, standard_dir) -> the training ConfigDict of one run."""

  def make(model: str, method: str, seed: int, standard_dir: str):
    steps = c.qat_steps if method == "qat" else c.train_steps
    args = [f"model={model}", f"method={method}", f"seed={seed}", f"steps={steps}", f"dataset={c.dataset}",
            f"batch_size={c.batch_size}", f"train_limit={c.train_limit}", f"val_size={c.val_size}",
            f"test_limit={c.limit}",
            f"iters={c.pgd_iters}", f"log_every={max(1, min(100, steps))}", f"checkpoint_every={max(1, min(500, steps))}"]
    if method == "qat":
      args += [f"init_from={standard_dir}", f"quant={c.qat_quant}", f"learning_rate={c.qat_learning_rate}"]
    return _train_module(model).get_config(",".join(args))

  return make


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  c = _CONFIG.value
  path = run_study(study_config(c), _WORKDIR.value, train_config_fn(c))
  print(f"report: {path}")


if __name__ == "__main__":
  app.run(main)
