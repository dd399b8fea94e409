"""Image corruptions as pure, jit- and vmap-able JAX functions, in two suites.

* ``mnist_c``: the 15 MNIST-C corruptions (Mu & Gilmer 2019), with the
  parameter tables of their code (``google-research/mnist-c``); the
  corruptions it defines with one setting (stripe, dotted_line, zigzag,
  canny_edges) get a severity scale here, and ``MNIST_C_OFFICIAL`` names
  the severity the published MNIST-C uses for each corruption.
* ``cifar10_c``: the 19 CIFAR-10-C corruptions (Hendrycks & Dietterich
  2019), with the tables of ``make_cifar_c.py``; severity 1..5 as published.

Each corruption is ``fn(key, images, severity) -> images``: ``images`` float
in [0, 1], shape (N, H, W, C) with C = 1 or 3 and H, W >= 16 (28x28 gray,
32x32 RGB and larger), ``severity`` a Python int in 1..5 (static: it picks
the published parameters). Image ``i`` of a batch draws its randomness from
``jax.random.fold_in(key, i)``, so results do not depend on how a dataset is
cut into batches (``corrupt`` relies on this to work in chunks). Shape,
dtype and the [0, 1] range are preserved; the same key gives the same
result.

Where the reference pipeline used a tool JAX does not have, the corruption
does the same thing in JAX and its docstring says how; the reference's
intermediate 8-bit roundings (PIL/PNG round trips) are not reproduced
(everything stays in float) except in jpeg_compression, which runs Pillow's
JPEG codec on the host through ``jax.pure_callback``.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qsim.shifts import _ops

SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIZE = 16

Corruption = Callable[[jax.Array, jax.Array, int], jax.Array]


def _batched(one: Callable, table, dynamic: bool = False, block: int | None = None) -> Corruption:
  """Turns ``one(key, image, *params)`` on one (H, W, C) image and a table of
  5 parameter tuples into the batched ``fn(key, images, severity)``.

  ``one`` may instead be batch-level, ``one(keys, images, *params)`` with
  one key per image, marked by a ``batch_level`` attribute (for work that
  runs faster across the batch than vmapped per image).

  ``dynamic``: the parameters are plain numbers that shape nothing, so they
  are passed as arrays and one compilation serves all five severities
  (``corrupt`` uses ``fn.apply`` for that).

  ``block``: images are processed ``block`` at a time in a loop (the batch
  padded to a multiple of it) instead of all at once, so the per-image
  intermediates (a 256x256 fractal, padded copies) stay in cache; each image
  goes through the same program whatever the batch size."""
  rows = tuple(p if isinstance(p, tuple) else (p,) for p in table)

  def apply(key, images, params, offset=0):
    idx = offset + jnp.arange(images.shape[0])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    if getattr(one, "batch_level", False):
      run = lambda k, x: one(k, x, *params)  # noqa: E731
    else:
      run = jax.vmap(lambda k, x: one(k, x, *params))
    if block is None:
      out = run(keys, images)
    else:
      n = images.shape[0]
      pad = -n % block
      k, x = (jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) for a in (keys, images))
      out = jax.lax.map(lambda kx: run(*kx), tuple(a.reshape((-1, block) + a.shape[1:]) for a in (k, x)))
      out = out.reshape((-1,) + images.shape[1:])[:n]
    return jnp.clip(out, 0.0, 1.0).astype(images.dtype)

  def params_for(severity):
    row = rows[severity - 1]
    return tuple(jnp.asarray(v, jnp.float32) for v in row) if dynamic else row

  def fn(key, images, severity, offset=0):
    return apply(key, images, params_for(severity), offset)

  fn.__doc__ = one.__doc__
  fn.__name__ = one.__name__
  fn.table, fn.dynamic, fn.apply, fn.params_for = rows, dynamic, apply, params_for
  return fn


def _luma_or_self(img):
  return _ops.gray(img) if img.shape[-1] == 3 else img


def _to_channels(layer2d, c):
  return jnp.broadcast_to(layer2d[..., None], layer2d.shape + (c,))


# ---------------------------------------------------------------- noise


def gaussian_noise(key, img, c):
  """Additive N(0, c^2) noise.

  Args:
    key: PRNG key of this image.
    img: one image (H, W, C), float in [0, 1].
    c: standard deviation of the noise, in intensity units.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  return img + c * jax.random.normal(key, img.shape)


def shot_noise(key, img, c):
  """Poisson photon noise: Poisson(x * c) / c.

  Args:
    key: PRNG key of this image.
    img: one image (H, W, C), float in [0, 1].
    c: photons per unit intensity (larger = less noise).

  Returns:
    The noisy image (H, W, C) float32, not yet clipped (the suite wrapper clips to [0, 1]).
  """
  return jax.random.poisson(key, img * c, img.shape).astype(jnp.float32) / c


def _poisson_inverse_cdf(key, lam, kmax, unroll: int = 8):
  """Poisson(lam) samples by inverting the CDF: N = the number of k in
  0..kmax with u > P(X <= k), u ~ U(0, 1) (``kmax`` may be traced; N <=
  kmax + 1), stopping early once every sample has its value. Exact in law
  while kmax is far in the tail (the callers use rate + 10 sqrt(rate) + 10, ten
  standard deviations), and far faster on CPU than rejection sampling.
  ``unroll`` terms are written out per loop step, so XLA fuses them into
  one pass over the pixels."""
  u = jax.random.uniform(key, lam.shape)
  p = jnp.exp(-lam)

  def body(carry):
    step, p, cdf, n = carry
    for j in range(unroll):
      k = step * unroll + j + 1
      p = p * (lam * (1.0 / k.astype(jnp.float32)))
      cdf = cdf + p
      n = n + ((u > cdf) & (k <= kmax))  # terms past kmax are summed, never counted
    return step + 1, p, cdf, n

  def more(carry):
    step, _, cdf, _ = carry
    return (step * unroll < kmax) & jnp.any(u > cdf)

  init = (jnp.int32(0), p, p, (u > p).astype(jnp.int32))
  return jax.lax.while_loop(more, body, init)[3].astype(jnp.float32)


def shot_noise_small(key, img, c):
  """Poisson photon noise Poisson(x * c) / c for photon counts c <= 60 (MNIST-C).

  Sampled by inverting the CDF (float32 underflows beyond).

  Args:
    key: PRNG key of this image.
    img: one image (H, W, C), float in [0, 1].
    c: photons per unit intensity, at most 60 (larger = less noise).

  Returns:
    The noisy image (H, W, C) float32, not yet clipped (the suite wrapper clips to [0, 1]).
  """
  kmax = jnp.ceil(c + 10 * jnp.sqrt(c) + 10).astype(jnp.int32)
  return _poisson_inverse_cdf(key, img * c, kmax) / c


def impulse_noise(key, img, c):
  """Salt and pepper on a fraction c of the values, half each (skimage.util.random_noise 's&p').

  Args:
    key: PRNG key of this image.
    img: one image (H, W, C), float in [0, 1].
    c: fraction of the values (pixels x channels) hit, in [0, 1].

  Returns:
    The image (H, W, C) with each hit value set to 0 or 1 at random.
  """
  k_hit, k_salt = jax.random.split(key)
  hit = jax.random.uniform(k_hit, img.shape) < c
  salt = jax.random.uniform(k_salt, img.shape) < 0.5
  return jnp.where(hit, salt.astype(img.dtype), img)


def speckle_noise(key, img, c):
  """Multiplicative noise x + x * N(0, c^2).

  Args:
    key: PRNG key of this image.
    img: one image (H, W, C), float in [0, 1].
    c: standard deviation of the relative noise.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  return img + img * c * jax.random.normal(key, img.shape)


# ----------------------------------------------------------- photometric


def _rgb_value_shift(img, c):
  # HSV's V is max(R, G, B); adding c to V with hue and saturation kept
  # scales the pixel by (V + c) / V (clipped to 1): exact HSV arithmetic.
  v = jnp.max(img, axis=-1, keepdims=True)
  new_v = jnp.clip(v + c, 0.0, 1.0)
  scale = jnp.where(v > 0, new_v / jnp.where(v > 0, v, 1.0), 0.0)
  return jnp.where(v > 0, img * scale, jnp.broadcast_to(new_v, img.shape))


def brightness(key, img, c):
  """HSV value + c (gray images: x + c, what MNIST-C's HSV round trip gives).

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    c: amount added to the HSV value (V in [0, 1]).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  return img + c if img.shape[-1] == 1 else _rgb_value_shift(img, c)


def contrast(key, img, c):
  """(x - mean) * c + mean, the mean over the whole image.

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    c: contrast factor (< 1 lowers the contrast).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  mean = jnp.mean(img, keepdims=True)
  return (img - mean) * c + mean


def saturate(key, img, c_mul, c_add):
  """HSV saturation * c_mul + c_add (clipped to [0, 1]).

  Gray images have no saturation, so there H, S and V are all scaled and shifted and the result turned back to gray:
  MNIST-C's own saturate.

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    c_mul: factor on the saturation.
    c_add: amount added to the saturation after scaling.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  if img.shape[-1] == 1:
    hsv = jnp.concatenate([jnp.zeros_like(img), jnp.zeros_like(img), img], axis=-1)
    hsv = jnp.clip(hsv * c_mul + c_add, 0.0, 1.0)
    rgb = _ops.hsv_to_rgb(hsv)
    return jnp.tensordot(rgb, jnp.array([0.2125, 0.7154, 0.0721]), axes=1)[..., None]
  hsv = _ops.rgb_to_hsv(img)
  hsv = hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * c_mul + c_add, 0.0, 1.0))
  return _ops.hsv_to_rgb(hsv)


# ------------------------------------------------------------------- blur


def gaussian_blur(key, img, sigma):
  """Gaussian blur per channel (skimage: truncated at 4 sigma, edge border).

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    sigma: standard deviation of the Gaussian, in pixels.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  return _ops.gaussian(img, sigma)


def defocus_blur(key, img, radius, alias_blur):
  """Convolution with an antialiased disk (OpenCV reflect-101 border).

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    radius: radius of the disk, in pixels.
    alias_blur: standard deviation of the Gaussian that smooths the disk, in pixels.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  return _ops.filter2d(img, _ops.disk_kernel(radius, alias_blur), "reflect")


def _glass(keys, images, sigma, delta, iterations, p_swap):
  """Gaussian blur, then ``iterations`` passes of local pixel swaps from the
  bottom-right to the top-left (each pixel swapped, with probability
  ``p_swap``, with one at offset randint(-delta, delta) per axis), then blur
  again. The reference's uint8 cast after the first blur is not applied.

  Batch-level: the sequential swap chain runs once for the whole batch, the
  batch as the fastest-varying axis; each step rewrites only the
  (2 delta)^2 block of candidate partners around its pixel (no scatter,
  which XLA's CPU backend would turn into a copy of the batch per step).
  The offsets and coin flips come from ``_ops.hash_uniform`` (thousands of
  draws per image)."""
  n, h, w, c = images.shape
  blurred = jax.vmap(lambda im: _ops.gaussian(im, sigma))(images)
  x = jnp.transpose(blurred, (1, 2, 3, 0))  # (h, w, c, n)
  rows = np.arange(h - delta, delta, -1)
  cols = np.arange(w - delta, delta, -1)
  pix_r = jnp.asarray(np.tile(np.repeat(rows, len(cols)), iterations), jnp.int32)  # pixel of each step
  pix_c = jnp.asarray(np.tile(np.tile(cols, len(rows)), iterations), jnp.int32)
  steps = pix_r.shape[0]
  u = jax.vmap(lambda k: _ops.hash_uniform(k, 3 * steps).reshape(steps, 3))(keys)  # (n, steps, 3)
  off = jnp.floor(u[..., :2] * (2 * delta)).astype(jnp.int32)  # randint(-delta, delta) + delta
  where_to = jnp.moveaxis(off[..., 0] * (2 * delta) + off[..., 1], 0, 1)  # (steps, n): dy, dx in the block
  do = jnp.moveaxis(u[..., 2] < p_swap, 0, 1)  # (steps, n)
  side = 2 * delta
  cell = jnp.arange(side * side).reshape(side, side, 1, 1)

  def body(t, x):
    corner = (pix_r[t] - delta, pix_c[t] - delta, 0, 0)
    block = jax.lax.dynamic_slice(x, corner, (side, side, c, n))
    hit = cell == where_to[t]  # the partner of each image
    a = block[delta, delta]  # (c, n)
    b = a
    for i in range(side):  # the partner, selected cell by cell: elementwise, so it fuses (a
      for j in range(side):  # reduction over the block's leading axes is slow on CPU)
        b = jnp.where(hit[i, j], block[i, j], b)
    d = do[t]
    # one update of the block (updating the partner and the pixel separately
    # let XLA read the old x in the second, which then copied all of x per step)
    block = jnp.where(hit & d, a, block)
    block = jnp.where(cell == delta * side + delta, jnp.where(d, b, a), block)
    return jax.lax.dynamic_update_slice(x, block, corner)

  x = jax.lax.fori_loop(0, steps, body, x)
  return jax.vmap(lambda im: _ops.gaussian(im, sigma))(jnp.transpose(x, (3, 0, 1, 2)))


_glass.batch_level = True


def glass_blur_cifar(keys, images, sigma, delta, iterations):
  """Glass blur (every pixel swapped); see ``_glass``.

  Args:
    keys: one PRNG key per image, shape (N,).
    images: the batch (N, H, W, C), float in [0, 1].
    sigma: standard deviation of the two Gaussian blurs, in pixels.
    delta: swap reach in pixels (offsets randint(-delta, delta) per axis); static int.
    iterations: number of swap passes over the image; static int.

  Returns:
    The corrupted batch (N, H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  return _glass(keys, images, sigma, delta, iterations, 1.0)


def glass_blur_mnist(keys, images, sigma, delta, iterations):
  """Glass blur, each swap done with probability 1/2 (MNIST-C); see ``_glass``.

  Args:
    keys: one PRNG key per image, shape (N,).
    images: the batch (N, H, W, C), float in [0, 1].
    sigma: standard deviation of the two Gaussian blurs, in pixels.
    delta: swap reach in pixels (offsets randint(-delta, delta) per axis); static int.
    iterations: number of swap passes over the image; static int.

  Returns:
    The corrupted batch (N, H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  return _glass(keys, images, sigma, delta, iterations, 0.5)


glass_blur_cifar.batch_level = glass_blur_mnist.batch_level = True


def motion_blur(key, img, radius, sigma):
  """ImageMagick's motion blur (radius, sigma) at an angle ~ U(-45, 45) degrees.

  A one-sided Gaussian trail (``_ops.motion_blur``).

  Args:
    key: PRNG key of this image (draws the angle).
    img: one image (H, W, C), float in [0, 1].
    radius: length of the trail in pixels (2 ceil(radius) + 1 taps); static.
    sigma: standard deviation of the trail's Gaussian weights, in pixels; static.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  angle = jax.random.uniform(key, (), minval=-45.0, maxval=45.0)
  return _ops.motion_blur(img, radius, sigma, angle)


def zoom_blur(key, img, zooms):
  """Mean of the image and its central zooms by each factor of ``zooms`` (ImageNet-C clipped_zoom, bilinear).

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    zooms: zoom factors (>= 1), a static tuple of floats.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  h, w = img.shape[:2]
  out = img
  for z in zooms:
    out = out + _ops.apply_separable(img, _ops.clipped_zoom_matrix(h, z), _ops.clipped_zoom_matrix(w, z))
  return out / (len(zooms) + 1)


# ------------------------------------------------------------- weather


def _mapsize(h, w, minimum):
  """The fractal's side: ``minimum``, or the next power of two >= H, W."""
  return max(minimum, 1 << (max(h, w) - 1).bit_length())


def _fog(keys, images, amount, decay, mapsize):
  h, w = images.shape[1:3]
  max_val = jnp.max(images, axis=(1, 2, 3), keepdims=True)
  layer = _ops.plasma_fractals(keys, _mapsize(h, w, mapsize), decay, (h, w))
  x = images + amount * layer[..., None]
  return x * max_val / (max_val + amount)


def fog_cifar(keys, images, amount, decay):
  """Adds ``amount`` x a diamond-square plasma fractal, rescaled so the brightest value stays put.

  The fractal's map side is 32, or the next power of two >= H, W.

  Args:
    keys: one PRNG key per image, shape (N,).
    images: the batch (N, H, W, C), float in [0, 1].
    amount: strength of the fog (the fractal is in [0, 1]).
    decay: the fractal's noise decay per level (larger = smoother fog).

  Returns:
    The corrupted batch (N, H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  return _fog(keys, images, amount, decay, 32)


def fog_mnist(keys, images, amount, decay):
  """MNIST-C's fog: as CIFAR-10-C's, cut from a 256x256 fractal (coarser clouds for the small digits).

  Args:
    keys: one PRNG key per image, shape (N,).
    images: the batch (N, H, W, C), float in [0, 1].
    amount: strength of the fog (the fractal is in [0, 1]).
    decay: the fractal's noise decay per level (larger = smoother fog).

  Returns:
    The corrupted batch (N, H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  return _fog(keys, images, amount, decay, 256)


fog_cifar.batch_level = fog_mnist.batch_level = True


def snow(key, img, loc, scale, zoom, threshold, radius, sigma, keep):
  """Snowflakes added to a whitened image.

  A N(loc, scale) layer, zoomed by ``zoom``, values under ``threshold`` dropped, motion-blurred (radius, sigma, angle
  U(-135, -45)), added with its 180-degree rotation to the image, itself whitened as
  keep * x + (1 - keep) * max(x, 1.5 gray(x) + 0.5).

  Args:
    key: PRNG key of this image (draws the layer and the blur angle).
    img: one image (H, W, C), float in [0, 1].
    loc: mean of the snow layer's Gaussian noise.
    scale: standard deviation of the snow layer's Gaussian noise.
    zoom: zoom factor (>= 1) of the layer (larger = bigger flakes); static.
    threshold: layer values below it are dropped.
    radius: motion-blur length of the flakes, in pixels; static.
    sigma: motion-blur standard deviation, in pixels; static.
    keep: weight of the original image in the whitening, in [0, 1].

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  h, w, c = img.shape
  k_layer, k_angle = jax.random.split(key)
  layer = loc + scale * jax.random.normal(k_layer, (h, w, 1))
  layer = _ops.apply_separable(layer, _ops.clipped_zoom_matrix(h, zoom), _ops.clipped_zoom_matrix(w, zoom))
  layer = jnp.clip(jnp.where(layer < threshold, 0.0, layer), 0.0, 1.0)
  angle = jax.random.uniform(k_angle, (), minval=-135.0, maxval=-45.0)
  layer = _ops.motion_blur(layer, radius, sigma, angle)
  x = keep * img + (1 - keep) * jnp.maximum(img, _luma_or_self(img) * 1.5 + 0.5)
  return x + layer + jnp.rot90(layer, 2, axes=(0, 1))


def frost_texture(key, h, w):
  """A procedural frost image (H, W) in [0, 1].

  A plasma-fractal haze plus many thin bright ice needles at random positions, angles and lengths. Generated, not
  downloaded (the reference crops six photographs).

  Args:
    key: PRNG key of the texture.
    h: height in pixels (static int).
    w: width in pixels (static int).

  Returns:
    The texture, float32 (h, w) in [0, 1].
  """
  k_haze, k_pos, k_ang, k_len, k_int = jax.random.split(key, 5)
  haze = _ops.plasma_fractal(k_haze, _mapsize(h, w, 32), 1.6, (h, w))
  n = max(24, (h * w) // 40)
  start = jax.random.uniform(k_pos, (n, 2)) * jnp.array([h, w], jnp.float32)
  angle = jax.random.uniform(k_ang, (n,), maxval=jnp.pi)
  length = jax.random.uniform(k_len, (n,), minval=0.08, maxval=0.3) * min(h, w)
  bright = jax.random.uniform(k_int, (n,), minval=0.3, maxval=1.0)
  d = jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1)
  rr, cc = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  p = jnp.stack([rr, cc], -1)[None] - start[:, None, None, :]  # (n, H, W, 2)
  t = jnp.clip(jnp.sum(p * d[:, None, None, :], -1), 0.0, length[:, None, None])
  dist = jnp.linalg.norm(p - t[..., None] * d[:, None, None, :], axis=-1)
  needles = jnp.sum(bright[:, None, None] * jnp.clip(1.0 - dist, 0.0, 1.0), axis=0)
  return jnp.clip(0.3 + 0.4 * haze + 0.8 * needles, 0.0, 1.0)


_ICE = np.array([0.86, 0.93, 1.0], np.float32)  # frost is a pale blue-white (numpy: importing must not start a backend)


def frost(key, img, keep, amount):
  """keep * x + amount * frost texture (``frost_texture``; tinted pale blue on RGB).

  Args:
    key: PRNG key of this image (draws the texture).
    img: one image (H, W, C), float in [0, 1].
    keep: weight of the original image.
    amount: weight of the frost texture.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  h, w, c = img.shape
  tex = frost_texture(key, h, w)[..., None]
  tex = tex * _ICE if c == 3 else tex * jnp.mean(_ICE)
  return keep * img + amount * tex


def _liquid(key, h, w, loc, scale, sigma, threshold):
  layer = loc + scale * jax.random.normal(key, (h, w, 1))
  layer = _ops.gaussian(layer, sigma)
  return jnp.where(layer < threshold, 0.0, layer)


def _mud(img, liquid, threshold, sigma, color):
  m = _ops.gaussian((liquid > threshold).astype(jnp.float32), sigma)
  m = jnp.where(m < 0.8, 0.0, m)
  return img * (1 - m) + color * m


_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)


def spatter_cifar(key, img, loc, scale, sigma, threshold, strength, mud):
  """Liquid splashes from a thresholded, blurred N(loc, scale) layer.

  Mud (brown, opaque) at severities 4-5, water (pale turquoise, added) at 1-3. The water's shading is an emboss of the
  liquid layer, in place of the reference's OpenCV Canny / distance-transform / histogram chain.

  Args:
    key: PRNG key of this image (draws the liquid layer).
    img: one image (H, W, C), float in [0, 1].
    loc: mean of the liquid layer's Gaussian noise.
    scale: standard deviation of the liquid layer's Gaussian noise.
    sigma: blur of the liquid layer, in pixels; static.
    threshold: layer values below it hold no liquid.
    strength: water: the peak intensity added; mud: the blur of the mud mask, in pixels.
    mud: 1 for mud, 0 for water (static).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  h, w, c = img.shape
  liquid = _liquid(key, h, w, loc, scale, sigma, threshold)
  if mud:
    color = jnp.array([63, 42, 20], jnp.float32) / 255
    return _mud(img, liquid, threshold, strength, color if c == 3 else _ops.gray(color[None, None])[0, 0])
  shade = jnp.maximum(_ops.filter2d(_ops.gaussian(liquid, 1.0), _EMBOSS, "reflect") + 1.0, 0.0)
  m = liquid * shade
  m = m / jnp.maximum(jnp.max(m), 1e-6) * strength
  color = jnp.array([175, 238, 238], jnp.float32) / 255
  return img + m * (color if c == 3 else _ops.gray(color[None, None])[0, 0])


def spatter_mnist(key, img, loc, scale, sigma, threshold, strength):
  """MNIST-C's spatter: mud of gray 63/255 from a thresholded, blurred N(loc, scale) layer.

  Args:
    key: PRNG key of this image (draws the liquid layer).
    img: one image (H, W, C), float in [0, 1].
    loc: mean of the liquid layer's Gaussian noise.
    scale: standard deviation of the liquid layer's Gaussian noise.
    sigma: blur of the liquid layer, in pixels; static.
    threshold: layer values below it hold no liquid.
    strength: blur of the mud mask, in pixels; static.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  h, w, _ = img.shape
  liquid = _liquid(key, h, w, loc, scale, sigma, threshold)
  return _mud(img, liquid, threshold, strength, 63 / 255)


# --------------------------------------------------------------- digital


def elastic_transform(key, img, alpha, sigma, affine):
  """A random affine warp, then a smooth random displacement field.

  The affine moves three points by U(-affine, affine) pixels (reflect-101 border); the field is uniform noise blurred by
  ``sigma``, times ``alpha`` (symmetric border). Parameters are the published fractions of the image side (32 for
  CIFAR-10).

  Args:
    key: PRNG key of this image (draws the affine and the field).
    img: one image (H, W, C), float in [0, 1].
    alpha: displacement scale, as a fraction of min(H, W).
    sigma: blur of the displacement noise, as a fraction of min(H, W); static (0 = no blur).
    affine: largest shift of the affine's points, as a fraction of min(H, W).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  h, w, _ = img.shape
  size = min(h, w)
  alpha, sigma, affine = alpha * size, sigma * size, affine * size
  k_aff, k_dx, k_dy = jax.random.split(key, 3)
  cs = np.array([h // 2, w // 2], np.float32)
  sq = size // 3
  src = np.array([cs + sq, [cs[0] + sq, cs[1] - sq], cs - sq], np.float32)  # (x, y) points
  dst = src + jax.random.uniform(k_aff, src.shape, minval=-affine, maxval=affine)
  # warpAffine maps src -> dst; the output samples the input at the inverse
  a = jnp.concatenate([dst, jnp.ones((3, 1))], axis=1)
  inv = jnp.linalg.solve(a, jnp.asarray(src)).T  # (2, 3): (x, y, 1) in dst -> src
  x = _ops.warp_affine_inverse(img, inv, "reflect")

  def field(k):
    u = jax.random.uniform(k, (h, w, 1), minval=-1.0, maxval=1.0)
    if sigma > 0:
      u = _ops.gaussian(u, sigma, mode="symmetric", truncate=3.0)
    return u[..., 0] * alpha

  rr, cc = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  return _ops.bilinear(x, rr + field(k_dy), cc + field(k_dx), "symmetric")


def pixelate(key, img, c):
  """Box-downsample to ``int(side * c)`` pixels and box-upsample back (PIL's BOX filter, in float).

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    c: fraction of each side kept, in (0, 1]; static.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  h, w = img.shape[:2]
  hs, ws = max(1, int(h * c)), max(1, int(w * c))
  small = _ops.apply_separable(img, _ops.box_resize_matrix(h, hs), _ops.box_resize_matrix(w, ws))
  return _ops.apply_separable(small, _ops.box_resize_matrix(hs, h), _ops.box_resize_matrix(ws, w))


def _jpeg_host(images, quality):
  from PIL import Image

  images = np.asarray(images)
  flat = images.reshape((-1,) + images.shape[-3:])
  out = np.empty_like(flat)
  for i, im in enumerate(flat):
    u8 = np.clip(np.round(im * 255), 0, 255).astype(np.uint8)
    pil = Image.fromarray(u8[..., 0], "L") if u8.shape[-1] == 1 else Image.fromarray(u8, "RGB")
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=int(quality))
    dec = np.asarray(Image.open(buf), np.float32) / 255
    out[i] = dec.reshape(im.shape)
  return out.reshape(images.shape)


def jpeg_compression(key, img, quality):
  """JPEG encode/decode at ``quality`` with Pillow's codec.

  Not expressible in JAX: it runs on the host through ``jax.pure_callback`` (so it still composes with jit and vmap, but
  not with grad, and costs a host round trip); the image is rounded to 8 bits first, as JPEG needs.

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    quality: Pillow JPEG quality (1..95, lower = stronger artifacts); static int.

  Returns:
    The decoded image (H, W, C), float32 in [0, 1] (multiples of 1/255).
  """
  del key
  return jax.pure_callback(
      functools.partial(_jpeg_host, quality=quality),
      jax.ShapeDtypeStruct(img.shape, jnp.float32),
      img,
      vmap_method="broadcast_all",
  )


# ------------------------------------------------- MNIST-C geometric / lines


def _about_centre(h, w, a):
  """Affine (2x3) with linear part ``a`` that keeps the image centre fixed."""
  cx, cy = (w - 1) / 2, (h - 1) / 2
  t = jnp.array([cx, cy]) - a @ jnp.array([cx, cy])
  return jnp.concatenate([a, t[:, None]], axis=1)


def _random_sign(key):
  return jnp.where(jax.random.bernoulli(key), 1.0, -1.0)


def shear(key, img, c):
  """Shear by c (random direction) about the centre.

  Inverse map [[1, -sin c], [0, cos c]] (skimage's AffineTransform(shear=c) as MNIST-C used it), bilinear, zeros
  outside.

  Args:
    key: PRNG key of this image (draws the direction).
    img: one image (H, W, C), float in [0, 1].
    c: shear angle, in radians.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  c = c * _random_sign(key)
  a = jnp.array([[1.0, -jnp.sin(c)], [0.0, jnp.cos(c)]])
  return _ops.warp_affine_inverse(img, _about_centre(*img.shape[:2], a))


def rotate(key, img, c):
  """Rotation by c radians (random direction) about the centre.

  Args:
    key: PRNG key of this image (draws the direction).
    img: one image (H, W, C), float in [0, 1].
    c: rotation angle, in radians.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  c = c * _random_sign(key)
  a = jnp.array([[jnp.cos(c), -jnp.sin(c)], [jnp.sin(c), jnp.cos(c)]])
  return _ops.warp_affine_inverse(img, _about_centre(*img.shape[:2], a))


def scale(key, img, c):
  """Shrink about the centre: inverse map scales coordinates by c > 1.

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    c: inverse scale factor (> 1: the image shrinks by 1 / c; zeros come in).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  return _ops.warp_affine_inverse(img, _about_centre(*img.shape[:2], jnp.array([[c, 0.0], [0.0, c]])))


NATURAL_PARAMS = ("brightness", "contrast", "rotate", "shear", "scale", "blur")


def natural(img, params):
  """A continuous, differentiable natural perturbation: one affine warp, a blur, contrast and brightness.

  Every parameter is 0 for the identity, and the result is differentiable in
  all of them (the disagreement search takes their gradient):
  ``rotate`` (radians) and ``shear`` (radians, as :func:`shear`) and ``scale``
  (the image grows by ``1 + scale``) make one inverse map about the centre,
  sampled once (bilinear, zeros outside); ``blur`` in [0, 1] mixes the image
  with its Gaussian blur (sigma 1, edge border); ``contrast`` multiplies the
  deviation from the image mean by ``1 + contrast``; ``brightness`` is added.

  Args:
    img: one image (H, W, C), float in [0, 1].
    params: float ``[6]`` in the order of ``NATURAL_PARAMS``.

  Returns:
    The perturbed image (H, W, C), clipped to [0, 1].
  """
  b, c, r, s, z, t = (params[i] for i in range(len(NATURAL_PARAMS)))
  rot = jnp.array([[jnp.cos(r), -jnp.sin(r)], [jnp.sin(r), jnp.cos(r)]])
  a = rot @ jnp.array([[1.0, -jnp.sin(s)], [0.0, jnp.cos(s)]]) / (1.0 + z)
  x = _ops.warp_affine_inverse(img, _about_centre(*img.shape[:2], a))
  x = (1.0 - t) * x + t * _ops.gaussian(x, 1.0)
  mean = jnp.mean(x, keepdims=True)
  return jnp.clip((x - mean) * (1.0 + c) + mean + b, 0.0, 1.0)


def translate(key, img, c):
  """Shift by c pixels along each axis (random signs), zeros come in.

  Args:
    key: PRNG key of this image (draws the two signs).
    img: one image (H, W, C), float in [0, 1].
    c: shift along each axis, in pixels.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  s = jnp.where(jax.random.bernoulli(key, 0.5, (2,)), 1.0, -1.0) * c
  m = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).at[:, 2].set(s)
  return _ops.warp_affine_inverse(img, m)


def stripe(key, img, frac):
  """Inverts the ``round(frac * W)`` leftmost and rightmost columns (at least one each).

  MNIST-C (one setting) inverts 7 of 28 on each side: severity 3 here.

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    frac: fraction of the width inverted on each side.

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  w = img.shape[1]
  k = jnp.maximum(1, jnp.round(frac * w))
  cols = jnp.arange(w)
  band = ((cols < k) | (cols >= w - k))[None, :, None]
  return jnp.where(band, 1.0 - img, img)


def dotted_line(key, img, n_lines):
  """``n_lines`` dotted strokes across the image (MNIST-C draws 1: severity 1).

  Each goes from column 0 to W-1 between random rows, with every other pair of columns blanked.

  Args:
    key: PRNG key of this image (draws the rows).
    img: one image (H, W, C), float in [0, 1].
    n_lines: number of strokes (static int).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  h, w, c = img.shape
  rows = jax.random.randint(key, (n_lines, 2), 0, h - 1).astype(jnp.float32)
  strokes = jax.vmap(lambda r: _ops.line_from_points((h, w), 0.0, r[0], float(w - 1), r[1]))(rows)
  dots = jnp.asarray((np.arange(w) // 2) % 2 == 1, jnp.float32)[None, None, :]
  return img + _to_channels(jnp.sum(strokes * dots, axis=0), c)


def _zigzag_layer(key, h, w, a=2.0, b=2.0):
  c0, c1 = 2.0, float(w - 3)
  k_r0, k_dr = jax.random.split(key)
  r0 = jax.random.randint(k_r0, (), 0, h - 1).astype(jnp.float32)
  r1 = r0 + jax.random.randint(k_dr, (), -5, 5).astype(jnp.float32)
  theta = jnp.arctan((r1 - r0) / (c1 - c0))
  d = (c1 - c0) / jnp.cos(theta)
  d_max = math.hypot(c1 - c0, 5.0)
  k_max = int((d_max - a) // (2 * a)) + 1
  n = jnp.floor((d - a) / (2 * a)).astype(jnp.int32) + 1  # zig points
  k = np.arange(k_max)
  zig_c = jnp.asarray((2 * k + 1) * a, jnp.float32)
  zig_r = jnp.asarray(((-1.0) ** k) * b, jnp.float32)
  pts_c = jnp.concatenate([jnp.zeros(1), zig_c])
  pts_r = jnp.concatenate([jnp.zeros(1), zig_r])
  max_c = 2 * a * jnp.floor(d / (2 * a))
  last_r = pts_r[n]
  end_c = d
  end_r = last_r / (2 * jnp.where(d != max_c, d - max_c, 1.0))
  rot = lambda cc, rr: (
      cc * jnp.cos(theta) - rr * jnp.sin(theta) + c0,  # noqa: E731
      cc * jnp.sin(theta) + rr * jnp.cos(theta) + r0,
  )
  pc, pr = rot(pts_c, pts_r)
  ec, er = rot(end_c, end_r)
  seg = jax.vmap(lambda a0, b0, a1, b1: _ops.line_from_points((h, w), a0, b0, a1, b1))(pc[:-1], pr[:-1], pc[1:], pr[1:])
  seg = jnp.where((jnp.arange(k_max) < n)[:, None, None], seg, 0.0)
  last = _ops.line_from_points((h, w), pc[n], pr[n], ec, er) * (d != max_c)
  return jnp.sum(seg, axis=0) + last


def zigzag(key, img, n_lines):
  """``n_lines`` zigzag strokes (MNIST-C draws 1: severity 1).

  Arms of length 2 and amplitude 2 along a line from column 2 to W-3 with a random start row and a slope of at most 5
  rows.

  Args:
    key: PRNG key of this image (draws the lines).
    img: one image (H, W, C), float in [0, 1].
    n_lines: number of strokes (static int).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  h, w, c = img.shape
  layers = jax.vmap(lambda k: _zigzag_layer(k, h, w))(jax.random.split(key, n_lines))
  return img + _to_channels(jnp.sum(layers, axis=0), c)


def canny_edges(key, img, alpha):
  """The Canny edge map of the image's gray level, blended as (1 - alpha) x + alpha edges.

  skimage defaults: sigma 1, thresholds 0.1 / 0.2. MNIST-C (one setting) replaces the image by its edges: severity 5
  here.

  Args:
    key: unused (the corruption is deterministic).
    img: one image (H, W, C), float in [0, 1].
    alpha: weight of the 0/1 edge map, in [0, 1] (1 = edges only).

  Returns:
    The corrupted image (H, W, C), not yet clipped (the suite wrapper clips to [0, 1]).
  """
  del key
  edges = _ops.canny(_luma_or_self(img)[..., 0])
  return (1 - alpha) * img + alpha * _to_channels(edges, img.shape[-1])


# ------------------------------------------------------------------ suites

_CIFAR_ZOOMS = tuple(tuple(np.arange(1, hi, 0.01).tolist()) for hi in (1.06, 1.11, 1.16, 1.21, 1.26))

CIFAR10_C: dict[str, Corruption] = {
    "gaussian_noise": _batched(gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10), dynamic=True),
    "shot_noise": _batched(shot_noise, (500.0, 250.0, 100.0, 75.0, 50.0), dynamic=True),
    "impulse_noise": _batched(impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07), dynamic=True),
    "speckle_noise": _batched(speckle_noise, (0.06, 0.1, 0.12, 0.16, 0.2), dynamic=True),
    "defocus_blur": _batched(defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "glass_blur": _batched(glass_blur_cifar, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))),
    "motion_blur": _batched(motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "zoom_blur": _batched(zoom_blur, tuple((z,) for z in _CIFAR_ZOOMS)),
    "gaussian_blur": _batched(gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
    "snow": _batched(
        snow,
        (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
    ),
    "frost": _batched(frost, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)), dynamic=True),
    "fog": _batched(fog_cifar, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)), dynamic=True),
    "spatter": _batched(
        spatter_cifar,
        (
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ),
    ),
    "brightness": _batched(brightness, (0.05, 0.1, 0.15, 0.2, 0.3), dynamic=True),
    "contrast": _batched(contrast, (0.75, 0.5, 0.4, 0.3, 0.15), dynamic=True),
    "saturate": _batched(saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)), dynamic=True),
    "elastic_transform": _batched(
        elastic_transform, ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
    ),
    "pixelate": _batched(pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": _batched(jpeg_compression, (80, 65, 58, 50, 40)),
}

MNIST_C: dict[str, Corruption] = {
    "shot_noise": _batched(shot_noise_small, (60.0, 25.0, 12.0, 5.0, 3.0), dynamic=True, block=64),
    "impulse_noise": _batched(impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27), dynamic=True),
    "glass_blur": _batched(glass_blur_mnist, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))),
    "motion_blur": _batched(motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), block=8),
    "shear": _batched(shear, (0.2, 0.4, 0.6, 0.8, 1.0), dynamic=True),
    "scale": _batched(scale, tuple(1 / s for s in (0.9, 0.8, 0.7, 0.6, 0.5)), dynamic=True),
    "rotate": _batched(rotate, (0.2, 0.4, 0.6, 0.8, 1.0), dynamic=True),
    "brightness": _batched(brightness, (0.1, 0.2, 0.3, 0.4, 0.5), dynamic=True),
    "translate": _batched(translate, (1.0, 2.0, 3.0, 4.0, 5.0), dynamic=True),
    "stripe": _batched(stripe, (2 / 28, 4 / 28, 7 / 28, 9 / 28, 11 / 28), dynamic=True),
    "fog": _batched(fog_mnist, ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), dynamic=True, block=32),
    "spatter": _batched(
        spatter_mnist,
        (
            (0.65, 0.3, 4, 0.69, 0.6),
            (0.65, 0.3, 3, 0.68, 0.6),
            (0.65, 0.3, 2, 0.68, 0.5),
            (0.65, 0.3, 1, 0.65, 1.5),
            (0.67, 0.4, 1, 0.65, 1.5),
        ),
    ),
    "dotted_line": _batched(dotted_line, (1, 2, 3, 4, 5)),
    "zigzag": _batched(zigzag, (1, 2, 3, 4, 5), block=32),
    "canny_edges": _batched(canny_edges, (0.2, 0.4, 0.6, 0.8, 1.0), dynamic=True),
}

# The severity the published MNIST-C dataset uses for each corruption.
MNIST_C_OFFICIAL = {
    "shot_noise": 5,
    "impulse_noise": 4,
    "glass_blur": 1,
    "motion_blur": 1,
    "shear": 2,
    "scale": 3,
    "rotate": 2,
    "brightness": 5,
    "translate": 3,
    "stripe": 3,
    "fog": 5,
    "spatter": 4,
    "dotted_line": 1,
    "zigzag": 1,
    "canny_edges": 5,
}

SUITES: dict[str, dict[str, Corruption]] = {"mnist_c": MNIST_C, "cifar10_c": CIFAR10_C}

# Images processed per compiled call in ``corrupt`` (bounds memory: MNIST-C's
# fog builds a 256x256 fractal per image).
CHUNK = 1000


def check(suite: str, name: str, images_shape, severity) -> None:
  """Raises ``ValueError`` unless the suite, corruption, severity and image shape are valid.

  Args:
    suite: 'mnist_c' or 'cifar10_c' (a key of ``SUITES``).
    name: a corruption of that suite.
    images_shape: shape of the image batch.
    severity: Python or numpy int in 1..5.

  Raises:
    ValueError: for an unknown suite or corruption, a severity outside 1..5 (bools included), or images that are not
      (N, H, W, 1|3) with H, W >= 16.
  """
  if suite not in SUITES:
    raise ValueError(f"suite={suite!r} is not valid; choose one of {sorted(SUITES)}")
  if name not in SUITES[suite]:
    raise ValueError(f"corruption={name!r} is not valid for suite {suite!r}; choose one of {sorted(SUITES[suite])}")
  if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
    raise ValueError(f"severity={severity!r} is not valid; choose one of {list(SEVERITIES)}")
  shape = tuple(images_shape)
  if len(shape) != 4 or shape[-1] not in (1, 3) or min(shape[1:3]) < MIN_SIZE:
    raise ValueError(
        f"images of shape {shape} are not supported; expected (N, H, W, C) with C = 1 (gray) or"
        f" 3 (RGB), H and W >= {MIN_SIZE}, values in [0, 1]"
    )


def corrupt(
    suite: str, name: str, key: jax.Array, images, severity: int, *, chunk: int = CHUNK, offset: int = 0
) -> jax.Array:
  """Applies corruption ``name`` of ``suite`` at ``severity`` (validated first).

  Compiled once per (suite, name, severity, chunk shape), ``chunk`` images at a time; equal to
  ``SUITES[suite][name](key, images, severity)``.

  Args:
    suite: 'mnist_c' or 'cifar10_c'.
    name: a corruption of that suite.
    key: PRNG key of the whole set.
    images: (N, H, W, C) with C = 1 or 3 and H, W >= 16, values in [0, 1] (any array-like).
    severity: int in 1..5.
    chunk: images per compiled call (bounds memory; the last chunk is zero-padded).
    offset: int >= 0, the index of ``images[0]`` in the whole set (image i draws from ``fold_in(key, offset + i)``),
      so a block corrupted alone equals the same images of the whole set corrupted at once.

  Returns:
    The corrupted images, float32 (N, H, W, C) in [0, 1].

  Raises:
    ValueError: for an invalid suite, corruption, severity or image shape (see ``check``), or an offset that is not
      an int >= 0.
  """
  check(suite, name, np.shape(images), severity)
  if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
    raise ValueError(f"offset={offset!r} is not valid; give an int >= 0")
  images = jnp.asarray(images, jnp.float32)
  corruption = SUITES[suite][name]
  params = corruption.params_for(int(severity))
  fn = _jitted(suite, name, None if corruption.dynamic else params)
  n = images.shape[0]
  if n <= chunk:
    return fn(key, images, params, offset)
  outs = []
  for start in range(0, n, chunk):
    part = images[start : start + chunk]
    pad = chunk - part.shape[0]
    if pad:  # pad the last chunk so every call has the same shape
      part = jnp.concatenate([part, jnp.zeros((pad,) + part.shape[1:], part.dtype)])
    outs.append(fn(key, part, params, offset + start)[: chunk - pad])
  return jnp.concatenate(outs)


@functools.lru_cache(maxsize=None)
def _jitted(suite: str, name: str, static_params):
  """One compiled program per corruption (dynamic parameters are arguments)
  or per (corruption, severity) (static ones are baked in)."""
  apply = SUITES[suite][name].apply
  if static_params is None:
    return jax.jit(apply)
  return jax.jit(lambda k, x, _, offset: apply(k, x, static_params, offset))
