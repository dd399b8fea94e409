"""Named presets that mirror real deployments, and the config builder.

========================  ====================================================
preset                    what it is
========================  ====================================================
``float32``               no quantization (every layer float)
``fp16``                  fp16 weights, biases and BatchNorm constants
                          (BatchNorm folded first), float activations
                          (TFLite float16 / CoreML fp16 weights)
``bf16``                  bf16 weights and activations (TPU bf16 inference)
``tflite_int8``           TFLite full integer: BatchNorm folded into the
                          conv before quantizing, int8 symmetric per-channel
                          absmax weights, int8 asymmetric per-tensor *static*
                          activations (calibrated ranges), int32 biases
                          at scale act x weight, every stored tensor int8
                          (residual ADDs, unfolded BatchNorm as int8
                          MUL/ADD with int8 constants, pooled features,
                          logits; a tensor an in-place ADD/MUL overwrites
                          calibrated on the union with that op's output;
                          ADDs with XNNPACK's integer multipliers,
                          ``add_requant='xnnpack'``), as the TFLite
                          converter and its default (XNNPACK) int8 kernels
                          compute
``tflite_int8_builtin``   ``tflite_int8`` requantized as TFLite's built-in
                          kernels do (no XNNPACK delegate): Q31 fixed-point
                          multiplier and shift, rounded twice; the built-in
                          MUL, MEAN and ADD recipes (``requant`` and
                          ``add_requant='fixed_point'``);
                          its input QUANTIZE rounds ties to even, as
                          XNNPACK's (measured: benchmarks/rounding_ties.py)
``tflite_dynamic``        TFLite dynamic range: int8 symmetric per-channel
                          weights, int8 asymmetric per-tensor activations
                          quantized on the fly (dynamic) per example as
                          its default (XNNPACK) kernels do (inverse scale,
                          nudged zero point: ``qparams='xnnpack_qd8'``);
                          BatchNorm folded first; layers with kernels
                          under 1,024 weights stay float, as the converter
                          leaves them
``tflite_dynamic_builtin`` ``tflite_dynamic`` with qsim's standard grid
                          (``round(x / s) + z``), as the built-in hybrid
                          kernels run it (close, not exact: BUILD_NOTES)
``ort_int8``              ONNX Runtime static QDQ (``quantize_static``
                          defaults): as ``tflite_int8`` (folded BatchNorm,
                          per-channel int8 weights, static asymmetric 8-bit
                          activations, int32 biases, 8-bit ADD/MUL
                          outputs and logits) without TFLite's in-place
                          calibration ranges (ORT calibrates every tensor
                          as its own graph output); ORT's uint8 grid is
                          this int8 grid shifted by 128
``ort_dynamic``           ONNX Runtime ``quantize_dynamic`` defaults:
                          per-tensor symmetric int8 weights, asymmetric
                          8-bit activations quantized on the fly
                          (BatchNorm folded by ORT's pre-processing)
``ort_int8_mlas``         ``ort_int8`` as ORT's fused QLinearConv/QGemm
                          (its default session, MLAS kernels) requantize:
                          the exact int32 accumulator times one float32
                          multiplier, rounded half to even
                          (``requant='mlas'``), and as its QLinearAdd,
                          QLinearMul and QLinearGlobalAveragePool compute
                          (``add_requant='mlas'``; x86 with AVX2/FMA);
                          ``ort_int8`` is the QDQ
                          graph run as written (float ops on dequantized
                          tensors, the reference kernels)
``ort_int8_avx2``         ``ort_int8_mlas`` as ORT's fused QLinearConv/QGemm
                          compute it on x86 CPUs with AVX2 and without
                          VNNI (e.g. AMD EPYC Zen 1-3, Intel Haswell to
                          Skylake): MLAS's VPMADDUBSW sums adjacent
                          uint8 x int8 products into saturating int16
                          (``LayerSpec.u8s8_pairs``)
``ort_dynamic_avx2``      ``ort_dynamic`` on such CPUs (MatMulInteger runs
                          on MLAS U8S8 and saturates; ConvInteger does not)
``ort_dynamic_u8``        the same with per-tensor asymmetric 8-bit weights
                          (ORT's U8U8 form)
``weight_only_int8``      CoreML-style weight-only: int8 asymmetric (affine
                          min/max) per-channel weights, float activations
``wXaY`` (X, Y in 2..16)  int-X symmetric per-channel absmax weights, int-Y
                          asymmetric per-tensor dynamic activations
``wX`` (X in 2..16)       int-X symmetric per-channel weights only
========================  ====================================================
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from qsim.quant.spec import LayerSpec, MAX_BITS, MIN_BITS, QuantConfig, TensorSpec

STUDY_PRESETS = ("tflite_int8", "tflite_dynamic", "weight_only_int8", "fp16")  # the study's four deployments


def int_weight(bits: int, **kw) -> TensorSpec:
  """Symmetric per-channel absmax integer weights.

  Args:
    bits: the integer bit-width, in [2, 16].
    **kw: other TensorSpec fields (e.g. ``calibration``, ``axis``).

  Returns:
    The TensorSpec.

  Raises:
    ValueError: ``bits`` or a field of ``kw`` is not valid.
  """
  return TensorSpec(bits=bits, granularity="per_channel", symmetric=True, **kw)


def int_act(bits: int, **kw) -> TensorSpec:
  """Asymmetric per-tensor integer activations (dynamic unless told).

  Args:
    bits: the integer bit-width, in [2, 16].
    **kw: other TensorSpec fields (e.g. ``range='static'``, ``qparams``).

  Returns:
    The TensorSpec.

  Raises:
    ValueError: ``bits`` or a field of ``kw`` is not valid.
  """
  return TensorSpec(bits=bits, granularity="per_tensor", symmetric=False, **kw)


# Full-integer static deployments share these fields: per-channel int8 weights, static asymmetric int8
# activations and stored outputs, int8 constants, int32 biases, BatchNorm folded.
_INT8_STATIC = LayerSpec(
    weight=int_weight(8),
    act=int_act(8, range="static"),
    output=int_act(8, range="static"),
    const=int_act(8),
    int_bias=True,
    fold_bn=True,
)
_ORT_INT8 = dataclasses.replace(_INT8_STATIC, calibrated_gates=True, gemm_gates=True)

_FIXED: dict[str, LayerSpec | None] = {
    "float32": None,
    "fp16": LayerSpec(weight=TensorSpec(format="fp16"), const=TensorSpec(format="fp16"), fold_bn=True),
    "bf16": LayerSpec(weight=TensorSpec(format="bf16"), act=TensorSpec(format="bf16")),
    "tflite_int8": dataclasses.replace(_INT8_STATIC, inplace_ranges=True, add_requant="xnnpack"),
    "tflite_int8_builtin": dataclasses.replace(
        _INT8_STATIC, inplace_ranges=True, requant="fixed_point", add_requant="fixed_point"
    ),
    "tflite_dynamic": LayerSpec(
        weight=int_weight(8), act=int_act(8, qparams="xnnpack_qd8"), min_weights=1024, fold_bn=True
    ),
    "tflite_dynamic_builtin": LayerSpec(weight=int_weight(8), act=int_act(8), min_weights=1024, fold_bn=True),
    "ort_int8": _ORT_INT8,
    "ort_dynamic": LayerSpec(
        weight=TensorSpec(bits=8, granularity="per_tensor", symmetric=True), act=int_act(8), fold_bn=True
    ),
    "ort_int8_mlas": dataclasses.replace(_ORT_INT8, requant="mlas", add_requant="mlas"),
    # the same ORT graph (gemm_gates: MatMulAddFusion does not depend on the CPU) with MLAS's saturation
    "ort_int8_avx2": dataclasses.replace(_ORT_INT8, requant="mlas", add_requant="mlas", u8s8_pairs="all"),
    "ort_dynamic_avx2": LayerSpec(
        weight=TensorSpec(bits=8, granularity="per_tensor", symmetric=True),
        act=int_act(8),
        fold_bn=True,
        u8s8_pairs="dense",
    ),
    "ort_dynamic_u8": LayerSpec(
        weight=TensorSpec(bits=8, granularity="per_tensor", symmetric=False), act=int_act(8), fold_bn=True
    ),
    "weight_only_int8": LayerSpec(weight=TensorSpec(bits=8, granularity="per_channel", symmetric=False)),
}
_WXAY = re.compile(r"^w(\d+)(?:a(\d+))?$")


def bits_name(weight_bits: int, act_bits: int | None) -> str:
  """The preset name of an integer bit pair.

  ``wXaY``, or ``wX`` when activations stay float (``act_bits`` None). The one
  place such names are built; :func:`parse_bits` is the one place they are
  read.

  Args:
    weight_bits: the weight bit-width X (not range-checked here).
    act_bits: the activation bit-width Y, or None for float activations.

  Returns:
    The name, e.g. ``'w4a8'`` or ``'w4'``.
  """
  return f"w{int(weight_bits)}" if act_bits is None else f"w{int(weight_bits)}a{int(act_bits)}"


def parse_bits(name: str) -> tuple[int, int | None] | None:
  """``(weight_bits, act_bits or None)`` of a ``wXaY`` / ``wX`` preset name.

  Bits are not range-checked: see :func:`layer_preset`.

  Args:
    name: a preset name (any value; non-strings give None).

  Returns:
    ``(weight_bits, act_bits)`` with ``act_bits`` None for ``wX``, or None
    when ``name`` is not of that form.
  """
  m = _WXAY.match(name) if isinstance(name, str) else None
  if not m:
    return None
  w, a = m.groups()
  return int(w), None if a is None else int(a)


def preset_names() -> list[str]:
  """The names of the presets, for messages and listings.

  Returns:
    The fixed preset names in table order, then the patterns ``'wXaY'`` and
    ``'wX'``.
  """
  return list(_FIXED) + ["wXaY", "wX"]


def layer_preset(name: str) -> LayerSpec | None:
  """The LayerSpec of a named preset (``None`` = float).

  Args:
    name: a fixed preset name (see the module table) or ``wXaY`` / ``wX``
      with X, Y in [2, 16].

  Returns:
    The preset's LayerSpec, or None for ``'float32'``.

  Raises:
    ValueError: ``name`` is not a string, not a known preset, or has bits
      outside [2, 16].
  """
  if not isinstance(name, str):
    raise ValueError(f"preset={name!r} is not valid; give one of {preset_names()}")
  if name in _FIXED:
    return _FIXED[name]
  bits = parse_bits(name)
  if bits is not None:
    for b in bits:
      if b is not None and not MIN_BITS <= b <= MAX_BITS:
        raise ValueError(f"preset={name!r}: bits={b} is not valid; bits must be in [{MIN_BITS}, {MAX_BITS}]")
    w, a = bits
    return LayerSpec(weight=int_weight(w), act=None if a is None else int_act(a))
  raise ValueError(
      f"preset={name!r} is not a known preset; valid presets are {preset_names()} (X, Y in {MIN_BITS}..{MAX_BITS})"
  )


def _layer(value: Any, where: str) -> LayerSpec | None:
  if value is None or isinstance(value, LayerSpec):
    return value
  if isinstance(value, str):
    return layer_preset(value)
  if isinstance(value, Mapping):
    return LayerSpec.from_dict(value)
  raise ValueError(
      f"{where}={value!r} is not valid; give a preset name, a LayerSpec, a dict of LayerSpec fields, or None"
  )


def make_config(
    default: Any = "float32",
    rules: Mapping[str, Any] | Sequence[tuple[str, Any]] = (),
    name: str | None = None,
) -> QuantConfig:
  """Builds a :class:`QuantConfig` from presets, specs or dicts.

  Args:
    default: the spec of layers no rule matches: a preset name, a LayerSpec,
      a dict of LayerSpec fields, or None (float).
    rules: ``{pattern: spec}`` (or pairs), first match wins; e.g.
      ``{'^conv1$|^head$': 'float32'}`` keeps the first and last layer float.
    name: label for tables; default: the preset name when ``default`` is one.

  Returns:
    The config.
  """
  items = rules.items() if isinstance(rules, Mapping) else rules
  built = tuple((p, _layer(v, f"rules[{p!r}]")) for p, v in items)
  if name is None:
    name = default if isinstance(default, str) else "custom"
    if built:
      name += "+rules"
  return QuantConfig(default=_layer(default, "default"), rules=built, name=name)


def preset(name: str) -> QuantConfig:
  """A whole-model config from a preset name (see the module table).

  Args:
    name: a preset name, as :func:`layer_preset` takes.

  Returns:
    A QuantConfig with that preset as its default, no rules, named ``name``.

  Raises:
    ValueError: ``name`` is not a valid preset.
  """
  return make_config(name)


def bit_grid_names(weight_bits: Sequence[int], act_bits: Sequence[int | None]) -> list[str]:
  """The preset names of a W x A grid, the one place a grid is built.

  Args:
    weight_bits: the weight bit-widths X.
    act_bits: the activation bit-widths Y (None: float activations, a ``wX`` name).

  Returns:
    One name per ``(w, a)`` pair, weight bits outer, activation bits inner.
  """
  return [bits_name(w, a) for w in weight_bits for a in act_bits]


def bit_grid(weight_bits: Sequence[int], act_bits: Sequence[int | None]) -> list[QuantConfig]:
  """The ``wXaY`` configs for every pair (``None`` activation = weight-only).

  Args:
    weight_bits: the weight bit-widths X, each in [2, 16].
    act_bits: the activation bit-widths Y, each in [2, 16] or None.

  Returns:
    One config per ``(w, a)`` pair, weight bits outer, activation bits inner.

  Raises:
    ValueError: a bit-width outside [2, 16].
  """
  return [preset(n) for n in bit_grid_names(weight_bits, act_bits)]
