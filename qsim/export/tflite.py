"""Export a trained qsim model to TFLite, and run it with the TFLite interpreter.

The exported graph is the model's own forward pass written in TensorFlow ops
with the checkpoint's weights as constants (same layout: NHWC activations,
HWIO kernels, (in, out) dense kernels; BatchNorm in inference form), so the
TFLite converter sees exactly the function qsim simulates. Modes, as the
study deployed (and the qsim preset that simulates each):

==========  =========================================  ==================
mode        TFLite converter setting                    qsim preset
==========  =========================================  ==================
``int8``    full integer, representative dataset of     ``tflite_int8``
            N training samples (default 100)
``dynamic`` dynamic range (int8 weights, activations    ``tflite_dynamic``
            quantized on the fly)
``float16`` float16 weights                             ``fp16``
``float32`` no quantization (checks the export itself)  ``float32``
==========  =========================================  ==================

Supported architectures: LeNet (1, 5, tiny), NiN, pre-activation ResNet
(ResNet-20), ResNet-50, DenseNet (121 and the tiny variants) and the
LSTM/GRU classifiers (unrolled over time; text models take token ids).
TensorFlow is the optional extra ``qsim[tflite]``.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable

import numpy as np

from qsim.models import DenseNet, LeNet, NiN, ResNet50, ResNetV2, RNNClassifier
from qsim.models.cnn import BN_EPSILON as BN_EPS
from qsim.nn.layers import batch_norm_constants

MODES = {"int8": "tflite_int8", "dynamic": "tflite_dynamic", "float16": "fp16", "float32": "float32"}


def tensorflow():
  """The ``tensorflow`` module, or an ImportError saying how to install it.

  Returns:
    The imported ``tensorflow`` module.

  Raises:
    ImportError: TensorFlow is not installed (it is the ``qsim[tflite]`` extra).
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("TFLite export needs TensorFlow: pip install 'qsim[tflite]'") from e
  return tf


def _interpreter_cls():
  """LiteRT's interpreter where installed, else TensorFlow's own."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    Interpreter = tensorflow().lite.Interpreter  # pylint: disable=invalid-name
  return Interpreter


def check_mode(mode: str) -> str:
  """Checks that ``mode`` is a TFLite export mode.

  Args:
    mode: the mode to check; one of ``MODES`` ('int8', 'dynamic', 'float16', 'float32').

  Returns:
    ``mode`` itself.

  Raises:
    ValueError: ``mode`` is not one of ``MODES``.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not valid; choose one of {list(MODES)}")
  return mode


# The interpreter's kernel families. ``xnnpack``: the Python interpreter's default, the XNNPACK
# delegate on the ops it takes (int8 requantization by an fp32 multiply). ``builtin``: TFLite's
# built-in kernels with no default delegate (int8 requantization by a 32-bit fixed-point multiplier
# and shift, gemmlowp rounding), the arithmetic TFLite Micro and many NPU paths follow.
KERNELS = ("xnnpack", "builtin")


# The qsim preset that simulates a (mode, kernels) pair where it is not the mode's own (MODES):
# int8 on the built-in kernels requantizes in fixed point.
KERNEL_PRESETS = {("int8", "builtin"): "tflite_int8_builtin", ("dynamic", "builtin"): "tflite_dynamic_builtin"}


def preset_for(mode: str, kernels: str = "xnnpack") -> str:
  """The qsim preset that simulates TFLite ``mode`` on the kernel family ``kernels``.

  Args:
    mode: the TFLite mode, one of ``MODES``.
    kernels: the interpreter's kernel family, one of ``KERNELS`` (default 'xnnpack').

  Returns:
    The qsim preset name: the ``KERNEL_PRESETS`` entry for ``(mode, kernels)``
    where there is one, else ``MODES[mode]``.

  Raises:
    ValueError: ``mode`` or ``kernels`` is not valid.
  """
  return KERNEL_PRESETS.get((check_mode(mode), check_kernels(kernels)), MODES[mode])


def check_kernels(kernels: str) -> str:
  """Checks that ``kernels`` is a TFLite interpreter kernel family.

  Args:
    kernels: the kernel family to check; one of ``KERNELS`` ('xnnpack', 'builtin').

  Returns:
    ``kernels`` itself.

  Raises:
    ValueError: ``kernels`` is not one of ``KERNELS``.
  """
  if kernels not in KERNELS:
    raise ValueError(f"kernels={kernels!r} is not valid; choose one of {list(KERNELS)}")
  return kernels


def _op_resolver_type(interpreter_cls, kernels: str):
  """The ``experimental_op_resolver_type`` that selects ``kernels``, from the
  interpreter's own module (LiteRT and TensorFlow each define, and check
  against, their own ``OpResolverType``); None for the default (XNNPACK)."""
  if kernels == "xnnpack":
    return None
  return sys.modules[interpreter_cls.__module__].OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


# --- the forward pass in TensorFlow ops -------------------------------------


class _Weights:
  """numpy views of a variables dict, addressed by module path."""

  def __init__(self, variables: dict):
    self.params = variables["params"]
    self.stats = variables.get("batch_stats", {})

  @staticmethod
  def _at(tree, path: str):
    for part in path.split("/"):
      if part not in tree:
        raise ValueError(f"export: the checkpoint has no {path!r} (missing {part!r})")
      tree = tree[part]
    return tree

  def __call__(self, path: str, name: str) -> np.ndarray:
    return np.asarray(self._at(self.params, path)[name], np.float32)

  def has(self, path: str, name: str) -> bool:
    try:
      return name in self._at(self.params, path)
    except ValueError:
      return False

  def batch_norm(self, path: str) -> tuple[np.ndarray, np.ndarray]:
    """An inference BatchNorm's ``(mul, offset)``, computed as qsim computes
    them (:func:`qsim.nn.layers.batch_norm_constants`)."""
    mul, offset = batch_norm_constants(self._at(self.params, path), self._at(self.stats, path), BN_EPS)
    return np.asarray(mul, np.float32), np.asarray(offset, np.float32)


def _ops(tf, w: _Weights):
  """Layer helpers bound to TensorFlow and the weights."""

  def conv(x, path, strides=1, padding="SAME"):
    y = tf.nn.conv2d(x, w(path, "kernel"), strides, padding)
    return y + w(path, "bias") if w.has(path, "bias") else y

  def dense(x, path):
    y = tf.matmul(x, w(path, "kernel"))
    return y + w(path, "bias") if w.has(path, "bias") else y

  def bn(x, path):
    # x * mul + offset: the converter's own lowering of an inference BatchNorm (a Keras layer's
    # FusedBatchNormV3), with qsim's constants (tf's fused op would raise epsilon to 1.001e-5).
    mul, offset = w.batch_norm(path)
    return x * mul + offset

  return conv, dense, bn


def _lenet(tf, model: LeNet, w: _Weights):
  conv, dense, _ = _ops(tf, w)

  def fwd(x):
    for i in range(len(model.conv_features)):
      x = tf.nn.max_pool2d(tf.nn.relu(conv(x, f"conv{i + 1}")), 2, 2, "VALID")
    x = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])
    for i in range(len(model.dense_features)):
      x = tf.nn.relu(dense(x, f"dense{i + 1}"))
    return dense(x, "head")

  return fwd


def _nin(tf, model: NiN, w: _Weights):
  conv, _, bn = _ops(tf, w)

  def fwd(x):
    for b, widths in enumerate(model.widths):
      last = b == len(model.widths) - 1
      for i in range(len(widths) + (1 if last else 0)):
        x = tf.nn.relu(bn(conv(x, f"block{b + 1}_conv{i + 1}"), f"block{b + 1}_bn{i + 1}"))
      if not last:
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")  # dropout: identity at inference
    return tf.reduce_mean(x, axis=[1, 2])

  return fwd


def _resnet_v2(tf, model: ResNetV2, w: _Weights):
  conv, dense, bn = _ops(tf, w)

  def fwd(x):
    x = conv(x, "stem")
    for s, f in enumerate(model.stage_widths):
      for b in range(model.blocks_per_stage):
        p = f"stage{s + 1}_block{b}"
        strides = 2 if (s > 0 and b == 0) else 1
        h = tf.nn.relu(bn(x, f"{p}/bn1"))
        shortcut = conv(h, f"{p}/shortcut", strides, "VALID") if w.has(f"{p}/shortcut", "kernel") else x
        h = tf.nn.relu(bn(conv(h, f"{p}/conv1", strides), f"{p}/bn2"))
        x = conv(h, f"{p}/conv2") + shortcut
    x = tf.reduce_mean(tf.nn.relu(bn(x, "bn_final")), axis=[1, 2])
    return dense(x, "head")

  return fwd


def _imagenet_stem(tf, conv, bn, x):
  """7x7/2 conv - BatchNorm - ReLU - 3x3/2 max-pool (SAME), as ``qsim.models.cnn._imagenet_stem``."""
  x = tf.nn.relu(bn(conv(x, "stem", 2), "bn_stem"))
  return tf.nn.max_pool2d(x, 3, 2, "SAME")


def _resnet50(tf, model: ResNet50, w: _Weights):
  conv, dense, bn = _ops(tf, w)

  def fwd(x):
    x = _imagenet_stem(tf, conv, bn, x)
    for s, n in enumerate(model.stage_sizes):
      for b in range(n):
        p = f"stage{s + 1}_block{b}"
        strides = 2 if (s > 0 and b == 0) else 1
        h = tf.nn.relu(bn(conv(x, f"{p}/conv1"), f"{p}/bn1"))
        h = tf.nn.relu(bn(conv(h, f"{p}/conv2", strides), f"{p}/bn2"))
        h = bn(conv(h, f"{p}/conv3"), f"{p}/bn3")
        if w.has(f"{p}/shortcut", "kernel"):  # 1x1: SAME pads nothing, as flax's
          x = bn(conv(x, f"{p}/shortcut", strides), f"{p}/bn_shortcut")
        x = tf.nn.relu(h + x)
    x = tf.reduce_mean(x, axis=[1, 2])
    return dense(x, "head")

  return fwd


def _densenet(tf, model: DenseNet, w: _Weights):
  conv, dense, bn = _ops(tf, w)

  def fwd(x):
    if model.input_pad:
      p = model.input_pad
      x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
    x = _imagenet_stem(tf, conv, bn, x)
    for s, n in enumerate(model.block_sizes):
      for i in range(n):
        p = f"dense{s + 1}_layer{i}"
        h = tf.nn.relu(bn(x, f"{p}/bn1"))
        h = tf.nn.relu(bn(conv(h, f"{p}/conv1"), f"{p}/bn2"))
        x = tf.concat([x, conv(h, f"{p}/conv2")], axis=-1)
      if s < len(model.block_sizes) - 1:
        p = f"transition{s + 1}"
        x = conv(tf.nn.relu(bn(x, f"{p}_bn")), f"{p}_conv")
        x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
    x = tf.reduce_mean(tf.nn.relu(bn(x, "bn_final")), axis=[1, 2])
    return dense(x, "head")

  return fwd


def _rnn(tf, model: RNNClassifier, w: _Weights):
  _, dense, _ = _ops(tf, w)
  cell = "rnn/cell"

  def gate(x, h, g):
    return dense(x, f"{cell}/i{g}") + dense(h, f"{cell}/h{g}")

  def fwd(x):
    if model.vocab_size is not None:
      x = tf.gather(w("embed", "embedding"), x)
    elif len(x.shape) == 4:
      x = tf.reshape(x, [-1, x.shape[1], x.shape[2] * x.shape[3]])
    h = tf.zeros([tf.shape(x)[0], model.hidden], tf.float32)  # the batch is dynamic (inputs are resized)
    c = h
    for t in range(x.shape[1]):
      xt = x[:, t]
      if model.cell == "lstm":
        i, f = tf.sigmoid(gate(xt, h, "i")), tf.sigmoid(gate(xt, h, "f"))
        g, o = tf.tanh(gate(xt, h, "g")), tf.sigmoid(gate(xt, h, "o"))
        c = f * c + i * g
        h = o * tf.tanh(c)
      else:
        r, z = tf.sigmoid(gate(xt, h, "r")), tf.sigmoid(gate(xt, h, "z"))
        n = tf.tanh(dense(xt, f"{cell}/in") + r * dense(h, f"{cell}/hn"))
        h = (1.0 - z) * n + z * h
    return dense(h, "head")

  return fwd


_BUILDERS: dict[type, Callable] = {
    LeNet: _lenet,
    NiN: _nin,
    ResNetV2: _resnet_v2,
    ResNet50: _resnet50,
    DenseNet: _densenet,
    RNNClassifier: _rnn,
}


def tf_forward(model, variables: dict) -> Callable:
  """The model's inference forward pass (inputs -> logits) in TensorFlow ops.

  Args:
    model: a qsim model of a supported architecture (LeNet, NiN, ResNetV2,
      ResNet50, DenseNet or RNNClassifier).
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``);
      they become constants of the graph.

  Returns:
    A function from a batch of inputs (a TensorFlow tensor: NHWC images, or
    token ids for text models) to the logits; calling it raises ValueError
    where ``variables`` lacks a weight the architecture needs.

  Raises:
    ValueError: ``model``'s architecture is not supported.
    ImportError: TensorFlow is not installed.
  """
  for cls, build in _BUILDERS.items():
    if isinstance(model, cls):
      return build(tensorflow(), model, _Weights(variables))
  raise ValueError(
      f"export: {type(model).__name__} is not supported; supported architectures are"
      f" {[c.__name__ for c in _BUILDERS]}"
  )


# --- conversion ---------------------------------------------------------------


def export(
    model,
    variables: dict,
    mode: str,
    example: np.ndarray,
    *,
    representative: np.ndarray | None = None,
    softmax: bool = False,
    io_type: str = "float32",
) -> bytes:
  """Converts ``model`` with ``variables`` to a TFLite flatbuffer.

  Args:
    model: a float qsim model (its ``quant`` is ignored: TFLite quantizes).
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``).
    mode: one of ``MODES``.
    example: one or more inputs (only the shape and dtype past the batch axis
      are used); the batch axis stays dynamic.
    representative: ``int8`` only: the calibration inputs (e.g. the first 100
      training samples), one per converter step.
    softmax: end the graph with a softmax, as the study's Keras models did.
    io_type: ``int8`` mode only: 'float32' (quantize/dequantize inside the
      model) or 'uint8' (the study's setting: the caller quantizes inputs and
      reads uint8 outputs).

  Returns:
    The ``.tflite`` model bytes.
  """
  tf = tensorflow()
  check_mode(mode)
  if io_type not in ("float32", "uint8"):
    raise ValueError(f"io_type={io_type!r} is not valid; choose 'float32' or 'uint8'")
  if io_type == "uint8" and mode != "int8":
    raise ValueError(f"io_type='uint8' needs mode='int8'; got mode={mode!r}")
  example = np.asarray(example)
  fwd = tf_forward(model, variables)
  dtype = tf.int32 if np.issubdtype(example.dtype, np.integer) else tf.float32
  sig = [tf.TensorSpec([None, *example.shape[1:]], dtype)]
  fn = tf.function(lambda x: tf.nn.softmax(fwd(x)) if softmax else fwd(x), input_signature=sig)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
  if mode in ("int8", "dynamic"):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if mode == "float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  if mode == "int8":
    if representative is None or len(representative) == 0:
      raise ValueError("mode='int8' needs a representative dataset (representative=, e.g. 100 training samples)")
    rep = np.asarray(representative, example.dtype)
    converter.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_type == "uint8":
      converter.inference_input_type = tf.uint8
      converter.inference_output_type = tf.uint8
  return converter.convert()


# --- running ------------------------------------------------------------------


@dataclasses.dataclass
class TFLiteModel:
  """A TFLite model and its interpreter (LiteRT where installed).

  ``kernels`` picks the kernel family (``KERNELS``): ``'xnnpack'``, the
  interpreter's default (the XNNPACK delegate), or ``'builtin'``, TFLite's
  built-in kernels with the default delegates off; the two requantize int8
  differently, so the same model can give different int8 outputs.
  """

  content: bytes
  num_threads: int | None = None
  kernels: str = "xnnpack"

  def __post_init__(self):
    check_kernels(self.kernels)
    cls = _interpreter_cls()
    resolver = _op_resolver_type(cls, self.kernels)
    extra = {} if resolver is None else {"experimental_op_resolver_type": resolver}
    self._interp = cls(model_content=self.content, num_threads=self.num_threads, **extra)
    self._in = self._interp.get_input_details()[0]
    self._out = self._interp.get_output_details()[0]
    self._shape = None

  @property
  def input_dtype(self):
    return self._in["dtype"]

  @property
  def interpreter(self):
    """The interpreter itself (a model with several inputs is fed through it)."""
    return self._interp

  def _resize(self, shape) -> None:
    if self._shape != tuple(shape):
      self._interp.resize_tensor_input(self._in["index"], list(shape))
      self._interp.allocate_tensors()
      self._shape = tuple(shape)

  def _invoke(self, x: np.ndarray) -> np.ndarray:
    self._resize(x.shape)
    self._interp.set_tensor(self._in["index"], x)
    self._interp.invoke()
    return self._interp.get_tensor(self._out["index"])

  def outputs(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Float outputs for ``x`` (float model inputs), run ``batch_size`` at a
    time; integer inputs and outputs are (de)quantized with the model's own
    parameters, rounding to nearest.

    Args:
      x: the inputs, batch first (float inputs are quantized where the model
        takes integers; integer inputs are passed as they are).
      batch_size: samples per interpreter call, >= 1.

    Returns:
      The float outputs, one row per sample (an empty array for empty ``x``).

    Raises:
      ValueError: ``batch_size`` is < 1.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} is not valid; give an int >= 1")
    out = []
    for i in range(0, len(x), batch_size):
      xb = np.asarray(x[i : i + batch_size])
      if np.issubdtype(self.input_dtype, np.integer) and not np.issubdtype(xb.dtype, np.integer):
        s, z = self._in["quantization"]
        info = np.iinfo(self.input_dtype)
        xb = np.clip(np.round(xb / s) + z, info.min, info.max)
      out.append(self._dequantized(self._invoke(xb.astype(self.input_dtype))))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def _dequantized(self, y: np.ndarray) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
      s, z = self._out["quantization"]
      return (y.astype(np.float32) - z) * s
    return y

  def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Top-1 predictions, batched.

    Args:
      x: the inputs, batch first (as for :meth:`outputs`).
      batch_size: samples per interpreter call, >= 1.

    Returns:
      The predicted class index of each sample.

    Raises:
      ValueError: ``batch_size`` is < 1.
    """
    return self.outputs(x, batch_size).argmax(-1)

  def predict_study(self, x: np.ndarray) -> np.ndarray:
    """Predictions as the study's pipeline made them: one sample at a time;
    a uint8 input is ``(x / scale + zero_point).astype(uint8)`` (truncated,
    not rounded or clipped); the prediction is the argmax of the raw
    (quantized) output, so near ties go to the lower class index.

    Args:
      x: the inputs, batch first (float for a uint8-input model).

    Returns:
      The predicted class index of each sample (int64).
    """
    preds = np.empty(len(x), np.int64)
    integer = np.issubdtype(self.input_dtype, np.integer)
    s, z = self._in["quantization"]
    for i in range(len(x)):
      xi = np.asarray(x[i : i + 1])
      if integer:
        xi = xi / s + z
      preds[i] = int(np.argmax(self._invoke(xi.astype(self.input_dtype))))
    return preds
