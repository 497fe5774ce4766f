"""CTKD: the cosine λ curriculum, the gradient-reversal layer, the learned temperature's reversed
gradient, the Distiller's trainable temperature, a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dataset.batch import Batch
from distiller_zoo import CosineDecay, DistillKL, DistillKL_logit_stand, Global_T, GradientReversal, Weights
from distiller_zoo.common import normalize
from distiller_zoo.ctkd import CTKD, LearnedTemperatureKD
from tests.conftest import run_main
from tests.distiller_checks import assert_gradients_reach_exactly, build_with_options, random_batch

STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, -0.2, 0.1], [3.0, -2.0, 1.0, 0.5]]
TEACHER = [[2.0, 1.0, 0.0, 0.5], [4.0, -1.0, 0.0, 1.0], [0.0, 1.0, -1.0, 2.0]]


def kd_by_hand(z_s, z_t, tau):
    """τ² · mean over samples of KL(softmax(z_t/τ) ‖ softmax(z_s/τ))."""
    def softmax(row):
        exps = [math.exp(z / tau) for z in row]
        return [e / sum(exps) for e in exps]

    total = 0.0
    for s_row, t_row in zip(z_s, z_t):
        p_s, p_t = softmax(s_row), softmax(t_row)
        total += sum(t * (math.log(t) - math.log(s)) for t, s in zip(p_t, p_s))
    return tau**2 * total / len(z_s)


def temperature_by_hand(theta, t_start=1.0, t_end=20.0):
    return t_start + t_end / (1 + math.exp(-theta))


def loss_gradient_by_hand(theta):
    """∂L/∂θ without reversal: L'(τ) by central differences times dτ/dθ = 20·σ(θ)·(1 − σ(θ))."""
    tau, h = temperature_by_hand(theta), 1e-5
    dl_dtau = (kd_by_hand(STUDENT, TEACHER, tau + h) - kd_by_hand(STUDENT, TEACHER, tau - h)) / (2 * h)
    sigma = 1 / (1 + math.exp(-theta))
    return dl_dtau * 20 * sigma * (1 - sigma)


@pytest.mark.parametrize(("epoch", "expected"), [
    (-3, 0.0), (0, 0.0), (1, (math.cos(math.pi / 10) + 1) / 2 - 1), (5, -0.5), (10, -1.0), (240, -1.0)])
def test_cosine_curriculum_from_0_to_minus_1_over_10_epochs(epoch, expected):
    assert CosineDecay(max_value=0, min_value=-1, num_loops=10).get_value(epoch) == pytest.approx(expected, abs=1e-12)


def test_cosine_curriculum_over_5_epochs_as_on_imagenet():
    decay = CosineDecay(0.0, -1.0, 5)
    assert [round(decay.get_value(e), 6) for e in range(7)] == [
        round((math.cos(math.pi * min(e, 5) / 5) + 1) / 2 - 1, 6) for e in range(7)]
    assert decay.get_value(5) == -1.0 and decay.get_value(2) == pytest.approx((math.cos(0.4 * math.pi) - 1) / 2)


@pytest.mark.parametrize("lambda_", [1.0, 0.0, -0.3, -1.0])
def test_gradient_reversal_is_identity_forward_and_scales_the_gradient(lambda_):
    x = torch.tensor([0.5, -2.0, 3.0], requires_grad=True)
    y = GradientReversal()(x, lambda_)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([1.0, 2.0, -4.0])).sum().backward()
    torch.testing.assert_close(x.grad, lambda_ * torch.tensor([1.0, 2.0, -4.0]))


def test_global_t_has_upstreams_single_parameter():
    module = Global_T()
    assert {k: list(v.shape) for k, v in module.state_dict().items()} == {"global_T": [1]}
    assert module.global_T.item() == 1.0 and module.global_T.requires_grad
    assert module(torch.zeros(2, 3), torch.zeros(2, 3), -0.5).item() == 1.0


def test_learned_temperature_kd_is_kd_at_1_plus_20_sigmoid_theta():
    criterion = LearnedTemperatureKD()
    z_s, z_t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    tau = temperature_by_hand(1.0)
    assert criterion.temperature(z_s, z_t).item() == pytest.approx(tau, rel=1e-6) == pytest.approx(15.621, abs=1e-3)
    assert criterion(z_s, z_t).dim() == 0
    assert criterion(z_s, z_t).item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, tau), rel=1e-6)


@pytest.mark.parametrize("epoch", [1, 3, 5, 10, 30])
def test_temperature_gradient_is_reversed_once_lambda_is_negative(epoch):
    torch.manual_seed(0)
    distiller, _ = build_with_options("ctkd", "resnet8", "resnet20")
    distiller.set_epoch(epoch)
    lambda_ = CosineDecay(0.0, -1.0, 10).get_value(epoch)
    assert distiller.kd_loss.lambda_ == lambda_ < 0
    criterion = distiller.kd_loss
    criterion.mlp.global_T.data.fill_(1.0)
    loss = criterion(torch.tensor(STUDENT), torch.tensor(TEACHER))
    loss.backward()
    plain = loss_gradient_by_hand(1.0)
    got = criterion.mlp.global_T.grad.item()
    assert got == pytest.approx(lambda_ * plain, rel=1e-3)
    assert math.copysign(1, got) == -math.copysign(1, plain)


def test_an_sgd_step_on_the_temperature_climbs_the_kd_loss():
    criterion = LearnedTemperatureKD().double()
    criterion.lambda_ = -1.0
    z_s, z_t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    optimizer = torch.optim.SGD(criterion.parameters(), lr=0.5)
    before = criterion(z_s, z_t)
    before.backward()
    optimizer.step()
    assert criterion.mlp.global_T.item() == pytest.approx(1.0 + 0.5 * loss_gradient_by_hand(1.0), rel=1e-6)
    with torch.no_grad():
        after = criterion(z_s, z_t)
    assert after.item() > before.item()


def test_distiller_flags_weights_and_kd_term():
    assert CTKD.recommended == Weights(gamma=0.1, alpha=0.9, beta=0.0)
    torch.manual_seed(0)
    distiller, _ = build_with_options("ctkd", "resnet8", "resnet20", gamma=0.1, alpha=0.9, kd_T=4.0, t_start=2.0,
                                      t_end=10.0, decay_max=0.0, decay_min=-0.5, decay_loops=4.0)
    assert isinstance(distiller.kd_loss, LearnedTemperatureKD)
    assert type(distiller.kd_loss.criterion) is DistillKL
    assert (distiller.kd_loss.t_start, distiller.kd_loss.t_end) == (2.0, 10.0)
    assert distiller.kd_loss.lambda_ == pytest.approx(CosineDecay(0.0, -0.5, 4.0).get_value(1))
    distiller.set_epoch(4)
    assert distiller.kd_loss.lambda_ == -0.5
    assert distiller.loss_weights == {"cls": 0.1, "kd": 0.9}
    distiller.eval()
    batch = Batch(torch.randn(3, 3, 32, 32), torch.randint(10, (3,)))
    _, terms = distiller(batch)
    assert set(terms) == {"cls", "kd"}
    with torch.no_grad():
        z_s, z_t = distiller.student(batch.images), distiller.teacher(batch.images)
    expected = kd_by_hand(z_s.double().tolist(), z_t.double().tolist(), temperature_by_hand(1.0, 2.0, 10.0))
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-4)


def test_the_temperature_is_a_trainable_part_that_checkpoints_carry():
    torch.manual_seed(0)
    distiller, _ = build_with_options("ctkd", "resnet8", "resnet20", alpha=0.9)
    theta = distiller.kd_loss.mlp.global_T
    main = {id(p) for p in distiller.main_parameters()}
    assert id(theta) in main
    assert main == {id(p) for p in distiller.student.parameters()} | {id(theta)}
    state = distiller.trainable_state_dict()
    assert list(state) == ["kd_loss.mlp.global_T"]
    saved = {k: v.clone() for k, v in state.items()}
    theta.data.fill_(-3.0)
    distiller.load_trainable_state_dict(saved)
    assert theta.item() == 1.0


def test_training_step_reaches_the_student_and_the_temperature_never_the_teacher():
    torch.manual_seed(0)
    distiller, _ = build_with_options("ctkd", "resnet8", "resnet20", alpha=0.9)
    distiller.train()
    _, terms = distiller(random_batch(4))
    terms["kd"].backward()
    assert_gradients_reach_exactly(distiller, [*distiller.student.parameters(), distiller.kd_loss.mlp.global_T])
    assert not distiller.teacher.training


def test_logit_stand_softens_standardised_logits_at_the_learned_temperature():
    torch.manual_seed(0)
    distiller, _ = build_with_options("ctkd", "resnet8", "resnet20", logit_stand=True)
    assert isinstance(distiller.kd_loss.criterion, DistillKL_logit_stand)
    distiller.eval()
    batch = Batch(torch.randn(3, 3, 32, 32), torch.randint(10, (3,)))
    _, terms = distiller(batch)
    with torch.no_grad():
        z_s, z_t = distiller.student(batch.images), distiller.teacher(batch.images)
    expected = kd_by_hand(normalize(z_s).double().tolist(), normalize(z_t).double().tolist(),
                          temperature_by_hand(1.0))
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-4)


def test_one_epoch_run_learns_the_temperature(tmp_path, cifar100_root, cifar100_teacher):
    args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "ctkd", "--data_root",
            str(cifar100_root), "--epochs", "1", "--batch_size", "32", "--num_workers", "0", "--save_dir",
            str(tmp_path)]
    assert run_main("student", args)[0] == 0
    folder = tmp_path / "students" / "models" / "S:resnet8_T:resnet8_cifar100_ctkd_r:0.1_a:0.9_b:0.0_0"
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_loss"] == pytest.approx(0.1 * record["train_cls"] + 0.9 * record["train_kd"], rel=1e-4)
    state = torch.load(folder / "latest.pth", map_location="cpu", weights_only=False)
    theta = state["distiller"]["kd_loss.mlp.global_T"]
    assert theta.shape == (1,) and theta.item() != 1.0
