"""Checks every single-stage feature method's Distiller must pass, shared by their test files.

``build_distiller`` builds a method around small real CIFAR networks (10 classes);
``check_training_step`` runs one forward/backward and verifies who gets gradients;
``adaptive_avg_pool_reference`` is the spatial alignment of METHODS.md §0.3 written with loops.
"""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import torch
from torch import nn

import models
from dataset.batch import Batch
from distiller_zoo import Distiller
from tests.conftest import build_from_options, make_opt


def build_with_options(distill: str, model_s: str, model_t: str, **overrides) -> tuple[Distiller, Namespace]:
    """``distill`` around fresh ``model_s`` / ``model_t`` networks (β = 1, α = 0 unless overridden), and its options."""
    opt = make_opt(**{"distill": distill, "model_s": model_s, "model_t": model_t, "beta": 1.0, "alpha": 0.0,
                      **overrides})
    student = models.model_dict[model_s](num_classes=10)
    teacher = models.model_dict[model_t](num_classes=10)
    return build_from_options(opt, student, teacher), opt


def build_distiller(distill: str, model_s: str, model_t: str, **overrides) -> Distiller:
    """``distill`` around fresh ``model_s`` / ``model_t`` networks, with β = 1 and α = 0."""
    return build_with_options(distill, model_s, model_t, **overrides)[0]


def parameter_ids(parameters) -> set[int]:
    """Identities of parameters, to compare parameter sets."""
    return {id(p) for p in parameters}


def assert_gradients_reach_exactly(distiller: Distiller, parameters) -> None:
    """After a backward pass: every one of ``parameters`` has a finite gradient, no other parameter has one."""
    wanted = parameter_ids(parameters)
    for name, parameter in distiller.named_parameters():
        if id(parameter) in wanted:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        else:
            assert parameter.grad is None, name


def random_batch(batch_size: int = 4, image_size: int = 32) -> Batch:
    return Batch(torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, 10, (batch_size,)))


def check_training_step(
    distiller: Distiller, method_modules: tuple[nn.Module, ...] = (), batch_size: int = 4
) -> None:
    """One training step: finite terms; the method's own term alone reaches every parameter of
    ``method_modules`` and the student with finite gradients and never the teacher; the teacher
    stays in eval mode; ``main_parameters`` holds the student and the method's parts only."""
    torch.manual_seed(0)
    distiller.train()
    assert not distiller.teacher.training
    assert all(not module.training for module in distiller.teacher.modules())
    assert distiller.student.training

    logits, terms = distiller(random_batch(batch_size))
    assert logits.shape == (batch_size, 10)
    assert set(terms) == set(distiller.loss_weights) == {"cls", "kd", distiller.name}
    for name, term in terms.items():
        assert term.dim() == 0, name
        assert torch.isfinite(term), name

    terms[distiller.name].backward()
    method_parameters = [p for module in method_modules for p in module.parameters()]
    for parameter in method_parameters:
        assert parameter.grad is not None
        assert torch.isfinite(parameter.grad).all()
    student_grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert student_grads, "the method's term does not reach the student"
    assert all(torch.isfinite(g).all() for g in student_grads)
    assert any(g.abs().sum() > 0 for g in student_grads)
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())

    main = {id(p) for p in distiller.main_parameters()}
    assert {id(p) for p in method_parameters} <= main
    assert {id(p) for p in distiller.student.parameters()} <= main
    assert not main & {id(p) for p in distiller.teacher.parameters()}
    expected = {id(p) for p in distiller.student.parameters()} | {id(p) for p in method_parameters}
    assert main == expected


def adaptive_avg_pool_reference(x: np.ndarray, size: int) -> np.ndarray:
    """Adaptive average pooling of a numpy ``[B, C, H, W]`` array to ``size × size``, by loops.

    Bin ``i`` of an axis of length ``n`` covers ``floor(i·n/size) .. ceil((i+1)·n/size) − 1``.
    """
    batch, channels, height, width = x.shape
    out = np.zeros((batch, channels, size, size))
    for i in range(size):
        h0, h1 = (i * height) // size, -((-(i + 1) * height) // size)
        for j in range(size):
            w0, w1 = (j * width) // size, -((-(j + 1) * width) // size)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out
