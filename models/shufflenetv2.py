"""ShuffleNet V2 for CIFAR (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), RepDistiller's ``ShuffleV2`` and SimKD's ``ShuffleV2_1_5``.

A 1×1 stride-1 stem (24 channels), three stages each made of one down-sampling unit (both
branches at stride 2, concatenated, shuffled) and 3/7/3 basic units (channel split in half,
one half transformed, concatenated, shuffled), a 1×1 head conv to 1024 channels, global average
pooling and ``linear``. Stage widths: 116/232/464 (size 1), 176/352/704 (size 1.5). PyTorch's
default initialisation, as upstream. Trains with the small CIFAR learning rate 0.01.

State-dict names: ``conv1, bn1``, down-sampling units ``layerL.0.{conv1..5,bn1..5}``, basic
units ``layerL.i.{conv1..3,bn1..3}``, ``conv2, bn2, linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import PreactBlock, channel_shuffle, conv, staged_features
from models.feature_net import FeatureNet
from models.registry import register_model


class BasicUnit(PreactBlock):
    """Keep the first half of the channels; send the second through 1×1·BN·ReLU,
    depthwise 3×3·BN, 1×1·BN·ReLU; concatenate and shuffle (2 groups).

    ``preact`` is ``concat(kept half, last BN output)`` *without* the shuffle, as upstream, so
    its channel order differs from the unit's output (METHODS.md §5 item 15).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = conv(half, half, 1)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = conv(half, half, 3, groups=half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv(half, half, 1)
        self.bn3 = nn.BatchNorm2d(half)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        half = x.shape[1] // 2
        kept, transformed = x[:, :half], x[:, half:]
        out = F.relu(self.bn1(self.conv1(transformed)))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        preact = torch.cat([kept, out], dim=1)
        return channel_shuffle(torch.cat([kept, F.relu(out)], dim=1), 2), preact


class DownUnit(nn.Module):
    """Two stride-2 branches on the full input, concatenated and shuffled (2 groups).

    Left: depthwise 3×3·BN, 1×1·BN·ReLU. Right: 1×1·BN·ReLU, depthwise 3×3·BN, 1×1·BN·ReLU.
    Each produces half of ``out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = conv(in_channels, in_channels, 3, stride=2, groups=in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = conv(in_channels, half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv(in_channels, half, 1)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = conv(half, half, 3, stride=2, groups=half)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = conv(half, half, 1)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(FeatureNet):
    """ShuffleNet V2 with stage widths ``widths`` and head width ``head_width``.

    Features (32×32 input, size 1): ``f0`` = ReLU(BN(stem)) 24×32², ``f1..f3`` = stage outputs
    (116×16², 232×8², 464×4²; the last unit's un-shuffled pre-activation with ``preact=True``),
    then the 1024-d pooled output of the head conv (so ``emb`` is wider than ``f3``).
    """

    def __init__(
        self,
        widths: tuple[int, int, int],
        head_width: int = 1024,
        basic_units: tuple[int, int, int] = (3, 7, 3),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        stem_width = 24
        self.conv1 = conv(3, stem_width, 1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_channels = stem_width
        stages = []
        for width, num_basic in zip(widths, basic_units):
            basic = [BasicUnit(width) for _ in range(num_basic)]
            stages.append(nn.Sequential(DownUnit(in_channels, width), *basic))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = conv(in_channels, head_width, 1)
        self.bn2 = nn.BatchNorm2d(head_width)
        self.linear = nn.Linear(head_width, num_classes)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        return staged_features(f0, (self.layer1, self.layer2, self.layer3), preact, self.head)

    def head(self, x: Tensor) -> Tensor:
        """The 1×1 conv head between the last stage and the pooled embedding."""
        return F.relu(self.bn2(self.conv2(x)))

    def get_classifier(self) -> nn.Linear:
        return self.linear

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])


@register_model("ShuffleV2", "cifar", small_lr=True)
def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    """RepDistiller's ShuffleNet V2, size 1: widths 116/232/464, head 1024."""
    return ShuffleNetV2((116, 232, 464), num_classes=num_classes)


@register_model("ShuffleV2_1_5", "cifar", small_lr=True)
def ShuffleV2_1_5(num_classes: int = 100) -> ShuffleNetV2:
    """SimKD's ShuffleNet V2, size 1.5: widths 176/352/704, head 1024."""
    return ShuffleNetV2((176, 352, 704), num_classes=num_classes)
