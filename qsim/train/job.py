"""One training run from a config: data, model, method, checkpoints, summary.

The config (an ``ml_collections.ConfigDict``, see ``experiments/configs``)
holds: dataset, data_dir, download, val_size, train_limit, model, method
(+ its hyper-parameters), quant (QAT config), optimizer, learning_rate,
batch_size, steps, seed, log_every, checkpoint_every, init_from, data_shards
(0 = one block of the training set per process; N on one process trains
on the batches N processes would).
Outputs in ``workdir``: checkpoints/, metrics.jsonl, config.json,
vocab.json (text), summary.json (validation and test accuracy).
"""

from __future__ import annotations

import json
import os
import sys

import jax

from qsim import data as data_lib
from qsim import distributed
from qsim.models import get_model
from qsim.quant import preset
from qsim.runs import write_json
from qsim.train.loop import accuracy, train, variables_of
from qsim.train.methods import MethodConfig


def method_config(c) -> MethodConfig:
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
  """The quant config QAT trains with: a preset without static ranges."""
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
  quant = qat_config(c.quant) if c.method == "qat" else None
  return get_model(c.model, num_classes=num_classes, quant=quant)


def run(c, workdir: str) -> dict:
  """Trains per config ``c``; returns the summary (also in summary.json)."""
  mcfg = method_config(c)  # validate before loading anything
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise OSError(f"cannot create workdir {workdir!r}: {e.strerror}; pass a writable --workdir") from e
  if c.dataset not in data_lib.DATASETS:
    raise ValueError(f"dataset={c.dataset!r} is not valid; choose one of {sorted(data_lib.DATASETS)}")
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
      data_shards=c.get("data_shards") or None,
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
