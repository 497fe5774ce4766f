"""ReviewKD: Chen, Liu, Zhao and Jia, "Distilling Knowledge via Knowledge Review" (CVPR 2021).

The student's levels ``F_1 … F_n`` (its stage maps, then the pooled embedding as a 1×1 map) are
fused from the deepest to the shallowest by attention-based fusion (ABF) modules; each fused map
is compared with the teacher's level at the same position by the hierarchical context loss
(HCL):

    R_n = ABF_n(F_n),   R_i = ABF_i(F_i, residual of ABF_{i+1})   (i = n−1 … 1)
    HCL(R, T) = ( MSE(R, T) + Σ_{k ∈ (4, 2, 1), k < h} 2^{−j_k} · MSE(pool_k(R), pool_k(T)) ) / (1 + Σ 2^{−j_k})

where ``h`` is the map's height, ``pool_k`` adaptive average pooling to ``k×k`` and ``j_k`` the
rank (1, 2, 3) of ``k`` among the pools actually used. The term is

    L_ReviewKD = ramp(epoch) · Σ_levels HCL(R_i, T_i),   ramp = min((epoch − 1) / warm-up, 1)

An ABF maps its input to ``mid = min(--reviewkd_max_mid, C_n)`` channels (``C_n`` the student's
embedding width, as upstream), blends it with the up-sampled residual by two sigmoid attention
maps, resizes it to the teacher's resolution and maps it to the teacher's width with a 3×3
conv·BN. Every channel count and resolution is probed from the two feature lists, never typed
per pair; a pair whose networks have different numbers of levels is refused.

Choices where upstream differs:

* **Warm-up indexing.** The authors' CIFAR code counts epochs from 0, so its ramp is 0 in the
  first epoch and reaches 1 in the 21st; mdistiller counts from 1 (``epoch / 20``). The
  published numbers (75.63 on resnet32x4→resnet8x4) come from the authors' code, so the ramp
  here is ``(epoch − 1) / warm-up`` with this repository's 1-indexed epoch. ImageNet has no
  warm-up upstream: ``--reviewkd_warmup 0``.
* **Taps.** The teacher is always tapped before its last activations (``preact``); the student
  after them on CIFAR (both upstreams) and before them on ImageNet (the authors' ImageNet
  networks return pre-ReLU stage outputs; mdistiller's ``STU_PREACT``):
  ``--reviewkd_student_taps preact``. This repository's ImageNet networks have no
  pre-activation taps (they ignore ``preact``), so there both sides are tapped after the ReLUs.
* The authors' ImageNet ResNet50→MobileNet pair uses 256 middle channels, not
  ``min(512, 1024)``: ``--reviewkd_max_mid 256``.

Weights: CIFAR ``-r 1 -a 0 -b 5`` (per-pair values of the authors' script: 8 for
resnet32x4→ShuffleV2, 0.6 for resnet56→resnet20, 1 for resnet110→resnet32); ImageNet ``-b 1``
(ResNet34→ResNet18; the authors' ResNet50→MobileNet uses 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.registry import register

__all__ = ["ABF", "ReviewKD", "hcl", "hcl_loss"]

PYRAMID = (4, 2, 1)

REVIEWKD_WARMUP = argument("--reviewkd_warmup", type=int, default=20,
                           help="ReviewKD: epochs of the linear warm-up of its term (CIFAR 20; 0 = none, ImageNet)")
REVIEWKD_STUDENT_TAPS = argument("--reviewkd_student_taps", default="post", choices=["post", "preact"],
                                 help="ReviewKD: student taps after (post: CIFAR) or before (preact: ImageNet) ReLUs")
REVIEWKD_MAX_MID = argument("--reviewkd_max_mid", type=int, default=512,
                            help="ReviewKD: ABF width = min(this, student embedding width); R50→MobileNet: 256")


def hcl_loss(list_s: Sequence[torch.Tensor], list_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss summed over paired ``[B, C, H, W]`` maps (ReviewKD ``hcl``)."""
    total = torch.zeros((), device=list_s[0].device)
    for f_s, f_t in zip(list_s, list_t):
        height = f_s.shape[2]
        loss, weight, weights = F.mse_loss(f_s, f_t), 1.0, 1.0
        for size in PYRAMID:
            if size >= height:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
            weights += weight
        total = total + loss / weights
    return total


hcl = hcl_loss  # the authors' name for it


class ABF(nn.Module):
    """Attention-based fusion (ReviewKD ``ABF``; state-dict keys ``conv1.*``, ``conv2.*``, ``att_conv.*``).

    ``forward(x, y=None, shape=None, out_shape=None) -> (y, x)``: ``x`` (the student's level) is
    mapped to ``mid_channel`` channels; when ``fuse``, the residual ``y`` of the deeper level is
    resized to ``shape × shape`` and the two are blended by two sigmoid attention maps. The
    result (the residual handed to the next, shallower level) is resized to
    ``out_shape × out_shape`` and mapped to ``out_channel`` channels (the output compared with
    the teacher).
    """

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channel, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, shape: int | None = None,
                out_shape: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            attention = self.att_conv(torch.cat([x, y], dim=1))
            x = x * attention[:, 0:1] + y * attention[:, 1:2]
        if out_shape is not None and x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """A feature as a ``[B, C, H, W]`` map: the pooled embedding ``[B, C]`` becomes ``[B, C, 1, 1]``."""
    return feature if feature.dim() == 4 else feature.reshape(*feature.shape, 1, 1)


def level_sizes(shapes: Sequence[torch.Size]) -> tuple[list[int], list[int]]:
    """Channels and heights of the levels ``features[1:]`` (the embedding counts as 1×1)."""
    levels = shapes[1:]
    return [int(s[1]) for s in levels], [int(s[2]) if len(s) == 4 else 1 for s in levels]


@register("reviewkd")
class ReviewKD(Distiller):
    """Review the student's levels deep to shallow through ABFs; HCL against the teacher (``-b 5``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=5.0)
    preact = True  # the teacher's taps (and the probed shapes); the student's follow --reviewkd_student_taps
    arguments = (REVIEWKD_WARMUP, REVIEWKD_STUDENT_TAPS, REVIEWKD_MAX_MID)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *,
                 reviewkd_warmup: int, reviewkd_student_taps: str, reviewkd_max_mid: int):
        super().__init__(student, teacher, setup)
        self.warmup = reviewkd_warmup
        self.student_preact = reviewkd_student_taps == "preact"
        in_channels, shapes = level_sizes(self.student_shapes)
        out_channels, out_shapes = level_sizes(self.teacher_shapes)
        mid_channel = min(reviewkd_max_mid, in_channels[-1])
        # Deepest level first, as upstream's reversed list: only the deepest ABF does not fuse.
        self.abfs = nn.ModuleList([ABF(c_in, mid_channel, c_out, fuse=index > 0) for index, (c_in, c_out)
                                   in enumerate(zip(in_channels[::-1], out_channels[::-1]))])
        self.shapes, self.out_shapes = shapes[::-1], out_shapes[::-1]

    @classmethod
    def pairing_problem(cls, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> str | None:
        n_s, n_t = len(student_shapes) - 1, len(teacher_shapes) - 1
        if n_s != n_t:
            return (f"ReviewKD pairs the levels (stage maps and embedding) one to one, but the student has {n_s} "
                    f"and the teacher {n_t}")
        return None

    def run_student(self, images: torch.Tensor) -> Outputs:
        features, logits = self.student(images, is_feat=True, preact=self.student_preact)
        return Outputs(list(features), logits)

    def review(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs for the student's levels (shallow to deep, like the teacher's)."""
        deep_first = list(levels)[::-1]
        output, residual = self.abfs[0](deep_first[0], out_shape=self.out_shapes[0])
        outputs = [output]
        for feature, abf, shape, out_shape in zip(deep_first[1:], self.abfs[1:], self.shapes[1:],
                                                  self.out_shapes[1:]):
            output, residual = abf(feature, residual, shape, out_shape)
            outputs.insert(0, output)
        return outputs

    def ramp(self) -> float:
        """The warm-up factor of the current (1-indexed) epoch: 0 in the first, 1 from ``warmup + 1`` on."""
        return min((self.epoch - 1) / self.warmup, 1.0) if self.warmup > 0 else 1.0

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        reviewed = self.review([as_map(f) for f in student.features[1:]])
        targets = [as_map(f) for f in teacher.features[1:]]
        return {self.name: self.ramp() * hcl_loss(reviewed, targets)}
