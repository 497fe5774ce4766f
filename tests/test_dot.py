"""DOT (Zhao et al., ICCV 2023), ``--optimizer dot``: two momentum buffers driven by the term names.

The task buffer accumulates the gradient of the ``cls`` terms at momentum ``μ − Δ``, the
distillation buffer that of every other term at ``μ + Δ``; a parameter reached by one loss only
uses ``μ``. Checked by hand on a two-step example, against SGD where DOT must reduce to it,
end to end with kd, crd and mlkd, through an exact resume, and under a 2-process DDP group.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from errors import UsageError
from helper.loops import StepConfig, dot_backward_and_step, split_weighted_loss, train_one_epoch, weighted_loss
from helper.optim import DistillationOrientedTrainer, is_task_term, make_optimizer, make_sgd
from tests.conftest import run_main

MU, DELTA, LR, WD = 0.9, 0.075, 0.1, 0.01


class ThreeParameters(nn.Module):
    """``w`` is reached by both losses, ``c`` by the task loss only, ``e`` by the distillation loss only.

    cls = a·w + b·c, kd = ½‖w‖² + e², own = 3e: gradients γa, γb (task) and αw, 2αe + 3β (distillation).
    """

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.c = nn.Parameter(torch.tensor([1.0]))
        self.e = nn.Parameter(torch.tensor([1.0]))

    def forward(self, batch=None):
        a, b = torch.tensor([1.0, -2.0]), torch.tensor([3.0])
        terms = {"cls": (a * self.w).sum() + (b * self.c).sum(), "kd": 0.5 * (self.w**2).sum() + (self.e**2).sum(),
                 "own": 3.0 * self.e.sum()}
        return self.w, terms


WEIGHTS = {"cls": 0.5, "kd": 2.0, "own": 1.0}


def hand_computed_two_steps():
    """Two DOT steps of :class:`ThreeParameters` by the update rule, with plain floats."""
    mu_task, mu_kd = MU - DELTA, MU + DELTA
    mu_one = (mu_task + mu_kd) / 2
    gamma, alpha, beta = WEIGHTS["cls"], WEIGHTS["kd"], WEIGHTS["own"]
    w, c, e = [1.0, 2.0], 1.0, 1.0
    m_w_task = m_w_kd = m_c = m_e = None
    history = []
    for _ in range(2):
        g_w = [gamma * 1.0, gamma * -2.0]
        h_w = [alpha * v for v in w]
        g_c, h_e = gamma * 3.0, alpha * 2 * e + beta * 3.0
        step_w = [g + WD * v for g, v in zip(g_w, w)]
        m_w_task = step_w if m_w_task is None else [mu_task * m + s for m, s in zip(m_w_task, step_w)]
        m_w_kd = h_w if m_w_kd is None else [mu_kd * m + h for m, h in zip(m_w_kd, h_w)]
        m_c = g_c + WD * c if m_c is None else mu_one * m_c + g_c + WD * c
        m_e = h_e if m_e is None else mu_one * m_e + h_e + WD * e  # no weight decay on the very first step
        w = [v - LR * (mt + mk) for v, mt, mk in zip(w, m_w_task, m_w_kd)]
        c, e = c - LR * m_c, e - LR * m_e
        history.append({"w": w, "c": [c], "e": [e], "w_task": m_w_task, "w_kd": m_w_kd, "c_task": [m_c],
                        "e_kd": [m_e]})
    return history


def dot_optimizer(module: nn.Module, delta: float = DELTA, weight_decay: float = WD) -> DistillationOrientedTrainer:
    optimizer = make_optimizer("dot", list(module.parameters()), LR, MU, weight_decay, delta)
    assert isinstance(optimizer, DistillationOrientedTrainer)
    return optimizer


def test_two_steps_by_hand_update_each_buffer_from_its_own_terms():
    module = ThreeParameters()
    optimizer = dot_optimizer(module)
    group = optimizer.param_groups[0]
    assert group["momentum"] == pytest.approx(0.825) and group["momentum_kd"] == pytest.approx(0.975)
    for expected in hand_computed_two_steps():
        _, terms = module()
        loss = dot_backward_and_step(terms, WEIGHTS, optimizer, module)
        assert float(loss) == pytest.approx(float(weighted_loss({k: v.detach() for k, v in terms.items()}, WEIGHTS)))
        state = optimizer.state
        for name in ("w", "c", "e"):
            torch.testing.assert_close(getattr(module, name).detach(), torch.tensor(expected[name]), msg=name)
        torch.testing.assert_close(state[module.w]["momentum_buffer"], torch.tensor(expected["w_task"]))
        torch.testing.assert_close(state[module.w]["momentum_kd_buffer"], torch.tensor(expected["w_kd"]))
        torch.testing.assert_close(state[module.c]["momentum_buffer"], torch.tensor(expected["c_task"]))
        torch.testing.assert_close(state[module.e]["momentum_kd_buffer"], torch.tensor(expected["e_kd"]))
        assert "momentum_kd_buffer" not in state[module.c] and "momentum_buffer" not in state[module.e]


def test_mdistillers_two_call_protocol_gives_the_same_step():
    """``loss_kd.backward(retain_graph); step_kd(); zero_grad; loss_task.backward(); step()``: ported code's calls."""
    module, twin = ThreeParameters(), ThreeParameters()
    optimizer, twin_optimizer = dot_optimizer(module), dot_optimizer(twin)
    for _ in range(2):
        _, terms = module()
        dot_backward_and_step(terms, WEIGHTS, optimizer, module)
        _, terms = twin()
        loss_task, loss_kd = split_weighted_loss(terms, WEIGHTS)
        twin_optimizer.zero_grad(set_to_none=True)
        loss_kd.backward(retain_graph=True)
        twin_optimizer.step_kd()
        twin_optimizer.zero_grad(set_to_none=True)
        loss_task.backward()
        twin_optimizer.step()
    for a, b in zip(module.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_state_dict_carries_both_buffers_and_restores_exactly():
    module = ThreeParameters()
    optimizer = dot_optimizer(module)
    _, terms = module()
    dot_backward_and_step(terms, WEIGHTS, optimizer, module)
    saved, restored_module = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(module)  # as a checkpoint holds it
    assert {key for slot in saved["state"].values() for key in slot} == {"momentum_buffer", "momentum_kd_buffer"}
    restored = dot_optimizer(restored_module)
    restored.load_state_dict(saved)
    for net, opt in ((module, optimizer), (restored_module, restored)):
        _, terms = net()
        dot_backward_and_step(terms, WEIGHTS, opt, net)
    for a, b in zip(module.parameters(), restored_module.parameters()):
        assert torch.equal(a, b)


class Tiny(nn.Module):
    """A linear student and a linear projector, trained on CE (``cls``) and a regression term (``kd``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student, self.projector = nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, batch: Batch):
        logits = self.student(batch.images)
        target = batch.images[:, :3]
        return logits, {"cls": F.cross_entropy(logits, batch.targets),
                        "kd": F.mse_loss(self.projector(logits), target)}


def tiny_batches(count: int = 3, size: int = 8) -> list[Batch]:
    generator = torch.Generator().manual_seed(1)
    return [Batch(torch.randn(size, 6, generator=generator), torch.randint(0, 4, (size,), generator=generator))
            for _ in range(count)]


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]) -> None:
    train_one_epoch(model, {"cls": 1.0, "kd": 0.5}, batches, optimizer, StepConfig(torch.device("cpu"), print_freq=1000,
                                                                                 is_main=False), 1)


def test_sgd_step_is_still_one_backward_of_the_weighted_sum_bit_for_bit():
    model, manual = Tiny(), Tiny()
    optimizer, manual_optimizer = make_optimizer("sgd", list(model.parameters()), LR, MU, WD), make_sgd(
        list(manual.parameters()), LR, MU, WD)
    assert type(optimizer) is torch.optim.SGD
    batches = tiny_batches()
    run_epoch(model, optimizer, batches)
    for batch in batches:
        _, terms = manual(batch)
        loss = weighted_loss(terms, {"cls": 1.0, "kd": 0.5})
        manual_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        manual_optimizer.step()
    for a, b in zip(model.parameters(), manual.parameters()):
        assert torch.equal(a, b)


def test_dot_with_no_offset_and_no_weight_decay_is_sgd():
    """Δ = 0: both buffers use μ and their sum is SGD's buffer of the summed gradient."""
    dot_model, sgd_model = Tiny(), Tiny()
    run_epoch(dot_model, dot_optimizer(dot_model, delta=0.0, weight_decay=0.0), tiny_batches())
    run_epoch(sgd_model, make_sgd(list(sgd_model.parameters()), LR, MU, 0.0), tiny_batches())
    for a, b in zip(dot_model.parameters(), sgd_model.parameters()):
        torch.testing.assert_close(a, b)
    changed = Tiny()
    run_epoch(changed, dot_optimizer(changed), tiny_batches())
    assert not torch.allclose(changed.student.weight, sgd_model.student.weight, atol=1e-4)


def test_term_names_decide_task_and_distillation():
    assert [name for name in ("cls", "cls_strong", "kd", "crd", "mlkd_kd", "class") if is_task_term(name)] == [
        "cls", "cls_strong"]
    task, distillation = split_weighted_loss({"cls": torch.tensor(2.0), "cls_strong": torch.tensor(1.0),
                                              "kd": torch.tensor(3.0)}, {"cls": 0.5, "cls_strong": 0.5, "kd": 2.0})
    assert float(task) == 1.5 and float(distillation) == 6.0
    assert split_weighted_loss({"cls": torch.tensor(1.0)}, {"cls": 1.0})[1] is None


@pytest.mark.parametrize(("momentum", "amp", "message"), [(0.95, None, "in \\[0, 1\\)"), (0.05, None, "in \\[0, 1\\)"),
                                                          (0.9, "fp16", "--amp fp16")])
def test_settings_dot_cannot_run_are_usage_errors(momentum, amp, message):
    with pytest.raises(UsageError, match=message):
        make_optimizer("dot", list(Tiny().parameters()), LR, momentum, WD, DELTA, amp)


# --- under DDP: two backward passes, each gradient averaged over the processes --------------------


def _ddp_rank(rank: int, init_file: str, results: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = DistributedDataParallel(Tiny(), find_unused_parameters=True)
        optimizer = dot_optimizer(model.module)
        shards = [Batch(b.images[rank::2], b.targets[rank::2]) for b in tiny_batches()]
        run_epoch(model, optimizer, shards)
        results[rank] = [p.detach().clone() for p in model.module.parameters()]
    finally:
        dist.destroy_process_group()


def test_dot_under_ddp_averages_each_gradient_like_one_process_on_the_whole_batch(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_ddp_rank, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    single = Tiny()
    run_epoch(single, dot_optimizer(single), tiny_batches())
    for rank in (0, 1):
        for got, expected in zip(results[rank], single.parameters()):
            torch.testing.assert_close(got, expected.detach())


# --- end to end ------------------------------------------------------------------------------------


def student_args(method: str, cifar: str, teacher: str, save, *extra: str) -> list[str]:
    return ["--path_t", str(teacher), "--model_s", "resnet8", "--distill", method, "--data_root", str(cifar),
            "--save_dir", str(save), "--num_workers", "0", "--batch_size", "32", "--nce_k", "32",
            "--optimizer", "dot", *extra]


def last_checkpoint(save) -> dict:
    (path,) = save.glob("students/models/*/*_last.pth")
    return torch.load(path, map_location="cpu", weights_only=True)


def optimizer_state_kinds(checkpoint: dict) -> list[set[str]]:
    """The buffer names each parameter's optimiser state holds."""
    return [set(slot) for slot in checkpoint["optimizer"]["state"].values()]


@pytest.mark.parametrize("method", ["kd", "mlkd"])
def test_one_epoch_with_dot(method, cifar100_root, cifar100_teacher, tmp_path):
    assert run_main("student", student_args(method, cifar100_root, cifar100_teacher, tmp_path, "--epochs", "1"))[0] == 0
    assert {"momentum_buffer", "momentum_kd_buffer"} in optimizer_state_kinds(last_checkpoint(tmp_path))


def test_crd_with_dot_resumes_exactly_and_refuses_to_resume_with_sgd(cifar100_root, cifar100_teacher, tmp_path,
                                                                    capsys):
    """crd: one epoch, then a second one resumed, equals two straight epochs, optimiser buffers included;
    the DOT run's checkpoint does not resume a run with plain SGD."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def run(save, epochs: str, *extra: str) -> tuple[int, str]:
        args = student_args("crd", cifar100_root, cifar100_teacher, save, "--epochs", epochs, "--deterministic",
                            "--lr_decay_epochs", "1", *extra)
        return run_main("student", args, capsys)

    assert run(straight, "2")[0] == 0
    assert run(resumed, "1")[0] == 0
    (dot_latest,) = resumed.glob("students/models/*/latest.pth")
    assert "_crd+dot_" in dot_latest.parent.name  # DOT runs have folders of their own
    status, err = run(resumed, "2", "--resume", str(dot_latest), "--optimizer", "sgd")
    assert status == 2 and f"belongs to run {dot_latest.parent.name}" in err
    assert run(resumed, "2", "--resume", "auto")[0] == 0
    a, b = last_checkpoint(straight), last_checkpoint(resumed)
    for part in ("model", "distiller"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for slot, twin in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert slot.keys() == twin.keys()
        for key in slot:
            assert torch.equal(slot[key], twin[key])
    kinds = optimizer_state_kinds(a)
    assert {"momentum_buffer", "momentum_kd_buffer"} in kinds  # the student: both losses reach it
    assert {"momentum_kd_buffer"} in kinds  # CRD's embeddings: the distillation loss alone
    assert a["args"]["optimizer"] == "dot"
