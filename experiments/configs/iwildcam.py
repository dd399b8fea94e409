"""ResNet-50 / DenseNet-121 on iWildCam-WILDS at a reduced resolution (112 x 112, a quarter of the study's 448
per side; qsim.data.iwildcam reads the official WILDS folder, caching each decoded split).

  python -m experiments.train --config=experiments/configs/iwildcam.py:data_dir=/data/iwildcam_v2.0 --workdir=runs/iwc_resnet50
  python -m experiments.train --config=experiments/configs/iwildcam.py:model=densenet121,data_dir=/data/iwildcam_v2.0 --workdir=runs/iwc_densenet121

The data: ``wilds.get_dataset('iwildcam', root_dir=R, download=True)`` where there is internet (about 12 GB),
then copy ``R/iwildcam_v2.0`` here. Splits: train (129,809 images), id_val as validation, id_test as the clean
test split, and the OOD test split (unseen camera locations) as the natural shift ``iwildcam/natural/ood_test``.

Training from scratch (no ImageNet weights offline; the study and WILDS fine-tune ImageNet-pretrained backbones,
so expect lower accuracy than the study's 76.01 / 75.78 in distribution): Adam, cosine schedule, 12 epochs of
batch 64 (24,000 steps, WILDS's epoch count); PGD as for CIFAR-10 (eps 4/255, step 1/255, 4 iterations). Not run
here (no iWildCam data on these machines); at 112 px a ResNet-50 step costs about 16x a CIFAR-size (28 px) one
in FLOPs, so this is an accelerator run. ``runlocal`` trains the tiny variant for a few steps (the tests use it
on a fixture in the WILDS layout).
"""

from experiments.configs import common

RUNLOCAL = dict(model="resnet50_tiny", steps=4, batch_size=4, log_every=2, checkpoint_every=2, iters=2)


def get_config(arg: str = ""):
  c = common.base()
  c.dataset = "iwildcam"
  c.data_dir = ""  # '' = qsim.data.iwildcam.DEFAULT_DIR (~/data/iwildcam_v2.0)
  c.model = "resnet50"
  c.steps = 24000
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.eps, c.step_size, c.iters = 4 / 255, 1 / 255, 4
  return common.apply_args(c, arg, RUNLOCAL)
