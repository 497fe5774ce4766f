"""In-memory image sets: CIFAR-100, CIFAR-10 and the embedded digits fit in RAM many times over."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageArrays:
    """One split held in memory: ``images`` uint8 ``[N, 3, H, W]``, ``targets`` int64 ``[N]``."""

    images: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, positions: np.ndarray) -> ImageArrays:
        """The samples at ``positions``, renumbered 0..len(positions)-1 in that order."""
        return ImageArrays(np.ascontiguousarray(self.images[positions]), self.targets[positions].copy())


@dataclass(frozen=True)
class InMemoryDataset:
    """Everything a loader needs about an in-memory data set.

    ``mean``/``std`` are the per-channel normalisation constants on the [0, 1] scale;
    ``flip`` says whether horizontal flips are a valid augmentation (not for digits).
    """

    train: ImageArrays
    test: ImageArrays
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool
