"""The run directory: what a training run leaves behind, and one way to open it.

Training (:mod:`qsim.train`) writes a run directory; evaluation, retraining,
export and the study read it. This module sits below all of them, so none
of those packages imports another to reach a checkpoint::

  <run>/config.json     the training config (model, dataset, method, seed, ...)
  <run>/summary.json    validation and test accuracy (when training finished)
  <run>/vocab.json      the vocabulary (text datasets)
  <run>/metrics.jsonl   one row per logged step
  <run>/checkpoints/    orbax checkpoints of the training state (the latest kept)

Every file is written atomically (:func:`atomic_write`: a temporary file,
fsynced, renamed over the final name), so a killed process never leaves a
torn file. :meth:`Run.open` is the one way to open a run for evaluation: the
config, the model it names, the variables of its latest checkpoint and, for
text, its vocabulary, as one frozen object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from qsim import data as data_lib
from qsim import distributed
from qsim.models import get_model

CONFIG = "config.json"
SUMMARY = "summary.json"
VOCAB = "vocab.json"
CHECKPOINTS = "checkpoints"
REQUIRED_CONFIG_KEYS = ("dataset", "model", "method")


# --- Crash tests: a kill inside a chosen write --------------------------------
#
# With QSIM_KILL_AT_WRITE='N:PHASE' set, this process SIGKILLs itself inside
# its N-th write (atomic_write or a checkpoint save, counted from process
# start) at PHASE: 'torn' (the temporary file holds half the bytes),
# 'unrenamed' (written and fsynced, not yet renamed) or 'renamed' (in place,
# the caller not yet told); in a checkpoint save the first two kill while
# orbax writes in the background, 'renamed' once it finished. With QSIM_WRITE_LOG=PATH each
# write appends 'N KIND PATH' to PATH. Both unset: one dict lookup per
# write. tests/test_crash.py draws its kill points with these.
WRITE_PHASES = ("torn", "unrenamed", "renamed")
_writes = [0]


def _write_started(kind: str, path: str) -> tuple[int, str | None]:
  """(this write's number, the phase to die at or None)."""
  _writes[0] += 1
  n = _writes[0]
  log = os.environ.get("QSIM_WRITE_LOG")
  if log:
    with open(log, "a") as f:
      f.write(f"{n} {kind} {path}\n")
  at = os.environ.get("QSIM_KILL_AT_WRITE")
  if not at:
    return n, None
  target, _, phase = at.partition(":")
  if phase not in WRITE_PHASES or not target.isdigit():
    raise ValueError(f"QSIM_KILL_AT_WRITE={at!r} is not valid; give N:PHASE, N >= 1, PHASE one of {WRITE_PHASES}")
  return n, (phase if int(target) == n else None)


def _die_if(due: str | None, phase: str, n: int, path: str) -> None:
  if due == phase:
    sys.stderr.write(f"QSIM_KILL_AT_WRITE: killed in write {n} ({phase}) of {path}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
  """Calls ``write(file)`` on a temporary binary file next to ``path``, fsyncs it and renames it to ``path``.

  On any error the temporary file is removed, ``path`` is untouched and the
  error is re-raised.

  Args:
    path: the file to write (replaced whole if it exists).
    write: a function that writes the content (bytes) to the open file it is given.
  """
  n, due = _write_started("file", path)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write(f)
      if due == "torn":
        f.truncate(f.tell() // 2)
      f.flush()
      _die_if(due, "torn", n, path)
      os.fsync(f.fileno())
    _die_if(due, "unrenamed", n, path)
    os.replace(tmp, path)
    _die_if(due, "renamed", n, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON (indented, keys sorted) atomically: a full disk leaves no partial file.

  Args:
    path: the JSON file to write (replaced whole if it exists).
    obj: a JSON-serializable object.
  """
  body = json.dumps(obj, indent=1, sort_keys=True).encode()
  atomic_write(path, lambda f: f.write(body))


def read_config(workdir: str) -> dict:
  """The training run's ``config.json`` (model, dataset, method, seed, ...).

  Args:
    workdir: the run directory.

  Returns:
    The config, as a dict with at least model, dataset and method.

  Raises:
    FileNotFoundError: ``workdir`` has no config.json (not a training run).
    ValueError: config.json is corrupted or lacks model, dataset or method.
  """
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training workdir (python -m experiments.train)")
  try:
    with open(path) as f:
      cfg = json.load(f)
    if not isinstance(cfg, dict):
      raise ValueError("not a JSON object")
  except ValueError as e:
    raise ValueError(
        f"{path} is corrupted ({e}); rerun the training command for {workdir!r} (it resumes from"
        " its checkpoints and rewrites config.json)"
    ) from e
  missing = [k for k in REQUIRED_CONFIG_KEYS if k not in cfg]
  if missing:
    raise ValueError(f"{path} lacks {missing}; it is not a qsim training config (python -m experiments.train)")
  return cfg


def read_summary(workdir: str) -> dict | None:
  """The run's ``summary.json``, or None while training has not finished.

  Args:
    workdir: the run directory.

  Returns:
    The summary dict (validation and test accuracy, ...), or None where there is no summary.json.
  """
  path = os.path.join(workdir, SUMMARY)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def checkpoint_manager(workdir: str) -> ocp.CheckpointManager:
  """The orbax manager training saves its state with (the 2 latest kept).

  Args:
    workdir: the run directory; its checkpoints/ is created if missing.

  Returns:
    The checkpoint manager of ``workdir/checkpoints``.
  """
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINTS),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )


def save_state(mngr: ocp.CheckpointManager, step: int, state: dict) -> None:
  """Saves the state dict (``flax.serialization.to_state_dict``) as ``step`` and waits until it is on disk.

  Args:
    mngr: the checkpoint manager (:func:`checkpoint_manager`).
    step: the training step the checkpoint is saved as.
    state: the training state as a state dict.
  """
  where = f"{mngr.directory}/{step}"
  n, due = _write_started("checkpoint", where)
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  _die_if("torn" if due == "unrenamed" else due, "torn", n, where)  # orbax still writing
  mngr.wait_until_finished()
  _die_if(due, "renamed", n, where)


def restore_state(mngr: ocp.CheckpointManager, step: int, like: dict) -> dict:
  """The state dict saved as ``step``, restored into the structure of ``like``.

  Args:
    mngr: the checkpoint manager (:func:`checkpoint_manager`).
    step: the saved step to restore.
    like: a state dict whose structure (and shardings) the restored one takes.

  Returns:
    The restored state dict.
  """
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like)))["state"]


def load_variables(workdir: str, step: int | None = None) -> dict:
  """The model variables (params, batch_stats) of a training run's checkpoint.

  The checkpoint is replicated onto this run's devices and then taken as this
  host's copy.

  Args:
    workdir: the run directory.
    step: the checkpoint's step; None (the default) for the latest.

  Returns:
    ``{'params': ...}``, with ``'batch_stats'`` where the model has BatchNorm.

  Raises:
    FileNotFoundError: no checkpoint.
    ValueError: the checkpoint is truncated, corrupted or holds NaN/Inf;
      the message says which step to delete.
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}; train first (python -m experiments.train)")
  mngr = ocp.CheckpointManager(ckpt_dir, item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}; train first (python -m experiments.train)")
  # Restored replicated onto this run's devices, whatever devices (and
  # processes) saved it: orbax refuses the saved topology when it differs.
  rep = distributed.replicated(distributed.data_mesh())
  where = os.path.join(ckpt_dir, str(step))
  fix = f"delete {where} to fall back to the previous checkpoint, or retrain (python -m experiments.train)"
  try:
    meta = mngr.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rep), meta.tree)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
    detail = (str(e).splitlines() or [""])[0].split(" See full")[0][:200]
    raise ValueError(f"checkpoint {where} is truncated or corrupted ({type(e).__name__}: {detail}); {fix}") from e
  restored = distributed.host_local(restored)  # this host's copy, on its default device below
  out = {"params": jax.tree.map(jnp.asarray, restored["params"])}
  if restored.get("batch_stats") is not None:
    out["batch_stats"] = jax.tree.map(jnp.asarray, restored["batch_stats"])
  bad = [
      jax.tree_util.keystr(p)
      for p, a in jax.tree_util.tree_flatten_with_path(out)[0]
      if not bool(jnp.isfinite(a).all())
  ]
  if bad:  # training never saves non-finite state: these bytes were damaged on disk
    raise ValueError(
        f"checkpoint {where} holds NaN/Inf in {bad[:3]}{' ...' if len(bad) > 3 else ''} (corrupted on disk); {fix}"
    )
  return out


@dataclasses.dataclass(frozen=True)
class Run:
  """An opened training run: its directory, config, model and weights.

  Attributes:
    path: the run directory, as given.
    config: its config.json (:func:`read_config`).
    model: the float model the config names, for the config's dataset.
    variables: the latest checkpoint's variables (:func:`load_variables`).
    vocab: the vocabulary (text datasets), else None.
  """

  path: str
  config: dict
  model: nn.Module
  variables: dict
  vocab: list[str] | None = None

  @classmethod
  def open(cls, path: str, config: dict | None = None) -> Run:
    """Opens the run directory ``path``.

    Args:
      path: the run directory.
      config: its already read config.json, to skip reading it again; None
        (the default) reads it.

    Returns:
      The opened run: config, float model, latest checkpoint's variables and,
      for text, vocabulary.

    Raises:
      FileNotFoundError: ``path`` has no config.json or no checkpoint.
      ValueError: config.json or the checkpoint is corrupted, or the config
        names an unknown model.
    """
    config = read_config(path) if config is None else config
    info = data_lib.DATASETS[config["dataset"]]
    model = get_model(config["model"], num_classes=info.num_classes)
    vocab = data_lib.text.load_vocab(os.path.join(path, VOCAB)) if info.kind == "text" else None
    return cls(path=path, config=config, model=model, variables=load_variables(path), vocab=vocab)

  @property
  def dataset(self) -> str:
    return self.config["dataset"]

  @property
  def num_classes(self) -> int:
    return data_lib.DATASETS[self.dataset].num_classes

  @property
  def summary(self) -> dict | None:
    """summary.json (None while training has not finished)."""
    return read_summary(self.path)

  def data_kwargs(self, data_dir: str | None = None) -> dict:
    """Keyword arguments of :func:`qsim.data.load` for this run's data.

    Args:
      data_dir: the data directory; None (the default) for the one the run was
        trained with.

    Returns:
      ``{'data_dir': ...}`` (None for the default data directory).
    """
    return dict(data_dir=data_dir or self.config.get("data_dir") or None)

  def text_kwargs(self) -> dict:
    """Keyword arguments of :func:`qsim.data.load` that encode text as the run's model reads it.

    Returns:
      ``{'vocab': ..., 'vocab_size': ...}`` for a text run; empty for images.
    """
    if self.vocab is None:
      return {}
    return {"vocab": self.vocab, "vocab_size": getattr(self.model, "vocab_size", 20000)}

  def calibration(self, samples: int, data_dir: str | None = None) -> data_lib.Data:
    """The first ``samples`` training samples: static ranges are calibrated on them.

    The training split is the one the run cut (validation held out).

    Args:
      samples: how many training samples to load.
      data_dir: the data directory; None (the default) for the run's.

    Returns:
      The calibration data.
    """
    return self.split("train", samples, data_dir)

  def split(self, split: str, limit: int | None, data_dir: str | None = None) -> data_lib.Data:
    """The first ``limit`` samples of one of the run's splits, encoded as its model reads them.

    'train' and 'val' are cut as the run cut them (its ``val_size``).

    Args:
      split: 'train', 'val' or 'test'.
      limit: how many samples (None: all).
      data_dir: the data directory; None (the default) for the run's.

    Returns:
      The samples and labels.
    """
    return data_lib.load(
        self.dataset,
        split,
        limit=limit,
        val_size=self.config.get("val_size") or None,
        **self.data_kwargs(data_dir),
        **self.text_kwargs(),
    )
