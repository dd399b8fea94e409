"""Image operations the corruptions are built from, in JAX, on ONE image.

Every function takes an image ``(H, W, C)`` float32 (or a 2-D map) and is
pure, so it runs under ``jit`` and ``vmap``. Shape-dependent constants
(kernels, resize matrices) are built with numpy at trace time from static
parameters. Border modes use numpy's names: 'edge' (scipy/skimage
'nearest'), 'reflect' (OpenCV's default BORDER_REFLECT_101, scipy 'mirror'),
'symmetric' (scipy 'reflect'), 'constant' (zeros).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------- filtering


def filter2d(img, kernel, mode: str = "reflect"):
  """Correlates every channel of ``img`` (H, W, C) with a 2-D ``kernel`` (as
  ``cv2.filter2D``: no flip, anchor at the centre), padding with ``mode``."""
  kernel = jnp.asarray(kernel, jnp.float32)
  kh, kw = kernel.shape
  pad = ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0))
  x = jnp.pad(img, pad, mode=mode)
  c = img.shape[-1]
  rhs = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c))
  return jax.lax.conv_general_dilated(
      x[None], rhs, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c, precision=HI
  )[0]


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """scipy.ndimage's kernel: radius ``int(truncate * sigma + 0.5)``."""
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _source_index(i: int, n: int, mode: str) -> int | None:
  """Where pixel ``i`` (possibly outside 0..n-1) reads from, by border mode."""
  if 0 <= i < n:
    return i
  if mode == "constant":
    return None
  if mode == "edge":
    return min(max(i, 0), n - 1)
  if mode == "reflect":  # reflect-101
    p = 2 * n - 2 if n > 1 else 1
    i = abs(i) % p
    return p - i if i >= n else i
  if mode == "symmetric":
    i = i % (2 * n)
    return 2 * n - 1 - i if i >= n else i
  raise ValueError(f"mode={mode!r} is not valid; choose one of ['constant', 'edge', 'reflect', 'symmetric']")


def filter_matrix(n: int, kernel1d: np.ndarray, mode: str) -> np.ndarray:
  """The (n, n) matrix of a 1-D correlation with ``kernel1d`` (centred)
  along an axis of length n, the border handled by ``mode``. A separable
  filter as two small matmuls runs far faster on CPU than a depthwise
  convolution (and is exact)."""
  r = (len(kernel1d) - 1) // 2
  m = np.zeros((n, n), np.float64)
  for i in range(n):
    for j, w in enumerate(kernel1d):
      src = _source_index(i + j - r, n, mode)
      if src is not None:
        m[i, src] += w
  return m.astype(np.float32)


def separable(img, k_rows: np.ndarray, k_cols: np.ndarray, mode: str):
  """Correlates (H, W, C) with ``k_rows`` along H and ``k_cols`` along W."""
  h, w = img.shape[:2]
  return apply_separable(img, filter_matrix(h, k_rows, mode), filter_matrix(w, k_cols, mode))


def gaussian(img, sigma: float, mode: str = "edge", truncate: float = 4.0):
  """Per-channel Gaussian blur (skimage.filters.gaussian; default border
  'edge' = skimage's 'nearest')."""
  k = gaussian_kernel_1d(sigma, truncate)
  return separable(img, k, k, mode)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """The antialiased disk of the ImageNet-C/CIFAR-10-C defocus blur: an
  aliased disk on a 17x17 grid (larger for radius > 8), smoothed by a small
  Gaussian (3x3, or 5x5 for large radii; OpenCV's reflect-101 border)."""
  if radius <= 8:
    grid, ksize = np.arange(-8, 9), 3
  else:
    grid, ksize = np.arange(-math.ceil(radius), math.ceil(radius) + 1), 5
  xx, yy = np.meshgrid(grid, grid)
  disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
  disk /= disk.sum()
  t = np.arange(ksize) - (ksize - 1) / 2
  g = np.exp(-(t**2) / (2 * alias_blur**2))
  g /= g.sum()
  r = ksize // 2
  padded = np.pad(disk, r, mode="reflect")
  out = np.zeros_like(disk)
  for i in range(ksize):
    for j in range(ksize):
      out += g[i] * g[j] * padded[i : i + disk.shape[0], j : j + disk.shape[1]]
  return out.astype(np.float32)


def motion_blur(img, radius: float, sigma: float, angle_deg):
  """ImageMagick's ``-motion-blur radius x sigma + angle``: a one-sided
  Gaussian (weights exp(-i^2 / 2 sigma^2), i = 0 .. 2 ceil(radius)) summed
  along the direction ``angle`` (degrees, traced), rounded pixel offsets,
  edge pixels repeated beyond the border."""
  width = 2 * math.ceil(radius) + 1
  i = np.arange(width, dtype=np.float32)
  w = np.exp(-(i**2) / (2 * sigma**2))
  w = jnp.asarray(w / w.sum())
  a = jnp.deg2rad(angle_deg)
  dx = jnp.ceil(i * jnp.cos(a) - 0.5).astype(jnp.int32)  # columns
  dy = jnp.ceil(i * jnp.sin(a) - 0.5).astype(jnp.int32)  # rows
  # edge padding by the longest offset makes every tap an (H, W) window of
  # the padded image: a loop of dynamic slices, far faster on CPU than one
  # gather of every tap's pixels
  pad = width - 1
  h, wd, c = img.shape
  padded = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")

  def tap(t, acc):
    return acc + w[t] * jax.lax.dynamic_slice(padded, (pad + dy[t], pad + dx[t], 0), (h, wd, c))

  return jax.lax.fori_loop(0, width, tap, jnp.zeros_like(img))


# ------------------------------------------------------------------ sampling


def _index(i, n: int, mode: str):
  if mode in ("edge", "constant"):
    return jnp.clip(i, 0, n - 1)
  if mode == "reflect":  # reflect-101: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
    if n == 1:
      return jnp.zeros_like(i)
    p = 2 * n - 2
    i = jnp.abs(i) % p
    return jnp.where(i >= n, p - i, i)
  if mode == "symmetric":  # ... 1 0 | 0 1 ... n-1 | n-1 ...
    p = 2 * n
    i = i % p
    return jnp.where(i >= n, p - 1 - i, i)
  raise ValueError(f"mode={mode!r} is not valid; choose one of ['constant', 'edge', 'reflect', 'symmetric']")


def bilinear(img, rows, cols, mode: str = "constant"):
  """Samples ``img`` (H, W, C) at float coordinates ``rows``, ``cols`` (any
  equal shape) by bilinear interpolation. 'constant' treats pixels outside
  the image as 0 (skimage.transform.warp, order 1)."""
  h, w = img.shape[:2]
  r0 = jnp.floor(rows)
  c0 = jnp.floor(cols)
  fr = (rows - r0)[..., None]
  fc = (cols - c0)[..., None]
  r0 = r0.astype(jnp.int32)
  c0 = c0.astype(jnp.int32)

  def at(r, c):
    v = img[_index(r, h, mode), _index(c, w, mode)]
    if mode == "constant":
      inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
      v = jnp.where(inside[..., None], v, 0.0)
    return v

  return (
      (1 - fr) * (1 - fc) * at(r0, c0)
      + (1 - fr) * fc * at(r0, c0 + 1)
      + fr * (1 - fc) * at(r0 + 1, c0)
      + fr * fc * at(r0 + 1, c0 + 1)
  )


def warp_affine_inverse(img, matrix, mode: str = "constant"):
  """Output pixel (row r, col c) takes the input at ``matrix @ (c, r, 1)``
  (x = column, y = row; skimage's ``warp(img, inverse_map=matrix)``)."""
  h, w = img.shape[:2]
  rr, cc = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  x = matrix[0, 0] * cc + matrix[0, 1] * rr + matrix[0, 2]
  y = matrix[1, 0] * cc + matrix[1, 1] * rr + matrix[1, 2]
  return bilinear(img, y, x, mode)


# ------------------------------------------------------------------- resizing


def _zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
  """scipy.ndimage.zoom order 1 (grid_mode False) along one axis."""
  m = np.zeros((n_out, n_in), np.float64)
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  for j in range(n_out):
    x = j * scale
    i0 = min(int(math.floor(x)), n_in - 1)
    f = x - i0
    m[j, i0] += 1 - f
    if f > 0:
      m[j, i0 + 1] += f
  return m


def clipped_zoom_matrix(n: int, zoom: float) -> np.ndarray:
  """The ImageNet-C ``clipped_zoom`` along one axis as an (n, n) matrix: crop
  the central ``ceil(n / zoom)`` pixels, zoom them by ``zoom`` (scipy order
  1), keep the central ``n``."""
  ch = int(math.ceil(n / zoom))
  top = (n - ch) // 2
  n_out = int(round(ch * zoom))
  z = _zoom_matrix(ch, n_out)
  trim = (n_out - n) // 2
  m = np.zeros((n, n))
  m[:, top : top + ch] = z[trim : trim + n]
  return m.astype(np.float32)


def apply_separable(img, row_matrix, col_matrix):
  """``row_matrix @ img @ col_matrix.T`` per channel: (H', H) and (W', W)."""
  x = jnp.einsum("ij,jwc->iwc", jnp.asarray(row_matrix), img, precision=HI)
  return jnp.einsum("kw,iwc->ikc", jnp.asarray(col_matrix), x, precision=HI)


def box_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """PIL's ``Image.resize(..., Image.BOX)`` along one axis (area weights,
  including PIL's rule for upsampling)."""
  scale = n_in / n_out
  support = 0.5 * max(scale, 1.0)
  inv = 1.0 / max(scale, 1.0)
  m = np.zeros((n_out, n_in))
  for j in range(n_out):
    center = (j + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    for i in range(lo, hi):
      t = (i - center + 0.5) * inv
      m[j, i] = 1.0 if -0.5 <= t < 0.5 else 0.0
    m[j] /= m[j].sum()
  return m.astype(np.float32)


# ----------------------------------------------------------------- textures


def _hash_seed(key):
  return jax.random.bits(key, (2,), jnp.uint32)


def _hash_at(seed, start: int, shape):
  """Uniforms in [0, 1) for the flat indices ``start``, ``start + 1``, ...
  of the stream seeded by ``seed`` (two words): shape ``shape``, or
  ``shape + (n,)`` for ``n`` streams when ``seed`` is (2, n). These are
  ``hash_uniform``'s numbers, computed where they are used so XLA fuses the
  hash into them."""

  def mix(x):  # a 32-bit avalanche hash (xor-shift-multiply, "lowbias32")
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)

  size = math.prod(shape)
  idx = jnp.arange(start, start + size, dtype=jnp.uint32).reshape(shape + (1,) * (seed.ndim - 1))
  x = mix(idx * jnp.uint32(0x9E3779B9) + seed[0])
  x = mix(x ^ seed[1])
  return (x >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def hash_uniform(key, size: int):
  """``size`` uniforms in [0, 1) from a fast integer hash of the index,
  seeded by two threefry words of ``key``: textures need tens of thousands
  of uniforms per image, and threefry costs ~10x more per number. Uniform
  and independent enough for noise textures; not a cryptographic stream."""
  return _hash_at(_hash_seed(key), 0, (size,))


def _interleave(corners, top, left, centres):
  """The grid of side 2k whose even rows alternate corners / top values and
  whose odd rows alternate left / centre values (trailing axes kept)."""
  k, j = corners.shape[:2]
  rest = corners.shape[2:]
  even_rows = jnp.stack([corners, top], axis=2).reshape((k, 2 * j) + rest)
  odd_rows = jnp.stack([left, centres], axis=2).reshape((k, 2 * j) + rest)
  return jnp.stack([even_rows, odd_rows], axis=1).reshape((2 * k, 2 * j) + rest)


def plasma_fractal(key, mapsize: int, wibbledecay: float, shape=None):
  """Diamond-square height map (the ImageNet-C fog generator) of side
  ``mapsize`` (a power of two), normalised to [0, 1] by its own minimum and
  maximum, and cut to its top-left ``shape`` (H, W) (default: the whole
  map). Noise at each level is ``wibble * U(-wibble, wibble)``, ``wibble``
  starting at 100 and divided by ``wibbledecay`` per level, on a torus
  (wrap-around). ``plasma_fractals`` makes one per key of a batch."""
  return plasma_fractals(key[None], mapsize, wibbledecay, shape)[0]


def plasma_fractals(keys, mapsize: int, wibbledecay: float, shape=None):
  """``plasma_fractal`` for each of ``keys`` (n,): (n, H, W), the same maps.

  Built coarse to fine by interleaving dense grids (corners, square
  centres, the two kinds of diamond centres), which is the reference's
  strided in-place update without any scatter, with the batch as the
  fastest-varying axis (the grid shifts then move whole vectors). The
  finest level, a quarter of whose values are the map, is not interleaved:
  its minimum and maximum are reduced where its values are made, and only
  the cut is assembled."""
  if mapsize < 2 or mapsize & (mapsize - 1):
    raise ValueError(f"mapsize={mapsize} is not valid; give a power of two >= 2")
  h, w = (mapsize, mapsize) if shape is None else shape
  if not (0 < h <= mapsize and 0 < w <= mapsize):
    raise ValueError(f"shape={shape} is not valid; give (H, W) with 1 <= H, W <= mapsize={mapsize}")
  levels = (mapsize - 1).bit_length()
  seeds = jax.vmap(_hash_seed)(keys).T  # (2, n)
  corners = jnp.zeros((1, 1, keys.shape[0]), jnp.float32)  # the values at multiples of step
  wibble, used = 100.0, 0
  for level in range(levels):
    k = 1 << level
    # wibble * U(-wibble, wibble): level l (grid side k = 2^l) takes 3 k^2
    # numbers of the stream
    draws = (_hash_at(seeds, used, (3, k, k)) * 2.0 - 1.0) * (wibble * wibble)
    used += 3 * k * k
    sq = corners + jnp.roll(corners, -1, axis=0)
    sq = sq + jnp.roll(sq, -1, axis=1)
    centres = sq / 4 + draws[0]  # at (half + i step, half + j step)
    top = (centres + jnp.roll(centres, 1, axis=0) + corners + jnp.roll(corners, -1, axis=1)) / 4 + draws[1]
    left = (centres + jnp.roll(centres, 1, axis=1) + corners + jnp.roll(corners, -1, axis=0)) / 4 + draws[2]
    wibble = wibble / wibbledecay
    if level < levels - 1:
      corners = _interleave(corners, top, left, centres)
  parts = (corners, top, left, centres)
  lo = functools.reduce(jnp.minimum, [jnp.min(p, axis=(0, 1)) for p in parts])
  hi = functools.reduce(jnp.maximum, [jnp.max(p, axis=(0, 1)) for p in parts])
  hk, wk = -(-h // 2), -(-w // 2)
  m = _interleave(*(p[:hk, :wk] for p in parts))[:h, :w] - lo
  return jnp.moveaxis(m / (hi - lo), -1, 0)


def line_from_points(shape, c0, r0, c1, r1):
  """MNIST-C's stroke between (column c0, row r0) and (c1, r1): intensity
  ``log(1 - d / 2.3) + 1`` clipped to [0, 1], ``d`` the vertical distance to
  the line, zero outside columns [floor(c0), ceil(c1)) and for a vertical
  segment (c0 == c1). Traced endpoints."""
  h, w = shape
  rr = jnp.arange(h, dtype=jnp.float32)[:, None]
  cc = jnp.arange(w, dtype=jnp.float32)[None, :]
  same = c1 == c0
  m = (r1 - r0) / jnp.where(same, 1.0, c1 - c0)
  dist = jnp.clip(jnp.abs(rr - (m * (cc - c0) + r0)), 0.0, 2.3 - 1e-6)
  stroke = jnp.clip(jnp.log(1 - dist / 2.3) + 1, 0.0, 1.0)
  cols = jnp.arange(w)[None, :]
  keep = (cols >= jnp.floor(c0)) & (cols < jnp.ceil(c1)) & ~same
  return jnp.where(keep, stroke, 0.0)


# ---------------------------------------------------------------- colour


def rgb_to_hsv(img):
  """skimage.color.rgb2hsv on (H, W, 3) in [0, 1] (hue in [0, 1))."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  v = jnp.max(img, axis=-1)
  delta = v - jnp.min(img, axis=-1)
  s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
  d = jnp.where(delta > 0, delta, 1.0)
  h = jnp.where(r == v, (g - b) / d, jnp.where(g == v, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
  h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv):
  """skimage.color.hsv2rgb."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  hi = jnp.floor(h * 6.0)
  f = h * 6.0 - hi
  p = v * (1 - s)
  q = v * (1 - f * s)
  t = v * (1 - (1 - f) * s)
  hi = hi.astype(jnp.int32) % 6
  choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  out = [jnp.select([hi == k for k in range(6)], [c[ch] for c in choices]) for ch in range(3)]
  return jnp.stack(out, axis=-1)


def gray(img):
  """Luma (ITU-R 601, as OpenCV's RGB2GRAY) of (H, W, 3), keeping a channel axis."""
  return jnp.tensordot(img, jnp.array([0.299, 0.587, 0.114], jnp.float32), axes=1, precision=HI)[..., None]


# ------------------------------------------------------------------- edges


def canny(img2d, sigma: float = 1.0, low: float = 0.1, high: float = 0.2):
  """Canny edges of a 2-D image in [0, 1] as skimage.feature.canny does by
  default: Gaussian smoothing (zero border, normalised by the smoothed
  mask), Sobel gradients, non-maximum suppression interpolated along the
  gradient, hysteresis (8-connected) between ``low`` and ``high``; the
  outermost pixels are never edges. Returns a float 0/1 map."""
  h, w = img2d.shape
  x = img2d[..., None]
  k = gaussian_kernel_1d(sigma)
  bleed = np.outer(filter_matrix(h, k, "constant").sum(1), filter_matrix(w, k, "constant").sum(1))
  smoothed = gaussian(x, sigma, mode="constant") / bleed[..., None]
  sob_d = np.array([-1.0, 0.0, 1.0], np.float32)
  sob_s = np.array([1.0, 2.0, 1.0], np.float32)
  gi = separable(smoothed, sob_d, sob_s, "symmetric")[..., 0]
  gj = separable(smoothed, sob_s, sob_d, "symmetric")[..., 0]
  mag = jnp.hypot(gi, gj)
  interior = np.zeros((h, w), bool)
  interior[1:-1, 1:-1] = True
  p = jnp.pad(mag, 1)

  def nb(dr, dc):  # magnitude at (r + dr, c + dc), zero outside
    return p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

  abs_i, abs_j = jnp.abs(gi), jnp.abs(gj)
  same = (gi >= 0) == (gj >= 0)
  safe = lambda a: jnp.where(a > 0, a, 1.0)  # noqa: E731
  # four sectors of the gradient direction; weights interpolate between the
  # axis neighbour and the diagonal one (skimage's scheme)
  w1 = abs_j / safe(abs_i)
  w2 = abs_i / safe(abs_j)
  s1 = same & (abs_i >= abs_j)
  s2 = same & (abs_i < abs_j)
  s3 = ~same & (abs_i < abs_j)
  s4 = ~same & (abs_i >= abs_j)

  def local_max(wt, a_plus, d_plus, a_minus, d_minus):
    return (d_plus * wt + a_plus * (1 - wt) <= mag) & (d_minus * wt + a_minus * (1 - wt) <= mag)

  lm = (
      (s1 & local_max(w1, nb(1, 0), nb(1, 1), nb(-1, 0), nb(-1, -1)))
      | (s2 & local_max(w2, nb(0, 1), nb(1, 1), nb(0, -1), nb(-1, -1)))
      | (s3 & local_max(w2, nb(0, 1), nb(-1, 1), nb(0, -1), nb(1, -1)))
      | (s4 & local_max(w1, nb(-1, 0), nb(-1, 1), nb(1, 0), nb(1, -1)))
  )
  lm = lm & interior & (mag > 0)
  weak = lm & (mag >= low)
  strong = weak & (mag >= high)

  def dilate(e):  # 3x3 (8-connected) dilation from shifted copies: fuses, unlike reduce_window
    e = jnp.pad(e, 1)
    rows = e[:-2] | e[1:-1] | e[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]

  def grow(state):  # four dilation steps per loop step, fused into one pass
    edges, _ = state
    new = edges
    for _ in range(4):
      new = weak & dilate(new)
    return new, jnp.any(new != edges)

  edges, _ = jax.lax.while_loop(lambda s: s[1], grow, (strong, jnp.array(True)))
  return edges.astype(jnp.float32)
