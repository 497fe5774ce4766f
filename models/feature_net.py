"""The feature contract every network of the zoo honours (METHODS.md §0.1).

RepDistiller ("Contrastive Representation Distillation", Tian et al., ICLR 2020) fixed the
interface that every later distillation code base kept: ``forward(x, is_feat=False,
preact=False)`` returns the logits, or with ``is_feat=True`` the pair ``(features, logits)``,
where ``features`` is a list ``[stem, stage_1, ..., stage_k, embedding]``: the stem output, the
output of each stage, and last the pooled, flattened embedding that the linear classifier reads.
``preact=True`` swaps the stage outputs for their values before the final non-linearity.

A network subclasses :class:`FeatureNet` and says only *how* its features are computed; the
contract itself lives here, once.
"""

from __future__ import annotations

from torch import Tensor, nn


class FeatureNet(nn.Module):
    """A classifier that also exposes its intermediate features.

    Subclasses implement :meth:`extract_features`, :meth:`get_classifier` and
    :meth:`get_feat_modules`; :meth:`forward` applies the classifier to the last feature.
    """

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        """Return ``[stem, stage outputs..., pooled embedding]`` for a batch of images."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:
        """The final linear layer, which maps the embedding to the logits."""
        raise NotImplementedError

    def get_feat_modules(self) -> nn.ModuleList:
        """RepDistiller's list of feature-extracting modules (METHODS.md §2.1), no classifier.

        AB and FSP train exactly these modules in their initialisation stage.
        """
        raise NotImplementedError

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm whose output is the last term of each stage's pre-activation tap.

        One per stage map of the feature list (``features[1:-1]``), in order. OFD (Heo et al.,
        ICCV 2019) reads the teacher's BN scale and shift to derive its margins. A network whose
        pre-activation taps do not end in one BN (e.g. ShuffleNetV2, whose tap concatenates an
        un-normalised half) does not override this, as in mdistiller, and cannot be OFD's teacher.
        """
        raise NotImplementedError(f"{type(self).__name__} has no BatchNorm right before each stage's activation")

    def forward(
        self, x: Tensor, is_feat: bool = False, preact: bool = False
    ) -> Tensor | tuple[list[Tensor], Tensor]:
        """Logits, or ``(features, logits)`` when ``is_feat`` is true.

        ``preact`` only matters together with ``is_feat``, as upstream: the pre-activation taps
        are computed only when features are returned.
        """
        features = self.extract_features(x, preact=preact and is_feat)
        logits = self.get_classifier()(features[-1])
        if is_feat:
            return features, logits
        return logits
