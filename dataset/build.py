"""``build``: from the parsed flags to the train, test and (optional) validation loaders.

Every loader is an ``EpochLoader``: it yields ``Batch`` objects, ``len()`` is its batches per
epoch, and ``set_epoch(e)`` (called before each pass) fixes that pass's randomness as a
function of (seed, epoch, rank) alone, so a run resumed at an epoch boundary sees the same
batches as one that never stopped. The loaders are reproducible with or without
``--deterministic`` (which only concerns the network's kernels, set by ``helper``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torchvision.datasets import ImageFolder

from dataset.arrays import ImageArrays, InMemoryDataset
from dataset.batch import Batch, DataNeeds
from dataset.cifar import load_cifar10, load_cifar100
from dataset.contrast import ContrastSampler
from dataset.dali import DaliLoader
from dataset.digits import load_digits_dataset
from dataset.imagenet import imagenet_train_transform, imagenet_val_transform, load_imagenet_folders
from dataset.reference_loader import (
    ArrayImages,
    IndexedDataset,
    ReferenceLoader,
    cifar_test_transform,
    cifar_train_transform,
)
from dataset.splits import stratified_holdout
from dataset.tensor_loader import TensorLoader
from helper.errors import UsageError

DATASETS = ("cifar100", "cifar10", "imagenet", "digits")
LOADERS = ("fast", "torchvision")
_IN_MEMORY = {
    "cifar100": load_cifar100,
    "cifar10": load_cifar10,
    "digits": lambda data_root: load_digits_dataset(),
}


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
    opt: argparse.Namespace,
    needs: DataNeeds,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> DataBundle:
    """Load ``opt.dataset`` from ``opt.data_root`` and build its loaders for this process.

    Reads ``dataset, data_root, batch_size`` (per process) ``, num_workers, loader, seed,
    val_split``; ``needs`` says whether the training loader must draw contrast indices and
    drop its last partial batch. Raises ``UsageError`` for a missing or malformed data folder
    and for bad values.
    """
    device = torch.device(device)
    _check(opt, needs, rank, world_size)
    data_root = Path(opt.data_root).expanduser()
    val_split = float(getattr(opt, "val_split", 0.0) or 0.0)
    if opt.dataset == "imagenet":
        return _build_imagenet(opt, needs, device, rank, world_size, data_root, val_split)

    data: InMemoryDataset = _IN_MEMORY[opt.dataset](data_root)
    train, held_out = data.train, None
    if val_split > 0:
        kept, held = stratified_holdout(data.train.targets, val_split, opt.seed)
        train, held_out = data.train.subset(kept), data.train.subset(held)
    _check_batches(opt.batch_size, len(train), needs.drop_last, world_size)
    contrast = _contrast_sampler(needs, train.targets, device)
    fast = getattr(opt, "loader", "fast") == "fast"

    def loader(arrays: ImageArrays, is_train: bool) -> EpochLoader:
        common = {
            "batch_size": opt.batch_size,
            "device": device,
            "seed": opt.seed,
            "train": is_train,
            "drop_last": needs.drop_last and is_train,
            "rank": rank,
            "world_size": world_size,
            "contrast": contrast if is_train else None,
        }
        if fast:
            return TensorLoader(arrays, mean=data.mean, std=data.std, flip=data.flip, **common)
        transform = (
            cifar_train_transform(data.mean, data.std, data.flip)
            if is_train
            else cifar_test_transform(data.mean, data.std)
        )
        dataset = IndexedDataset(ArrayImages(arrays), transform)
        return ReferenceLoader(dataset, num_workers=getattr(opt, "num_workers", 0), **common)

    return DataBundle(
        train=loader(train, True),
        test=loader(data.test, False),
        val=None if held_out is None else loader(held_out, False),
        num_classes=data.num_classes,
        num_train=len(train),
        image_size=32,
        train_targets=torch.from_numpy(train.targets.astype(np.int64)),
    )


def _build_imagenet(
    opt: argparse.Namespace,
    needs: DataNeeds,
    device: torch.device,
    rank: int,
    world_size: int,
    data_root: Path,
    val_split: float,
) -> DataBundle:
    """ImageNet through the reference loader, or through DALI with ``--dali cpu|gpu`` (``--loader`` does not apply)."""
    train_folder, val_folder = load_imagenet_folders(data_root)
    targets = np.asarray(train_folder.targets, dtype=np.int64)
    kept, held = np.arange(len(targets)), None
    if val_split > 0:
        kept, held = stratified_holdout(targets, val_split, opt.seed)
    _check_batches(opt.batch_size, len(kept), needs.drop_last, world_size)
    contrast = _contrast_sampler(needs, targets[kept], device)
    dali_mode = getattr(opt, "dali", None)
    common = {
        "batch_size": opt.batch_size,
        "device": device,
        "seed": opt.seed,
        "num_workers": getattr(opt, "num_workers", 0),
        "rank": rank,
        "world_size": world_size,
    }

    def loader(folder: ImageFolder, positions: np.ndarray | None, is_train: bool) -> EpochLoader:
        role = {"train": is_train, "drop_last": needs.drop_last and is_train,
                "contrast": contrast if is_train else None}
        if dali_mode is not None:
            return DaliLoader(folder.samples, positions, mode=dali_mode, **common, **role)
        transform = imagenet_train_transform() if is_train else imagenet_val_transform()
        return ReferenceLoader(IndexedDataset(folder, transform, positions), **common, **role)

    train = loader(train_folder, kept, True)
    test = loader(val_folder, None, False)
    val = None if held is None else loader(train_folder, held, False)
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


def _check(opt: argparse.Namespace, needs: DataNeeds, rank: int, world_size: int) -> None:
    """One clear line for every bad value, before anything is read."""
    if opt.dataset not in DATASETS:
        raise UsageError(f"--dataset {opt.dataset!r} is not known; use one of {', '.join(DATASETS)}")
    loader = getattr(opt, "loader", "fast")
    if loader not in LOADERS:
        raise UsageError(f"--loader {loader!r} is not known; use one of {', '.join(LOADERS)}")
    if int(opt.batch_size) < 1:
        raise UsageError(f"--batch_size must be a positive integer, not {opt.batch_size}")
    if int(getattr(opt, "num_workers", 0)) < 0:
        raise UsageError(f"--num_workers must be 0 or more, not {opt.num_workers}")
    val_split = float(getattr(opt, "val_split", 0.0) or 0.0)
    if not 0.0 <= val_split < 1.0:
        raise UsageError(f"--val_split must be a fraction in [0, 1) (0: none), not {val_split}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} and world size {world_size} do not describe a process group")
    if needs.contrast_mode not in ("exact", "relax"):
        raise UsageError(f"--mode {needs.contrast_mode!r} is not a contrast mode; use exact or relax")


def _check_batches(batch_size: int, num_train: int, drop_last: bool, world_size: int) -> None:
    per_rank = -(-num_train // world_size)
    if drop_last and per_rank < batch_size:
        raise UsageError(
            f"--batch_size {batch_size} exceeds the {per_rank} training images per process, and this "
            "method trains on full batches only; use a smaller --batch_size"
        )
