"""Image corruptions: the contract (shape, dtype, range, determinism, not the
identity, severity ordering, jit == vmap == eager, chunking), the building
blocks against scipy / skimage / Pillow, and bad input."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsim.shifts import SUITES, _ops, corrupt, image

KEY = jax.random.key(0)
N = 8


def _smooth(key, shape, sigma):
  u = jax.vmap(lambda x: _ops.gaussian(x, sigma))(jax.random.normal(key, shape))
  return (u - u.mean()) / u.std()


_K = jax.random.split(jax.random.key(7), 3)
# digit-like gray images (bright strokes on black in the centre) and smooth
# natural-looking RGB images
_CENTRE = jnp.abs(jnp.arange(28) - 13.5)
GRAY = (
    jnp.clip(_smooth(_K[0], (N, 28, 28, 1), 1.5) * 0.8 + 0.1, 0, 1)
    * ((_CENTRE[:, None] < 9) & (_CENTRE[None, :] < 7))[None, :, :, None]
)
RGB = jnp.clip(_smooth(_K[1], (N, 32, 32, 3), 3.0) * 0.2 + 0.45 + 0.15 * _smooth(_K[2], (N, 32, 32, 1), 1.0), 0, 1)

# Published severity tables whose pixel distance from the clean image is not
# monotone in severity on the suite's own kind of image; all others must be.
NOT_MONOTONE = {
    ("cifar10_c", "saturate"),  # severity 3 (saturation x1.5) is milder than 1-2 (x0.3, x0.1)
    ("cifar10_c", "spatter"),  # 1-3 add water over wide areas, 4-5 opaque mud in few blobs
    ("mnist_c", "spatter"),  # 4-5 switch to a lower threshold but a wider mask blur
    ("cifar10_c", "glass_blur"),  # severity 4 repeats 2's blur with two swap passes
    ("cifar10_c", "frost"),  # the image's weight falls (1 -> .75) as the frost's rises (.2 -> .45)
    ("cifar10_c", "elastic_transform"),  # the affine part shrinks (8% -> 3%) as the elastic one grows
    ("cifar10_c", "motion_blur"),  # 3 and 4 differ only in radius (6 -> 8) at sigma 2: a < 0.3% tail
    ("mnist_c", "motion_blur"),  # 4 and 5 both smear across the whole 28-pixel image
    ("mnist_c", "fog"),  # 3 and 4 differ only in the fractal's roughness (decay 1.7 -> 1.5)
}

CASES = [(s, n) for s in sorted(SUITES) for n in sorted(SUITES[s])]
IDS = [f"{s}-{n}" for s, n in CASES]
NATIVE = {"mnist_c": GRAY, "cifar10_c": RGB}
OTHER = {"mnist_c": RGB, "cifar10_c": GRAY}
RANDOM = {
    "shot_noise",
    "impulse_noise",
    "gaussian_noise",
    "speckle_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "rotate",
    "translate",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "snow",
    "frost",
    "elastic_transform",
}


def _check_outputs(suite, name, images, severities):
  outs = []
  for s in severities:
    out = corrupt(suite, name, KEY, images, s)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    per_image = np.asarray(jnp.mean(jnp.abs(out - images), axis=(1, 2, 3)))
    assert (per_image > 0).all(), f"severity {s} left some images unchanged"
    outs.append(out)
  np.testing.assert_array_equal(out, corrupt(suite, name, KEY, images, severities[-1]))  # same key, same result
  if name in RANDOM:
    assert not np.array_equal(out, corrupt(suite, name, jax.random.key(1), images, severities[-1]))
  for a, b in zip(outs, outs[1:]):
    assert not np.array_equal(a, b)  # every severity is a different corruption
  return [float(jnp.mean(jnp.abs(o - images))) for o in outs]


@pytest.mark.parametrize("suite,name", CASES, ids=IDS)
def test_contract_on_native_images(suite, name):
  """All five severities on the suite's own images (28x28 gray for MNIST-C,
  32x32 RGB for CIFAR-10-C): distance from the clean images grows."""
  dists = _check_outputs(suite, name, NATIVE[suite], image.SEVERITIES)
  if (suite, name) not in NOT_MONOTONE:
    assert all(b >= a for a, b in zip(dists, dists[1:])), dists


@pytest.mark.parametrize("suite,name", CASES, ids=IDS)
def test_contract_on_other_images(suite, name):
  """Every corruption also takes the other kind of image."""
  dists = _check_outputs(suite, name, OTHER[suite], (1, 5))
  if (suite, name) not in NOT_MONOTONE | {("mnist_c", "rotate"), ("cifar10_c", "pixelate")}:
    assert dists[1] > dists[0], dists


@pytest.mark.parametrize("suite,name", CASES, ids=IDS)
def test_jit_vmap_chunks_equal_eager(suite, name):
  fn = SUITES[suite][name]
  images = NATIVE[suite]  # the shape the contract test compiled
  eager = fn(KEY, images, 2)
  np.testing.assert_allclose(corrupt(suite, name, KEY, images, 2), eager, atol=2e-5)
  # image i of a batch is image i corrupted alone with fold_in(key, i): vmap
  # over single images (offset i) gives the eager batch result
  vmapped = jax.jit(jax.vmap(lambda i, x: fn(KEY, x[None], 2, i)[0]))(jnp.arange(N), images)
  np.testing.assert_allclose(vmapped, eager, atol=2e-5)
  # so chunking a dataset changes no image
  np.testing.assert_allclose(corrupt(suite, name, KEY, images, 2, chunk=3), eager, atol=2e-5)


def test_every_published_corruption_is_there():
  assert sorted(image.MNIST_C) == sorted(
      "shot_noise impulse_noise glass_blur motion_blur shear scale rotate brightness translate stripe fog"
      " spatter dotted_line zigzag canny_edges".split()
  )
  assert sorted(image.CIFAR10_C) == sorted(
      "gaussian_noise shot_noise impulse_noise speckle_noise defocus_blur glass_blur motion_blur zoom_blur"
      " gaussian_blur snow frost fog spatter brightness contrast saturate elastic_transform pixelate"
      " jpeg_compression".split()
  )
  assert set(image.MNIST_C_OFFICIAL) == set(image.MNIST_C)


def test_bad_input_errors():
  with pytest.raises(ValueError, match=r"suite='imagenet_c' is not valid; choose one of \['cifar10_c', 'mnist_c'\]"):
    corrupt("imagenet_c", "fog", KEY, GRAY, 1)
  with pytest.raises(ValueError, match=r"corruption='blurr' is not valid for suite 'mnist_c'; choose one of"):
    corrupt("mnist_c", "blurr", KEY, GRAY, 1)
  with pytest.raises(ValueError, match=r"corruption='snow' is not valid for suite 'mnist_c'"):
    corrupt("mnist_c", "snow", KEY, GRAY, 1)
  for s in (0, 6, 2.5, True, "3"):
    with pytest.raises(ValueError, match=r"severity=.* is not valid; choose one of \[1, 2, 3, 4, 5\]"):
      corrupt("cifar10_c", "contrast", KEY, GRAY, s)
  with pytest.raises(ValueError, match=r"shape \(28, 28\) are not supported; expected \(N, H, W, C\)"):
    corrupt("cifar10_c", "contrast", KEY, GRAY[0, ..., 0], 1)
  with pytest.raises(ValueError, match="C = 1"):
    corrupt("cifar10_c", "contrast", KEY, jnp.zeros((2, 28, 28, 4)), 1)
  with pytest.raises(ValueError, match="H and W >= 16"):
    corrupt("cifar10_c", "contrast", KEY, jnp.zeros((2, 8, 8, 1)), 1)


# ------------------------------------------------- building blocks vs references


def test_gaussian_blur_matches_scipy():
  from scipy import ndimage

  for severity, sigma in [(1, 0.4), (3, 0.7), (5, 1.0)]:
    out = corrupt("cifar10_c", "gaussian_blur", KEY, RGB, severity)
    ref = ndimage.gaussian_filter(np.asarray(RGB, np.float64), sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-5)


def test_clipped_zoom_matches_scipy_zoom():
  from scipy import ndimage

  img = np.asarray(RGB[0])
  for z in (1.06, 1.25, 1.75, 2.25):
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    ref = ndimage.zoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
    trim = (ref.shape[0] - h) // 2
    ref = ref[trim : trim + h, trim : trim + h]
    m = _ops.clipped_zoom_matrix(h, z)
    np.testing.assert_allclose(_ops.apply_separable(jnp.asarray(img), m, m), ref, atol=1e-5)


def test_box_resize_matches_pillow():
  from PIL import Image

  img = np.asarray(GRAY[0, ..., 0])
  for n in (26, 21, 18):
    small = np.asarray(Image.fromarray(img, "F").resize((n, n), Image.BOX))
    back = np.asarray(Image.fromarray(small, "F").resize((28, 28), Image.BOX))
    ours_small = _ops.apply_separable(
        jnp.asarray(img)[..., None], _ops.box_resize_matrix(28, n), _ops.box_resize_matrix(28, n)
    )
    ours = _ops.apply_separable(ours_small, _ops.box_resize_matrix(n, 28), _ops.box_resize_matrix(n, 28))
    np.testing.assert_allclose(ours_small[..., 0], small, atol=1e-5)
    np.testing.assert_allclose(ours[..., 0], back, atol=1e-5)


@pytest.mark.parametrize("mode,scipy_mode", [("edge", "nearest"), ("reflect", "mirror"), ("symmetric", "reflect")])
def test_bilinear_matches_scipy_map_coordinates(mode, scipy_mode):
  from scipy import ndimage

  img = np.asarray(GRAY[1, ..., 0])
  rng = np.random.default_rng(0)
  rows, cols = rng.uniform(-6, 34, (2, 50, 50)).astype(np.float32)
  ours = _ops.bilinear(jnp.asarray(img)[..., None], jnp.asarray(rows), jnp.asarray(cols), mode)[..., 0]
  ref = ndimage.map_coordinates(img, [rows, cols], order=1, mode=scipy_mode)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_affine_warps_match_skimage():
  from skimage import transform

  img = np.asarray(GRAY[2, ..., 0], np.float64)
  c = 0.6
  a = np.array([[np.cos(c), -np.sin(c)], [np.sin(c), np.cos(c)]])
  t = np.array([13.5, 13.5]) - a @ np.array([13.5, 13.5])
  matrix = np.vstack([np.hstack([a, t[:, None]]), [0, 0, 1]])
  ref = transform.warp(img, transform.AffineTransform(matrix=matrix), order=1, mode="constant")
  ours = _ops.warp_affine_inverse(jnp.asarray(img, jnp.float32)[..., None], jnp.asarray(matrix[:2], jnp.float32))
  np.testing.assert_allclose(ours[..., 0], ref, atol=1e-5)
  # rotate at severity 3 is this warp, in one of the two directions
  out = np.asarray(image.rotate(jax.random.key(3), jnp.asarray(img, jnp.float32)[..., None], c))[..., 0]
  mirrored = transform.warp(img, transform.AffineTransform(matrix=np.linalg.inv(matrix)), order=1, mode="constant")
  assert np.allclose(out, ref, atol=1e-5) or np.allclose(out, mirrored, atol=1e-5)


def test_hsv_round_trip_matches_skimage():
  from skimage import color

  img = np.asarray(RGB[0], np.float64)
  hsv = _ops.rgb_to_hsv(jnp.asarray(img, jnp.float32))
  np.testing.assert_allclose(hsv, color.rgb2hsv(img), atol=1e-5)
  np.testing.assert_allclose(_ops.hsv_to_rgb(hsv), img, atol=1e-5)
  ref = color.rgb2hsv(img)
  ref[..., 1] = np.clip(ref[..., 1] * 2 + 0.1, 0, 1)
  out = corrupt("cifar10_c", "saturate", KEY, RGB[:1], 4)[0]
  np.testing.assert_allclose(out, np.clip(color.hsv2rgb(ref), 0, 1), atol=1e-5)


def test_canny_agrees_with_skimage():
  from skimage import feature

  agree = []
  for i in range(N):
    img = np.asarray(GRAY[i, ..., 0], np.float64)
    ref = feature.canny(img)
    ours = np.asarray(_ops.canny(jnp.asarray(img, jnp.float32))) > 0.5
    agree.append((ours == ref).mean())
    assert ref.sum() > 10  # the images have edges to find
  assert min(agree) >= 0.995, agree


def test_jpeg_is_pillows_codec():
  from PIL import Image

  out = corrupt("cifar10_c", "jpeg_compression", KEY, RGB[:2], 5)
  for i in range(2):
    buf = io.BytesIO()
    Image.fromarray(np.round(np.asarray(RGB[i]) * 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=40)
    np.testing.assert_allclose(out[i], np.asarray(Image.open(buf), np.float32) / 255, atol=1e-6)


def test_motion_blur_impulse_response_is_one_sided_gaussian():
  img = jnp.zeros((17, 17, 1)).at[8, 8, 0].set(1.0)
  out = np.asarray(_ops.motion_blur(img, 3, 1.5, 0.0))[..., 0]
  w = np.exp(-(np.arange(7) ** 2) / (2 * 1.5**2))
  # output x takes input x + i: the trail runs to the left of the point
  np.testing.assert_allclose(out[8, 2:9][::-1], w / w.sum(), rtol=1e-5)
  assert out.sum() == pytest.approx(1.0, rel=1e-5) and out[:8].sum() == 0 and out[9:].sum() == 0


def test_plasma_fractal_is_normalised_and_seeded():
  a = _ops.plasma_fractal(jax.random.key(0), 64, 2.0)
  assert a.shape == (64, 64) and float(a.min()) == 0.0 and float(a.max()) == 1.0
  np.testing.assert_array_equal(a, _ops.plasma_fractal(jax.random.key(0), 64, 2.0))
  assert not np.allclose(a, _ops.plasma_fractal(jax.random.key(1), 64, 2.0))
  # larger decay = smoother map (less energy in pixel-to-pixel differences)
  rough = _ops.plasma_fractal(jax.random.key(0), 64, 1.4)
  assert float(jnp.abs(jnp.diff(a, axis=0)).mean()) < float(jnp.abs(jnp.diff(rough, axis=0)).mean())
  with pytest.raises(ValueError, match="mapsize=48 is not valid"):
    _ops.plasma_fractal(jax.random.key(0), 48, 2.0)


def test_mnist_c_lines_and_stripes():
  x = jnp.zeros((1, 28, 28, 1))
  stripe = corrupt("mnist_c", "stripe", KEY, x, 3)[0, ..., 0]
  assert (stripe[:, :7] == 1).all() and (stripe[:, 21:] == 1).all() and (stripe[:, 7:21] == 0).all()
  dotted = corrupt("mnist_c", "dotted_line", KEY, x, 1)[0, ..., 0]
  cols = np.asarray(dotted.max(axis=0) > 0)
  assert not cols[[0, 1, 4, 5]].any() and cols[[2, 3, 6, 7]].all()  # every other pair of columns
  for s in (1, 5):
    zz = corrupt("mnist_c", "zigzag", KEY, x, s)[0, ..., 0]
    lit = np.asarray(zz.max(axis=0) > 0)
    assert lit[3:24].all() and not lit[:2].any() and not lit[26:].any()  # columns 2 .. 25


@pytest.mark.parametrize("lam", [0.3, 3.0, 40.0, 60.0])
def test_inverse_cdf_poisson_has_the_poisson_law(lam):
  from scipy import stats

  c = jnp.float32(60.0)
  kmax = jnp.ceil(c + 10 * jnp.sqrt(c) + 10).astype(jnp.int32)
  draws = np.asarray(jax.jit(image._poisson_inverse_cdf)(jax.random.key(0), jnp.full((200_000,), lam), kmax))
  assert (draws == np.round(draws)).all()
  k = np.arange(int(lam + 12 * np.sqrt(lam) + 12))
  emp = np.bincount(draws.astype(int), minlength=len(k))[: len(k)] / len(draws)
  assert 0.5 * np.abs(emp - stats.poisson.pmf(k, lam)).sum() < 0.01  # total variation
  assert abs(draws.mean() - lam) < 4 * np.sqrt(lam / len(draws)) + 1e-9


def test_glass_blur_swap_chain_is_the_reference_loop():
  """The batch-level swap chain equals MNIST-C's pixel loop (bottom-right to
  top-left, swap with the pixel at (dy, dx) when the coin says so), run in
  numpy on the same draws."""
  sigma, delta, iterations = 0.7, 2, 2
  images = np.asarray(GRAY[:3])
  out = np.asarray(
      image.glass_blur_mnist(
          jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(3)), jnp.asarray(images), sigma, delta, iterations
      )
  )
  rows = range(28 - delta, delta, -1)
  steps = len(rows) ** 2 * iterations
  for i in range(3):
    u = np.asarray(_ops.hash_uniform(jax.random.fold_in(KEY, i), 3 * steps)).reshape(steps, 3)
    x = np.asarray(_ops.gaussian(jnp.asarray(images[i]), sigma))[..., 0].copy()
    t = 0
    for _ in range(iterations):
      for h in rows:
        for w in rows:
          dy, dx = (np.floor(u[t, :2] * 2 * delta) - delta).astype(int)
          if u[t, 2] < 0.5:
            x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
          t += 1
    ref = np.asarray(_ops.gaussian(jnp.asarray(x[..., None]), sigma))
    np.testing.assert_allclose(out[i], ref, atol=1e-6)


def test_motion_blur_equals_the_gather_of_every_tap():
  rng = np.random.default_rng(0)
  img = rng.random((28, 20, 2)).astype(np.float32)
  radius, sigma = 6, 2.5
  i = np.arange(2 * radius + 1)
  w = np.exp(-(i**2) / (2 * sigma**2))
  for angle in (-44.0, -7.3, 0.0, 31.0, -120.0):  # snow's directions reach -135
    a = np.deg2rad(np.float32(angle))
    dy = np.ceil(i * np.sin(a) - 0.5).astype(int)
    dx = np.ceil(i * np.cos(a) - 0.5).astype(int)
    rows = np.clip(np.arange(28)[None] + dy[:, None], 0, 27)
    cols = np.clip(np.arange(20)[None] + dx[:, None], 0, 19)
    ref = np.tensordot(w / w.sum(), img[rows[:, :, None], cols[:, None, :]], 1)
    np.testing.assert_allclose(_ops.motion_blur(jnp.asarray(img), radius, sigma, angle), ref, atol=1e-5)


def test_plasma_fractal_cut_equals_the_whole_map_cut():
  """The fractal assembles only the cut it returns; its values and its
  normalisation are those of the whole map."""
  whole = _ops.plasma_fractal(jax.random.key(3), 64, 1.7)
  np.testing.assert_allclose(_ops.plasma_fractal(jax.random.key(3), 64, 1.7, (28, 19)), whole[:28, :19], atol=1e-7)
  with pytest.raises(ValueError, match=r"shape=\(65, 3\) is not valid"):
    _ops.plasma_fractal(jax.random.key(0), 64, 2.0, (65, 3))


def test_blocked_corruptions_take_raw_keys():
  """Corruptions run in blocks (fog, motion blur, shot noise) accept an old
  style uint32 key as every other corruption does, with the same result."""
  for name in ("fog", "motion_blur", "shot_noise"):
    np.testing.assert_array_equal(
        corrupt("mnist_c", name, jax.random.PRNGKey(0), GRAY[:3], 2),
        corrupt("mnist_c", name, jax.random.key(0), GRAY[:3], 2),
    )


def test_inverse_cdf_poisson_counts_at_most_kmax_terms():
  lam = jnp.full((4,), 20.0)  # P(X <= 1) ~ 4e-8: nearly every u lies above it, yet only k = 0, 1 count
  draws = image._poisson_inverse_cdf(jax.random.key(0), lam, jnp.int32(1))
  assert int(draws.max()) <= 2
