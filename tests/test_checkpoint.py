"""Teacher files from every upstream code base: legacy format, folder-name inference, strict loading."""

from __future__ import annotations

import json

import pytest
import torch

from helper import checkpoint
from models import model_dict
from tests.conftest import run_main


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
