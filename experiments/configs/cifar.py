"""NiN / ResNet-20 on CIFAR-10 (TFDS ``cifar10``, prepared beforehand:
``tfds build cifar10 --file_format=array_record``).

  python -m experiments.train --config=experiments/configs/cifar.py:model=resnet20 --workdir=runs/resnet20
  python -m experiments.train --config=experiments/configs/cifar.py:model=nin,method=pgd --workdir=runs/nin_pgd

PGD follows the study (eps 4/255, step 1/255, 4 iterations, half of each
batch adversarial), clipped to the [0, 1] input box. Expected: the study
reports NiN 88.27 and ResNet-20 87.44 test accuracy (not measured here: no
CIFAR-10 on the dev machines; runlocal runs on TFDS mock data in the tests).
"""

from experiments.configs import common

RUNLOCAL = dict(model="resnet20_tiny", steps=4, batch_size=8, log_every=2, checkpoint_every=2, val_size=8, iters=2)


def get_config(arg: str = ""):
  c = common.base()
  c.dataset = "cifar10"
  c.model = "resnet20"
  c.steps = 40000
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.eps, c.step_size, c.iters = 4 / 255, 1 / 255, 4
  return common.apply_args(c, arg, RUNLOCAL)
