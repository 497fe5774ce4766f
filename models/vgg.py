"""VGG with batch normalisation for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015), as used by RepDistiller.

Five blocks of [Conv3×3 (with bias)·BN·ReLU]×r with widths 64, 128, 256, 512, 512, where each
block *ends in BN*: its final ReLU is applied by the network, so that the BN output can be
tapped as the pre-activation feature. Max-pooling 2×2 follows blocks 0, 1 and 2; the pool after
block 3 runs only for 64×64 inputs, so on CIFAR ``f3`` and ``f4`` are both 4×4 (METHODS.md §5
item 14). Global average pooling and one ``Linear(512, C)`` classifier replace the original
three fully connected layers.

Convolutions per block: vgg8 ``1,1,1,1,1`` (RepDistiller's "S"), vgg11 ``1,1,2,2,2`` (A),
vgg13 ``2,2,2,2,2`` (B), vgg16 ``2,2,3,3,3`` (D), vgg19 ``2,2,4,4,4`` (E).

State-dict names: ``blockK.j`` where ``j`` is the position in the block (conv 0, BN 1, ReLU 2,
conv 3, BN 4, …), and ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import conv_bn, init_conv_bn_
from models.feature_net import FeatureNet
from models.registry import register_model

_WIDTHS = (64, 128, 256, 512, 512)


def _vgg_block(in_channels: int, out_channels: int, num_convs: int) -> nn.Sequential:
    """``num_convs`` × [Conv3×3·BN·ReLU] without the last ReLU."""
    layers: list[nn.Module] = []
    for index in range(num_convs):
        layers += conv_bn(in_channels if index == 0 else out_channels, out_channels, 3,
                          bias=True, relu=True)
    return nn.Sequential(*layers[:-1])


class VGG(FeatureNet):
    """A five-block VGG-BN with ``convs_per_block`` convolutions per block.

    Features (32×32 input): ``f0`` = ReLU(block0) 64×32², ``f1..f4`` = ReLU(block1..4)
    (128×16², 256×8², 512×4², 512×4²; the BN outputs before ReLU with ``preact=True``; ``f0``
    is unchanged), then the 512-d pooled embedding. Init: convs N(0, sqrt(2 / (9·C_out))) with
    zero bias, BN 1/0, classifier N(0, 0.01) with zero bias.
    """

    def __init__(self, convs_per_block: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        in_widths = (3, *_WIDTHS[:-1])
        blocks = [_vgg_block(c_in, c_out, n) for c_in, c_out, n in zip(in_widths, _WIDTHS, convs_per_block)]
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(_WIDTHS[-1], num_classes)
        init_conv_bn_(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        height = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        f4_pre = self.block4(self.pool3(f3) if height == 64 else f3)
        f4 = F.relu(f4_pre)
        embedding = self.pool4(f4).flatten(1)
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4_pre, embedding]
        return [f0, f1, f2, f3, f4, embedding]

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2,
                              self.block3, self.pool3, self.block4, self.pool4])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BN that ends blocks 1–4 (its output is the pre-ReLU tap)."""
        return [block[-1] for block in (self.block1, self.block2, self.block3, self.block4)]


@register_model("vgg8", "cifar")
def vgg8(num_classes: int = 100) -> VGG:
    return VGG((1, 1, 1, 1, 1), num_classes)


@register_model("vgg11", "cifar")
def vgg11(num_classes: int = 100) -> VGG:
    return VGG((1, 1, 2, 2, 2), num_classes)


@register_model("vgg13", "cifar")
def vgg13(num_classes: int = 100) -> VGG:
    return VGG((2, 2, 2, 2, 2), num_classes)


@register_model("vgg16", "cifar")
def vgg16(num_classes: int = 100) -> VGG:
    return VGG((2, 2, 3, 3, 3), num_classes)


@register_model("vgg19", "cifar")
def vgg19(num_classes: int = 100) -> VGG:
    return VGG((2, 2, 4, 4, 4), num_classes)
