"""Checkpoints: teacher files from every upstream code base, what a checkpoint records, how it is written.

Teacher files: legacy format, every accepted layout, folder-name inference, strict loading, and
the records that refuse a wrong teacher. Writing: file permissions and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from errors import UsageError
from helper import checkpoint
from models import model_dict
from tests.conftest import run_main

REPO = Path(__file__).resolve().parents[1]


def _repdistiller_file(path, arch="resnet8", num_classes=100):
    """A PyTorch-0.4-era RepDistiller teacher: legacy (non-zip) format, no num_batches_tracked."""
    network = model_dict[arch](num_classes=num_classes)
    for module in network.modules():  # non-trivial statistics, so that a missed buffer shows in the logits
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state = network.state_dict()
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]
    for meta in state._metadata.values():
        meta["version"] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor([72.3]), "optimizer": {}}, path,
               _use_new_zipfile_serialization=False)
    return network.eval()


def test_released_repdistiller_teacher_loads_and_gives_the_same_logits(tmp_path):
    path = tmp_path / "models" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    original = _repdistiller_file(path)
    state = checkpoint.load_checkpoint(path)
    arch = checkpoint.teacher_arch(state, path, None)
    assert arch == "resnet8"
    loaded = model_dict[arch](num_classes=100)
    checkpoint.load_weights(loaded, checkpoint.model_state(state), path, arch)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), original(images), rtol=0, atol=0)


def test_repdistiller_teacher_drives_a_student_run(tmp_path, cifar100_root):
    path = tmp_path / "save" / "models" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    _repdistiller_file(path)
    status, _ = run_main("student", ["--path_t", str(path), "--model_s", "resnet8", "--data_root", str(cifar100_root),
                                     "--epochs", "1", "--num_workers", "0", "--save_dir", str(tmp_path / "out")])
    assert status == 0
    (summary,) = (tmp_path / "out").glob("students/models/S:resnet8_T:resnet8_*/summary.json")
    assert json.loads(summary.read_text())["args"]["model_t"] == "resnet8"


@pytest.mark.parametrize(("folder", "arch"), [
    ("resnet32x4_vanilla", "resnet32x4"),
    ("wrn_40_2_vanilla", "wrn_40_2"),
    ("ResNet50_vanilla", "ResNet50"),
    ("MobileNetV2_1_0_vanilla_cifar100_trial_0", "MobileNetV2_1_0"),
    ("ShuffleV2_1_5_vanilla", "ShuffleV2_1_5"),
    ("resnet8x4_vanilla_cifar100_trial_0", "resnet8x4"),
    ("S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1", "resnet8x4"),
    ("S~ShuffleV2_1_5_T~resnet32x4_cifar100_kd_r~1.0_a~1.0_b~0.0_0", "ShuffleV2_1_5"),
    ("mystery", None),
])
def test_architecture_from_the_folder_name(tmp_path, folder, arch):
    assert checkpoint.infer_arch_from_path(tmp_path / folder / "best.pth") == arch


def test_checkpoint_record_beats_the_folder_name(tmp_path):
    path = tmp_path / "resnet14_vanilla" / "x.pth"
    assert checkpoint.teacher_arch({"arch": "resnet8"}, path, None) == "resnet8"
    assert checkpoint.teacher_arch({}, path, None) == "resnet14"
    assert checkpoint.teacher_arch({}, path, "resnet20") == "resnet20"


# --- every accepted layout of a teacher file ------------------------------------------------------


def _network(arch: str = "resnet8", num_classes: int = 100) -> torch.nn.Module:
    """A network whose BatchNorm statistics are not the defaults, so that a missed buffer shows in the logits."""
    torch.manual_seed(0)
    network = model_dict[arch](num_classes=num_classes)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return network.eval()


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


LAYOUTS = {
    "repdistiller": lambda state: {"epoch": 240, "model": state},
    "torchvision plain state dict": lambda state: dict(state),
    "timm state_dict": lambda state: {"epoch": 300, "arch": "resnet8", "state_dict": dict(state)},
    "timm under DDP": lambda state: {"state_dict": _prefixed(state, "module.")},
    "lightning": lambda state: {"epoch": 3, "global_step": 10, "state_dict": _prefixed(state, "model."),
                                "hyper_parameters": {"lr": 0.1}},
    "hsakd net": lambda state: {"net": {**_prefixed(state, "backbone."),
                                        "auxiliary_classifier.weight": torch.zeros(3)}},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_accepted_layout_loads_to_the_same_logits(tmp_path, layout):
    original = _network()
    path = tmp_path / "resnet8_vanilla" / "teacher.pth"
    path.parent.mkdir()
    torch.save(LAYOUTS[layout](original.state_dict()), path)
    state = checkpoint.load_checkpoint(path)
    loaded = model_dict["resnet8"](num_classes=100)
    checkpoint.load_weights(loaded, checkpoint.model_state(state), path, "resnet8")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), original(images), rtol=0, atol=0)


def test_a_safetensors_teacher_loads_to_the_same_logits(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    original = _network()
    path = tmp_path / "resnet8_vanilla" / "model.safetensors"
    path.parent.mkdir()
    safetensors.save_file(original.state_dict(), path)
    loaded = model_dict["resnet8"](num_classes=100)
    checkpoint.load_weights(loaded, checkpoint.model_state(checkpoint.load_checkpoint(path)), path, "resnet8")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), original(images), rtol=0, atol=0)


def test_a_prefix_only_some_keys_carry_is_kept(tmp_path):
    state = {"model.weight": torch.ones(1), "head.weight": torch.zeros(1)}
    assert checkpoint.model_state({"state_dict": state}) == state


def test_a_dict_without_weights_names_every_accepted_layout(tmp_path):
    path = tmp_path / "resnet8_vanilla" / "weights.pth"
    path.parent.mkdir()
    torch.save({"weights": _network().state_dict(), "epoch": 1}, path)
    with pytest.raises(UsageError) as error:
        checkpoint.load_checkpoint(path)
    message = str(error.value)
    assert f"{path} is not a model checkpoint" in message
    assert all(layout in message for layout in checkpoint.WEIGHT_FORMATS)
    assert "\n" not in message


def test_a_folder_lists_the_checkpoints_it_holds(tmp_path):
    for name in ("ckpt_epoch_40.pth", "ckpt_epoch_80.pth", "notes.txt", "model.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.pth").mkdir()
    with pytest.raises(UsageError) as error:
        checkpoint.load_checkpoint(tmp_path)
    assert str(error.value) == (f"checkpoint {tmp_path} is a folder, not a file; it holds ckpt_epoch_40.pth, "
                                "ckpt_epoch_80.pth, model.safetensors: pass one of them")


def test_a_folder_of_many_checkpoints_lists_five_then_an_ellipsis(tmp_path):
    for epoch in range(1, 8):
        (tmp_path / f"ckpt_epoch_{epoch}.pth").write_bytes(b"x")
    with pytest.raises(UsageError) as error:
        checkpoint.load_checkpoint(tmp_path)
    listed = str(error.value).split("it holds ")[1].split(": pass")[0].split(", ")
    assert listed == [f"ckpt_epoch_{epoch}.pth" for epoch in range(1, 6)] + ["…"]


def test_a_folder_without_checkpoints_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="is a folder, and it holds no"):
        checkpoint.load_checkpoint(tmp_path)


# --- what a checkpoint records refuses a wrong teacher ---------------------------------------------


def _student_record(method: str | None = None, **extra) -> dict:
    record = {"model": {"fc.weight": torch.zeros(1)}, "arch": "resnet8", "num_classes": 100, "dataset": "cifar100"}
    if method is not None:
        record["method"] = method
    return {**record, **extra}


@pytest.mark.parametrize(("record", "problem"), [
    pytest.param(_student_record(dataset="digits"), "was trained on digits", id="another data set"),
    pytest.param(_student_record(args={"dataset": "cifar10"}, dataset=None), "was trained on cifar10",
                 id="another data set in the args"),
    pytest.param(_student_record("simkd"), "is a simkd student checkpoint", id="simkd student"),
    pytest.param(_student_record(args={"distill": "simkd", "dataset": "cifar100"}), "is a simkd student checkpoint",
                 id="simkd student by its args"),
    pytest.param({"model": {"fc.weight": torch.zeros(1)}, "proj": {"transfer.0.weight": torch.zeros(1)}},
                 "is a simkd student checkpoint", id="simkd's own student file"),
    pytest.param(_student_record(distiller={"simkd.transfer.0.weight": torch.zeros(1)}),
                 "is a simkd student checkpoint", id="older simkd student of ours"),
])
def test_a_wrong_teacher_is_refused_naming_the_problem(record, problem):
    with pytest.raises(UsageError) as error:
        checkpoint.check_teacher(record, "t.pth", "cifar100")
    assert problem in str(error.value) and "t.pth" in str(error.value)


@pytest.mark.parametrize("record", [
    pytest.param({"model": {"fc.weight": torch.zeros(1)}, "epoch": 240}, id="upstream teacher recording nothing"),
    pytest.param(_student_record(), id="our teacher"),
    pytest.param(_student_record("crd", distiller={"embed_s.linear.weight": torch.zeros(1)}), id="crd student"),
])
def test_a_plain_network_of_this_data_set_may_teach(record):
    assert checkpoint.check_teacher(record, "t.pth", "cifar100") is None


# --- resuming with other flags -----------------------------------------------------------------------

RECORDED = {"learning_rate": 0.05, "batch_size": 64, "feat_dim": 128, "distill": "crd", "lr_decay_epochs": [150, 180],
            "deterministic": True, "amp": None, "epochs": 240, "num_workers": 8, "data_root": "/data", "resume": None,
            "n_data": 50000}


def test_every_changed_flag_is_named_with_old_and_new_value():
    current = {**RECORDED, "learning_rate": 0.1, "batch_size": 128, "feat_dim": 64, "lr_decay_epochs": [100, 150],
               "deterministic": False, "amp": "bf16", "n_data": 45000}
    assert checkpoint.changed_run_flags(RECORDED, current) == [
        "--amp none → bf16", "--batch_size 64 → 128", "--deterministic on → off", "--feat_dim 128 → 64",
        "--learning_rate 0.05 → 0.1", "--lr_decay_epochs 150,180 → 100,150", "number of training images 50000 → 45000",
    ]


def test_where_how_fast_and_how_long_may_change_on_resume():
    current = {**RECORDED, "epochs": 300, "num_workers": 2, "data_root": "/scratch/data", "resume": "auto"}
    assert checkpoint.changed_run_flags(RECORDED, current) == []
    assert checkpoint.check_resume_flags(RECORDED, current, "latest.pth") is None


def test_flags_one_side_does_not_know_are_not_compared():
    assert checkpoint.changed_run_flags({"old_flag": 1, "batch_size": 64}, {"new_flag": 2, "batch_size": 64}) == []
    assert checkpoint.check_resume_flags(None, RECORDED, "latest.pth") is None


def test_a_resume_that_changes_the_run_is_one_usage_error():
    with pytest.raises(UsageError) as error:
        checkpoint.check_resume_flags(RECORDED, {**RECORDED, "batch_size": 32, "feat_dim": 256}, "save/latest.pth")
    assert str(error.value) == ("--resume save/latest.pth would change the run: --batch_size 64 → 32, "
                                "--feat_dim 128 → 256; resume with the run's own flags, or start a new run "
                                "with another --trial")


# --- writing: permissions and a full disk -----------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_checkpoint_gets_the_permissions_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        checkpoint.save_atomic({"epoch": 1}, tmp_path / "latest.pth")
        checkpoint.save_atomic({"epoch": 2}, tmp_path / "latest.pth")  # replacing keeps to the umask too
    finally:
        os.umask(previous)
    assert (tmp_path / "latest.pth").stat().st_mode & 0o777 == mode
    assert torch.load(tmp_path / "latest.pth", weights_only=True) == {"epoch": 2}


FULL_DISK = """
import resource, signal, sys
import torch
from helper.checkpoint import save_atomic

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_atomic({"weights": torch.zeros(100_000)}, sys.argv[1])
except OSError as error:
    print(error.errno)
    print(error)
"""


def test_a_file_size_limit_is_an_os_error_naming_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "latest.pth"
    checkpoint.save_atomic({"epoch": 1}, path)
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    code, message = result.stdout.splitlines()
    assert int(code) == errno.EFBIG
    assert message == f"[Errno {errno.EFBIG}] could not write checkpoint {path}: File too large"
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_a_runtime_error_from_the_writer_is_an_os_error(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"

    def failing(state, handle):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\nmore")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError) as error:
        checkpoint.save_atomic({"epoch": 1}, path)
    assert error.value.errno == errno.EIO
    assert str(error.value).endswith(f"could not write checkpoint {path}: [enforce fail at inline_container.cc:672]"
                                     " . unexpected pos 704 vs 598")
    assert list(tmp_path.iterdir()) == []
