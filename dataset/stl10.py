"""STL-10, read from its official binary files and shrunk to CIFAR size for linear-probe transfer.

The archive ``stl10_binary.tar.gz`` extracts to ``stl10_binary/`` holding, per split,
``<split>_X.bin`` (uint8, 3·96·96 bytes per image: the red plane, then green, then blue, each
plane stored **column by column**, as MATLAB writes arrays) and ``<split>_y.bin`` (one uint8
label per image, numbered 1 to 10). Read as ``[N, 3, 96, 96]`` the planes come out transposed
(each image mirrored about its diagonal), so they are transposed back here. The unlabelled
split is not read: the transfer protocol uses the 5000 training and 8000 test images.

The CRD transfer protocol (METHODS.md §3.6) feeds CIFAR networks, so every image is resized to
32×32 with PIL's bilinear filter (antialiased when shrinking, as torchvision's ``Resize`` on a
PIL image) and normalised with STL-10's own statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dataset.arrays import ImageArrays, InMemoryDataset
from errors import UsageError

STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2712)
STL10_CLASSES = 10
STL10_SIDE = 96
IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE
CIFAR_SIDE = 32  # what the transfer protocol resizes every image to

STL10_LAYOUT = "<data_root>/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin}"
SPLIT_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
_DOWNLOAD = "https://cs.stanford.edu/~acoates/stl10/"


def shrink_image(image: Image.Image) -> np.ndarray:
    """One RGB image as uint8 ``[3, 32, 32]``: bilinear resize (antialiased), channels first."""
    small = image.convert("RGB").resize((CIFAR_SIDE, CIFAR_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def load_stl10(data_root: Path) -> InMemoryDataset:
    """STL-10's labelled splits from ``<data_root>/stl10_binary``, resized to 32×32."""
    folder = _find_folder(Path(data_root).expanduser())
    train = _read_split(folder, "train")
    test = _read_split(folder, "test")
    return InMemoryDataset(train, test, STL10_CLASSES, STL10_MEAN, STL10_STD, flip=True)


def _find_folder(data_root: Path) -> Path:
    """``<data_root>/stl10_binary``, or ``data_root`` itself when it is that folder."""
    for folder in (data_root / "stl10_binary", data_root):
        if all((folder / name).is_file() for name in SPLIT_FILES):
            return folder
    missing = [name for name in SPLIT_FILES if not (data_root / "stl10_binary" / name).is_file()]
    advice = f"download stl10_binary.tar.gz from {_DOWNLOAD} and extract it into {data_root}"
    if (data_root / "stl10_binary.tar.gz").is_file():
        advice = f"extract it first: tar xzf {data_root / 'stl10_binary.tar.gz'} -C {data_root}"
    raise UsageError(f"STL-10 not found under --data_root {data_root} (missing {', '.join(missing)}): "
                     f"expected the official binary files as {STL10_LAYOUT}; {advice}")


def read_stl10_images(path: Path) -> np.ndarray:
    """The images of one ``*_X.bin`` file as uint8 ``[N, 3, 96, 96]``, rows top to bottom."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise UsageError(f"{path} holds {size} bytes, not a whole number of 3×96×96 images "
                         f"({IMAGE_BYTES} bytes each); re-extract the official archive to get {STL10_LAYOUT}")
    planes = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, STL10_SIDE, STL10_SIDE)
    return np.ascontiguousarray(planes.transpose(0, 1, 3, 2))  # column-major planes → rows


def read_stl10_labels(path: Path, count: int) -> np.ndarray:
    """The labels of one ``*_y.bin`` file (1..10 on disk) as int64 ``0..9``, one per image."""
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != count:
        raise UsageError(f"{path} holds {len(labels)} labels but its images file holds {count} images; "
                         f"expected one label byte per image as {STL10_LAYOUT}")
    if count and (labels.min() < 1 or labels.max() > STL10_CLASSES):
        raise UsageError(f"{path} holds labels from {labels.min()} to {labels.max()}; STL-10 numbers its "
                         f"classes 1 to {STL10_CLASSES}; re-extract the official archive")
    return labels.astype(np.int64) - 1


def _read_split(folder: Path, split: str) -> ImageArrays:
    images = read_stl10_images(folder / f"{split}_X.bin")
    labels = read_stl10_labels(folder / f"{split}_y.bin", len(images))
    small = np.stack([shrink_image(Image.fromarray(image.transpose(1, 2, 0))) for image in images])
    return ImageArrays(np.ascontiguousarray(small), labels)
