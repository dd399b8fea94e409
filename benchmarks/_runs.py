"""Shared benchmark helper: small but really trained Fashion-MNIST checkpoints, cached."""

import os


def trained(cache: str, name: str, steps: int) -> str:
  """The run directory of ``name`` trained for ``steps`` steps (seed 0), trained first if not cached.

  Args:
    cache: the folder of cached runs (``<name>_<steps>`` in it).
    name: a model name (``qsim.models.MODELS``).
    steps: training steps (another count is another checkpoint).

  Returns:
    The run directory.
  """
  from experiments.configs import mnist  # pylint: disable=g-import-not-at-top
  from qsim.train import job  # pylint: disable=g-import-not-at-top

  path = os.path.join(cache, f"{name}_{steps}")
  if not os.path.exists(os.path.join(path, "summary.json")):
    print(f"training {name} for {steps} steps -> {path}", flush=True)
    job.run(
        job.TrainConfig.from_config_dict(
            mnist.get_config(f"model={name},steps={steps},batch_size=64,seed=0,log_every=200,checkpoint_every=200")
        ),
        path,
    )
  return path
