"""Quantization specs: what to quantize, how, and where.

Three frozen, validated dataclasses:

* :class:`TensorSpec`: the numerics of one tensor (format, bits, granularity,
  symmetry, calibration, rounding, static or dynamic range).
* :class:`LayerSpec`: the tensors of one layer (weight, input activation and,
  for recurrent cells, the carried state).
* :class:`QuantConfig`: a default :class:`LayerSpec` plus per-layer rules
  (regular expression on the layer name -> spec).

All three are JAX pytrees whose only leaves are the integer bit-widths; every
other field is static structure. A grid of configs that share a structure is
therefore one stacked pytree, mapped over inside one compiled program
(:mod:`qsim.quant.grid`), and changing bits never recompiles.

Validation happens in ``__post_init__`` when a field holds a Python value, so a
bad config fails where it is written, not inside a jit trace.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import numpy as np

INT = "int"
FP16 = "fp16"
BF16 = "bf16"
FP8_E4M3 = "fp8_e4m3"
FP8_E5M2 = "fp8_e5m2"
FORMATS = (INT, FP16, BF16, FP8_E4M3, FP8_E5M2)
FLOAT_FORMATS = (FP16, BF16, FP8_E4M3, FP8_E5M2)
GRANULARITIES = ("per_tensor", "per_channel")
CALIBRATIONS = ("absmax", "percentile", "mse")
ROUNDINGS = ("nearest_even", "nearest_away", "stochastic")
RANGES = ("dynamic", "static")
QPARAMS = ("standard", "xnnpack_qd8")
REQUANTS = ("fp32", "fixed_point", "mlas")
ADD_REQUANTS = ("fp32", "xnnpack", "fixed_point", "mlas")
MIN_BITS, MAX_BITS = 2, 16


def _choice(cls: str, name: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f"{cls}.{name}={value!r} is not valid; choose one of {list(choices)}")


def _is_python_number(x: Any) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_keys(cls: str, given: Mapping[str, Any], valid) -> None:
  unknown = sorted(set(given) - set(valid))
  if unknown:
    raise ValueError(f"{cls}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
  """How one tensor is quantized.

  Invariants (checked at construction):
    * ``format`` in FORMATS; for ``int``, ``2 <= bits <= 16`` (an integer);
      float formats ignore ``bits``.
    * ``granularity`` 'per_tensor' or 'per_channel'; ``axis`` (per_channel
      only) is the channel axis, ``None`` = the layer's natural channel axis
      (last axis of kernels and activations, rows of an embedding table).
      The axis is checked against the tensor's rank when the layer is traced
      (``init``), with the layer's name in the error.
    * ``symmetric``: zero maps to integer 0 and the grid is
      ``[-(2^(b-1)-1), 2^(b-1)-1]`` (at most 2^b - 1 levels); asymmetric uses
      an integer zero point and ``[-2^(b-1), 2^(b-1)-1]`` (2^b levels).
    * ``calibration``: how the clip range is chosen from data: 'absmax',
      'percentile' (``percentile`` in (50, 100]) or 'mse' (the clip ratio in
      ``[mse_min_ratio, 1]`` of absmax, ``mse_steps`` candidates, that
      minimises the squared error of the quantized tensor).
    * ``rounding``: 'nearest_even', 'nearest_away' (ties away from zero,
      as ``std::round`` in TFLite's built-in QUANTIZE; integer formats only)
      or 'stochastic' (unbiased, ``floor(x + U[0, 1))``; needs a 'quant'
      PRNG stream).
    * ``range``: 'dynamic' (from the tensor itself at run time) or 'static'
      (from ranges calibrated beforehand and stored in the 'quant_stats'
      variable collection; activations only).
    * ``qparams``: how a range becomes a grid. 'standard': ``s = (hi - lo) /
      (2^b - 1)``, ``z = round(qmin - lo / s)``, ``q = round(x / s) + z``.
      'xnnpack_qd8' (asymmetric dynamic integers only): XNNPACK's dynamic
      quantization of an operator input (qd8), ``inv = (2^b - 1) / (hi -
      lo)`` in float32, the zero point taken from the end of the range with
      the smaller error (``qmin - lo inv`` or ``qmax - hi inv``, gemmlowp's
      nudge) and rounded, ``q = rint(x inv) + z``, dequantized with ``s =
      1 / inv`` (traced against TFLite's XNNPACK delegate: BUILD_NOTES,
      "Deployment fidelity").
  """

  format: str = INT
  bits: Any = 8
  granularity: str = "per_tensor"
  axis: int | None = None
  symmetric: bool = True
  calibration: str = "absmax"
  percentile: float = 99.99
  mse_steps: int = 20
  mse_min_ratio: float = 0.2
  rounding: str = "nearest_even"
  range: str = "dynamic"
  qparams: str = "standard"

  def __post_init__(self):
    cls = "TensorSpec"
    _choice(cls, "qparams", self.qparams, QPARAMS)
    if self.qparams == "xnnpack_qd8" and not (
        self.format == INT
        and not self.symmetric
        and self.range == "dynamic"
        and self.rounding == "nearest_even"
        and self.calibration == "absmax"
    ):
      raise ValueError(
          f"{cls}.qparams='xnnpack_qd8' needs an asymmetric integer format with range='dynamic',"
          f" calibration='absmax' and rounding='nearest_even' (XNNPACK's dynamic quantization); got"
          f" format={self.format!r}, symmetric={self.symmetric!r}, range={self.range!r},"
          f" calibration={self.calibration!r}, rounding={self.rounding!r}"
      )
    _choice(cls, "format", self.format, FORMATS)
    _choice(cls, "granularity", self.granularity, GRANULARITIES)
    _choice(cls, "calibration", self.calibration, CALIBRATIONS)
    _choice(cls, "rounding", self.rounding, ROUNDINGS)
    _choice(cls, "range", self.range, RANGES)
    if self.rounding == "nearest_away" and self.format != INT:
      raise ValueError(
          f"{cls}.rounding='nearest_away' is not valid for format={self.format!r}; it rounds integer"
          " grids only (use 'nearest_even' or 'stochastic')"
      )
    if self.format == INT and _is_python_number(self.bits):
      if int(self.bits) != self.bits or not (MIN_BITS <= self.bits <= MAX_BITS):
        raise ValueError(
            f"{cls}.bits={self.bits!r} is not valid; integer formats take an integer in [{MIN_BITS}, {MAX_BITS}]"
        )
    elif self.format == INT and isinstance(self.bits, (bool, str, type(None))):
      raise ValueError(
          f"{cls}.bits={self.bits!r} is not valid; integer formats take an integer in [{MIN_BITS}, {MAX_BITS}]"
      )
    if self.axis is not None and (not isinstance(self.axis, (int, np.integer)) or isinstance(self.axis, bool)):
      raise ValueError(f"{cls}.axis={self.axis!r} is not valid; give an int or None")
    if self.axis is not None and self.granularity != "per_channel":
      raise ValueError(f"{cls}.axis={self.axis!r} is only meaningful with granularity='per_channel'")
    if not 50.0 < float(self.percentile) <= 100.0:
      raise ValueError(f"{cls}.percentile={self.percentile!r} is not valid; valid range is (50, 100]")
    if not (isinstance(self.mse_steps, int) and 2 <= self.mse_steps <= 1000):
      raise ValueError(f"{cls}.mse_steps={self.mse_steps!r} is not valid; valid range is [2, 1000]")
    if not 0.0 < float(self.mse_min_ratio) < 1.0:
      raise ValueError(f"{cls}.mse_min_ratio={self.mse_min_ratio!r} is not valid; valid range is (0, 1)")
    if self.format in (FP16, BF16) and self.range == "static":
      raise ValueError(
          f"{cls}.range='static' is not valid for format={self.format!r}: fp16"
          " and bf16 are a dtype round trip with no range; use range='dynamic'"
      )

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
    """Builds a spec from a mapping; unknown keys raise ``ValueError``.

    Args:
      d: ``{field name: value}`` for any of the TensorSpec fields; missing
        fields take their defaults.

    Returns:
      The validated TensorSpec.

    Raises:
      ValueError: an unknown key, or a field value that is not valid.
    """
    _check_keys("TensorSpec", d, [f.name for f in dataclasses.fields(cls)])
    return cls(**d)

  def replace(self, **changes) -> "TensorSpec":
    """A copy with ``changes``, validated again.

    Args:
      **changes: new values of TensorSpec fields.

    Returns:
      The new TensorSpec.

    Raises:
      ValueError: a changed field makes the spec not valid.
    """
    return dataclasses.replace(self, **changes)

  @property
  def is_int(self) -> bool:
    return self.format == INT

  @property
  def needs_rng(self) -> bool:
    return self.rounding == "stochastic"


def _tensor_flatten(s: TensorSpec):
  meta = tuple(getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "bits")
  return (s.bits,), meta


def _tensor_unflatten(meta, children):
  # Leaves may be tracers, stacked arrays or sentinels: skip validation.
  s = object.__new__(TensorSpec)
  names = [f.name for f in dataclasses.fields(TensorSpec) if f.name != "bits"]
  for name, value in zip(names, meta):
    object.__setattr__(s, name, value)
  object.__setattr__(s, "bits", children[0])
  return s


jax.tree_util.register_pytree_node(TensorSpec, _tensor_flatten, _tensor_unflatten)


def _as_tensor_spec(value: Any, where: str) -> TensorSpec | None:
  if value is None or isinstance(value, TensorSpec):
    return value
  if isinstance(value, Mapping):
    return TensorSpec.from_dict(value)
  raise ValueError(f"{where}={value!r} is not valid; give a TensorSpec, a dict of its fields, or None")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerSpec:
  """The quantized tensors of one layer (``None`` = that tensor stays float).

  Attributes:
    weight: the kernel (Dense, Conv, recurrent input and hidden kernels) or the
      embedding table.
    act: the layer's input activation (for recurrent cells: the input and the
      hidden state where they enter the matmuls).
    state: recurrent cells only: the new carry (h, and c for LSTM) is
      quantized before it is passed to the next step, as an integer RNN
      runtime stores it.
    output: the tensors an integer runtime stores between its ops, each
      with its own calibrated range: the output points of a model
      (``qsim.nn.Output``: residual ADDs, pooled features, convolution
      outputs that feed an ADD, the ``logits``), the output of a BatchNorm
      (with its fused activation; after a folded conv, that conv's output)
      and the product inside an unfolded one. ``None``: those tensors stay
      float (only the layers' inputs are quantized).
    int_bias: Dense/Conv biases are rounded to int32 at the scale
      ``act scale * weight scale`` (per output channel) and added to the
      integer accumulator, as TFLite's integer kernels do; a bias that
      needs more than 2^30 steps widens its channel's weight scale instead
      (TFLite's converter; measured on a GRU's first step, BUILD_NOTES;
      ONNX Runtime's rule for such a bias is not measured). Needs integer
      weights and static integer activations (the scale must not depend on
      the example).
    min_weights: a Dense/Conv layer whose kernel has fewer elements runs in
      float (weights and activations), as TFLite's dynamic-range converter
      leaves kernels under 1,024 elements float and CoreML's 8-bit
      conversion convolutions under 4,096.
    const: the constant operands that are not kernels, as the converter
      stores them: Dense/Conv biases (unless ``int_bias`` puts them on the
      accumulator grid) and the multiplier and offset vectors of a BatchNorm
      that cannot be folded (TFLite int8: per-tensor asymmetric int8 with
      the vector's own range; float16: fp16). Always its own (dynamic) range.
    fold_bn: a BatchNorm that follows a Conv/Dense is folded into the
      kernel and bias before they are quantized (kernel * gamma/sqrt(var+eps)
      per output channel, bias (b - mean) * that + beta), as TFLite's
      converter rewrites the graph; inference only (training keeps batch
      statistics).
    inplace_ranges: a stored tensor that an elementwise ADD/MUL overwrites
      in place (its only consumer) is calibrated on the union of its own
      range and that op's output, as TFLite's calibrator records it (its
      float interpreter runs such ops in place and logs an op's inputs after
      the op ran; measured in BUILD_NOTES, "Deployment fidelity").
    requant: how an int32 accumulator becomes the next stored int8 tensor
      (needs ``int_bias`` and ``output``): 'fp32' (``(acc + bias) *
      float32(in_scale * w_scale / out_scale)``, one rounding, half to even:
      TFLite's XNNPACK delegate) or 'fixed_point' (TFLite's built-in kernels:
      a Q31 multiplier and shift, two roundings, see
      :mod:`qsim.quant.fixed_point`; also the built-in MUL and MEAN recipes)
      or 'mlas' (ONNX Runtime's fused QLinearConv / QGemm on MLAS: the exact
      int32 accumulator times ``float32(in_scale * w_scale[c]) /
      out_scale``, in that order, rounded half to even, as
      MlasRequantizeOutput does; 'fp32' reaches the same value through
      float arithmetic on dequantized operands, so it can round the other
      way on a near-tie, and one such intermediate step can move a logit by
      more than one step). 'fixed_point' and 'mlas' apply to Dense/Conv
      layers, an unfolded BatchNorm's MUL and the global average pool
      ('fixed_point': the built-in MUL and MEAN recipes; 'mlas':
      QLinearMul, the integer product times ``float32(s_a s_b / s_out)``
      plus the uint8 zero point, rounded half to even, and
      QLinearGlobalAveragePool, the integer sum times ``float32(s_in /
      (s_out N))``), and 'fixed_point' to a recurrent cell's MUL; the ADD
      has its own ``add_requant``.
    add_requant: how an int8 ADD of two stored tensors (a residual ADD, the
      ``+ offset`` of an unfolded BatchNorm; :func:`qsim.nn.add`) becomes the
      next stored tensor (needs an int8 ``output``): 'fp32' (the float sum
      of the dequantized operands, rounded once, half to even) or
      'xnnpack' (XNNPACK's qs8 VADD: 21-bit integer multipliers, one
      rounding half up) or 'fixed_point' (TFLite's built-in ADD: Q31
      multipliers, three roundings) or 'mlas' (ONNX Runtime's QLinearAdd
      with AVX2: float32 ratios and fused multiply-adds on the uint8
      values, one rounding half to even); see
      :func:`qsim.quant.fixed_point.int8_add`. Inference only; the gradient
      is the float sum's.
    calibrated_gates: in a recurrent cell's int8 graph (``output`` set), the
      sigmoid and tanh outputs are stored on their own calibrated ranges, as
      ONNX Runtime's QDQ quantizer calibrates them; False: on TFLite's fixed
      int8 grids (LOGISTIC 1/256 with zero point -128, TANH 1/128).
    u8s8_pairs: 'all' (Dense and Conv) or 'dense' (Dense only; 'none': off):
      the accumulators as ONNX Runtime's MLAS computes
      uint8 x int8 (U8S8) GEMMs on x86 CPUs with AVX2 and without VNNI
      (VPMADDUBSW): the raw uint8 activations (int8 grid + 128, zero point
      included) times the int8 weights, each adjacent pair of products
      along the reduction axis summed into a saturating int16, the zero
      point subtracted afterwards (exact). Reduction order: Dense the input
      features; Conv the NHWC im2col order (kh, kw, cin), padding holding
      the zero point (fused QLinearConv; ORT's ConvInteger, the dynamic
      quantizer's conv, does not saturate: 'dense'). Forward only (the
      gradient is the unsaturated one).
    gemm_gates: in a recurrent cell's int8 graph, the cell is ONNX Runtime's
      QDQ graph: each gate sum ``x-side + h @ W_h`` is one Gemm whose C input
      is the stored x-side output (ORT's MatMulAddFusion), so the h-side
      matmul is not stored on its own; a recurrent matmul with a bias (GRU's
      hn) quantizes that bias to int32 at ``h scale x weight scale``, where
      the zero initial state has scale 1 (so at step 0 the bias lands on the
      weight's grid). False: TFLite's graph (every matmul output stored).
  """

  weight: TensorSpec | None = None
  act: TensorSpec | None = None
  state: TensorSpec | None = None
  output: TensorSpec | None = None
  const: TensorSpec | None = None
  int_bias: bool = False
  min_weights: int = 0
  fold_bn: bool = False
  inplace_ranges: bool = False
  requant: str = "fp32"
  add_requant: str = "fp32"
  calibrated_gates: bool = False
  u8s8_pairs: str = "none"
  gemm_gates: bool = False

  def __post_init__(self):
    for name in _LAYER_TENSORS:
      object.__setattr__(self, name, _as_tensor_spec(getattr(self, name), f"LayerSpec.{name}"))
    if self.weight is not None and self.weight.range == "static":
      raise ValueError(
          "LayerSpec.weight.range='static' is not valid; weights are known at"
          " conversion time and always use their own range ('dynamic')"
      )
    if self.const is not None and self.const.range == "static":
      raise ValueError(
          "LayerSpec.const.range='static' is not valid; constants are known at"
          " conversion time and always use their own range ('dynamic')"
      )
    for flag in ("int_bias", "fold_bn", "inplace_ranges", "calibrated_gates", "gemm_gates"):
      if not isinstance(getattr(self, flag), bool):
        raise ValueError(f"LayerSpec.{flag}={getattr(self, flag)!r} is not valid; give True or False")
    _choice("LayerSpec", "requant", self.requant, REQUANTS)
    _choice("LayerSpec", "add_requant", self.add_requant, ADD_REQUANTS)
    _choice("LayerSpec", "u8s8_pairs", self.u8s8_pairs, U8S8_PAIRS)
    if self.u8s8_pairs != "none" and not (
        self.act is not None
        and self.act.is_int
        and self.act.bits == 8
        and not self.act.symmetric
        and self.act.granularity == "per_tensor"
        and self.weight is not None
        and self.weight.is_int
        and self.weight.bits == 8
        and self.weight.symmetric
    ):
      raise ValueError(
          "LayerSpec.u8s8_pairs needs per-tensor asymmetric 8-bit activations (ORT's uint8)"
          f" and symmetric 8-bit weights (int8); got weight={self.weight}, act={self.act}"
      )
    if self.requant != "fp32" and not (self.int_bias and self.output is not None):
      raise ValueError(
          f"LayerSpec.requant={self.requant!r} needs int_bias=True and an int8 output spec (the"
          " accumulator scale and every stored tensor's scale); use requant='fp32' otherwise"
      )
    if self.inplace_ranges and self.output is not None and self.output.calibration != "absmax":
      raise ValueError(
          f"LayerSpec.inplace_ranges=True needs output.calibration='absmax' (a union of min/max ranges);"
          f" got {self.output.calibration!r}"
      )
    if not (
        isinstance(self.min_weights, (int, np.integer))
        and not isinstance(self.min_weights, bool)
        and self.min_weights >= 0
    ):
      raise ValueError(f"LayerSpec.min_weights={self.min_weights!r} is not valid; give an int >= 0")
    if self.int_bias and not (
        self.weight is not None
        and self.weight.is_int
        and self.act is not None
        and self.act.is_int
        and self.act.range == "static"
        and self.act.granularity == "per_tensor"
    ):
      raise ValueError(
          "LayerSpec.int_bias=True needs integer weights and per-tensor integer activations"
          " with range='static' (the bias scale is act scale * weight scale);"
          f" got weight={self.weight}, act={self.act}"
      )
    if self.add_requant != "fp32" and not (self.output is not None and self.output.is_int):
      raise ValueError(
          f"LayerSpec.add_requant={self.add_requant!r} needs an integer output spec (the ADD's operands"
          " and result are stored tensors); use add_requant='fp32' otherwise"
      )

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LayerSpec":
    """Builds a spec from a mapping; unknown keys raise ``ValueError``.

    Args:
      d: ``{field name: value}`` for any of the LayerSpec fields; tensor
        fields take a TensorSpec, a dict of its fields, or None; missing fields
        take their defaults.

    Returns:
      The validated LayerSpec.

    Raises:
      ValueError: an unknown key, or a field value that is not valid.
    """
    _check_keys("LayerSpec", d, [f.name for f in dataclasses.fields(cls)])
    return cls(**d)

  def derive(self, **changes) -> "LayerSpec":
    """A copy with ``changes`` and every other field as is, not validated again.

    For a spec a layer derives from its own, validated one while it is traced
    (its ``bits`` may then be traced arrays, which validation cannot read).

    Args:
      **changes: new values of LayerSpec fields (tensor fields must already be
        TensorSpecs or None).

    Returns:
      The new LayerSpec.

    Raises:
      ValueError: a key of ``changes`` is not a LayerSpec field.
    """
    s = object.__new__(LayerSpec)
    for f in dataclasses.fields(self):
      object.__setattr__(s, f.name, changes.pop(f.name, getattr(self, f.name)))
    if changes:
      raise ValueError(f"LayerSpec.derive: unknown field(s) {sorted(changes)}")
    return s

  def tensors(self) -> tuple[TensorSpec | None, ...]:
    """Every tensor spec of the layer (weight, act, state, output, const).

    Returns:
      ``(weight, act, state, output, const)``, each a TensorSpec or None.
    """
    return tuple(getattr(self, name) for name in _LAYER_TENSORS)

  @property
  def is_float(self) -> bool:
    return all(t is None for t in self.tensors())


U8S8_PAIRS = ("none", "all", "dense")
_LAYER_TENSORS = ("weight", "act", "state", "output", "const")
_LAYER_META = (
    "int_bias",
    "min_weights",
    "fold_bn",
    "inplace_ranges",
    "requant",
    "add_requant",
    "calibrated_gates",
    "gemm_gates",
    "u8s8_pairs",
)


def _layer_flatten(s: LayerSpec):
  return s.tensors(), tuple(getattr(s, name) for name in _LAYER_META)


def _layer_unflatten(meta, children):
  s = object.__new__(LayerSpec)
  for name, value in zip(_LAYER_TENSORS, children):
    object.__setattr__(s, name, value)
  for name, value in zip(_LAYER_META, meta):
    object.__setattr__(s, name, value)
  return s


jax.tree_util.register_pytree_node(LayerSpec, _layer_flatten, _layer_unflatten)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
  """A whole model's quantization: per-layer rules with a default.

  ``rules`` is a tuple of ``(pattern, LayerSpec | None)``; the first pattern
  that ``re.search``-matches a layer's name (its module path joined by '/',
  e.g. ``'block1/conv2'``) decides that layer, otherwise ``default`` does.
  ``None`` keeps a layer in float. ``name`` is a label for tables and plots.
  """

  default: LayerSpec | None = None
  rules: tuple[tuple[str, LayerSpec | None], ...] = ()
  name: str = ""

  def __post_init__(self):
    if isinstance(self.default, Mapping):
      object.__setattr__(self, "default", LayerSpec.from_dict(self.default))
    if self.default is not None and not isinstance(self.default, LayerSpec):
      raise ValueError(
          f"QuantConfig.default={self.default!r} is not valid; give a LayerSpec, a dict of its fields, or None"
      )
    rules = []
    for item in tuple(self.rules):
      if not (isinstance(item, tuple) and len(item) == 2):
        raise ValueError(f"QuantConfig.rules entry {item!r} is not valid; give (pattern, LayerSpec | None) pairs")
      pattern, spec = item
      try:
        re.compile(pattern)
      except (re.error, TypeError) as e:
        raise ValueError(f"QuantConfig.rules pattern {pattern!r} is not a valid regular expression: {e}") from None
      if isinstance(spec, Mapping):
        spec = LayerSpec.from_dict(spec)
      if spec is not None and not isinstance(spec, LayerSpec):
        raise ValueError(
            f"QuantConfig.rules[{pattern!r}]={spec!r} is not valid; give a LayerSpec, a dict of its fields, or None"
        )
      rules.append((pattern, spec))
    object.__setattr__(self, "rules", tuple(rules))

  def resolve(self, layer_name: str) -> LayerSpec | None:
    """The spec of the layer called ``layer_name`` (None = float).

    Args:
      layer_name: the layer's module path joined by '/', e.g. ``'block1/conv2'``.

    Returns:
      The spec of the first rule whose pattern ``re.search``-matches
      ``layer_name``, otherwise ``default``; None keeps the layer float.
    """
    for pattern, spec in self.rules:
      if re.search(pattern, layer_name):
        return spec
    return self.default

  def layer_specs(self):
    """All LayerSpecs this config can hand out (default first).

    Returns:
      A list: ``default``, then each rule's spec in rule order (entries may be
      None).
    """
    return [self.default] + [spec for _, spec in self.rules]

  def replace(self, **changes) -> "QuantConfig":
    """A copy with ``changes``, validated again.

    Args:
      **changes: new values of ``default``, ``rules`` or ``name``.

    Returns:
      The new QuantConfig.

    Raises:
      ValueError: a changed field makes the config not valid.
    """
    return dataclasses.replace(self, **changes)


def _config_flatten(c: QuantConfig):
  patterns = tuple(p for p, _ in c.rules)
  specs = tuple(s for _, s in c.rules)
  return (c.default, specs), (patterns, c.name)


def _config_unflatten(meta, children):
  patterns, name = meta
  default, specs = children
  c = object.__new__(QuantConfig)
  object.__setattr__(c, "default", default)
  object.__setattr__(c, "rules", tuple(zip(patterns, specs)))
  object.__setattr__(c, "name", name)
  return c


jax.tree_util.register_pytree_node(QuantConfig, _config_flatten, _config_unflatten)


def structure(config: QuantConfig | None):
  """The static part of a config: configs with equal structure stack.

  The name is a label, not structure: it is left out.

  Args:
    config: a config, or None (float).

  Returns:
    The config's pytree structure (a ``jax.tree_util.PyTreeDef``) with the
    name cleared, or None when ``config`` is None.
  """
  if config is None:
    return None
  return jax.tree_util.tree_structure(config.replace(name=""))
