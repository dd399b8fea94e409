"""The study's CIFAR-10 and iWildCam CNNs, built from qsim layers.

NiN and ResNet-20 (CIFAR-10), ResNet-50 and DenseNet-121 (iWildCam
backbones + global pool + dense), each with a tiny variant for tests.
Deployment structure is part of the model, injected by the quantization
config: a BatchNorm after a conv is folded into it under a spec with
``fold_bn``; a BatchNorm with nothing to fold into (pre-activation) runs as
the converter's MUL/ADD; ``qsim.nn.Output`` points mark the tensors an
integer runtime requantizes (residual ADDs, pooled features, conv outputs
feeding an ADD or a concatenation). Float models are unchanged. Every layer has a
stable explicit name (``block1_conv1``, ``stage2_block0/conv2``, ``head``)
for per-layer quantization rules. ``train`` switches BatchNorm to batch
statistics and enables dropout (needs a 'dropout' PRNG stream).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from qsim import nn as qnn

BN_EPSILON = 1e-5


def _bn(
    module: nn.Module, train: bool, name: str, *, act=nn.relu, after: str | None = None, range_of=None
) -> qnn.BatchNorm:
  """BatchNorm ``name`` (+ ``act``) in ``module``'s scope; ``after``: the conv
  it follows (folded into it under ``fold_bn``); ``range_of``: the Output
  point whose range its output is stored with (a same-scale group)."""
  return qnn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=BN_EPSILON,
      quant=module.quant,
      act=act,
      folded_into=after,
      range_of=range_of,
      name=name,
  )


def _conv_bn(
    module: nn.Module, x, features: int, kernel, train: bool, conv: str, bn: str, *, act=nn.relu, range_of=None, **kw
):
  """Conv ``conv`` then BatchNorm ``bn`` (+ ``act``), the pair a converter
  folds into one convolution."""
  x = qnn.Conv(features, kernel, quant=module.quant, batch_norm=(bn, BN_EPSILON), name=conv, **kw)(x)
  return _bn(module, train, bn, act=act, after=conv, range_of=range_of)(x)


def _imagenet_stem(module: nn.Module, x, width: int, train: bool, range_of=None):
  """7x7/2 conv ('stem') - BatchNorm ('bn_stem') - ReLU - 3x3/2 max-pool,
  created inside ``module``'s compact scope; ``range_of``: the point whose
  range the stem's output takes (the max-pool shares its input's scale)."""
  x = _conv_bn(
      module, x, width, (7, 7), train, "stem", "bn_stem", strides=2, padding="SAME", use_bias=False, range_of=range_of
  )
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")


class NiN(nn.Module):
  """Network in Network: three blocks of (k x k conv, 1x1, 1x1), each conv
  followed by BatchNorm + ReLU; 3/2 max-pool + dropout between blocks;
  global average pool over the last block's ``num_classes`` maps."""

  widths: Sequence[Sequence[int]] = ((192, 160, 96), (192, 192, 192), (192, 192))
  kernels: Sequence[int] = (5, 5, 3)
  num_classes: int = 10
  dropout: float = 0.5
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for b, (widths, k) in enumerate(zip(self.widths, self.kernels)):
      last = b == len(self.widths) - 1
      feats = list(widths) + ([self.num_classes] if last else [])
      for i, f in enumerate(feats):
        size = (k, k) if i == 0 else (1, 1)
        x = _conv_bn(self, x, f, size, train, f"block{b + 1}_conv{i + 1}", f"block{b + 1}_bn{i + 1}", padding="SAME")
      if not last:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return qnn.Output(quant=self.quant, name="logits")(qnn.global_mean(self, x))


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut."""

  features: int
  strides: int = 1
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    """``x``: the residual stream as the previous ADD (or the stem) wrote
    it, stored int8 here (point ``in``); returns the float sum, which the
    next block (or the final BatchNorm) stores."""
    stream = qnn.Output(quant=self.quant, name="in")
    x = stream(x)
    bn1 = _bn(self, train, "bn1")
    h = bn1(x)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      # the projection reads the pre-activated h: bn1's MUL is the stream's only reader and runs in place
      stream.overwritten_by(bn1.product(x))
      shortcut = qnn.Conv(
          self.features, (1, 1), strides=self.strides, use_bias=False, quant=self.quant, name="shortcut"
      )(h)
      shortcut = qnn.Output(quant=self.quant, name="shortcut_out")(shortcut)
    h = _conv_bn(
        self, h, self.features, (3, 3), train, "conv1", "bn2", strides=self.strides, padding="SAME", use_bias=False
    )
    h = qnn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, quant=self.quant, name="conv2")(h)
    conv2_out = qnn.Output(quant=self.quant, name="conv2_out")
    y = qnn.add(self, conv2_out(h), shortcut)
    conv2_out.overwritten_by(y)  # the ADD runs in place on its first operand, used only there
    return y


class ResNetV2(nn.Module):
  """CIFAR pre-activation ResNet (ResNet-20: 3 stages x 3 blocks, 16/32/64)."""

  stage_widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 3
  num_classes: int = 10
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = qnn.Conv(self.stage_widths[0], (3, 3), padding="SAME", use_bias=False, quant=self.quant, name="stem")(x)
    for s, f in enumerate(self.stage_widths):
      for b in range(self.blocks_per_stage):
        strides = 2 if (s > 0 and b == 0) else 1
        x = PreActBlock(f, strides, quant=self.quant, name=f"stage{s + 1}_block{b}")(x, train)
    stream = qnn.Output(quant=self.quant, name="final_in")
    x = stream(x)
    bn_final = _bn(self, train, "bn_final")
    y = bn_final(x)
    stream.overwritten_by(bn_final.product(x))  # bn_final's MUL is the last ADD's only reader
    x = y
    x = qnn.Output(quant=self.quant, name="pool")(qnn.global_mean(self, x))
    x = qnn.Dense(self.num_classes, quant=self.quant, name="head")(x)
    return qnn.Output(quant=self.quant, name="logits")(x)


class Bottleneck(nn.Module):
  """ResNet-50 bottleneck: 1x1, 3x3 (strided), 1x1 x4, post-activation."""

  features: int
  strides: int = 1
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.features * 4
    h = _conv_bn(self, x, self.features, (1, 1), train, "conv1", "bn1", use_bias=False)
    h = _conv_bn(
        self, h, self.features, (3, 3), train, "conv2", "bn2", strides=self.strides, padding="SAME", use_bias=False
    )
    h = qnn.Conv(out, (1, 1), quant=self.quant, batch_norm=("bn3", BN_EPSILON), use_bias=False, name="conv3")(h)
    bn3 = _bn(self, train, "bn3", act=None, after="conv3")
    h = bn3(h)
    if self.strides != 1 or x.shape[-1] != out:
      x = _conv_bn(
          self, x, out, (1, 1), train, "shortcut", "bn_shortcut", act=None, strides=self.strides, use_bias=False
      )
    y = qnn.add(self, h, x, act=nn.relu)
    bn3.overwritten_by(y)  # the ADD (ReLU fused) runs in place on its first operand, used only there
    return qnn.Output(quant=self.quant, name="add")(y)


class ResNet50(nn.Module):
  """ResNet-50 backbone (7x7/2 stem, 3/2 max-pool, [3, 4, 6, 3] bottlenecks)
  + global average pool + dense classifier (182 classes for iWildCam)."""

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  num_classes: int = 182
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _imagenet_stem(self, x, self.width, train)
    for s, n in enumerate(self.stage_sizes):
      for b in range(n):
        strides = 2 if (s > 0 and b == 0) else 1
        x = Bottleneck(self.width * 2**s, strides, quant=self.quant, name=f"stage{s + 1}_block{b}")(x, train)
    x = qnn.Output(quant=self.quant, name="pool")(qnn.global_mean(self, x))
    x = qnn.Dense(self.num_classes, quant=self.quant, name="head")(x)
    return qnn.Output(quant=self.quant, name="logits")(x)


class DenseLayer(nn.Module):
  """DenseNet-BC layer: BN-ReLU-1x1 (4k) - BN-ReLU-3x3 (k), concatenated.

  ``out``: the dense block's output point (:class:`DenseNet`). TFLite's
  CONCATENATION keeps its inputs' scale, so the new features (``conv2_out``)
  and the concatenation (``concat``) are stored with the block's range."""

  growth: int
  quant: Any = None
  out: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    h = _bn(self, train, "bn1")(x)  # its MUL is not in place: x is also read by the concatenation
    h = _conv_bn(self, h, 4 * self.growth, (1, 1), train, "conv1", "bn2", use_bias=False)
    h = qnn.Conv(self.growth, (3, 3), padding="SAME", use_bias=False, quant=self.quant, name="conv2")(h)
    h = qnn.Output(quant=self.quant, range_of=self.out, name="conv2_out")(h)
    return qnn.Output(quant=self.quant, range_of=self.out, name="concat")(jnp.concatenate([x, h], axis=-1))


class DenseNet(nn.Module):
  """DenseNet-121 (growth 32, blocks [6, 12, 24, 16], compression 0.5)
  + global average pool + dense classifier.

  Under an integer spec, each dense block is one same-scale group, as the
  TFLite converter quantizes it: the tensor entering the block (the stem's
  output before its max-pool; a transition's conv output before its
  average pool, and the pooled tensor), every layer's new features and
  every concatenation are stored with the range of the block's last
  concatenation (point ``dense<s>_out``), which the next BatchNorm's MUL
  overwrites in place (its only reader).

  ``input_pad`` zero-pads the input by that many pixels on each side first
  (2 turns 28x28 Fashion-MNIST into 32x32, the smallest size whose /32 keeps
  a pixel through DenseNet-121's stem and three transitions: 28x28 is
  pooled to nothing and gives NaN)."""

  growth: int = 32
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  stem_width: int = 64
  num_classes: int = 182
  input_pad: int = 0
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    outs = [qnn.Output(quant=self.quant, name=f"dense{s + 1}_out") for s in range(len(self.block_sizes))]
    if self.input_pad:
      p = self.input_pad
      x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    x = _imagenet_stem(self, x, self.stem_width, train, range_of=outs[0])
    for s, n in enumerate(self.block_sizes):
      for i in range(n):
        x = DenseLayer(self.growth, quant=self.quant, out=outs[s], name=f"dense{s + 1}_layer{i}")(x, train)
      x = outs[s](x)  # the group's range: the block's last concatenation
      last = s == len(self.block_sizes) - 1
      bn = _bn(self, train, "bn_final" if last else f"transition{s + 1}_bn")
      y = bn(x)
      outs[s].overwritten_by(bn.product(x))  # the BatchNorm's MUL is the block output's only reader
      x = y
      if not last:
        x = qnn.Conv(x.shape[-1] // 2, (1, 1), use_bias=False, quant=self.quant, name=f"transition{s + 1}_conv")(x)
        x = qnn.Output(quant=self.quant, range_of=outs[s + 1], name=f"transition{s + 1}_out")(x)
        # AVERAGE_POOL_2D keeps its input's scale: the mean is rounded back onto the same grid
        x = qnn.AvgPool((2, 2), (2, 2), quant=self.quant, range_of=outs[s + 1], name=f"transition{s + 1}_pool")(x)
    x = qnn.Output(quant=self.quant, name="pool")(qnn.global_mean(self, x))
    x = qnn.Dense(self.num_classes, quant=self.quant, name="head")(x)
    return qnn.Output(quant=self.quant, name="logits")(x)
