"""ITRD: Miles, Lopez-Rodriguez and Mikolajczyk, "Information Theoretic Representation
Distillation" (BMVC 2022). METHODS.md §1.18 (the authors' ITRD repository, ``ITLoss``).

Two terms on the penultimate embeddings ``e_s [B, d_s]``, ``e_t [B, d_t]``, with one shared
trainable ``Embed = Linear(d_s → d_t)``; the teacher embedding is used raw:

* correlation: ``z = Embed(e_s)``; standardise every dimension over the batch (unbiased std),
  ``c_k = (1/B) Σ_b ẑ[b,k] ê_t[b,k]``, ``L_corr = log₂ Σ_k (|c_k − 1|²)^α``, α = ``--alpha_it``;
* mutual information: ``u = Embed(e_s)`` only when ``d_s ≠ d_t`` (else ``e_s``);
  ``G_s = û ûᵀ``, ``G_st = G_s ⊙ t̂ t̂ᵀ`` on L2-normalised rows, each divided by its trace;
  ``L_mi = Σ (G_s² − G_st²)``.

Both terms can be negative. The Distiller reports them as two terms, ``corr`` and ``mutual``,
weighted ``β·λ_corr`` and ``β·λ_mutual``, as the ITRD repository does; the distillers
repository's copy stores the λ's but sums the terms with weight 1, which is not followed.
Both networks are tapped with ``preact=True`` as ITRD does (no effect on ``feat[-1]``; for WRN
students it runs three BN layers twice, METHODS.md §5 item 12). No KD term in ITRD's
objective: the recommended ``-a`` is 0.

**NaN risk** (METHODS.md §5 item 9): the batch std has no epsilon, as upstream; a teacher
dimension that is constant over a batch (e.g. a channel that is zero after ReLU for every
image of the batch) divides 0 by 0 and the correlation term is NaN. The formula is kept; the
training loop's NaN guard stops such a run.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.common import LinearEmbed
from distiller_zoo.registry import register

__all__ = ["ITRD", "ITLoss"]

LAMBDA_CORR = argument("--lambda_corr", type=float, default=2.0, help="ITRD correlation-loss weight λ_corr")
LAMBDA_MUTUAL = argument("--lambda_mutual", type=float, default=0.05,
                         help="ITRD mutual-information-loss weight λ_mutual (README example: 1.0)")
ALPHA_IT = argument("--alpha_it", type=float, default=1.5,
                    help="ITRD correlation-loss exponent α (README example: 1.01)")


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (unbiased) std per dimension over the batch; no epsilon, as upstream."""
    return (x - x.mean(0)) / x.std(0)


class ITLoss(nn.Module):
    """ITRD criterion; reads ``opt.s_dim, t_dim, n_data, alpha_it`` and the λ weights.

    State-dict keys ``embed.linear.weight``/``bias`` (``Linear(s_dim → t_dim)``).
    ``lambda_corr``/``lambda_mutual`` weigh :meth:`forward`; upstream's constructor takes
    ``opt`` alone, so they are keyword arguments with the flag defaults.
    """

    def __init__(self, opt: argparse.Namespace, lambda_corr: float = LAMBDA_CORR.default,
                 lambda_mutual: float = LAMBDA_MUTUAL.default):
        super().__init__()
        self.s_dim = opt.s_dim
        self.t_dim = opt.t_dim
        self.n_data = opt.n_data
        self.alpha_it = opt.alpha_it
        self.lambda_corr = lambda_corr
        self.lambda_mutual = lambda_mutual
        self.embed = LinearEmbed(opt.s_dim, opt.t_dim)

    def forward_correlation_it(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """``log₂ Σ_k (|c_k − 1|²)^α`` of the per-dimension student/teacher correlations ``c_k``."""
        student = _standardise(self.embed(z_s))
        teacher = _standardise(z_t)
        correlation = (student * teacher).sum(0) / student.shape[0]
        return torch.log2((correlation - 1).abs().pow(2).pow(self.alpha_it).sum())

    def forward_mutual_it(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """``Σ (G_s² − G_st²)`` of the trace-normalised student and joint Gram matrices."""
        if self.s_dim != self.t_dim:
            z_s = self.embed(z_s)
        student = F.normalize(z_s, dim=1)
        teacher = F.normalize(z_t, dim=1)
        gram_s = student @ student.t()
        gram_st = gram_s * (teacher @ teacher.t())
        gram_s = gram_s / torch.trace(gram_s)
        gram_st = gram_st / torch.trace(gram_st)
        return (gram_s.pow(2) - gram_st.pow(2)).sum()

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """``λ_corr · L_corr + λ_mutual · L_mi``."""
        return (self.lambda_corr * self.forward_correlation_it(z_s, z_t)
                + self.lambda_mutual * self.forward_mutual_it(z_s, z_t))


@register("itrd")
class ITRD(Distiller):
    """ITRD on the penultimate embeddings; ``-r 1 -a 0 -b 1`` with λ_corr 2, λ_mutual 0.05."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)
    preact = True
    arguments = (LAMBDA_CORR, LAMBDA_MUTUAL, ALPHA_IT)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup,
                 *, lambda_corr: float, lambda_mutual: float, alpha_it: float):
        super().__init__(student, teacher, setup)
        self.criterion = ITLoss(argparse.Namespace(
            s_dim=self.student_shapes[-1][1], t_dim=self.teacher_shapes[-1][1], n_data=setup.num_train,
            alpha_it=alpha_it), lambda_corr=lambda_corr, lambda_mutual=lambda_mutual)

    def method_weights(self, weights: Weights) -> dict[str, float]:
        """β times each of the two terms' λ (the criterion's own forward applies the λs itself)."""
        return {"corr": weights.beta * self.criterion.lambda_corr,
                "mutual": weights.beta * self.criterion.lambda_mutual}

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        e_s, e_t = student.features[-1], teacher.features[-1]
        return {
            "corr": self.criterion.forward_correlation_it(e_s, e_t),
            "mutual": self.criterion.forward_mutual_it(e_s, e_t),
        }
