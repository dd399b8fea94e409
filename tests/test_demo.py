"""The main job end to end, in its runlocal size, on the real offline data."""

import csv
import os
import pathlib

import pytest

from experiments import demo_job
from experiments.configs import demo as demo_config
from qsim.data import DEFAULT_DIR, load_fashion_mnist


def test_missing_dataset_error_names_dataset_folder_and_command(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    load_fashion_mnist("test", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "fashion_mnist" in msg and str(tmp_path) in msg and "apt-get install -y dataset-fashion-mnist" in msg
  with pytest.raises(ValueError, match="split='val'"):
    load_fashion_mnist("val")


def test_config_rejects_unknown_variant():
  with pytest.raises(ValueError, match="runlocal"):
    demo_config.get_config("fast")


@pytest.mark.skipif(not os.path.exists(DEFAULT_DIR), reason="make test installs dataset-fashion-mnist")
def test_demo_runlocal_end_to_end(tmp_path, capsys):
  rows = demo_job.run(demo_config.get_config("runlocal"), str(tmp_path))
  by = {r["config"]: r for r in rows}
  assert by["float32"]["disagreements"] == 0
  assert by["float32"]["accuracy"] > 0.2  # 30 steps on real data beat chance (0.1)
  # 2-bit weights flip more predictions than 8-bit weights and activations
  assert by["w2"]["disagreements"] > by["w8a8"]["disagreements"]
  with open(tmp_path / "results.csv") as f:
    assert [r["config"] for r in csv.DictReader(f)] == [r["config"] for r in rows]
  assert (tmp_path / "disagreement.png").stat().st_size > 1000
  assert "w8a8" in capsys.readouterr().out


def test_only_one_module_imports_aqt():
  root = pathlib.Path(__file__).resolve().parents[1] / "qsim"
  importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if any(line.lstrip().startswith(("import aqt", "from aqt")) for line in p.read_text().splitlines()))
  assert importers == ["quant/_aqt.py"]
