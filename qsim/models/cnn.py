"""The study's CIFAR-10 and iWildCam CNNs, built from qsim layers.

NiN and ResNet-20 (CIFAR-10), ResNet-50 and DenseNet-121 (iWildCam
backbones + global pool + dense), each with a tiny variant for tests.
BatchNorm stays float (a deployment folds it into the preceding conv before
quantizing; qsim does not fold yet: see BUILD_NOTES.md). Every layer has a
stable explicit name (``block1_conv1``, ``stage2_block0/conv2``, ``head``)
for per-layer quantization rules. ``train`` switches BatchNorm to batch
statistics and enables dropout (needs a 'dropout' PRNG stream).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from qsim import nn as qnn


def _bn(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _imagenet_stem(module: nn.Module, x, width: int, train: bool):
  """7x7/2 conv ('stem') - BatchNorm ('bn_stem') - ReLU - 3x3/2 max-pool,
  created inside ``module``'s compact scope."""
  x = qnn.Conv(width, (7, 7), strides=2, padding="SAME", use_bias=False, quant=module.quant, name="stem")(x)
  x = nn.relu(_bn(train, "bn_stem")(x))
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
        x = qnn.Conv(f, size, padding="SAME", quant=self.quant, name=f"block{b + 1}_conv{i + 1}")(x)
        x = nn.relu(_bn(train, f"block{b + 1}_bn{i + 1}")(x))
      if not last:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return qnn.Output(quant=self.quant, name="logits")(jnp.mean(x, axis=(1, 2)))


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut."""

  features: int
  strides: int = 1
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.relu(_bn(train, "bn1")(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = qnn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False, quant=self.quant, name="shortcut")(h)
    h = qnn.Conv(self.features, (3, 3), strides=self.strides, padding="SAME", use_bias=False, quant=self.quant, name="conv1")(h)
    h = nn.relu(_bn(train, "bn2")(h))
    h = qnn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, quant=self.quant, name="conv2")(h)
    return h + shortcut


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
    x = nn.relu(_bn(train, "bn_final")(x))
    x = jnp.mean(x, axis=(1, 2))
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
    h = nn.relu(_bn(train, "bn1")(qnn.Conv(self.features, (1, 1), use_bias=False, quant=self.quant, name="conv1")(x)))
    h = qnn.Conv(self.features, (3, 3), strides=self.strides, padding="SAME", use_bias=False, quant=self.quant, name="conv2")(h)
    h = nn.relu(_bn(train, "bn2")(h))
    h = _bn(train, "bn3")(qnn.Conv(out, (1, 1), use_bias=False, quant=self.quant, name="conv3")(h))
    if self.strides != 1 or x.shape[-1] != out:
      x = qnn.Conv(out, (1, 1), strides=self.strides, use_bias=False, quant=self.quant, name="shortcut")(x)
      x = _bn(train, "bn_shortcut")(x)
    return nn.relu(h + x)


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
    x = jnp.mean(x, axis=(1, 2))
    x = qnn.Dense(self.num_classes, quant=self.quant, name="head")(x)
    return qnn.Output(quant=self.quant, name="logits")(x)


class DenseLayer(nn.Module):
  """DenseNet-BC layer: BN-ReLU-1x1 (4k) - BN-ReLU-3x3 (k), concatenated."""

  growth: int
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.relu(_bn(train, "bn1")(x))
    h = qnn.Conv(4 * self.growth, (1, 1), use_bias=False, quant=self.quant, name="conv1")(h)
    h = nn.relu(_bn(train, "bn2")(h))
    h = qnn.Conv(self.growth, (3, 3), padding="SAME", use_bias=False, quant=self.quant, name="conv2")(h)
    return jnp.concatenate([x, h], axis=-1)


class DenseNet(nn.Module):
  """DenseNet-121 (growth 32, blocks [6, 12, 24, 16], compression 0.5)
  + global average pool + dense classifier."""

  growth: int = 32
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  stem_width: int = 64
  num_classes: int = 182
  quant: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _imagenet_stem(self, x, self.stem_width, train)
    for s, n in enumerate(self.block_sizes):
      for i in range(n):
        x = DenseLayer(self.growth, quant=self.quant, name=f"dense{s + 1}_layer{i}")(x, train)
      if s < len(self.block_sizes) - 1:
        x = nn.relu(_bn(train, f"transition{s + 1}_bn")(x))
        x = qnn.Conv(x.shape[-1] // 2, (1, 1), use_bias=False, quant=self.quant, name=f"transition{s + 1}_conv")(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(_bn(train, "bn_final")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = qnn.Dense(self.num_classes, quant=self.quant, name="head")(x)
    return qnn.Output(quant=self.quant, name="logits")(x)
