"""DCD (METHODS.md §1.17): loss by hand, τ clamp, trainable τ and b, keys, the Distiller."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo.dcd import DCD, DCDLoss
from models import model_dict
from tests.conftest import make_opt

CRITERIA = Path(__file__).resolve().parents[2] / "shared" / "compat" / "criteria.json"

# criteria.json "dist_DCDLoss" (and "_fixed", trainable=False): s_dim 64, t_dim 256, feat_dim 128
DS_DCD_KEYS = {
    "params.tau": [],
    "params.b": [],
    "embed_s.weight": [128, 64],
    "embed_s.bias": [128],
    "embed_t.weight": [128, 256],
    "embed_t.bias": [128],
}


def small_opt(**overrides):
    return make_opt(**{"s_dim": 4, "t_dim": 5, "feat_dim": 3, "nce_t": 0.07, **overrides})


def embed_by_hand(linear, features):
    weight, bias = linear.weight.tolist(), linear.bias.tolist()
    rows = []
    for x in features.tolist():
        z = [sum(w * xi for w, xi in zip(w_row, x)) + b for w_row, b in zip(weight, bias)]
        norm = math.sqrt(sum(c * c for c in z))
        rows.append([c / norm for c in z])
    return rows


def dcd_by_hand(loss, f_s, f_t, scale, bias, alpha=0.5):
    """L_c + α·KL(p2‖p1) with Λ = scale·v_s v_tᵀ + bias, p1 rows over teachers, p2 = softmax(Λ, 0)ᵀ."""
    v_s = embed_by_hand(loss.embed_s, f_s)
    v_t = embed_by_hand(loss.embed_t, f_t)
    n = len(v_s)
    logits = [[scale * sum(a * b for a, b in zip(v_s[i], v_t[j])) + bias for j in range(n)] for i in range(n)]
    log_p1 = [[logits[i][j] - math.log(sum(math.exp(x) for x in logits[i])) for j in range(n)] for i in range(n)]
    column_sums = [sum(math.exp(logits[i][j]) for i in range(n)) for j in range(n)]
    p2 = [[math.exp(logits[c][r]) / column_sums[r] for c in range(n)] for r in range(n)]  # row r: teacher r
    contrastive = -sum(log_p1[i][i] for i in range(n)) / n
    invariance = sum(p2[r][c] * (math.log(p2[r][c]) - log_p1[r][c]) for r in range(n) for c in range(n)) / n
    return contrastive + alpha * invariance


def test_dcd_loss_by_hand_at_init():
    torch.manual_seed(0)
    loss = DCDLoss(small_opt())
    f_s, f_t = torch.randn(4, 4), torch.randn(4, 5)
    expected = dcd_by_hand(loss, f_s, f_t, scale=math.e, bias=0.0)  # τ = exp(1.0), b = 0
    torch.testing.assert_close(loss(f_s, f_t), torch.tensor(expected))


def test_dcd_loss_by_hand_with_bias_alpha_and_clamped_tau():
    torch.manual_seed(1)
    loss = DCDLoss(small_opt(), alpha=0.3)
    with torch.no_grad():
        loss.params.tau.fill_(math.log(25.0))  # exp(θ) = 25 is clamped to max_tau = 10
        loss.params.b.fill_(-0.4)
    f_s, f_t = torch.randn(3, 4), torch.randn(3, 5)
    value = loss(f_s, f_t)
    torch.testing.assert_close(value, torch.tensor(dcd_by_hand(loss, f_s, f_t, 10.0, -0.4, alpha=0.3)))
    value.backward()
    assert loss.params.tau.grad == 0  # clamped: no gradient through τ
    assert loss.params.b.grad is not None


def test_fixed_variant_multiplies_by_nce_t_without_bias():
    torch.manual_seed(2)
    loss = DCDLoss(small_opt(nce_t=0.07), trainable=False)
    assert not loss.params.tau.requires_grad and not loss.params.b.requires_grad
    assert loss.params.tau.item() == pytest.approx(0.07) and loss.params.b.item() == 0.0
    f_s, f_t = torch.randn(3, 4), torch.randn(3, 5)
    torch.testing.assert_close(loss(f_s, f_t), torch.tensor(dcd_by_hand(loss, f_s, f_t, 0.07, 0.0)))


def test_tau_and_b_receive_gradients():
    torch.manual_seed(3)
    loss = DCDLoss(small_opt())
    loss(torch.randn(4, 4), torch.randn(4, 5)).backward()
    for p in (loss.params.tau, loss.params.b, loss.embed_s.weight, loss.embed_t.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert loss.params.tau.grad != 0


@pytest.mark.parametrize("trainable", [True, False])
def test_state_dict_matches_distillers(trainable):
    loss = DCDLoss(make_opt(s_dim=64, t_dim=256, feat_dim=128, nce_t=0.07), trainable=trainable)
    assert {k: list(v.shape) for k, v in loss.state_dict().items()} == DS_DCD_KEYS


@pytest.mark.skipif(not CRITERIA.exists(), reason="shared compat data not present")
def test_expected_keys_are_those_of_criteria_json():
    criteria = json.loads(CRITERIA.read_text())
    for name in ("dist_DCDLoss", "dist_DCDLoss_fixed"):
        assert {p["key"]: p["shape"] for p in criteria[name]["parameters"]} == DS_DCD_KEYS


def test_distiller_step():
    torch.manual_seed(0)
    opt = make_opt(distill="dcd", beta=1.0)
    distiller = distiller_zoo.build(opt, model_dict["resnet8"](num_classes=10),
                                    model_dict["resnet8x4"](num_classes=10))
    assert isinstance(distiller, DCD) and distiller_zoo.get("icd") is DCD
    assert DCD.data_needs(opt).drop_last
    assert distiller.criterion.embed_s.in_features == 64 and distiller.criterion.embed_t.in_features == 256
    distiller.train()
    assert not distiller.teacher.training
    _, terms = distiller(Batch(torch.randn(4, 3, 32, 32), torch.randint(10, (4,))))
    assert set(terms) == {"cls", "kd", "dcd"} and all(torch.isfinite(t) for t in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()

    main = {id(p) for p in distiller.main_parameters()}
    criterion = distiller.criterion
    for p in (criterion.params.tau, criterion.params.b, *criterion.embed_s.parameters(),
              *criterion.embed_t.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all() and id(p) in main
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert set(distiller.trainable_state_dict()) == {f"criterion.{k}" for k in DS_DCD_KEYS}
