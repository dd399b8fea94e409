"""Disagreement search (qsim.search): every searcher's finds are real
disagreements inside the budget, the operators against scipy, bad input."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from qsim.evaluate.engine import build_quantizers
from qsim.models import get_model
from qsim.quant import preset
from qsim.search import attacks


@pytest.fixture(scope="module")
def pair_and_seeds():
  model = get_model("lenet_tiny", num_classes=10)
  x = np.random.RandomState(0).rand(16, 28, 28, 1).astype(np.float32)
  variables = model.init(jax.random.key(3), x[:1])
  return attacks.Pair(model, variables, preset("w2a2")), x


def _check_finds(pair, x0, res, budget):
  assert res.found.any() and len(res.found) == len(x0)
  x = res.x[res.found]
  zf, zq = (np.asarray(z) for z in pair.logits(jnp.asarray(x)))
  seed_cls = np.asarray(pair.logits(jnp.asarray(x0[res.found]))[0]).argmax(-1)
  assert (zf.argmax(-1) == seed_cls).all()  # the float model still says what it said on the seed
  assert (zq.argmax(-1) != zf.argmax(-1)).all()  # and the quantized model disagrees
  d = (x - x0[res.found]).reshape(len(x), -1)
  assert np.abs(d).max() <= budget.eps + 1e-6 and x.min() >= 0 and x.max() <= 1
  assert (res.queries[res.found] >= 1).all() and (res.queries <= res.cap).all()


@pytest.mark.parametrize("method", ["whitebox", "random", "mcmc"])
def test_finds_are_disagreements_inside_the_budget(pair_and_seeds, method):
  pair, x0 = pair_and_seeds
  budget = attacks.Budget("linf", 32 / 255)
  run = {
      "whitebox": lambda: attacks.whitebox(pair, x0, budget, steps=10),
      "random": lambda: attacks.random_search(pair, x0, budget, queries=20),
      "mcmc": lambda: attacks.mcmc_search(pair, x0, budget, queries=20),
  }[method]
  res = run()
  _check_finds(pair, x0, res, budget)
  again = run()
  np.testing.assert_array_equal(res.found, again.found)  # deterministic for a seed
  np.testing.assert_array_equal(res.queries, again.queries)
  s = res.summary(x0)
  assert s["found"] == int(res.found.sum()) and 0 < s["success_rate"] <= 1


def test_l2_budget_holds(pair_and_seeds):
  pair, x0 = pair_and_seeds
  budget = attacks.Budget("l2", 1.0)
  for res in (attacks.whitebox(pair, x0, budget, steps=10), attacks.random_search(pair, x0, budget, queries=20)):
    d = (res.x - x0).reshape(len(x0), -1)
    assert np.sqrt((d * d).sum(1)).max() <= 1.0 + 1e-5


def test_blur_operators_match_scipy():
  x = np.random.RandomState(1).rand(2, 9, 11, 1).astype(np.float32)
  box = np.asarray(attacks._window_stat(jnp.asarray(x), jnp.asarray(3), jnp.mean))
  med = np.asarray(attacks._window_stat(jnp.asarray(x), jnp.asarray(3), jnp.median))
  np.testing.assert_allclose(box, ndimage.uniform_filter(x, size=(1, 3, 3, 1), mode="nearest"), atol=1e-6)
  np.testing.assert_allclose(med, ndimage.median_filter(x, size=(1, 3, 3, 1), mode="nearest"), atol=1e-6)
  one = np.asarray(attacks._window_stat(jnp.asarray(x), jnp.asarray(1), jnp.median))
  np.testing.assert_array_equal(one, x)  # a 1-tap window leaves the image as it is


def test_bad_input_fails_before_any_search(pair_and_seeds):
  pair, x0 = pair_and_seeds
  with pytest.raises(ValueError, match=r"eps=0 is not valid for norm='linf': give 0 < eps <= 1.0"):
    attacks.Budget("linf", 0)
  with pytest.raises(ValueError, match="eps=1.5 is not valid"):
    attacks.Budget("linf", 1.5)
  with pytest.raises(ValueError, match="norm='l1' is not a known perturbation model"):
    attacks.Budget("l1", 0.1)
  model = get_model("lenet_tiny", num_classes=10)
  with pytest.raises(ValueError, match="quantizes nothing"):
    attacks.Pair(model, {}, preset("float32").default)
  with pytest.raises(ValueError, match="quantizes nothing"):
    attacks.Pair(model, {}, None)

  class Frozen(attacks.Pair):

    def logits(self, x):  # a quantized model whose output does not depend on the input through gradients
      zf, zq = super().logits(x)
      return zf, jax.lax.stop_gradient(zq)

  frozen = Frozen.__new__(Frozen)
  frozen.__dict__.update(pair.__dict__)
  with pytest.raises(ValueError, match="no gradient path"):
    attacks.whitebox(frozen, x0, attacks.Budget("linf", 0.1), steps=2)
  with pytest.raises(ValueError, match="mutates images"):
    attacks.mcmc_search(pair, x0.reshape(16, -1), attacks.Budget("linf", 0.1), queries=2)


def test_the_job_resumes_and_reports(tiny_ckpt, tmp_path):
  from qsim.results import read_rows
  from qsim.search import job

  c = job.SearchConfig(
      checkpoint=str(tiny_ckpt), quantizers=("w2a2",), budgets=(16 / 255, 64 / 255), seeds=8, cap=6, calib_samples=20
  )
  path = job.run_search(c, str(tmp_path))
  rows = read_rows(str(tmp_path / "results.csv"))
  assert len(rows) == 2 * 3 and {r["searcher"] for r in rows} == {"whitebox", "random", "mcmc"}
  assert all(r["quantizer"] == "w2a2" and r["weight_bits"] == 2 for r in rows)
  assert sum(r["found"] for r in rows) > 0
  text = open(path).read()
  assert "success.png" in text and os.path.getsize(tmp_path / "success.png") > 0
  before = sorted(os.listdir(tmp_path / "parts"))
  job.run_search(c, str(tmp_path))  # every unit stored: nothing recomputed, same rows
  assert sorted(os.listdir(tmp_path / "parts")) == before and len(read_rows(str(tmp_path / "results.csv"))) == 6
  nat = dataclasses.replace(c, norm="natural", budgets=(0.25, 1.0), methods=("whitebox", "random"))
  path = job.run_search(nat, str(tmp_path / "natural"))
  rows = read_rows(str(tmp_path / "natural" / "results.csv"))
  assert len(rows) == 2 * 2 and {r["norm"] for r in rows} == {"natural"} and sum(r["found"] for r in rows) > 0
  assert "| w2a2 | 0.25 | whitebox |" in open(path).read()


def test_a_bad_search_config_fails_before_any_work():
  from qsim.search import job

  ok = dict(checkpoint="runs/none")
  for kw, says in (
      (dict(budgets=(0.0,)), "eps=0.0 is not valid"),
      (dict(budgets=(2.0,)), "beyond|eps=2.0 is not valid"),
      (dict(norm="l1"), "norm='l1' is not a known perturbation model"),
      (dict(norm="natural", budgets=(0.5,)), "cannot search norm='natural'; give methods=whitebox\\+random"),
      (dict(norm="natural", budgets=(2.0,), methods=("whitebox",)), "eps=2.0 is not valid for norm='natural'"),
      (dict(norm="tokens", budgets=(2.0,)), "cannot search norm='tokens'; give methods=whitebox\\+random"),
      (dict(norm="tokens", budgets=(0.5,), methods=("random",)), "whole number of substitutions"),
      (dict(quantizers=("float32",)), "quantizes nothing"),
      (dict(quantizers=("int4",)), "not a known preset"),
      (dict(methods=("dflare",)), "methods=\\['dflare'\\] is not valid"),
      (dict(split="train"), "split='train' is not valid"),
  ):
    with pytest.raises(ValueError, match=says):
      job.SearchConfig(**ok, **kw)


def test_the_natural_model_is_the_identity_at_zero_and_rotates_exactly():
  from qsim.shifts import image

  img = np.random.RandomState(2).rand(12, 12, 1).astype(np.float32)
  zero = np.zeros(len(image.NATURAL_PARAMS), np.float32)
  np.testing.assert_allclose(np.asarray(image.natural(jnp.asarray(img), zero)), img, atol=1e-6)
  b = zero.copy()
  b[0] = 0.2
  np.testing.assert_allclose(np.asarray(image.natural(jnp.asarray(img), b)), np.clip(img + 0.2, 0, 1), atol=1e-6)
  r = zero.copy()
  r[2] = np.pi / 2  # a quarter turn about the centre of a square image is a permutation of its pixels
  out = np.asarray(image.natural(jnp.asarray(img), r))
  assert min(np.abs(out - np.rot90(img, k)).max() for k in (1, 3)) < 1e-4


@pytest.mark.parametrize("method", ["whitebox", "random"])
def test_natural_finds_are_the_model_applied_within_its_ranges(pair_and_seeds, method):
  from qsim.shifts import image

  pair, x0 = pair_and_seeds
  budget = attacks.Budget("natural", 0.5)
  res = (
      attacks.whitebox(pair, x0, budget, steps=10)
      if method == "whitebox"
      else attacks.random_search(pair, x0, budget, queries=20)
  )
  assert res.found.any() and res.theta.shape == (len(x0), len(image.NATURAL_PARAMS))
  bound = 0.5 * np.abs(np.asarray(list(attacks.NATURAL_RANGES.values()))).max(1)
  assert (np.abs(res.theta) <= bound + 1e-6).all() and (res.used <= 1 + 1e-6).all()
  th = res.theta[res.found]
  np.testing.assert_allclose(  # the stored input is the natural model at the stored parameters
      res.x[res.found], np.asarray(jax.vmap(image.natural)(jnp.asarray(x0[res.found]), jnp.asarray(th))), atol=1e-5
  )
  zf, zq = (np.asarray(z) for z in pair.logits(jnp.asarray(res.x[res.found])))
  seed_cls = np.asarray(pair.logits(jnp.asarray(x0[res.found]))[0]).argmax(-1)
  assert (zf.argmax(-1) == seed_cls).all() and (zq.argmax(-1) != seed_cls).all()
  assert 0 < res.summary(x0)["budget_used"] <= 1


def test_bad_natural_input_fails_before_any_search(pair_and_seeds):
  pair, x0 = pair_and_seeds
  with pytest.raises(ValueError, match=r"eps=1.5 is not valid for norm='natural': give 0 < eps <= 1.0"):
    attacks.Budget("natural", 1.5)
  with pytest.raises(ValueError, match="perturbs images in \\[0, 1\\]"):
    attacks.Budget("natural", 0.5, box=(-1.0, 1.0))
  with pytest.raises(ValueError, match="mcmc_search mutates pixels"):
    attacks.mcmc_search(pair, x0, attacks.Budget("natural", 0.5), queries=2)
  with pytest.raises(ValueError, match="natural' perturbs images \\[B, H, W, C\\]"):
    attacks.whitebox(pair, x0.reshape(16, -1), attacks.Budget("natural", 0.5), steps=2)


def test_whitebox_in_chunks_is_one_program_with_the_same_finds(pair_and_seeds):
  pair, x0 = pair_and_seeds
  budget = attacks.Budget("linf", 32 / 255)
  whole = attacks.whitebox(pair, x0, budget, steps=3, restarts=2)  # the second restart from a random draw
  chunks = attacks.whitebox(pair, x0, budget, steps=3, restarts=2, batch_size=5)  # 4 chunks, the last padded
  np.testing.assert_array_equal(whole.found, chunks.found)
  np.testing.assert_array_equal(whole.queries, chunks.queries)
  np.testing.assert_allclose(whole.x, chunks.x, atol=1e-6)


def test_whitebox_over_a_grid_of_configs_is_each_config_alone(pair_and_seeds):
  pair, x0 = pair_and_seeds
  model, variables = pair.float_model, pair.fv
  calib = x0[:4]
  quantizers = build_quantizers(model, variables, ["w2a2", "w3a3", "tflite_int8"], calib)
  budget = attacks.Budget("linf", 32 / 255)
  grid = attacks.whitebox_grid(
      model, variables, [(q.name, q.config, q.quant_stats) for q in quantizers], x0, budget, steps=3, restarts=2
  )
  assert len(grid) == 3 and sum(r.found.sum() for r in grid) > 0
  for q, res in zip(quantizers, grid):
    alone_pair = attacks.Pair(model, variables, q.config, q.quant_stats)
    alone = attacks.whitebox(alone_pair, x0, budget, steps=3, restarts=2)
    np.testing.assert_array_equal(res.found, alone.found, err_msg=q.name)
    np.testing.assert_array_equal(res.queries, alone.queries, err_msg=q.name)
    if res.found.any():
      _check_finds(alone_pair, x0, res, budget)  # real disagreements of that config
  with pytest.raises(ValueError, match="quantizes nothing"):
    attacks.whitebox_grid(model, variables, [("float32", preset("float32"), None)], x0, budget, steps=2)
  with pytest.raises(ValueError, match="quantizers=\\[\\] is not valid"):
    attacks.whitebox_grid(model, variables, [], x0, budget, steps=2)


@pytest.fixture(scope="module")
def text_pair_and_seeds():
  model = get_model("lstm_tiny", num_classes=2)  # vocabulary 50, embeddings of 8
  rng = np.random.RandomState(1)
  ids = rng.randint(2, 50, size=(24, 12)).astype(np.int32)
  ids[:, :3] = 0  # pre-padded, as the text pipeline pads
  ids[0, :10] = 0  # a review of two words
  variables = model.init(jax.random.key(5), ids[:1])
  return attacks.Pair(model, variables, preset("w2a2")), ids


def _check_token_finds(pair, x0, res, k):
  x = res.x[res.found]
  seed = x0[res.found]
  zf, zq = (np.asarray(z) for z in pair.logits(jnp.asarray(x)))
  assert (zf.argmax(-1) == np.asarray(pair.logits(jnp.asarray(seed))[0]).argmax(-1)).all()
  assert (zq.argmax(-1) != zf.argmax(-1)).all()  # real disagreements
  changed = x != seed
  assert 1 <= changed.sum(1).min() and changed.sum(1).max() <= k  # at most k substitutions
  assert (x[seed == 0] == 0).all() and (x[changed] >= 2).all()  # padding stays; words only (no pad, no OOV)


@pytest.mark.parametrize("method", ["whitebox", "random"])
def test_token_substitutions_are_real_disagreements_within_k_words(text_pair_and_seeds, method):
  pair, x0 = text_pair_and_seeds
  budget = attacks.Budget("tokens", 2)
  run = {
      "whitebox": lambda: attacks.whitebox(pair, x0, budget, steps=4, batch_size=10),
      "random": lambda: attacks.random_search(pair, x0, budget, queries=40),
  }[method]
  res = run()
  assert res.found.any() and res.x.dtype == np.int32
  _check_token_finds(pair, x0, res, 2)
  assert np.isnan(res.summary(x0)["linf"]) and 0 < res.summary(x0)["budget_used"] <= 1
  np.testing.assert_array_equal(res.found, run().found)  # deterministic
  if method == "whitebox":  # a step: a gradient (2 queries) and the best-ranked substitutions (one each)
    assert res.cap == 4 * (2 + attacks.TOKEN_CANDIDATES)
    assert set(np.unique(res.queries[res.found])) <= {(2 + attacks.TOKEN_CANDIDATES) * i for i in range(1, 5)}


def test_token_embeddings_give_the_same_logits_as_ids(text_pair_and_seeds):
  pair, x0 = text_pair_and_seeds
  for a, b in zip(pair.logits(jnp.asarray(x0)), pair.logits_embedded(*pair.embed(jnp.asarray(x0)))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bad_token_input_fails_before_any_search(text_pair_and_seeds, pair_and_seeds):
  pair, x0 = text_pair_and_seeds
  with pytest.raises(ValueError, match="whole number of substitutions"):
    attacks.Budget("tokens", 1.5)
  with pytest.raises(ValueError, match="eps=13 substitutions is not valid for sequences of 12 tokens"):
    attacks.whitebox(pair, x0, attacks.Budget("tokens", 13), steps=1)
  with pytest.raises(ValueError, match="outside the vocabulary 0..49"):
    attacks.random_search(pair, x0 + 40, attacks.Budget("tokens", 1), queries=1)
  with pytest.raises(ValueError, match="substitutes token ids \\[B, T\\]"):
    attacks.whitebox(pair, x0.astype(np.float32), attacks.Budget("tokens", 1), steps=1)
  with pytest.raises(ValueError, match="mcmc_search mutates pixels"):
    attacks.mcmc_search(pair, x0, attacks.Budget("tokens", 1), queries=1)
  image_pair, images = pair_and_seeds
  with pytest.raises(ValueError, match="has no vocabulary"):
    attacks.random_search(image_pair, images, attacks.Budget("tokens", 1), queries=1)


def test_the_job_searches_token_substitutions_on_a_text_checkpoint(tmp_path, tiny_ckpt):
  import tensorflow_datasets as tfds

  from experiments.configs import imdb
  from qsim.results import read_rows
  from qsim.search import job
  from qsim.train import job as train_job

  with tfds.testing.mock_data(num_examples=24):
    train_job.run(train_job.TrainConfig.from_config_dict(imdb.get_config("runlocal")), str(tmp_path / "ckpt"))
    c = job.SearchConfig(
        checkpoint=str(tmp_path / "ckpt"),
        quantizers=("w2a2",),
        norm="tokens",
        budgets=(1, 3),
        methods=("whitebox", "random"),
        seeds=8,
        cap=40,
        calib_samples=8,
    )
    path = job.run_search(c, str(tmp_path / "search"))
    rows = read_rows(str(tmp_path / "search" / "results.csv"))
    assert len(rows) == 2 * 2 and {r["norm"] for r in rows} == {"tokens"}
    assert all(r["budget_used"] <= 1 for r in rows if r["found"])
    report = open(path).read()
    assert "| w2a2 | 1 tokens | whitebox |" in report
    if any(r["found"] and r["searcher"] == "whitebox" for r in rows):
      assert "Found substitutions" in report and "~~" in report  # the words, seed crossed out
    with pytest.raises(ValueError, match="has no vocabulary"):  # an image checkpoint under 'tokens'
      job.run_search(dataclasses.replace(c, checkpoint=str(tiny_ckpt)), str(tmp_path / "bad"))
  assert not (tmp_path / "bad" / "results.csv").exists()
