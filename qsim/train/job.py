"""One training run from a config: data, model, method, checkpoints, summary.

:class:`TrainConfig` holds: dataset, data_dir, download, val_size,
train_limit, test_limit, model, method (+ its hyper-parameters), quant (QAT
config), optimizer, learning_rate, schedule, batch_size, steps, seed,
log_every, checkpoint_every, init_from, data_shards (0 = one block of the
training set per process; N on one process trains on the batches N
processes would). ``experiments/configs`` hold their values as data.
Outputs in ``workdir``: checkpoints/, metrics.jsonl, config.json,
vocab.json (text), summary.json (validation and test accuracy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax

from qsim import configs
from qsim import data as data_lib
from qsim import distributed
from qsim.models import get_model
from qsim.quant import preset
from qsim.runs import write_json
from qsim.train.loop import accuracy, train, variables_of
from qsim.train.methods import MethodConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(configs.FromConfigDict):
  """One training run (see the module docstring for the fields; 0 means
  'all' or 'the default' for the sizes and limits, '' means none for the
  paths). Checked when built: the dataset, the method and its
  hyper-parameters, and the QAT config."""

  dataset: str
  data_dir: str
  download: bool
  val_size: int
  train_limit: int
  test_limit: int
  model: str
  method: str
  quant: str
  eps: float
  step_size: float
  iters: int
  adv_fraction: float
  mixup_alpha: float
  input_box: tuple[float, float] | None
  optimizer: str
  learning_rate: float
  schedule: str
  batch_size: int
  steps: int
  seed: int
  log_every: int
  checkpoint_every: int
  init_from: str
  data_shards: int = 0

  def __post_init__(self):
    method_config(self)
    if self.dataset not in data_lib.DATASETS:
      raise ValueError(f"dataset={self.dataset!r} is not valid; choose one of {sorted(data_lib.DATASETS)}")
    if self.method == "qat":
      qat_config(self.quant)

  def to_dict(self) -> dict:
    """The fields as a dict (what config.json holds).

    Returns:
      Field name -> value.
    """
    return dataclasses.asdict(self)


def method_config(c) -> MethodConfig:
  """The training method config a run config asks for.

  Args:
    c: the run config (method, eps, step_size, iters, adv_fraction,
      mixup_alpha and input_box, None for no clipping).

  Returns:
    The validated method config.

  Raises:
    ValueError: the method or its hyper-parameters are not valid.
  """
  box = None if c.input_box is None else tuple(c.input_box)
  return MethodConfig(
      method=c.method,
      eps=c.eps,
      step_size=c.step_size,
      iters=c.iters,
      adv_fraction=c.adv_fraction,
      mixup_alpha=c.mixup_alpha,
      box=box,
  )


def qat_config(name: str):
  """The quant config QAT trains with: a preset without static ranges.

  Args:
    name: the quant preset's name (e.g. 'w8a8', 'tflite_dynamic').

  Returns:
    The preset's quant config.

  Raises:
    ValueError: the preset has static activation ranges (or is unknown).
  """
  quant = preset(name)
  if any(
      t is not None and t.range == "static" for spec in quant.layer_specs() if spec is not None for t in spec.tensors()
  ):
    raise ValueError(
        f"quant={name!r} has static activation ranges, which are calibrated after training;"
        " for QAT use a dynamic-range config (e.g. 'w8a8', 'tflite_dynamic')"
    )
  return quant


def build_model(c, num_classes: int):
  """The model a run config names: fake-quantized with ``c.quant`` for QAT, else float.

  Args:
    c: the run config (model, method and, for QAT, quant).
    num_classes: the dataset's number of classes.

  Returns:
    The flax model.

  Raises:
    ValueError: the model name is not valid, or the QAT quant config is not
      (see :func:`qat_config`).
  """
  quant = qat_config(c.quant) if c.method == "qat" else None
  return get_model(c.model, num_classes=num_classes, quant=quant)


def run(c: TrainConfig, workdir: str) -> dict:
  """Trains per config ``c``; returns the summary (also in summary.json).

  Args:
    c: the run config (checked when it was built).
    workdir: the run directory, created if missing (see the module doc).

  Returns:
    The summary: model, method, dataset, seed, steps, val_accuracy and test_accuracy.

  Raises:
    ValueError: a training setting :func:`qsim.train.loop.train` refuses (e.g. a batch larger than the data).
    OSError: ``workdir`` cannot be created.
  """
  mcfg = method_config(c)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise OSError(f"cannot create workdir {workdir!r}: {e.strerror}; pass a writable --workdir") from e
  model = build_model(c, data_lib.DATASETS[c.dataset].num_classes)
  # each process reads its own block of every split (the whole split in a single process)
  kw = dict(
      data_dir=c.data_dir or None, download=c.download, val_size=c.val_size or None, shard=distributed.process_shard()
  )
  writer = distributed.is_writer()
  if getattr(model, "vocab_size", None) is not None:
    kw["vocab_size"] = model.vocab_size  # token ids must fit the model's embedding table
  train_d = data_lib.load(c.dataset, "train", limit=c.train_limit or None, **kw)
  extra = {} if train_d.vocab is None else {"vocab": train_d.vocab}
  val_d = data_lib.load(c.dataset, "val", **kw, **extra)
  test_d = data_lib.load(c.dataset, "test", limit=c.test_limit or None, **kw, **extra)
  if writer:
    if train_d.vocab is not None:
      data_lib.text.save_vocab(os.path.join(workdir, "vocab.json"), train_d.vocab)
    write_json(os.path.join(workdir, "config.json"), c.to_dict())
    blocks = f" (this process's block of {jax.process_count()})" if jax.process_count() > 1 else ""
    print(
        f"training {c.model} ({c.method}) on {c.dataset}: {len(train_d)} train / {len(val_d)} val /"
        f" {len(test_d)} test{blocks}, {c.steps} steps of {c.batch_size} on {jax.device_count()} devices,"
        f" seed {c.seed}",
        file=sys.stderr,
        flush=True,
    )
  state = train(
      model,
      train_d.x,
      train_d.y,
      workdir=workdir,
      steps=c.steps,
      batch_size=c.batch_size,
      method=mcfg,
      optimizer=c.optimizer,
      learning_rate=c.learning_rate,
      schedule=c.schedule,
      seed=c.seed,
      log_every=c.log_every,
      checkpoint_every=c.checkpoint_every,
      val=(val_d.x, val_d.y),
      init_from=c.init_from or None,
      data_shards=c.data_shards or None,
  )
  variables = variables_of(state)
  summary = {
      "model": c.model,
      "method": c.method,
      "dataset": c.dataset,
      "seed": c.seed,
      "steps": c.steps,
      "val_accuracy": accuracy(model, variables, val_d.x, val_d.y),
      "test_accuracy": accuracy(model, variables, test_d.x, test_d.y),
  }
  if writer:
    write_json(os.path.join(workdir, "summary.json"), summary)
    print(json.dumps(summary))
  return summary
