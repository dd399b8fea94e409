"""iWildCam-WILDS read from a fixture in the official folder layout (metadata.csv with WILDS's columns, every
split's images under train/), made here: no iWildCam data exists on these machines."""

import csv
import os

import numpy as np
import pytest

from qsim import data
from qsim.data import iwildcam
from qsim.shifts import registry

# WILDS v2.0 metadata.csv's header (its first column is pandas' unnamed index).
HEADER = ["", "split", "location", "y", "sequence_remapped", "datetime", "filename", "location_remapped"]
# (split, label, camera location) per image; colours are distinct per row
ROWS = [
    ("train", 0, 3),
    ("train", 181, 3),
    ("train", 5, 7),
    ("train", 5, 7),
    ("train", 9, 1),
    ("id_val", 5, 3),
    ("id_test", 0, 7),
    ("id_test", 9, 1),
    ("test", 5, 11),
    ("test", 0, 12),
    ("test", 181, 12),
    ("val", 9, 13),
]


def _colour(i):
  return (20 * i + 10, 255 - 15 * i, (97 * i) % 256)


def make_fixture(root, rows=ROWS):
  """A WILDS iwildcam_v2.0 folder: JPEGs of differing sizes and modes (one grayscale), one flat colour each."""
  from PIL import Image

  os.makedirs(os.path.join(root, "train"))
  with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(HEADER)
    for i, (split, y, loc) in enumerate(rows):
      name = f"{8000 + i:08x}.jpg"
      w.writerow([i, split, loc * 10, y, i, "2013-06-05 07:29:09.000", name, loc])
      size = (64 + 8 * i, 48 + 4 * i)
      im = Image.new("L", size, 128) if i == 4 else Image.new("RGB", size, _colour(i))
      im.save(os.path.join(root, "train", name), quality=95)
  return str(root)


@pytest.fixture
def wilds_dir(tmp_path):
  return make_fixture(tmp_path / "iwildcam_v2.0")


def test_splits_labels_locations_and_pixels_follow_the_metadata(wilds_dir):
  train = data.load("iwildcam", "train", data_dir=wilds_dir)
  assert train.x.shape == (5, iwildcam.IMAGE_SIZE, iwildcam.IMAGE_SIZE, 3) and train.x.dtype == np.float32
  assert train.num_classes == 182
  assert train.y.tolist() == [0, 181, 5, 5, 9] and train.domains.tolist() == [3, 3, 7, 7, 1]
  for i in (0, 1, 2):  # a flat colour survives JPEG and resizing within a few levels
    np.testing.assert_allclose(train.x[i].mean((0, 1)) * 255, _colour(i), atol=3)
  np.testing.assert_allclose(train.x[4] * 255, 128, atol=2)  # grayscale becomes RGB
  val, test = data.load("iwildcam", "val", data_dir=wilds_dir), data.load("iwildcam", "test", data_dir=wilds_dir)
  assert val.y.tolist() == [5] and test.y.tolist() == [0, 9] and test.domains.tolist() == [7, 1]
  np.testing.assert_allclose(test.x[1].mean((0, 1)) * 255, _colour(7), atol=3)
  assert registry.list_shifts("iwildcam") == ["iwildcam/natural/ood_test", "iwildcam/natural/ood_val"]
  ood = registry.load_shifted("iwildcam/natural/ood_test", data_dir=wilds_dir)
  assert ood.name == "iwildcam/natural/ood_test" and ood.y.tolist() == [5, 0, 181]
  assert set(ood.domains.tolist()).isdisjoint(train.domains.tolist())  # OOD: cameras training never saw
  part = registry.load_shifted("iwildcam/natural/ood_test", data_dir=wilds_dir, limit=2)
  np.testing.assert_array_equal(part.x, ood.x[:2])


def test_a_decoded_split_is_cached_and_a_block_decodes_only_itself(wilds_dir):
  from qsim.distributed import Shard

  block = data.load("iwildcam", "train", data_dir=wilds_dir, shard=Shard(1, 2))
  assert block.offset == 2 and block.y.tolist() == [5, 5, 9]
  assert not os.path.exists(os.path.join(wilds_dir, "qsim_cache"))  # a block is not the whole split
  whole = data.load("iwildcam", "train", data_dir=wilds_dir)
  np.testing.assert_array_equal(whole.x[2:], block.x)
  os.remove(os.path.join(wilds_dir, "train", f"{8000:08x}.jpg"))  # from now on only the cache has it
  again = data.load("iwildcam", "train", data_dir=wilds_dir, limit=2)
  np.testing.assert_array_equal(again.x, whole.x[:2])
  # a newer metadata.csv invalidates the cache: decoding again needs the removed image
  later = os.path.getmtime(os.path.join(wilds_dir, "metadata.csv")) + 10
  os.utime(os.path.join(wilds_dir, "metadata.csv"), (later, later))
  with pytest.raises(FileNotFoundError, match="00001f40.jpg not found; expected the WILDS iwildcam_v2.0 folder"):
    data.load("iwildcam", "train", data_dir=wilds_dir)


def test_a_missing_folder_or_metadata_file_names_the_expected_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"iWildCam folder .*nowhere' not found; expected the WILDS"):
    data.load("iwildcam", "train", data_dir=str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "flat")
  with pytest.raises(FileNotFoundError, match=r"flat/metadata.csv not found; expected .*<data_dir>/train/<filename>"):
    data.load("iwildcam", "train", data_dir=str(tmp_path / "flat"))


@pytest.mark.parametrize(
    "metadata, split, says",
    [
        ("split,filename,label\ntrain,a.jpg,3\n", "train", r"lacks the columns \['y', 'location_remapped'\]"),
        (
            "split,filename,y,location_remapped\nood,a.jpg,3,1\n",
            "train",
            r"line 2: split 'ood' is not one of \['train', 'val', 'test'",
        ),
        ("split,filename,y,location_remapped\ntrain,a.jpg,182,1\n", "train", r"line 2: y=182 is outside 0..181"),
        ("split,filename,y,location_remapped\ntrain,a.jpg,x,1\n", "train", r"line 2: y and location_remapped must"),
        ("split,filename,y,location_remapped\ntrain,a.jpg,181,1\n", "test", r"no rows of split 'id_test'"),
    ],
)
def test_a_wrong_metadata_file_is_refused_naming_the_row(tmp_path, metadata, split, says):
  (tmp_path / "metadata.csv").write_text(metadata)
  with pytest.raises(ValueError, match=says):
    data.load("iwildcam", split, data_dir=str(tmp_path))


def test_the_training_config_trains_resnet50_tiny_on_the_wilds_layout(tmp_path, wilds_dir):
  from experiments.configs import iwildcam as config
  from qsim.train import job
  from qsim import runs

  c = job.TrainConfig.from_config_dict(config.get_config(f"runlocal,data_dir={wilds_dir},batch_size=2"))
  job.run(c, str(tmp_path / "run"))
  summary = runs.read_summary(str(tmp_path / "run"))
  assert summary["dataset"] == "iwildcam" and summary["steps"] == 4 and 0 <= summary["test_accuracy"] <= 1


def test_the_study_command_for_iwildcam_builds_its_runs(wilds_dir):
  from experiments.configs import study as study_config
  from qsim.study import StudyConfig

  c = StudyConfig.from_config_dict(
      study_config.get_config(f"dataset=iwildcam,models=resnet50+densenet121,shifts=natural,data_dir={wilds_dir}")
  )
  assert c.shift_names() == ["iwildcam/natural/ood_test", "iwildcam/natural/ood_val"]
  make = study_config.train_config_fn(c)
  t = make("densenet121", "standard", 1, "")
  assert (t.dataset, t.data_dir, t.model, t.steps, t.seed) == ("iwildcam", wilds_dir, "densenet121", 24000, 1)
  t = make("densenet121", "pgd", 1, "std1")  # adversarial fine-tuning of the standard run, CIFAR's attack
  assert (t.init_from, t.steps, t.iters, t.eps) == ("std1", 1000, 4, 4 / 255)
  assert c.retrain_config("ckpt", tuple(c.shift_names())).data_dir == wilds_dir
