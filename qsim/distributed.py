"""Running on many devices and many hosts with JAX's own runtime.

One program per host (``jax.distributed.initialize``), one device mesh over
every device of every host (axis ``'data'``), each host reading its own
contiguous block of every dataset (:class:`Shard`), results gathered with
``jax.experimental.multihost_utils`` and written by process 0 only.

In a single process (the default) every function here reduces to the plain
one-host behaviour: the mesh covers the local devices, the shard is the whole
dataset, gathering is ``np.asarray``, and this process writes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"  # the mesh axis the batch is split over


@dataclasses.dataclass(frozen=True)
class Shard:
  """Block ``index`` of ``count`` contiguous, near-equal blocks of a dataset
  (sizes differ by at most one, as ``tfds.even_splits``)."""

  index: int = 0
  count: int = 1

  def __post_init__(self):
    for name in ("index", "count"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"Shard {name}={v!r} is not valid; give an int")
    if self.count < 1 or not 0 <= self.index < self.count:
      raise ValueError(
          f"Shard(index={self.index}, count={self.count}) is not valid; give count >= 1 and 0 <= index < count"
      )

  def bounds(self, n: int) -> tuple[int, int]:
    """``(start, stop)`` of this block in a dataset of ``n`` examples.

    Args:
      n: the number of examples in the whole dataset (>= 0).

    Returns:
      ``(start, stop)``, the half-open row range of this block; block sizes
      differ by at most one.
    """
    return n * self.index // self.count, n * (self.index + 1) // self.count

  @property
  def whole(self) -> bool:
    return self.count == 1


def process_shard() -> Shard:
  """This process's block of every dataset: (process index, process count).

  Returns:
    ``Shard(jax.process_index(), jax.process_count())``.
  """
  return Shard(jax.process_index(), jax.process_count())


def is_writer() -> bool:
  """Whether this process writes results files (process 0 only).

  Returns:
    True on process 0, False on every other process.
  """
  return jax.process_index() == 0


def _check_int(name: str, value, low: int) -> None:
  if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
    raise ValueError(f"{name}={value!r} is not valid; give an int >= {low} (or leave it unset)")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    local_device_ids: list[int] | None = None,
) -> bool:
  """Starts JAX's multi-process runtime when asked to; returns whether it did.

  Nothing given and ``auto=False``: a single process (nothing happens).
  ``auto=True`` with nothing else: ``jax.distributed.initialize()`` with no
  arguments, which reads the cluster from its environment (Cloud TPU VMs,
  SLURM, Open MPI, or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
  ``JAX_PROCESS_ID``). Otherwise all three of ``coordinator_address``
  ('host:port' of process 0), ``num_processes`` and ``process_id`` are
  needed. Call it before anything touches a device.

  Args:
    coordinator_address: ``'host:port'`` of process 0 (port in 1..65535).
    num_processes: the number of processes (>= 1).
    process_id: this process's index, ``0 <= process_id < num_processes``.
    auto: let ``jax.distributed.initialize`` detect the values not given
      from the cluster's environment.
    local_device_ids: the local devices this process uses (default: all);
      only valid together with a multi-process run.

  Returns:
    True if ``jax.distributed.initialize`` was called, False for a single
    process.

  Raises:
    ValueError: a missing or bad value (named, with its valid range).
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  if not auto and all(v is None for v in given.values()):
    if local_device_ids is not None:
      raise ValueError("local_device_ids is only used with a multi-process run; give the coordinator too")
    return False
  _check_int("num_processes", num_processes, 1)
  _check_int("process_id", process_id, 0)
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise ValueError(
        f"process_id={process_id} is not valid for num_processes={num_processes};"
        f" give 0 <= process_id < {num_processes}"
    )
  if coordinator_address is not None:
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(
          f"coordinator_address={coordinator_address!r} is not valid; give 'host:port' with"
          " a port in 1..65535 (process 0's address)"
      )
  missing = [k for k, v in given.items() if v is None]
  if not auto and missing:
    raise ValueError(
        f"a multi-process run needs coordinator_address, num_processes and process_id;"
        f" missing {missing} (or ask for auto-detection, e.g. on Cloud TPU)"
    )
  jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids=local_device_ids)
  return True


def env_settings() -> dict[str, Any]:
  """``initialize`` keyword arguments from the environment.

  Reads ``QSIM_COORDINATOR_ADDRESS``, ``QSIM_NUM_PROCESSES``,
  ``QSIM_PROCESS_ID`` and ``QSIM_DISTRIBUTED=auto`` (unset ones are left out).

  Returns:
    A dict with some of ``coordinator_address`` (str), ``num_processes`` and
    ``process_id`` (int) and ``auto`` (True); empty when none is set.

  Raises:
    ValueError: ``QSIM_NUM_PROCESSES`` or ``QSIM_PROCESS_ID`` is not a
      non-negative int, or ``QSIM_DISTRIBUTED`` is not 'auto', 'off' or empty.
  """
  out: dict[str, Any] = {}
  env = os.environ
  if env.get("QSIM_COORDINATOR_ADDRESS"):
    out["coordinator_address"] = env["QSIM_COORDINATOR_ADDRESS"]
  for key, name in (("QSIM_NUM_PROCESSES", "num_processes"), ("QSIM_PROCESS_ID", "process_id")):
    if env.get(key):
      if not env[key].strip().isdigit():
        raise ValueError(f"{key}={env[key]!r} is not valid; give an int >= {1 if name == 'num_processes' else 0}")
      out[name] = int(env[key])
  mode = env.get("QSIM_DISTRIBUTED", "")
  if mode not in ("", "auto", "off"):
    raise ValueError(f"QSIM_DISTRIBUTED={mode!r} is not valid; choose one of ['auto', 'off'] or leave it unset")
  if mode == "auto":
    out["auto"] = True
  return out


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh, axis ``'data'``, over ``devices``.

  Args:
    devices: the devices to span, in order; None = every device of every
      process (``jax.devices()``), in process order.

  Returns:
    A ``Mesh`` with the one axis ``'data'`` of size ``len(devices)``.

  Raises:
    ValueError: ``devices`` is empty.
  """
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("data_mesh needs at least one device")
  return Mesh(np.asarray(devices), (DATA,))


def mesh_size(mesh: Mesh) -> int:
  """How many ways the batch is split (the size of the 'data' axis).

  Args:
    mesh: a mesh with an axis named ``'data'``.

  Returns:
    The size of the mesh's ``'data'`` axis.

  Raises:
    ValueError: the mesh has no ``'data'`` axis.
  """
  if DATA not in mesh.axis_names:
    raise ValueError(f"the mesh has axes {mesh.axis_names}; qsim splits the batch over an axis named {DATA!r}")
  return mesh.shape[DATA]


def local_batch_size(mesh: Mesh, global_batch: int) -> int:
  """This process's rows of a global batch split over the mesh's 'data' axis.

  Args:
    mesh: a mesh with an axis named ``'data'``.
    global_batch: the batch size over all processes.

  Returns:
    The number of rows of the global batch held by this process's devices.

  Raises:
    ValueError: ``global_batch`` is not a multiple of the ``'data'`` axis size
      (or the mesh has no ``'data'`` axis).
  """
  n = mesh_size(mesh)
  if global_batch % n:
    raise ValueError(
        f"batch_size={global_batch} is not valid on a mesh of {n} devices on the 'data' axis; give a"
        f" multiple of {n}"
    )
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return global_batch * len(local) // n


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding that splits axis 0 (the batch) over the mesh's 'data' axis.

  Args:
    mesh: a mesh with an axis named ``'data'``.

  Returns:
    ``NamedSharding(mesh, PartitionSpec('data'))``.
  """
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that keeps a full copy on every device of the mesh.

  Args:
    mesh: the device mesh.

  Returns:
    ``NamedSharding(mesh, PartitionSpec())``.
  """
  return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A full copy of ``tree`` on every device of the mesh.

  Every process passes the same values (e.g. the same checkpoint or seed).

  Args:
    tree: a pytree of arrays (numpy, or global/single-device JAX arrays).
    mesh: the device mesh.

  Returns:
    ``tree`` with every leaf a JAX array replicated over ``mesh``.
  """
  if jax.process_count() > 1:
    tree = host_local(tree)  # global or single-device arrays -> this host's copy
  return jax.device_put(tree, replicated(mesh))


def global_batch(mesh: Mesh, local: Any) -> Any:
  """A pytree of this process's rows (numpy) as global arrays split over 'data'.

  Each process passes its own rows, the same shapes everywhere.

  Args:
    mesh: a mesh with an axis named ``'data'``.
    local: a pytree of this process's rows (batch on axis 0).

  Returns:
    The same pytree of global JAX arrays, axis 0 split over ``'data'`` (all
    processes' rows together, in process order).
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local)


def to_host(tree: Any) -> Any:
  """Global arrays (any sharding) as full numpy arrays on every process.

  Args:
    tree: a pytree of JAX arrays.

  Returns:
    The same pytree of numpy arrays, each the full global value (gathered
    over processes when there are several).
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree)


def host_local(tree: Any) -> Any:
  """Replicated global arrays as numpy arrays of this process.

  No communication: every process holds a full copy.

  Args:
    tree: a pytree of replicated JAX arrays (other leaves go through
      ``np.asarray``).

  Returns:
    The same pytree of numpy arrays (this process's first addressable copy).
  """
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else np.asarray(a), tree)


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """Element-wise sum of a small host array over processes (exact for ints).

  Args:
    values: this process's array; the same shape on every process.

  Returns:
    The sum over processes, same shape as ``values``.
  """
  values = np.asarray(values)
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def gather_rows(values: np.ndarray) -> list[np.ndarray]:
  """Each process's host array (any length along axis 0) on every process.

  Args:
    values: this process's rows; trailing shape and dtype the same on every
      process.

  Returns:
    One array per process, in process order, each with that process's rows.
  """
  values = np.asarray(values)
  if jax.process_count() == 1:
    return [values]
  counts = np.asarray(multihost_utils.process_allgather(np.asarray(len(values)))).reshape(-1)
  width = int(counts.max())
  pad = np.zeros((width - len(values),) + values.shape[1:], values.dtype)
  stacked = np.asarray(multihost_utils.process_allgather(np.concatenate([values, pad])))
  return [stacked[p, : int(counts[p])] for p in range(len(counts))]


def broadcast(value: np.ndarray) -> np.ndarray:
  """Process 0's host array on every process (e.g. which work is left).

  Args:
    value: this process's array; only process 0's value is kept.

  Returns:
    Process 0's ``value`` as a numpy array.
  """
  if jax.process_count() == 1:
    return np.asarray(value)
  return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def sync(name: str) -> None:
  """Waits until every process reaches this point.

  Args:
    name: a label for this barrier, the same on every process.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
