"""RRD (METHODS.md §1.16): loss by hand with the MoCo enqueue order, keys, gradients, the Distiller."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo.rrd import RRD, RRDLoss
from models import model_dict
from tests.conftest import make_opt

CRITERIA = Path(__file__).resolve().parents[2] / "shared" / "compat" / "criteria.json"

# criteria.json "dist_RRDLoss_fifo": s_dim 64, t_dim 256, feat_dim 128, nce_k 32
DS_RRD_KEYS = {
    "memory.queue": [32, 128],
    "memory.queue_ptr": [1],
    "memory.embed_s.weight": [128, 64],
    "memory.embed_s.bias": [128],
    "memory.embed_t.weight": [128, 256],
    "memory.embed_t.bias": [128],
}


def small_opt(**overrides):
    values = {"s_dim": 4, "t_dim": 5, "feat_dim": 3, "nce_k": 6}
    values.update(overrides)
    return make_opt(**values)


def embed_by_hand(linear, features):
    """Linear then L2 normalisation, row by row, in plain Python."""
    weight, bias = linear.weight.tolist(), linear.bias.tolist()
    rows = []
    for x in features.tolist():
        z = [sum(w * xi for w, xi in zip(w_row, x)) + b for w_row, b in zip(weight, bias)]
        norm = math.sqrt(sum(c * c for c in z))
        rows.append([c / norm for c in z])
    return rows


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def rrd_by_hand(loss, f_s, f_t, tau_s, tau_t):
    """−(1/B) Σ_b Σ_k softmax(v_t Qᵀ/τ_t)_k · log softmax(v_s Qᵀ/τ_s)_k against the queue *before* this batch."""
    queue = loss.memory.queue.tolist()
    v_s = embed_by_hand(loss.memory.embed_s, f_s)
    v_t = embed_by_hand(loss.memory.embed_t, f_t)
    total = 0.0
    for s_row, t_row in zip(v_s, v_t):
        p_t = softmax([sum(a * b for a, b in zip(t_row, q)) / tau_t for q in queue])
        p_s = softmax([sum(a * b for a, b in zip(s_row, q)) / tau_s for q in queue])
        total -= sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
    return total / len(v_s), v_t


def test_rrd_loss_by_hand_scores_before_enqueue():
    torch.manual_seed(0)
    loss = RRDLoss(small_opt())
    assert (loss.nce_t_s, loss.nce_t_t) == (0.1, 0.02)  # sharper teacher, softer student

    f_s, f_t = torch.randn(3, 4), torch.randn(3, 5)
    expected, v_t = rrd_by_hand(loss, f_s, f_t, tau_s=0.1, tau_t=0.02)
    torch.testing.assert_close(loss(f_s, f_t), torch.tensor(expected))
    torch.testing.assert_close(loss.memory.queue[:3], torch.tensor(v_t))
    assert loss.memory.queue_ptr.tolist() == [3]

    # a batch of 4 into K = 6 with the pointer at 3: scored against the queue above, then rows 3,4,5,0
    f_s, f_t = torch.randn(4, 4), torch.randn(4, 5)
    old_row_1 = loss.memory.queue[1].clone()
    expected, v_t = rrd_by_hand(loss, f_s, f_t, tau_s=0.1, tau_t=0.02)
    torch.testing.assert_close(loss(f_s, f_t), torch.tensor(expected))
    torch.testing.assert_close(loss.memory.queue[[3, 4, 5, 0]], torch.tensor(v_t))
    assert torch.equal(loss.memory.queue[1], old_row_1)
    assert loss.memory.queue_ptr.tolist() == [1]


def test_temperatures_come_from_the_flags():
    torch.manual_seed(0)
    loss = RRDLoss(small_opt(nce_t_s=0.04, nce_t_t=0.1))
    f_s, f_t = torch.randn(2, 4), torch.randn(2, 5)
    expected, _ = rrd_by_hand(loss, f_s, f_t, tau_s=0.04, tau_t=0.1)
    torch.testing.assert_close(loss(f_s, f_t), torch.tensor(expected))


def test_teacher_embedding_gets_no_gradient_student_embedding_does():
    torch.manual_seed(0)
    loss = RRDLoss(small_opt())
    f_s = torch.randn(3, 4, requires_grad=True)
    f_t = torch.randn(3, 5, requires_grad=True)
    loss(f_s, f_t).backward()
    assert loss.memory.embed_s.weight.grad is not None and loss.memory.embed_s.weight.grad.abs().sum() > 0
    assert f_s.grad is not None
    assert loss.memory.embed_t.weight.grad is None and loss.memory.embed_t.bias.grad is None
    assert f_t.grad is None
    assert not any(p.requires_grad for p in loss.memory.embed_t.parameters())


def test_state_dict_matches_distillers():
    loss = RRDLoss(make_opt(s_dim=64, t_dim=256, feat_dim=128, nce_k=32, nce_t_s=0.1, nce_t_t=0.02))
    assert {k: list(v.shape) for k, v in loss.state_dict().items()} == DS_RRD_KEYS
    assert loss.memory.queue_ptr.dtype == torch.long


@pytest.mark.skipif(not CRITERIA.exists(), reason="shared compat data not present")
def test_expected_keys_are_those_of_criteria_json():
    entry = json.loads(CRITERIA.read_text())["dist_RRDLoss_fifo"]
    assert {p["key"]: p["shape"] for p in entry["parameters"]} == DS_RRD_KEYS


def build_distiller():
    torch.manual_seed(0)
    opt = make_opt(distill="rrd", nce_k=16, beta=1.0)
    student = model_dict["resnet8"](num_classes=10)
    teacher = model_dict["resnet8x4"](num_classes=10)
    return distiller_zoo.build(opt, student, teacher), opt


def test_distiller_step_and_queue_round_trip():
    distiller, opt = build_distiller()
    assert isinstance(distiller, RRD) and distiller_zoo.get("rcd") is RRD
    assert not RRD.data_needs(opt).drop_last  # partial batches are handled by the queue
    distiller.train()
    assert not distiller.teacher.training
    batch = Batch(torch.randn(5, 3, 32, 32), torch.randint(10, (5,)))  # 16 mod 5 != 0
    _, terms = distiller(batch)
    assert set(terms) == {"cls", "kd", "rrd"} and all(torch.isfinite(t) for t in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()

    memory = distiller.criterion.memory
    main = {id(p) for p in distiller.main_parameters()}
    for p in memory.embed_s.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and id(p) in main
    for p in memory.embed_t.parameters():  # fixed random projection (§1.16)
        assert p.grad is None and id(p) not in main
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())

    state = distiller.trainable_state_dict()
    assert state["criterion.memory.queue_ptr"].tolist() == [5]
    assert "criterion.memory.queue" in state and "criterion.memory.embed_t.weight" in state
    other, _ = build_distiller()
    other.load_trainable_state_dict({k: v.clone() for k, v in state.items()})
    for key, value in other.trainable_state_dict().items():
        assert torch.equal(value, state[key]), key
