"""Shared config fields and the ``key=value,flag`` argument parser."""

from __future__ import annotations

import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist_debian"
  c.data_dir = ""
  c.download = False
  c.val_size = 0  # 0 = the dataset's default
  c.train_limit = 0  # 0 = all
  c.test_limit = 0
  c.model = "lenet5"
  c.method = "standard"  # standard | qat | pgd | fgsm | mixup
  c.quant = "w8a8"  # the QAT config (preset name); used only with method=qat
  c.eps = 0.3
  c.step_size = 0.1
  c.iters = 10
  c.adv_fraction = 0.5
  c.mixup_alpha = 0.2
  c.input_box = (0.0, 1.0)  # valid inputs after preprocessing (images in [0, 1])
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.schedule = "cosine"  # cosine | constant
  c.batch_size = 128
  c.steps = 2000
  c.seed = 0
  c.log_every = 100
  c.checkpoint_every = 500
  c.init_from = ""
  c.data_shards = 0  # blocks the training set is cut into, one per process; 0 = the process count
  return c


def _scalar(text: str):
  """A list item from the command line: an int, a float, or the text."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def apply_args(
    c: ml_collections.ConfigDict, arg: str, runlocal: dict, settings: dict[str, dict] | None = None
) -> ml_collections.ConfigDict:
  """Applies ``arg`` ("model=lenet5,method=qat,bits=4,runlocal") to ``c``.

  A key whose default is a tuple takes a '+'-joined list
  (``quantizers=w4a4+tflite_int8``, ``seeds=0+1``; empty: ``pool_shifts=``).
  ``bits=N`` is short for ``quant=wNaN``; ``runlocal`` applies the tiny
  smoke-run overrides, and a name in ``settings`` (e.g. 'quick') its own.
  Unknown keys raise ``ValueError`` with the valid ones.
  """
  named = {"runlocal": runlocal, **(settings or {})}
  items = [s.strip() for s in arg.split(",") if s.strip()]
  for item in items:  # first, so explicit keys override them
    if item in named:
      c.update(named[item])
  for item in items:
    if item in named:
      continue
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not valid; use key=value or one of {sorted(named)}")
    key, value = (s.strip() for s in item.split("=", 1))
    if key == "bits":
      if not value.isdigit():
        raise ValueError(f"config key 'bits' takes an int in [2, 16] (short for quant=wNaN), not {value!r}")
      key, value = (
          "quant",
          f"w{int(value)}a{int(value)}",
      )  # a preset name (qsim.quant.bits_name; no library import here)
    if key not in c:
      raise ValueError(f"config key {key!r} is not valid; valid keys are {sorted(c.keys()) + ['bits'] + sorted(named)}")
    old = c[key]
    if isinstance(old, (tuple, list)):  # a list: '+'-joined on the command line
      value = tuple(_scalar(s) for s in value.split("+") if s)
    elif isinstance(old, bool):
      if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"config key {key!r} takes a boolean (true/false), not {value!r}")
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(old, (int, float)):
      try:
        value = type(old)(value)
      except ValueError:
        raise ValueError(
            f"config key {key!r} takes a{'n int' if isinstance(old, int) else ' float'}"
            f" (default {old!r}), not {value!r}"
        ) from None
    c[key] = value
  c.lock()
  return c
