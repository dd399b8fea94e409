"""Corrupting Fashion-MNIST test images with the 15 MNIST-C corruptions x 5
severities: qsim (jitted, ``qsim.shifts.corrupt``, 1,000 images per compiled
call) vs a per-image numpy loop in the style of the reference MNIST-C code
(google-research/mnist-c) and the ``imagecorruptions`` package: one image at
a time in Python, numpy / scipy / skimage per image, same parameter tables
(``MNIST_C[name].table``), same kind and amount of work (not bit-identical;
mean |change| per corruption and severity matches qsim's). It is on the cheap
side of the reference: no PIL / uint8 round trips, motion blur as one numpy
gather (not a PNG + ImageMagick round trip), glass_blur's coin flips with
``rng.random()`` (not ``np.random.choice``).

qsim: each (corruption, severity) program is compiled on the full array
first, then the whole ``--images`` x 75 workload is timed once. numpy: far
slower (glass_blur's pixel loop costs milliseconds per image), so it runs on
the first ``--numpy_images`` images per (corruption, severity) and its rate
is extrapolated (per-image cost does not depend on the count). Prints
per-corruption rates and  speedup=<numpy s/image / qsim s/image>  over the
whole workload. Target: >= 20.

  PYTHONPATH=. python benchmarks/shift_throughput.py [--images N] [--numpy_images N] [--corruptions a,b]
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from skimage import color, feature  # noqa: E402
from skimage.filters import gaussian  # noqa: E402
from skimage.transform import AffineTransform, warp  # noqa: E402
from skimage.util import random_noise  # noqa: E402

import qsim.data  # noqa: E402
from qsim.shifts import MNIST_C, SEVERITIES, corrupt  # noqa: E402

S = 28
_ROWS = np.arange(S, dtype=np.float64)[:, None]
_COLS = np.arange(S, dtype=np.float64)[None, :]


def _p(name, severity):
  return MNIST_C[name].table[severity - 1]


# ------------------------------------------------ per-image numpy baseline


def _line(c0, r0, c1, r1):
  """MNIST-C stroke: log(1 - d / 2.3) + 1 of the vertical distance d."""
  if c1 == c0:
    return np.zeros((S, S))
  m = (r1 - r0) / (c1 - c0)
  d = np.clip(np.abs(_ROWS - (m * (_COLS - c0) + r0)), 0, 2.3 - 1e-10)
  out = np.clip(np.log(1 - d / 2.3) + 1, 0, 1)
  out[:, : int(np.floor(c0))] = 0
  out[:, int(np.ceil(c1)) :] = 0
  return out


def _plasma(rng, size, decay):
  """Diamond-square height map (size x size, torus), normalised to [0, 1]."""
  m = np.zeros((size, size))
  step, wib = size, 100.0
  while step >= 2:
    half = step // 2
    corner = m[::step, ::step]
    sq = corner + np.roll(corner, -1, 0)
    sq = sq + np.roll(sq, -1, 1)
    m[half::step, half::step] = sq / 4 + wib * rng.uniform(-wib, wib, sq.shape)
    mid = m[half::step, half::step]
    top = mid + np.roll(mid, 1, 0) + corner + np.roll(corner, -1, 1)
    m[::step, half::step] = top / 4 + wib * rng.uniform(-wib, wib, top.shape)
    left = mid + np.roll(mid, 1, 1) + corner + np.roll(corner, -1, 0)
    m[half::step, ::step] = left / 4 + wib * rng.uniform(-wib, wib, left.shape)
    step, wib = half, wib / decay
  m -= m.min()
  return m / m.max()


def _warp_about_centre(x, a):
  """skimage warp with inverse map ``a`` (2x2) keeping the centre fixed."""
  c = np.array([(S - 1) / 2, (S - 1) / 2])
  m = np.eye(3)
  m[:2, :2], m[:2, 2] = a, c - a @ c
  return warp(x, AffineTransform(matrix=m))


def np_shot_noise(rng, x, sev):
  (c,) = _p("shot_noise", sev)
  return rng.poisson(x * c) / c


def np_impulse_noise(rng, x, sev):
  (c,) = _p("impulse_noise", sev)
  return random_noise(x, mode="s&p", amount=c, rng=rng)


def np_glass_blur(rng, x, sev):
  # rng.random() per pixel: cheaper than the reference's np.random.choice
  sigma, d, iters = _p("glass_blur", sev)
  x = gaussian(x, sigma)
  for _ in range(iters):
    for h in range(S - d, d, -1):
      for w in range(S - d, d, -1):
        if rng.random() < 0.5:
          dx, dy = rng.integers(-d, d, size=2)
          x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
  return gaussian(x, sigma)


def np_motion_blur(rng, x, sev):
  """One-sided Gaussian trail (ImageMagick -motion-blur) at U(-45, 45) deg."""
  radius, sigma = _p("motion_blur", sev)
  a = np.deg2rad(rng.uniform(-45, 45))
  i = np.arange(2 * math.ceil(radius) + 1)
  wt = np.exp(-(i**2) / (2 * sigma**2))
  rows = np.clip(np.arange(S)[None] + np.ceil(i * np.sin(a) - 0.5).astype(int)[:, None], 0, S - 1)
  cols = np.clip(np.arange(S)[None] + np.ceil(i * np.cos(a) - 0.5).astype(int)[:, None], 0, S - 1)
  return np.tensordot(wt / wt.sum(), x[rows[:, :, None], cols[:, None, :]], 1)


def np_shear(rng, x, sev):
  (c,) = _p("shear", sev)
  c *= rng.choice([-1, 1])
  return _warp_about_centre(x, np.array([[1, -np.sin(c)], [0, np.cos(c)]]))


def np_scale(rng, x, sev):
  (c,) = _p("scale", sev)
  return _warp_about_centre(x, np.diag([c, c]))


def np_rotate(rng, x, sev):
  (c,) = _p("rotate", sev)
  c *= rng.choice([-1, 1])
  return _warp_about_centre(x, np.array([[np.cos(c), -np.sin(c)], [np.sin(c), np.cos(c)]]))


def np_brightness(rng, x, sev):
  (c,) = _p("brightness", sev)
  hsv = color.rgb2hsv(color.gray2rgb(x))
  hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
  return color.rgb2gray(color.hsv2rgb(hsv))


def np_translate(rng, x, sev):
  (c,) = _p("translate", sev)
  return warp(x, AffineTransform(translation=c * rng.choice([-1, 1], 2)))


def np_stripe(rng, x, sev):
  (frac,) = _p("stripe", sev)
  k = max(1, round(frac * S))
  x = x.copy()
  x[:, :k] = 1 - x[:, :k]
  x[:, S - k :] = 1 - x[:, S - k :]
  return x


def np_fog(rng, x, sev):
  amount, decay = _p("fog", sev)
  max_val = x.max()
  x = x + amount * _plasma(rng, 256, decay)[:S, :S]
  return x * max_val / (max_val + amount)


def np_spatter(rng, x, sev):
  loc, scale, sigma, threshold, strength = _p("spatter", sev)
  liquid = gaussian(rng.normal(loc, scale, x.shape), sigma)
  liquid[liquid < threshold] = 0
  m = gaussian((liquid > threshold).astype(np.float32), strength)
  m[m < 0.8] = 0
  return x * (1 - m) + 63 / 255 * m


def np_dotted_line(rng, x, sev):
  (n,) = _p("dotted_line", sev)
  for _ in range(n):
    r0, r1 = rng.integers(0, S - 1, size=2)
    stroke = _line(0, r0, S - 1, r1)
    for c in range(0, S, 4):
      stroke[:, c : c + 2] = 0
    x = x + stroke
  return x


def np_zigzag(rng, x, sev):
  (n,) = _p("zigzag", sev)
  a = b = 2.0
  c0, c1 = 2, S - 3
  for _ in range(n):
    r0 = rng.integers(0, S - 1)
    r1 = r0 + rng.integers(-5, 5)
    theta = np.arctan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / np.cos(theta)
    pts = [(0.0, 0.0)] + [((2 * i + 1) * a, (-1) ** i * b) for i in range(int((d - a) // (2 * a)) + 1)]
    max_c = 2 * a * (d // (2 * a))
    if d != max_c:
      pts.append((d, pts[-1][1] / (2 * (d - max_c))))
    pc, pr = np.array(pts).T
    cs = pc * np.cos(theta) - pr * np.sin(theta) + c0
    rs = pc * np.sin(theta) + pr * np.cos(theta) + r0
    for i in range(1, len(cs)):
      x = np.clip(x + _line(cs[i - 1], rs[i - 1], cs[i], rs[i]), 0, 1)
  return x


def np_canny_edges(rng, x, sev):
  (alpha,) = _p("canny_edges", sev)
  return (1 - alpha) * x + alpha * feature.canny(x)


NUMPY = {name: globals()["np_" + name] for name in MNIST_C}


# ------------------------------------------------------------------- timing


def _numpy_seconds(name, sev, images2d, rng):
  """Seconds to corrupt every image of ``images2d`` one at a time."""
  fn = NUMPY[name]
  fn(rng, images2d[0].astype(np.float64), sev)  # first-call overheads
  out = np.empty_like(images2d)
  t = time.perf_counter()
  for i, img in enumerate(images2d):
    out[i] = np.clip(fn(rng, img.astype(np.float64), sev), 0, 1)
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--images", type=int, default=10000, help="qsim: first N test images")
  ap.add_argument("--numpy_images", type=int, default=100, help="numpy: first N images per (corruption, severity)")
  ap.add_argument("--corruptions", default=",".join(MNIST_C), help="comma list (default: all 15)")
  args = ap.parse_args()
  names = [n for n in args.corruptions.split(",") if n]
  bad = [n for n in names if n not in MNIST_C]
  if bad:
    raise SystemExit(f"unknown corruptions {bad}; choose from {list(MNIST_C)}")

  images = qsim.data.load("fashion_mnist_debian", "test").x
  x = jnp.asarray(images[: args.images])
  x_np = np.asarray(images[: args.numpy_images, :, :, 0])
  n, n_np = x.shape[0], x_np.shape[0]
  key = jax.random.key(0)
  dev = jax.devices()[0]
  print(
      f"jax={jax.__version__} backend={jax.default_backend()} device={dev.device_kind} ({dev})"
      f" cpus={os.cpu_count()}"
  )
  print(
      f"workload: {len(names)} corruptions x {len(SEVERITIES)} severities; qsim on {n} images,"
      f" numpy on the first {n_np} per (corruption, severity), its rate extrapolated"
      " (per-image cost does not depend on the count)"
  )

  t0 = time.perf_counter()
  for name in names:  # compile every program first
    for sev in SEVERITIES:
      jax.block_until_ready(corrupt("mnist_c", name, key, x, sev))
  print(f"qsim warm-up (compile + one pass): {time.perf_counter() - t0:.1f} s")

  t_q, t_np = {}, {}
  for name in names:
    t_q[name] = 0.0
    for sev in SEVERITIES:
      t = time.perf_counter()
      jax.block_until_ready(corrupt("mnist_c", name, key, x, sev))
      t_q[name] += time.perf_counter() - t
  rng = np.random.default_rng(0)
  for name in names:
    t_np[name] = sum(_numpy_seconds(name, sev, x_np, rng) for sev in SEVERITIES)

  k = len(SEVERITIES)
  print(f"{'corruption':14s} {'qsim img/s':>12s} {'numpy img/s':>12s} {'ratio':>8s}")
  for name in names:
    q, p = k * n / t_q[name], k * n_np / t_np[name]
    print(f"{name:14s} {q:12.0f} {p:12.0f} {q / p:8.1f}")
  q_spi = sum(t_q.values()) / (len(names) * k * n)
  np_spi = sum(t_np.values()) / (len(names) * k * n_np)
  print(
      f"total: qsim {sum(t_q.values()):.2f} s for {len(names) * k * n} images ({1 / q_spi:.0f} img/s);"
      f" numpy {sum(t_np.values()):.2f} s for {len(names) * k * n_np} ({1 / np_spi:.0f} img/s),"
      f" {np_spi * len(names) * k * n / 60:.1f} min extrapolated to the qsim workload"
  )
  print(f"speedup={np_spi / q_spi:.1f}")


if __name__ == "__main__":
  main()
