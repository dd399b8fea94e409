"""Image corruptions: determinism, shape/dtype/range, monotone severity,
jit and vmap equal eager, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsim.shifts import CORRUPTIONS, corrupt
from qsim.shifts import image

KEY = jax.random.key(0)
GRAY = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1)) * 0.8 + 0.1
RGB = jax.random.uniform(jax.random.key(2), (6, 32, 32, 3)) * 0.8 + 0.1


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("images", [GRAY, RGB], ids=["gray28", "rgb32"])
def test_corruption_contract(name, images):
  fn = CORRUPTIONS[name]
  dists = []
  for s in image.SEVERITIES:
    out = corrupt(name, KEY, images, s)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(out, corrupt(name, KEY, images, s))  # same key, same result
    assert not np.allclose(out, images)  # never the identity
    eager = fn(KEY, images, s)
    np.testing.assert_allclose(out, eager, atol=1e-6)
    keys = jax.random.split(KEY, 6)
    vmapped = jax.vmap(lambda k, x: fn(k, x[None], s)[0])(keys, images)
    one_by_one = jnp.stack([fn(keys[i], images[i : i + 1], s)[0] for i in range(6)])
    np.testing.assert_allclose(vmapped, one_by_one, atol=1e-6)
    dists.append(float(jnp.mean(jnp.abs(out - images))))
  # distance from the clean images grows with severity (mean over the batch)
  assert all(b >= a for a, b in zip(dists, dists[1:])), dists


def test_bad_input_errors():
  with pytest.raises(ValueError, match=r"corruption='blurr' is not valid; choose one of"):
    corrupt("blurr", KEY, GRAY, 1)
  for s in (0, 6, 2.5, True):
    with pytest.raises(ValueError, match=r"severity=.* is not valid; choose one of \[1, 2, 3, 4, 5\]"):
      corrupt("contrast", KEY, GRAY, s)
  with pytest.raises(ValueError, match=r"shape \(28, 28\) are not supported; expected \(N, H, W, C\)"):
    corrupt("contrast", KEY, GRAY[0, ..., 0], 1)
  with pytest.raises(ValueError, match="C = 1"):
    corrupt("contrast", KEY, jnp.zeros((2, 8, 8, 4)), 1)


def test_rgb_brightness_keeps_hue():
  px = jnp.array([[[[0.2, 0.4, 0.1]]]])
  out = corrupt("brightness", KEY, px, 5)
  # V rises by 0.3 and the channel ratios (hue, saturation) stay
  np.testing.assert_allclose(out.max(), 0.7, rtol=1e-6)
  np.testing.assert_allclose(out / out.max(), px / px.max(), rtol=1e-6)


@pytest.mark.parametrize("severity,sigma", [(1, 0.4), (3, 0.7), (5, 1.0)])
def test_gaussian_blur_matches_scipy(severity, sigma):
  from scipy import ndimage
  out = corrupt("gaussian_blur", KEY, RGB, severity)
  ref = ndimage.gaussian_filter(np.asarray(RGB, np.float64), sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
  np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-5)
