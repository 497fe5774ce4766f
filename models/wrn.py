"""Pre-activation Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

``wrn_d_k``: depth ``d = 6n + 4``, widening factor ``k``; a raw 3×3 stem (16 channels), three
stages of ``n`` pre-activation blocks with ``16k, 32k, 64k`` channels at strides 1, 2, 2, then a
final BN-ReLU, global average pooling and ``fc``. Dropout is 0 in every RepDistiller config,
so it is left out.

Pre-activation means the stage outputs are *raw residual sums*: the features ``f0..f3`` are not
normalised or activated and can be negative (METHODS.md §5 item 13), unlike the ResNet taps.

State-dict names follow RepDistiller's checkpoints: ``conv1``,
``blockK.layer.i.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import conv, init_conv_bn_
from models.feature_net import FeatureNet
from models.registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3 plus a shortcut.

    As in the reference implementation, an identity shortcut adds the *raw* input, while the
    1×1 projection ``convShortcut`` (used when the width or resolution changes) reads the
    *activated* input ReLU(BN(x)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv(in_channels, out_channels, 3, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3)
        needs_projection = stride != 1 or in_channels != out_channels
        self.convShortcut = conv(in_channels, out_channels, 1, stride) if needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class WideStage(nn.Module):
    """``num_blocks`` wide blocks, the first carrying the stride and any change of width.

    A module with a ``layer`` attribute, so that checkpoint keys read ``blockK.layer.i``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, stride: int) -> None:
        super().__init__()
        blocks = [WideBasicBlock(in_channels, out_channels, stride)]
        blocks += [WideBasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(FeatureNet):
    """WRN-``depth``-``widen_factor`` for 32×32 inputs.

    Features: ``f0`` = raw stem conv output, ``f1..f3`` = raw stage outputs (residual sums),
    embedding = AvgPool(ReLU(``bn1``(f3))).

    ``preact=True`` (faithful to RepDistiller) returns each stage output passed through the BN
    that follows it in the network, without ReLU: ``f1 ← block2.layer[0].bn1(f1)``,
    ``f2 ← block3.layer[0].bn1(f2)``, ``f3 ← bn1(f3)``. Those three BNs are therefore *called a
    second time* in the same forward pass: in train mode they normalise with the batch
    statistics again and update their running statistics twice per step (METHODS.md §5
    item 12). This is kept because it is what produced the published AB and ITRD numbers with
    WRN students.

    Init: convs N(0, sqrt(2 / (k·k·C_out))), BN 1/0, ``fc`` default weight with zero bias.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"a WRN has depth 6n+4, not {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv(3, widths[0], 3)
        self.block1 = WideStage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.block2 = WideStage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.block3 = WideStage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn_(self)
        nn.init.zeros_(self.fc.bias)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        embedding = F.adaptive_avg_pool2d(F.relu(self.bn1(f3)), 1).flatten(1)
        if preact:
            # Second calls of these BNs, after the main pass, exactly as upstream (see class doc).
            f1 = self.block2.layer[0].bn1(f1)
            f2 = self.block3.layer[0].bn1(f2)
            f3 = self.bn1(f3)
        return [f0, f1, f2, f3, embedding]

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BNs that follow each stage (``preact=True`` returns exactly their outputs)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


@register_model("wrn_16_1", "cifar")
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@register_model("wrn_16_2", "cifar")
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@register_model("wrn_40_1", "cifar")
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@register_model("wrn_40_2", "cifar")
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)


# mmrazor's CRD table (CIFAR-100 WRN16-2 ← WRN22-4) and the WRN paper's CIFAR network.
@register_model("wrn_22_4", "cifar")
def wrn_22_4(num_classes: int = 100) -> WideResNet:
    return WideResNet(22, 4, num_classes)


@register_model("wrn_28_10", "cifar")
def wrn_28_10(num_classes: int = 100) -> WideResNet:
    return WideResNet(28, 10, num_classes)
