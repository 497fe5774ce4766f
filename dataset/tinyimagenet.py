"""Tiny-ImageNet-200, read from its official folder and shrunk to CIFAR size for linear-probe transfer.

The archive ``tiny-imagenet-200.zip`` extracts to ``tiny-imagenet-200/`` holding
``wnids.txt`` (one WordNet id per line: the classes, in label order),
``train/<wnid>/images/*.JPEG`` (500 images of 64×64 per class) and ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (tab-separated: file name, wnid, then a bounding box). The test
split has no labels, so the labelled validation split serves as the test set, as in the
transfer protocol (METHODS.md §3.6). Images are decoded, converted to RGB (a few are grey),
resized to 32×32 like STL-10 (:func:`dataset.stl10.shrink_image`) and normalised with
Tiny-ImageNet's statistics. Decoding 110,000 JPEG files is the slow part; it runs on a thread
pool (PIL releases the interpreter lock while it decodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dataset.arrays import ImageArrays, InMemoryDataset
from dataset.stl10 import shrink_image
from errors import UsageError

TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2770, 0.2691, 0.2821)

TINYIMAGENET_LAYOUT = ("<data_root>/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, "
                       "val/images/*.JPEG, val/val_annotations.txt}")
_DOWNLOAD = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def load_tinyimagenet(data_root: Path, workers: int = 1) -> InMemoryDataset:
    """Tiny-ImageNet's training and validation splits from ``<data_root>/tiny-imagenet-200``, at 32×32."""
    folder = _find_folder(Path(data_root).expanduser())
    wnids = read_wnids(folder / "wnids.txt")
    train_files, train_labels = _train_files(folder / "train", wnids)
    val_files, val_labels = read_val_annotations(folder / "val", wnids)
    train = ImageArrays(_decode_all(train_files, workers), np.asarray(train_labels, dtype=np.int64))
    test = ImageArrays(_decode_all(val_files, workers), np.asarray(val_labels, dtype=np.int64))
    return InMemoryDataset(train, test, len(wnids), TINYIMAGENET_MEAN, TINYIMAGENET_STD, flip=True)


def _find_folder(data_root: Path) -> Path:
    """``<data_root>/tiny-imagenet-200``, or ``data_root`` itself when it is that folder."""
    for folder in (data_root / "tiny-imagenet-200", data_root):
        if (folder / "wnids.txt").is_file():
            return folder
    advice = f"download {_DOWNLOAD} and unzip it into {data_root}"
    if (data_root / "tiny-imagenet-200.zip").is_file():
        advice = f"unzip it first: unzip -q {data_root / 'tiny-imagenet-200.zip'} -d {data_root}"
    raise UsageError(f"Tiny-ImageNet not found under --data_root {data_root} (no tiny-imagenet-200/wnids.txt): "
                     f"expected the official folder as {TINYIMAGENET_LAYOUT}; {advice}")


def read_wnids(path: Path) -> list[str]:
    """The class ids of ``wnids.txt``, in file order (label ``i`` is line ``i``)."""
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise UsageError(f"{path} lists no class; expected one WordNet id per line as {TINYIMAGENET_LAYOUT}")
    if len(set(wnids)) != len(wnids):
        twice = sorted({wnid for wnid in wnids if wnids.count(wnid) > 1})
        raise UsageError(f"{path} lists {', '.join(twice[:3])} more than once; re-extract the official archive")
    return wnids


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def _train_files(train: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Every ``train/<wnid>/images/*`` file with its label, classes in ``wnids`` order."""
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        images = _images_in(train / wnid / "images")
        if not images:
            raise UsageError(f"{train / wnid / 'images'} holds no image, but {wnid} is listed in wnids.txt; "
                             f"expected {TINYIMAGENET_LAYOUT}")
        files += images
        labels += [label] * len(images)
    return files, labels


def read_val_annotations(val: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    """The files of ``val/images`` and their labels, as ``val/val_annotations.txt`` names them."""
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        raise UsageError(f"{annotations} is missing: it holds the labels of val/images; expected "
                         f"{TINYIMAGENET_LAYOUT}")
    index = {wnid: label for label, wnid in enumerate(wnids)}
    files, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or fields[1] not in index:
            shown = fields[1] if len(fields) > 1 else line.strip()
            raise UsageError(f"{annotations}, line {number}: {shown!r} is not a class of wnids.txt; expected "
                             "'<file>\\t<wnid>\\t<box>' lines naming the listed classes")
        path = val / "images" / fields[0]
        if not path.is_file():
            raise UsageError(f"{annotations}, line {number} names {path}, which does not exist; "
                             "re-extract the official archive")
        files.append(path)
        labels.append(index[fields[1]])
    if not files:
        raise UsageError(f"{annotations} names no image; expected {TINYIMAGENET_LAYOUT}")
    return files, labels


def _decode(path: Path) -> np.ndarray:
    """One image file as uint8 ``[3, 32, 32]``; a file PIL cannot read is a usage error naming it."""
    try:
        with Image.open(path) as image:
            return shrink_image(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UsageError(f"{path} is not a readable image ({type(error).__name__}: {error}); "
                         "re-extract the official archive") from None


def _decode_all(files: Sequence[Path], workers: int) -> np.ndarray:
    """Every file decoded and resized, in order, as uint8 ``[N, 3, 32, 32]``."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return np.stack(list(pool.map(_decode, files)))
