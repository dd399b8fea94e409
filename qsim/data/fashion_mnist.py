"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (offline).

Four IDX files in ``/usr/share/datasets/fashion-mnist/``; 60,000 train and
10,000 test images, 28x28 gray, 10 classes.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_PREPARE = "apt-get update && apt-get install -y dataset-fashion-mnist"


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into a numpy array.

  Args:
    path: the IDX file; read through gzip when it ends in '.gz'.

  Returns:
    The array, of the shape and dtype the header gives (multi-byte types big-endian).

  Raises:
    FileNotFoundError: there is no file at ``path``.
    ValueError: the file is not IDX (bad magic number) or its size does not match its header.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path} is not an IDX file (bad magic number)")
  dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[data[2]]
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape} but holds {arr.size} values")
  return arr.reshape(shape)


def load_fashion_mnist(split: str, data_dir: str = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split as ``(images float32 (N, 28, 28, 1) in [0, 1], labels int32)``.

  Args:
    split: 'train' or 'test'.
    data_dir: folder holding the four IDX files.

  Returns:
    ``(images, labels)``: images float32 (N, 28, 28, 1) in [0, 1], labels int32 (N,) in 0..9; N = 60,000 for
    'train', 10,000 for 'test'.

  Raises:
    ValueError: unknown split.
    FileNotFoundError: the files are missing; the message names the folder
      and the command that installs them.
  """
  if split not in _FILES:
    raise ValueError(f"split={split!r} is not valid; choose one of {list(_FILES)}")
  paths = [os.path.join(data_dir, f) for f in _FILES[split]]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(
        f"dataset 'fashion_mnist' ({split}) not found: looked for {missing}."
        f" Install it with: {_PREPARE}" + ("" if data_dir == DEFAULT_DIR else f" (or copy the files into {data_dir})")
    )
  images = read_idx(paths[0]).astype(np.float32)[..., None] / 255.0
  labels = read_idx(paths[1]).astype(np.int32)
  return images, labels
