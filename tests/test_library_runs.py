"""Library networks end to end: students of a zoo teacher on CIFAR-100, a timm teacher on digits, the
ImageNet protocol's torchvision-format ResNet34 teacher, and the protocol's launcher."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision

from helper.options import parse_student_args
from helper.teacher import read_teacher
from models.spec import spec_component
from tests.conftest import run_main
from tests.fakedata import write_imagenet

REPO = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--num_workers", "0", "--batch_size", "32", "--print_freq", "1000"]
VIT = "timm:vit_tiny_patch16_224"
VIT_ARGS = "patch_size=4,depth=2,embed_dim=64,num_heads=2"
STUDENTS = {"timm_cnn": ("timm:resnet10t", None), "timm_vit": (VIT, VIT_ARGS),
            "torchvision": ("torchvision:resnet18", None)}
METHODS = {"kd": [], "crd": ["--nce_k", "64"], "fitnet": [], "dkd": []}
CANONICAL = {"fitnet": "hint"}


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def _finished(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 1
    return summary


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_library_students_of_a_zoo_teacher_on_cifar100(student, method, tmp_path, cifar100_root, cifar100_teacher):
    name, args = STUDENTS[student]
    argv = ["--path_t", str(cifar100_teacher), "--model_s", name, "--distill", method, "--data_root",
            str(cifar100_root), "--save_dir", str(tmp_path), "--skip_validation", *FAST, *METHODS[method]]
    status, _ = run_main("student", argv + (["--model_s_args", args] if args else []))
    assert status == 0
    spec = name if args is None else f"{name}@{','.join(sorted(args.split(',')))}"
    (folder,) = (tmp_path / "students" / "models").iterdir()
    assert folder.name.startswith(f"S:{spec_component(spec)}_T:resnet8_cifar100_{CANONICAL.get(method, method)}_r:")
    _finished(folder)
    checkpoint = torch.load(folder / f"{spec_component(spec)}_last.pth", map_location="cpu", weights_only=True)
    assert (checkpoint["arch"], checkpoint["teacher_arch"]) == (spec, "resnet8")
    assert all(key.startswith("model.") for key in checkpoint["model"])


def test_a_library_student_teaches_with_its_checkpoint_alone(tmp_path, cifar100_root, cifar100_teacher):
    """The checkpoint records the ViT's name and arguments: --path_t suffices to rebuild it as a teacher."""
    common = ["--data_root", str(cifar100_root), "--save_dir", str(tmp_path), *FAST]
    status, _ = run_main("student", ["--path_t", str(cifar100_teacher), "--model_s", VIT, "--model_s_args", VIT_ARGS,
                                     "--distill", "kd", "--skip_validation", *common])
    assert status == 0
    (folder,) = (tmp_path / "students" / "models").iterdir()
    spec = f"{VIT}@depth=2,embed_dim=64,num_heads=2,patch_size=4"
    vit_teacher = folder / f"{spec_component(spec)}_last.pth"
    assert read_teacher(vit_teacher, None, "cifar100").arch == spec
    status, _ = run_main("student", ["--path_t", str(vit_teacher), "--model_s", "resnet8", "--distill", "attention",
                                     *common])
    assert status == 0
    student_folder = tmp_path / "students" / "models" / \
        f"S:resnet8_T:{spec_component(spec)}_cifar100_attention_r:1.0_a:0.0_b:1000.0_0"
    assert _finished(student_folder)["teacher_acc"] is not None


def test_a_method_that_needs_taps_a_library_cnn_lacks_exits_2_in_one_line(tmp_path, cifar100_root, cifar100_teacher,
                                                                          capsys):
    status, err = run_main("student", ["--path_t", str(cifar100_teacher), "--model_s", "timm:resnet10t",
                                       "--distill", "ab", "--data_root", str(cifar100_root), "--save_dir",
                                       str(tmp_path), *FAST], capsys)
    assert status == 2
    assert err.strip().splitlines() == [
        "error: timm:resnet10t has no pre-activation taps: its stages end in an activation inside the library's "
        "blocks, and this method reads the values before it (preact); use a zoo network or a vision transformer "
        "on that side"]
    assert not (tmp_path / "students" / "models").exists() or not any((tmp_path / "students" / "models").iterdir())


def test_train_teacher_trains_a_timm_network_on_digits(tmp_path):
    """One epoch on a fifth of the training digits (the rest held out), to keep the test short."""
    status, _ = run_main("teacher", ["--model", "timm:resnet18", "--dataset", "digits", "--save_dir", str(tmp_path),
                                     "--val_split", "0.8", *FAST, "--batch_size", "128"])
    assert status == 0
    folder = tmp_path / "teachers" / "models" / "timm-resnet18_vanilla_digits_trial_0"
    summary = _finished(folder)
    assert summary["args"]["model"] == "timm:resnet18" and 0 <= summary["best_val_acc"] <= 100
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_loss"] > 0 and record["test_loss"] > 0
    teacher = read_teacher(folder / "timm-resnet18_last.pth", None, "digits")
    assert teacher.arch == "timm:resnet18"


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=3, per_class=2)


@pytest.fixture(scope="module")
def torchvision_resnet34_file(tmp_path_factory) -> Path:
    """torchvision's format and file name, random weights: a plain state dict in resnet34-<hash>.pth."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hub") / "resnet34-b627a593.pth"
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), path)
    return path


@pytest.mark.parametrize("method, extra", [("kd", ["--skip_validation"]),
                                           ("crd", ["--nce_k", "3", "--skip_validation"]), ("at", [])])
def test_a_torchvision_resnet34_file_teaches_the_zoos_resnet18_on_imagenet(method, extra, tmp_path, imagenet_root,
                                                                           torchvision_resnet34_file):
    status, _ = run_main("student", ["--path_t", str(torchvision_resnet34_file), "--model_s", "ResNet18",
                                     "--dataset", "imagenet", "--data_root", str(imagenet_root), "--distill", method,
                                     "--save_dir", str(tmp_path), "--epochs", "1", "--num_workers", "0",
                                     "--batch_size", "6", "--print_freq", "1000", *extra])
    assert status == 0
    (folder,) = (tmp_path / "students" / "models").iterdir()
    assert folder.name.startswith("S:ResNet18_T:ResNet34_imagenet_")
    assert (_finished(folder)["teacher_acc"] is None) == ("--skip_validation" in extra)


def test_the_torchvision_protocol_launches_the_standard_pair_and_recipe(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "PROTOCOL": "torchvision", "NPROC": "4", "TEACHER_WEIGHTS": "/w/resnet34.pth"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_imagenet_distill.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    options = [parse_student_args(words[words.index(str(REPO / "train_student.py")) + 1:]) for words in commands]
    assert [opt.distill for opt in options] == ["kd", "crd", "reviewkd", "dkd", "dist"]
    for opt in options:
        recipe = (opt.path_t, opt.model_t, opt.model_s, opt.dataset, opt.epochs, opt.batch_size * 4, opt.learning_rate,
                  opt.lr_decay_epochs, opt.weight_decay, opt.dali)
        assert recipe == ("/w/resnet34.pth", "ResNet34", "ResNet18", "imagenet", 100, 256, 0.1, [30, 60, 90], 1e-4,
                          "gpu")
    kd, _, reviewkd, dkd, dist = options
    assert (kd.gamma, kd.alpha, kd.kd_T) == (0.5, 0.5, 1.0)
    assert (reviewkd.beta, reviewkd.reviewkd_warmup, reviewkd.reviewkd_student_taps) == (1.0, 0, "preact")
    assert (dkd.dkd_alpha, dkd.dkd_beta, dkd.kd_T, dkd.dkd_warmup) == (0.5, 0.5, 1.0, 1)
    assert (dist.beta, dist.dist_tau) == (1.0, 1.0)
    torchvision_loader = subprocess.run(["bash", str(REPO / "scripts" / "run_imagenet_distill.sh")],
                                        env={**env, "DALI": "none", "METHODS": "kd"}, capture_output=True, text=True,
                                        timeout=60)
    assert "--dali" not in torchvision_loader.stdout and "--epochs 100" in torchvision_loader.stdout
