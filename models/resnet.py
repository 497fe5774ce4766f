"""CIFAR basic-block ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

Depth ``6n + 2``: a 3×3 stem, then three stages of ``n`` basic blocks at strides 1, 2, 2 and
global average pooling. ``widths = [stem, stage1, stage2, stage3]``:

* RepDistiller ("Contrastive Representation Distillation", Tian et al., ICLR 2020):
  ``resnet8 … resnet110`` with ``[16, 16, 32, 64]``; ``resnet8x4`` and ``resnet32x4`` with
  ``[32, 64, 128, 256]`` (the stem is 32 wide, not 64).
* SimKD ("Knowledge Distillation with the Reused Teacher Classifier", Chen et al., CVPR 2022)
  adds ``resnet38``, ``resnet116`` and wide variants ``resnet14x2/38x2/110x2`` with
  ``[16, 32, 64, 128]`` and ``resnet14x4/38x4`` with ``[32, 64, 128, 256]``. They stand in for
  WRNs (``resnet38x2`` ≈ ``wrn_40_2``) but are post-activation ResNets with their own keys, so
  RD's WRN checkpoints do not load into them. The wide variants widen the stem in the first
  stage, which therefore opens with a projection shortcut.

State-dict names follow the upstream checkpoints: ``conv1, bn1, layerL.i.{conv1,bn1,conv2,bn2}``,
projection shortcuts ``layerL.0.downsample.{0,1}``, classifier ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import PreactBlock, conv, init_conv_bn_, projection_shortcut, staged_features
from models.feature_net import FeatureNet
from models.registry import register_model


class BasicBlock(PreactBlock):
    """conv3×3-BN-ReLU-conv3×3-BN plus a shortcut, then ReLU; ``preact`` is the sum before it."""

    expansion = 1  # output channels per channel of width (4 for a bottleneck)

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, channels, 3, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv(channels, channels, 3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = projection_shortcut(in_channels, channels, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        return F.relu(preact), preact


class ResNet(FeatureNet):
    """A CIFAR ResNet of depth ``6n + 2`` with stage widths ``widths[1:]``.

    Features (32×32 input): ``f0`` = ReLU(BN(stem)), ``f1..f3`` = stage outputs after the final
    ReLU of each stage (pre-ReLU residual sums of the last block with ``preact=True``), then
    the pooled embedding. Init: Kaiming-normal (fan_out) convs, BN 1/0, ``fc`` PyTorch default.
    """

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"a basic-block CIFAR ResNet has depth 6n+2, not {depth}")
        blocks_per_stage = (depth - 2) // 6
        stem, *stage_widths = widths
        self.conv1 = conv(3, stem, 3)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(stem, stage_widths[0], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(stage_widths[0], stage_widths[1], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(stage_widths[1], stage_widths[2], blocks_per_stage, stride=2)
        self.fc = nn.Linear(stage_widths[2], num_classes)
        init_conv_bn_(self)

    @staticmethod
    def _make_stage(in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, channels, stride)]
        blocks += [BasicBlock(channels, channels) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        return staged_features(f0, (self.layer1, self.layer2, self.layer3), preact)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Each stage's last ``bn2``: its output plus the shortcut is the pre-ReLU tap."""
        return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]


# Widths [stem, stage1, stage2, stage3].
_THIN = (16, 16, 32, 64)
_X2 = (16, 32, 64, 128)
_X4 = (32, 64, 128, 256)


# RepDistiller's registry.
@register_model("resnet8", "cifar")
def resnet8(num_classes: int = 100) -> ResNet:
    return ResNet(8, _THIN, num_classes)


@register_model("resnet14", "cifar")
def resnet14(num_classes: int = 100) -> ResNet:
    return ResNet(14, _THIN, num_classes)


@register_model("resnet20", "cifar")
def resnet20(num_classes: int = 100) -> ResNet:
    return ResNet(20, _THIN, num_classes)


@register_model("resnet32", "cifar")
def resnet32(num_classes: int = 100) -> ResNet:
    return ResNet(32, _THIN, num_classes)


@register_model("resnet44", "cifar")
def resnet44(num_classes: int = 100) -> ResNet:
    return ResNet(44, _THIN, num_classes)


@register_model("resnet56", "cifar")
def resnet56(num_classes: int = 100) -> ResNet:
    return ResNet(56, _THIN, num_classes)


@register_model("resnet110", "cifar")
def resnet110(num_classes: int = 100) -> ResNet:
    return ResNet(110, _THIN, num_classes)


@register_model("resnet8x4", "cifar")
def resnet8x4(num_classes: int = 100) -> ResNet:
    return ResNet(8, _X4, num_classes)


@register_model("resnet32x4", "cifar")
def resnet32x4(num_classes: int = 100) -> ResNet:
    return ResNet(32, _X4, num_classes)


# SimKD's additions.
@register_model("resnet38", "cifar")
def resnet38(num_classes: int = 100) -> ResNet:
    return ResNet(38, _THIN, num_classes)


@register_model("resnet116", "cifar")
def resnet116(num_classes: int = 100) -> ResNet:
    return ResNet(116, _THIN, num_classes)


@register_model("resnet14x2", "cifar")
def resnet14x2(num_classes: int = 100) -> ResNet:
    return ResNet(14, _X2, num_classes)


@register_model("resnet38x2", "cifar")
def resnet38x2(num_classes: int = 100) -> ResNet:
    return ResNet(38, _X2, num_classes)


@register_model("resnet110x2", "cifar")
def resnet110x2(num_classes: int = 100) -> ResNet:
    return ResNet(110, _X2, num_classes)


@register_model("resnet14x4", "cifar")
def resnet14x4(num_classes: int = 100) -> ResNet:
    return ResNet(14, _X4, num_classes)


@register_model("resnet38x4", "cifar")
def resnet38x4(num_classes: int = 100) -> ResNet:
    return ResNet(38, _X4, num_classes)
