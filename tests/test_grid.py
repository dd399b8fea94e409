"""Bits are data: a config grid is one compiled program, equal to each
config run alone, and new bits do not recompile."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsim import nn as qnn
from qsim.evaluate import Engine, Quantizer
from qsim.models import RNNClassifier, lenet_tiny
from qsim.quant import ConfigGrid, bit_grid, make_config, preset

KEY = jax.random.key(0)
X = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))


def _items(model, variables):
  """Configs of several structures, one with calibrated static ranges."""
  static = preset("tflite_int8")
  qm = model.clone(quant=static)
  stats = qnn.calibrate(
      qm, {"params": variables["params"], **{k: v for k, v in qm.init(KEY, X).items() if k != "params"}}, [X]
  )
  items = bit_grid([2, 4, 8], [4, 8, None]) + [
      preset("float32"),
      preset("fp16"),
      preset("bf16"),
      preset("weight_only_int8"),
      make_config("w4a4", rules={"^head$": "w8a8"}),
      (static, stats[qnn.QUANT_STATS]),
  ]
  return items


def _apply(model, item, params, x):
  cfg, stats = item if isinstance(item, tuple) else (item, None)
  v = {"params": params} if stats is None else {"params": params, qnn.QUANT_STATS: stats}
  return model.clone(quant=cfg).apply(v, x)


@pytest.mark.parametrize("make", [lenet_tiny, lambda: RNNClassifier(cell="lstm", hidden=6)], ids=["lenet_tiny", "lstm"])
def test_grid_equals_each_config_alone(make):
  model = make()
  variables = model.init(KEY, X)
  items = _items(model, variables)
  grid = ConfigGrid(lambda item, p, x: _apply(model, item, p, x), mapping="map")
  out = grid(items, variables["params"], X)
  assert out.shape == (len(items), 6, 10)
  for i, item in enumerate(items):
    alone_jit = jax.jit(lambda p, x: _apply(model, item, p, x))(variables["params"], X)
    alone_eager = _apply(model, item, variables["params"], X)
    np.testing.assert_array_equal(out[i], alone_jit, err_msg=f"config {i}")
    np.testing.assert_array_equal(out[i], alone_eager, err_msg=f"config {i}")
  # and the configs really differ from one another
  assert len({np.asarray(o).tobytes() for o in out}) >= len(items) - 2


def test_new_bits_do_not_recompile():
  model = lenet_tiny()
  variables = model.init(KEY, X)
  traces = []

  def fn(cfg, p, x):
    traces.append(1)
    return model.clone(quant=cfg).apply({"params": p}, x)

  grid = ConfigGrid(fn)
  a = grid(bit_grid([2, 3, 4], [4, 8]), variables["params"], X)
  assert len(traces) == 1  # one trace for the whole grid
  b = grid(bit_grid([5, 6, 16], [2, 16]), variables["params"], X)
  assert len(traces) == 1  # other bits, same structure and count: no retrace
  assert not np.array_equal(a, b)
  grid(bit_grid([5, 6, 16], [2, 16]) + [preset("fp16")], variables["params"], X)
  assert len(traces) == 3  # a new structure group: traced once more (+1 for the bits group's new layout)


def test_vmap_mapping_is_within_float_rounding_of_each_config_alone():
  """What the README states for ``vmap`` (the GPU/TPU default): batching the configs lets XLA reorder
  float sums, so outputs equal each config run alone within float32 rounding (relative 1e-6 of the logits'
  scale), not bit for bit as with ``map``, except where a reordered sum moves a value across a rounding tie
  of a quantizer: then that example's logits move by a quantization step. Measured on lenet_tiny,
  bit_grid([2, 4, 8], [4, 8, None]) + presets, 6 examples: every (config, example) within rounding on an
  AVX2 CPU; on an AVX-512 one, w2a4 moves on 2 of 6 examples (2% of the logits' scale), the other 84
  pairs within rounding. Float configs have no tie: always within rounding. Predictions agreed on both."""
  model = lenet_tiny()
  variables = model.init(KEY, X)
  items = _items(model, variables)
  fn = lambda c, p, x: _apply(model, c, p, x)
  v = ConfigGrid(fn, mapping="vmap")(items, variables["params"], X)
  scale = float(np.max(np.abs(v)))
  within = agree = 0
  for i, item in enumerate(items):
    alone = np.asarray(jax.jit(lambda p, x: _apply(model, item, p, x))(variables["params"], X))
    close = np.all(np.abs(v[i] - alone) <= 1e-6 * scale, axis=-1)
    name = (item[0] if isinstance(item, tuple) else item).name
    if re.fullmatch(r"float32|fp16|weight_only_int8|w\d+", name):  # activations stay float: no tie
      assert close.all(), f"config {name}: activations stay float, so no tie, yet {close}"
    within += int(close.sum())
    agree += int(np.sum(np.argmax(v[i], -1) == np.argmax(alone, -1)))
  pairs = len(items) * len(X)
  assert within >= 0.95 * pairs, f"{within} of {pairs} (config, example) pairs within float rounding"
  assert agree >= 0.95 * pairs, f"{agree} of {pairs} predictions agree"


def test_bad_grid_arguments():
  with pytest.raises(ValueError, match="mapping='pmap'"):
    ConfigGrid(lambda c: c, mapping="pmap")
  with pytest.raises(ValueError, match="empty"):
    ConfigGrid(lambda c: c)([])


def test_engine_pads_the_last_batch_exactly():
  model = lenet_tiny()
  variables = model.init(KEY, X)
  x = np.asarray(jax.random.uniform(jax.random.key(2), (11, 28, 28, 1)))
  y = np.zeros(11, np.int32)
  qs = [Quantizer("float32", preset("float32")), Quantizer("w2a4", preset("w2a4"))]
  preds = Engine(model, variables, qs, batch_size=4).run(x, y).quant_pred  # batches of 4, 4, 3 (padded to 4)
  assert preds.shape == (2, 11)
  full = Engine(model, variables, qs, batch_size=11).run(x, y).quant_pred
  np.testing.assert_array_equal(preds, full)
  np.testing.assert_array_equal(preds[0], np.argmax(model.apply(variables, x), -1))
