"""CRD: Tian, Krishnan and Isola, "Contrastive Representation Distillation" (ICLR 2020). METHODS.md §1.14.

The original NCE form (RepDistiller ``crd/``), the one every published CRD number comes from
(not the distillers repository's default FIFO/InfoNCE variant, METHODS.md §1.15 and §5 item 18).
Student and teacher embeddings ``feat[-1]`` go through ``Embed`` (Linear to 128, then L2
normalisation without eps) to ``v_s``, ``v_t``. With the dataset index ``y`` of each sample
and ``K`` negatives per sample (drawn by the loader from other classes):

* ``P_s[b,k] = exp(<M_t[idx_bk], v_s[b]>/T) / Z_s``, ``P_t[b,k] = exp(<M_s[idx_bk], v_t[b]>/T) / Z_t``
  (memory rows constant; column 0 the positive, taken from the *memory*, i.e. the embedding
  of that sample when it was last seen, not the current teacher output);
* ``Z_s, Z_t`` are fixed once, on the very first batch, to ``mean(P)·N`` (with the random
  initial memory) and never updated (METHODS.md §5 item 6); they live in the ``params``
  buffer, so a checkpoint carries them;
* NCE with noise ``P_n = 1/N``, ``m = K``, ``ε = 1e-7`` (paper eq. 18, code form):
  ``ℓ(P) = -(1/B)[Σ_b log(P_b0 / (P_b0 + m·P_n + ε)) + Σ_b Σ_{k≥1} log(m·P_n / (P_bk + m·P_n + ε))]``,
  ``L_CRD = ℓ(P_s) + ℓ(P_t)``;
* after scoring, both memories move towards the current batch with momentum 0.5 at the rows
  ``y`` and are renormalised.

Both embeddings are trained. Scores are exponentials of ``<·,·>/0.07 ≤ 14.3``, so they must be
computed in float32 (the Distiller calls ``distill`` outside autocast); half precision would
overflow.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dataset.batch import Batch, DataNeeds
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.common import Embed
from distiller_zoo.flags import FEAT_DIM, MODE, NCE_K, NCE_M, NCE_T
from distiller_zoo.memory import ContrastMemory
from distiller_zoo.registry import register

__all__ = ["CRD", "CRDLoss", "ContrastLoss", "ContrastMemory"]

EPS = 1e-7


class ContrastLoss(nn.Module):
    """CRD's NCE loss on one side's scores ``[B, K+1]`` (column 0 the positive), noise ``1/N``."""

    def __init__(self, n_data: int):
        super().__init__()
        self.n_data = n_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        batch_size, m = x.shape[0], x.shape[1] - 1
        noise = m / self.n_data
        positive = x[:, 0]
        negatives = x[:, 1:]
        log_d1 = torch.log(positive / (positive + noise + EPS))
        log_d0 = torch.log(noise / (negatives + noise + EPS))
        return -(log_d1.sum() + log_d0.sum()) / batch_size


class CRDLoss(nn.Module):
    """CRD criterion: two embeddings, the momentum memory and the NCE loss of both sides.

    Reads ``opt.s_dim, t_dim, feat_dim, n_data, nce_k, nce_t, nce_m`` (RepDistiller's
    constructor); state-dict keys ``embed_s.linear.*``, ``embed_t.linear.*``,
    ``contrast.params``, ``contrast.memory_v1``, ``contrast.memory_v2``.
    """

    def __init__(self, opt: argparse.Namespace):
        super().__init__()
        self.nce_k = opt.nce_k
        self.embed_s = Embed(opt.s_dim, opt.feat_dim)
        self.embed_t = Embed(opt.t_dim, opt.feat_dim)
        self.contrast = ContrastMemory(opt.feat_dim, opt.n_data, opt.nce_k, opt.nce_t, opt.nce_m)
        self.criterion_s = ContrastLoss(opt.n_data)
        self.criterion_t = ContrastLoss(opt.n_data)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        idx: torch.Tensor,
        contrast_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``f_s [B, s_dim]``, ``f_t [B, t_dim]``, ``idx [B]`` dataset indices, ``contrast_idx [B, K+1]``.

        Without ``contrast_idx`` the ``K+1`` rows are drawn uniformly over all N samples and
        column 0 is set to ``idx`` (RepDistiller's alias sampler with uniform weights).
        """
        if contrast_idx is None:
            n_data = self.contrast.n_data
            contrast_idx = torch.randint(n_data, (idx.shape[0], self.nce_k + 1), device=idx.device)
            contrast_idx[:, 0] = idx
        v_s = self.embed_s(f_s)
        v_t = self.embed_t(f_t)
        out_s, out_t = self.contrast(v_s, v_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


@register("crd")
class CRD(Distiller):
    """CRD on the penultimate embeddings; ``-r 1 -a 0 -b 0.8`` (CRD+KD: ``-a 1``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=0.8)
    arguments = (FEAT_DIM, NCE_K, NCE_T, NCE_M, MODE)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup,
                 *, feat_dim: int, nce_k: int, nce_t: float, nce_m: float, mode: str):
        super().__init__(student, teacher, setup)
        self.criterion = CRDLoss(argparse.Namespace(
            s_dim=self.student_shapes[-1][1], t_dim=self.teacher_shapes[-1][1], feat_dim=feat_dim,
            n_data=setup.num_train, nce_k=nce_k, nce_t=nce_t, nce_m=nce_m))

    @classmethod
    def data_needs(cls, *, nce_k: int, mode: str, **_: object) -> DataNeeds:
        return DataNeeds(indices=True, contrast_k=nce_k, contrast_mode=mode)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        loss = self.criterion(student.features[-1], teacher.features[-1], batch.indices,
                              batch.contrast_indices)
        return {self.name: loss}
