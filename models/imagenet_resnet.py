"""ImageNet ResNets in torchvision's layout that expose their intermediate features.

The networks of SimKD's ImageNet registry (METHODS.md §2.3; distillers' `imagenet/` reuses it), 224×224 input.
The state-dict keys follow torchvision exactly (``conv1, bn1, layer1..4, fc``, shortcut
``layerL.0.downsample.{0,1}``), so torchvision checkpoints and upstream ``{'model': state_dict}``
checkpoints load with ``strict=True``. The blocks are torchvision's own ``BasicBlock`` and
``Bottleneck`` (ResNet-50 v1.5: the stride sits on the 3×3 convolution). Besides torchvision's
depths the family has SimKD's "x2" basic-block networks, in which every stage is twice as wide;
torchvision's builder refuses wide basic blocks, hence this class.

Name collision (METHODS.md §2.3 and §5 item 25): upstream SimKD registers the ImageNet ResNet-50
as ``ResNet50``, but in this repository ``ResNet50`` is RepDistiller's CIFAR bottleneck network
(3×3 stem, classifier ``linear``), whose released teachers must keep loading. The ImageNet one
is therefore registered as ``ResNet50_Imagenet``, and :data:`IMAGENET_ALIASES` (defined in
models/registry.py, which the options layer reads without importing torchvision) lets the options
layer translate the upstream name when ``--dataset imagenet`` is given. Only the registry name
differs; the keys are torchvision's, so upstream ImageNet ResNet-50 checkpoints still load.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from models.blocks import init_conv_bn_
from models.feature_net import FeatureNet
from models.registry import IMAGENET_ALIASES as IMAGENET_ALIASES
from models.registry import register_model

Block = type[BasicBlock] | type[Bottleneck]


def _make_stage(
    block: Block,
    in_channels: int,
    planes: int,
    num_blocks: int,
    stride: int,
    groups: int,
    width_per_group: int,
) -> nn.Sequential:
    """One ``layerL``: ``num_blocks`` blocks, the first of which changes stride and width."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    blocks = [block(in_channels, planes, stride, downsample, groups, width_per_group)]
    for _ in range(1, num_blocks):
        blocks.append(block(out_channels, planes, groups=groups, base_width=width_per_group))
    return nn.Sequential(*blocks)


class ImageNetResNet(FeatureNet):
    """Stem Conv7×7 s2 · BN · ReLU · MaxPool 3×3 s2, four residual stages, global pool, ``fc``.

    The forward contract (logits, or features and logits) is :class:`FeatureNet`'s.

    ``stage_planes`` are the ``planes`` of the four stages (a stage outputs
    ``planes * block.expansion`` channels); ``groups`` and ``width_per_group`` give the ResNeXt
    and wide-ResNet variants exactly as in torchvision.
    """

    def __init__(
        self,
        block: Block,
        blocks_per_stage: tuple[int, int, int, int],
        stage_planes: tuple[int, int, int, int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        stem_channels = 64
        self.conv1 = nn.Conv2d(3, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        stages = []
        for planes, num_blocks, stride in zip(stage_planes, blocks_per_stage, (1, 2, 2, 2)):
            stages.append(
                _make_stage(block, in_channels, planes, num_blocks, stride, groups, width_per_group)
            )
            in_channels = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

        # torchvision's initialisation, without its optional zero-init of each block's last BN.
        init_conv_bn_(self)

    def get_feat_modules(self) -> nn.ModuleList:
        """The feature extractor (stem and the four stages), without the classifier."""
        stem = [self.conv1, self.bn1, self.relu, self.maxpool]
        return nn.ModuleList([*stem, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_classifier(self) -> nn.Linear:
        """The final Linear, which maps the pooled embedding to the logits."""
        return self.fc

    def extract_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        """``[f0, f1, f2, f3, f4, emb]``: stem after the max-pool, stage outputs, pooled ``f4``.

        ``preact`` is accepted for the common contract and ignored: upstream has no
        pre-activation taps for these networks.
        """
        f0 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4, torch.flatten(self.avgpool(f4), 1)]


@register_model("ResNet18", input_kind="imagenet")
def ResNet18(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-18 (He et al., 2016), torchvision ``resnet18``."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes)


@register_model("ResNet34", input_kind="imagenet")
def ResNet34(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-34, torchvision ``resnet34``."""
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes)


@register_model("ResNet50_Imagenet", input_kind="imagenet")
def ResNet50_Imagenet(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-50 v1.5, torchvision ``resnet50`` (upstream name ``ResNet50``, see the module doc)."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes)


@register_model("ResNet101", input_kind="imagenet")
def ResNet101(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-101 v1.5, torchvision ``resnet101``."""
    return ImageNetResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes)


@register_model("ResNet10x2", input_kind="imagenet")
def ResNet10x2(num_classes: int = 1000) -> ImageNetResNet:
    """SimKD's basic-block ResNet-10 with every stage twice as wide (128/256/512/1024)."""
    return ImageNetResNet(BasicBlock, (1, 1, 1, 1), (128, 256, 512, 1024), num_classes=num_classes)


@register_model("ResNet18x2", input_kind="imagenet")
def ResNet18x2(num_classes: int = 1000) -> ImageNetResNet:
    """SimKD's ResNet-18 with every stage twice as wide (128/256/512/1024)."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), (128, 256, 512, 1024), num_classes=num_classes)


@register_model("ResNet34x2", input_kind="imagenet")
def ResNet34x2(num_classes: int = 1000) -> ImageNetResNet:
    """SimKD's ResNet-34 with every stage twice as wide (128/256/512/1024)."""
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), (128, 256, 512, 1024), num_classes=num_classes)


@register_model("resnext50_32x4d", input_kind="imagenet")
def resnext50_32x4d(num_classes: int = 1000) -> ImageNetResNet:
    """ResNeXt-50 32×4d (Xie et al., 2017), torchvision ``resnext50_32x4d``."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, groups=32, width_per_group=4)


@register_model("resnext101_32x8d", input_kind="imagenet")
def resnext101_32x8d(num_classes: int = 1000) -> ImageNetResNet:
    """ResNeXt-101 32×8d, torchvision ``resnext101_32x8d``."""
    return ImageNetResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, groups=32, width_per_group=8)


@register_model("wrn_50_2", input_kind="imagenet")
def wrn_50_2(num_classes: int = 1000) -> ImageNetResNet:
    """Wide ResNet-50-2 (bottlenecks twice as wide inside), torchvision ``wide_resnet50_2``."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, width_per_group=128)


@register_model("wrn_101_2", input_kind="imagenet")
def wrn_101_2(num_classes: int = 1000) -> ImageNetResNet:
    """Wide ResNet-101-2, torchvision ``wide_resnet101_2``."""
    return ImageNetResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, width_per_group=128)
