"""The CIFAR bottleneck ResNet-50 of RepDistiller (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016), registered as ``ResNet50``, and the four-stage CIFAR ResNets of mmrazor's
CRD table, ``ResNet18_cifar``, ``ResNet34_cifar`` and ``ResNet50_cifar``.

It is the ImageNet ResNet-50 layout ``[3, 4, 6, 3]`` bottleneck blocks (expansion 4, stage
widths 64/128/256/512 at strides 1, 2, 2, 2) with a 3×3 stride-1 stem and no max-pool, so a
32×32 image keeps its resolution in the first stage. Its classifier is named ``linear``, and it
is *not* the ImageNet ``ResNet50`` of SimKD (METHODS.md §2.3, §5 item 25).

State-dict names: ``conv1, bn1, layerL.i.{conv1..3,bn1..3}``, projection shortcuts
``layerL.0.shortcut.{0,1}``, ``linear``.

mmrazor's CIFAR ResNets (mmcls ``ResNet_CIFAR``) have the same layout: a 3×3 stem without
max-pool, then torchvision's four stages. ``ResNet18_cifar``/``ResNet34_cifar`` use the basic
block of models/resnet.py (blocks ``[2, 2, 2, 2]`` / ``[3, 4, 6, 3]``); ``ResNet50_cifar`` is the
same network as ``ResNet50``. Their keys are this repository's, not mmcls's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import PreactBlock, conv, init_conv_bn_, projection_shortcut, staged_features
from models.feature_net import FeatureNet
from models.registry import register_model
from models.resnet import BasicBlock


class Bottleneck(PreactBlock):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, each with BN, plus a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = conv(in_channels, channels, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv(channels, channels, 3, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv(channels, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(preact), preact


class BottleneckResNet(FeatureNet):
    """A CIFAR ResNet with ``blocks_per_stage`` blocks (``Bottleneck`` unless ``block`` says otherwise)
    in each of four stages.

    Features (32×32 input): ``f0`` = ReLU(BN(stem)) 64×32², ``f1..f4`` = stage outputs
    (256×32², 512×16², 1024×8², 2048×4²; pre-ReLU sums of each stage's last block with
    ``preact=True``, returned as a flat list, unlike upstream's nested one), then the 2048-d
    pooled embedding. Init: Kaiming-normal (fan_out) convs, BN 1/0 (no zero-init of the last
    BN), ``linear`` PyTorch default.
    """

    def __init__(self, blocks_per_stage: Sequence[int], num_classes: int = 100,
                 block: type[Bottleneck] | type[BasicBlock] = Bottleneck) -> None:
        super().__init__()
        self.conv1 = conv(3, 64, 3)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        stages = []
        for index, (channels, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            strides = [1 if index == 0 else 2] + [1] * (num_blocks - 1)
            blocks = []
            for stride in strides:
                blocks.append(block(in_channels, channels, stride))
                in_channels = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_channels, num_classes)
        init_conv_bn_(self)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        return staged_features(f0, (self.layer1, self.layer2, self.layer3, self.layer4), preact)

    def get_classifier(self) -> nn.Linear:
        return self.linear

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Each stage's last ``bn3`` (``bn2`` of a basic block): its output plus the shortcut is the pre-ReLU tap."""
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [stage[-1].bn3 if isinstance(stage[-1], Bottleneck) else stage[-1].bn2 for stage in stages]


@register_model("ResNet50", "cifar")
def ResNet50(num_classes: int = 100) -> BottleneckResNet:
    """The CIFAR bottleneck ResNet-50 (blocks ``[3, 4, 6, 3]``), 23.7 M parameters for 100 classes."""
    return BottleneckResNet((3, 4, 6, 3), num_classes)


@register_model("ResNet18_cifar", "cifar")
def ResNet18_cifar(num_classes: int = 100) -> BottleneckResNet:
    """mmrazor's CIFAR ResNet-18 (basic blocks ``[2, 2, 2, 2]``), 11.2 M parameters for 100 classes."""
    return BottleneckResNet((2, 2, 2, 2), num_classes, block=BasicBlock)


@register_model("ResNet34_cifar", "cifar")
def ResNet34_cifar(num_classes: int = 100) -> BottleneckResNet:
    """mmrazor's CIFAR ResNet-34 (basic blocks ``[3, 4, 6, 3]``), 21.3 M parameters for 100 classes."""
    return BottleneckResNet((3, 4, 6, 3), num_classes, block=BasicBlock)


@register_model("ResNet50_cifar", "cifar")
def ResNet50_cifar(num_classes: int = 100) -> BottleneckResNet:
    """mmrazor's CIFAR ResNet-50: the network of ``ResNet50`` under mmrazor's name."""
    return BottleneckResNet((3, 4, 6, 3), num_classes)
