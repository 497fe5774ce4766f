"""dataset/dali.py: the DALI ImageNet loader (``--dali cpu``), in process and in real runs.

DALI's CPU pipelines need no GPU; ``--dali gpu`` (mixed decoder, GPU resize and normalisation,
NCCL) must be checked on a GPU machine (docs/DISTRIBUTED.md has the command). Tests that need
DALI skip where it is not installed (it has wheels for x86-64 Linux only); the missing-DALI
error is simulated by making its import fail.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import Batch, DataNeeds
from dataset.imagenet import IMAGENET_MEAN, IMAGENET_STD
from errors import UsageError
from models import model_dict
from tests.conftest import run_main
from tests.fakedata import write_imagenet
from tests.test_dataset import CPU, all_batches, assert_same_batches, build, make_opt
from tests.torchrun_probe import REPO, load_ranks, run_probe

CLASSES, PER_CLASS = 3, 5
JPEG_TOLERANCE = 3  # grey levels a flat colour may move through JPEG and the resampling filters
END_TO_END = ["--dataset", "imagenet", "--model_s", "ResNet18", "--epochs", "1", "--batch_size", "4",
              "--num_workers", "1", "--nce_k", "32", "--print_freq", "1000"]
ON = {"cpu": ["--dali", "cpu", "--device", "cpu"], "gpu": ["--dali", "gpu", "--device", "cuda", "--sync_bn"]}


def flat_colour(index: int) -> tuple[int, int, int]:
    """A colour per image whose red level (30, 42, 54, ...) names the image."""
    return 30 + 12 * index, 90 + 40 * (index % 3), 200 - 10 * index


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory) -> Path:
    """ImageNet layout whose images are flat colours: any crop, flip or resize keeps the colour,
    so each output image says which file it came from."""
    root = tmp_path_factory.mktemp("flat_imagenet")
    for split in ("train", "val"):
        for index in range(CLASSES * PER_CLASS):
            folder = root / split / f"n{index // PER_CLASS:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.full((36, 44, 3), flat_colour(index), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:03d}.JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def textured_root(tmp_path_factory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=3, per_class=4, size=(40, 56))


def dali_opt(root: Path, **changes):
    return make_opt(root, **{"dataset": "imagenet", "dali": "cpu", "batch_size": 4, **changes})


def pixel_levels(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images back to 0-255 levels (per image and channel: the mean)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).mul(255).mean(dim=(2, 3))


# --- batches --------------------------------------------------------------------------------------


MODES = [pytest.param("cpu", id="cpu"),
         pytest.param("gpu", id="gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def device_for(mode: str) -> torch.device:
    return torch.device("cuda") if mode == "gpu" else CPU


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_has_the_common_type_shapes_normalisation_and_true_indices(flat_root, mode):
    pytest.importorskip("nvidia.dali")
    bundle = build(dali_opt(flat_root, dali=mode), DataNeeds(indices=True, contrast_k=4), device_for(mode))
    assert (bundle.num_train, bundle.num_classes, bundle.image_size) == (CLASSES * PER_CLASS, CLASSES, 224)
    for loader, training in ((bundle.train, True), (bundle.test, False)):
        batches = all_batches(loader, epoch=1)
        assert len(loader) == len(batches) == 4 and [len(b) for b in batches] == [4, 4, 4, 3]
        seen = []
        for batch in batches:
            assert isinstance(batch, Batch)
            assert batch.images.shape == (len(batch), 3, 224, 224) and batch.images.dtype == torch.float32
            assert batch.targets.dtype == batch.indices.dtype == torch.int64
            assert torch.equal(batch.targets, batch.indices // PER_CLASS)
            assert batch.images.device.type == device_for(mode).type
            images = batch.images.cpu()
            expected = torch.tensor([flat_colour(i) for i in batch.indices.tolist()], dtype=torch.float32)
            assert (pixel_levels(images) - expected).abs().max() <= JPEG_TOLERANCE
            assert float(images.std(dim=(2, 3)).max()) < 0.05  # flat: normalised, not cropped into borders
            if training:
                assert batch.contrast_indices.shape == (len(batch), 5)
                assert torch.equal(batch.contrast_indices[:, 0], batch.indices)
            else:
                assert batch.contrast_indices is None
            seen += batch.indices.tolist()
        assert sorted(seen) == list(range(CLASSES * PER_CLASS))


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_images_match_the_torchvision_pipeline(textured_root, mode):
    """Decode → shorter side 256 → centre crop 224 → normalise: DALI's triangular filter against
    torchvision's bilinear one differ by a fraction of a grey level on average."""
    pytest.importorskip("nvidia.dali")
    dali = build(dali_opt(textured_root, batch_size=5, dali=mode), DataNeeds(), device_for(mode))
    reference = build(make_opt(textured_root, dataset="imagenet", batch_size=5), DataNeeds(), CPU)
    for mine, theirs in zip(all_batches(dali.test), all_batches(reference.test), strict=True):
        assert torch.equal(mine.indices, theirs.indices) and torch.equal(mine.targets, theirs.targets)
        difference = (mine.images.cpu() - theirs.images).abs()
        assert float(difference.mean()) < 0.02 and float(difference.max()) < 0.2


def test_ranks_get_the_shards_of_the_shared_rule_and_drop_last_is_honoured(textured_root):
    pytest.importorskip("nvidia.dali")
    for rank in (0, 1):
        dali = build(dali_opt(textured_root, batch_size=4), DataNeeds(), CPU, rank=rank, world_size=2)
        reference = build(make_opt(textured_root, dataset="imagenet", batch_size=4), DataNeeds(), CPU,
                          rank=rank, world_size=2)
        for epoch in (1, 2):
            mine, theirs = all_batches(dali.train, epoch), all_batches(reference.train, epoch)
            assert [b.indices.tolist() for b in mine] == [b.indices.tolist() for b in theirs]
        assert [len(b) for b in mine] == [4, 2]
    dropped = build(dali_opt(textured_root, batch_size=5), DataNeeds(drop_last=True), CPU)
    assert len(dropped.train) == 2 and [len(b) for b in all_batches(dropped.train)] == [5, 5]


def test_an_epoch_depends_only_on_seed_epoch_and_rank(textured_root):
    pytest.importorskip("nvidia.dali")
    needs = DataNeeds(indices=True, contrast_k=3)
    first = build(dali_opt(textured_root, num_workers=1), needs, CPU)
    epoch_2 = all_batches(first.train, 2)
    all_batches(first.train, 3)
    resumed = build(dali_opt(textured_root, num_workers=2), needs, CPU)  # other thread count, no history
    assert_same_batches(all_batches(resumed.train, 2), epoch_2)
    assert_same_batches(all_batches(first.train, 2), epoch_2)
    other_epoch = all_batches(first.train, 3)
    assert not torch.equal(other_epoch[0].images, epoch_2[0].images)


def test_dali_gpu_on_a_cpu_run_is_a_usage_error(textured_root):
    pytest.importorskip("nvidia.dali")
    with pytest.raises(UsageError, match="--dali cpu"):
        build(dali_opt(textured_root, dali="gpu"), DataNeeds(), CPU)


# --- without DALI ---------------------------------------------------------------------------------


def test_missing_dali_is_one_line_saying_how_to_install_it(textured_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now fails
    args = ["--model", "ResNet18", "--dataset", "imagenet", "--dali", "cpu", "--data_root", str(textured_root),
            "--epochs", "1", "--save_dir", str(tmp_path)]
    status, err = run_main("teacher", args, capsys)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "pip install nvidia-dali" in err
    assert not (tmp_path / "teachers").exists()


def test_everything_else_imports_without_dali():
    code = ("import sys; sys.modules['nvidia.dali'] = None; "
            "import dataset, helper.driver, train_student, train_teacher; "
            "assert 'nvidia.dali.plugin.pytorch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- whole runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_teacher(textured_root, tmp_path_factory) -> Path:
    """An untrained ResNet18 teacher file for the 3 class folders (training one would only cost time)."""
    folder = tmp_path_factory.mktemp("teacher") / "ResNet18_vanilla_imagenet_trial_0"
    folder.mkdir()
    network = model_dict["ResNet18"](num_classes=3)
    torch.save({"model": network.state_dict(), "arch": "ResNet18", "num_classes": 3}, folder / "ResNet18_best.pth")
    return folder / "ResNet18_best.pth"


def check_run_folder(save: Path, method: str) -> None:
    (folder,) = (save / "students" / "models").iterdir()
    assert f"_{method}_" in folder.name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] and summary["teacher_acc"] is not None
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train_loss", f"train_{method}", "test_acc", "test_loss"):
        assert math.isfinite(record[key]), key


@pytest.mark.filterwarnings("ignore:nce_k=32 exceeds")
@pytest.mark.parametrize("method", ["kd", "crd"])
def test_one_epoch_in_one_process(method, textured_root, imagenet_teacher, tmp_path):
    pytest.importorskip("nvidia.dali")
    args = ["--path_t", str(imagenet_teacher), "--distill", method, "--data_root", str(textured_root),
            "--save_dir", str(tmp_path), *END_TO_END, *ON["cpu"]]
    assert run_main("student", args)[0] == 0
    check_run_folder(tmp_path, method)


@pytest.mark.parametrize("mode", ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="DALI on the GPU with NCCL needs two GPUs"))])
@pytest.mark.parametrize("method", ["kd", "crd"])
def test_one_epoch_under_torchrun(method, mode, textured_root, imagenet_teacher, tmp_path):
    """Two processes: gloo on the CPU (``--dali cpu``), or NCCL on two GPUs (``--dali gpu --sync_bn``)."""
    pytest.importorskip("nvidia.dali")
    save, probe = tmp_path / "save", tmp_path / "probe"
    args = ["--path_t", str(imagenet_teacher), "--distill", method, "--data_root", str(textured_root),
            "--save_dir", str(save), *END_TO_END, *ON[mode]]
    result = run_probe("student", args, probe, save)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_run_folder(save, method)
    ranks = load_ranks(probe, 2)
    assert ranks[1]["writes"] == []
    shards = [set(torch.cat([b["indices"] for b in r["batches"]]).tolist()) for r in ranks]
    assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(12))
    for name in ("student", "method_state"):
        for key, value in ranks[0][name].items():
            assert torch.equal(value, ranks[1][name][key]), f"{name}.{key}"
