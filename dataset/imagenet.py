"""ImageNet from class folders through torchvision (METHODS.md §3.5).

Layout: ``<data_root>/train/<wnid>/*.JPEG`` and ``<data_root>/val/<wnid>/*.JPEG`` (the
validation images sorted into class folders), or the same under ``<data_root>/imagenet/`` as
SimKD lays it out. Train: RandomResizedCrop(224) (scale 0.08–1, ratio 3/4–4/3) →
RandomHorizontalFlip → ToTensor → Normalize; val: Resize(256) → CenterCrop(224) → ToTensor →
Normalize, with the usual ImageNet mean and std.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms
from torchvision.datasets import ImageFolder

from helper.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_LAYOUT = (
    "<data_root>/train/<class>/<image> and <data_root>/val/<class>/<image> "
    "(or <data_root>/imagenet/train|val)"
)


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


def find_imagenet_folders(data_root: Path) -> tuple[Path, Path]:
    """The (train, val) class-folder roots under ``data_root`` or ``data_root/imagenet``."""
    for root in (data_root, data_root / "imagenet"):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root / "train", root / "val"
    raise UsageError(
        f"ImageNet not found under --data_root {data_root}: expected class folders {IMAGENET_LAYOUT}"
    )


def load_imagenet_folders(data_root: Path) -> tuple[ImageFolder, ImageFolder]:
    """Both splits as untransformed ``ImageFolder`` data sets of (PIL image, label), with matching classes."""
    train_root, val_root = find_imagenet_folders(data_root)
    train, val = _image_folder(train_root), _image_folder(val_root)
    if train.classes != val.classes:
        raise UsageError(
            f"the class folders of {train_root} ({len(train.classes)}) and {val_root} ({len(val.classes)}) "
            f"differ; both must hold the same classes, as {IMAGENET_LAYOUT}"
        )
    return train, val


def _image_folder(root: Path) -> ImageFolder:
    try:
        return ImageFolder(str(root))
    except (FileNotFoundError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"no ImageNet images in {root} ({message}); expected {IMAGENET_LAYOUT}") from None
