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
  kw = dict(steps=6, batch_size=16, log_every=3, checkpoint_every=3, method=MethodConfig(method="mixup"),
            schedule="constant")
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
  with pytest.raises(FloatingPointError, match=r"loss is not finite at step \d+; the last finite checkpoint \(step 2\)"):
    train(model, X, Y, workdir=str(tmp_path), steps=40, learning_rate=1e30, **kw)
  assert all(np.all(np.isfinite(p)) for p in _params(tmp_path))


def test_launcher_resumes_after_kill(tmp_path):
  """kill -9 a real training process mid-run, rerun the same command: the
  final parameters equal an uninterrupted run's."""
  args = "runlocal,steps=60,checkpoint_every=5,log_every=5"
  cmd = lambda wd: [sys.executable, "-m", "experiments.train", f"--config=experiments/configs/mnist.py:{args}", f"--workdir={wd}"]
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


@pytest.mark.parametrize("module,arg", [
    (mnist, "runlocal,method=qat,bits=4"), (mnist, "runlocal,method=pgd"), (rows, "runlocal,method=mixup"),
    (cifar, "runlocal,method=fgsm"), (imdb, "runlocal,method=pgd"), (imdb, "runlocal,method=mixup")])
def test_configs_run_end_to_end(module, arg, tmp_path):
  c = module.get_config(arg)
  if c.dataset == "fashion_mnist_debian" and not os.path.exists("/usr/share/datasets/fashion-mnist"):
    pytest.skip("make test installs dataset-fashion-mnist")
  with tfds.testing.mock_data(num_examples=24):
    summary = job.run(c, str(tmp_path))
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  for f in ("config.json", "metrics.jsonl", "summary.json"):
    assert (tmp_path / f).exists()
  assert (tmp_path / "vocab.json").exists() == (c.dataset == "imdb_reviews")


def test_config_errors():
  with pytest.raises(ValueError, match=r"config key 'modle' is not valid; valid keys are"):
    mnist.get_config("modle=lenet1")
  with pytest.raises(ValueError, match="static activation ranges"):
    job.build_model(mnist.get_config("method=qat,quant=tflite_int8"), 10)


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
