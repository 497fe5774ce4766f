"""``build``: from the parsed flags to the train, test and (optional) validation loaders.

Every loader is an ``EpochLoader``: it yields ``Batch`` objects, ``len()`` is its batches per
epoch, and ``set_epoch(e)`` (called before each pass) fixes that pass's randomness as a
function of (seed, epoch, rank) alone, so a run resumed at an epoch boundary sees the same
batches as one that never stopped. The loaders are reproducible with or without
``--deterministic`` (which only concerns the network's kernels, set by ``helper``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from dataset.arrays import ImageArrays, InMemoryDataset
from dataset.batch import Batch, DataNeeds
from dataset.contrast import ContrastSampler
from dataset.splits import stratified_holdout
from dataset.tensor_loader import TensorLoader
from errors import UsageError

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

# Readers and pipelines are imported when a run uses them: scikit-learn (digits), torchvision's
# PIL pipeline and DALI cost seconds of start-up that a CIFAR run on the fast loader never needs.
_IN_MEMORY = {
    "cifar100": ("dataset.cifar", "load_cifar100"),
    "cifar10": ("dataset.cifar", "load_cifar10"),
    "digits": ("dataset.digits", "load_digits_dataset"),
}


def _load_in_memory(dataset: str, data_root: Path) -> InMemoryDataset:
    module, function = _IN_MEMORY[dataset]
    return getattr(importlib.import_module(module), function)(data_root)


class EpochLoader(Protocol):
    """What the training loop needs of a loader."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class DataBundle:
    """The loaders of a run and the facts about its training set that methods need.

    ``num_train`` is the size of the training set actually trained on (after ``--val_split``
    holds images out): memory banks have that many rows and batch ``indices`` lie in
    ``[0, num_train)``. ``train_targets[i]`` is the label of training index ``i``.
    """

    train: EpochLoader
    test: EpochLoader
    val: EpochLoader | None
    num_classes: int
    num_train: int
    image_size: int
    train_targets: torch.Tensor


def build(
    dataset: str,
    data_root: str | Path,
    batch_size: int,
    needs: DataNeeds,
    device: torch.device | str,
    *,
    seed: int = 0,
    num_workers: int = 0,
    loader: str = "fast",
    dali: str | None = None,
    val_split: float = 0.0,
    bad_images: str = "refuse",
    rank: int = 0,
    world_size: int = 1,
) -> DataBundle:
    """Load ``dataset`` from ``data_root`` and build its loaders for this process.

    ``batch_size`` is per process; ``needs`` says whether the training loader must draw
    contrast indices, drop its last partial batch and serve a second, strongly augmented view;
    ``loader`` picks the CIFAR/digits pipeline and ``dali`` (``"cpu"``/``"gpu"``) the ImageNet
    one (which serves no strong view); ``val_split`` holds out that fraction of the training set.
    The values are those the options layer validated; a missing or malformed data folder raises
    ``UsageError``.
    """
    device = torch.device(device)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} and world size {world_size} do not describe a process group")
    shard = {"device": device, "seed": seed, "rank": rank, "world_size": world_size}
    if dataset == "imagenet":
        return _build_imagenet(Path(data_root).expanduser(), batch_size, needs, shard, num_workers, dali,
                               val_split, bad_images)

    data = _load_in_memory(dataset, Path(data_root).expanduser())
    train, held_out = data.train, None
    if val_split > 0:
        kept, held = stratified_holdout(data.train.targets, val_split, seed)
        train, held_out = data.train.subset(kept), data.train.subset(held)
    check_full_batches(batch_size, len(train), world_size, needs.drop_last)
    contrast = _contrast_sampler(needs, train.targets, device)

    def make_loader(arrays: ImageArrays, is_train: bool) -> EpochLoader:
        common = {**shard, "batch_size": batch_size, "train": is_train, "drop_last": needs.drop_last and is_train,
                  "contrast": contrast if is_train else None}
        strong_view = needs.strong_view and is_train
        if loader == "fast":
            return TensorLoader(arrays, mean=data.mean, std=data.std, flip=data.flip, strong_view=strong_view,
                                **common)
        from dataset.reference_loader import (
            ArrayImages,
            IndexedDataset,
            ReferenceLoader,
            cifar_strong_transform,
            cifar_test_transform,
            cifar_train_transform,
        )

        transform = (
            cifar_train_transform(data.mean, data.std, data.flip)
            if is_train
            else cifar_test_transform(data.mean, data.std)
        )
        strong = cifar_strong_transform(data.mean, data.std, data.flip) if strong_view else None
        return ReferenceLoader(IndexedDataset(ArrayImages(arrays), transform, strong_transform=strong),
                               num_workers=num_workers, **common)

    return DataBundle(
        train=make_loader(train, True),
        test=make_loader(data.test, False),
        val=None if held_out is None else make_loader(held_out, False),
        num_classes=data.num_classes,
        num_train=len(train),
        image_size=32,
        train_targets=torch.from_numpy(train.targets.astype(np.int64)),
    )


def _build_imagenet(
    data_root: Path,
    batch_size: int,
    needs: DataNeeds,
    shard: dict,
    num_workers: int,
    dali: str | None,
    val_split: float,
    bad_images: str,
) -> DataBundle:
    """ImageNet through the reference loader, or through DALI with ``dali="cpu"|"gpu"`` (``loader`` does not apply)."""
    if needs.strong_view and dali is not None:
        raise UsageError("--dali cannot serve the second, strongly augmented view this method trains on; "
                         "drop --dali to use the reference ImageNet loader")
    from dataset.dali import DaliLoader
    from dataset.imagenet import imagenet_train_transform, imagenet_val_transform, load_imagenet_folders
    from dataset.reference_loader import IndexedDataset, ReferenceLoader, with_auto_augment

    train_folder, val_folder = load_imagenet_folders(data_root, bad_images)
    targets = np.asarray(train_folder.targets, dtype=np.int64)
    kept, held = np.arange(len(targets)), None
    if val_split > 0:
        kept, held = stratified_holdout(targets, val_split, shard["seed"])
    check_full_batches(batch_size, len(kept), shard["world_size"], needs.drop_last)
    contrast = _contrast_sampler(needs, targets[kept], shard["device"])
    common = {**shard, "batch_size": batch_size, "num_workers": num_workers}

    def make_loader(folder: ImageFolder, positions: np.ndarray | None, is_train: bool) -> EpochLoader:
        role = {"train": is_train, "drop_last": needs.drop_last and is_train,
                "contrast": contrast if is_train else None}
        if dali is not None:
            return DaliLoader(folder.samples, positions, mode=dali, **common, **role)
        transform = imagenet_train_transform() if is_train else imagenet_val_transform()
        strong = with_auto_augment(transform, "IMAGENET") if is_train and needs.strong_view else None
        return ReferenceLoader(IndexedDataset(folder, transform, positions, strong), **common, **role)

    train = make_loader(train_folder, kept, True)
    test = make_loader(val_folder, None, False)
    val = None if held is None else make_loader(train_folder, held, False)
    return DataBundle(
        train=train,
        test=test,
        val=val,
        num_classes=len(train_folder.classes),
        num_train=len(kept),
        image_size=224,
        train_targets=torch.from_numpy(targets[kept]),
    )


def _contrast_sampler(needs: DataNeeds, targets: np.ndarray, device: torch.device) -> ContrastSampler | None:
    if needs.contrast_k <= 0:
        return None
    return ContrastSampler(torch.from_numpy(np.asarray(targets, dtype=np.int64)), needs.contrast_k,
                           needs.contrast_mode, device)


def check_full_batches(batch_size: int, num_train: int, world_size: int, drop_last: bool = True) -> None:
    """Refuse a batch size no process can fill, for a method that trains on full batches only."""
    per_rank = -(-num_train // world_size)
    if drop_last and per_rank < batch_size:
        raise UsageError(
            f"--batch_size {batch_size} exceeds the {per_rank} training images per process, and this "
            "method trains on full batches only; use a smaller --batch_size"
        )
