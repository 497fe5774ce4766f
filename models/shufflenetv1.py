"""ShuffleNet (v1) for CIFAR (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018), RepDistiller's ``ShuffleV1``.

Group count 3, stage widths 240/480/960 with 4/8/4 units, a 1×1 stride-1 stem (24 channels) so
that a 32×32 image reaches the first stage at full resolution. Each stage opens with a stride-2
unit whose 3×3 average-pooled input is *concatenated* to its convolutional branch; the other
units add their input. PyTorch's default initialisation, as upstream. Trains with the small
CIFAR learning rate 0.01.

State-dict names: ``conv1, bn1, layerL.i.{conv1..3,bn1..3}``, ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import PreactBlock, channel_shuffle, conv, staged_features
from models.feature_net import FeatureNet
from models.registry import register_model


class ShuffleUnit(PreactBlock):
    """Grouped 1×1·BN·ReLU, channel shuffle, depthwise 3×3·BN·ReLU, grouped 1×1·BN, shortcut, ReLU.

    With ``stride == 2`` the shortcut is AvgPool(3, 2, 1) of the input, concatenated after the
    branch, which therefore produces ``out_channels - in_channels`` channels; otherwise the input
    is added. The bottleneck is a quarter of the branch width. ``first_groups`` is the group
    count of the first 1×1 convolution and of the shuffle that follows it: 1 for the unit that
    reads the 24-channel stem (the paper does not group a layer with so few input channels),
    ``groups`` elsewhere. ``preact`` is the value before the final ReLU. The ReLU after the
    depthwise convolution is upstream's; the paper's unit has none.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.first_groups = first_groups
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid_channels = branch_channels // 4
        self.conv1 = conv(in_channels, mid_channels, 1, groups=first_groups)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = conv(mid_channels, mid_channels, 3, stride, groups=mid_channels)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = conv(mid_channels, branch_channels, 1, groups=groups)
        self.bn3 = nn.BatchNorm2d(branch_channels)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(FeatureNet):
    """ShuffleNet v1 with ``groups`` groups and stage widths ``widths``.

    Features (32×32 input): ``f0`` = ReLU(BN(stem)) 24×32², ``f1..f3`` = stage outputs
    (240×16², 480×8², 960×4²; the last unit's value before ReLU with ``preact=True``), then the
    960-d pooled embedding.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (240, 480, 960),
        units: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        stem_width = 24
        self.conv1 = conv(3, stem_width, 1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_channels = stem_width
        stages = []
        for width, num_units in zip(widths, units):
            stage = []
            for index in range(num_units):
                first_groups = 1 if in_channels == stem_width else groups
                stage.append(ShuffleUnit(in_channels, width, 2 if index == 0 else 1, groups, first_groups))
                in_channels = width
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_channels, num_classes)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        return staged_features(f0, (self.layer1, self.layer2, self.layer3), preact)

    def get_classifier(self) -> nn.Linear:
        return self.linear

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Each stage's last ``bn3``: its output plus the input is the pre-ReLU tap.

        mdistiller refuses ShuffleNet teachers for OFD; the last unit of a stage has stride 1,
        so its tap has the same form as a ResNet block's and the BN is well defined.
        """
        return [stage[-1].bn3 for stage in (self.layer1, self.layer2, self.layer3)]


@register_model("ShuffleV1", "cifar", small_lr=True)
def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:
    """RepDistiller's ShuffleNet v1: groups 3, widths 240/480/960, units 4/8/4."""
    return ShuffleNetV1(num_classes=num_classes)
