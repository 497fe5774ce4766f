"""FSP (flow of solution procedure, METHODS.md §1.11): the FSP matrices by hand (pooling
included), the channel-count check, and the two stages."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import distiller_zoo
from distiller_zoo.fsp import FSP, FSPDistiller
from errors import UsageError
from tests.distiller_checks import (
    adaptive_avg_pool_reference,
    assert_gradients_reach_exactly,
    build_with_options,
    parameter_ids,
    random_batch,
)


def hand_fsp_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``G[n, c_b, c_a] = (1/HW) Σ_hw b·a`` with explicit loops, after pooling the larger map."""
    if a.shape[2] > b.shape[2]:
        a = adaptive_avg_pool_reference(a, b.shape[2])
    elif a.shape[2] < b.shape[2]:
        b = adaptive_avg_pool_reference(b, a.shape[2])
    batch, c_a, h, w = a.shape
    c_b = b.shape[1]
    g = np.zeros((batch, c_b, c_a))
    for n in range(batch):
        for i in range(c_b):
            for j in range(c_a):
                total = 0.0
                for y in range(h):
                    for x in range(w):
                        total += b[n, i, y, x] * a[n, j, y, x]
                g[n, i, j] = total / (h * w)
    return g


def test_fsp_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    shapes = [(3, 2, 4, 4), (3, 3, 2, 2), (3, 2, 2, 2)]
    g_s = [torch.randn(shape) for shape in shapes]
    g_t = [torch.randn(shape) for shape in shapes]
    losses = FSP(shapes, shapes)(g_s, g_t)
    assert len(losses) == 2
    expected = []
    for i in range(2):
        fsp_s = hand_fsp_matrix(g_s[i].double().numpy(), g_s[i + 1].double().numpy())
        fsp_t = hand_fsp_matrix(g_t[i].double().numpy(), g_t[i + 1].double().numpy())
        expected.append(((fsp_s - fsp_t) ** 2).mean())
    torch.testing.assert_close(torch.stack(losses), torch.tensor(expected, dtype=torch.float32))


def test_pairing_needs_equal_channels_at_every_map() -> None:
    """The feature lists end with the embedding, which is not an FSP map and may differ."""
    student = [(2, 2, 4, 4), (2, 3, 2, 2), (2, 3)]
    assert FSPDistiller.pairing_problem(student, [(2, 2, 4, 4), (2, 3, 2, 2), (2, 9)]) is None
    problem = FSPDistiller.pairing_problem(student, [(2, 2, 4, 4), (2, 4, 2, 2), (2, 4)])
    assert "feat[1] student 3 vs teacher 4" in problem


def test_pairing_needs_equal_map_counts() -> None:
    problem = FSPDistiller.pairing_problem([(2, 2, 4, 4)] * 3 + [(2, 2)], [(2, 2, 4, 4)] * 2 + [(2, 2)])
    assert re.search(r"student has 3 .* teacher 2", problem)


def build(model_s: str = "resnet8", model_t: str = "resnet20") -> tuple[FSPDistiller, object]:
    torch.manual_seed(0)
    return build_with_options("fsp", model_s, model_t, gamma=1.0, beta=50.0, learning_rate=0.05, init_epochs=4)


ids = parameter_ids


def test_registered_name() -> None:
    assert distiller_zoo.get("fsp") is FSPDistiller


def test_unequal_channels_are_a_one_line_usage_error() -> None:
    with pytest.raises(UsageError) as error:
        build("resnet8", "resnet8x4")
    message = str(error.value)
    assert "\n" not in message and "fsp" in message
    for part in ("feat[0] student 16 vs teacher 32", "feat[3] student 64 vs teacher 256",
                 "resnet32x4 -> resnet8x4"):
        assert part in message


def test_parameters_of_each_stage() -> None:
    distiller, _ = build()
    assert ids(distiller.init_parameters()) == ids(distiller.student.get_feat_modules().parameters())
    assert not ids(distiller.student.fc.parameters()) & ids(distiller.init_parameters())
    assert ids(distiller.main_parameters()) == ids(distiller.student.parameters())
    stage = distiller.init_stage
    assert (stage.epochs, stage.learning_rate, stage.terms) == (4, 0.05, ("fsp",))


def test_init_stage_term_and_gradients() -> None:
    distiller, _ = build()
    distiller.train()
    distiller.set_stage("init")
    assert distiller.loss_weights == {"fsp": 1.0}
    assert distiller.student.layer1.training and not distiller.student.fc.training
    assert not distiller.teacher.training
    batch = random_batch()
    _, terms = distiller(batch)
    assert set(terms) == {"fsp"} and torch.isfinite(terms["fsp"]) and terms["fsp"] > 0
    terms["fsp"].backward()
    assert_gradients_reach_exactly(distiller, distiller.init_parameters())


def test_init_term_is_the_sum_over_consecutive_pairs_of_all_maps() -> None:
    distiller, _ = build()
    distiller.set_stage("init")
    distiller.eval()
    batch = random_batch(2)
    _, terms = distiller(batch)
    with torch.no_grad():
        s_features = [f.double().numpy() for f in distiller.student(batch.images, is_feat=True)[0][:-1]]
        t_features = [f.double().numpy() for f in distiller.teacher(batch.images, is_feat=True)[0][:-1]]
    # Hand matrices via einsum here (the loop version above is too slow for real maps).
    expected = 0.0
    for i in range(len(s_features) - 1):
        matrices = []
        for features in (s_features, t_features):
            a, b = features[i], features[i + 1]
            if a.shape[2] > b.shape[2]:
                a = adaptive_avg_pool_reference(a, b.shape[2])
            matrices.append(np.einsum("nbhw,nahw->nba", b, a) / (a.shape[2] * a.shape[3]))
        expected += ((matrices[0] - matrices[1]) ** 2).mean()
    assert len(s_features) == 4  # three pairs: stem→layer1→layer2→layer3
    torch.testing.assert_close(terms["fsp"].detach(), torch.tensor(expected, dtype=torch.float32))


def test_main_stage_has_no_method_term() -> None:
    distiller, _ = build()
    distiller.set_stage("init")
    distiller.set_stage("main")
    distiller.train()
    assert distiller.loss_weights == {"cls": 1.0, "kd": 0.0}
    assert distiller.student.fc.training and not distiller.teacher.training
    _, terms = distiller(random_batch())
    assert set(terms) == {"cls", "kd"}
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert distiller.trainable_state_dict() == {}
