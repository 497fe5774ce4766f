"""ITRD (METHODS.md §1.18): both losses by hand, λ weighting, keys, preact, the Distiller."""

from __future__ import annotations

import math

import pytest
import torch

from dataset.batch import Batch
from distiller_zoo.base import Weights
from distiller_zoo.itrd import ITRD, ITLoss
from tests.conftest import make_opt
from tests.distiller_checks import build_with_options
from tests.fixtures import assert_built_as_upstream, upstream_options


def small_opt(**overrides):
    return make_opt(**{"s_dim": 3, "t_dim": 4, "n_data": 10, "alpha_it": 1.5, **overrides})


def linear_by_hand(linear, features):
    weight, bias = linear.weight.tolist(), linear.bias.tolist()
    return [[sum(w * xi for w, xi in zip(w_row, x)) + b for w_row, b in zip(weight, bias)]
            for x in features.tolist()]


def standardise_columns(rows):
    n = len(rows)
    columns = []
    for k in range(len(rows[0])):
        values = [row[k] for row in rows]
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))  # unbiased, no eps
        columns.append([(v - mean) / std for v in values])
    return columns  # [dimension][sample]


def correlation_by_hand(loss, e_s, e_t, alpha):
    z = standardise_columns(linear_by_hand(loss.embed.linear, e_s))
    t = standardise_columns(e_t.tolist())
    n = e_s.shape[0]
    c = [sum(zb * tb for zb, tb in zip(z_k, t_k)) / n for z_k, t_k in zip(z, t)]
    return math.log2(sum((abs(ck - 1) ** 2) ** alpha for ck in c))


def mutual_by_hand(u, e_t):
    def unit(rows):
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in rows]

    u, t = unit(u), unit(e_t.tolist())
    n = len(u)
    gram_s = [[sum(a * b for a, b in zip(u[i], u[j])) for j in range(n)] for i in range(n)]
    gram_t = [[sum(a * b for a, b in zip(t[i], t[j])) for j in range(n)] for i in range(n)]
    gram_st = [[gram_s[i][j] * gram_t[i][j] for j in range(n)] for i in range(n)]
    trace_s = sum(gram_s[i][i] for i in range(n))
    trace_st = sum(gram_st[i][i] for i in range(n))
    return sum((gram_s[i][j] / trace_s) ** 2 - (gram_st[i][j] / trace_st) ** 2 for i in range(n) for j in range(n))


def test_correlation_and_mutual_losses_by_hand_different_dims():
    torch.manual_seed(0)
    loss = ITLoss(small_opt())
    e_s, e_t = torch.randn(5, 3), torch.randn(5, 4)
    torch.testing.assert_close(loss.forward_correlation_it(e_s, e_t),
                               torch.tensor(correlation_by_hand(loss, e_s, e_t, 1.5)))
    u = linear_by_hand(loss.embed.linear, e_s)  # d_s ≠ d_t: the mutual term goes through Embed
    torch.testing.assert_close(loss.forward_mutual_it(e_s, e_t), torch.tensor(mutual_by_hand(u, e_t)))


def test_same_dims_mutual_term_uses_the_raw_student_embedding():
    torch.manual_seed(1)
    loss = ITLoss(small_opt(s_dim=4, t_dim=4, alpha_it=1.01))
    e_s, e_t = torch.randn(4, 4), torch.randn(4, 4)
    torch.testing.assert_close(loss.forward_mutual_it(e_s, e_t),
                               torch.tensor(mutual_by_hand(e_s.tolist(), e_t)))
    torch.testing.assert_close(loss.forward_correlation_it(e_s, e_t),
                               torch.tensor(correlation_by_hand(loss, e_s, e_t, 1.01)))


def test_forward_weighs_the_two_terms_with_lambdas():
    torch.manual_seed(2)
    loss = ITLoss(small_opt(), lambda_corr=0.7, lambda_mutual=3.0)
    e_s, e_t = torch.randn(6, 3), torch.randn(6, 4)
    expected = 0.7 * correlation_by_hand(loss, e_s, e_t, 1.5) + 3.0 * mutual_by_hand(
        linear_by_hand(loss.embed.linear, e_s), e_t)
    torch.testing.assert_close(loss(e_s, e_t), torch.tensor(expected))


def test_constant_teacher_dimension_gives_nan_as_upstream():
    """No epsilon in the batch std (METHODS.md §5 item 9): the training loop's NaN guard must catch it."""
    loss = ITLoss(small_opt())
    e_t = torch.randn(4, 4)
    e_t[:, 2] = 0.0  # e.g. a ReLU channel dead for the whole batch
    assert torch.isnan(loss.forward_correlation_it(torch.randn(4, 3), e_t))


@pytest.mark.parametrize("entry", ["itrd_ITLoss", "itrd_ITLoss_samedim", "dist_ITLoss", "dist_ITLoss_samedim"])
def test_built_as_upstream_builds_it(entry):
    """``ITLoss(opt)`` with the options recorded from the ITRD and distillers repositories has
    their signature, keys and shapes (one Linear(d_s → d_t), also when d_s = d_t)."""
    loss = ITLoss(make_opt(**{"alpha_it": 1.5, **upstream_options(entry)}))
    assert_built_as_upstream(loss, entry)


def live_distiller_and_images():
    """resnet8 → wrn_16_2 ITRD and a batch where no teacher embedding dimension is constant (see the NaN test).

    Randomly initialised ReLU networks often have a channel that is zero for a whole small
    batch; such a teacher would make the correlation term NaN by design.
    """
    for seed in range(20):
        torch.manual_seed(seed)
        distiller, _ = build_with_options("itrd", "resnet8", "wrn_16_2", beta=1.0, lambda_corr=2.0, lambda_mutual=0.05)
        images = torch.randn(8, 3, 32, 32)
        with torch.no_grad():
            features, _ = distiller.teacher(images, is_feat=True, preact=True)
        if (features[-1].std(0) > 0).all():
            return distiller, images
    raise AssertionError("no seed gave a teacher without dead dimensions")


def test_distiller_step():
    distiller, images = live_distiller_and_images()
    assert isinstance(distiller, ITRD) and ITRD.preact
    assert distiller.loss_weights == {"cls": 1.0, "kd": 0.0, "corr": 2.0, "mutual": 0.05}
    assert distiller.criterion.embed.linear.in_features == 64
    assert distiller.criterion.embed.linear.out_features == 128
    distiller.train()
    assert not distiller.teacher.training
    _, terms = distiller(Batch(images, torch.randint(10, (8,))))
    assert set(terms) == {"cls", "kd", "corr", "mutual"} and all(torch.isfinite(t) for t in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()

    main = {id(p) for p in distiller.main_parameters()}
    for p in distiller.criterion.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and id(p) in main
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())

    weights = distiller.method_weights(Weights(gamma=1.0, alpha=0.0, beta=0.5))
    assert weights == pytest.approx({"corr": 0.5 * 2.0, "mutual": 0.5 * 0.05})  # β·λ
