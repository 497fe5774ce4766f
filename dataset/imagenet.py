"""ImageNet from class folders through torchvision (METHODS.md §3.5).

Layout: ``<data_root>/train/<wnid>/*.JPEG`` and ``<data_root>/val/<wnid>/*.JPEG`` (the
validation images sorted into class folders), or the same under ``<data_root>/imagenet/`` as
SimKD lays it out. Train: RandomResizedCrop(224) (scale 0.08–1, ratio 3/4–4/3) →
RandomHorizontalFlip → ToTensor → Normalize; val: Resize(256) → CenterCrop(224) → ToTensor →
Normalize, with the usual ImageNet mean and std.

What the folders must be, checked before anything trains:

* Hidden entries (a name starting with ``.``: ``.ipynb_checkpoints``, macOS ``._*`` files) are
  neither classes nor images, at any depth below ``train/`` and ``val/``.
* ``train/`` and ``val/`` hold the same class folders; their number is the number of classes.
* Every image file is scanned up front for what an unreadable file shows without decoding:
  its signature (the first bytes) and, for JPEG and PNG, the end marker among its last bytes.
  Reading two small pieces per file in a thread pool keeps this to seconds for ImageNet's
  1.3 million files. ``bad_images="refuse"`` turns a failing file into a usage error;
  ``"skip"`` leaves the failing files out of the samples (and so out of DALI's file list) and
  says so once on stderr.
* A file that passes the scan but still fails to decode raises ``UnreadableImage``, a usage
  error naming the file, from the data loader (also from its worker processes).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from dataset.catalog import BAD_IMAGE_CHOICES
from dataset.reference_loader import available_cpus
from errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_LAYOUT = (
    "<data_root>/train/<class>/<image> and <data_root>/val/<class>/<image> "
    "(or <data_root>/imagenet/train|val)"
)

SCAN_HEAD_BYTES = 16
# FF D9 cannot occur inside JPEG's entropy-coded data (an FF there is followed by 00 or a
# restart marker), so a file cut inside its image data shows none in its tail; looking at the
# last KiB rather than the last two bytes accepts files with a short trailer after the marker.
SCAN_TAIL_BYTES = 1024
SCAN_CHUNK = 512
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
# Formats both PIL and DALI decode, recognised by their first bytes only.
OTHER_SIGNATURES = (b"BM", b"II*\x00", b"MM\x00*")
PNM_MAGIC = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")
# What PIL raises for a file it cannot decode (an unknown, truncated or malformed image).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, IndexError, struct.error, Image.DecompressionBombError)


class UnreadableImage(UsageError):
    """An image file that does not decode: one line naming the file.

    Raised in a DataLoader worker, it is re-raised in the main process as
    ``UnreadableImage(<the worker's traceback>)``; the constructor then keeps only the
    traceback's last line, the original message, so the error stays one line.
    """

    def __init__(self, message: str) -> None:
        if "\n" in message.strip():
            last = message.strip().splitlines()[-1]
            _, marker, original = last.partition(f"{type(self).__name__}: ")
            message = original if marker else last
        super().__init__(message)


def imagenet_train_transform() -> transforms.Compose:
    """RandomResizedCrop(224) → RandomHorizontalFlip → ToTensor → Normalize."""
    return transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def imagenet_val_transform() -> transforms.Compose:
    """Resize(256) → CenterCrop(224) → ToTensor → Normalize."""
    return transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


# --- reading one file ---------------------------------------------------------------------------


def load_rgb(path: str) -> Image.Image:
    """The image at ``path`` decoded to RGB, or ``UnreadableImage`` naming the file."""
    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except DECODE_ERRORS as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableImage(f"cannot decode image {path} ({reason}); remove or replace the file") from None


def image_file_problem(path: str) -> str | None:
    """Why the file at ``path`` cannot be a readable image, from its first and last bytes; None if it can."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            head = os.pread(descriptor, SCAN_HEAD_BYTES, 0)
            size = os.fstat(descriptor).st_size
            tail = os.pread(descriptor, SCAN_TAIL_BYTES, max(0, size - SCAN_TAIL_BYTES))
        finally:
            os.close(descriptor)
    except OSError as error:
        return f"unreadable ({error.strerror or type(error).__name__})"
    return _content_problem(head, tail)


def _content_problem(head: bytes, tail: bytes) -> str | None:
    """The verdict of ``image_file_problem`` on a file's first and last bytes."""
    if not head:
        return "an empty file"
    if head.startswith(JPEG_START):
        return None if JPEG_END in tail else "a JPEG without its end-of-image marker FF D9 (truncated)"
    if head.startswith(PNG_SIGNATURE):
        return None if PNG_END in tail else "a PNG without its IEND chunk (truncated)"
    if head.startswith(OTHER_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    if head[:2] in PNM_MAGIC and head[2:3].isspace():
        return None
    return "not an image (no JPEG, PNG, BMP, TIFF, WebP or PNM signature)"


def scan_image_files(paths: Sequence[str], threads: int | None = None) -> list[tuple[str, str]]:
    """``(path, problem)`` for every file of ``paths`` that ``image_file_problem`` rejects, in order."""
    chunks = [paths[start : start + SCAN_CHUNK] for start in range(0, len(paths), SCAN_CHUNK)]
    workers = threads or min(32, 4 * available_cpus())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [bad for found in pool.map(_scan_chunk, chunks) for bad in found]


def _scan_chunk(paths: Sequence[str]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        problem = image_file_problem(path)
        if problem is not None:
            found.append((path, problem))
    return found


# --- the class folders --------------------------------------------------------------------------


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with a dot), and so no class or image."""
    return name.startswith(".")


def class_names(root: Path) -> list[str]:
    """The sorted names of the visible sub-folders of ``root``: its classes."""
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not is_hidden(entry.name))


def _visible_walk(folder: str) -> Iterator[tuple[str, list[str]]]:
    """``(folder, visible file names)`` below ``folder``, never entering hidden folders."""
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not is_hidden(name)]
        yield root, [name for name in files if not is_hidden(name)]


class ClassFolders(ImageFolder):
    """An ``ImageFolder`` that ignores hidden entries and decodes with ``load_rgb``.

    Samples are listed in torchvision's order (classes sorted, then walk roots and file names
    sorted), so indices match ``ImageFolder``'s on a folder without hidden entries.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), loader=load_rgb)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = class_names(Path(directory))
        if not classes:
            raise UsageError(f"no ImageNet images in {directory} (it has no class folders); "
                             f"expected {IMAGENET_LAYOUT}")
        return classes, {name: index for index, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        """``(path, class)`` of every visible file with an image extension below each class folder."""
        extensions = extensions or IMG_EXTENSIONS
        samples, empty = [], []
        for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
            found = [(os.path.join(root, file), label)
                     for root, files in sorted(_visible_walk(os.path.join(directory, name)))
                     for file in sorted(files) if file.lower().endswith(extensions)]
            samples += found
            if not found:
                empty.append(name)
        if empty and not allow_empty:
            raise UsageError(f"no ImageNet images in the class folders {_names(empty)} of {directory}; "
                             f"expected {IMAGENET_LAYOUT}")
        return samples

    def leave_out(self, paths: set[str]) -> None:
        """Drop the samples whose file is in ``paths``; a usage error if none is left."""
        self.samples = [sample for sample in self.samples if sample[0] not in paths]
        self.imgs = self.samples
        self.targets = [label for _, label in self.samples]
        if not self.samples:
            raise UsageError(f"no readable ImageNet image is left in {self.root}; expected {IMAGENET_LAYOUT}")


class ImageNetFolders(NamedTuple):
    """The two splits (unpack as ``train, val``) and the number of classes they share."""

    train: ClassFolders
    val: ClassFolders

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def find_imagenet_folders(data_root: Path) -> tuple[Path, Path]:
    """The (train, val) class-folder roots under ``data_root`` or ``data_root/imagenet``."""
    for root in (data_root, data_root / "imagenet"):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root / "train", root / "val"
    raise UsageError(
        f"ImageNet not found under --data_root {data_root}: expected class folders {IMAGENET_LAYOUT}"
    )


def load_imagenet_folders(data_root: Path, bad_images: str = "refuse") -> ImageNetFolders:
    """Both splits as untransformed data sets of (PIL image, label), checked as the module docstring says.

    ``bad_images``: ``"refuse"`` (a usage error if any image file fails the scan) or ``"skip"``
    (leave such files out, with one warning on stderr).
    """
    if bad_images not in BAD_IMAGE_CHOICES:
        raise UsageError(f"--bad_images {bad_images!r} is not known; use refuse or skip")
    train_root, val_root = find_imagenet_folders(data_root)
    _check_same_classes(train_root, val_root)
    folders = ImageNetFolders(ClassFolders(train_root), ClassFolders(val_root))
    _handle_bad_images(folders, bad_images)
    return folders


def _check_same_classes(train_root: Path, val_root: Path) -> None:
    train, val = set(class_names(train_root)), set(class_names(val_root))
    if train == val:
        return
    differences = [f"{len(names)} only in {root}: {_names(sorted(names))}"
                   for names, root in ((train - val, train_root), (val - train, val_root)) if names]
    raise UsageError(f"the class folders of {train_root} and {val_root} differ ({'; '.join(differences)}); "
                     f"both must hold the same classes, as {IMAGENET_LAYOUT}")


def _names(names: list[str], shown: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``."""
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed} and {len(names) - shown} more"


def _handle_bad_images(folders: ImageNetFolders, bad_images: str) -> None:
    """Scan every image file of both splits; refuse, or leave out and warn, as ``bad_images`` says."""
    paths = [path for folder in folders for path, _ in folder.samples]
    bad = scan_image_files(paths)
    if not bad:
        return
    first, problem = bad[0]
    summary = f"{len(bad)} of the {len(paths)} ImageNet image files cannot be read (the first: {first} is {problem})"
    if bad_images == "refuse":
        raise UsageError(f"{summary}; replace or remove them, or pass --bad_images skip to leave them out")
    left_out = {path for path, _ in bad}
    for folder in folders:
        folder.leave_out(left_out)
    _warn_once(f"warning: {summary}; --bad_images skip leaves them out")


def _warn_once(message: str) -> None:
    """Print ``message`` on stderr in the first process only (every torchrun process loads the folders)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)
