"""RRD: Giakoumoglou and Stathaki, "Relational Representation Distillation" (arXiv 2407.12073).
METHODS.md §1.16.

The student's similarity distribution over a memory of past teacher embeddings is matched to
the teacher's: with ``v = normalize(Linear(feat[-1]))`` on each side and a FIFO queue ``Q``
``[K, 128]`` of teacher embeddings,

    ``L_RRD = -(1/B) Σ_b Σ_k softmax(v_t[b]Qᵀ/τ_t)_k · log softmax(v_s[b]Qᵀ/τ_s)_k``

(a cross-entropy between the two relational distributions; the teacher's is detached). The
FIFO memory is the variant behind the published tables (the distillers repository's
"momentum" variant on CRD's banks is not implemented).

Choices where upstream disagrees with itself (METHODS.md §5 item 7):

* **Temperatures.** Default ``τ_t = --nce_t_t 0.02`` (sharper teacher) and ``τ_s = --nce_t_s
  0.1`` (softer student), as the current README abstract describes and the distillers HEAD
  argparse sets. The 2024 code behind the first tables used the opposite order (τ_s 0.04,
  τ_t 0.10) and the HEAD class docstring says τ_s 0.02, τ_t 0.1; pass the flags to run those.
* **Enqueue order.** Similarities are computed first and the batch enqueued after (MoCo
  order), as in the table-producing code (commit e6bd9f9); distillers HEAD enqueues first.
* **The teacher embedding never gets a gradient**: the teacher distribution is detached and the
  queue is a buffer, so ``embed_t`` stays the random linear map it was initialised to (upstream
  puts it in the optimiser, where SGD skips it: no update, no weight decay). Here that is made
  explicit: ``embed_t`` has ``requires_grad=False``, so it is not among the optimised
  parameters and DDP does not wait for a gradient that never comes. Its values and state-dict
  keys are unchanged.
* **Partial batches.** Upstream requires ``K mod B = 0`` at every step (METHODS.md §5 item 22);
  the queue here writes with modular indices (:class:`~distiller_zoo.memory.FIFOQueue`), so a
  partial last batch is handled and the loader need not drop it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.flags import FEAT_DIM, NCE_K
from distiller_zoo.memory import FIFOQueue
from distiller_zoo.registry import register

__all__ = ["RRD", "RRDLoss", "RRDMemory"]

NCE_T_S = argument("--nce_t_s", type=float, default=0.1, help="RRD student temperature τ_s")
NCE_T_T = argument("--nce_t_t", type=float, default=0.02, help="RRD teacher temperature τ_t")


class RRDMemory(FIFOQueue):
    """The FIFO queue of teacher embeddings plus both projection heads (upstream's ``memory``)."""

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int, nce_k: int):
        super().__init__(nce_k, feat_dim)
        self.embed_s = nn.Linear(s_dim, feat_dim)
        self.embed_t = nn.Linear(t_dim, feat_dim)
        self.embed_t.requires_grad_(False)


class RRDLoss(nn.Module):
    """RRD criterion with the FIFO memory.

    Reads ``opt.s_dim, t_dim, feat_dim, nce_k, nce_t_s, nce_t_t``; state-dict keys
    ``memory.queue``, ``memory.queue_ptr``, ``memory.embed_s.*``, ``memory.embed_t.*``.
    """

    def __init__(self, opt: argparse.Namespace):
        super().__init__()
        self.nce_t_s = opt.nce_t_s
        self.nce_t_t = opt.nce_t_t
        self.memory = RRDMemory(opt.s_dim, opt.t_dim, opt.feat_dim, opt.nce_k)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """Loss of ``f_s [B, s_dim]`` against ``f_t [B, t_dim]``; then ``v_t`` is enqueued."""
        v_s = F.normalize(self.memory.embed_s(f_s), dim=1)
        with torch.no_grad():
            v_t = F.normalize(self.memory.embed_t(f_t), dim=1)
            queue = self.memory.queue.clone()
            teacher_probs = F.softmax(v_t @ queue.t() / self.nce_t_t, dim=1)
        student_log_probs = F.log_softmax(v_s @ queue.t() / self.nce_t_s, dim=1)
        loss = -(teacher_probs * student_log_probs).sum(1).mean()
        self.memory.enqueue(v_t)
        return loss


@register("rrd", "rcd")
class RRD(Distiller):
    """RRD on the penultimate embeddings; ``-r 1 -a 0 -b 1`` (RRD+KD: ``-a 1``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)
    arguments = (FEAT_DIM, NCE_K, NCE_T_S, NCE_T_T)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup,
                 *, feat_dim: int, nce_k: int, nce_t_s: float, nce_t_t: float):
        super().__init__(student, teacher, setup)
        self.criterion = RRDLoss(argparse.Namespace(
            s_dim=self.student_shapes[-1][1], t_dim=self.teacher_shapes[-1][1], feat_dim=feat_dim,
            nce_k=nce_k, nce_t_s=nce_t_s, nce_t_t=nce_t_t))

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(student.features[-1], teacher.features[-1])}
