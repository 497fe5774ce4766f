"""AB (activation boundaries, METHODS.md §1.9): the loss by hand, the connector's upstream keys,
and the two stages: what each optimises, which modules train, and where gradients go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distiller_zoo
from distiller_zoo.ab import AB, ABLoss, Connector
from errors import UsageError
from tests.distiller_checks import assert_gradients_reach_exactly, build_with_options, parameter_ids, random_batch
from tests.fixtures import state_shapes, upstream_state_shapes


def hand_ab(g_s: list[torch.Tensor], g_t: list[torch.Tensor], margin: float) -> list[float]:
    """METHODS.md §1.9 in float64 numpy: both hinges summed over every element, then scaled."""
    n = len(g_s)
    losses = []
    for i, (s_map, t_map) in enumerate(zip(g_s, g_t)):
        s, t = s_map.double().numpy(), t_map.double().numpy()
        push_down = np.where((s > -margin) & (t <= 0), (s + margin) ** 2, 0.0)
        push_up = np.where((s <= margin) & (t > 0), (s - margin) ** 2, 0.0)
        total = float(push_down.sum() + push_up.sum())
        losses.append(2.0 ** (i - n + 1) * total / s_map.shape[0] * 3 / 1000)
    return losses


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_loss_matches_hand_computation(margin: float) -> None:
    torch.manual_seed(0)
    g_s = [torch.randn(3, 2, 2, 2) * 2, torch.randn(3, 4, 1, 1) * 2]
    g_t = [torch.randn(3, 2, 2, 2), torch.randn(3, 4, 1, 1)]
    # Boundary values: teacher exactly 0 counts as "off"; student exactly ±margin sits on a hinge.
    g_t[0][0, 0, 0, 0], g_s[0][0, 0, 0, 0] = 0.0, -margin
    g_t[0][0, 0, 0, 1], g_s[0][0, 0, 0, 1] = 0.0, -margin / 2
    g_t[1][1, 0, 0, 0], g_s[1][1, 0, 0, 0] = 1.0, margin
    losses = ABLoss(feat_num=2, margin=margin)(g_s, g_t)
    assert len(losses) == 2
    torch.testing.assert_close(torch.stack(losses), torch.tensor(hand_ab(g_s, g_t, margin)))


def test_ab_loss_is_zero_beyond_the_margins() -> None:
    g_t = [torch.tensor([[1.0, -1.0, 0.0]]).view(1, 3, 1, 1)]
    g_s = [torch.tensor([[1.5, -2.0, -1.0]]).view(1, 3, 1, 1)]
    assert ABLoss(1)(g_s, g_t)[0].item() == 0.0


def test_connector_keys_match_upstream() -> None:
    s_shapes = [[8, 16, 32, 32], [8, 32, 16, 16], [8, 64, 8, 8]]
    t_shapes = [[8, 32, 32, 32], [8, 64, 16, 16], [8, 128, 8, 8]]
    assert state_shapes(Connector(s_shapes, t_shapes), "connector.") == upstream_state_shapes("rd_AB_pipeline")


def test_connector_is_identity_where_shapes_agree_and_has_no_relu() -> None:
    connector = Connector([[2, 4, 8, 8], [2, 4, 4, 4]], [[2, 4, 8, 8], [2, 6, 4, 4]])
    x = torch.randn(2, 4, 8, 8)
    assert connector([x, torch.randn(2, 4, 4, 4)])[0] is x
    assert not list(connector.connectors[0].parameters())
    # BN without ReLU: in train mode the output has both signs.
    out = connector([x, torch.randn(2, 4, 4, 4)])[1]
    assert out.shape == (2, 6, 4, 4) and (out < 0).any()


def build(model_s: str = "resnet8", model_t: str = "resnet8x4") -> tuple[AB, object]:
    torch.manual_seed(0)
    return build_with_options("ab", model_s, model_t, gamma=1.0, beta=1.0, learning_rate=0.05, init_epochs=3)


ids = parameter_ids


def test_registered_names_and_preact_taps() -> None:
    assert distiller_zoo.get("abound") is AB and distiller_zoo.get("ab") is AB
    assert AB.preact


def test_init_and_main_parameters() -> None:
    distiller, _ = build()
    student = distiller.student
    feature_modules = ids(student.get_feat_modules().parameters())
    connector = ids(distiller.connector.parameters())
    assert connector and ids(distiller.init_parameters()) == connector | feature_modules
    assert not ids(student.fc.parameters()) & ids(distiller.init_parameters())
    assert ids(distiller.main_parameters()) == ids(student.parameters())
    stage = distiller.init_stage
    assert (stage.epochs, stage.learning_rate, stage.terms) == (3, 0.05, ("abound",))


def test_init_stage_trains_only_connector_and_feature_modules() -> None:
    distiller, _ = build()
    distiller.train()
    distiller.set_stage("init")
    assert distiller.loss_weights == {"abound": 1.0}
    assert distiller.connector.training and distiller.student.layer3.training
    assert not distiller.student.fc.training and not distiller.teacher.training
    _, terms = distiller(random_batch())
    assert set(terms) == {"abound"} and torch.isfinite(terms["abound"]) and terms["abound"] > 0
    terms["abound"].backward()
    assert_gradients_reach_exactly(distiller, distiller.init_parameters())


def test_init_term_equals_hand_computation_on_preact_features() -> None:
    distiller, _ = build()
    distiller.set_stage("init")
    distiller.eval()
    batch = random_batch()
    _, terms = distiller(batch)
    with torch.no_grad():
        s_features, _ = distiller.student(batch.images, is_feat=True, preact=True)
        t_features, _ = distiller.teacher(batch.images, is_feat=True, preact=True)
        connected = [c(f) for c, f in zip(distiller.connector.connectors, s_features[1:-1])]
    expected = sum(hand_ab(connected, t_features[1:-1], margin=1.0))
    torch.testing.assert_close(terms["abound"].detach(), torch.tensor(expected))


def test_main_stage_has_no_method_term_and_freezes_connector() -> None:
    distiller, _ = build()
    distiller.set_stage("init")
    distiller.set_stage("main")
    distiller.train()
    assert distiller.loss_weights == {"cls": 1.0, "kd": 0.0}
    assert not distiller.connector.training and distiller.student.training
    assert not distiller.teacher.training
    _, terms = distiller(random_batch())
    assert set(terms) == {"cls", "kd"}
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    assert all(p.grad is None for p in distiller.connector.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert all(p.grad is not None for p in distiller.student.parameters())


def test_identical_maps_need_no_connector_parameters() -> None:
    distiller, _ = build("resnet8", "resnet20")
    assert not list(distiller.connector.parameters())
    assert distiller.trainable_state_dict() == {}


def test_unequal_map_counts_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"abound.*student exposes 4 .* teacher 3"):
        build("MobileNetV2", "resnet8")


def test_trainable_state_round_trip() -> None:
    distiller, _ = build()
    state = distiller.trainable_state_dict()
    assert state and all(key.startswith("connector.connectors.") for key in state)
    other, _ = build()
    with torch.no_grad():
        for p in other.connector.parameters():
            p.add_(1.0)
    other.load_trainable_state_dict(state)
    for key, value in other.trainable_state_dict().items():
        torch.testing.assert_close(value, state[key])
