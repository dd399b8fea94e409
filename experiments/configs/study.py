"""The study in one command: RQ1-RQ4 for one dataset, with seeds and intervals.

  python -m experiments.study --config=experiments/configs/study.py:quick --workdir=runs/study_quick
  python -m experiments.study --config=experiments/configs/study.py --workdir=runs/study
  python -m experiments.study --config=experiments/configs/study.py:dataset=mnist --workdir=runs/study_mnist
  python -m experiments.study --config=experiments/configs/study.py:runlocal --workdir=/tmp/study

For each model x training method (standard, QAT fine-tuned from the standard
checkpoint, PGD adversarial, Mixup) x seed: train; evaluate the study's four
quantizers plus the wNaN grid (``bits``) on the clean test split and every
shifted set (``shifts`` at ``severities``); retrain each standard checkpoint
with its disagreements (``retrain_*``: strategies all / margin / random);
then write workdir/report.md answering RQ1-RQ4, each with a verdict against
the original study's claim. Lists are '+'-separated. Rerunning the same
command resumes (finished training runs, sweep units and retraining rounds
are kept).

Settings:
* default ("full"): LeNet-1, LeNet-5 and the row-sequence GRU on the offline
  Fashion-MNIST, 3 seeds, 6,000 training steps (PGD: 10 iterations), all 15
  MNIST-C corruptions x 5 severities on the whole test split, bits 2..8,
  retraining with tflite_int8 and w4a4. About 8 hours on the 2-core CPU (PGD
  training dominates: 36 runs); about 1 hour on one GPU.
* ``quick`` (the README's main job): the same models and methods, 2 seeds,
  400 training steps (PGD: 3 iterations), the 15 corruptions at severities 1,
  3 and 5 on 500 test images, bits 2, 4 and 8, retraining with w4a4 on a
  2,000-sample pool, 0.2 epochs: about 15 minutes on the 2-core CPU.
* ``dataset=mnist`` / ``cifar10`` (with ``models=resnet20+nin``) use TFDS's
  prepared data (download=False): for Cloud TPU or GPU machines that have it.
"""

from experiments.configs import common

RUNLOCAL = dict(models="lenet_tiny", methods="standard+qat", seeds="0", train_steps=8, qat_steps=4, pgd_iters=2,
                train_limit=512, val_size=400, batch_size=32, limit=100, shifts="c/fog+c/rotate", severities="2+5",
                bits="4", quantizers="tflite_int8+fp16", retrain_quantizers="w4a4", retrain_strategies="all+random",
                retrain_pool="val[:200]", retrain_eval_split="test[:150]", retrain_epochs=0.2,
                retrain_shift_limit=60, eval_batch_size=100, calib_samples=40)
QUICK = dict(seeds="0+1", train_steps=400, qat_steps=100, pgd_iters=3, limit=500, severities="1+3+5", bits="2+4+8",
             retrain_quantizers="w4a4", retrain_pool="val[:2000]", retrain_eval_split="test[:2000]",
             retrain_epochs=0.2, retrain_shift_limit=200)


def get_config(arg: str = ""):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist_debian"
  c.models = "lenet1+lenet5+gru_rows"
  c.methods = "standard+qat+pgd+mixup"
  c.seeds = "0+1+2"
  # training (per model, the rest of experiments/configs/mnist.py or rows.py)
  c.train_steps = 6000
  c.batch_size = 128
  c.train_limit = 0
  c.val_size = 0
  c.qat_steps = 1000  # QAT fine-tunes the standard checkpoint
  c.qat_quant = "w8a8"
  c.qat_learning_rate = 1e-4
  c.pgd_iters = 10
  # evaluation
  c.quantizers = "tflite_int8+tflite_dynamic+weight_only_int8+fp16"
  c.bits = "2+3+4+5+6+7+8"
  c.shifts = "c"
  c.severities = "1+2+3+4+5"
  c.limit = 0
  c.eval_batch_size = 500
  c.calib_samples = 100
  # retraining
  c.retrain_quantizers = "tflite_int8+w4a4"
  c.retrain_strategies = "all+margin+random"
  c.retrain_rounds = 1
  c.retrain_epochs = 1.0
  c.retrain_pool = "val"
  c.retrain_eval_split = "test"
  c.retrain_shift_limit = 1000
  return common.apply_args(c, arg, RUNLOCAL, {"quick": QUICK, "full": {}})
