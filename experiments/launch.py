"""Multi-process start-up flags shared by the launchers (train, evaluate,
ablate_bits). Where the program runs, not what it computes, so these are
flags and not config fields.

  (none)                        one process, every local device
  --distributed                 jax.distributed.initialize() with no arguments:
                                Cloud TPU VMs, SLURM, Open MPI find the cluster
  --coordinator_address=H:P --num_processes=N --process_id=I
                                an explicit cluster (e.g. GPU hosts); process 0
                                listens on H:P
  --local_device_ids=0,1        the accelerators this process drives (one
                                process per GPU)

Unset flags fall back to QSIM_COORDINATOR_ADDRESS, QSIM_NUM_PROCESSES,
QSIM_PROCESS_ID and QSIM_DISTRIBUTED=auto. Commands: BUILD_NOTES.md,
"Scale-out".
"""

from absl import flags

from qsim import distributed

_AUTO = flags.DEFINE_bool(
    "distributed", False, "Start jax.distributed with the cluster found in the environment (Cloud TPU, SLURM)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes take part (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_LOCAL_DEVICES = flags.DEFINE_list("local_device_ids", None, "Device ids this process uses (e.g. one GPU each).")


def settings() -> dict:
  """``qsim.distributed.initialize`` arguments: the flags, else the
  environment."""
  out = distributed.env_settings()
  given = {
      "coordinator_address": _COORDINATOR.value,
      "num_processes": _NUM_PROCESSES.value,
      "process_id": _PROCESS_ID.value,
  }
  out.update({k: v for k, v in given.items() if v is not None})
  if _AUTO.value:
    out["auto"] = True
  if _LOCAL_DEVICES.value:
    bad = [d for d in _LOCAL_DEVICES.value if not d.strip().isdigit()]
    if bad:
      raise ValueError(
          f"--local_device_ids={','.join(_LOCAL_DEVICES.value)} is not valid; give device ids >= 0, comma separated"
      )
    out["local_device_ids"] = [int(d) for d in _LOCAL_DEVICES.value]
  return out


def init_distributed() -> None:
  """Starts the multi-process runtime if the flags or environment ask for
  it; call first in ``main``, before anything touches a device."""
  distributed.initialize(**settings())
