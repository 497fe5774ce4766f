"""Logit standardisation (Sun et al., CVPR 2024): ``normalize``, the LS criteria, ``--logit_stand``
on every logit method that declares it, and the paper's recipe through train_student.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import DistillKL, DistillKL_logit_stand, DKDLoss, dkd_loss, kd_loss, normalize
from distiller_zoo.flags import LOGIT_STAND
from tests.conftest import run_main
from tests.distiller_checks import build_with_options

STUDENT = [[1.0, 2.0, 0.5, -1.0, 0.0], [0.0, 0.3, -0.2, 0.1, 1.5], [3.0, -2.0, 1.0, 0.5, 2.5]]
TEACHER = [[2.0, 1.0, 0.0, 0.5, -0.5], [8.0, -2.0, 0.0, 2.0, 4.0], [0.0, 1.0, -1.0, 2.0, 0.5]]


def standardise_by_hand(row):
    """(z − mean) / (unbiased std + 1e-7)."""
    mean = sum(row) / len(row)
    std = math.sqrt(sum((z - mean) ** 2 for z in row) / (len(row) - 1))
    return [(z - mean) / (std + 1e-7) for z in row]


def kd_by_hand(z_s, z_t, tau):
    def softmax(row):
        exps = [math.exp(z / tau) for z in row]
        return [e / sum(exps) for e in exps]

    total = sum(sum(t * (math.log(t) - math.log(s)) for t, s in zip(softmax(t_row), softmax(s_row)))
                for s_row, t_row in zip(z_s, z_t))
    return tau**2 * total / len(z_s)


def ls_kd_by_hand(z_s, z_t, tau):
    return kd_by_hand([standardise_by_hand(r) for r in z_s], [standardise_by_hand(r) for r in z_t], tau)


def as_tensors(*rows):
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


def test_normalize_is_a_z_score_with_the_unbiased_std():
    (z,) = as_tensors(TEACHER)
    expected = [standardise_by_hand(row) for row in TEACHER]
    torch.testing.assert_close(normalize(z), torch.tensor(expected, dtype=torch.float64))
    assert normalize(z).mean(dim=1).abs().max() < 1e-12
    torch.testing.assert_close(normalize(z).std(dim=1), torch.ones(3, dtype=torch.float64), rtol=1e-6, atol=0)


def test_standardised_kd_ignores_the_scale_and_offset_of_the_logits():
    """The point of LS: the student need not match the teacher's logit range, only its relations."""
    z_s, z_t = as_tensors(STUDENT, TEACHER)
    ls = kd_loss(z_s, z_t, 2.0, logit_stand=True)
    assert kd_loss(5 * z_s - 3, z_t, 2.0, logit_stand=True).item() == pytest.approx(ls.item(), rel=1e-6)
    assert kd_loss(5 * z_s - 3, z_t, 2.0).item() != pytest.approx(kd_loss(z_s, z_t, 2.0).item(), rel=1e-2)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_loss_with_and_without_standardisation(tau):
    z_s, z_t = as_tensors(STUDENT, TEACHER)
    assert kd_loss(z_s, z_t, tau, logit_stand=True).item() == pytest.approx(ls_kd_by_hand(STUDENT, TEACHER, tau),
                                                                           rel=1e-10)
    assert kd_loss(z_s, z_t, tau).item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, tau), rel=1e-10)
    assert kd_loss(z_s, z_t, tau).item() == pytest.approx(DistillKL(tau)(z_s, z_t).item(), rel=1e-12)


def test_distill_kl_logit_stand_in_both_call_conventions():
    z_s, z_t = as_tensors(STUDENT, TEACHER)
    expected = ls_kd_by_hand(STUDENT, TEACHER, 2.0)
    temp = torch.tensor(2.0, dtype=torch.float64)
    assert DistillKL_logit_stand()(z_s, z_t, temp).item() == pytest.approx(expected, rel=1e-10)
    assert DistillKL_logit_stand(2.0)(z_s, z_t).item() == pytest.approx(expected, rel=1e-10)


def test_distill_kl_takes_an_optional_third_temperature_argument():
    z_s, z_t = as_tensors(STUDENT, TEACHER)
    assert DistillKL(4.0)(z_s, z_t, 2.0).item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, 2.0), rel=1e-10)
    temp = torch.tensor([3.0], dtype=torch.float64)  # CTKD passes a 1-element tensor
    assert DistillKL()(z_s, z_t, temp).item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, 3.0), rel=1e-10)
    with pytest.raises(ValueError, match="without a temperature"):
        DistillKL()(z_s, z_t)


def test_dkd_loss_standardises_before_splitting():
    z_s, z_t = as_tensors(STUDENT, TEACHER)
    target = torch.tensor([0, 4, 2])
    standardised = dkd_loss(normalize(z_s), normalize(z_t), target, 9.0, 72.0, 2.0)
    torch.testing.assert_close(dkd_loss(z_s, z_t, target, 9.0, 72.0, 2.0, logit_stand=True), standardised)
    assert standardised.item() != pytest.approx(dkd_loss(z_s, z_t, target, 9.0, 72.0, 2.0).item(), rel=1e-3)
    criterion = DKDLoss(9.0, 72.0, 2.0, warmup=20, logit_stand=True)
    torch.testing.assert_close(criterion(z_s, z_t, target, 10), standardised / 2)
    torch.testing.assert_close(DKDLoss(1.0, 8.0, 4.0, 20)(z_s, z_t, target, 40),
                               dkd_loss(z_s, z_t, target, 1.0, 8.0, 4.0))


def test_the_logit_methods_declare_the_one_shared_flag():
    declaring = {name for name, cls in distiller_zoo.DISTILLERS.items() if LOGIT_STAND in cls.arguments}
    assert {"kd", "dkd", "ctkd", "dist"} <= declaring


def logits_of(distiller, batch):
    with torch.no_grad():
        return distiller.student(batch.images).double(), distiller.teacher(batch.images).double()


@pytest.mark.parametrize("method", ["kd", "dkd", "dist"])
@pytest.mark.parametrize("logit_stand", [True, False, None])
def test_the_kd_term_of_a_logit_method_follows_the_flag(method, logit_stand):
    torch.manual_seed(0)
    distiller, _ = build_with_options(method, "resnet8", "resnet20", kd_T=2.0, logit_stand=logit_stand)
    distiller.eval()
    batch = Batch(torch.randn(4, 3, 32, 32), torch.tensor([1, 7, 7, 0]))
    _, terms = distiller(batch)
    z_s, z_t = logits_of(distiller, batch)
    by_hand = ls_kd_by_hand if logit_stand else kd_by_hand
    assert terms["kd"].item() == pytest.approx(by_hand(z_s.tolist(), z_t.tolist(), 2.0), rel=1e-4)


def test_dkd_term_with_the_flag_is_dkd_of_the_standardised_logits():
    torch.manual_seed(0)
    distiller, _ = build_with_options("dkd", "resnet8", "resnet20", kd_T=2.0, dkd_alpha=9.0, dkd_beta=72.0,
                                      logit_stand=True)
    distiller.eval()
    distiller.set_epoch(20)
    batch = Batch(torch.randn(4, 3, 32, 32), torch.tensor([1, 7, 7, 0]))
    _, terms = distiller(batch)
    z_s, z_t = logits_of(distiller, batch)
    expected = dkd_loss(normalize(z_s), normalize(z_t), batch.targets, 9.0, 72.0, 2.0)
    assert terms["dkd"].item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize(("method", "recipe", "name"), [
    ("kd", ["-r", "0.1", "-a", "9", "--kd_T", "2"], "kd_r:0.1_a:9.0_b:0.0"),
    ("dkd", ["-r", "1", "-a", "0", "-b", "1", "--kd_T", "2", "--dkd_alpha", "9", "--dkd_beta", "72"],
     "dkd_r:1.0_a:0.0_b:1.0"),
])
def test_the_papers_recipe_trains_one_epoch(method, recipe, name, tmp_path, cifar100_root, cifar100_teacher):
    args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", method, "--logit_stand",
            *recipe, "--data_root", str(cifar100_root), "--epochs", "1", "--batch_size", "32", "--num_workers", "0",
            "--save_dir", str(tmp_path)]
    assert run_main("student", args)[0] == 0
    folder = tmp_path / "students" / "models" / f"S:resnet8_T:resnet8_cifar100_{name}_0"
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(v) for k, v in record.items() if k.startswith("train_"))
    if method == "kd":
        assert record["train_loss"] == pytest.approx(0.1 * record["train_cls"] + 9 * record["train_kd"], rel=1e-4)
