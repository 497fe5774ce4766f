"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018), as used by RepDistiller and SimKD.

A stride-2 3×3 stem, seven stages of inverted residuals (t, c, n, s) = (1,16,1,1), (6,24,2,1),
(6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1) with channels scaled by the width
multiplier, a 1×1 conv to 1280 channels, global average pooling and a linear classifier.
``MobileNetV2`` is RepDistiller's "mobile_half" (width 0.5), ``MobileNetV2_1_0`` SimKD's width
1.0; both use expansion T = 6 and train with the small CIFAR learning rate 0.01.

Unlike the paper, the t = 1 stage keeps its 1×1 expansion convolution, as upstream does, so
every block has the same layout (and the checkpoints' keys ``conv.0 … conv.7``).

State-dict names: ``conv1.{0,1}``, ``blocks.S.i.conv.{0,1,3,4,6,7}``, ``conv2.{0,1}``,
``classifier.0``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import conv_bn, init_conv_bn_
from models.feature_net import FeatureNet
from models.registry import register_model

# (channels at width 1, blocks, stride of the first block); the first stage expands by 1, the others by T.
_STAGES = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))


class InvertedResidual(nn.Module):
    """Pointwise expand·BN·ReLU, depthwise 3×3·BN·ReLU, pointwise linear projection·BN.

    The input is added back when the block keeps resolution and width.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn(in_channels, hidden, 1, relu=True),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden, relu=True),
            *conv_bn(hidden, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(FeatureNet):
    """MobileNetV2 with width multiplier ``width`` and expansion ``expansion`` (T).

    Features (32×32 input, width 0.5): ``f0`` = stem 16×16², ``f1`` after stages 0–1 (12×16²),
    ``f2`` after stage 2 (16×8²), ``f3`` after stages 3–4 (48×4²), ``f4`` after stages 5–6
    (160×2²), then the 1280-d pooled output of ``conv2``. ``preact`` is ignored: every stage
    already ends in a linear BN. Init: convs N(0, sqrt(2 / (k·k·C_out))), BN 1/0, classifier
    N(0, 0.01) with zero bias.
    """

    def __init__(self, width: float, expansion: int = 6, num_classes: int = 100) -> None:
        super().__init__()
        in_channels = int(32 * width)
        self.conv1 = nn.Sequential(*conv_bn(3, in_channels, 3, stride=2, relu=True))
        self.blocks = nn.ModuleList()
        for stage_index, (channels, num_blocks, first_stride) in enumerate(_STAGES):
            out_channels = int(channels * width)
            stage_expansion = 1 if stage_index == 0 else expansion
            blocks = []
            for index in range(num_blocks):
                blocks.append(InvertedResidual(in_channels, out_channels, first_stride if index == 0 else 1,
                                               stage_expansion))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*blocks))
        last_channels = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(*conv_bn(in_channels, last_channels, 1, relu=True))
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_conv_bn_(self)
        nn.init.normal_(self.get_classifier().weight, 0.0, 0.01)
        nn.init.zeros_(self.get_classifier().bias)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        f0 = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        embedding = F.adaptive_avg_pool2d(self.conv2(f4), 1).flatten(1)
        return [f0, f1, f2, f3, f4, embedding]

    def get_classifier(self) -> nn.Linear:
        return self.classifier[0]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.blocks])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The projection BN of the last block behind ``f1..f4`` (stages 1, 2, 4, 6), as mdistiller.

        These stage outputs are linear (plus the block's input where it has a residual); there is
        no ReLU to precede, so OFD's margin is an approximation here, as upstream.
        """
        return [self.blocks[index][-1].conv[-1] for index in (1, 2, 4, 6)]


@register_model("MobileNetV2", "cifar", small_lr=True)
def mobilenetv2_half(num_classes: int = 100) -> MobileNetV2:
    """RepDistiller's ``mobile_half``: T = 6, width 0.5."""
    return MobileNetV2(width=0.5, expansion=6, num_classes=num_classes)


@register_model("MobileNetV2_1_0", "cifar", small_lr=True)
def mobilenetv2_1_0(num_classes: int = 100) -> MobileNetV2:
    """SimKD's full-width MobileNetV2: T = 6, width 1.0."""
    return MobileNetV2(width=1.0, expansion=6, num_classes=num_classes)
