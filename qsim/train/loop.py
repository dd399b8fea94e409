"""The training loop: pytree state, jit step, orbax checkpoints, auto-resume.

Checkpoints are written and read through :mod:`qsim.runs` (the run directory).

Deterministic for a seed: the parameters come from ``seed``; the batch of
step ``s`` and every random draw of step ``s`` (dropout, attack start,
Mixup weights) derive from ``(seed, s)``, so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have.

Data parallel over a device mesh (:mod:`qsim.distributed`, axis 'data'):
the state is replicated, each global batch is split over the devices, and
the gradient is the mean over the global batch (XLA all-reduces the
per-device sums), so a run on N devices follows the 1-device run up to the
order of float additions. Over several processes each process holds one
block of the training set (``data_shards`` blocks, one per process) and
draws its part of every global batch from its own block; the same run on one
process with ``data_shards=N`` reads the same batches.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from qsim import distributed
from qsim.nn import QUANT_RNG
from qsim.runs import atomic_write, checkpoint_manager, load_variables, restore_state, save_state
from qsim.train.methods import MethodConfig, batch_loss


class TrainState(train_state.TrainState):
  """Step, params, optimizer state, BatchNorm statistics, and the first step
  whose loss was not finite (-1 while all are finite)."""

  batch_stats: Any = None
  bad_step: jax.Array = None


def _log(msg: str) -> None:
  if distributed.is_writer():  # one log for a multi-process run
    print(msg, file=sys.stderr, flush=True)


def make_optimizer(
    name: str, learning_rate: float, steps: int, schedule: str = "cosine", momentum: float = 0.9
) -> optax.GradientTransformation:
  """Adam or SGD (momentum) with a constant or cosine-decayed learning rate.

  Args:
    name: the optimizer, 'adam' or 'sgd'.
    learning_rate: the initial learning rate.
    steps: the training steps; the cosine schedule decays to 0 over them.
    schedule: 'cosine' (default) or 'constant'.
    momentum: SGD's momentum (ignored for Adam).

  Returns:
    The optax optimizer.

  Raises:
    ValueError: ``name`` or ``schedule`` is not valid.
  """
  if schedule == "cosine":
    lr = optax.cosine_decay_schedule(learning_rate, steps)
  elif schedule == "constant":
    lr = learning_rate
  else:
    raise ValueError(f"schedule={schedule!r} is not valid; choose one of ['constant', 'cosine']")
  if name == "adam":
    return optax.adam(lr)
  if name == "sgd":
    return optax.sgd(lr, momentum=momentum)
  raise ValueError(f"optimizer={name!r} is not valid; choose one of ['adam', 'sgd']")


def _is_text(model: nn.Module) -> bool:
  return getattr(model, "vocab_size", None) is not None


def make_forward(model: nn.Module, params, batch_stats, *, embedded: bool):
  """(inputs, dropout key) -> (logits, new batch_stats) in train mode.

  Args:
    model: the flax model.
    params: its parameters.
    batch_stats: its BatchNorm statistics, or None for a model without BatchNorm.
    embedded: the inputs are token embeddings, not token ids (text models
      attacked or mixed in embedding space).

  Returns:
    ``forward(x, key) -> (logits, new batch_stats)``; the new batch_stats are
    None where ``batch_stats`` is. ``key`` seeds dropout and the quantizers'
    random stream.
  """
  kwargs = {"embedded": True} if embedded else {}

  def forward(x, key):
    variables = {"params": params}
    rngs = {"dropout": key, QUANT_RNG: jax.random.fold_in(key, 1)}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
      logits, upd = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"], **kwargs)
      return logits, upd["batch_stats"]
    return model.apply(variables, x, train=True, rngs=rngs, **kwargs), None

  return forward


def make_train_step(model: nn.Module, cfg: MethodConfig, mesh: Mesh | None = None):
  """A jit-compiled ``step(state, x, y, key) -> (state, loss, accuracy)``.

  With ``mesh``, ``x`` and ``y`` are split over its 'data' axis and the
  state and outputs are replicated.

  Args:
    model: the flax model to train.
    cfg: the training method and its hyper-parameters.
    mesh: the device mesh to run data parallel on; None for plain ``jax.jit``.

  Returns:
    The step function: one optimizer step on the batch ``(x, y)`` with the
    random key ``key``; ``loss`` and ``accuracy`` are the batch's.
  """
  # Text models are attacked and mixed in embedding space, never on token ids.
  in_embedding_space = _is_text(model) and cfg.method in ("pgd", "fgsm", "mixup")
  box = None if in_embedding_space else cfg.box

  def step(state: TrainState, x, y, key):
    def loss_fn(params):
      inputs = x
      if in_embedding_space:
        inputs = model.apply({"params": params}, x, method="embed_tokens", rngs={QUANT_RNG: jax.random.fold_in(key, 2)})
      forward = make_forward(model, params, state.batch_stats, embedded=in_embedding_space)
      return batch_loss(forward, inputs, y, key, cfg, box)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    bad = jnp.where((state.bad_step < 0) & ~jnp.isfinite(loss), state.step + 1, state.bad_step)
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return new_state.replace(bad_step=bad), loss, acc

  if mesh is None:
    return jax.jit(step)
  rep, data = distributed.replicated(mesh), distributed.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, data, data, rep), out_shardings=rep)


def init_state(model: nn.Module, x0, tx, seed: int) -> TrainState:
  """The training state at step 0, with ``model``'s parameters drawn from ``seed``.

  Args:
    model: the flax model.
    x0: an example input batch (e.g. one sample); fixes the input shape.
    tx: the optax optimizer.
    seed: the seed of the initial parameters.

  Returns:
    The new state (``bad_step`` -1).
  """
  variables = jax.jit(lambda k, x: model.init({"params": k, "dropout": k}, x))(jax.random.key(seed), x0)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats"),
      bad_step=jnp.asarray(-1, jnp.int32),
  )


@functools.lru_cache(maxsize=16)
def _epoch_permutation(n: int, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
  return np.random.default_rng([seed, epoch] + ([stream] if stream else [])).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int, stream: int = 0) -> np.ndarray:
  """The examples of (0-based) step ``step``: epoch-wise permutations, the remainder of each epoch dropped.

  Args:
    n: the number of examples.
    batch_size: the examples per step, 1 to ``n``.
    seed: the seed of the permutations.
    step: the 0-based training step.
    stream: an independent order (data block ``stream`` of a sharded run;
      block 0 uses the unsharded order).

  Returns:
    ``batch_size`` distinct indices into ``range(n)``.

  Raises:
    ValueError: ``batch_size`` is larger than ``n``.
  """
  per_epoch = n // batch_size
  if per_epoch < 1:
    raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} examples)")
  epoch, pos = divmod(step, per_epoch)
  return _epoch_permutation(n, seed, epoch, stream)[pos * batch_size : (pos + 1) * batch_size]


def sharded_batch_indices(n: int, batch_size: int, seed: int, step: int, shards: int) -> list[np.ndarray]:
  """Step ``step``'s global batch when the ``n`` training examples are cut into ``shards`` blocks.

  The blocks are :class:`qsim.distributed.Shard`, one per process.
  ``shards=1`` is :func:`batch_indices`.

  Args:
    n: the number of training examples (all blocks).
    batch_size: the global batch size; a multiple of ``shards``.
    seed: the seed of the permutations.
    step: the 0-based training step.
    shards: the number of blocks, an int >= 1.

  Returns:
    For each block, the indices *within that block* of its ``batch_size //
    shards`` examples (in block order, they make up the global batch).

  Raises:
    ValueError: ``shards`` is not an int >= 1 dividing ``batch_size``, or a
      block has fewer than ``batch_size // shards`` examples.
  """
  if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1 or batch_size % shards:
    raise ValueError(
        f"data_shards={shards!r} is not valid for batch_size={batch_size}; give an int >= 1 that"
        " divides the batch size"
    )
  out = []
  for i in range(shards):
    start, stop = distributed.Shard(i, shards).bounds(n)
    out.append(batch_indices(stop - start, batch_size // shards, seed, step, stream=i))
  return out


@functools.lru_cache(maxsize=8)
def _predict_fn(model: nn.Module):
  # One compiled function per model (not per call: evaluation runs at every
  # checkpoint). A fixed 'quant' stream keeps stochastic rounding deterministic.
  return jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False, rngs={QUANT_RNG: jax.random.key(0)}), -1))


def predict(model: nn.Module, variables, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Argmax predictions in eval mode; the last batch is padded (exact).

  Args:
    model: the flax model.
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``).
    x: the inputs, batch first (non-empty).
    batch_size: samples per compiled call.

  Returns:
    The predicted class index of each sample.
  """
  try:
    fwd = _predict_fn(model)
  except TypeError:  # a model with an unhashable attribute: compile uncached
    fwd = _predict_fn.__wrapped__(model)
  out = []
  for s in range(0, len(x), batch_size):
    b = x[s : s + batch_size]
    real = len(b)
    if real < batch_size and len(x) > batch_size:
      b = np.concatenate([b, np.zeros((batch_size - real,) + b.shape[1:], b.dtype)])
    out.append(np.asarray(fwd(variables, b))[:real])
  return np.concatenate(out)


def accuracy(model: nn.Module, variables, x, y, batch_size: int = 1000) -> float:
  """Accuracy on ``(x, y)``.

  In a multi-process run each process passes its block and gets the accuracy
  over all blocks (exact integer counts).

  Args:
    model: the flax model.
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``).
    x: the inputs, batch first.
    y: the integer labels.
    batch_size: samples per compiled call.

  Returns:
    The fraction of samples predicted correctly, in [0, 1].
  """
  if jax.process_count() > 1:
    variables = distributed.host_local(variables)  # this host's copy of the replicated state
  correct = int(np.sum(predict(model, variables, x, batch_size) == y)) if len(y) else 0
  correct, n = distributed.sum_over_processes(np.asarray([correct, len(y)]))
  return float(correct / n)


def variables_of(state: TrainState) -> dict:
  """The model variables of a training state.

  Args:
    state: the training state.

  Returns:
    ``{'params': ...}``, with ``'batch_stats'`` where the model has BatchNorm.
  """
  v = {"params": state.params}
  if state.batch_stats is not None:
    v["batch_stats"] = state.batch_stats
  return v


def _write_metrics(path: str, rows: list[dict]) -> None:
  """Rewrites the whole file, tmp + fsync + rename: a kill never leaves a torn line."""
  atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def _read_metrics(path: str, up_to_step: int) -> list[dict]:
  """The rows up to the checkpoint resumed from (later rows are recomputed).
  A torn last line (a file written in place by an older qsim, or cut by a
  crash of the machine before fsync) is dropped; the next write replaces it."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1:
        raise ValueError(f"{path} line {i + 1} is corrupted; delete the file to rerun with fresh metrics") from None
      _log(f"dropped a torn last line of {path}")
  return [r for r in rows if r["step"] <= up_to_step]


def _item(a):
  """A replicated scalar's value on this host (no cross-process transfer)."""
  return distributed.host_local(a).item()


def train(
    model: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    workdir: str,
    steps: int,
    batch_size: int,
    method: MethodConfig = MethodConfig(),
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
    schedule: str = "cosine",
    seed: int = 0,
    log_every: int = 100,
    checkpoint_every: int = 500,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    init_from: str | None = None,
    mesh: Mesh | None = None,
    data_shards: int | None = None,
) -> TrainState:
  """Trains ``model``; resumes automatically from ``workdir/checkpoints``.

  Writes ``workdir/metrics.jsonl`` (step, loss, train accuracy, steps/s, and
  validation accuracy at each checkpoint).

  In a multi-process run ``train_x``, ``train_y`` (and ``val``) are this
  process's block (``qsim.data.load(..., shard=qsim.distributed.process_shard())``);
  in one process they are the whole set, and ``data_shards=N`` trains on the
  same batches as N processes would.

  Args:
    model: the flax model to train (built with a quant config for QAT).
    train_x: the training inputs, batch first.
    train_y: the integer training labels.
    workdir: the run directory (created if missing): checkpoints/ and metrics.jsonl.
    steps: the total optimizer steps, >= 1 (a resumed run continues up to it).
    batch_size: the global batch size; a multiple of the mesh's size and of
      ``data_shards``, at most the training examples per block.
    method: the training method and its hyper-parameters (default: standard).
    optimizer: 'adam' (default) or 'sgd' (momentum 0.9).
    learning_rate: the initial learning rate.
    schedule: 'cosine' (decays to 0 over ``steps``, default) or 'constant'.
    seed: the seed of the parameters, the batch order and every random draw.
    log_every: log a metrics row every this many steps, >= 1.
    checkpoint_every: checkpoint (and evaluate on ``val``) every this many
      steps, >= 1; the last step is always checkpointed.
    val: the validation ``(x, y)`` evaluated at each checkpoint; None to skip.
    init_from: a workdir whose latest checkpoint initialises the parameters
      (e.g. a float run for QAT); None for a fresh initialisation.
    mesh: the devices to train on, data parallel over axis 'data' (default:
      every device of every process).
    data_shards: how many blocks the training set is cut into, one per
      process (default: the process count).

  Returns:
    The final training state, replicated over ``mesh``.

  Raises:
    ValueError: ``steps``, ``log_every`` or ``checkpoint_every`` is < 1;
      ``batch_size`` or ``data_shards`` does not fit the mesh, the process
      count or the data; ``optimizer`` or ``schedule`` is not valid; or
      ``workdir/metrics.jsonl`` is corrupted.
    FileNotFoundError: ``init_from`` has no checkpoint.
    FloatingPointError: a non-finite loss; names the step. The last
      checkpoint written (all finite) is kept.
  """
  if steps < 1 or log_every < 1 or checkpoint_every < 1:
    raise ValueError(f"steps={steps}, log_every={log_every}, checkpoint_every={checkpoint_every} must be >= 1")
  mesh = mesh if mesh is not None else distributed.data_mesh()
  procs, writer = jax.process_count(), distributed.is_writer()
  shards = procs if data_shards is None else data_shards
  if procs > 1 and shards != procs:
    raise ValueError(
        f"data_shards={data_shards!r} is not valid in a run of {procs} processes; give {procs} (one"
        " block per process) or leave it unset"
    )
  local_rows = distributed.local_batch_size(mesh, batch_size)  # validates batch_size against the mesh
  if procs > 1 and local_rows != batch_size // procs:
    raise ValueError(
        f"every process needs as many devices of the mesh: this one holds {local_rows} of the"
        f" {batch_size} rows of a batch, not {batch_size // procs}"
    )

  def indices(s: int) -> np.ndarray:
    """This process's rows of step ``s``'s global batch."""
    if procs > 1:  # from its own block
      return batch_indices(len(train_y), batch_size // procs, seed, s, stream=jax.process_index())
    parts = sharded_batch_indices(len(train_y), batch_size, seed, s, shards)
    return np.concatenate([distributed.Shard(i, shards).bounds(len(train_y))[0] + p for i, p in enumerate(parts)])

  indices(0)  # validates batch_size and data_shards against the data early
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  tx = make_optimizer(optimizer, learning_rate, steps, schedule)
  state = init_state(model, train_x[:1], tx, seed)
  if init_from:
    v = load_variables(init_from)
    state = state.replace(params=v["params"], batch_stats=v.get("batch_stats", state.batch_stats))
    _log(f"initialised from {init_from}")
  state = distributed.replicate(state, mesh)
  mngr = checkpoint_manager(workdir)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  start = mngr.latest_step()
  if start is not None:
    restored = restore_state(mngr, start, flax.serialization.to_state_dict(state))
    state = flax.serialization.from_state_dict(state, restored)
    _log(f"resumed from step {start}")
  metrics = _read_metrics(metrics_path, start or 0)
  step_fn = make_train_step(model, method, mesh)
  key = jax.random.key(seed)
  t0, s0 = time.time(), _item(state.step)

  def save(s):
    if _item(state.bad_step) >= 0:
      return
    save_state(mngr, s, flax.serialization.to_state_dict(state))

  for s in range(s0, steps):
    idx = indices(s)
    x, y = distributed.global_batch(mesh, (train_x[idx], train_y[idx]))  # split over the mesh
    state, loss, acc = step_fn(state, x, y, jax.random.fold_in(key, s))
    done = s + 1
    if done % log_every == 0 or done % checkpoint_every == 0 or done == steps:
      bad = _item(state.bad_step)
      if bad >= 0:
        last = mngr.latest_step()
        raise FloatingPointError(
            f"loss is not finite at step {bad}; the last finite checkpoint (step {last}) is kept in"
            f" {os.path.join(workdir, 'checkpoints')}; lower the learning rate and rerun"
        )
      rate = (done - s0) / max(time.time() - t0, 1e-9)
      row = {
          "step": done,
          "loss": float(_item(loss)),
          "train_accuracy": float(_item(acc)),
          "steps_per_s": round(rate, 2),
      }
      checkpoint = done % checkpoint_every == 0 or done == steps
      if checkpoint and val is not None:
        row["val_accuracy"] = accuracy(model, variables_of(state), *val)
      metrics.append(row)
      if writer:  # before the checkpoint: a kill between the two recomputes the row, never loses it
        _write_metrics(metrics_path, metrics)
      if checkpoint:
        save(done)
      if not writer:
        continue
      _log(
          f"  step {done}/{steps} loss {row['loss']:.4f} acc {row['train_accuracy']:.3f} "
          f"{rate:.1f} steps/s" + (f" val {row['val_accuracy']:.4f}" if "val_accuracy" in row else "")
      )
  return state
