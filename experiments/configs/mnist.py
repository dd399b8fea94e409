"""LeNet-1 / LeNet-5 on 28x28 gray images (the study's MNIST models).

Default data: Fashion-MNIST from Debian (offline). Real MNIST through TFDS:
add ``dataset=mnist`` (needs the prepared TFDS data).

  python -m experiments.train --config=experiments/configs/mnist.py --workdir=runs/lenet5
  python -m experiments.train --config=experiments/configs/mnist.py:method=qat,init_from=runs/lenet5,steps=1000 --workdir=runs/lenet5_qat
  python -m experiments.train --config=experiments/configs/mnist.py:method=pgd --workdir=runs/lenet5_pgd
  python -m experiments.train --config=experiments/configs/mnist.py:runlocal --workdir=/tmp/smoke

Expected (2-core CPU, Fashion-MNIST): LeNet-5 float >= 0.90 test accuracy in
6,000 steps (under 10 minutes); QAT w8a8 from it within 1 point. PGD follows
the study's MNIST attack (eps 0.3, step 0.1, 10 iterations, half of each
batch adversarial). Measured figures: BUILD_NOTES.md.
"""

from experiments.configs import common

RUNLOCAL = dict(
    model="lenet_tiny",
    steps=6,
    batch_size=32,
    log_every=3,
    checkpoint_every=3,
    train_limit=512,
    test_limit=256,
    val_size=256,
    iters=2,
)


def get_config(arg: str = ""):
  c = common.base()
  c.model = "lenet5"
  c.steps = 6000
  c.eps, c.step_size, c.iters = 0.3, 0.1, 10
  return common.apply_args(c, arg, RUNLOCAL)
