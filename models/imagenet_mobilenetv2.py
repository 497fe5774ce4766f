"""MobileNetV2 1.0 for ImageNet (Sandler et al., 2018) that exposes its intermediate features.

The network is torchvision's ``MobileNetV2`` (width 1.0, ReLU6, Dropout(0.2) before the
classifier), subclassed so that its state dict is torchvision's and SimKD's key for key
(``features.N…``, ``classifier.1``) and their checkpoints load strictly. This class only adds
the feature taps of SimKD's ``MobileNetV2_Imagenet`` (METHODS.md §2.3) and the common
``get_feat_modules`` / ``get_classifier`` interface.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from models.feature_net import FeatureNet
from models.registry import register_model


class ImageNetMobileNetV2(FeatureNet, torchvision.models.MobileNetV2):
    """torchvision's MobileNetV2 1.0 with five tapped maps before its last 1×1 convolution.

    ``features[0]`` is the stem; the taps close the stages at resolutions 112, 56, 28, 14 and 7
    (``features[0]``, ``[1:4]``, ``[4:7]``, ``[7:14]``, ``[14:18]``); ``features[18]`` is the
    Conv1×1(320→1280)·BN·ReLU6 head whose pooled output is the embedding. :class:`FeatureNet`
    comes first in the bases so that its feature contract replaces torchvision's ``forward``.
    """

    # features[start:end] slices whose outputs are tapped (start = previous end).
    TAP_ENDS = (1, 4, 7, 14, 18)

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(num_classes=num_classes, width_mult=1.0, dropout=0.2)

    def get_feat_modules(self) -> nn.ModuleList:
        """The 19 entries of ``features`` (stem, inverted residuals, head), without the classifier."""
        return nn.ModuleList(self.features)

    def get_classifier(self) -> nn.Linear:
        """The final Linear (``classifier.1``; ``classifier.0`` is the dropout)."""
        return self.classifier[1]

    def extract_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        """``[f0, f1, f2, f3, f4, emb]``; ``emb`` is the pooled output of ``features[18]`` (1280).

        ``preact`` is accepted for the common contract and ignored.
        """
        feats = []
        start = 0
        for end in self.TAP_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            feats.append(x)
            start = end
        x = self.features[-1](x)
        return [*feats, torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)]

    def forward(
        self, x: torch.Tensor, is_feat: bool = False, preact: bool = False
    ) -> torch.Tensor | tuple[list[torch.Tensor], torch.Tensor]:
        """As :meth:`FeatureNet.forward`, but the logits pass the whole ``classifier``.

        The Dropout(0.2) in front of the Linear must act in training, as in torchvision and
        upstream; :meth:`get_classifier` returns the Linear alone.
        """
        features = self.extract_features(x, preact=preact and is_feat)
        logits = self.classifier(features[-1])
        if is_feat:
            return features, logits
        return logits


@register_model("MobileNetV2_Imagenet", input_kind="imagenet")
def MobileNetV2_Imagenet(num_classes: int = 1000) -> ImageNetMobileNetV2:
    """torchvision ``mobilenet_v2`` (width 1.0), SimKD's ImageNet student."""
    return ImageNetMobileNetV2(num_classes=num_classes)
