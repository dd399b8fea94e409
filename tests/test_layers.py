"""Quantized layers: exact flax equivalence when off, gradients when on,
static calibration, per-layer rules."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsim import nn as qnn
from qsim.models import RNNClassifier, lenet_tiny
from qsim.quant import LayerSpec, TensorSpec, make_config, preset

KEY = jax.random.key(0)
X_IMG = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
X_VEC = jax.random.normal(jax.random.key(2), (4, 6))
X_SEQ = jax.random.normal(jax.random.key(3), (4, 5, 6))
TOKENS = jax.random.randint(jax.random.key(4), (4, 7), 0, 20)


def _pairs():
  """(qsim layer factory, flax layer, input) for every layer type."""
  return {
      "dense": (lambda q: qnn.Dense(5, quant=q), nn.Dense(5), X_VEC),
      "conv": (lambda q: qnn.Conv(5, (3, 3), quant=q), nn.Conv(5, (3, 3)), X_IMG),
      "embed": (lambda q: qnn.Embed(20, 5, quant=q), nn.Embed(20, 5), TOKENS),
      "lstm": (lambda q: qnn.RNN(qnn.LSTMCell(5, quant=q)), nn.RNN(nn.LSTMCell(5)), X_SEQ),
      "gru": (lambda q: qnn.RNN(qnn.GRUCell(5, quant=q)), nn.RNN(nn.GRUCell(5)), X_SEQ),
  }


@pytest.mark.parametrize("kind", list(_pairs()))
@pytest.mark.parametrize("quant", [None, "float32", "rule_float"])
def test_quant_off_equals_flax_exactly(kind, quant):
  make, ref, x = _pairs()[kind]
  if quant == "float32":
    quant = preset("float32")
  elif quant == "rule_float":  # quantized default, but a rule keeps every layer float
    quant = make_config("w4a4", rules={".*": "float32"})
  ours = make(quant)
  v_ref = ref.init(KEY, x)
  v_ours = ours.init(KEY, x)
  assert jax.tree.structure(v_ref) == jax.tree.structure(v_ours)
  for a, b in zip(jax.tree.leaves(v_ref), jax.tree.leaves(v_ours)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ref.apply(v_ref, x), ours.apply(v_ref, x))
  np.testing.assert_array_equal(jax.jit(ref.apply)(v_ref, x), jax.jit(ours.apply)(v_ref, x))


def _cos(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _dynamic_everywhere():
  """``tflite_dynamic`` with every kernel quantized: the test layers' kernels
  are under the preset's 1,024-weight threshold, which would leave them float
  (and the gradient test comparing float with float)."""
  cfg = preset("tflite_dynamic")
  return dataclasses.replace(cfg, default=dataclasses.replace(cfg.default, min_weights=0))


@pytest.mark.parametrize("kind", list(_pairs()))
@pytest.mark.parametrize("config", ["w8a8", "tflite_dynamic_everywhere", "w8"])
def test_gradients_nonzero_and_close_to_float_at_8_bits(kind, config):
  make, ref, x = _pairs()[kind]
  q = make(_dynamic_everywhere() if config == "tflite_dynamic_everywhere" else preset(config))
  v = ref.init(KEY, x)
  params = v["params"]
  assert not np.array_equal(q.apply(v, x), ref.apply(v, x)), f"{kind}/{config}: nothing is quantized"

  def loss(model, p, x):
    return jnp.sum(jnp.sin(model.apply({"params": p}, x)))

  float_grads = jax.grad(loss, argnums=(1, 2) if kind != "embed" else 1)(ref, params, x)
  quant_grads = jax.grad(loss, argnums=(1, 2) if kind != "embed" else 1)(q, params, x)
  flat_f = jax.tree_util.tree_leaves_with_path(float_grads)
  flat_q = jax.tree.leaves(quant_grads)
  for (path, gf), gq in zip(flat_f, flat_q):
    name = jax.tree_util.keystr(path)
    assert np.any(np.asarray(gq) != 0), f"{kind}/{config}: zero gradient for {name}"
    if "bias" in name and kind in ("gru",) and np.allclose(gf, 0):
      continue
    assert _cos(gf, gq) > 0.98, f"{kind}/{config}: gradient of {name} not close to float"
    np.testing.assert_allclose(np.linalg.norm(gq), np.linalg.norm(gf), rtol=0.1, err_msg=name)


def test_quantized_output_is_close_but_not_equal_to_float():
  model = lenet_tiny()
  x = jax.random.uniform(KEY, (8, 28, 28, 1))
  v = model.init(KEY, x)
  ref = model.apply(v, x)
  for name, tol in [("w8a8", 0.05), ("w4a8", 0.5), ("fp16", 1e-3)]:
    out = model.clone(quant=preset(name)).apply(v, x)
    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert 0 < err < tol, (name, err)


def test_per_layer_rules_skip_first_and_last_layer():
  model = lenet_tiny()
  x = jax.random.uniform(KEY, (8, 28, 28, 1))
  v = model.init(KEY, x)
  cfg = make_config("w2a2", rules={"^conv1$|^head$": "float32"})
  _, inter = model.clone(quant=cfg).apply(v, x, capture_intermediates=True)
  _, inter_f = model.apply(v, x, capture_intermediates=True)
  inter, inter_f = inter["intermediates"], inter_f["intermediates"]
  # conv1 is float: same output as the float model on the same input
  np.testing.assert_array_equal(inter["conv1"]["__call__"][0], inter_f["conv1"]["__call__"][0])
  # conv2 is quantized at 2 bits: different
  assert not np.allclose(inter["conv2"]["__call__"][0], inter_f["conv2"]["__call__"][0])
  # head is float: equal to a float Dense applied to its (quantized-path) input
  head_in = inter["dense1"]["__call__"][0]
  np.testing.assert_allclose(
      inter["head"]["__call__"][0], nn.Dense(10).apply({"params": v["params"]["head"]}, nn.relu(head_in)), rtol=1e-6
  )


def test_per_channel_axis_out_of_range_is_named_at_init():
  spec = LayerSpec(weight=TensorSpec(bits=8, granularity="per_channel", axis=4))

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      return qnn.Dense(3, quant=spec, name="my_dense")(x)

  with pytest.raises(
      ValueError,
      match=r"my_dense.weight: per-channel axis=4 is out of range for a rank-2 tensor; valid range is \[-2, 1\]",
  ):
    Net().init(KEY, X_VEC)


def test_static_ranges_calibrate_then_quantize():
  model = lenet_tiny(quant=preset("tflite_int8"))
  x = jax.random.uniform(KEY, (16, 28, 28, 1))
  v = model.init(KEY, x)
  assert qnn.uncalibrated(v)  # every static range starts uncalibrated
  with pytest.raises(ValueError, match="not calibrated"):
    qnn.require_calibrated(v)
  v = qnn.calibrate(model, v, [x[:8], x[8:]])
  qnn.require_calibrated(v)
  stats = v[qnn.QUANT_STATS]["conv1"]["QuantConv_0"]
  # conv1's input range = running min/max of the float inputs over both batches
  assert int(stats["act_count"]) == 2
  np.testing.assert_allclose(stats["act_lo"].ravel(), [0.0])
  np.testing.assert_allclose(stats["act_hi"].ravel(), [float(x.max())])
  out = model.apply(v, x)
  float_out = lenet_tiny().apply({"params": v["params"]}, x)
  assert 0 < float(jnp.max(jnp.abs(out - float_out))) < 0.05 * float(jnp.max(jnp.abs(float_out)))
  # inputs outside the calibrated range are clipped: a static range is static. Compared with the same
  # layers quantized with dynamic (per-batch) ranges, so that only the range differs
  big = model.apply(v, x * 10)
  dyn = lenet_tiny(quant=_dynamic_everywhere()).apply({"params": v["params"]}, x * 10)
  assert not np.allclose(big, dyn, atol=1e-3)
  inside = model.apply(v, x)
  np.testing.assert_allclose(
      inside,
      lenet_tiny(quant=_dynamic_everywhere()).apply({"params": v["params"]}, x),
      atol=0.05 * float(jnp.max(jnp.abs(inside))),
  )


def test_static_range_gradient_is_zero_where_the_input_is_clipped():
  """A layer's straight-through estimator masks the inputs its static range
  clips (an unmasked STE would pass the gradient through unchanged)."""
  spec = LayerSpec(weight=TensorSpec(bits=8, granularity="per_channel"), act=TensorSpec(bits=8, range="static"))
  layer = qnn.Dense(5, quant=spec)
  v = qnn.calibrate(layer, layer.init(KEY, X_VEC), [X_VEC])
  lo = float(v[qnn.QUANT_STATS]["QuantDotGeneral_0"]["act_lo"].min())
  hi = float(v[qnn.QUANT_STATS]["QuantDotGeneral_0"]["act_hi"].max())
  x = X_VEC * 3  # a third of the values fall outside the calibrated range
  g = np.asarray(jax.grad(lambda x: jnp.sum(jnp.sin(layer.apply(v, x))))(x))
  clipped = (np.asarray(x) < lo) | (np.asarray(x) > hi)
  assert 0.1 < clipped.mean() < 0.9
  assert np.all(g[clipped] == 0) and np.all(g[~clipped] != 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_static_ranges_calibrate_through_recurrent_scan(cell):
  static = LayerSpec(weight=TensorSpec(bits=8, granularity="per_channel"), act=TensorSpec(bits=8, range="static"))
  model = RNNClassifier(cell=cell, hidden=4, num_classes=3, quant=static)
  x = jax.random.normal(KEY, (2, 5, 3))
  v = qnn.calibrate(model, model.init(KEY, x), [x])
  qnn.require_calibrated(v)
  stats = v[qnn.QUANT_STATS]["rnn"]["cell"]
  assert int(stats["act_x_count"]) == 5  # one update per time step
  assert int(stats["act_h_count"]) == 5
  np.testing.assert_allclose(stats["act_x_hi"].ravel(), [float(x.max())])
  out = model.apply(v, x)
  assert out.shape == (2, 3) and np.all(np.isfinite(out))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tflite_int8_cells_run_the_unrolled_int8_graph(cell):
  """tflite_int8: one input range for the sequence, every op's int8 range
  per time step, operands overwritten in place widened, LOGISTIC/TANH on
  their fixed grids."""
  model = RNNClassifier(cell=cell, hidden=4, num_classes=3, quant=preset("tflite_int8"))
  x = jax.random.normal(KEY, (2, 5, 3))
  v = qnn.calibrate(model, model.init(KEY, x), [x])
  qnn.require_calibrated(v)
  rnn = v[qnn.QUANT_STATS]["rnn"]
  np.testing.assert_allclose([rnn["input_lo"].min(), rnn["input_hi"].max()], [float(x.min()), float(x.max())])
  stats = rnn["cell"]
  assert stats["new_h_count"].shape == (5,) and np.all(stats["new_h_count"] == 1)  # its own range per step
  assert not np.allclose(stats["new_h_hi"][0], stats["new_h_hi"][-1])
  gate = "r" if cell == "gru" else "f"
  assert np.all(stats[f"fc_i{gate}_hi"] >= stats[f"add_{gate}_hi"])  # in place: the union
  assert np.all(stats[f"fc_i{gate}_lo"] <= stats[f"add_{gate}_lo"])
  out = model.apply(v, x)
  assert out.shape == (2, 3) and np.all(np.isfinite(out))
  # the gates' fixed grids, used only in inference
  y = jnp.linspace(-6, 6, 101)
  from qsim.nn import recurrent

  np.testing.assert_allclose(recurrent._sigmoid_int8(jax.nn.sigmoid(y)) * 256 % 1, 0, atol=1e-4)
  np.testing.assert_allclose(recurrent._tanh_int8(jnp.tanh(y)) * 128 % 1, 0, atol=1e-4)


def test_state_quantization_and_stochastic_rounding_need_rng():
  spec = LayerSpec(
      weight=TensorSpec(bits=8, granularity="per_channel"), state=TensorSpec(bits=4, rounding="stochastic")
  )
  model = qnn.RNN(qnn.LSTMCell(5, quant=spec))
  v = model.init({"params": KEY, "quant": KEY}, X_SEQ)
  with pytest.raises(Exception, match="quant"):
    model.apply(v, X_SEQ)
  a = model.apply(v, X_SEQ, rngs={"quant": jax.random.key(1)})
  b = model.apply(v, X_SEQ, rngs={"quant": jax.random.key(1)})
  c = model.apply(v, X_SEQ, rngs={"quant": jax.random.key(2)})
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_rnn_classifier_on_image_rows_and_tokens():
  img = RNNClassifier(cell="gru", hidden=4, num_classes=10, quant=preset("w8a8"))
  x = jax.random.uniform(KEY, (2, 28, 28, 1))
  assert img.apply(img.init(KEY, x), x).shape == (2, 10)
  txt = RNNClassifier(cell="lstm", hidden=4, num_classes=2, vocab_size=20, embed_dim=8, quant=preset("w8a8"))
  assert txt.apply(txt.init(KEY, TOKENS), TOKENS).shape == (4, 2)


def test_calibration_observes_the_float_model():
  """Static ranges are recorded on float activations, even when other
  tensors (here 2-bit weights) are quantized in inference."""
  spec = LayerSpec(
      weight=TensorSpec(bits=2, granularity="per_channel"), act=TensorSpec(bits=8, symmetric=False, range="static")
  )

  class Two(nn.Module):

    @nn.compact
    def __call__(self, x):
      h = qnn.Dense(8, quant=spec, name="d1")(x)
      return qnn.Dense(3, quant=spec, name="d2")(nn.relu(h))

  model = Two()
  v = model.init(KEY, X_VEC)
  v = qnn.calibrate(model, v, [X_VEC])
  float_h = nn.relu(nn.Dense(8).apply({"params": v["params"]["d1"]}, X_VEC))
  stats = v[qnn.QUANT_STATS]["d2"]["QuantDotGeneral_0"]
  np.testing.assert_allclose(stats["act_hi"].ravel(), [float(float_h.max())], rtol=1e-6)


def test_engine_refuses_uncalibrated_static_ranges():
  from qsim.evaluate import Engine, Quantizer

  model = lenet_tiny(quant=preset("tflite_int8"))
  x = np.asarray(jax.random.uniform(KEY, (4, 28, 28, 1)))
  v = model.init(KEY, x)
  with pytest.raises(ValueError, match="quantizer 'int8': static activation ranges are not calibrated"):
    Engine(lenet_tiny(), {"params": v["params"]}, [Quantizer("int8", preset("tflite_int8"), v[qnn.QUANT_STATS])])


@pytest.mark.parametrize("padding", ["SAME", "VALID", [(1, 2), (0, 3)]])
def test_one_channel_conv_lowering_equals_flax(padding):
  """One input channel: the shifted-sum lowering (no XLA convolution in the
  program) equals flax's convolution up to float rounding, values and grads."""
  x = jax.random.uniform(jax.random.key(5), (3, 12, 12, 1))
  ref, ours = nn.Conv(4, (5, 5), padding=padding), qnn.Conv(4, (5, 5), padding=padding)
  v = ref.init(KEY, x)
  assert "conv_general_dilated" not in str(jax.make_jaxpr(ours.apply)(v, x))
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-6)
  g_ref = jax.grad(lambda v: jnp.sum(jnp.sin(ref.apply(v, x))))(v)
  g_ours = jax.grad(lambda v: jnp.sum(jnp.sin(ours.apply(v, x))))(v)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_ours)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  strided = qnn.Conv(4, (5, 5), strides=2, padding=padding)  # other shapes keep XLA's op
  assert "conv_general_dilated" in str(jax.make_jaxpr(strided.apply)(v, x))


@pytest.mark.parametrize("vocab,quantized", [(50, False), (200, True)])
def test_embedding_tables_under_min_weights_stay_float(vocab, quantized):
  """tflite_dynamic leaves kernels under 1,024 elements float, gather tables included (the converter keeps
  lstm_tiny's 50 x 8 table float and stores a 200 x 8 one as int8)."""
  ours, ref = qnn.Embed(vocab, 8, quant=preset("tflite_dynamic")), nn.Embed(vocab, 8)
  tokens = jnp.arange(vocab)[None]
  v = ref.init(KEY, tokens)
  same = np.array_equal(ours.apply(v, tokens), ref.apply(v, tokens))
  assert same != quantized


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("hidden,quantized", [(8, False), (40, True)])
def test_recurrent_kernels_under_min_weights_stay_float(cell, hidden, quantized):
  """tflite_dynamic leaves gate kernels under 1,024 elements float, recurrent cells included: with 28
  inputs per step, hidden 8 gives 224- and 64-element kernels (float, so the cell is the float cell
  exactly), hidden 40 gives 1,120 and 1,600 (int8). A cell that rebuilt its gate spec without
  min_weights would quantize the small one."""
  from qsim.models import RNNClassifier

  x = jax.random.uniform(KEY, (3, 28, 28, 1))
  model = RNNClassifier(cell=cell, hidden=hidden)
  v = model.init(KEY, x)
  same = np.array_equal(model.clone(quant=preset("tflite_dynamic")).apply(v, x), model.apply(v, x))
  assert same != quantized


def test_int_bias_in_a_float_gate_graph_is_refused():
  """int_bias needs an accumulator scale; a cell's float gate graph (no output spec) has none, so the
  combination is refused with the cell's name instead of silently leaving the biases float."""
  from qsim.models import RNNClassifier
  from qsim.quant import LayerSpec, make_config

  x = jax.random.uniform(KEY, (2, 28, 28, 1))
  model = RNNClassifier(cell="gru", hidden=4)
  spec = dataclasses.replace(preset("tflite_int8").default, output=None, add_requant="fp32")
  assert spec.int_bias and isinstance(spec, LayerSpec)
  qm = model.clone(quant=make_config(spec))
  with pytest.raises(ValueError, match=r"rnn/cell: int_bias in a recurrent cell needs its int8 graph"):
    qm.init(KEY, x)


def test_int32_bias_overflow_widens_the_weight_scale():
  """int_bias rounds the bias onto the accumulator grid (act scale x weight scale). A bias that needs more
  than 2^30 steps there widens its channel's weight scale to |bias| / (act scale x 2^30), as the TFLite
  converter does (measured on a converted GRU, whose first step reads the zero state at scale 7.8e-9:
  BUILD_NOTES), so the bias is kept and the kernel is requantized on the wider scale: on a grid of about
  3e-11 (2^30 steps is about 0.033) a bias of 100 widens the scale to about 0.023, on which the 1e-3
  weights round to 0, so the output is the bias alone; a bias of 0.01 fits, the weights keep their
  own scale."""
  x = 1e-3 * jax.random.uniform(jax.random.key(4), (4, 6))  # act range [0, ~1e-3]: scale ~4e-6
  cfg = preset("tflite_int8")
  for bias, widened in [(100.0, True), (0.01, False)]:
    layer = qnn.Dense(1, quant=cfg)
    v = layer.init(KEY, x)
    v = {**v, "params": {"kernel": jnp.full((6, 1), 1e-3), "bias": jnp.full((1,), bias)}}  # weight scale ~8e-6
    stats = qnn.calibrate(layer, v, [x])
    y = layer.apply({**v, **stats}, x)
    if widened:
      np.testing.assert_allclose(y, bias, rtol=1e-6)
    else:
      np.testing.assert_allclose(y - x @ v["params"]["kernel"], bias, rtol=1e-3)
      assert np.all(np.abs(y - bias) > 1e-6)  # the weights still count
