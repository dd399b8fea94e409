"""The main job end to end, in its runlocal size, on the real offline data."""

import csv
import os
import pathlib

import numpy as np
import pytest

from experiments import demo
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
  """The demo on the engine and the sweep: trains, evaluates the presets and the bit grid, plots the grid."""
  rows = demo.run(demo_config.get_config("runlocal"), str(tmp_path))
  by = {r["quantizer"]: r for r in rows}
  assert sorted(by) == sorted(
      ["fp16", "bf16", "tflite_int8", "tflite_dynamic", "weight_only_int8", "w2", "w2a8", "w8", "w8a8"]
  )
  assert by["w8"]["float_accuracy"] > 0.2  # 60 steps on real data beat chance (0.1)
  # 2-bit weights flip more predictions than 8-bit weights and activations
  assert by["w2"]["disagreements"] > by["w8a8"]["disagreements"]
  with open(tmp_path / "eval" / "results.csv") as f:
    assert sorted(r["quantizer"] for r in csv.DictReader(f)) == sorted(by)
  assert (tmp_path / "disagreement.png").stat().st_size > 1000
  assert (tmp_path / "eval" / "report.md").exists()
  assert "w8a8" in capsys.readouterr().out
  # a rerun resumes: training is finished and every sweep unit is stored, so nothing is recomputed
  parts = sorted((tmp_path / "eval" / "parts").iterdir())
  mtimes = [p.stat().st_mtime for p in parts]
  assert [r["disagreements"] for r in demo.run(demo_config.get_config("runlocal"), str(tmp_path))] == [
      r["disagreements"] for r in rows
  ]
  assert [p.stat().st_mtime for p in sorted((tmp_path / "eval" / "parts").iterdir())] == mtimes


def test_bit_grid_counts_put_each_config_in_its_cell():
  by = {
      "w2": {"disagreements": 20},
      "w2a4": {"disagreements": 24},
      "w8": {"disagreements": 80},
      "w8a4": {"disagreements": 84},
  }
  np.testing.assert_array_equal(demo.bit_grid_counts(by, [2, 8], [None, 4]), [[20, 24], [80, 84]])


def test_bit_grid_plot_refuses_a_grid_of_the_wrong_shape(tmp_path):
  from qsim.evaluate import report

  with pytest.raises(ValueError, match=r"counts has shape \(2, 2\); expected .* = \(2, 3\)"):
    report.plot_bit_grid(np.zeros((2, 2), int), [2, 8], [None, 4, 8], str(tmp_path / "g.png"), 100)


def test_only_one_module_imports_aqt():
  root = pathlib.Path(__file__).resolve().parents[1] / "qsim"
  importers = sorted(
      str(p.relative_to(root))
      for p in root.rglob("*.py")
      if any(line.lstrip().startswith(("import aqt", "from aqt")) for line in p.read_text().splitlines())
  )
  assert importers == ["quant/_aqt.py"]
