"""FT: Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer"
(NeurIPS 2018), Eq. 3 as RepDistiller computes it. METHODS.md §1.10.

A *paraphraser* (a small conv auto-encoder on the teacher's last map ``feat_t[-2]``) is first
trained to reconstruct that map; its encoder output is the teacher's "factor". A *translator*
on the student's last map produces the student's factor, and the student is trained to match
the teacher's factor.

Faithful to the published numbers rather than to the paper (METHODS.md §5 item 3): the factor
is normalised as RepDistiller does, into an attention map, not the paper's normalised factor
vector: ``φ(F) = normalize(flatten(mean_over_channels(F^p1)))`` (eps 1e-12), and the loss is
``mean |φ(F_s) − φ(F_t)|`` for ``p2 = 1`` (``mean (φ_s − φ_t)^p2`` otherwise), after pooling the
larger factor to the smaller's height (§0.3).

Two stages, as RepDistiller runs them:

* **init stage** (``--init_epochs`` epochs, constant lr): only the paraphraser is trained, on
  ``MSE(decoder(encoder(f_t)), f_t)``; lr 0.01 when the student is a ``resnet*``/``wrn*``
  model, the run's learning rate otherwise. The student is in eval mode (it is run but unused).
* **main stage**: the paraphraser is frozen (eval mode, not optimised; the teacher factor is
  computed without autograd); the translator is trained with the student on ``factor`` at β.

DS-cifar's FT branch cannot run (NameError, METHODS.md §5 item 17); this follows RepDistiller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, InitStage, Outputs, Weights
from distiller_zoo.common import align_spatial
from distiller_zoo.flags import INIT_EPOCHS
from distiller_zoo.registry import register

__all__ = ["FT", "FactorTransfer", "Paraphraser", "Translator"]

# The student families whose FT init stage RepDistiller runs at lr 0.01 (METHODS.md §1.10).
SMALL_INIT_LR_PREFIXES = ("resnet", "wrn")
SMALL_INIT_LR = 0.01


def _conv_unit(conv: nn.Module, channels: int, use_bn: bool) -> list[nn.Module]:
    """conv, BN (or a parameter-free placeholder that keeps upstream's indices), LeakyReLU(0.1)."""
    return [conv, nn.BatchNorm2d(channels) if use_bn else nn.Identity(), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """The teacher-side auto-encoder (RepDistiller ``Paraphraser``).

    Encoder C→C→kC→kC and decoder kC→kC→C→C, all 3×3 stride-1 convs (transposed in the decoder)
    with bias, each followed by BN when ``use_bn`` and LeakyReLU(0.1). ``t_shape`` is the
    teacher map's ``[B, C, H, W]``.
    """

    def __init__(self, t_shape: Sequence[int], k: float = 0.5, use_bn: bool = False):
        super().__init__()
        channels = t_shape[1]
        factor_channels = int(channels * k)
        self.encoder = nn.Sequential(
            *_conv_unit(nn.Conv2d(channels, channels, 3, 1, 1), channels, use_bn),
            *_conv_unit(nn.Conv2d(channels, factor_channels, 3, 1, 1), factor_channels, use_bn),
            *_conv_unit(nn.Conv2d(factor_channels, factor_channels, 3, 1, 1), factor_channels, use_bn),
        )
        self.decoder = nn.Sequential(
            *_conv_unit(nn.ConvTranspose2d(factor_channels, factor_channels, 3, 1, 1), factor_channels,
                        use_bn),
            *_conv_unit(nn.ConvTranspose2d(factor_channels, channels, 3, 1, 1), channels, use_bn),
            *_conv_unit(nn.ConvTranspose2d(channels, channels, 3, 1, 1), channels, use_bn),
        )

    def forward(
        self, f_s: torch.Tensor, is_factor: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The factor, or ``(factor, reconstruction)`` (upstream names the input ``f_s``)."""
        factor = self.encoder(f_s)
        if is_factor:
            return factor
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """The student-side encoder (RepDistiller ``Translator``): C_s→C_s→kC_t→kC_t, 3×3 convs."""

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], k: float = 0.5, use_bn: bool = True):
        super().__init__()
        channels = s_shape[1]
        factor_channels = int(t_shape[1] * k)
        self.encoder = nn.Sequential(
            *_conv_unit(nn.Conv2d(channels, channels, 3, 1, 1), channels, use_bn),
            *_conv_unit(nn.Conv2d(channels, factor_channels, 3, 1, 1), factor_channels, use_bn),
            *_conv_unit(nn.Conv2d(factor_channels, factor_channels, 3, 1, 1), factor_channels, use_bn),
        )

    def forward(self, f_s: torch.Tensor) -> torch.Tensor:
        return self.encoder(f_s)


class FactorTransfer(nn.Module):
    """The factor-transfer loss between two factors (RepDistiller ``FactorTransfer``)."""

    def __init__(self, p1: float = 2, p2: float = 1):
        super().__init__()
        self.p1 = p1
        self.p2 = p2

    def factor(self, f: torch.Tensor) -> torch.Tensor:
        """The normalised attention map of a factor: ``normalize(mean_c(f^p1))`` over space."""
        return F.normalize(f.pow(self.p1).mean(1).flatten(1))

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = align_spatial(f_s, f_t)
        difference = self.factor(f_s) - self.factor(f_t)
        if self.p2 == 1:
            return difference.abs().mean()
        return difference.pow(self.p2).mean()


@register("factor", "ft")
class FT(Distiller):
    """Factor transfer: paraphraser pre-training, then the translator's factor loss (``-b 200``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=200.0)
    arguments = (INIT_EPOCHS,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, init_epochs: int):
        super().__init__(student, teacher, setup)
        self.init_epochs = init_epochs
        s_shape, t_shape = self.student_shapes[-2], self.teacher_shapes[-2]
        self.paraphraser = Paraphraser(t_shape, k=0.5, use_bn=False)
        self.translator = Translator(s_shape, t_shape, k=0.5, use_bn=True)
        self.criterion = FactorTransfer(p1=2, p2=1)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        factor_s = self.translator(student.features[-2])
        with torch.no_grad():
            factor_t = self.paraphraser(teacher.features[-2], is_factor=True)
        return {"factor": self.criterion(factor_s, factor_t)}

    @property
    def init_stage(self) -> InitStage:
        small = self.setup.student_name.startswith(SMALL_INIT_LR_PREFIXES)
        learning_rate = SMALL_INIT_LR if small else self.setup.learning_rate
        return InitStage(epochs=self.init_epochs, learning_rate=learning_rate, terms=("reconstruction",))

    def init_parameters(self) -> list[nn.Parameter]:
        """The paraphraser alone."""
        return list(self.paraphraser.parameters())

    def init_terms(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        f_t = teacher.features[-2]
        _, reconstruction = self.paraphraser(f_t)
        return {"reconstruction": F.mse_loss(reconstruction, f_t)}

    def main_parameters(self) -> list[nn.Parameter]:
        """The student and the translator; the paraphraser stays as the init stage left it."""
        return [*(p for p in self.student.parameters() if p.requires_grad), *self.translator.parameters()]

    def train(self, mode: bool = True) -> FT:
        """Init stage: only the paraphraser trains; main stage: the paraphraser is in eval mode."""
        super().train(mode)
        if mode and self.stage == "init":
            self.student.eval()
            self.translator.eval()
        elif mode:
            self.paraphraser.eval()
        return self

