"""scripts/transfer.py: the STL-10 and Tiny-ImageNet readers, the frozen network, the probe run folder,
and the transfer tables of summarize.py beside the published numbers."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch

from dataset.arrays import ImageArrays
from dataset.stl10 import load_stl10, read_stl10_images
from dataset.tensor_loader import TensorLoader
from dataset.tinyimagenet import load_tinyimagenet
from errors import UsageError
from helper.checkpoint import save_atomic
from helper.loops import StepConfig, train_one_epoch
from models import model_dict
from scripts import summarize, transfer
from tests.conftest import run_main
from tests.fakedata import write_stl10, write_stl10_split, write_tinyimagenet, write_truncated_jpeg
from tests.runfolders import write_run

FAST = ["--num_workers", "0", "--batch_size", "64", "--print_freq", "1000", "--epochs", "1"]
TEACHER_RUN = "resnet8_vanilla_digits_trial_0"


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """A 1-epoch resnet8 digits teacher and a 1-epoch SimKD resnet8 student of it: their last checkpoints."""
    save = tmp_path_factory.mktemp("digits_save")
    status, _ = run_main("teacher", ["--model", "resnet8", "--dataset", "digits", "--save_dir", str(save), *FAST])
    assert status == 0
    teacher = save / "teachers" / "models" / TEACHER_RUN / "resnet8_last.pth"
    status, _ = run_main("student", ["--model_s", "resnet8", "--path_t", str(teacher), "--distill", "simkd",
                                     "--dataset", "digits", "--save_dir", str(save), "--skip_validation", *FAST])
    assert status == 0
    student = next((save / "students" / "models").glob("S:resnet8_T:resnet8_digits_simkd_*")) / "resnet8_last.pth"
    return {"teacher": teacher, "simkd": student}


@pytest.fixture(scope="module")
def stl10_root(tmp_path_factory):
    return write_stl10(tmp_path_factory.mktemp("stl10"), n_train=40, n_test=20)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tinyimagenet(tmp_path_factory.mktemp("tiny"), num_classes=3, per_class=6, n_val=9)


def _probe(path, dataset, data_root, save, *extra):
    return transfer.main(["--path", str(path), "--dataset", dataset, "--data_root", str(data_root),
                          "--save_dir", str(save), "--device", "cpu", *FAST, *extra])


# ---------------------------------------------------------------------------------------------
# Readers


def test_stl10_images_come_back_the_right_way_up(tmp_path):
    """A red block in the top-right corner and a green bar along the bottom: a transposed or mirrored
    reader would move both."""
    image = np.zeros((96, 96, 3), dtype=np.uint8)
    image[:32, 48:, 0] = 255
    image[88:, :, 1] = 255
    folder = tmp_path / "stl10_binary"
    for split in ("train", "test"):
        write_stl10_split(folder, split, np.stack([image, image[::-1]]), np.array([1, 10]))
    raw = read_stl10_images(folder / "train_X.bin")
    assert raw.shape == (2, 3, 96, 96)
    assert (raw[0, 0, :32, 48:] == 255).all() and (raw[0, 0, 32:, :] == 0).all() and (raw[0, 0, :, :48] == 0).all()
    assert (raw[0, 1, 88:, :] == 255).all() and (raw[0, 1, :88, :] == 0).all()

    data = load_stl10(tmp_path)
    small = data.train.images[0].astype(int)  # [3, 32, 32]: the block covers rows 0-10, columns 16-31
    assert small[0, 1:9, 18:30].min() > 200 and small[0, 14:, :].max() < 30 and small[0, :, :14].max() < 30
    assert small[1, 31, :].min() > 200 and small[1, :26, :].max() < 30
    assert data.train.targets.tolist() == [0, 9]  # labels 1..10 on disk
    assert data.num_classes == 10 and data.test.images.shape == (2, 3, 32, 32)


def test_tinyimagenet_labels_follow_wnids_and_the_val_annotations(tmp_path):
    data = load_tinyimagenet(write_tinyimagenet(tmp_path, num_classes=3, per_class=6, n_val=9), workers=2)
    assert data.num_classes == 3
    assert data.train.images.shape == (18, 3, 32, 32) and data.test.images.shape == (9, 3, 32, 32)
    assert np.bincount(data.train.targets).tolist() == [6, 6, 6]
    grey = data.train.images[0]
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()  # a greyscale file becomes three channels
    # each class has its own colour: a val image's colour must be that of the training images of its label
    colour = {label: data.train.images[data.train.targets == label][1:].mean(axis=(0, 2, 3)) for label in range(3)}
    for image, label in zip(data.test.images, data.test.targets):
        distances = {other: np.abs(image.mean(axis=(1, 2)) - colour[other]).sum() for other in range(3)}
        assert min(distances, key=distances.get) == label


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _relabel(path, value):
    labels = np.fromfile(path, dtype=np.uint8)
    labels[0] = value
    path.write_bytes(labels.tobytes())


def _rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


STL10_BREAKS = {
    "no folder": (lambda root: (root / "stl10_binary" / "test_y.bin").unlink(), "STL-10 not found"),
    "cut images": (lambda root: _truncate(root / "stl10_binary" / "train_X.bin"), "whole number of 3×96×96"),
    "label 0": (lambda root: _relabel(root / "stl10_binary" / "test_y.bin", 0), "numbers its classes 1 to 10"),
    "label 11": (lambda root: _relabel(root / "stl10_binary" / "train_y.bin", 11), "numbers its classes 1 to 10"),
    "too few labels": (lambda root: _truncate(root / "stl10_binary" / "test_y.bin"), "holds 0 labels|labels but"),
}


@pytest.mark.parametrize("name", STL10_BREAKS)
def test_a_broken_stl10_layout_is_a_usage_error(name, tmp_path):
    root = write_stl10(tmp_path, n_train=4, n_test=120)
    breaks, message = STL10_BREAKS[name]
    breaks(root)
    with pytest.raises(UsageError, match=message):
        load_stl10(root)


TINY = "tiny-imagenet-200"
TINY_BREAKS = {
    "no wnids": (lambda root: (root / TINY / "wnids.txt").unlink(), "Tiny-ImageNet not found"),
    "no annotations": (lambda root: (root / TINY / "val" / "val_annotations.txt").unlink(), "val_annotations.txt"),
    "unknown wnid": (lambda root: _rewrite(root / TINY / "val" / "val_annotations.txt", "\tn0000000", "\tn9999999"),
                     "not a class of wnids.txt"),
    "missing val image": (lambda root: (root / TINY / "val" / "images" / "val_0.JPEG").unlink(), "does not exist"),
    "empty class": (lambda root: [p.unlink() for p in (root / TINY / "train" / "n00000001" / "images").iterdir()],
                    "holds no image"),
    "corrupt image": (lambda root: write_truncated_jpeg(root / TINY / "val" / "images" / "val_1.JPEG", keep=0.3),
                      "not a readable image"),
}


@pytest.mark.parametrize("name", TINY_BREAKS)
def test_a_broken_tinyimagenet_layout_is_a_usage_error(name, tmp_path):
    root = write_tinyimagenet(tmp_path, num_classes=3, per_class=2, n_val=4)
    breaks, message = TINY_BREAKS[name]
    breaks(root)
    with pytest.raises(UsageError, match=message):
        load_tinyimagenet(root)


# ---------------------------------------------------------------------------------------------
# The frozen network and the probe


def _test_accuracy(network, dataset="digits"):
    data = transfer.load_dataset(dataset, ".")
    loader = TensorLoader(data.test, mean=data.mean, std=data.std, batch_size=128, device="cpu", seed=0, train=False)
    with torch.no_grad():
        correct = sum(int((network(batch.images).argmax(1) == batch.targets).sum()) for batch in loader)
    return 100.0 * correct / len(data.test)


@pytest.mark.parametrize("which, embedding, width", [("teacher", "backbone", 64), ("simkd", "simkd projector", 64)])
def test_the_loaded_network_predicts_what_its_run_measured(digits_runs, which, embedding, width):
    """The teacher through its own classifier, the SimKD student through projector and teacher classifier."""
    network, source = transfer.load_network(digits_runs[which])
    recorded = torch.load(digits_runs[which], map_location="cpu", weights_only=True)["accuracy"]
    assert _test_accuracy(network) == pytest.approx(recorded, abs=1e-4)
    assert source.embedding == embedding and network.embedding_dim == width
    assert source.dataset == "digits" and source.arch == "resnet8" and source.num_classes == 10
    assert source.method == (None if which == "teacher" else "simkd")


def test_a_released_file_is_read_by_its_folder_name(digits_runs, tmp_path):
    """RepDistiller's {'model': state_dict} in <arch>_.../: the folder names the network, the classifier its classes."""
    teacher, _ = transfer.load_network(digits_runs["teacher"])
    released = tmp_path / "resnet8_cifar_released" / "ckpt_epoch_240.pth"
    save_atomic({"model": teacher.network.state_dict()}, released)
    network, source = transfer.load_network(released, source_dataset="digits")
    assert (source.arch, source.num_classes, source.kind, source.dataset) == ("resnet8", 10, "vanilla", "digits")
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(network(images), teacher(images))
    elsewhere = tmp_path / "downloads" / released.name
    elsewhere.parent.mkdir()
    released.rename(elsewhere)
    with pytest.raises(UsageError, match="pass --arch"):
        transfer.load_network(elsewhere)
    assert transfer.load_network(elsewhere, arch="resnet8")[1].arch == "resnet8"


@pytest.mark.parametrize("update_bn", [False, True])
def test_only_the_linear_layer_learns_and_bn_statistics_follow_the_flag(update_bn):
    torch.manual_seed(0)
    network = model_dict["resnet8"](num_classes=10)
    probe = transfer.LinearProbe(transfer.EmbeddingNet(network, network.get_classifier()), 3, update_bn)
    before = {key: value.clone() for key, value in probe.encoder.state_dict().items()}
    head = probe.head.weight.detach().clone()
    arrays = ImageArrays(np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8),
                         np.arange(16) % 3)
    loader = TensorLoader(arrays, mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=8, device="cpu", seed=0, train=True)
    optimizer = torch.optim.SGD(probe.head.parameters(), lr=0.1)
    train_one_epoch(probe, transfer.PROBE_WEIGHTS, loader, optimizer, StepConfig(torch.device("cpu")), 1)
    after = probe.encoder.state_dict()
    assert not torch.equal(probe.head.weight, head)
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        expected = update_bn and key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        assert changed == expected, key
    assert all(not p.requires_grad for p in probe.encoder.parameters())


# ---------------------------------------------------------------------------------------------
# The command


def test_a_simkd_student_transfers_to_stl10_and_writes_a_run_folder(digits_runs, stl10_root, tmp_path, capsys):
    save = tmp_path / "save"
    assert _probe(digits_runs["simkd"], "stl10", stl10_root, save) == 0
    run = digits_runs["simkd"].parent.name
    folder = save / "transfer" / "models" / run / "stl10_resnet8_last_trial_0"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    assert math.isfinite(records[0]["test_acc"]) and 0 <= records[0]["test_acc"] <= 100
    assert math.isfinite(records[0]["train_loss"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] and summary["last_acc"] == records[0]["test_acc"]
    assert summary["source"]["embedding"] == "simkd projector" and summary["source"]["method"] == "simkd"
    assert summary["transfer"] == {"dataset": "stl10", "num_classes": 10, "train_images": 40, "test_images": 20,
                                   "embedding_dim": 64, "bn_stats": "update"}
    head = torch.load(folder / transfer.HEAD_FILE, map_location="cpu", weights_only=True)
    assert head["model"]["weight"].shape == (10, 64)
    assert any((save / "transfer" / "tensorboard" / run / folder.name).iterdir())
    capsys.readouterr()
    assert _probe(digits_runs["simkd"], "stl10", stl10_root, save) == 2  # never overwritten
    assert "already holds a run" in capsys.readouterr().err


def test_a_teacher_transfers_to_tinyimagenet_with_frozen_statistics(digits_runs, tiny_root, tmp_path):
    save = tmp_path / "save"
    assert _probe(digits_runs["teacher"], "tinyimagenet", tiny_root, save, "--bn_stats", "frozen") == 0
    summary = json.loads((save / "transfer" / "models" / TEACHER_RUN / "tinyimagenet_resnet8_last_trial_0" /
                          "summary.json").read_text())
    assert summary["transfer"]["num_classes"] == 3 and summary["transfer"]["bn_stats"] == "frozen"
    assert math.isfinite(summary["last_acc"]) and summary["source"]["embedding"] == "backbone"


@pytest.mark.parametrize("extra, message", [
    ([], "STL-10 not found"),
    (["--embedding", "projector"], "holds no SimKD projector"),
    (["--arch", "vgg8"], "contradicts"),
    (["--lr_decay_epochs", "30,x"], "increasing positive integers"),
])
def test_a_mistake_is_one_line_and_exit_2(digits_runs, tmp_path, capsys, extra, message):
    save = tmp_path / "save"
    assert _probe(digits_runs["teacher"], "stl10", tmp_path / "empty", save, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not save.exists()  # nothing written


# ---------------------------------------------------------------------------------------------
# summarize.py: the transfer tables beside the published numbers


def _student_checkpoint(folder, arch, num_classes, run_name, method=None):
    """A checkpoint as this repository writes one (untrained weights): what a probe reads of it."""
    torch.manual_seed(0)
    path = folder / run_name / f"{arch}_last.pth"
    save_atomic({"model": model_dict[arch](num_classes=num_classes).state_dict(), "arch": arch,
                 "num_classes": num_classes, "dataset": "cifar100", "method": method, "run_name": run_name}, path)
    return path


def test_summarize_compare_puts_published_transfer_numbers_beside_the_probes(tmp_path, stl10_root, capsys):
    save = tmp_path / "save"
    kd_run = "S:wrn_16_2_T:wrn_40_2_cifar100_kd_r:0.1_a:0.9_b:0.0_1"
    for trial, last in enumerate([74.1, 74.7], 1):
        write_run(save, "wrn_16_2", [60.0, last], teacher="wrn_40_2", method="kd", weights=(0.1, 0.9, 0.0),
                  trial=str(trial))
    checkpoints = tmp_path / "checkpoints"
    kd = _student_checkpoint(checkpoints, "wrn_16_2", 100, kd_run, "kd")
    alone = _student_checkpoint(checkpoints, "wrn_40_2", 100, "wrn_40_2_vanilla_cifar100_trial_1")
    for trial in ("0", "1"):
        assert _probe(kd, "stl10", stl10_root, save, "--trial", trial) == 0
    assert _probe(alone, "stl10", stl10_root, save) == 0
    probes = {path.parent.name: json.loads(path.read_text())["last_acc"]
              for path in (save / "transfer").rglob("summary.json")}
    kd_values = [probes["stl10_wrn_16_2_last_trial_0"], probes["stl10_wrn_16_2_last_trial_1"]]
    capsys.readouterr()

    assert summarize.main([str(save), "--compare", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    paper, section = text.split("## Transfer", 1)
    assert "| KD | 74.40 ± 0.42 (2)" in paper  # the probes are not counted as runs of their sources
    mean, std = statistics.mean(kd_values), statistics.stdev(kd_values)
    assert f"| KD | {mean:.2f} ± {std:.2f} (2) vs 70.90 ({mean - 70.9:+.2f}) | CRD |" in section
    teacher = probes["stl10_wrn_40_2_last_trial_0"]
    assert f"| teacher | {teacher:.2f} (1) vs 68.60 ({teacher - 68.6:+.2f}) | CRD |" in section
    assert "cifar100 → other data sets: wrn_40_2→wrn_16_2" in section and "Tian et al." in section
