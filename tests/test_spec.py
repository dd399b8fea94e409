"""Specs, presets and rules: validation and documented contents."""

import dataclasses

import jax
import pytest

from qsim.quant import LayerSpec, QuantConfig, TensorSpec, make_config, preset, structure
from qsim.quant.presets import bit_grid, layer_preset


@pytest.mark.parametrize("bits", [0, 1, 17, 32, 8.5, "8", None, True])
def test_bad_bits_name_field_value_and_range(bits):
  with pytest.raises(ValueError) as e:
    TensorSpec(bits=bits)
  msg = str(e.value)
  assert "bits" in msg and repr(bits) in msg and "[2, 16]" in msg


@pytest.mark.parametrize(
    "field,value",
    [
        ("format", "int9"),
        ("granularity", "per_row"),
        ("calibration", "kl"),
        ("rounding", "up"),
        ("range", "fixed"),
        ("qparams", "gemmlowp"),
    ],
)
def test_bad_choice_lists_valid_choices(field, value):
  with pytest.raises(ValueError) as e:
    TensorSpec(**{field: value})
  msg = str(e.value)
  assert field in msg and repr(value) in msg and "choose one of" in msg


def test_other_bad_fields():
  with pytest.raises(ValueError, match="percentile"):
    TensorSpec(calibration="percentile", percentile=30.0)
  with pytest.raises(ValueError, match="axis"):
    TensorSpec(axis=1)  # per_tensor has no axis
  with pytest.raises(ValueError, match="axis"):
    TensorSpec(granularity="per_channel", axis="0")
  with pytest.raises(ValueError, match="static"):
    TensorSpec(format="fp16", range="static")
  with pytest.raises(ValueError, match="weight.range='static'"):
    LayerSpec(weight=TensorSpec(range="static"))
  with pytest.raises(ValueError, match="const.range='static'"):
    LayerSpec(const=TensorSpec(range="static"))
  for flag in ("fold_bn", "inplace_ranges"):
    with pytest.raises(ValueError, match=f"LayerSpec.{flag}=1 is not valid; give True or False"):
      LayerSpec(**{flag: 1})
  with pytest.raises(ValueError, match="inplace_ranges=True needs output.calibration='absmax'.*'mse'"):
    LayerSpec(output=TensorSpec(range="static", calibration="mse"), inplace_ranges=True)
  # XNNPACK's dynamic quantization: asymmetric integers, per-input min/max, round to even
  for bad in (dict(), dict(symmetric=False, range="static"), dict(symmetric=False, rounding="nearest_away")):
    with pytest.raises(ValueError, match="qparams='xnnpack_qd8' needs an asymmetric integer format"):
      TensorSpec(qparams="xnnpack_qd8", **bad)


def test_unknown_keys_are_named_with_valid_keys():
  with pytest.raises(ValueError) as e:
    LayerSpec.from_dict({"weights": {"bits": 4}})
  assert "'weights'" in str(e.value) and "'weight'" in str(e.value)
  with pytest.raises(ValueError) as e:
    TensorSpec.from_dict({"bit": 4})
  assert "'bit'" in str(e.value) and "'bits'" in str(e.value)
  with pytest.raises(ValueError, match="unknown key"):
    make_config("w8a8", rules={"conv1": {"wieght": None}})


@pytest.mark.parametrize("name", ["int8", "w1a8", "w8a17", "w0", "tflite", "", 8])
def test_unknown_or_bad_preset(name):
  with pytest.raises(ValueError) as e:
    preset(name)
  assert repr(name) in str(e.value)


def test_bad_rule_pattern():
  with pytest.raises(ValueError, match="regular expression"):
    make_config("w8a8", rules={"conv[": "float32"})


def test_presets_produce_documented_specs():
  assert preset("float32").default is None
  fp16 = layer_preset("fp16")
  assert fp16.weight.format == "fp16" and fp16.act is None
  bf16 = layer_preset("bf16")
  assert bf16.weight.format == "bf16" and bf16.act.format == "bf16"
  t8 = layer_preset("tflite_int8")
  assert (t8.weight.bits, t8.weight.granularity, t8.weight.symmetric) == (8, "per_channel", True)
  assert (t8.act.bits, t8.act.granularity, t8.act.symmetric, t8.act.range) == (8, "per_tensor", False, "static")
  tb = layer_preset("tflite_int8_builtin")
  assert tb.requant == "fixed_point" and t8.requant == "fp32"
  assert (tb.add_requant, t8.add_requant) == ("fixed_point", "xnnpack")
  # the same tensors, only the requantization differs
  assert dataclasses.replace(tb, requant="fp32", add_requant="xnnpack") == t8
  td = layer_preset("tflite_dynamic")
  assert (td.weight.bits, td.weight.granularity, td.weight.symmetric) == (8, "per_channel", True)
  assert (td.act.bits, td.act.symmetric, td.act.range, td.act.qparams) == (8, False, "dynamic", "xnnpack_qd8")
  # the built-in kernels' preset: the same but for the standard grid
  assert layer_preset("tflite_dynamic_builtin") == dataclasses.replace(td, act=td.act.replace(qparams="standard"))
  wo = layer_preset("weight_only_int8")
  assert (wo.weight.bits, wo.weight.granularity, wo.weight.symmetric, wo.act) == (8, "per_channel", False, None)
  w3a5 = layer_preset("w3a5")
  assert (w3a5.weight.bits, w3a5.weight.granularity, w3a5.weight.symmetric) == (3, "per_channel", True)
  assert (w3a5.act.bits, w3a5.act.granularity, w3a5.act.symmetric, w3a5.act.range) == (
      5,
      "per_tensor",
      False,
      "dynamic",
  )
  assert layer_preset("w16").act is None and layer_preset("w16").weight.bits == 16


def test_rules_first_match_wins_and_default():
  cfg = make_config("w4a8", rules=[("^conv1$", "float32"), ("head", "w8a8"), ("conv", "w2a2")])
  assert cfg.resolve("conv1") is None
  assert cfg.resolve("conv2").weight.bits == 2
  assert cfg.resolve("head").weight.bits == 8
  assert cfg.resolve("dense1").weight.bits == 4
  assert cfg.name == "w4a8+rules"


def test_bits_are_the_only_leaves():
  cfgs = bit_grid([2, 8], [4, 16])
  assert len({structure(c) for c in cfgs}) == 1
  assert jax.tree.leaves(cfgs[0]) == [2, 4]
  assert structure(preset("tflite_int8")) != structure(preset("w8a8"))
  # fp16 weights and fp16 constants (biases, unfolded BN vectors): the unused
  # bits leaf of each float format.
  assert jax.tree.leaves(preset("fp16")) == [8, 8]
  assert jax.tree.leaves(preset("float32")) == []


def test_requant_is_validated():
  with pytest.raises(ValueError, match="requant"):
    LayerSpec(requant="double")
  with pytest.raises(ValueError, match="needs int_bias=True"):
    dataclasses.replace(layer_preset("tflite_int8"), requant="fixed_point", int_bias=False)


def test_int_bias_needs_a_static_per_tensor_activation_scale():
  """An int32 bias lives on the accumulator grid, act scale x weight scale: with a dynamic (per-batch)
  activation range that scale would change per batch, so the combination is refused."""
  base = layer_preset("tflite_int8")
  with pytest.raises(
      ValueError,
      match=r"int_bias=True needs integer weights and per-tensor integer activations" r" with range='static'",
  ):
    dataclasses.replace(base, act=dataclasses.replace(base.act, range="dynamic"), output=None)
  with pytest.raises(ValueError, match=r"int_bias=True needs"):
    dataclasses.replace(base, act=dataclasses.replace(base.act, granularity="per_channel"), output=None)
  with pytest.raises(ValueError, match=r"requant='mlas' needs int_bias=True"):
    dataclasses.replace(layer_preset("ort_int8_mlas"), int_bias=False)


def test_layer_spec_pytree_keeps_every_field():
  """Every LayerSpec field survives flatten/unflatten (what nn.scan and jit do
  to a module's spec): a field missing from the pytree's metadata would come
  back as its default inside a scanned recurrent cell."""
  spec = LayerSpec(
      weight=TensorSpec(bits=8),
      act=TensorSpec(bits=8, symmetric=False, range="static"),
      output=TensorSpec(bits=8, symmetric=False, range="static"),
      int_bias=True,
      min_weights=7,
      fold_bn=True,
      inplace_ranges=True,
      requant="fixed_point",
      add_requant="xnnpack",
      calibrated_gates=True,
      u8s8_pairs="all",
      gemm_gates=True,
  )
  leaves, tree = jax.tree_util.tree_flatten(spec)
  back = jax.tree_util.tree_unflatten(tree, leaves)
  for f in dataclasses.fields(LayerSpec):
    assert getattr(back, f.name) == getattr(spec, f.name), f.name
    default = LayerSpec().__getattribute__(f.name)
    if f.name not in ("state", "const"):
      assert getattr(spec, f.name) != default, f"the test should set {f.name} away from its default"


def test_u8s8_pairs_needs_uint8_activations_and_int8_weights():
  with pytest.raises(ValueError, match="u8s8_pairs"):
    LayerSpec(weight=TensorSpec(bits=4), act=TensorSpec(bits=8, symmetric=False), u8s8_pairs="all")
  with pytest.raises(ValueError, match="u8s8_pairs"):
    LayerSpec(weight=TensorSpec(bits=8), act=TensorSpec(bits=8, symmetric=True), u8s8_pairs="dense")
  with pytest.raises(ValueError, match="u8s8_pairs"):
    LayerSpec(weight=TensorSpec(bits=8), act=TensorSpec(bits=8, symmetric=False), u8s8_pairs="yes")


def test_derive_copies_without_validating_again():
  """``LayerSpec.derive``: a layer's own spec with some fields changed,
  usable while traced (a traced ``bits`` cannot be validated)."""
  import jax
  import jax.numpy as jnp

  base = layer_preset("ort_int8_avx2")
  d = base.derive(state=None, output=None)
  assert d.output is None and d.u8s8_pairs == base.u8s8_pairs and d.weight == base.weight
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
    base.derive(colour=1)

  @jax.jit
  def f(bits):
    s = LayerSpec(weight=TensorSpec(bits=bits, granularity="per_channel")).derive(act=base.output, u8s8_pairs="all")
    return s.weight.bits + 0

  assert int(f(jnp.int32(8))) == 8
  with pytest.raises(jax.errors.TracerBoolConversionError):  # the validated constructor reads bits
    jax.jit(lambda b: LayerSpec(weight=TensorSpec(bits=b), act=base.output, u8s8_pairs="all").weight.bits)(8)
