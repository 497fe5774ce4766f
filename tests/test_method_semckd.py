"""SemCKD (METHODS.md §1.21): attention and weighted loss by hand, the projector structure,
upstream keys (with the dead head stack), the batch-width constraint and a distiller step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distiller_zoo
from distiller_zoo.registry import data_needs
from distiller_zoo.semckd import Proj, SelfA, SemCKD, SemCKDLoss
from errors import UsageError
from tests.conftest import make_opt
from tests.distiller_checks import adaptive_avg_pool_reference, build_with_options, check_training_step, random_batch
from tests.fixtures import state_shapes, upstream_state_shapes


def numpy_of(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def hand_head(head: nn.Module, gram: np.ndarray) -> np.ndarray:
    """Linear · ReLU · Linear, then each row divided by its L2 norm (no epsilon)."""
    hidden = np.maximum(gram @ numpy_of(head.linear1.weight).T + numpy_of(head.linear1.bias), 0.0)
    out = hidden @ numpy_of(head.linear2.weight).T + numpy_of(head.linear2.bias)
    return out / np.sqrt((out**2).sum(axis=1, keepdims=True))


def hand_semckd(attention: SelfA, feat_s: list[torch.Tensor], feat_t: list[torch.Tensor], soft: float):
    """METHODS.md §1.21 with explicit loops over samples and layer pairs; projectors used as given."""
    batch = feat_s[0].shape[0]
    grams_s = [numpy_of(f).reshape(batch, -1) @ numpy_of(f).reshape(batch, -1).T for f in feat_s]
    grams_t = [numpy_of(f).reshape(batch, -1) @ numpy_of(f).reshape(batch, -1).T for f in feat_t]
    queries = [hand_head(getattr(attention, f"query_{i}"), g) for i, g in enumerate(grams_s)]
    keys = [hand_head(getattr(attention, f"key_{j}"), g) for j, g in enumerate(grams_t)]
    n_s, n_t = len(feat_s), len(feat_t)
    weight = np.zeros((batch, n_s, n_t))
    for b in range(batch):
        for i in range(n_s):
            energy = np.array([queries[i][b] @ keys[j][b] / soft for j in range(n_t)])
            weight[b, i] = np.exp(energy) / np.exp(energy).sum()
    pair_loss = np.zeros((batch, n_s, n_t))
    for i, f_s in enumerate(feat_s):
        for j, f_t in enumerate(feat_t):
            size = min(f_s.shape[2], f_t.shape[2])
            source = torch.tensor(adaptive_avg_pool_reference(numpy_of(f_s), size), dtype=torch.float32)
            target = adaptive_avg_pool_reference(numpy_of(f_t), size)
            with torch.no_grad():
                value = numpy_of(getattr(attention, f"regressor{i}{j}")(source))
            for b in range(batch):
                pair_loss[b, i, j] = ((value[b] - target[b]) ** 2).mean()
    total = sum(weight[b, i, j] * pair_loss[b, i, j]
                for b in range(batch) for i in range(n_s) for j in range(n_t))
    return weight, total / (batch * n_s)


def randomise_bn(module: nn.Module) -> None:
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("soft", [1.0, 0.5])
def test_attention_and_loss_match_hand_computation(soft: float) -> None:
    torch.manual_seed(0)
    feat_s = [torch.randn(4, 2, 4, 4), torch.randn(4, 3, 2, 2)]
    feat_t = [torch.randn(4, 2, 4, 4), torch.randn(4, 3, 2, 2), torch.randn(4, 2, 1, 1)]
    attention = SelfA(4, s_n=[2, 3], t_n=[2, 3, 2], soft=soft).eval()
    randomise_bn(attention)
    s_value, f_target, weight = attention(feat_s, feat_t)
    loss = SemCKDLoss()(s_value, f_target, weight)
    hand_weight, hand_loss = hand_semckd(attention, feat_s, feat_t, soft)
    assert weight.shape == (4, 2, 3)
    torch.testing.assert_close(weight, torch.tensor(hand_weight, dtype=torch.float32))
    torch.testing.assert_close(loss, torch.tensor(hand_loss, dtype=torch.float32))
    # Pairs are aligned by pooling the larger map: student 0 (4×4) with teacher 2 (1×1), etc.
    assert s_value[0][2].shape == (4, 2, 1, 1) and f_target[1][0].shape == (4, 2, 2, 2)


def test_projector_structure() -> None:
    torch.manual_seed(0)
    proj = Proj(3, 2).eval()
    randomise_bn(proj)
    x = torch.randn(2, 3, 4, 4)
    convs = [m for m in proj.regressor if isinstance(m, nn.Conv2d)]
    bns = [m for m in proj.regressor if isinstance(m, nn.BatchNorm2d)]
    assert all(c.bias is None for c in convs) and len(bns) == 2
    expected = x
    with torch.no_grad():
        for conv, bn in zip(convs[:2], bns):
            expected = F.conv2d(expected, conv.weight, padding=conv.kernel_size[0] // 2)
            expected = (expected - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5)
            expected = torch.relu(expected * bn.weight[:, None, None] + bn.bias[:, None, None])
        expected = F.conv2d(expected, convs[2].weight)  # the last conv has no BN or ReLU
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [c.out_channels for c in convs] == [4, 4, 2]
    torch.testing.assert_close(proj(x), expected)


def test_keys_match_upstream_and_dead_stack_is_frozen() -> None:
    attention = SelfA(8, s_n=[16, 32, 64], t_n=[32, 64, 128], soft=1.0)
    assert state_shapes(attention, "self_attention.") == upstream_state_shapes("simkd_SemCKD")
    for name, parameter in attention.named_parameters():
        assert parameter.requires_grad == (".regressor." not in name or name.startswith("regressor")), name


def test_batch_of_another_width_is_rejected() -> None:
    attention = SelfA(4, s_n=[2], t_n=[2], soft=1.0)
    with pytest.raises(ValueError, match="4 samples wide, but the batch has 3"):
        attention([torch.randn(3, 2, 2, 2)], [torch.randn(3, 2, 2, 2)])


def build(batch_size: int = 8) -> tuple[SemCKD, object]:
    torch.manual_seed(0)
    return build_with_options("semckd", "resnet8", "resnet20", gamma=1.0, alpha=1.0, beta=400.0,
                              batch_size=batch_size)


def test_registered_name_flag_and_full_batches() -> None:
    assert distiller_zoo.get("semckd") is SemCKD
    opt = make_opt()
    assert opt.soft == 1.0
    assert data_needs("semckd", vars(opt)).drop_last


def test_too_small_batch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="batch_size"):
        build(batch_size=2)


def test_distiller_term_uses_every_intermediate_map() -> None:
    distiller, _ = build()
    distiller.eval()
    batch = random_batch(8)
    _, terms = distiller(batch)
    with torch.no_grad():
        feat_s = distiller.student(batch.images, is_feat=True)[0][1:-1]
        feat_t = distiller.teacher(batch.images, is_feat=True)[0][1:-1]
    _, expected = hand_semckd(distiller.self_attention, feat_s, feat_t, soft=1.0)
    torch.testing.assert_close(terms["semckd"], torch.tensor(expected, dtype=torch.float32))


def test_shared_training_step_checks() -> None:
    distiller, _ = build()
    attention = distiller.self_attention
    heads = [getattr(attention, f"{kind}_{i}") for kind, count in (("query", 3), ("key", 3)) for i in range(count)]
    projectors = [getattr(attention, f"regressor{i}{j}") for i in range(3) for j in range(3)]
    live = tuple(layer for head in heads for layer in (head.linear1, head.linear2)) + tuple(projectors)
    check_training_step(distiller, live, batch_size=8)


def test_distiller_step_gradients() -> None:
    distiller, _ = build()
    distiller.train()
    assert not distiller.teacher.training
    assert distiller.loss_weights == {"cls": 1.0, "kd": 1.0, "semckd": 400.0}
    _, terms = distiller(random_batch(8))
    assert set(terms) == {"cls", "kd", "semckd"} and all(torch.isfinite(v) for v in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    main = {id(p) for p in distiller.main_parameters()}
    for name, parameter in distiller.self_attention.named_parameters():
        if parameter.requires_grad:  # heads (through the attention, not detached) and projectors
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert id(parameter) in main, name
        else:  # upstream's never-called stack
            assert parameter.grad is None and id(parameter) not in main, name
    assert distiller.self_attention.query_0.linear1.weight.grad.abs().sum() > 0
    assert distiller.self_attention.key_2.linear2.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_trainable_state_round_trip() -> None:
    distiller, _ = build()
    state = distiller.trainable_state_dict()
    assert {key.split(".")[0] for key in state} == {"self_attention"}
    other, _ = build()
    with torch.no_grad():
        for p in other.self_attention.parameters():
            p.add_(1.0)
    other.load_trainable_state_dict(state)
    for key, value in other.trainable_state_dict().items():
        torch.testing.assert_close(value, state[key])
