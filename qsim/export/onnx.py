"""Export a trained qsim model to ONNX, quantize it with ONNX Runtime's own
quantizer, and run it with ONNX Runtime: the second real runtime qsim's
presets are checked against (:mod:`qsim.export.fidelity`).

The ONNX graph is converted by ``tf2onnx`` from the same TensorFlow forward
pass the TFLite export uses (:func:`qsim.export.tflite.tf_forward`), so both
runtimes start from one function with the checkpoint's weights. It is then
pre-processed as ONNX Runtime's quantization guide asks
(``quant_pre_process``: shape inference and ORT's basic graph optimizations,
which fold a Mul/Add after a Conv into it, i.e. BatchNorm folding, and fuse
MatMul + Add into Gemm) and quantized by ORT:

=================  =================================================  ==================
mode               ONNX Runtime quantization                          qsim preset
=================  =================================================  ==================
``ort_int8``       ``quantize_static``, QDQ format, per-channel       ``ort_int8``
                   symmetric int8 weights, uint8 asymmetric
                   activations, MinMax calibration on the same
                   samples qsim calibrates on (ORT's defaults, U8S8)
``ort_dynamic``    ``quantize_dynamic``, per-tensor symmetric int8    ``ort_dynamic``
                   weights (ORT's default), uint8 activations
                   quantized on the fly (DynamicQuantizeLinear)
``ort_dynamic_u8`` the same with uint8 (asymmetric) weights, the       ``ort_dynamic_u8``
                   U8U8 form ORT's docs advise on AVX2 CPUs
``ort_float32``    no quantization (checks the export itself)         ``float32``
=================  =================================================  ==================

Kernel families (``ORT_KERNELS``): ``mlas``, the session's default (graph
optimizations on: QDQ groups fused into QLinearConv / QGemm / QLinearAdd and
run by MLAS integer kernels), and ``reference`` (graph optimizations off:
each DequantizeLinear, float op and QuantizeLinear runs as written, the
arithmetic the QDQ model defines). On x86 CPUs with AVX2 but no VNNI, MLAS
multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds
pairs of products into int16 with saturation; ORT's documentation names this
and advises ``reduce_range`` or U8U8 there. qsim does not simulate that
saturation (see BUILD_NOTES, "Deployment fidelity").

DynamicQuantizeLinear takes one range over the whole input tensor, batch
included, so a dynamic model's output for a sample depends on what it is
batched with: :class:`ORTModel` runs dynamic models one sample at a time (a
deployment serving single requests), which qsim's per-example dynamic ranges
simulate.

The runtime is the optional extra ``qsim[onnx]`` (onnxruntime, onnx, tf2onnx,
sympy; TensorFlow from ``qsim[tflite]``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile

import numpy as np

from qsim.export.tflite import tensorflow, tf_forward

ORT_MODES = {
    "ort_int8": "ort_int8",
    "ort_dynamic": "ort_dynamic",
    "ort_dynamic_u8": "ort_dynamic_u8",
    "ort_float32": "float32",
}
ORT_KERNELS = ("mlas", "reference")


def mlas_u8s8_saturates(flags: str | None = None) -> bool:
  """True where MLAS runs U8S8 GEMMs with VPMADDUBSW (saturating int16 pair sums).

  That is x86 with AVX2 and without AVX-VNNI / AVX512-VNNI. Override with the
  environment variable QSIM_ORT_U8S8_SATURATES=1 or 0 (read only when
  ``flags`` is None).

  Args:
    flags: a /proc/cpuinfo flags line; None (the default) for this machine's.

  Returns:
    Whether U8S8 GEMMs saturate on that CPU.
  """
  env = os.environ.get("QSIM_ORT_U8S8_SATURATES")
  if env is not None and flags is None:
    return env.strip().lower() in ("1", "true", "yes")
  fl = set((_cpu_flags() if flags is None else flags).split())
  return "avx2" in fl and not ({"avx_vnni", "avx512_vnni"} & fl)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
  """This machine's /proc/cpuinfo flags line, read once per process ('' where
  there is none): the fidelity run asks for every (set, kernels, mode)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return ""


def ort_preset(mode: str, kernels: str, saturates: bool | None = None) -> str:
  """The qsim preset that simulates ORT ``mode`` on ``kernels``.

  ``ort_int8`` on ``mlas`` (fused QLinearConv/QGemm) is ``ort_int8_mlas``
  (MLAS's float32 requantization of the exact accumulator); the U8S8 modes
  that run on MLAS (``ort_int8`` fused, ``ort_dynamic`` always) get the
  ``_avx2`` preset where :func:`mlas_u8s8_saturates`.

  Args:
    mode: the ORT mode, one of ``ORT_MODES`` (not checked).
    kernels: the kernel family, one of ``ORT_KERNELS`` (not checked).
    saturates: whether MLAS's U8S8 GEMMs saturate; None (the default) asks
      :func:`mlas_u8s8_saturates` about this machine.

  Returns:
    The qsim preset name.
  """
  saturates = mlas_u8s8_saturates() if saturates is None else saturates
  if saturates and ((mode == "ort_int8" and kernels == "mlas") or mode == "ort_dynamic"):
    return ORT_MODES[mode] + "_avx2"
  if mode == "ort_int8" and kernels == "mlas":
    return "ort_int8_mlas"
  return ORT_MODES[mode]


OPSET = 17


def onnx_modules():
  """``(onnx, onnxruntime, tf2onnx)``, or an ImportError naming the extra.

  Returns:
    The imported ``(onnx, onnxruntime, tf2onnx)`` modules.

  Raises:
    ImportError: one of them is not installed (they are the ``qsim[onnx]`` extra).
  """
  try:
    import onnx  # pylint: disable=g-import-not-at-top
    import onnxruntime  # pylint: disable=g-import-not-at-top
    import tf2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"ONNX Runtime export needs {e.name!r}: pip install 'qsim[onnx]'") from e
  return onnx, onnxruntime, tf2onnx


def check_ort_mode(mode: str) -> str:
  """Checks that ``mode`` is an ONNX Runtime export mode.

  Args:
    mode: the mode to check; one of ``ORT_MODES``.

  Returns:
    ``mode`` itself.

  Raises:
    ValueError: ``mode`` is not one of ``ORT_MODES``.
  """
  if mode not in ORT_MODES:
    raise ValueError(f"mode={mode!r} is not valid; choose one of {list(ORT_MODES)}")
  return mode


def check_ort_kernels(kernels: str) -> str:
  """Checks that ``kernels`` is an ONNX Runtime kernel family.

  Args:
    kernels: the kernel family to check; one of ``ORT_KERNELS`` ('mlas', 'reference').

  Returns:
    ``kernels`` itself.

  Raises:
    ValueError: ``kernels`` is not one of ``ORT_KERNELS``.
  """
  if kernels not in ORT_KERNELS:
    raise ValueError(f"kernels={kernels!r} is not valid; choose one of {list(ORT_KERNELS)}")
  return kernels


def to_onnx(model, variables: dict, example: np.ndarray):
  """The model's float inference graph as an ONNX ``ModelProto``, converted by tf2onnx.

  Args:
    model: a float qsim model of an architecture :func:`tf_forward` supports.
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``).
    example: one or more inputs (only the shape and dtype past the batch axis
      are used; integer inputs give an int32 input).

  Returns:
    The ONNX ``ModelProto`` (opset ``OPSET``, dynamic batch axis, input named ``x``).

  Raises:
    ValueError: ``model``'s architecture is not supported.
    ImportError: TensorFlow or the ``qsim[onnx]`` extra is not installed.
  """
  tf = tensorflow()
  fwd = tf_forward(model, variables)  # raises, naming the architecture, before any conversion work
  _, _, tf2onnx = onnx_modules()
  example = np.asarray(example)
  dtype = tf.int32 if np.issubdtype(example.dtype, np.integer) else tf.float32
  sig = [tf.TensorSpec([None, *example.shape[1:]], dtype, name="x")]
  proto, _ = tf2onnx.convert.from_function(tf.function(fwd, input_signature=sig), input_signature=sig, opset=OPSET)
  return proto


class _Reader:
  """ORT's CalibrationDataReader protocol over an array, one sample per
  step (as TFLite's representative dataset is fed)."""

  def __init__(self, name: str, x: np.ndarray):
    self.name, self.x, self.i = name, x, 0

  def get_next(self):
    if self.i >= len(self.x):
      return None
    self.i += 1
    return {self.name: self.x[self.i - 1 : self.i]}

  def rewind(self):
    self.i = 0


def export_onnx(
    model, variables: dict, mode: str, example: np.ndarray, *, representative: np.ndarray | None = None
) -> bytes:
  """Converts ``model`` to ONNX and quantizes it with ONNX Runtime in ``mode``.

  Args:
    model: a float qsim model (its ``quant`` is ignored: ORT quantizes).
    variables: its variables.
    mode: one of ``ORT_MODES``.
    example: one or more inputs (shape and dtype past the batch axis).
    representative: ``ort_int8`` only: the calibration inputs (e.g. the first
      100 training samples), one per calibration step.

  Returns:
    The quantized ``.onnx`` model bytes.
  """
  check_ort_mode(mode)
  if mode == "ort_int8" and (representative is None or len(representative) == 0):
    raise ValueError("mode='ort_int8' needs a representative dataset (representative=, e.g. 100 training samples)")
  onnx, _, _ = onnx_modules()
  from onnxruntime import quantization as q  # pylint: disable=g-import-not-at-top
  from onnxruntime.quantization.shape_inference import quant_pre_process  # pylint: disable=g-import-not-at-top

  proto = to_onnx(model, variables, example)
  with tempfile.TemporaryDirectory() as tmp:
    raw, pre, out = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "quant.onnx"))
    onnx.save(proto, raw)
    quant_pre_process(raw, pre)
    if mode == "ort_float32":
      out = pre
    elif mode == "ort_int8":
      reader = _Reader(proto.graph.input[0].name, np.asarray(representative, np.asarray(example).dtype))
      q.quantize_static(
          pre,
          out,
          reader,
          quant_format=q.QuantFormat.QDQ,
          per_channel=True,
          activation_type=q.QuantType.QUInt8,
          weight_type=q.QuantType.QInt8,
          calibrate_method=q.CalibrationMethod.MinMax,
      )
    else:
      weights = q.QuantType.QUInt8 if mode == "ort_dynamic_u8" else q.QuantType.QInt8
      q.quantize_dynamic(pre, out, weight_type=weights)
    with open(out, "rb") as f:
      return f.read()


@dataclasses.dataclass
class ORTModel:
  """An ONNX model and its ONNX Runtime CPU session.

  ``kernels``: ``'mlas'`` (graph optimizations on, the default session) or
  ``'reference'`` (optimizations off: QDQ nodes run unfused). A model with
  DynamicQuantizeLinear runs one sample at a time (see the module doc).
  """

  content: bytes
  kernels: str = "mlas"
  num_threads: int | None = None

  def __post_init__(self):
    check_ort_kernels(self.kernels)
    onnx, ort, _ = onnx_modules()
    opts = ort.SessionOptions()
    if self.kernels == "reference":
      opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if self.num_threads:
      opts.intra_op_num_threads = self.num_threads
    self._sess = ort.InferenceSession(self.content, opts, providers=["CPUExecutionProvider"])
    self._in = self._sess.get_inputs()[0]
    self.per_sample = any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load_from_string(self.content).graph.node)

  def outputs(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Float outputs for ``x``, ``batch_size`` at a time (one at a time for a dynamic model).

    Args:
      x: the inputs, batch first (integer inputs are fed as int32, others as float32).
      batch_size: samples per session run, >= 1 (ignored for a dynamic model).

    Returns:
      The outputs, one row per sample (an empty array for empty ``x``).

    Raises:
      ValueError: ``batch_size`` is < 1.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} is not valid; give an int >= 1")
    step = 1 if self.per_sample else batch_size
    dtype = np.int32 if np.issubdtype(np.asarray(x[:1]).dtype, np.integer) else np.float32
    out = [self._sess.run(None, {self._in.name: np.asarray(x[i : i + step], dtype)})[0] for i in range(0, len(x), step)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Top-1 predictions.

    Args:
      x: the inputs, batch first (as for :meth:`outputs`).
      batch_size: samples per session run, >= 1.

    Returns:
      The predicted class index of each sample.

    Raises:
      ValueError: ``batch_size`` is < 1.
    """
    return self.outputs(x, batch_size).argmax(-1)
