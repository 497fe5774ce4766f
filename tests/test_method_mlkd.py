"""MLKD (Jin et al., CVPR 2023): the three levels and the masks by hand, upstream's loss dict, the Distiller.

The hand computations are plain Python loops over the formulas of ``distiller_zoo/mlkd.py``'s
docstring, including the released code's choices (masks that scale batch means, the strong
sum's temperatures 2 and 6 on the weak view, cc and bc on the weak view only).
"""

from __future__ import annotations

import math

import pytest
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo.mlkd import MLKD, bc_loss, cc_loss, confidence_masks, kd_loss, mlkd_loss
from tests.conftest import run_main
from tests.distiller_checks import assert_gradients_reach_exactly, build_with_options


def softmax(row, T=1.0):
    top = max(row)
    exps = [math.exp((v - top) / T) for v in row]
    return [e / sum(exps) for e in exps]


def standardised(row):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (std + 1e-7) for v in row]


def kd_by_hand(z_s, z_t, T, logit_stand=False):
    total = 0.0
    for s_row, t_row in zip(z_s.tolist(), z_t.tolist()):
        if logit_stand:
            s_row, t_row = standardised(s_row), standardised(t_row)
        p_s, p_t = softmax(s_row, T), softmax(t_row, T)
        total += sum(t * (math.log(t) - math.log(s)) for s, t in zip(p_s, p_t))
    return total / len(z_s) * T**2


def gram_gap_by_hand(z_s, z_t, T, over_classes):
    """Σ (G_t − G_s)² of the class (C×C) or sample (B×B) Gram matrices of the softened predictions."""
    P_s = [softmax(row, T) for row in z_s.tolist()]
    P_t = [softmax(row, T) for row in z_t.tolist()]
    B, C = len(P_s), len(P_s[0])
    total = 0.0
    if over_classes:
        for i in range(C):
            for j in range(C):
                g_s = sum(P_s[b][i] * P_s[b][j] for b in range(B))
                g_t = sum(P_t[b][i] * P_t[b][j] for b in range(B))
                total += (g_t - g_s) ** 2
    else:
        for a in range(B):
            for b in range(B):
                g_s = sum(P_s[a][c] * P_s[b][c] for c in range(C))
                g_t = sum(P_t[a][c] * P_t[b][c] for c in range(C))
                total += (g_t - g_s) ** 2
    return total


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def mask_shares_by_hand(z_t_weak):
    """The shares of samples and of classes at or below the median teacher confidence."""
    probs = [softmax(row) for row in z_t_weak.tolist()]
    confidence = [max(row) for row in probs]
    class_confidence = [sum(row[c] for row in probs) for c in range(len(probs[0]))]
    sample_share = sum(v <= median(confidence) for v in confidence) / len(confidence)
    class_share = sum(v <= median(class_confidence) for v in class_confidence) / len(class_confidence)
    return sample_share, class_share


def mlkd_by_hand(s_w, s_s, t_w, t_s, target, T, ce_w, kd_w, logit_stand=False):
    temps = [T, 3.0, 5.0, 2.0, 6.0]
    sample_share, class_share = mask_shares_by_hand(t_w)
    B, C = s_w.shape
    kd_weak = sum(kd_by_hand(s_w, t_w, u, logit_stand) for u in temps) * sample_share
    kd_strong = (sum(kd_by_hand(s_s, t_s, u, logit_stand) for u in temps[:3])
                 + sum(kd_by_hand(s_w, t_w, u, logit_stand) for u in temps[3:]))
    cc = sum(gram_gap_by_hand(s_w, t_w, u, True) / C for u in temps) * class_share
    bc = sum(gram_gap_by_hand(s_w, t_w, u, False) / B for u in temps) * sample_share

    def ce(z):
        return sum(-math.log(softmax(row)[y]) for row, y in zip(z.tolist(), target.tolist())) / B

    return {"loss_ce": ce_w * (ce(s_w) + ce(s_s)), "loss_kd": kd_w * (kd_weak + kd_strong),
            "loss_cc": kd_w * cc, "loss_bc": kd_w * bc}


def logits(seed, B=6, C=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=generator) * 3


@pytest.mark.parametrize("T", [4.0, 2.0])
def test_cc_and_bc_loss_by_hand(T):
    z_s, z_t = logits(1), logits(2)
    torch.testing.assert_close(cc_loss(z_s, z_t, T), torch.tensor(gram_gap_by_hand(z_s, z_t, T, True) / 5))
    torch.testing.assert_close(bc_loss(z_s, z_t, T), torch.tensor(gram_gap_by_hand(z_s, z_t, T, False) / 6))
    assert float(cc_loss(z_t, z_t, T)) == 0.0 and float(bc_loss(z_t, z_t, T)) == 0.0


def test_confidence_masks_keep_the_samples_and_classes_at_or_below_the_median():
    z_t = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.5]])
    sample_mask, class_mask = confidence_masks(z_t)
    probs = [softmax(row) for row in z_t.tolist()]
    tops = [max(row) for row in probs]  # median of 4: the mean of the middle two
    assert sample_mask.tolist() == [v <= median(tops) for v in tops] == [False, True, False, True]
    sums = [sum(row[c] for row in probs) for c in range(3)]
    assert class_mask.tolist() == [v <= median(sums) for v in sums]
    assert class_mask.sum() == 2


@pytest.mark.parametrize("logit_stand", [False, True])
def test_mlkd_loss_by_hand(logit_stand):
    s_w, s_s, t_w, t_s = logits(3), logits(4), logits(5), logits(6)
    target = torch.tensor([0, 4, 2, 2, 1, 3])
    loss = mlkd_loss(s_w, s_s, t_w, t_s, target, 4.0, 0.1, 0.9, logit_stand=logit_stand)
    assert list(loss) == ["loss_ce", "loss_kd", "loss_cc", "loss_bc"]
    expected = mlkd_by_hand(s_w, s_s, t_w, t_s, target, 4.0, 0.1, 0.9, logit_stand)
    for name, value in expected.items():
        torch.testing.assert_close(loss[name], torch.tensor(value, dtype=torch.float32), msg=name)
    expected_kd = torch.tensor(kd_by_hand(s_w, t_w, 3.0, logit_stand))
    torch.testing.assert_close(kd_loss(s_w, t_w, 3.0, logit_stand), expected_kd)


def test_the_strong_view_reaches_only_ce_and_the_strong_instance_terms():
    """Upstream computes strong-view class and batch terms but returns none: loss_cc/loss_bc ignore it."""
    s_w, t_w, t_s = logits(7), logits(8), logits(9)
    target = torch.tensor([1, 0, 2, 3, 4, 0])
    s_s = logits(10).requires_grad_()
    loss = mlkd_loss(s_w, s_s, t_w, t_s, target, 4.0, 1.0, 1.0)
    for name in ("loss_cc", "loss_bc"):
        assert not loss[name].requires_grad, name
    assert loss["loss_kd"].requires_grad and loss["loss_ce"].requires_grad


def build(**overrides):
    torch.manual_seed(0)
    return build_with_options("mlkd", "resnet8", "resnet20", gamma=0.1, alpha=0.0, beta=0.9, **overrides)[0]


def two_view_batch():
    generator = torch.Generator().manual_seed(0)
    return Batch(torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator),
                 strong_images=torch.randn(8, 3, 32, 32, generator=generator))


@pytest.mark.parametrize("logit_stand", [False, True])
def test_distiller_terms_are_upstreams_on_both_views(logit_stand):
    distiller = build(logit_stand=logit_stand, kd_T=4.0)
    assert isinstance(distiller, MLKD) and distiller.logit_stand is logit_stand
    assert distiller.loss_weights == {"cls": 0.1, "kd": 0.0, "cls_strong": 0.1, "mlkd_kd": 0.9, "mlkd_cc": 0.9,
                                      "mlkd_bc": 0.9}
    batch = two_view_batch()
    distiller.train()
    prediction, terms = distiller(batch)
    assert prediction.shape == (8, 10) and set(terms) == set(distiller.loss_weights)
    distiller.eval()  # BatchNorm in eval mode on both networks: the forward passes are repeatable
    _, terms = distiller(batch)
    with torch.no_grad():
        s_w, s_s = distiller.student(batch.images), distiller.student(batch.strong_images)
        t_w, t_s = distiller.teacher(batch.images), distiller.teacher(batch.strong_images)
    expected = mlkd_by_hand(s_w, s_s, t_w, t_s, batch.targets, 4.0, 1.0, 1.0, logit_stand)
    torch.testing.assert_close(terms["cls"] + terms["cls_strong"], torch.tensor(expected["loss_ce"]))
    for level in ("kd", "cc", "bc"):
        torch.testing.assert_close(terms[f"mlkd_{level}"], torch.tensor(expected[f"loss_{level}"]), msg=level)
    weighted = sum(distiller.loss_weights[k] * v for k, v in terms.items())
    upstream = mlkd_by_hand(s_w, s_s, t_w, t_s, batch.targets, 4.0, 0.1, 0.9, logit_stand)
    torch.testing.assert_close(weighted, torch.tensor(sum(upstream.values())))


def test_gradients_reach_the_student_and_never_the_teacher():
    distiller = build()
    distiller.train()
    _, terms = distiller(two_view_batch())
    assert not distiller.teacher.training
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    assert_gradients_reach_exactly(distiller, distiller.student.parameters())
    assert distiller.trainable_state_dict() == {}
    for name in ("cls_strong", "mlkd_kd", "mlkd_cc", "mlkd_bc"):
        assert terms[name].requires_grad, name


def test_a_batch_without_the_strong_view_is_refused():
    distiller = build()
    with pytest.raises(ValueError, match="strong_images"):
        distiller(Batch(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))))


def test_registry_facts():
    assert distiller_zoo.registry.data_needs("mlkd", {}).strong_view
    assert MLKD.recommended == distiller_zoo.Weights(0.1, 0.0, 0.9)
    for name in ("mlkd_loss", "cc_loss", "bc_loss", "kd_loss"):
        assert callable(getattr(distiller_zoo, name))


@pytest.mark.parametrize("extra", [[], ["--logit_stand", "--kd_T", "2", "--loader", "torchvision"]],
                         ids=["fast", "logit-stand-reference-loader"])
def test_one_epoch_run(extra, cifar100_root, cifar100_teacher, tmp_path):
    args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "mlkd", "--data_root",
            str(cifar100_root), "--save_dir", str(tmp_path), "--epochs", "1", "--num_workers", "0",
            "--batch_size", "32", *extra]
    assert run_main("student", args)[0] == 0
    (metrics,) = tmp_path.glob("students/models/*/metrics.jsonl")
    record = __import__("json").loads(metrics.read_text().splitlines()[-1])
    for name in ("train_cls_strong", "train_mlkd_kd", "train_mlkd_cc", "train_mlkd_bc"):
        assert math.isfinite(record[name]) and record[name] > 0, name
