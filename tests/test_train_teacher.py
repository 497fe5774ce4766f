"""train_teacher.py end to end: the run folder on every data set, checkpoints, resume."""

from __future__ import annotations

import json

import pytest
import torch

from models import model_dict
from tests.conftest import run_main
from tests.fakedata import write_cifar10, write_imagenet

FAST = ["--num_workers", "0", "--batch_size", "32", "--print_freq", "1000"]


def _run_folder(save, model, dataset, trial="0"):
    return save / "teachers" / "models" / f"{model}_vanilla_{dataset}_trial_{trial}"


@pytest.mark.parametrize("dataset", ["cifar100", "cifar10", "digits", "imagenet"])
def test_one_epoch_writes_the_documented_run_folder(dataset, tmp_path, cifar100_root):
    roots = {"cifar100": cifar100_root, "digits": tmp_path}
    if dataset == "cifar10":
        roots[dataset] = write_cifar10(tmp_path / "c10", n_train=100, n_test=40)
    if dataset == "imagenet":
        roots[dataset] = write_imagenet(tmp_path / "inet", num_classes=3, per_class=4)
    model = "ResNet18" if dataset == "imagenet" else "resnet8"
    save = tmp_path / "save"
    status, _ = run_main("teacher", ["--model", model, "--dataset", dataset, "--data_root", str(roots[dataset]),
                                     "--epochs", "1", "--save_freq", "1", "--save_dir", str(save), *FAST])
    assert status == 0
    folder = _run_folder(save, model, dataset)
    for name in ("ckpt_epoch_1.pth", f"{model}_best.pth", f"{model}_last.pth", "latest.pth",
                 "metrics.jsonl", "summary.json"):
        assert (folder / name).is_file(), name
    assert any((save / "teachers" / "tensorboard" / folder.name).iterdir())

    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    assert {"train_loss", "train_acc1", "test_acc", "test_acc_top5", "test_loss", "lr"} <= set(records[0])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 1
    assert summary["last_acc"] == records[0]["test_acc"]
    assert summary["args"]["model"] == model

    checkpoint = torch.load(folder / f"{model}_last.pth", map_location="cpu", weights_only=True)
    assert checkpoint["arch"] == model
    num_classes = {"cifar100": 100, "cifar10": 10, "digits": 10, "imagenet": 3}[dataset]
    if dataset != "imagenet":
        assert checkpoint["num_classes"] == num_classes
    network = model_dict[model](num_classes=checkpoint["num_classes"])
    network.load_state_dict(checkpoint["model"], strict=True)


def _final_state(folder, model):
    return torch.load(folder / f"{model}_last.pth", map_location="cpu", weights_only=True)


def test_resume_continues_exactly_where_it_stopped(tmp_path, cifar100_root):
    common = ["--model", "resnet8", "--data_root", str(cifar100_root), "--deterministic",
              "--lr_decay_epochs", "1", *FAST]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_main("teacher", [*common, "--epochs", "2", "--save_dir", str(straight)])[0] == 0
    assert run_main("teacher", [*common, "--epochs", "1", "--save_dir", str(resumed)])[0] == 0
    assert run_main("teacher", [*common, "--epochs", "2", "--save_dir", str(resumed), "--resume", "auto"])[0] == 0

    a = _final_state(_run_folder(straight, "resnet8", "cifar100"), "resnet8")
    b = _final_state(_run_folder(resumed, "resnet8", "cifar100"), "resnet8")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert a["history"][-1]["test_acc"] == b["history"][-1]["test_acc"]
    assert a["history"][-1]["lr"] == pytest.approx(0.005)


def test_resume_auto_on_a_finished_run_does_nothing(tmp_path, cifar100_root, capsys):
    args = ["--model", "resnet8", "--data_root", str(cifar100_root), "--epochs", "1",
            "--save_dir", str(tmp_path), *FAST]
    assert run_main("teacher", args)[0] == 0
    metrics = _run_folder(tmp_path, "resnet8", "cifar100") / "metrics.jsonl"
    before = metrics.read_text()
    capsys.readouterr()
    assert run_main("teacher", [*args, "--resume", "auto"])[0] == 0
    assert "already finished" in capsys.readouterr().out
    assert metrics.read_text() == before
