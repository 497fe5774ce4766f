"""Small data sets on disk in the official layouts, for tests and end-to-end runs without downloads.

The images are learnable: each class has its own mean colour and each image is that colour
plus Gaussian noise, so a few epochs of training get well above chance.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _class_images(labels: np.ndarray, height: int, width: int, colours: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[N, height, width, 3]``: each image its class colour plus noise (std 40)."""
    noise = rng.normal(0.0, 40.0, size=(len(labels), height, width, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _labels(count: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` labels covering every class (as far as ``count`` allows), in random order."""
    return rng.permutation(np.arange(count) % num_classes).astype(np.int64)


def _cifar_entry(labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Official CIFAR rows: uint8 ``[N, 3072]``, 1024 red then green then blue values per image."""
    images = _class_images(labels, 32, 32, colours, rng)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3072))


def _dump(path: Path, entry: dict) -> None:
    with path.open("wb") as file:
        pickle.dump(entry, file, protocol=2)


def write_cifar100(root: str | Path, n_train: int = 500, n_test: int = 100, seed: int = 0) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}`` as the official archive lays them out."""
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(100, 3))
    for split, count in (("train", n_train), ("test", n_test)):
        fine = _labels(count, 100, rng)
        _dump(folder / split, {
            b"filenames": [f"fake_{split}_{number}.png".encode() for number in range(count)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": _cifar_entry(fine, colours, rng),
        })
    _dump(folder / "meta", {
        b"fine_label_names": [f"fine_{number}".encode() for number in range(100)],
        b"coarse_label_names": [f"coarse_{number}".encode() for number in range(20)],
    })
    return root


def write_cifar10(root: str | Path, n_train: int = 500, n_test: int = 100, seed: int = 0) -> Path:
    """Write ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (official layout).

    The ``n_train`` training images are spread over the five batch files as evenly as possible.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(10, 3))
    train_labels = _labels(n_train, 10, rng)
    files = [(f"data_batch_{number + 1}", part, f"training batch {number + 1} of 5")
             for number, part in enumerate(np.array_split(train_labels, 5))]
    files.append(("test_batch", _labels(n_test, 10, rng), "testing batch 1 of 1"))
    for name, labels, batch_label in files:
        _dump(folder / name, {
            b"batch_label": batch_label.encode(),
            b"labels": labels.tolist(),
            b"data": _cifar_entry(labels, colours, rng),
            b"filenames": [f"fake_{name}_{number}.png".encode() for number in range(len(labels))],
        })
    _dump(folder / "batches.meta", {
        b"num_cases_per_batch": max(1, n_train // 5),
        b"label_names": [f"class_{number}".encode() for number in range(10)],
        b"num_vis": 3072,
    })
    return root


def write_imagenet(root: str | Path, num_classes: int = 3, per_class: int = 4,
                   size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """Write ``per_class`` JPEG files per class into ``train/<wnid>/`` and ``val/<wnid>/``.

    ``size`` is (height, width); wnids are ``n00000000``, ``n00000001``, ...
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(num_classes, 3))
    labels = np.repeat(np.arange(num_classes), per_class)
    for split in ("train", "val"):
        images = _class_images(labels, size[0], size[1], colours, rng)
        for number, (label, image) in enumerate(zip(labels, images)):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{split}_{number:05d}.JPEG", format="JPEG", quality=90)
    return root


def write_truncated_jpeg(path: str | Path, size: tuple[int, int] = (40, 48), keep: float = 0.6,
                         seed: int = 0) -> Path:
    """A real noisy JPEG written by PIL, then cut to its first ``keep`` fraction of bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * keep)])
    return path


def write_text_as_image(path: str | Path, text: str = "this is not an image\n") -> Path:
    """A text file under an image name (``.JPEG``), as a stray download or note would be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_cifar_labels(path: str | Path, label_key: bytes, labels: object) -> Path:
    """Replace the labels of the official CIFAR pickle at ``path`` with ``labels`` (any value)."""
    path = Path(path)
    with path.open("rb") as file:
        entry = pickle.load(file, encoding="bytes")
    entry[label_key] = labels
    _dump(path, entry)
    return path


def write_stl10_split(folder: str | Path, split: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write ``<split>_X.bin`` and ``<split>_y.bin`` as STL-10 stores them.

    ``images`` is uint8 ``[N, 96, 96, 3]`` (rows top to bottom); each colour plane is written
    column by column, as the official files are. ``labels`` are written as given (1..10 there).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planes = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 2, 1))  # [N, C, W, H]
    (folder / f"{split}_X.bin").write_bytes(planes.tobytes())
    (folder / f"{split}_y.bin").write_bytes(np.asarray(labels, dtype=np.uint8).tobytes())
    return folder


def write_stl10(root: str | Path, n_train: int = 50, n_test: int = 30, seed: int = 0) -> Path:
    """Write ``<root>/stl10_binary/{train,test}_{X,y}.bin`` in the official layout (labels 1..10)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(10, 3))
    for split, count in (("train", n_train), ("test", n_test)):
        labels = _labels(count, 10, rng)
        write_stl10_split(root / "stl10_binary", split, _class_images(labels, 96, 96, colours, rng), labels + 1)
    return root


def write_tinyimagenet(root: str | Path, num_classes: int = 3, per_class: int = 6, n_val: int = 9,
                       seed: int = 0) -> Path:
    """Write ``<root>/tiny-imagenet-200`` in the official layout: 64×64 JPEG files, ``wnids.txt``,
    ``train/<wnid>/images/``, ``val/images/`` and ``val/val_annotations.txt``.

    The first training image is greyscale, as a few official ones are. Wnids are
    ``n00000000``, ``n00000001``, ...; they are listed in ``wnids.txt`` in reverse order, so
    that label order is the file's order, not the sorted one.
    """
    folder = Path(root) / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(num_classes, 3))
    wnids = [f"n{number:08d}" for number in range(num_classes)][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in wnids))
    train_labels = np.repeat(np.arange(num_classes), per_class)
    for number, (label, image) in enumerate(zip(train_labels, _class_images(train_labels, 64, 64, colours, rng))):
        images = folder / "train" / wnids[label] / "images"
        images.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image).convert("L") if number == 0 else Image.fromarray(image)
        picture.save(images / f"{wnids[label]}_{number % per_class}.JPEG", format="JPEG", quality=90)
    val_labels = _labels(n_val, num_classes, rng)
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for number, (label, image) in enumerate(zip(val_labels, _class_images(val_labels, 64, 64, colours, rng))):
        Image.fromarray(image).save(folder / "val" / "images" / f"val_{number}.JPEG", format="JPEG", quality=90)
        lines.append(f"val_{number}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return Path(root)
