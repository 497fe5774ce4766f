"""SemCKD: Chen et al., "Cross-Layer Distillation with Semantic Calibration" (AAAI 2021),
Eq. 3–6. METHODS.md §1.21.

Every student map ``feat_s[1:-1]`` (n_s of them) is matched to every teacher map
``feat_t[1:-1]`` (n_t). For pair (i, j) a projector ``Proj_ij`` (Conv1×1 → Conv3×3 → Conv1×1,
no bias, BN+ReLU after the first two) maps the student map to the teacher's channels, after
pooling the larger map to the smaller's height, and

    ℓ[b, i, j] = mean_{C·H·W} (Proj_ij(f_s_i) − f_t_j)²[b].

How much pair (i, j) counts for sample b is learned by attention over the batch similarity
structure: each layer's Gram matrix ``A = F Fᵀ`` (``F`` = the map flattened to ``[B, C·H·W]``)
goes row-wise through a query head (student layer i) or key head (teacher layer j),
``Linear(B → 2·(B/4)) · ReLU · Linear(2·(B/4) → B/4) · L2norm`` (no eps), and
``α = softmax_j(q · k / soft)`` ``[B, n_s, n_t]``. Then

    L_SemCKD = Σ_{b,i,j} α[b,i,j] · ℓ[b,i,j] / (B · n_s)

with ``α`` not detached (the attention heads learn through this loss).

The heads' input width is the batch size, so every training batch must be exactly
``--batch_size`` wide (per process under torchrun, as the flag is). SimKD's loop skips the short
last batch; here the method asks the loader for ``drop_last`` (METHODS.md §5 item 11), and a
batch of another size is an error rather than silently skipped.

Upstream's key/query head also builds a second ``Linear · ReLU · · Linear`` stack
(``regressor.0`` / ``regressor.3``) that its forward never calls. It is kept, frozen
(``requires_grad=False``, so no optimiser sees it), only so that SimKD-written state dicts load
by name; it never influences the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dataset.batch import Batch, DataNeeds
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.common import align_spatial, l2_normalize_exact
from distiller_zoo.registry import register
from errors import UsageError

__all__ = ["MLPEmbed", "Proj", "SelfA", "SemCKD", "SemCKDLoss"]

SOFT = argument("-s", "--soft", type=float, default=1.0,
                help="SemCKD attention scale: softmax(q·k / soft)")


class MLPEmbed(nn.Module):
    """A query/key head: Linear(dim_in → 2·dim_out) · ReLU · Linear(→ dim_out) · L2norm (no eps)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)
        self.relu = nn.ReLU()
        # Never called (see the module docstring); only indices 0 and 3 carry parameters.
        self.regressor = nn.Sequential(
            nn.Linear(dim_in, 2 * dim_out), nn.ReLU(), nn.Identity(), nn.Linear(2 * dim_out, dim_out)
        )
        self.regressor.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize_exact(self.linear2(self.relu(self.linear1(x.flatten(1)))))


class Proj(nn.Module):
    """The per-pair projector (SimKD ``Proj``): C_s → 2C_t → 2C_t → C_t, convs without bias."""

    def __init__(self, num_input_channels: int, num_target_channels: int):
        super().__init__()
        hidden = 2 * num_target_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(num_input_channels, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_target_channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(x)


class SelfA(nn.Module):
    """Cross-layer attention and projections (SimKD ``SelfA``).

    ``feat_dim`` is the batch size (the heads' input width), ``s_n``/``t_n`` the channel counts
    of the student/teacher maps. ``forward(feat_s, feat_t)`` returns ``(s_value, f_target,
    weight)``: ``s_value[i][j]`` the projected student map i for teacher map j,
    ``f_target[i][j]`` teacher map j pooled to match, and the attention ``[B, n_s, n_t]``.
    State-dict keys: ``query_i.*``, ``key_j.*``, ``regressor{i}{j}.regressor.*``.
    """

    def __init__(self, feat_dim: int, s_n: Sequence[int], t_n: Sequence[int], soft: float, factor: int = 4):
        super().__init__()
        self.feat_dim = feat_dim
        self.soft = soft
        self.s_len, self.t_len = len(s_n), len(t_n)
        for i in range(self.s_len):
            self.add_module(f"query_{i}", MLPEmbed(feat_dim, feat_dim // factor))
        for j in range(self.t_len):
            self.add_module(f"key_{j}", MLPEmbed(feat_dim, feat_dim // factor))
        for i, s_channels in enumerate(s_n):
            for j, t_channels in enumerate(t_n):
                self.add_module(f"regressor{i}{j}", Proj(s_channels, t_channels))

    @staticmethod
    def gram(f: torch.Tensor) -> torch.Tensor:
        """The batch similarity matrix ``F Fᵀ`` ``[B, B]`` of a map flattened per sample."""
        flat = f.flatten(1)
        return flat @ flat.t()

    def forward(
        self, feat_s: Sequence[torch.Tensor], feat_t: Sequence[torch.Tensor]
    ) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], torch.Tensor]:
        if feat_s[0].shape[0] != self.feat_dim:
            raise ValueError(
                f"SemCKD's attention heads are {self.feat_dim} samples wide, but the batch has "
                f"{feat_s[0].shape[0]}; every training batch must be exactly --batch_size"
            )
        query = torch.stack([getattr(self, f"query_{i}")(self.gram(f)) for i, f in enumerate(feat_s)], 1)
        key = torch.stack([getattr(self, f"key_{j}")(self.gram(f)) for j, f in enumerate(feat_t)], 2)
        weight = torch.softmax(torch.bmm(query, key) / self.soft, dim=-1)
        s_value: list[list[torch.Tensor]] = []
        f_target: list[list[torch.Tensor]] = []
        for i, f_s in enumerate(feat_s):
            s_value.append([])
            f_target.append([])
            for j, f_t in enumerate(feat_t):
                source, target = align_spatial(f_s, f_t)
                s_value[i].append(getattr(self, f"regressor{i}{j}")(source))
                f_target[i].append(target)
        return s_value, f_target, weight


class SemCKDLoss(nn.Module):
    """The attention-weighted sum of per-sample, per-pair MSEs, divided by ``B · n_s``."""

    def forward(
        self, s_value: Sequence[Sequence[torch.Tensor]], f_target: Sequence[Sequence[torch.Tensor]],
        weight: torch.Tensor,
    ) -> torch.Tensor:
        batch_size, num_student, num_teacher = weight.shape
        pair_losses = torch.stack([
            torch.stack([
                (s_value[i][j] - f_target[i][j]).pow(2).flatten(1).mean(1) for j in range(num_teacher)
            ], 1)
            for i in range(num_student)
        ], 1)
        return (weight * pair_losses).sum() / (batch_size * num_student)


@register("semckd")
class SemCKD(Distiller):
    """Cross-layer distillation with learned semantic calibration (SK ``-c 1 -d 1 -b 400``)."""

    recommended = Weights(gamma=1.0, alpha=1.0, beta=400.0)
    arguments = (SOFT,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, soft: float):
        super().__init__(student, teacher, setup)
        if setup.batch_size < 4:
            raise UsageError(
                f"--distill semckd needs --batch_size of at least 4 (its attention heads are "
                f"batch_size/4 wide), got {setup.batch_size}"
            )
        s_n = [shape[1] for shape in self.student_shapes[1:-1]]
        t_n = [shape[1] for shape in self.teacher_shapes[1:-1]]
        self.self_attention = SelfA(setup.batch_size, s_n, t_n, soft)
        self.criterion = SemCKDLoss()

    @classmethod
    def data_needs(cls, **_: object) -> DataNeeds:
        """Full batches only: the attention heads' input width is the batch size."""
        return DataNeeds(drop_last=True)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        s_value, f_target, weight = self.self_attention(student.features[1:-1], teacher.features[1:-1])
        return {"semckd": self.criterion(s_value, f_target, weight)}
