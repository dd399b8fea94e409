"""iWildCam-WILDS (v2.0) read from its official folder layout, at a reduced resolution.

The layout WILDS downloads (``wilds.get_dataset('iwildcam', root_dir=R)``
writes it to ``R/iwildcam_v2.0``), and the only one this reader accepts::

  <data_dir>/metadata.csv     one row per image: split, filename, y, location_remapped, ...
  <data_dir>/train/<filename> every split's images (WILDS keeps them all in train/)

``split`` is one of WILDS's five: 'train', 'val' (OOD validation: camera
locations unseen in training), 'test' (OOD test, unseen locations), 'id_val'
and 'id_test' (in-distribution: training locations). ``y`` is the class
(0..181), ``location_remapped`` the camera trap, the domain. qsim's splits
map onto them as the study used them: 'train' -> train, 'val' -> id_val
(model selection in distribution), 'test' -> id_test; the OOD splits are
the natural shift (``qsim.shifts.registry``: ``iwildcam/natural/ood_test``
and ``iwildcam/natural/ood_val``).

Images are decoded with Pillow, converted to RGB and resized to
``image_size`` x ``image_size`` (bilinear; WILDS's own transform resizes to
448 x 448 without keeping the aspect ratio, as here), float32 in [0, 1]. A
whole split decoded once is cached as uint8 under ``<data_dir>/qsim_cache``
(or ``~/.cache/qsim/iwildcam`` when the data folder is read-only) and read
from there next time; a cache older than ``metadata.csv`` is rebuilt.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Callable

import numpy as np

NUM_CLASSES = 182
IMAGE_SIZE = 112  # a quarter of the study's 448 per side
DEFAULT_DIR = os.path.expanduser("~/data/iwildcam_v2.0")
WILDS_SPLITS = ("train", "val", "test", "id_val", "id_test")
QSIM_SPLITS = {"train": "train", "val": "id_val", "test": "id_test"}
COLUMNS = ("split", "filename", "y", "location_remapped")
LAYOUT = (
    "the WILDS iwildcam_v2.0 folder: <data_dir>/metadata.csv (columns split, filename, y, location_remapped;"
    f" split in {list(WILDS_SPLITS)}) and every image at <data_dir>/train/<filename>"
    " (wilds.get_dataset('iwildcam', root_dir=R, download=True) writes it to R/iwildcam_v2.0)"
)


def read_metadata(data_dir: str) -> dict[str, dict[str, np.ndarray]]:
  """The rows of ``metadata.csv`` per WILDS split, in file order.

  Args:
    data_dir: the ``iwildcam_v2.0`` folder.

  Returns:
    ``{wilds split: {'filename': str array, 'y': int32 array, 'location': int32 array}}`` for every split present.

  Raises:
    FileNotFoundError: no such folder or no ``metadata.csv`` in it (the message gives the expected layout).
    ValueError: a required column is missing, or a row has an unknown split, a label outside 0..181 or a
      non-integer label or location (the message names the row).
  """
  path = os.path.join(data_dir, "metadata.csv")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"iWildCam folder {data_dir!r} not found; expected {LAYOUT}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found; expected {LAYOUT}")
  rows: dict[str, tuple[list, list, list]] = {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path} lacks the columns {missing}; expected {LAYOUT}")
    for line, r in enumerate(reader, start=2):
      split = r["split"]
      if split not in WILDS_SPLITS:
        raise ValueError(f"{path} line {line}: split {split!r} is not one of {list(WILDS_SPLITS)}")
      try:
        y, location = int(r["y"]), int(r["location_remapped"])
      except ValueError as e:
        raise ValueError(f"{path} line {line}: y and location_remapped must be integers ({e})") from e
      if not 0 <= y < NUM_CLASSES:
        raise ValueError(f"{path} line {line}: y={y} is outside 0..{NUM_CLASSES - 1}")
      f_, y_, l_ = rows.setdefault(split, ([], [], []))
      f_.append(r["filename"])
      y_.append(y)
      l_.append(location)
  return {
      s: {"filename": np.asarray(fs), "y": np.asarray(ys, np.int32), "location": np.asarray(ls, np.int32)}
      for s, (fs, ys, ls) in rows.items()
  }


def decode(path: str, image_size: int) -> np.ndarray:
  """One image file as uint8 RGB (``image_size``, ``image_size``, 3), resized bilinearly.

  Args:
    path: the image file.
    image_size: output height and width.

  Returns:
    The uint8 array.

  Raises:
    FileNotFoundError: the file is missing (the message gives the expected layout).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if not os.path.exists(path):
    raise FileNotFoundError(f"image {path} not found; expected {LAYOUT}")
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB").resize((image_size, image_size), Image.BILINEAR), np.uint8)


def _cache_path(data_dir: str, split: str, image_size: int) -> str:
  name = f"{split}_{image_size}px.npy"
  own = os.path.join(data_dir, "qsim_cache")
  if os.access(data_dir, os.W_OK):
    return os.path.join(own, name)
  return os.path.join(os.path.expanduser("~/.cache/qsim/iwildcam"), os.path.abspath(data_dir).strip("/"), name)


def _decode_all(data_dir: str, filenames, image_size: int) -> np.ndarray:
  out = np.empty((len(filenames), image_size, image_size, 3), np.uint8)
  for i, name in enumerate(filenames):
    out[i] = decode(os.path.join(data_dir, "train", name), image_size)
    if (i + 1) % 5000 == 0:
      print(f"iwildcam: decoded {i + 1}/{len(filenames)} images", file=sys.stderr, flush=True)
  return out


def load_split(
    wilds_split: str,
    select: Callable[[int], tuple[int, int]] | None = None,
    *,
    data_dir: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """A block of one WILDS split; only its images are decoded (or read from the cache).

  Args:
    wilds_split: one of ``WILDS_SPLITS``.
    select: ``select(n) -> (start, stop)``, the block of the split's ``n`` rows (in metadata.csv order) to
      return; None = all.
    data_dir: the ``iwildcam_v2.0`` folder; None = ``DEFAULT_DIR``.
    image_size: the images' height and width after resizing.

  Returns:
    ``(x, y, location, start)``: float32 images (N, ``image_size``, ``image_size``, 3) in [0, 1], int32 labels,
    int32 camera locations, and the block's first index in the split.

  Raises:
    ValueError: an unknown split, a split with no rows, a bad ``image_size`` or a bad metadata row.
    FileNotFoundError: the folder, metadata.csv or an image is missing (the message gives the expected layout).
  """
  data_dir = data_dir or DEFAULT_DIR
  if wilds_split not in WILDS_SPLITS:
    raise ValueError(f"split={wilds_split!r} is not valid; choose one of {list(WILDS_SPLITS)}")
  if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 1024:
    raise ValueError(f"image_size={image_size!r} is not valid; give an int in 8..1024")
  meta = read_metadata(data_dir).get(wilds_split)
  if meta is None:
    raise ValueError(f"{os.path.join(data_dir, 'metadata.csv')} has no rows of split {wilds_split!r}")
  n = len(meta["y"])
  start, stop = select(n) if select is not None else (0, n)
  cache = _cache_path(data_dir, wilds_split, image_size)
  fresh = os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(os.path.join(data_dir, "metadata.csv"))
  if fresh:
    try:
      images = np.load(cache, mmap_mode="r", allow_pickle=False)
      fresh = images.shape == (n, image_size, image_size, 3) and images.dtype == np.uint8
    except (ValueError, OSError):  # not a cache this reader wrote: decode again
      fresh = False
  if fresh:
    x = np.asarray(images[start:stop])
  elif (start, stop) == (0, n):  # the whole split: decode once, keep it
    x = _decode_all(data_dir, meta["filename"], image_size)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = f"{cache}.tmp{os.getpid()}"
    try:  # whole or absent: a killed run leaves no torn cache
      with open(tmp, "wb") as f:
        np.save(f, x)
      os.replace(tmp, cache)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  else:
    x = _decode_all(data_dir, meta["filename"][start:stop], image_size)
  return x.astype(np.float32) / 255.0, meta["y"][start:stop], meta["location"][start:stop], start
