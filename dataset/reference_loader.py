"""The reference loader (``--loader torchvision``): one image at a time through torchvision transforms.

This is RepDistiller's pipeline (PIL image → RandomCrop(32, padding=4) → RandomHorizontalFlip
→ ToTensor → Normalize, in DataLoader workers) and the only path for ImageNet folders. It
yields the same ``Batch`` as the fast loader and visits the same samples in the same order.

Reproducibility with persistent workers: a worker lives across epochs, so seeding it once
(``worker_init_fn``) would make epoch e's crops depend on the epochs before it. Instead the
batch sampler hands every sample a seed drawn from (seed, epoch, rank), and the data set
seeds torch's random state with it around the transform. Augmentation therefore depends only
on (seed, epoch, rank, position in the epoch), not on the number of workers or on history.

The strong view (MLKD's second view, ``strong_transform``): the ordinary pipeline with
torchvision's AutoAugment inserted before ToTensor (the CIFAR-10 policy for in-memory sets,
the ImageNet policy for ImageNet folders), drawn after the ordinary view from the sample's
seeded stream, so that the ordinary view is the same with or without it. The fast loader
applies the same policy to whole batches (``dataset.tensor_loader.BatchAutoAugment``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from dataset.arrays import ImageArrays
from dataset.batch import Batch
from dataset.contrast import ContrastSampler
from dataset.seeding import Stream, derive_seed
from dataset.sharding import (
    batch_count,
    evaluation_positions,
    evaluation_share,
    split_batches,
    training_positions,
    training_share,
)

SampleKey = tuple[int, int | None]  # (position in the data set, augmentation seed or None)


def cifar_train_transform(
    mean: tuple[float, ...], std: tuple[float, ...], flip: bool = True
) -> transforms.Compose:
    """METHODS.md §3.1: RandomCrop(32, padding=4) → RandomHorizontalFlip (if ``flip``) → ToTensor → Normalize.

    ``flip=False`` for digits, where a mirrored image is another digit.
    """
    steps = [transforms.RandomCrop(32, padding=4)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def with_auto_augment(pipeline: transforms.Compose, policy: str) -> transforms.Compose:
    """``pipeline`` with torchvision's AutoAugment (``policy``: CIFAR10, IMAGENET) inserted before ToTensor."""
    steps = list(pipeline.transforms)
    at = next(i for i, step in enumerate(steps) if isinstance(step, transforms.ToTensor))
    steps.insert(at, transforms.AutoAugment(transforms.AutoAugmentPolicy[policy]))
    return transforms.Compose(steps)


def cifar_strong_transform(
    mean: tuple[float, ...], std: tuple[float, ...], flip: bool = True
) -> transforms.Compose:
    """The strong view: :func:`cifar_train_transform` with AutoAugment's CIFAR-10 policy after the flip."""
    return with_auto_augment(cifar_train_transform(mean, std, flip), "CIFAR10")


def cifar_test_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> transforms.Compose:
    """METHODS.md §3.1: ToTensor → Normalize."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


class ArrayImages(Dataset):
    """An in-memory split served as (PIL image, label), the way torchvision's CIFAR100 serves it."""

    def __init__(self, arrays: ImageArrays) -> None:
        self.images = np.ascontiguousarray(arrays.images.transpose(0, 2, 3, 1))
        self.targets = arrays.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, position: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[position]), int(self.targets[position])


class IndexedDataset(Dataset):
    """A view of ``source`` (any data set of (PIL image, label)) through ``positions``, transformed.

    ``dataset[(index, seed)]`` returns ``(image tensor, label, index)`` where ``index`` is the
    position in this view (what memory banks use) and ``seed`` fixes the transform's randomness;
    with a ``strong_transform``, ``(image tensor, label, index, strong image tensor)``.
    """

    def __init__(
        self,
        source: Dataset,
        transform: transforms.Compose,
        positions: np.ndarray | None = None,
        strong_transform: transforms.Compose | None = None,
    ) -> None:
        self.source = source
        self.transform = transform
        self.strong_transform = strong_transform
        self.positions = np.arange(len(source)) if positions is None else np.asarray(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: SampleKey) -> tuple:
        index, seed = key
        image, target = self.source[int(self.positions[index])]
        if seed is None:
            return self._sample(image, target, index)
        # Only the CPU generator: torch.manual_seed would also re-seed CUDA's, which fork_rng
        # with no devices does not restore.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self._sample(image, target, index)

    def _sample(self, image: Image.Image, target: int, index: int) -> tuple:
        """The transformed image (then its strong view, drawn after it, if asked for) with its label and index."""
        view = self.transform(image)
        if self.strong_transform is None:
            return view, target, index
        return view, target, index, self.strong_transform(image)


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """Batches of (position, augmentation seed): the shared sharding rule, seeds from (seed, epoch, rank)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        drop_last: bool,
        rank: int,
        world_size: int,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = drop_last and train
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def share(self) -> int:
        """Samples this rank sees per epoch."""
        if self.train:
            return training_share(self.num_samples, self.world_size)
        return evaluation_share(self.num_samples, self.rank, self.world_size)

    def __len__(self) -> int:
        return batch_count(self.share(), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        if not self.train:
            positions = evaluation_positions(self.num_samples, rank=self.rank, world_size=self.world_size)
            for batch in split_batches(positions, self.batch_size, drop_last=False):
                yield [(position, None) for position in batch.tolist()]
            return
        positions = training_positions(
            self.num_samples, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size
        )
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.seed, self.epoch, self.rank, Stream.AUGMENT))
        seeds = torch.randint(0, 2**62, (len(positions),), generator=generator)
        for batch, batch_seeds in zip(
            split_batches(positions, self.batch_size, self.drop_last), seeds.split(self.batch_size)
        ):
            yield list(zip(batch.tolist(), batch_seeds.tolist()))


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers restrict, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _seed_worker(worker_id: int) -> None:
    """Seed NumPy and ``random`` in a worker from its torch seed (for transforms that use them)."""
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class ReferenceLoader:
    """A DataLoader over an ``IndexedDataset`` that yields ``Batch`` objects and honours ``set_epoch``.

    Workers: ``num_workers`` capped at the CPUs available, persistent when there are any;
    pinned memory when the device is CUDA. Contrast indices are drawn after collation, for the
    whole batch at once, in the main process on ``device``.
    """

    def __init__(
        self,
        dataset: IndexedDataset,
        *,
        batch_size: int,
        device: torch.device,
        seed: int,
        train: bool,
        num_workers: int,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        contrast: ContrastSampler | None = None,
    ) -> None:
        self.seed = seed
        self.rank = rank
        self.contrast = contrast
        self.epoch = 0
        self.sampler = EpochBatchSampler(
            len(dataset),
            batch_size,
            train=train,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        workers = max(0, min(num_workers, available_cpus()))
        self.worker_generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=torch.device(device).type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=_seed_worker,
            generator=self.worker_generator,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Fix the randomness of the next pass: order, crops, flips and negatives of ``epoch``."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(self.epoch)
        self.worker_generator.manual_seed(derive_seed(self.seed, self.epoch, self.rank, Stream.WORKERS))

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (including wrap-around padding when sharded)."""
        return self.sampler.share()

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        generator = None
        if self.contrast is not None:
            generator = torch.Generator(device=self.contrast.device)
            generator.manual_seed(derive_seed(self.seed, self.epoch, self.rank, Stream.CONTRAST))
        for images, targets, indices, *strong in self.loader:
            contrast_indices = None if generator is None else self.contrast.sample(indices, generator)
            yield Batch(images, targets, indices, contrast_indices, strong[0] if strong else None)
