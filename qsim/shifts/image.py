"""Image corruptions as pure, jit- and vmap-able JAX functions.

Each corruption is ``fn(key, images, severity) -> images``: ``images`` float
in [0, 1] with shape (N, H, W, C) (C = 1 or 3), ``severity`` a Python int in
1..5 (static: it selects the published parameter). Shape, dtype and the
[0, 1] range are preserved; the same key gives the same result.

Parameters follow Hendrycks & Dietterich (2019), the CIFAR-10-C generator.
This module holds the first corruptions of the shift issue (noise,
photometric, Gaussian blur); the rest of the MNIST-C and CIFAR-10-C sets
follow.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

SEVERITIES = (1, 2, 3, 4, 5)

Corruption = Callable[[jax.Array, jax.Array, int], jax.Array]


def gaussian_noise(key, images, severity):
  """Additive N(0, c^2) noise, c in (.04, .06, .08, .09, .10)."""
  c = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
  return jnp.clip(images + c * jax.random.normal(key, images.shape, images.dtype), 0.0, 1.0)


def shot_noise(key, images, severity):
  """Poisson photon noise: Poisson(x * c) / c, c in (500, 250, 100, 75, 50)."""
  c = (500.0, 250.0, 100.0, 75.0, 50.0)[severity - 1]
  noisy = jax.random.poisson(key, images * c, images.shape).astype(images.dtype) / c
  return jnp.clip(noisy, 0.0, 1.0)


def impulse_noise(key, images, severity):
  """Salt-and-pepper noise on a fraction c of the values (half salt, half
  pepper), c in (.01, .02, .03, .05, .07)."""
  c = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
  k_hit, k_salt = jax.random.split(key)
  hit = jax.random.uniform(k_hit, images.shape) < c
  salt = jax.random.uniform(k_salt, images.shape) < 0.5
  return jnp.where(hit, salt.astype(images.dtype), images)


def speckle_noise(key, images, severity):
  """Multiplicative noise x + x * N(0, c^2), c in (.06, .1, .12, .16, .2)."""
  c = (0.06, 0.1, 0.12, 0.16, 0.2)[severity - 1]
  noise = c * jax.random.normal(key, images.shape, images.dtype)
  return jnp.clip(images + images * noise, 0.0, 1.0)


def _rgb_value_shift(images, c):
  # HSV's V is max(R, G, B); adding c to V with hue and saturation kept
  # scales the pixel by (V + c) / V (clipped to 1), which is exact HSV math.
  v = jnp.max(images, axis=-1, keepdims=True)
  new_v = jnp.clip(v + c, 0.0, 1.0)
  scale = jnp.where(v > 0, new_v / jnp.where(v > 0, v, 1.0), 0.0)
  grey_black = jnp.broadcast_to(new_v, images.shape)  # black pixels turn grey
  return jnp.where(v > 0, images * scale, grey_black)


def brightness(key, images, severity):
  """HSV value + c, c in (.05, .1, .15, .2, .3) (gray: x + c), clipped."""
  del key
  c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
  if images.shape[-1] == 1:
    return jnp.clip(images + c, 0.0, 1.0)
  return jnp.clip(_rgb_value_shift(images, c), 0.0, 1.0)


def contrast(key, images, severity):
  """(x - mean) * c + mean per image, c in (.75, .5, .4, .3, .15)."""
  del key
  c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
  mean = jnp.mean(images, axis=(-3, -2, -1), keepdims=True)
  return jnp.clip((images - mean) * c + mean, 0.0, 1.0)


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> jnp.ndarray:
  radius = int(truncate * sigma + 0.5)
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * (t / sigma) ** 2)
  return k / jnp.sum(k)


def _blur_axis(images, kernel, axis):
  """Convolves every channel along ``axis`` (1 = rows, 2 = columns) with
  edge ('nearest') padding, as scipy/skimage do by default."""
  r = (kernel.shape[0] - 1) // 2
  pad = [(0, 0)] * 4
  pad[axis] = (r, r)
  x = jnp.pad(images, pad, mode="edge")
  c = images.shape[-1]
  shape = (kernel.shape[0], 1) if axis == 1 else (1, kernel.shape[0])
  rhs = jnp.tile(kernel.reshape(shape + (1, 1)), (1, 1, 1, c))
  return jax.lax.conv_general_dilated(
      x, rhs, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


def gaussian_blur(key, images, severity):
  """Gaussian blur per channel, sigma in (.4, .6, .7, .8, 1) pixels
  (kernel truncated at 4 sigma, edge padding: skimage's defaults)."""
  del key
  sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]
  k = _gaussian_kernel(sigma)
  return jnp.clip(_blur_axis(_blur_axis(images, k, 1), k, 2), 0.0, 1.0)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "brightness": brightness,
    "contrast": contrast,
    "gaussian_blur": gaussian_blur,
}


def check(name: str, images_shape, severity) -> None:
  """Raises ``ValueError`` for an unknown corruption, a severity outside
  1..5, or images that are not (N, H, W, 1|3)."""
  if name not in CORRUPTIONS:
    raise ValueError(f"corruption={name!r} is not valid; choose one of {sorted(CORRUPTIONS)}")
  if isinstance(severity, bool) or severity not in SEVERITIES:
    raise ValueError(f"severity={severity!r} is not valid; choose one of {list(SEVERITIES)}")
  if len(images_shape) != 4 or images_shape[-1] not in (1, 3):
    raise ValueError(
        f"images of shape {tuple(images_shape)} are not supported; expected (N, H, W, C) with"
        " C = 1 (gray) or 3 (RGB), values in [0, 1]")


def corrupt(name: str, key: jax.Array, images: jax.Array, severity: int) -> jax.Array:
  """Applies corruption ``name`` at ``severity`` (validated first)."""
  check(name, jnp.shape(images), severity)
  return _jitted(name, severity)(key, jnp.asarray(images, jnp.float32))


_CACHE: dict[tuple[str, int], Callable] = {}


def _jitted(name: str, severity: int):
  if (name, severity) not in _CACHE:
    fn = CORRUPTIONS[name]
    _CACHE[(name, severity)] = jax.jit(lambda k, x: fn(k, x, severity))
  return _CACHE[(name, severity)]
