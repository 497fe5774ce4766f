"""Data that is not what it claims: one line and exit status 2 before anything is written.

ImageNet-layout folders with unreadable images (refused, or left out with ``--bad_images
skip``), hidden folders and files, class folders that differ between the splits, the class
count; CIFAR pickles whose labels are not integers in range. Every folder here is generated
in the official layout and holds a handful of tiny files.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

import dataset
from dataset import DataNeeds
from dataset.cifar import load_cifar10, load_cifar100
from dataset.imagenet import (
    ClassFolders,
    UnreadableImage,
    image_file_problem,
    imagenet_val_transform,
    load_imagenet_folders,
    load_rgb,
    scan_image_files,
)
from dataset.reference_loader import IndexedDataset, ReferenceLoader
from errors import UsageError
from tests.conftest import run_main
from tests.fakedata import (
    write_cifar10,
    write_cifar100,
    write_cifar_labels,
    write_imagenet,
    write_text_as_image,
    write_truncated_jpeg,
)

CPU = torch.device("cpu")
CLASSES, PER_CLASS = 3, 2  # 6 images per split


def imagenet(tmp_path, num_classes: int = CLASSES, per_class: int = PER_CLASS):
    return write_imagenet(tmp_path / "data", num_classes=num_classes, per_class=per_class, size=(24, 32))


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def file_names(folder: ImageFolder) -> list[str]:
    return sorted(path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for path, _ in folder.samples)


def undecodable_jpeg(path) -> None:
    """A JPEG start, noise and an end-of-image marker: it passes the scan but does not decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    path.write_bytes(b"\xff\xd8\xff\xe0" + noise + b"\xff\xd9")


# --- the up-front scan ----------------------------------------------------------------------------


def test_the_scan_accepts_whole_images_whatever_their_extension(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.JPEG", format="JPEG")
    Image.fromarray(pixels).save(tmp_path / "drawing.png", format="PNG")
    Image.fromarray(pixels).save(tmp_path / "png_named.JPEG", format="PNG")  # as ImageNet has one
    Image.fromarray(pixels).save(tmp_path / "bitmap.bmp", format="BMP")
    padded = tmp_path / "padded.JPEG"
    padded.write_bytes((tmp_path / "photo.JPEG").read_bytes() + b"\x00" * 100)  # a short trailer
    paths = sorted(str(path) for path in tmp_path.iterdir())
    assert [image_file_problem(path) for path in paths] == [None] * 5
    assert scan_image_files(paths) == []


def test_the_scan_names_what_is_wrong_with_each_bad_file(tmp_path):
    truncated = write_truncated_jpeg(tmp_path / "cut.JPEG")
    text = write_text_as_image(tmp_path / "note.JPEG")
    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    whole_png = tmp_path / "whole.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(whole_png, format="PNG")
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(whole_png.read_bytes()[:-20])
    assert "end-of-image marker FF D9" in image_file_problem(str(truncated))
    assert "not an image" in image_file_problem(str(text))
    assert "empty" in image_file_problem(str(empty))
    assert "IEND" in image_file_problem(str(cut_png))
    assert "unreadable" in image_file_problem(str(tmp_path / "missing.JPEG"))
    # A thread pool over chunks keeps the paths' order, whatever the number of threads.
    paths = [str(path) for path in (truncated, whole_png, text, empty, cut_png)] * 300
    found = scan_image_files(paths, threads=3)
    assert len(found) == 4 * 300 and [path for path, _ in found[:4]] == [paths[0], paths[2], paths[3], paths[4]]
    with pytest.raises(OSError):  # the cut JPEG is a real image cut short: PIL fails on it too
        Image.open(truncated).convert("RGB")


# --- refuse or skip -------------------------------------------------------------------------------


def with_bad_files(tmp_path):
    """A 3-class folder with a truncated JPEG in train/ and a text file named .JPEG in val/."""
    root = imagenet(tmp_path)
    truncated = write_truncated_jpeg(root / "train" / "n00000001" / "cut.JPEG")
    text = write_text_as_image(root / "val" / "n00000002" / "note.JPEG")
    return root, str(truncated), str(text)


def test_refuse_is_one_line_with_the_count_the_first_file_and_the_way_out(tmp_path):
    root, truncated, _ = with_bad_files(tmp_path)
    for bad_images in ("refuse", None):  # refuse is the default
        with pytest.raises(UsageError) as caught:
            load_imagenet_folders(root) if bad_images is None else load_imagenet_folders(root, bad_images)
        message = one_line(str(caught.value))
        assert f"2 of the 14 ImageNet image files cannot be read (the first: {truncated} is a JPEG" in message
        assert "--bad_images skip" in message
    with pytest.raises(UsageError, match="--bad_images 'ignore' is not known"):
        load_imagenet_folders(root, "ignore")


def test_skip_leaves_the_bad_files_out_and_warns_once(tmp_path, capsys):
    root, truncated, text = with_bad_files(tmp_path)
    train, val = load_imagenet_folders(root, "skip")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: 2 of the 14 ImageNet image files cannot be read")
    assert truncated in lines[0] and "--bad_images skip leaves them out" in lines[0]
    assert len(train) == len(val) == 6 and len(train.targets) == len(train.imgs) == 6
    kept = [path for folder in (train, val) for path, _ in folder.samples]
    assert truncated not in kept and text not in kept
    assert train.targets == [0, 0, 1, 1, 2, 2] and val.targets == [0, 0, 1, 1, 2, 2]
    # Every kept file decodes: a whole pass of the torchvision loader runs through.
    loader = ReferenceLoader(IndexedDataset(val, imagenet_val_transform()), batch_size=4, device=CPU, seed=0,
                             train=False, num_workers=0)
    assert [len(batch) for batch in loader] == [4, 2]


def test_skip_with_nothing_left_is_a_usage_error(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        write_text_as_image(root / split / "n0" / "a.JPEG")
    with pytest.raises(UsageError, match="no readable ImageNet image is left"):
        load_imagenet_folders(root, "skip")


def test_the_data_set_builder_refuses_before_building_a_loader(tmp_path):
    root, truncated, _ = with_bad_files(tmp_path)
    with pytest.raises(UsageError) as caught:
        dataset.build("imagenet", root, 4, DataNeeds(), CPU)
    assert truncated in one_line(str(caught.value))


def test_the_data_set_builder_passes_skip_on(tmp_path, capsys):
    root, _, _ = with_bad_files(tmp_path)
    bundle = dataset.build("imagenet", root, 4, DataNeeds(), CPU, bad_images="skip")
    assert (bundle.num_train, bundle.num_classes) == (6, CLASSES)
    assert "warning: 2 of the 14" in capsys.readouterr().err


# --- files that pass the scan but do not decode ---------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_that_does_not_decode_is_one_line_naming_it(tmp_path, workers):
    root = imagenet(tmp_path)
    bad = root / "val" / "n00000001" / "val_99999.JPEG"
    undecodable_jpeg(bad)
    _, val = load_imagenet_folders(root)  # the scan cannot tell
    assert str(bad) in [path for path, _ in val.samples]
    loader = ReferenceLoader(IndexedDataset(val, imagenet_val_transform()), batch_size=7, device=CPU, seed=0,
                             train=False, num_workers=workers)
    with pytest.raises(UnreadableImage) as caught:
        list(loader)
    assert one_line(str(caught.value)).startswith(f"cannot decode image {bad} (")
    assert isinstance(caught.value, UsageError)  # the entry scripts turn it into exit status 2
    with pytest.raises(UnreadableImage, match="cannot decode image"):
        load_rgb(str(bad))


# --- hidden entries and the classes ---------------------------------------------------------------


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    root = imagenet(tmp_path)
    clean = {split: file_names(folder) for split, folder in zip(("train", "val"), load_imagenet_folders(root))}
    for split in ("train", "val"):
        (root / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (8, 8)).save(root / split / ".ipynb_checkpoints" / "x.JPEG")
        write_text_as_image(root / split / "n00000000" / "._val_00000.JPEG")  # a macOS resource fork
        write_truncated_jpeg(root / split / "n00000001" / ".cache" / "thumb.JPEG")
    (root / "train" / ".trash").mkdir()  # an empty hidden folder in train/ only: no class difference
    folders = load_imagenet_folders(root)  # neither refused nor listed: the hidden files are never scanned
    assert folders.num_classes == CLASSES and folders.train.classes == ["n00000000", "n00000001", "n00000002"]
    for split, folder in zip(("train", "val"), folders):
        assert file_names(folder) == clean[split]
        assert all("/." not in path for path, _ in folder.samples)


def test_samples_are_in_torchvisions_order(tmp_path):
    """Without hidden entries the sample list is ImageFolder's, so indices of earlier runs stay valid."""
    root = imagenet(tmp_path)
    Image.new("RGB", (8, 8)).save(root / "train" / "n00000001" / "A_upper.JPEG")
    (root / "train" / "n00000002" / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "n00000002" / "sub" / "deeper.jpg")
    mine, theirs = ClassFolders(root / "train"), ImageFolder(str(root / "train"))
    assert mine.samples == theirs.samples and mine.classes == theirs.classes and len(mine) == 8


@pytest.mark.parametrize("num_classes", [3, 100])
def test_the_number_of_classes_is_the_number_of_class_folders(tmp_path, num_classes):
    root = imagenet(tmp_path, num_classes=num_classes, per_class=1)
    folders = load_imagenet_folders(root)
    assert folders.num_classes == folders.train.num_classes == folders.val.num_classes == num_classes
    bundle = dataset.build("imagenet", root, 4, DataNeeds(), CPU)
    assert bundle.num_classes == num_classes
    assert torch.equal(bundle.train_targets, torch.arange(num_classes))


def test_train_and_val_with_other_class_folders_is_one_line_naming_the_difference(tmp_path):
    root = imagenet(tmp_path)
    (root / "val" / "n00000002").rename(root / "val" / "n00000007")
    (root / "val" / "n00000009").mkdir()
    with pytest.raises(UsageError) as caught:
        load_imagenet_folders(root)
    message = one_line(str(caught.value))
    assert f"1 only in {root / 'train'}: n00000002" in message
    assert f"2 only in {root / 'val'}: n00000007, n00000009" in message


# --- DALI reads the same file list ----------------------------------------------------------------


def test_dali_reads_only_the_files_that_skip_kept(tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    from dataset.dali import DaliLoader

    root, truncated, text = with_bad_files(tmp_path)
    train, val = load_imagenet_folders(root, "skip")
    for folder, is_train in ((train, True), (val, False)):
        loader = DaliLoader(folder.samples, mode="cpu", batch_size=4, device=CPU, seed=0, train=is_train,
                            num_workers=1)
        assert truncated not in loader.files and text not in loader.files
        batches = list(loader)
        assert sorted(torch.cat([batch.indices for batch in batches]).tolist()) == list(range(6))
        assert torch.equal(torch.cat([batch.targets for batch in batches]),
                           torch.tensor(folder.targets)[torch.cat([batch.indices for batch in batches])])


@pytest.mark.parametrize("is_train", [False, True], ids=["evaluation", "training"])
@pytest.mark.parametrize("where", ["n00000000/a.JPEG", "n00000002/z.JPEG"], ids=["first_batch", "last_batch"])
def test_dali_failing_on_a_file_is_one_line_naming_it(tmp_path, where, is_train):
    """The first batch is decoded while DALI's iterator is built, later ones while iterating."""
    pytest.importorskip("nvidia.dali")
    from dataset.dali import DaliLoader

    root = imagenet(tmp_path)
    bad = root / "val" / where
    undecodable_jpeg(bad)
    _, val = load_imagenet_folders(root)
    loader = DaliLoader(val.samples, mode="cpu", batch_size=2, device=CPU, seed=0, train=is_train, num_workers=1)
    with pytest.raises(UsageError) as caught:
        list(loader)
    assert one_line(str(caught.value)).startswith(f"DALI could not decode a batch: cannot decode image {bad}")


# --- CIFAR labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, fragment",
    [
        ([0.0, 1.0] * 25, "not labels of type float (the first: 0.0)"),
        (np.arange(50) + 0.5, "not labels of type float (the first: 0.5)"),
        ([True, False] * 25, "not labels of type bool"),
        (["0", "1"] * 25, "not labels of type str"),
        ([0, 1] * 24 + [5, 100], "not labels from 0 to 100"),
        ([-1] + [0] * 49, "not labels from -1 to 0"),
        ([0] * 49, "not labels of shape [49]"),
        ([[0], [1, 2]] * 25, "do not form a list"),
    ],
)
def test_cifar100_labels_that_are_not_integers_in_range_are_refused(tmp_path, labels, fragment):
    write_cifar100(tmp_path, n_train=50, n_test=10)
    path = write_cifar_labels(tmp_path / "cifar-100-python" / "train", b"fine_labels", labels)
    with pytest.raises(UsageError) as caught:
        load_cifar100(tmp_path)
    message = one_line(str(caught.value))
    assert message.startswith(f"{path} must hold a b'fine_labels' list of 50 integer labels in [0, 100)")
    assert fragment in message and "cifar-100-python/{train,test,meta}" in message


def test_cifar_integer_labels_are_taken_as_they_are(tmp_path):
    write_cifar10(tmp_path, n_train=50, n_test=10)
    labels = np.arange(10, dtype=np.uint8)  # data_batch_3 holds 10 of the 50 images
    write_cifar_labels(tmp_path / "cifar-10-batches-py" / "data_batch_3", b"labels", labels)
    data = load_cifar10(tmp_path)
    assert data.train.targets.dtype == np.int64 and data.train.targets[20:30].tolist() == list(range(10))
    write_cifar_labels(tmp_path / "cifar-10-batches-py" / "data_batch_3", b"labels", labels.astype(np.float32))
    with pytest.raises(UsageError, match="data_batch_3 must hold a b'labels' list of 10 integer labels in"):
        load_cifar10(tmp_path)


# --- whole runs: exit status 2, one line, nothing written -----------------------------------------


TEACHER = ["--epochs", "1", "--batch_size", "4", "--num_workers", "0", "--device", "cpu"]


def assert_refused(args: list[str], save, capsys, *fragments: str) -> None:
    status, err = run_main("teacher", [*args, "--save_dir", str(save), *TEACHER], capsys)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err
    assert not save.exists()


@pytest.mark.parametrize("dali", [[], ["--dali", "cpu"]], ids=["torchvision", "dali"])
def test_a_run_on_a_folder_with_bad_images_stops_before_writing(tmp_path, capsys, dali):
    if dali:
        pytest.importorskip("nvidia.dali")
    root, truncated, _ = with_bad_files(tmp_path)
    args = ["--model", "ResNet18", "--dataset", "imagenet", "--data_root", str(root), *dali]
    assert_refused(args, tmp_path / "save", capsys, truncated, "--bad_images skip")


def test_a_run_on_folders_with_other_classes_stops_before_writing(tmp_path, capsys):
    root = imagenet(tmp_path)
    (root / "val" / "n00000002").rename(root / "val" / "n00000005")
    args = ["--model", "ResNet18", "--dataset", "imagenet", "--data_root", str(root)]
    assert_refused(args, tmp_path / "save", capsys, "n00000002", "n00000005")


def test_a_run_on_float_cifar_labels_stops_before_writing(tmp_path, capsys):
    write_cifar100(tmp_path / "data", n_train=50, n_test=10)
    path = write_cifar_labels(tmp_path / "data" / "cifar-100-python" / "test", b"fine_labels", [1.5] * 10)
    args = ["--model", "resnet8", "--data_root", str(tmp_path / "data")]
    assert_refused(args, tmp_path / "save", capsys, str(path), "float")
