"""Bad input the other test files do not cover: each gets an error that names
the problem and the fix, and none leaves a partial file behind (the matrix
is in BUILD_NOTES.md, "Reliability: bad input and numeric edge cases")."""

import ast
import errno
import glob
import json
import os
import shutil

import numpy as np
import pytest

from experiments.configs import mnist
from qsim.data.fashion_mnist import load_fashion_mnist
from qsim.evaluate import report
from qsim.results import ResultsStore
from qsim.runs import load_variables, read_config, write_json
from qsim.train import job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(ckpt_dir, step, params):
  """An orbax checkpoint as training writes it (``state`` item, standard handler)."""
  import orbax.checkpoint as ocp

  mngr = ocp.CheckpointManager(str(ckpt_dir), options=ocp.CheckpointManagerOptions(create=True))
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  mngr.wait_until_finished()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  wd = tmp_path_factory.mktemp("ckpt")
  rng = np.random.default_rng(0)
  _save(
      wd / "checkpoints",
      1,
      {"conv1": {"kernel": rng.random((3, 3, 1, 2), np.float32)}, "head": {"kernel": rng.random((16, 10), np.float32)}},
  )
  return wd


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst, os.path.join(dst, "checkpoints", "1", "state")


def _truncate_data(state):
  for blob in glob.glob(os.path.join(state, "**", "d", "*"), recursive=True):  # every data file
    with open(blob, "r+b") as f:
      f.truncate(os.path.getsize(blob) // 2)


def _truncate_metadata(state):
  with open(os.path.join(state, "_METADATA"), "r+b") as f:
    f.truncate(50)


def _remove_manifest(state):
  os.remove(os.path.join(state, "manifest.ocdbt"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tensorstore's failed read
@pytest.mark.parametrize("damage", [_truncate_data, _truncate_metadata, _remove_manifest], ids=lambda f: f.__name__[1:])
def test_damaged_checkpoint_names_the_step_and_the_fix(ckpt, tmp_path, damage):
  wd, state = _copy(ckpt, tmp_path / "wd")
  damage(state)
  with pytest.raises(
      ValueError,
      match=r"checkpoint .*/checkpoints/1 is truncated or corrupted \(.*\); delete "
      r".*/checkpoints/1 to fall back to the previous checkpoint, or retrain",
  ):
    load_variables(str(wd))


def test_checkpoint_holding_nan_is_refused(tmp_path):
  _save(tmp_path / "checkpoints", 3, {"head": {"kernel": np.array([[1.0, np.nan]], np.float32)}})
  with pytest.raises(
      ValueError,
      match=r"checkpoint .*/3 holds NaN/Inf in \[\"\['params'\]\['head'\]\['kernel'\]\"\]"
      r" \(corrupted on disk\); delete",
  ):
    load_variables(str(tmp_path))


@pytest.mark.parametrize(
    "body,problem",
    [
        ('{"model": "lenet', "is corrupted"),
        ("[1, 2]", "is corrupted"),
        ('{"model": "lenet_tiny"}', r"lacks \['dataset', 'method'\]"),
    ],
)
def test_damaged_training_config_json(tmp_path, body, problem):
  (tmp_path / "config.json").write_text(body)
  with pytest.raises(ValueError, match=problem + ".*(rerun the training command|python -m experiments.train)"):
    read_config(str(tmp_path))


@pytest.mark.parametrize(
    "arg,msg",
    [
        ("steps=ten", r"config key 'steps' takes an int \(default \d+\), not 'ten'"),
        ("learning_rate=fast", r"'learning_rate' takes a float .*not 'fast'"),
        ("bits=4x", r"'bits' takes an int in \[2, 16\] .*not '4x'"),
    ],
)
def test_config_value_of_the_wrong_type(arg, msg):
  with pytest.raises(ValueError, match=msg):
    mnist.get_config(arg)


def test_missing_offline_dataset_names_folder_and_install_command(tmp_path):
  with pytest.raises(
      FileNotFoundError,
      match=rf"looked for \['{tmp_path}/train-images.*apt-get install -y"
      rf" dataset-fashion-mnist \(or copy the files into {tmp_path}\)",
  ):
    load_fashion_mnist("train", data_dir=str(tmp_path))


def test_unwritable_workdir_fails_before_any_work(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")  # a path under a regular file cannot be created (root ignores permission bits)
  with pytest.raises(OSError, match="cannot create results folders in .*; pass a writable --workdir"):
    ResultsStore(str(blocker / "eval"))
  with pytest.raises(OSError, match="cannot create workdir .*; pass a writable --workdir"):
    job.run(job.TrainConfig.from_config_dict(mnist.get_config("runlocal")), str(blocker / "train"))


def _enospc(*_, **__):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_a_write_leaves_no_partial_file(tmp_path, monkeypatch):
  store = ResultsStore(str(tmp_path / "eval"))
  rows, samples = [{"quantizer": "w4a4", "n": 3}], {"y": np.arange(3)}

  def half_then_full(f, **_):  # writes part of the archive, then the disk fills up
    f.write(b"PK\x03\x04" + b"\0" * 64)
    _enospc()

  monkeypatch.setattr(np, "savez_compressed", half_then_full)
  with pytest.raises(OSError, match="No space left on device"):
    store.put("unit", rows, samples)
  monkeypatch.undo()
  (tmp_path / "cfg").mkdir()
  write_json(str(tmp_path / "cfg" / "config.json"), {"old": 1})
  monkeypatch.setattr(os, "fsync", _enospc)  # the rows' commit fails too, and a rewrite of config.json
  with pytest.raises(OSError, match="No space left on device"):
    store.put("unit", rows)
  with pytest.raises(OSError, match="No space left on device"):
    write_json(str(tmp_path / "cfg" / "config.json"), {"model": "lenet_tiny"})
  monkeypatch.undo()
  left = sorted(
      os.path.relpath(p, tmp_path) for p in glob.glob(str(tmp_path / "**" / "*"), recursive=True) if os.path.isfile(p)
  )
  assert left == ["cfg/config.json"] and not store.has("unit")
  assert json.loads((tmp_path / "cfg" / "config.json").read_text()) == {"old": 1}  # the old file, whole
  store.put("unit", rows, samples)  # with space again the same unit is written whole
  assert store.rows() == rows and store.samples("unit")["y"].tolist() == [0, 1, 2]


def test_corrupted_results_part_names_file_and_fix(tmp_path):
  store = ResultsStore(str(tmp_path))
  store.put("good", [{"quantizer": "w8", "n": 1}])
  (tmp_path / "parts" / "bad.json").write_text('[{"quantizer": "w')
  with pytest.raises(
      ValueError, match=r"results part .*bad.json is corrupted .*delete it and rerun the same" " command"
  ):
    store.write_table()


def _object_array(path):
  np.savez(path, quantizers=np.array(["w4a4", None], dtype=object))  # readable only by unpickling


def _truncated(path):
  np.savez(path, y=np.arange(100))
  with open(path, "r+b") as f:
    f.truncate(40)


@pytest.mark.parametrize("write", [_object_array, _truncated], ids=["object_array", "truncated"])
def test_bad_samples_file_is_refused_never_unpickled(tmp_path, write):
  store = ResultsStore(str(tmp_path))
  write(os.path.join(store.samples_dir, "unit.npz"))
  if write is _object_array:
    with pytest.raises(ValueError, match="allow_pickle=False"):
      store.samples("unit")
  with pytest.raises(
      ValueError,
      match=r"results file .*unit.npz is corrupted or not a qsim samples file .*delete"
      r" it and parts/unit.json, then rerun the sweep command",
  ):
    report.pooled_samples(str(tmp_path), "w4a4")


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "yaml"}


def _unsafe_loads(path):
  """(line, what) for each way ``path`` could execute code while reading data."""
  out = []
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      out += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
      out.append((node.lineno, f"from {node.module} import"))
    elif isinstance(node, ast.Call):
      f = node.func
      if isinstance(f, ast.Name) and f.id in ("eval", "exec", "__import__"):
        out.append((node.lineno, f"{f.id}()"))
      if (
          isinstance(f, ast.Attribute)
          and f.attr == "load"
          and isinstance(f.value, ast.Name)
          and f.value.id in ("np", "numpy", "jnp")
      ):
        safe = any(
            k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
            for k in node.keywords
        )
        if not safe:
          out.append((node.lineno, f"{f.value.id}.load without allow_pickle=False"))
  return out


def test_no_source_file_can_execute_code_while_loading():
  found = {}
  for folder in ("qsim", "experiments", "benchmarks"):
    for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
      if _unsafe_loads(path):
        found[os.path.relpath(path, ROOT)] = _unsafe_loads(path)
  assert found == {}


def test_the_scanner_catches_unsafe_loads(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text(
      "import pickle\nfrom yaml import load\nimport numpy as np\nnp.load('a.npz')\n"
      "np.load('b.npz', allow_pickle=True)\nnp.load('c.npz', allow_pickle=False)\neval('1')\n"
  )
  assert [line for line, _ in _unsafe_loads(str(bad))] == [1, 2, 4, 5, 7]


@pytest.mark.parametrize(
    "args,says",
    [
        ("quantizers=w99a4", "preset='w99a4': bits=99 is not valid; bits must be in [2, 16]"),
        ("quantizers=tflite_int8,shifts=c/nope/3", "shifted set 'fashion_mnist_debian/c/nope/3' does not exist"),
    ],
)
def test_launchers_print_a_user_error_as_one_line_and_exit_2(tiny_ckpt, tmp_path, args, says):
  """A bad value found by qsim's validation: one line 'error: ...' naming it, exit status 2, no
  traceback (experiments/cli.py); QSIM_TRACEBACK=1 shows the traceback."""
  import subprocess
  import sys

  root = ROOT
  cmd = [
      sys.executable,
      "-m",
      "experiments.evaluate",
      f"--config=experiments/configs/evaluate.py:checkpoint={tiny_ckpt},limit=20,{args}",
      f"--workdir={tmp_path}",
  ]
  env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
  errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert out.returncode == 2 and len(errors) == 1 and says in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  debug = subprocess.run(cmd, cwd=root, env={**env, "QSIM_TRACEBACK": "1"}, capture_output=True, text=True, timeout=300)
  assert debug.returncode != 0 and "Traceback" in debug.stderr and says in debug.stderr
