"""Pieces several methods share: the KD term, spatial alignment, regressors and embeddings.

Class names and parameter names follow RepDistiller/SimKD (``ConvReg``, ``Embed``,
``LinearEmbed``), so state dicts written by those code bases load by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def softened_kl(y_s: torch.Tensor, y_t: torch.Tensor, T: float | torch.Tensor) -> torch.Tensor:
    """``KL(softmax(y_t/T) || softmax(y_s/T)) · T²``, summed over classes, averaged over the batch.

    ``T`` may be a tensor (CTKD's learned temperature), through which gradients then flow.
    """
    log_p_s = F.log_softmax(y_s / T, dim=1)
    log_p_t = F.log_softmax(y_t / T, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    return kl * T**2 / y_s.shape[0]


class DistillKL(nn.Module):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (METHODS.md §1.1).

    ``KL(softmax(z_t/T) || softmax(z_s/T)) * T²``, summed over classes and averaged over the
    batch. Every method computes it; ``-a`` weighs it. A third argument ``temp`` overrides the
    constructor's ``T`` for that call, as CTKD's ``DistillKL()(y_s, y_t, temp)`` does (CTKD
    constructs it without a temperature and passes its learned one each step).
    """

    def __init__(self, T: float | None = None):
        super().__init__()
        self.T = T

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor,
                temp: float | torch.Tensor | None = None) -> torch.Tensor:
        return softened_kl(y_s, y_t, self._temperature(temp))

    def _temperature(self, temp: float | torch.Tensor | None) -> float | torch.Tensor:
        """The temperature of one call: ``temp`` when given, else the constructor's ``T``."""
        if temp is not None:
            return temp
        if self.T is None:
            raise ValueError("DistillKL() was built without a temperature: pass one as the third argument")
        return self.T


class DistillKL_logit_stand(DistillKL):
    """KD on standardised logits (Sun et al., CVPR 2024): ``DistillKL`` of ``normalize(y_s)``, ``normalize(y_t)``.

    Called ``(y_s, y_t, temp)`` as in the paper's CTKD port, or ``(y_s, y_t)`` with the
    constructor's ``T``; the temperature is the base temperature (2 in the paper's CIFAR runs).
    """

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor,
                temp: float | torch.Tensor | None = None) -> torch.Tensor:
        return softened_kl(normalize(y_s), normalize(y_t), self._temperature(temp))


def kd_criterion(T: float, logit_stand: bool | None) -> DistillKL:
    """The KD term of a Distiller at temperature ``T``: on standardised logits when ``logit_stand``.

    ``logit_stand`` is ``--logit_stand``, which is None when a caller omits it (off).
    """
    return DistillKL_logit_stand(T) if logit_stand else DistillKL(T)


def normalize(logit: torch.Tensor) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each sample's logits z-scored, unbiased std.

    ``(z - mean(z)) / (std(z) + 1e-7)`` over the class dimension, as the paper's code does.
    """
    mean = logit.mean(dim=-1, keepdim=True)
    std = logit.std(dim=-1, keepdim=True)
    return (logit - mean) / (1e-7 + std)


def align_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two maps down to the smaller's height (METHODS.md §0.3).

    Only ``shape[2]`` is compared and the result is square, as upstream does.
    """
    s_height, t_height = f_s.shape[2], f_t.shape[2]
    if s_height > t_height:
        f_s = F.adaptive_avg_pool2d(f_s, (t_height, t_height))
    elif s_height < t_height:
        f_t = F.adaptive_avg_pool2d(f_t, (s_height, s_height))
    return f_s, f_t


def l2_normalize_exact(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||₂`` along dim 1 with no epsilon, as RepDistiller's ``Normalize(2)``."""
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


class ConvReg(nn.Module):
    """FitNet's regressor: conv (sized by the shape rule of METHODS.md §1.2), BN, optional ReLU.

    ``s_shape``/``t_shape`` are ``[B, C, H, W]``. When the student map is smaller than the
    teacher's by a ratio other than 2, SimKD's rule is used (a 3×3 conv, and the teacher map
    is pooled down to the student's size) instead of RepDistiller's error.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True):
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        self.pools_teacher = False
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=1, padding=1)
            self.pools_teacher = True
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(
        self, x: torch.Tensor, f_t: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``regress(f_s)`` (RepDistiller) or ``regress(f_s, f_t) -> (f_s', f_t')`` (SimKD).

        In the second form the teacher map comes back pooled to the student's size when the
        SimKD shape rule applies, and unchanged otherwise.
        """
        student_height = x.shape[2]
        x = self.bn(self.conv(x))
        if self.use_relu:
            x = self.relu(x)
        if f_t is None:
            return x
        if self.pools_teacher:
            f_t = F.adaptive_avg_pool2d(f_t, (student_height, student_height))
        return x, f_t


class Embed(nn.Module):
    """CRD's embedding head: Linear then L2 normalisation without epsilon (RepDistiller ``Embed``)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize_exact(self.linear(x.flatten(1)))


class LinearEmbed(nn.Module):
    """A plain Linear embedding of the flattened input (RepDistiller ``LinearEmbed``, used by CC)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def channel_mismatch(s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]],
                     first_index: int = 0) -> str | None:
    """Where two lists of maps differ in count or channels (methods that match maps channel by channel)."""
    s_channels = [int(shape[1]) for shape in s_shapes]
    t_channels = [int(shape[1]) for shape in t_shapes]
    if len(s_channels) != len(t_channels):
        return (f"the student has {len(s_channels)} maps (channels {s_channels}) and the teacher "
                f"{len(t_channels)} (channels {t_channels})")
    differing = [f"feat[{first_index + i}] student {s} vs teacher {t}"
                 for i, (s, t) in enumerate(zip(s_channels, t_channels)) if s != t]
    if differing:
        return f"channel counts differ at {', '.join(differing)}"
    return None
