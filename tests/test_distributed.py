"""Scale-out: data blocks per process, start-up validation, data-parallel
training on 8 fake devices, and two real processes on loopback (2 x 4 CPU
devices) whose training and sweep match one process."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from qsim import data, distributed
from qsim.distributed import Shard
from qsim.train.loop import batch_indices, sharded_batch_indices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"


def test_shards_cut_contiguous_near_equal_blocks():
  for n in (0, 1, 7, 10, 101):
    for count in (1, 2, 3, 8):
      blocks = [Shard(i, count).bounds(n) for i in range(count)]
      assert blocks[0][0] == 0 and blocks[-1][1] == n
      assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
      sizes = [b - a for a, b in blocks]
      assert max(sizes) - min(sizes) <= 1
  for bad, msg in [
      ((2, 2), r"Shard\(index=2, count=2\) is not valid"),
      ((0, 0), "count >= 1"),
      ((True, 2), "Shard index=True is not valid"),
  ]:
    with pytest.raises(ValueError, match=msg):
      Shard(*bad)
  # one shard is the plain batch order; N shards draw each block's part from that block
  assert np.array_equal(sharded_batch_indices(100, 10, 3, 7, 1)[0], batch_indices(100, 10, 3, 7))
  parts = sharded_batch_indices(101, 10, 3, 7, 2)
  assert [len(p) for p in parts] == [5, 5] and parts[0].max() < 50 and parts[1].max() < 51
  with pytest.raises(ValueError, match="data_shards=3 is not valid for batch_size=10"):
    sharded_batch_indices(100, 10, 0, 0, 3)


def test_initialize_validates_before_starting_anything(monkeypatch):
  assert distributed.initialize() is False  # nothing asked: a single process
  cases = [
      (dict(num_processes=2, process_id=0), r"missing \['coordinator_address'\]"),
      (
          dict(coordinator_address="localhost:1234", num_processes=2, process_id=2),
          r"process_id=2 is not valid for num_processes=2; give 0 <= process_id < 2",
      ),
      (
          dict(coordinator_address="localhost", num_processes=2, process_id=0),
          r"coordinator_address='localhost' is not valid; give 'host:port'",
      ),
      (dict(coordinator_address="h:99999", num_processes=2, process_id=0), "port in 1..65535"),
      (
          dict(coordinator_address="h:1", num_processes=0, process_id=0),
          r"num_processes=0 is not valid; give an int >= 1",
      ),
      (dict(local_device_ids=[0]), "only used with a multi-process run"),
  ]
  for kw, msg in cases:
    with pytest.raises(ValueError, match=msg):
      distributed.initialize(**kw)
  monkeypatch.setenv("QSIM_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match=r"QSIM_NUM_PROCESSES='two' is not valid; give an int >= 1"):
    distributed.env_settings()
  monkeypatch.setenv("QSIM_NUM_PROCESSES", "2")
  monkeypatch.setenv("QSIM_PROCESS_ID", "1")
  monkeypatch.setenv("QSIM_COORDINATOR_ADDRESS", "10.0.0.1:8476")
  monkeypatch.setenv("QSIM_DISTRIBUTED", "auto")
  assert distributed.env_settings() == dict(
      coordinator_address="10.0.0.1:8476", num_processes=2, process_id=1, auto=True
  )
  assert distributed.process_shard() == Shard(0, 1) and distributed.is_writer()
  with pytest.raises(
      ValueError, match=r"the mesh has axes \('batch',\); qsim splits the batch over an axis named 'data'"
  ):
    distributed.mesh_size(jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",)))
  assert distributed.local_batch_size(distributed.data_mesh(), 10) == 10


def test_each_process_reads_its_block_and_blocks_make_the_whole_set():
  if not os.path.exists(FMNIST):
    pytest.skip("make test installs dataset-fashion-mnist")
  for split, kw in (("test", dict(limit=10)), ("val", dict(limit=7, val_size=50)), ("train", dict(limit=9))):
    whole = data.load("fashion_mnist_debian", split, **kw)
    blocks = [data.load("fashion_mnist_debian", split, shard=Shard(i, 3), **kw) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([b.x for b in blocks]), whole.x)
    assert [b.offset for b in blocks] == [0, len(blocks[0]), len(blocks[0]) + len(blocks[1])]
  # (a synthetic shift of a block equals the same images of the whole shifted set: the two-process test)
  # TFDS reads only the block; a text vocabulary is still built from every training text
  with tfds.testing.mock_data(num_examples=24):
    whole = data.load("mnist", "train", val_size=4)
    part = data.load("mnist", "train", val_size=4, shard=Shard(1, 2))
    np.testing.assert_array_equal(part.x, whole.x[10:])
    text = data.load("imdb_reviews", "train", val_size=4, vocab_size=60, maxlen=8)
    text_part = data.load("imdb_reviews", "train", val_size=4, vocab_size=60, maxlen=8, shard=Shard(1, 2))
    assert text_part.vocab == text.vocab
    np.testing.assert_array_equal(text_part.x, text.x[10:])


EIGHT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from qsim import distributed
    from qsim.models import get_model
    from qsim.train import MethodConfig, train
    assert jax.device_count() == 8, jax.devices()
    x = np.asarray(jax.random.uniform(jax.random.key(1), (64, 28, 28, 1)))
    y = np.asarray(jax.random.randint(jax.random.key(2), (64,), 0, 10))
    model = get_model("lenet_tiny", num_classes=10)
    worst = {}
    for method, shards in (("mixup", 2),):
      params = {}
      for n in (8, 1):
        st = train(model, x, y, workdir=f"{sys.argv[1]}/{method}{n}", steps=4, batch_size=16, log_every=4,
                   checkpoint_every=4, method=MethodConfig(method=method), mesh=distributed.data_mesh(jax.devices()[:n]),
                   data_shards=shards)
        params[n] = jax.tree.leaves(distributed.host_local(st.params))
        assert len(st.params["conv1"]["kernel"].sharding.device_set) == n  # replicated over the mesh
      worst[method] = max(float(np.max(np.abs(a - b))) for a, b in zip(params[8], params[1]))
    print("WORST", worst)
""")


def test_training_on_eight_fake_devices_equals_one_device(tmp_path):
  """Data parallel over 8 devices follows the 1-device run up to the order of
  float additions in the gradient all-reduce: not bit-identical, within
  1e-6 after 4 Adam steps (measured 1.5e-8 to 2.2e-8)."""
  out = subprocess.run(
      [sys.executable, "-c", EIGHT, str(tmp_path)],
      cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  worst = json.loads(out.stdout.split("WORST", 1)[1].strip().replace("'", '"'))
  assert set(worst) == {"mixup"} and all(v <= 1e-6 for v in worst.values()), worst


TWO = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    from absl import flags
    from experiments import launch
    from experiments.configs import mnist
    from qsim.evaluate import sweep  # what the launchers import: importing must not start a backend
    from qsim.train import job
    flags.FLAGS(sys.argv[:4])  # --coordinator_address --num_processes --process_id, as the launchers take them
    launch.init_distributed()
    import jax
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
    work = sys.argv[4]
    job.run(job.TrainConfig.from_config_dict(mnist.get_config(sys.argv[5])), f"{work}/train")
    sweep.run_sweep(sweep.SweepConfig(checkpoints=(f"{work}/train",), quantizers=QUANTIZERS, shifts=SETS, **SWEEP_KW), f"{work}/eval")
    print("DONE", jax.process_index(), flush=True)
""")
TRAIN_ARGS = "runlocal,steps=4,log_every=4,checkpoint_every=4"
QUANTIZERS = ("w4a4", "w2a8", "fp16")  # static ranges would add ~9 s of op-by-op calibration per process
SETS = ("fashion_mnist_debian/c/shot_noise/4",)
SWEEP_KW = dict(limit=101, batch_size=24, calib_samples=20)  # blocks of 50 and 51: padded last batches


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_evaluate_like_one(tmp_path):
  if not os.path.exists(FMNIST):
    pytest.skip("make test installs dataset-fashion-mnist")
  from experiments.configs import mnist
  from qsim.evaluate import sweep
  from qsim.runs import load_variables
  from qsim.train import job

  script = TWO.replace("QUANTIZERS", repr(QUANTIZERS)).replace("SETS", repr(SETS)).replace("SWEEP_KW", repr(SWEEP_KW))
  port, work = _free_port(), tmp_path / "two"
  env = {**os.environ, "PYTHONPATH": ROOT}
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              "-c",
              script,
              f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2",
              f"--process_id={i}",
              str(work),
              TRAIN_ARGS,
          ],
          cwd=ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, (stdout, stderr)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and f"DONE {i}" in stdout, stderr[-3000:]
  # training: the same batches on one process (data_shards=2), up to float addition order
  one = job.run(
      job.TrainConfig.from_config_dict(mnist.get_config(f"{TRAIN_ARGS},data_shards=2")), str(tmp_path / "one")
  )
  two = json.load(open(work / "train" / "summary.json"))
  assert abs(one["val_accuracy"] - two["val_accuracy"]) <= 1 / 256 and one["steps"] == two["steps"] == 4
  for a, b in zip(jax.tree.leaves(load_variables(work / "train")), jax.tree.leaves(load_variables(tmp_path / "one"))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  # evaluation: the same table from one process, on the two-process checkpoint; only process 0 wrote it
  path = sweep.run_sweep(
      sweep.SweepConfig(checkpoints=(str(work / "train"),), quantizers=QUANTIZERS, shifts=SETS, **SWEEP_KW),
      str(tmp_path / "ref"),
  )
  strip = lambda r: {k: v for k, v in r.items() if k not in ("devices", "processes")}  # noqa: E731
  rows_two = [json.loads(l) for l in open(work / "eval" / "results.jsonl")]
  rows_one = [json.loads(l) for l in open(os.path.join(os.path.dirname(path), "results.jsonl"))]
  assert len(rows_two) == 2 * len(QUANTIZERS) and {r["processes"] for r in rows_two} == {2}
  assert [strip(r) for r in rows_two] == [strip(r) for r in rows_one]
  assert sum(r["disagreements"] for r in rows_two) > 0
  assert len(os.listdir(work / "eval" / "parts")) == 2
