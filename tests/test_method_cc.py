"""CC (METHODS.md §1.5): author-provided correlation by hand, embeddings, one training step."""

from __future__ import annotations

import numpy as np
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.cc import CC, Correlation
from tests.distiller_checks import build_distiller, check_training_step
from tests.fixtures import state_shapes, upstream_state_shapes


def correlation_reference(e_s: np.ndarray, e_t: np.ndarray) -> float:
    """(1/(B−1)) Σ_i Σ_k |e_s−e_t|[i,k]·|e_s−e_t|[i+1,k], by loops."""
    batch, dim = e_s.shape
    total = 0.0
    for i in range(batch - 1):
        for k in range(dim):
            total += abs(e_s[i, k] - e_t[i, k]) * abs(e_s[i + 1, k] - e_t[i + 1, k])
    return total / (batch - 1)


def test_correlation_matches_hand_computation():
    torch.manual_seed(0)
    e_s, e_t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(Correlation()(e_s, e_t),
                               torch.tensor(correlation_reference(e_s.numpy(), e_t.numpy()),
                                            dtype=torch.float64))


def test_correlation_depends_on_batch_order():
    """Consecutive-sample products, not a permutation-invariant correlation matrix."""
    e_s = torch.tensor([[1.0], [2.0], [0.0]], dtype=torch.float64)
    e_t = torch.zeros(3, 1, dtype=torch.float64)
    torch.testing.assert_close(Correlation()(e_s, e_t), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(Correlation()(e_s[[0, 2, 1]], e_t), torch.tensor(0.0, dtype=torch.float64))


def test_single_sample_batch_gives_zero_not_nan():
    assert Correlation()(torch.randn(1, 4), torch.randn(1, 4)).item() == 0.0


def test_distill_embeds_both_penultimate_features():
    torch.manual_seed(1)
    distiller = build_distiller("cc", "resnet8", "resnet8x4", feat_dim=6)
    f_s, f_t = torch.randn(4, 64), torch.randn(4, 256)
    filler = torch.zeros(4, 1, 1, 1)
    student = Outputs([filler, filler, f_s], torch.zeros(4, 10))
    teacher = Outputs([filler, filler, f_t], torch.zeros(4, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(4, 3, 32, 32), torch.zeros(4)))

    def linear(x: torch.Tensor, layer: torch.nn.Linear) -> np.ndarray:
        w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
        return np.array([[sum(w[o, i] * row[i] for i in range(len(row))) + b[o] for o in range(len(b))]
                         for row in x.double().numpy()])

    expected = correlation_reference(linear(f_s, distiller.embed_s.linear),
                                     linear(f_t, distiller.embed_t.linear))
    torch.testing.assert_close(terms["correlation"], torch.tensor(expected, dtype=torch.float32))


def test_state_dict_matches_upstream():
    """resnet8 (64-d) → resnet8x4 (256-d) is exactly the criteria pipeline LinearEmbed(64)/(256)."""
    distiller = build_distiller("cc", "resnet8", "resnet8x4")
    state = state_shapes(distiller.embed_s, "embed_s.") | state_shapes(distiller.embed_t, "embed_t.")
    assert state == upstream_state_shapes("rd_CC_pipeline")
    assert set(distiller.trainable_state_dict()) == set(state)


def test_registered_names():
    assert distiller_zoo.get("correlation") is CC and distiller_zoo.get("cc") is CC


def test_training_step_trains_both_embeddings():
    distiller = build_distiller("correlation", "resnet8", "vgg8")
    check_training_step(distiller, (distiller.embed_s, distiller.embed_t))
