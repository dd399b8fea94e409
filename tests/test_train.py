"""Training: every method steps, resume after a kill equals an uninterrupted
run, determinism, NaN handling, launcher configs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import cifar, imdb, mnist, rows
from qsim.models import get_model
from qsim.quant import preset
from qsim.runs import load_variables
from qsim.train import MethodConfig, train
from qsim.train import job
from qsim.train.loop import init_state, make_optimizer, make_train_step
from qsim.train.methods import pgd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.key(0)
X = np.asarray(jax.random.uniform(jax.random.key(1), (64, 28, 28, 1)))
Y = np.asarray(jax.random.randint(jax.random.key(2), (64,), 0, 10))


@pytest.mark.parametrize("method", ["standard", "qat", "pgd", "fgsm", "mixup"])
@pytest.mark.parametrize("kind", ["image", "text"])
def test_one_step_of_each_method(method, kind):
  quant = preset("w8a8") if method == "qat" else None
  if kind == "image":
    model, x = get_model("lenet_tiny", num_classes=10, quant=quant), X[:8]
  else:
    model, x = get_model("lstm_tiny", num_classes=10, quant=quant), np.asarray(jax.random.randint(KEY, (8, 6), 0, 50))
  state = init_state(model, x[:1], make_optimizer("adam", 1e-2, 10), 0)
  step = make_train_step(model, MethodConfig(method=method, iters=2))
  new, loss, _ = step(state, x, Y[:8], KEY)
  assert np.isfinite(float(loss)) and int(new.step) == 1
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)))


def test_pgd_stays_in_eps_ball_and_input_box_and_raises_loss():
  model = get_model("lenet_tiny", num_classes=10)
  params = model.init(KEY, X[:1])["params"]
  fwd = lambda x, k: (model.apply({"params": params}, x), None)
  cfg = MethodConfig(method="pgd", eps=0.1, step_size=0.03, iters=5)
  adv = pgd(fwd, jnp.asarray(X[:16]), jnp.asarray(Y[:16]), KEY, cfg, (0.0, 1.0))
  assert float(jnp.max(jnp.abs(adv - X[:16]))) <= 0.1 + 1e-6
  assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
  ce = lambda x: float(jnp.mean(-jax.nn.log_softmax(model.apply({"params": params}, x))[jnp.arange(16), Y[:16]]))
  assert ce(adv) > ce(jnp.asarray(X[:16]))


def _recording_linear(w):
  """A linear model as a method's forward, recording every input it is given."""
  seen = []

  def forward(x, key):
    del key
    if not isinstance(x, jax.core.Tracer):  # the attack's inner steps are traced; keep the inputs trained on
      seen.append(np.asarray(x))
    return x.reshape(x.shape[0], -1) @ w, None

  return forward, seen


def test_mixup_trains_on_convex_combinations_with_the_drawn_lambda():
  """Each input row is lam * x_i + (1 - lam) * x_perm(i), one lam for the batch, perm a permutation, and the
  loss mixes the two labels' cross-entropies with the same lam."""
  from qsim.train.methods import batch_loss, cross_entropy  # pylint: disable=g-import-not-at-top

  n = 12
  x = jnp.eye(n, dtype=jnp.float32) * 2.0  # row i = 2 e_i: a mixed row shows both its sources and lam
  y = jnp.arange(n) % 3
  w = jax.random.normal(KEY, (n, 3))
  forward, seen = _recording_linear(w)
  loss, _ = batch_loss(forward, x, y, jax.random.key(7), MethodConfig(method="mixup", mixup_alpha=0.4), None)
  mixed = seen[-1] / 2.0
  perm = np.array([max((j for j in np.flatnonzero(mixed[i]) if j != i), default=i) for i in range(n)])
  assert sorted(perm) == list(range(n)) and (perm != np.arange(n)).any()
  lam = float(mixed[perm != np.arange(n)][0][np.flatnonzero(perm != np.arange(n))[0]])
  assert 0 < lam < 1
  for i in range(n):
    want_row = np.zeros(n)
    want_row[i] += lam
    want_row[perm[i]] += 1 - lam
    np.testing.assert_allclose(mixed[i], want_row, rtol=1e-6, atol=1e-7)
  logits = forward(jnp.asarray(seen[-1]), None)[0]
  want = lam * cross_entropy(logits, y) + (1 - lam) * cross_entropy(logits, y[perm])
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert abs(float(loss) - float(cross_entropy(logits, y))) > 1e-4


def test_fgsm_perturbs_the_adversarial_fraction_by_eps_times_the_gradient_sign():
  from qsim.train.methods import batch_loss, cross_entropy  # pylint: disable=g-import-not-at-top

  x = jnp.asarray(X[:8].reshape(8, -1)[:, :20])
  y = jnp.asarray(Y[:8]) % 3
  w = jax.random.normal(KEY, (20, 3))
  forward, seen = _recording_linear(w)
  cfg = MethodConfig(method="fgsm", eps=0.05, adv_fraction=0.5)
  batch_loss(forward, x, y, jax.random.key(3), cfg, (0.0, 1.0))
  g = jax.grad(lambda v: cross_entropy(v @ w, y[:4]))(x[:4])
  want = jnp.clip(x[:4] + 0.05 * jnp.sign(g), 0.0, 1.0)
  got = seen[-1]
  np.testing.assert_allclose(got[:4], want, atol=1e-6)  # the first half attacked, one signed step, in the box
  np.testing.assert_array_equal(got[4:], x[4:])  # the rest clean
  assert float(cross_entropy(got[:4] @ w, y[:4])) > float(cross_entropy(x[:4] @ w, y[:4]))


def test_qat_step_trains_the_quantized_forward():
  """The QAT step's loss is the quantized model's cross-entropy, not the float model's."""
  from qsim.train.methods import cross_entropy  # pylint: disable=g-import-not-at-top

  model = get_model("lenet_tiny", num_classes=10, quant=preset("w4a4"))
  state = init_state(model, X[:1], make_optimizer("adam", 1e-2, 10), 0)
  _, loss, _ = make_train_step(model, MethodConfig(method="standard"))(state, X[:16], Y[:16], KEY)
  quant = cross_entropy(model.apply({"params": state.params}, X[:16]), Y[:16])
  flt = cross_entropy(model.clone(quant=None).apply({"params": state.params}, X[:16]), Y[:16])
  np.testing.assert_allclose(float(loss), float(quant), rtol=1e-6)
  assert abs(float(quant) - float(flt)) > 1e-4


def test_bad_method_config():
  with pytest.raises(ValueError, match=r"method='cutmix' is not valid; choose one of"):
    MethodConfig(method="cutmix")
  with pytest.raises(ValueError, match="adv_fraction"):
    MethodConfig(method="pgd", adv_fraction=1.5)
  with pytest.raises(ValueError, match=r"batch_size=100 is larger than the dataset \(64 examples\)"):
    train(get_model("lenet_tiny", num_classes=10), X, Y, workdir="/tmp/unused", steps=1, batch_size=100)


def _params(workdir):
  return jax.tree.leaves(load_variables(workdir)["params"])


def test_resume_equals_uninterrupted_and_is_deterministic(tmp_path):
  model = get_model("lenet_tiny", num_classes=10)
  # constant learning rate: a 3-step run is then exactly the first half of a
  # 6-step run (a cosine schedule depends on the total; the kill test below
  # interrupts a real cosine run instead)
  kw = dict(
      steps=6, batch_size=16, log_every=3, checkpoint_every=3, method=MethodConfig(method="mixup"), schedule="constant"
  )
  train(model, X, Y, workdir=str(tmp_path / "a"), **kw)
  train(model, X, Y, workdir=str(tmp_path / "b"), **{**kw, "steps": 3})  # stopped at step 3
  train(model, X, Y, workdir=str(tmp_path / "b"), **kw)  # resumed
  train(model, X, Y, workdir=str(tmp_path / "c"), **kw)  # same seed again
  for a, b, c in zip(_params(tmp_path / "a"), _params(tmp_path / "b"), _params(tmp_path / "c")):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  rows_b = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
  assert [r["step"] for r in rows_b] == [3, 6]  # no duplicated rows after resume


def test_nan_loss_stops_with_step_and_keeps_last_finite_checkpoint(tmp_path):
  model = get_model("lenet_tiny", num_classes=10)
  kw = dict(batch_size=16, log_every=2, checkpoint_every=2, optimizer="sgd", schedule="constant", seed=0)
  train(model, X, Y, workdir=str(tmp_path), steps=2, learning_rate=1e-3, **kw)
  with pytest.raises(
      FloatingPointError, match=r"loss is not finite at step \d+; the last finite checkpoint \(step 2\)"
  ):
    train(model, X, Y, workdir=str(tmp_path), steps=40, learning_rate=1e30, **kw)
  assert all(np.all(np.isfinite(p)) for p in _params(tmp_path))


def test_launcher_resumes_after_kill(tmp_path):
  """kill -9 a real training process mid-run, rerun the same command: the
  final parameters equal an uninterrupted run's."""
  args = "runlocal,steps=60,checkpoint_every=5,log_every=5"
  cmd = lambda wd: [
      sys.executable,
      "-m",
      "experiments.train",
      f"--config=experiments/configs/mnist.py:{args}",
      f"--workdir={wd}",
  ]
  env = {**os.environ, "PYTHONPATH": ROOT}
  if not os.path.exists("/usr/share/datasets/fashion-mnist"):
    pytest.skip("make test installs dataset-fashion-mnist")
  killed = tmp_path / "killed"
  proc = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not (killed / "checkpoints" / "10").exists():
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (killed / "checkpoints" / "10").exists(), "the run never reached its step-10 checkpoint"
  assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
  subprocess.run(cmd(killed), cwd=ROOT, env=env, check=True, capture_output=True)
  subprocess.run(cmd(tmp_path / "whole"), cwd=ROOT, env=env, check=True, capture_output=True)
  for a, b in zip(_params(killed), _params(tmp_path / "whole")):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(l)["step"] for l in open(killed / "metrics.jsonl")]
  assert steps == sorted(set(steps)) and steps[-1] == 60


@pytest.mark.parametrize(
    "module,arg",
    [
        (mnist, "runlocal,method=qat,bits=4"),
        (mnist, "runlocal,method=pgd"),
        (rows, "runlocal,method=mixup"),
        (cifar, "runlocal,method=fgsm"),
        (imdb, "runlocal,method=pgd"),
        (imdb, "runlocal,method=mixup"),
    ],
)
def test_configs_run_end_to_end(module, arg, tmp_path):
  c = module.get_config(arg)
  if c.dataset == "fashion_mnist_debian" and not os.path.exists("/usr/share/datasets/fashion-mnist"):
    pytest.skip("make test installs dataset-fashion-mnist")
  with tfds.testing.mock_data(num_examples=24):
    summary = job.run(job.TrainConfig.from_config_dict(c), str(tmp_path))
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  for f in ("config.json", "metrics.jsonl", "summary.json"):
    assert (tmp_path / f).exists()
  assert (tmp_path / "vocab.json").exists() == (c.dataset == "imdb_reviews")


def test_config_errors():
  with pytest.raises(ValueError, match=r"config key 'modle' is not valid; valid keys are"):
    mnist.get_config("modle=lenet1")
  with pytest.raises(ValueError, match="static activation ranges"):
    job.TrainConfig.from_config_dict(mnist.get_config("method=qat,quant=tflite_int8"))


def test_text_adversarial_training_updates_the_embedding():
  model = get_model("lstm_tiny", num_classes=10)
  x = np.asarray(jax.random.randint(KEY, (8, 6), 0, 50))
  state = init_state(model, x[:1], make_optimizer("sgd", 0.5, 10, "constant"), 0)
  step = make_train_step(model, MethodConfig(method="pgd", iters=2, adv_fraction=1.0))
  new, _, _ = step(state, x, Y[:8], KEY)
  assert float(jnp.max(jnp.abs(new.params["embed"]["embedding"] - state.params["embed"]["embedding"]))) > 0


def test_stochastic_rounding_trains_and_evaluates():
  from qsim.quant import LayerSpec, QuantConfig, TensorSpec
  from qsim.train import predict

  cfg = QuantConfig(default=LayerSpec(weight=TensorSpec(bits=4, granularity="per_channel", rounding="stochastic")))
  model = get_model("lenet_tiny", num_classes=10, quant=cfg)
  state = init_state(model, X[:1], make_optimizer("adam", 1e-3, 10), 0)
  new, loss, _ = make_train_step(model, MethodConfig())(state, X[:8], Y[:8], KEY)
  assert np.isfinite(float(loss))
  p1 = predict(model, {"params": new.params}, X[:8])
  np.testing.assert_array_equal(p1, predict(model, {"params": new.params}, X[:8]))


def test_config_argument_order_and_booleans():
  assert mnist.get_config("steps=100,runlocal").steps == 100  # explicit keys win over runlocal
  with pytest.raises(ValueError, match=r"takes a boolean \(true/false\), not 'ture'"):
    mnist.get_config("download=ture")
