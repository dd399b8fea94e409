"""Crash safety and determinism of the launchers, with real processes.

Each job kind (training, bit-width ablation, retraining, the study, the
fidelity run) runs once uninterrupted (the reference, its writes logged with
QSIM_WRITE_LOG), then again in a fresh workdir as a *kill chain*: the
process SIGKILLs itself inside its N-th write (QSIM_KILL_AT_WRITE, see
qsim.runs: a torn temporary file, a written but unrenamed one, or a file
just renamed; a checkpoint while orbax writes it, or just after), N and the
phase drawn with a fixed seed; the same command is rerun (and killed
again), then run to the end. Every kill must land, so the kill points are
exact: 21 in all. The final outputs must equal the reference's (paths
aside), with no lost, partial or duplicated row. Each test prints
``KILLS <kind>: kill_points=N rows_lost=0 rows_duplicated=0 ...``.

A shared persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``) keeps
the reruns cheap; a cached executable is the same compiled program.
"""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from qsim.runs import WRITE_PHASES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
TABLES = ("results.csv",)

pytestmark = pytest.mark.skipif(not os.path.exists(FMNIST), reason="make test installs dataset-fashion-mnist")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax_cache")
  return {
      **os.environ,
      "PYTHONPATH": ROOT,
      "TF_CPP_MIN_LOG_LEVEL": "3",
      "JAX_COMPILATION_CACHE_DIR": str(cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }


def run_to_end(cmd, env, extra_env=None):
  out = subprocess.run(cmd, cwd=ROOT, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def writes_of(cmd, env, log) -> list[str]:
  """Runs ``cmd`` to the end with QSIM_WRITE_LOG: its writes, in order."""
  run_to_end(cmd, env, {"QSIM_WRITE_LOG": str(log)})
  with open(log) as f:
    return f.read().splitlines()


def kill_chain(cmd, env, n_kills: int, writes: int, seed: int) -> list[tuple[int, str]]:
  """Runs ``cmd`` with QSIM_KILL_AT_WRITE: each run SIGKILLs itself inside
  its N-th write at a phase (torn temporary file, unrenamed, renamed;
  qsim.runs); the next run resumes. The kills aim at one write drawn with
  ``seed`` in each of ``n_kills`` equal slices of the reference run's
  ``writes`` (early, midway, late): a resumed run starts about where the
  last one died, so N is the distance from the previous target. Every kill
  must land (the run dies in that write, it does not finish); then the
  command runs to the end. Returns the (N, phase, file) of each kill."""
  rng = np.random.default_rng(seed)
  edges = np.linspace(0, writes, n_kills + 1).astype(int)
  targets = [int(rng.integers(lo + 1, max(lo + 1, hi) + 1)) for lo, hi in zip(edges[:-1], edges[1:])]
  kills = []
  for prev, target in zip([0] + targets[:-1], targets):
    n, phase = max(1, target - prev), WRITE_PHASES[int(rng.integers(len(WRITE_PHASES)))]
    out = subprocess.run(
        cmd, cwd=ROOT, env={**env, "QSIM_KILL_AT_WRITE": f"{n}:{phase}"}, capture_output=True, text=True, timeout=600
    )
    assert (
        out.returncode == -signal.SIGKILL and f"killed in write {n} ({phase})" in out.stderr
    ), f"kill at write {n} ({phase}) did not land: exit {out.returncode}\n{out.stderr[-2000:]}"
    where = out.stderr.split(f"killed in write {n} ({phase}) of ", 1)[1].splitlines()[0]
    kills.append((n, phase, os.path.basename(where.rstrip("/"))))
  run_to_end(cmd, env)
  return kills


def text(path: str, *workdirs) -> str:
  with open(path) as f:
    body = f.read()
  for i, w in enumerate(workdirs):
    body = body.replace(str(w), f"<W{i}>")
  return body


def table_diff(ref_path: str, got_path: str, ref_dir, got_dir) -> tuple[int, int, int]:
  """(rows lost, rows duplicated, rows differing) of a results table against the reference."""
  ref = text(ref_path, ref_dir).splitlines()[1:]
  got = text(got_path, got_dir).splitlines()[1:]
  lost = sum(max(0, ref.count(r) - got.count(r)) for r in set(ref))
  dup = len(got) - len(set(got))
  extra = sum(max(0, got.count(r) - ref.count(r)) for r in set(got))
  return lost, dup, extra


KILL_POINTS = []  # (kind, n, phase, file) of every kill of this module's chains


def check_chain(kind, cmd, tmp_path, env, n_kills, seed, tables, same_files=(), ref=None, writes=None):
  """The reference run (unless given, with its ``writes``), the kill chain,
  and the comparison of their outputs."""
  chain = tmp_path / "chain"
  t0 = time.time()
  if ref is None:
    ref = tmp_path / "ref"
    writes = writes_of(cmd(ref), env, tmp_path / "writes.log")
  kills = kill_chain(cmd(chain), env, n_kills, len(writes), seed)
  assert len(kills) == n_kills
  lost = dup = 0
  for t in tables:
    assert (chain / t).exists(), t
    l, d, extra = table_diff(ref / t, chain / t, ref, chain)
    lost, dup = lost + l, dup + d
    assert (l, d, extra) == (0, 0, 0), f"{t}: {l} rows lost, {d} duplicated, {extra} differ from the reference"
    assert text(ref / t, ref) == text(chain / t, chain), t  # same header, order and values
  for f in same_files:
    assert text(ref / f, ref) == text(chain / f, chain), f
  KILL_POINTS.extend((kind, *k) for k in kills)
  print(
      f"KILLS {kind}: kill_points={len(kills)} rows_lost={lost} rows_duplicated={dup}"
      f" (write, phase, file) {kills} of {len(writes)} writes; {time.time() - t0:.0f} s"
  )
  return ref, chain


def _metrics(path):
  rows = [json.loads(line) for line in open(path)]
  return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows]


def _params(workdir):
  import jax
  from qsim.runs import load_variables

  return jax.tree.leaves(load_variables(str(workdir)))


TRAIN_ARGS = "runlocal,steps=10,log_every=1,checkpoint_every=2"


def _train_cmd(wd):
  return [
      sys.executable,
      "-m",
      "experiments.train",
      f"--config=experiments/configs/mnist.py:{TRAIN_ARGS}",
      f"--workdir={wd}",
  ]


@pytest.fixture(scope="module")
def train_ref(tmp_path_factory, env):
  """One uninterrupted training run, the reference of both training tests,
  and its writes."""
  wd = tmp_path_factory.mktemp("train_ref")
  return wd, writes_of(_train_cmd(wd / "run"), env, wd / "writes.log")


def test_training_survives_kills(tmp_path, env, train_ref):
  ref, chain = check_chain(
      "train",
      _train_cmd,
      tmp_path,
      env,
      4,
      seed=1,
      tables=(),
      same_files=("summary.json", "config.json"),
      ref=train_ref[0] / "run",
      writes=train_ref[1],
  )
  assert _metrics(ref / "metrics.jsonl") == _metrics(chain / "metrics.jsonl")
  assert [r["step"] for r in _metrics(chain / "metrics.jsonl")] == list(range(1, 11))  # none lost or repeated
  for a, b in zip(_params(ref), _params(chain)):
    np.testing.assert_array_equal(a, b)
  assert not glob.glob(str(chain / "checkpoints" / "*tmp*")), "a killed save was left behind"


ABLATE_ARGS = (
    "runlocal,weight_bits=4,act_bits=4+float,presets=fp16,limit=60,batch_size=60,calib_samples=30,"
    "shifts=c/fog/3+c/rotate/2+c/stripe/1+c/zigzag/3"
)


def test_ablation_survives_kills_and_equals_on_eight_devices(tmp_path, env, tiny_ckpt):
  cmd = lambda wd: [
      sys.executable,
      "-m",
      "experiments.ablate_bits",  # noqa: E731
      f"--config=experiments/configs/ablate.py:checkpoints={tiny_ckpt},{ABLATE_ARGS}",
      f"--workdir={wd}",
  ]
  ref, _ = check_chain("ablate", cmd, tmp_path, env, 4, seed=2, tables=TABLES)
  # determinism across device counts: evaluation is per example, so the
  # table on 8 fake CPU devices equals the 1-device one except that column
  run_to_end(cmd(tmp_path / "eight"), env, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  one, eight = (_rows_but_devices(d) for d in (ref, tmp_path / "eight"))
  assert len(one) == 5 * 3 and one == eight
  assert {r["devices"] for r in _rows(tmp_path / "eight")} == {"8"}


def _rows(workdir):
  with open(workdir / "results.csv", newline="") as f:
    return [{k: v.replace(str(workdir), "<W>") for k, v in r.items()} for r in csv.DictReader(f)]


def _rows_but_devices(workdir):
  return [{k: v for k, v in r.items() if k != "devices"} for r in _rows(workdir)]


RETRAIN_ARGS = (
    "quantizers=w4a4,strategies=all,seeds=0,pool=val[:150],eval_split=test[:100],shifts=c/fog/3,"
    "shift_limit=50,epochs=0.1,train_limit=512,calib_samples=30,eval_batch_size=50"
)


def test_retraining_survives_kills(tmp_path, env, tiny_ckpt):
  cmd = lambda wd: [
      sys.executable,
      "-m",
      "experiments.retrain",  # noqa: E731
      f"--config=experiments/configs/retrain.py:checkpoint={tiny_ckpt},{RETRAIN_ARGS}",
      f"--workdir={wd}",
  ]
  check_chain("retrain", cmd, tmp_path, env, 4, seed=3, tables=TABLES, same_files=("report.md",))


STUDY_ARGS = "runlocal,methods=standard,train_steps=4,severities=2,quantizers=fp16,retrain_strategies=all"


def test_study_survives_kills(tmp_path, env):
  cmd = lambda wd: [
      sys.executable,
      "-m",
      "experiments.study",  # noqa: E731
      f"--config=experiments/configs/study.py:{STUDY_ARGS}",
      f"--workdir={wd}",
  ]
  retrain = os.path.join("retrain", "lenet_tiny", "seed0", "results.csv")
  check_chain(
      "study",
      cmd,
      tmp_path,
      env,
      5,
      seed=4,
      tables=(os.path.join("eval", "results.csv"), retrain),
      # commit.txt: the code the study ran at, written once by the first process (for publish)
      same_files=("report.md", "commit.txt", os.path.join("train", "lenet_tiny", "standard", "seed0", "summary.json")),
  )


FIDELITY_ARGS = "modes=int8+float32,kernels=xnnpack,shifts=c/fog/1+c/rotate/2,limit=60,calib_samples=30,batch_size=60"


def test_fidelity_survives_kills(tmp_path, env, tiny_ckpt):
  pytest.importorskip("tensorflow")
  cmd = lambda wd: [
      sys.executable,
      "-m",
      "experiments.fidelity",  # noqa: E731
      f"--config=experiments/configs/fidelity.py:checkpoint={tiny_ckpt},{FIDELITY_ARGS}",
      f"--workdir={wd}",
  ]
  check_chain("fidelity", cmd, tmp_path, env, 4, seed=5, tables=TABLES, same_files=("fidelity.md",))


def test_kill_points_cover_every_launcher():
  """The chains above (this module, in file order): at least 20 kills, each
  inside a write, across train, ablate, retrain, study and fidelity."""
  kinds = {k[0] for k in KILL_POINTS}
  if kinds != {"train", "ablate", "retrain", "study", "fidelity"}:
    pytest.skip(f"only the chains of {sorted(kinds)} ran in this process")
  print(f"KILLS all: kill_points={len(KILL_POINTS)} rows_lost=0 rows_duplicated=0 (every chain above asserted 0)")
  assert len(KILL_POINTS) >= 20
  assert {k[2] for k in KILL_POINTS} == set(WRITE_PHASES)


KILLED_SAVE = textwrap.dedent("""
    import sys
    import numpy as np, orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(sys.argv[1], options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    save = lambda s, a: mngr.save(s, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": a})))
    save(1, np.ones(4, np.float32)); mngr.wait_until_finished()
    print("saved", flush=True)
    save(2, np.ones((64, 1024, 1024), np.float32)); mngr.wait_until_finished()  # 256 MiB: killed while writing
""")


def test_a_killed_orbax_save_is_never_restored(tmp_path, env):
  """orbax writes a step into '<step>.orbax-checkpoint-tmp*' and renames it
  when complete: a save killed halfway leaves no step that restore picks."""
  import orbax.checkpoint as ocp

  proc = subprocess.Popen(
      [sys.executable, "-c", KILLED_SAVE, str(tmp_path)],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )
  assert proc.stdout.readline().strip() == "saved"
  deadline = time.time() + 120
  while not glob.glob(str(tmp_path / "2.orbax-checkpoint-tmp*")) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  left = sorted(os.listdir(tmp_path))
  assert any(".orbax-checkpoint-tmp" in f for f in left), f"the save was not caught halfway: {left}"
  mngr = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(max_to_keep=2))
  assert mngr.latest_step() == 1 and mngr.all_steps() == [1], left
  got = mngr.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore({"w": np.zeros(4, np.float32)})))
  np.testing.assert_array_equal(got["state"]["w"], np.ones(4, np.float32))
  print(f"KILLS orbax: killed save left {left}; latest_step={mngr.latest_step()}")


def test_training_on_eight_devices_predicts_like_one(tmp_path, env, train_ref):
  """Data-parallel training sums the gradient in another order: parameters
  agree to 1e-6, not bit for bit; on this tiny run the accuracies and every
  test prediction are the same."""
  import jax
  from qsim import data
  from qsim.models import get_model
  from qsim.runs import load_variables
  from qsim.train.loop import predict

  os.symlink(train_ref[0] / "run", tmp_path / "one")
  run_to_end(_train_cmd(tmp_path / "eight"), env, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  one, eight = (json.load(open(tmp_path / d / "summary.json")) for d in ("one", "eight"))
  assert one == eight
  for a, b in zip(_params(tmp_path / "one"), _params(tmp_path / "eight")):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  test = data.load("fashion_mnist_debian", "test", limit=1000)
  model = get_model("lenet_tiny", num_classes=10)
  p1, p8 = (predict(model, load_variables(str(tmp_path / d)), test.x) for d in ("one", "eight"))
  np.testing.assert_array_equal(p1, p8)
  gap = max(float(np.max(np.abs(a - b))) for a, b in zip(_params(tmp_path / "one"), _params(tmp_path / "eight")))
  print(
      f"DETERMINISM train 1 vs 8 devices: summaries equal, {len(p1)} test predictions equal, max |param gap| {gap:.1e}"
      f" ({jax.__version__})"
  )


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
  """metrics.jsonl is written atomically now; one written in place (older
  qsim) or cut by a machine crash can end in a torn line: resume drops it,
  and a corrupted line before the end is an error naming the file."""
  from qsim.train.loop import _read_metrics

  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.3}\n{"step": 2, "loss": 2.2}\n{"step": 3, "lo')
  assert [r["step"] for r in _read_metrics(str(path), 2)] == [1, 2]
  path.write_text('{"step": 1, "loss": 2.3}\n{"st\n{"step": 3, "loss": 2.1}\n')
  with pytest.raises(ValueError, match="metrics.jsonl line 2 is corrupted"):
    _read_metrics(str(path), 3)
