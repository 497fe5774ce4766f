"""FT (factor transfer, METHODS.md §1.10): the factor loss by hand (pooling included), the
paraphraser/translator structure and upstream keys, and the two stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import distiller_zoo
from distiller_zoo.ft import FT, FactorTransfer, Paraphraser, Translator
from tests.distiller_checks import (
    adaptive_avg_pool_reference,
    assert_gradients_reach_exactly,
    build_with_options,
    parameter_ids,
    random_batch,
)
from tests.fixtures import state_shapes, upstream_state_shapes


def hand_factor_loss(f_s: torch.Tensor, f_t: torch.Tensor, p1: float, p2: float) -> float:
    s, t = f_s.double().numpy(), f_t.double().numpy()
    if s.shape[2] > t.shape[2]:
        s = adaptive_avg_pool_reference(s, t.shape[2])
    elif s.shape[2] < t.shape[2]:
        t = adaptive_avg_pool_reference(t, s.shape[2])

    def factor(x: np.ndarray) -> np.ndarray:
        attention = (x**p1).mean(axis=1).reshape(x.shape[0], -1)
        norms = np.sqrt((attention**2).sum(axis=1, keepdims=True))
        return attention / np.maximum(norms, 1e-12)

    difference = factor(s) - factor(t)
    return float(np.abs(difference).mean() if p2 == 1 else (difference**p2).mean())


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "p2"),
    [((3, 2, 4, 4), (3, 5, 2, 2), 1), ((3, 4, 2, 2), (3, 3, 4, 4), 1), ((3, 2, 2, 2), (3, 2, 2, 2), 2)],
)
def test_factor_loss_matches_hand_computation(s_shape, t_shape, p2) -> None:
    torch.manual_seed(0)
    f_s, f_t = torch.randn(s_shape), torch.randn(t_shape)
    loss = FactorTransfer(p1=2, p2=p2)(f_s, f_t)
    torch.testing.assert_close(loss, torch.tensor(hand_factor_loss(f_s, f_t, 2, p2), dtype=torch.float32))


def test_paraphraser_and_translator_keys_match_upstream() -> None:
    paraphraser = Paraphraser([8, 128, 8, 8], k=0.5, use_bn=False)
    translator = Translator([8, 64, 8, 8], [8, 128, 8, 8], k=0.5, use_bn=True)
    state = state_shapes(paraphraser, "paraphraser.") | state_shapes(translator, "translator.")
    assert state == upstream_state_shapes("rd_FT_pipeline")


def test_paraphraser_is_a_leaky_relu_conv_autoencoder() -> None:
    torch.manual_seed(0)
    paraphraser = Paraphraser([2, 4, 3, 3])
    x = torch.randn(2, 4, 3, 3)
    convs = [m for m in paraphraser.encoder if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in paraphraser.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    factor = x
    for conv in convs:
        factor = F.leaky_relu(F.conv2d(factor, conv.weight, conv.bias, padding=1), 0.1)
    reconstruction = factor
    for deconv in deconvs:
        reconstruction = F.leaky_relu(
            F.conv_transpose2d(reconstruction, deconv.weight, deconv.bias, padding=1), 0.1)
    torch.testing.assert_close(paraphraser(x, is_factor=True), factor)
    got_factor, got_reconstruction = paraphraser(x)
    assert got_factor.shape == (2, 2, 3, 3)
    torch.testing.assert_close(got_reconstruction, reconstruction)


def build(model_s: str = "resnet8", model_t: str = "resnet8x4", learning_rate: float = 0.05) -> tuple[FT, object]:
    torch.manual_seed(0)
    return build_with_options("ft", model_s, model_t, gamma=1.0, beta=200.0, learning_rate=learning_rate, init_epochs=2)


ids = parameter_ids


def test_registered_names() -> None:
    assert distiller_zoo.get("factor") is FT and distiller_zoo.get("ft") is FT


@pytest.mark.parametrize(("model_s", "learning_rate", "init_learning_rate"),
                         [("resnet8", 0.05, 0.01), ("wrn_16_1", 0.05, 0.01), ("ShuffleV1", 0.02, 0.02)])
def test_init_learning_rate_rule(model_s: str, learning_rate: float, init_learning_rate: float) -> None:
    """ResNet and WRN students pre-train the paraphraser at 0.01, others at the main learning rate."""
    distiller, _ = build(model_s, "resnet8x4", learning_rate=learning_rate)
    stage = distiller.init_stage
    assert (stage.epochs, stage.learning_rate, stage.terms) == (2, init_learning_rate, ("reconstruction",))


def test_parameters_of_each_stage() -> None:
    distiller, _ = build()
    assert ids(distiller.init_parameters()) == ids(distiller.paraphraser.parameters())
    assert ids(distiller.main_parameters()) == ids(distiller.student.parameters()) | ids(
        distiller.translator.parameters())


def test_init_stage_reconstructs_the_teacher_map_and_trains_only_the_paraphraser() -> None:
    distiller, _ = build()
    distiller.set_stage("init")
    distiller.train()
    assert distiller.loss_weights == {"reconstruction": 1.0}
    assert distiller.paraphraser.training and not distiller.student.training
    assert not distiller.teacher.training
    batch = random_batch()
    _, terms = distiller(batch)
    assert set(terms) == {"reconstruction"} and torch.isfinite(terms["reconstruction"])
    with torch.no_grad():
        f_t = distiller.teacher(batch.images, is_feat=True)[0][-2]
        _, reconstruction = distiller.paraphraser(f_t)
    expected = float(((reconstruction.double() - f_t.double()) ** 2).mean())
    torch.testing.assert_close(terms["reconstruction"].detach(), torch.tensor(expected, dtype=torch.float32))
    terms["reconstruction"].backward()
    assert_gradients_reach_exactly(distiller, distiller.init_parameters())


def test_main_stage_trains_translator_and_student_not_paraphraser() -> None:
    distiller, _ = build()
    distiller.set_stage("init")
    distiller.set_stage("main")
    distiller.train()
    assert distiller.loss_weights == {"cls": 1.0, "kd": 0.0, "factor": 200.0}
    assert not distiller.paraphraser.training and distiller.translator.training
    assert not distiller.teacher.training
    batch = random_batch()
    _, terms = distiller(batch)
    assert set(terms) == {"cls", "kd", "factor"}
    assert all(torch.isfinite(v) for v in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    for name, parameter in distiller.named_parameters():
        if id(parameter) in ids(distiller.main_parameters()):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        else:
            assert parameter.grad is None, name


def test_main_term_is_the_factor_loss_of_translator_and_paraphraser_encoder() -> None:
    distiller, _ = build()
    distiller.eval()
    batch = random_batch()
    _, terms = distiller(batch)
    with torch.no_grad():
        f_s = distiller.student(batch.images, is_feat=True)[0][-2]
        f_t = distiller.teacher(batch.images, is_feat=True)[0][-2]
        factor_s = distiller.translator(f_s)
        factor_t = distiller.paraphraser(f_t, is_factor=True)
    expected = hand_factor_loss(factor_s, factor_t, p1=2, p2=1)
    torch.testing.assert_close(terms["factor"].detach(), torch.tensor(expected, dtype=torch.float32))


def test_trainable_state_round_trip() -> None:
    distiller, _ = build()
    state = distiller.trainable_state_dict()
    assert {key.split(".")[0] for key in state} == {"paraphraser", "translator"}
    other, _ = build()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.load_trainable_state_dict(state)
    for key, value in other.trainable_state_dict().items():
        torch.testing.assert_close(value, state[key])
