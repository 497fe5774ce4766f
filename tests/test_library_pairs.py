"""Every registered method on a CNN→ViT and a ViT→CNN pair: one training step, or a one-line refusal.

The methods are read from the registry, so a method added later is enumerated too. The ViT is a
timm ViT at 32×32 (4×4 patches, 4 blocks, 3 of them tapped, so that its levels match
resnet8x4's); the CNNs are a zoo network (CNN→ViT teacher) and a timm one (ViT→CNN student).
Where a method cannot pair the two, it must say why in one line (:data:`REFUSALS`); every other
method must train.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import distiller_zoo
from dataset.batch import Batch
from errors import UsageError
from models import build_model
from tests.conftest import build_from_options, make_opt

VIT = "timm:vit_tiny_patch16_224@depth=4,embed_dim=64,num_heads=2,patch_size=4,taps=3"
PAIRS = {"cnn_to_vit": ("resnet8x4", VIT), "vit_to_cnn": (VIT, "timm:resnet10t")}  # teacher, student
BATCH, NUM_CLASSES, NUM_TRAIN = 4, 10, 16
SMALL = {"nce_k": 8, "init_epochs": 1}

# (method, pair) -> what its one-line refusal names.
NO_PREACT = "has no pre-activation taps"
REFUSALS = {
    **{("ega", pair): "widths must agree" for pair in PAIRS},
    **{("fsp", pair): "equal channel counts" for pair in PAIRS},
    **{("kdsvd", pair): "equal channel counts" for pair in PAIRS},
    **{(method, "vit_to_cnn"): NO_PREACT for method in ("abound", "itrd", "ofd", "reviewkd")},
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _network(spec: str) -> nn.Module:
    """A fresh network whose BN statistics are those of its inputs, as after training, so that no
    embedding channel is zero for a whole batch (ITRD divides by its batch std, with no epsilon)."""
    network = build_model(spec, NUM_CLASSES, 32)
    batch_norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = 1.0
        nn.init.constant_(bn.bias, 0.5)
    with torch.no_grad():
        network.train()(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    for bn in batch_norms:
        bn.momentum = 0.1
    return network


def _batch(method: str, opt) -> Batch:
    needs = distiller_zoo.registry.data_needs(method, vars(opt))
    generator = torch.Generator().manual_seed(0)
    contrast = torch.randint(0, NUM_TRAIN, (BATCH, 1 + needs.contrast_k), generator=generator)
    return Batch(torch.randn(BATCH, 3, 32, 32, generator=generator),
                 torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator), torch.arange(BATCH),
                 contrast if needs.contrast_k else None,
                 torch.randn(BATCH, 3, 32, 32, generator=generator) if needs.strong_view else None)


def _step(distiller, batch: Batch, parameters) -> dict[str, torch.Tensor]:
    """One SGD step on the stage's weighted terms; returns the terms."""
    optimizer = torch.optim.SGD(parameters, lr=0.01)
    _, terms = distiller(batch)
    loss = sum(distiller.loss_weights[name] * term for name, term in terms.items())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return terms


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_every_method_trains_a_step_or_refuses_in_one_line(method, pair):
    teacher_spec, student_spec = PAIRS[pair]
    torch.manual_seed(0)
    opt = make_opt(distill=method, model_s=student_spec, model_t=teacher_spec, alpha=1.0, beta=1.0,
                   n_data=NUM_TRAIN, batch_size=BATCH)
    for flag, value in SMALL.items():
        setattr(opt, flag, value)
    student, teacher = _network(student_spec), _network(teacher_spec)
    try:
        distiller = build_from_options(opt, student, teacher)
    except UsageError as refusal:
        message = str(refusal)
        assert (method, pair) in REFUSALS, f"{method} refused {pair}: {message}"
        assert REFUSALS[method, pair] in message and "\n" not in message
        return
    assert (method, pair) not in REFUSALS, f"{method} was expected to refuse {pair}"
    distiller.train()
    before = [p.detach().clone() for p in student.parameters()]
    if distiller.init_stage is not None:
        distiller.set_stage("init")
        terms = _step(distiller, _batch(method, opt), distiller.init_parameters())
        assert all(torch.isfinite(term) for term in terms.values()), terms
        distiller.set_stage("main")
    terms = _step(distiller, _batch(method, opt), distiller.main_parameters())
    assert set(terms) == set(distiller.loss_weights)
    assert all(term.dim() == 0 and torch.isfinite(term) for term in terms.values()), terms
    assert any(not torch.equal(p, q) for p, q in zip(before, student.parameters())), "the student did not move"
    assert all(p.grad is None for p in teacher.parameters())
