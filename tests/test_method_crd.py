"""CRD (METHODS.md §1.14): NCE loss by hand, Z constants, memory update, keys, the Distiller."""

from __future__ import annotations

import math

import torch

from dataset.batch import Batch
from distiller_zoo.crd import CRD, CRDLoss
from distiller_zoo.registry import data_needs
from tests.conftest import make_opt
from tests.distiller_checks import build_with_options
from tests.fixtures import assert_built_as_upstream, upstream_options


def small_opt(**overrides):
    values = {"s_dim": 4, "t_dim": 5, "feat_dim": 3, "n_data": 10, "nce_k": 3, "nce_t": 0.5, "nce_m": 0.5}
    values.update(overrides)
    return make_opt(**values)


def embed_by_hand(linear, features):
    """Linear then division by the L2 norm, row by row, in plain Python."""
    weight, bias = linear.weight.tolist(), linear.bias.tolist()
    rows = []
    for x in features.tolist():
        z = [sum(w * xi for w, xi in zip(w_row, x)) + b for w_row, b in zip(weight, bias)]
        norm = math.sqrt(sum(c * c for c in z))
        rows.append([c / norm for c in z])
    return rows


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def nce_by_hand(scores, n_data):
    """−(1/B)[Σ_b log(P_b0/(P_b0+mPn+ε)) + Σ_b Σ_k≥1 log(mPn/(P_bk+mPn+ε))], m = K, Pn = 1/N."""
    m_pn = (len(scores[0]) - 1) / n_data
    total = 0.0
    for row in scores:
        total += math.log(row[0] / (row[0] + m_pn + 1e-7))
        total += sum(math.log(m_pn / (p + m_pn + 1e-7)) for p in row[1:])
    return -total / len(scores)


def crd_by_hand(loss, f_s, f_t, idx, contrast_idx, z=None):
    """Loss, the Z constants used and the updated banks, from the formulas of §1.14."""
    temperature, momentum, n_data = 0.5, 0.5, 10
    bank_s = loss.contrast.memory_v1.tolist()
    bank_t = loss.contrast.memory_v2.tolist()
    v_s = embed_by_hand(loss.embed_s.linear, f_s)
    v_t = embed_by_hand(loss.embed_t.linear, f_t)
    rows = contrast_idx.tolist()
    p_s = [[math.exp(dot(bank_t[k], v_s[b]) / temperature) for k in row] for b, row in enumerate(rows)]
    p_t = [[math.exp(dot(bank_s[k], v_t[b]) / temperature) for k in row] for b, row in enumerate(rows)]
    if z is None:  # first batch ever: Z = mean(P)·N
        count = len(rows) * len(rows[0])
        z = (sum(map(sum, p_s)) / count * n_data, sum(map(sum, p_t)) / count * n_data)
    p_s = [[p / z[0] for p in row] for row in p_s]
    p_t = [[p / z[1] for p in row] for row in p_t]
    value = nce_by_hand(p_s, n_data) + nce_by_hand(p_t, n_data)
    for bank, v in ((bank_s, v_s), (bank_t, v_t)):
        for b, row in enumerate(idx.tolist()):
            mixed = [momentum * m + (1 - momentum) * x for m, x in zip(bank[row], v[b])]
            norm = math.sqrt(dot(mixed, mixed))
            bank[row] = [c / norm for c in mixed]
    return value, z, torch.tensor(bank_s), torch.tensor(bank_t)


def test_crd_loss_z_and_memory_update_by_hand():
    torch.manual_seed(0)
    loss = CRDLoss(small_opt())
    f_s, f_t = torch.randn(3, 4), torch.randn(3, 5)
    idx = torch.tensor([7, 2, 4])
    contrast_idx = torch.tensor([[7, 0, 1, 3], [2, 5, 6, 8], [4, 9, 0, 1]])

    expected, z, bank_s, bank_t = crd_by_hand(loss, f_s, f_t, idx, contrast_idx)
    value = loss(f_s, f_t, idx, contrast_idx)
    torch.testing.assert_close(value, torch.tensor(expected))
    value.backward()  # the in-place memory and Z updates must not break autograd
    torch.testing.assert_close(loss.contrast.params[2:4], torch.tensor(z))
    torch.testing.assert_close(loss.contrast.memory_v1, bank_s)
    torch.testing.assert_close(loss.contrast.memory_v2, bank_t)

    # second batch: the stored Z from the first batch is used, not recomputed
    f_s, f_t = torch.randn(2, 4), torch.randn(2, 5)
    idx = torch.tensor([0, 9])
    contrast_idx = torch.tensor([[0, 2, 3, 4], [9, 1, 5, 6]])
    expected, _, bank_s, bank_t = crd_by_hand(loss, f_s, f_t, idx, contrast_idx, z=z)
    torch.testing.assert_close(loss(f_s, f_t, idx, contrast_idx), torch.tensor(expected))
    torch.testing.assert_close(loss.contrast.params[2:4], torch.tensor(z))
    torch.testing.assert_close(loss.contrast.memory_v1, bank_s)
    torch.testing.assert_close(loss.contrast.memory_v2, bank_t)


def test_z_is_fixed_once_and_carried_by_the_state_dict():
    torch.manual_seed(1)
    loss = CRDLoss(small_opt())
    assert loss.contrast.params[2:4].tolist() == [-1.0, -1.0]
    loss(torch.randn(3, 4), torch.randn(3, 5), torch.tensor([0, 1, 2]))
    z = loss.contrast.params[2:4].clone()
    assert (z > 0).all()
    for _ in range(3):
        loss(torch.randn(3, 4), torch.randn(3, 5), torch.tensor([3, 4, 5]))
    assert torch.equal(loss.contrast.params[2:4], z)

    state = loss.state_dict()
    assert torch.equal(state["contrast.params"][2:4], z)
    restored = CRDLoss(small_opt())
    restored.load_state_dict(state)
    f_s, f_t, idx = torch.randn(2, 4), torch.randn(2, 5), torch.tensor([6, 8])
    contrast_idx = torch.tensor([[6, 1, 2, 3], [8, 4, 5, 7]])
    torch.testing.assert_close(restored(f_s, f_t, idx, contrast_idx), loss(f_s, f_t, idx, contrast_idx))
    assert torch.equal(restored.contrast.params[2:4], z)


def test_without_contrast_idx_rows_are_uniform_with_the_sample_first(monkeypatch):
    loss = CRDLoss(small_opt(nce_k=50))
    seen = {}
    forward = loss.contrast.forward

    def spy(v1, v2, y, contrast_idx):
        seen["contrast_idx"] = contrast_idx
        return forward(v1, v2, y, contrast_idx)

    monkeypatch.setattr(loss.contrast, "forward", spy)
    idx = torch.tensor([3, 8])
    loss(torch.randn(2, 4), torch.randn(2, 5), idx)
    drawn = seen["contrast_idx"]
    assert drawn.shape == (2, 51)
    assert drawn[:, 0].tolist() == [3, 8]
    assert drawn.min() >= 0 and drawn.max() < 10
    assert len(set(drawn[:, 1:].flatten().tolist())) > 5  # spread over the data set


def test_built_as_repdistiller_builds_it():
    """``CRDLoss(opt)`` with the recorded options has RepDistiller's signature, keys and shapes."""
    loss = CRDLoss(make_opt(**upstream_options("rd_CRDLoss")))
    assert_built_as_upstream(loss, "rd_CRDLoss")
    assert [k for k, _ in loss.named_buffers()] == ["contrast.params", "contrast.memory_v1", "contrast.memory_v2"]


def test_distiller_criterion_is_repdistillers_for_the_same_sizes():
    """resnet8 (64-d) → resnet8x4 (256-d) with 64 samples and 16 negatives is the recorded CRDLoss."""
    distiller, _ = build_distiller()
    assert_built_as_upstream(distiller.criterion, "rd_CRDLoss")


def build_distiller(**overrides):
    torch.manual_seed(0)
    return build_with_options("crd", "resnet8", "resnet8x4", **{"nce_k": 16, "n_data": 64, "beta": 0.8, **overrides})


def crd_batch(batch_size=6, n_data=64, nce_k=16):
    indices = torch.randperm(n_data)[:batch_size]
    contrast = torch.randint(n_data, (batch_size, nce_k + 1))
    contrast[:, 0] = indices
    return Batch(torch.randn(batch_size, 3, 32, 32), torch.randint(10, (batch_size,)), indices, contrast)


def test_distiller_step():
    distiller, opt = build_distiller()
    assert isinstance(distiller, CRD)
    needs = data_needs("crd", vars(opt))
    assert needs.indices and needs.contrast_k == 16 and needs.contrast_mode == "exact"
    assert data_needs("crd", vars(make_opt(mode="relax"))).contrast_mode == "relax"
    assert distiller.criterion.embed_s.linear.in_features == 64
    assert distiller.criterion.embed_t.linear.in_features == 256
    assert not hasattr(opt, "s_dim")  # the caller's options are not mutated

    distiller.train()
    assert not distiller.teacher.training
    _, terms = distiller(crd_batch())
    assert set(terms) == {"cls", "kd", "crd"} and distiller.loss_weights["crd"] == 0.8
    assert all(torch.isfinite(t) for t in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()

    main = {id(p) for p in distiller.main_parameters()}
    for name, p in distiller.criterion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert id(p) in main, name
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert not any(id(p) in main for p in distiller.teacher.parameters())


def test_memory_is_checkpointed_and_round_trips():
    distiller, _ = build_distiller()
    distiller.train()
    distiller(crd_batch())
    state = distiller.trainable_state_dict()
    for key in ("criterion.contrast.params", "criterion.contrast.memory_v1", "criterion.contrast.memory_v2"):
        assert key in state
    assert (state["criterion.contrast.params"][2:4] > 0).all()

    other, _ = build_distiller()
    other.load_trainable_state_dict({k: v.clone() for k, v in state.items()})
    for key, value in other.trainable_state_dict().items():
        assert torch.equal(value, state[key]), key
