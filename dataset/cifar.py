"""CIFAR-100 and CIFAR-10, read directly from the official python pickles.

torchvision's ``CIFAR100`` would check md5 sums and fail on a copy re-packed or trimmed; here
the files are read as they are and checked for what training needs: ``b'data'`` uint8
``[N, 3072]`` (1024 red, 1024 green, 1024 blue values per image, rows of 32) and the labels.
The pickles are read with an unpickler that only rebuilds NumPy arrays, so a foreign file in
the data folder cannot run code. Normalisation constants are those of every upstream code
base (METHODS.md §3.1); CIFAR-10 uses its usual constants.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dataset.arrays import ImageArrays, InMemoryDataset
from errors import UsageError

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR100_LAYOUT = "<data_root>/cifar-100-python/{train,test,meta}"
CIFAR10_LAYOUT = "<data_root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"
_DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar.html"


def load_cifar100(data_root: Path) -> InMemoryDataset:
    """CIFAR-100 (fine labels) from ``<data_root>/cifar-100-python``."""
    folder = _find_folder(data_root, "cifar-100-python", ("train", "test"), "CIFAR-100", CIFAR100_LAYOUT)
    train = _read_split([folder / "train"], b"fine_labels", 100, CIFAR100_LAYOUT)
    test = _read_split([folder / "test"], b"fine_labels", 100, CIFAR100_LAYOUT)
    return InMemoryDataset(train, test, 100, CIFAR100_MEAN, CIFAR100_STD, flip=True)


def load_cifar10(data_root: Path) -> InMemoryDataset:
    """CIFAR-10 from ``<data_root>/cifar-10-batches-py`` (five training batches, one test batch)."""
    batches = tuple(f"data_batch_{number}" for number in range(1, 6))
    folder = _find_folder(
        data_root, "cifar-10-batches-py", (*batches, "test_batch"), "CIFAR-10", CIFAR10_LAYOUT
    )
    train = _read_split([folder / name for name in batches], b"labels", 10, CIFAR10_LAYOUT)
    test = _read_split([folder / "test_batch"], b"labels", 10, CIFAR10_LAYOUT)
    return InMemoryDataset(train, test, 10, CIFAR10_MEAN, CIFAR10_STD, flip=True)


def _find_folder(data_root: Path, name: str, files: tuple[str, ...], title: str, layout: str) -> Path:
    """The folder holding ``files``: ``<data_root>/<name>``, or ``data_root`` itself if it is that folder."""
    for folder in (data_root / name, data_root):
        if all((folder / file).is_file() for file in files):
            return folder
    missing = [file for file in files if not (data_root / name / file).is_file()]
    advice = f"download {name}.tar.gz from {_DOWNLOAD} and extract it into {data_root}"
    if (data_root / f"{name}.tar.gz").is_file():
        advice = f"extract it first: tar xzf {data_root / f'{name}.tar.gz'} -C {data_root}"
    raise UsageError(
        f"{title} not found under --data_root {data_root} (missing {', '.join(missing)}): "
        f"expected the official python files as {layout}; {advice}"
    )


def _read_split(paths: list[Path], label_key: bytes, num_classes: int, layout: str) -> ImageArrays:
    """Concatenate the images and labels of the official pickles at ``paths``."""
    images, labels = [], []
    for path in paths:
        entry = _read_pickle(path, layout)
        data, targets = entry.get(b"data"), entry.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
            raise UsageError(f"{path} has no uint8 b'data' array of shape [N, 3072]; expected {layout}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(_check_labels(targets, path, label_key, len(data), num_classes, layout))
    return ImageArrays(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def _check_labels(raw: Any, path: Path, label_key: bytes, count: int, num_classes: int, layout: str) -> np.ndarray:
    """``raw`` as int64 labels if it is a list of ``count`` integers in ``[0, num_classes)``, else a UsageError.

    Floats are refused rather than truncated (1.7 is no class), as are booleans.
    """
    expected = f"{path} must hold a {label_key!r} list of {count} integer labels in [0, {num_classes})"
    if raw is None:
        raise UsageError(f"{expected}, but it has no labels; expected {layout}")
    try:
        values = np.asarray(raw)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{expected}, but its labels do not form a list ({error}); expected {layout}") from None
    if values.shape != (count,):
        raise UsageError(f"{expected}, not labels of shape {list(values.shape)}; expected {layout}")
    if values.size and values.dtype.kind not in "iu":
        first = values.tolist()[0]
        raise UsageError(f"{expected}, not labels of type {type(first).__name__} (the first: {first!r}); "
                         f"expected {layout}")
    low, high = int(values.min(initial=0)), int(values.max(initial=0))
    if low < 0 or high >= num_classes:
        raise UsageError(f"{expected}, not labels from {low} to {high}; expected {layout}")
    return values.astype(np.int64)


def _read_pickle(path: Path, layout: str) -> dict[Any, Any]:
    """One official CIFAR pickle (a dict with bytes keys), or a UsageError naming the layout."""
    try:
        with path.open("rb") as file:
            entry = _ArrayUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, OSError) as error:
        raise UsageError(
            f"{path} is not a readable CIFAR python pickle ({type(error).__name__}: {error}); "
            f"re-extract the official archive to get {layout}"
        ) from None
    if not isinstance(entry, dict):
        raise UsageError(f"{path} does not hold a dict as the official CIFAR pickles do; expected {layout}")
    return entry


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays and bytes, and refuses every other global."""

    _allowed = frozenset({
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        # Pickles written before NumPy 2 name the same functions under numpy.core.
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)
