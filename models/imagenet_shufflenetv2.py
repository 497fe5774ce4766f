"""ShuffleNetV2 1.0 for ImageNet (Ma et al., 2018) that exposes its intermediate features.

SimKD's ``ShuffleV2_Imagenet`` is broken upstream (METHODS.md §2.3): its ``conv5`` head
(Conv1×1 464→1024 · BN · ReLU) is commented out of the constructor but still called in
``forward``, so the network cannot run, and its state dict (1,801,420 parameters with 1000
classes) lacks ``conv5``. The intended network is torchvision's ``shufflenet_v2_x1_0``, which
this class subclasses: its keys are upstream's plus the six ``conv5.*`` entries, 2,278,604
parameters. Upstream checkpoints, if any existed, would therefore load only with
``strict=False`` (``conv5`` staying at its initial values); torchvision checkpoints load strictly.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from models.feature_net import FeatureNet
from models.registry import register_model


class ImageNetShuffleNetV2(FeatureNet, torchvision.models.ShuffleNetV2):
    """torchvision's ShuffleNetV2 1.0 with three tapped maps; ``stage4`` itself is not tapped.

    Taps: ``f0`` after the stem's max-pool (24×56²), ``f1`` = ``stage2`` (116×28²), ``f2`` =
    ``stage3`` (232×14²), ``f3`` = ``conv5`` applied to ``stage4`` (1024×7²); the embedding is
    the spatial mean of ``f3``, as in torchvision. :class:`FeatureNet` comes first in the bases
    so that its feature contract replaces torchvision's ``forward``.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(
            stages_repeats=[4, 8, 4], stages_out_channels=[24, 116, 232, 464, 1024], num_classes=num_classes
        )

    def get_feat_modules(self) -> nn.ModuleList:
        """The feature extractor (stem, three stages, ``conv5``), without the classifier."""
        return nn.ModuleList([self.conv1, self.maxpool, self.stage2, self.stage3, self.stage4, self.conv5])

    def get_classifier(self) -> nn.Linear:
        """The final Linear ``fc``."""
        return self.fc

    def extract_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        """``[f0, f1, f2, f3, emb]``; ``preact`` is accepted for the common contract and ignored."""
        f0 = self.maxpool(self.conv1(x))
        f1 = self.stage2(f0)
        f2 = self.stage3(f1)
        f3 = self.conv5(self.stage4(f2))
        return [f0, f1, f2, f3, f3.mean([2, 3])]


@register_model("ShuffleV2_Imagenet", input_kind="imagenet")
def ShuffleV2_Imagenet(num_classes: int = 1000) -> ImageNetShuffleNetV2:
    """torchvision ``shufflenet_v2_x1_0``, the working form of SimKD's ``ShuffleV2_Imagenet``."""
    return ImageNetShuffleNetV2(num_classes=num_classes)
