"""FitNet (METHODS.md §1.2): hint loss by hand, regressor state-dict names, one training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.common import ConvReg
from distiller_zoo.fitnet import FitNet, HintLoss
from errors import UsageError
from tests.distiller_checks import adaptive_avg_pool_reference, build_distiller, check_training_step
from tests.fixtures import state_shapes, upstream_constructor, upstream_state_shapes


def bn_relu_reference(y: np.ndarray) -> np.ndarray:
    """Training-mode BatchNorm with weight 1 and bias 0 (biased batch variance, eps 1e-5), then ReLU."""
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    var = y.var(axis=(0, 2, 3), keepdims=True)
    return np.maximum((y - mean) / np.sqrt(var + 1e-5), 0.0)


def test_hint_loss_is_mean_squared_error_over_all_elements():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    s, t = f_s.numpy(), f_t.numpy()
    total = 0.0
    for index in np.ndindex(s.shape):
        total += (s[index] - t[index]) ** 2
    torch.testing.assert_close(HintLoss()(f_s, f_t), torch.tensor(total / s.size, dtype=torch.float64))


def test_distill_regresses_the_hint_layer_with_a_1x1_conv():
    """Same spatial size: L = MSE(ReLU(BN(W·f_s + b)), f_t) at feat[--hint_layer]."""
    torch.manual_seed(1)
    distiller = build_distiller("hint", "resnet8", "resnet8", hint_layer=1)
    distiller.regress_s = ConvReg([4, 6, 5, 5], [4, 3, 5, 5]).double().train()
    f_s = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    f_t = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    filler = torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    student = Outputs([filler, f_s, filler, filler, filler.flatten(1)], torch.zeros(4, 10))
    teacher = Outputs([filler, f_t, filler, filler, filler.flatten(1)], torch.zeros(4, 10))
    loss = distiller.distill(student, teacher, Batch(torch.zeros(4, 3, 32, 32), torch.zeros(4)))["hint"]

    weight = distiller.regress_s.conv.weight.detach().numpy()[:, :, 0, 0]
    bias = distiller.regress_s.conv.bias.detach().numpy()
    conv = np.einsum("oc,bchw->bohw", weight, f_s.numpy()) + bias[None, :, None, None]
    expected = np.mean((bn_relu_reference(conv) - f_t.numpy()) ** 2)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_student_smaller_by_other_ratio_pools_the_teacher_hint():
    """SimKD's rule: a 3×3 conv (stride 1, pad 1) on the student, the teacher pooled to its size."""
    torch.manual_seed(2)
    distiller = build_distiller("hint", "resnet8", "resnet8", hint_layer=1)
    distiller.regress_s = ConvReg([3, 2, 3, 3], [3, 4, 8, 8]).double().train()
    f_s = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    f_t = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    filler = torch.zeros(3, 1, 1, 1, dtype=torch.float64)
    student = Outputs([filler, f_s, filler.flatten(1)], torch.zeros(3, 10))
    teacher = Outputs([filler, f_t, filler.flatten(1)], torch.zeros(3, 10))
    loss = distiller.distill(student, teacher, Batch(torch.zeros(3, 3, 32, 32), torch.zeros(3)))["hint"]

    weight = distiller.regress_s.conv.weight.detach().numpy()
    bias = distiller.regress_s.conv.bias.detach().numpy()
    padded = np.pad(f_s.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((3, 4, 3, 3))
    for b, o, h, w in np.ndindex(conv.shape):
        conv[b, o, h, w] = bias[o] + np.sum(weight[o] * padded[b, :, h:h + 3, w:w + 3])
    expected = np.mean((bn_relu_reference(conv) - adaptive_avg_pool_reference(f_t.numpy(), 3)) ** 2)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("key", ["rd_FitNet_down", "rd_FitNet_same", "rd_FitNet_up",
                                 "simkd_FitNet_same", "simkd_FitNet_small"])
def test_regressor_state_dict_matches_upstream(key):
    name, (s_shape, t_shape), _ = upstream_constructor(key)
    assert name == "ConvReg"
    assert state_shapes(ConvReg(s_shape, t_shape), "regress_s.") == upstream_state_shapes(key)


def test_distiller_state_dict_matches_upstream_regressor():
    """resnet8 → wrn_16_2 at feat[2] is ``ConvReg([B,32,16,16], [B,64,16,16])`` (rd_FitNet_same)."""
    distiller = build_distiller("fitnet", "resnet8", "wrn_16_2", hint_layer=2)
    assert state_shapes(distiller.regress_s, "regress_s.") == upstream_state_shapes("rd_FitNet_same")
    assert set(distiller.trainable_state_dict()) == set(upstream_state_shapes("rd_FitNet_same"))


def test_registered_names_and_single_stage():
    assert distiller_zoo.get("hint") is FitNet and distiller_zoo.get("fitnet") is FitNet
    assert build_distiller("hint", "resnet8", "resnet8").init_stage is None


def test_hint_layer_that_is_not_a_map_is_a_usage_error():
    for layer in (4, 7, -1):
        with pytest.raises(UsageError, match="--hint_layer"):
            build_distiller("hint", "resnet8", "resnet8", hint_layer=layer)


@pytest.mark.parametrize(("model_s", "model_t", "hint_layer"),
                         [("resnet8", "resnet8x4", 2), ("vgg8", "resnet20", 1), ("resnet8", "vgg8", 1)])
def test_training_step(model_s, model_t, hint_layer):
    distiller = build_distiller("hint", model_s, model_t, hint_layer=hint_layer)
    check_training_step(distiller, (distiller.regress_s,))
