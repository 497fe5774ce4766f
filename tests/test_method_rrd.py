"""RRD (METHODS.md §1.16): loss by hand with the MoCo enqueue order, keys, gradients, the Distiller."""

from __future__ import annotations

import math

import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo.registry import data_needs
from distiller_zoo.rrd import RRD, RRDLoss
from tests.conftest import make_opt
from tests.distiller_checks import build_with_options
from tests.fixtures import assert_built_as_upstream, upstream_options


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


def test_built_as_distillers_builds_it():
    """``RRDLoss(opt)`` with the recorded options (a 32-row FIFO queue) has the distillers
    repository's signature, keys and shapes."""
    loss = RRDLoss(make_opt(**upstream_options("dist_RRDLoss_fifo")))
    assert_built_as_upstream(loss, "dist_RRDLoss_fifo")
    assert loss.memory.queue_ptr.dtype == torch.long


def build_distiller(**overrides):
    torch.manual_seed(0)
    return build_with_options("rrd", "resnet8", "resnet8x4", **{"nce_k": 16, "beta": 1.0, **overrides})


def test_distiller_criterion_is_the_distillers_one_for_the_same_sizes():
    """resnet8 (64-d) → resnet8x4 (256-d) with a 32-row queue is the recorded RRDLoss."""
    distiller, _ = build_distiller(nce_k=32)
    assert_built_as_upstream(distiller.criterion, "dist_RRDLoss_fifo")


def test_distiller_step_and_queue_round_trip():
    distiller, opt = build_distiller()
    assert isinstance(distiller, RRD) and distiller_zoo.get("rcd") is RRD
    assert not data_needs("rrd", vars(opt)).drop_last  # partial batches are handled by the queue
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
