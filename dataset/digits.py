"""The embedded default data set: scikit-learn's 8x8 handwritten digits, made CIFAR-shaped.

It ships inside the scikit-learn wheel, so the quickstart and the tests run with nothing
downloaded. The 1797 images (values 0..16) are scaled to uint8 0..255, upsampled to 32x32
(bilinear) and repeated to three channels, so every CIFAR network runs on them unchanged.
The train/test split (80/20, stratified) is fixed with seed 0, independently of ``--seed``,
so that every run of every method is evaluated on the same 360 test images. Normalisation uses
the training split's per-channel mean and std. Augmentation is the CIFAR random crop **without
horizontal flip**: a mirrored digit is a different digit (or none).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from dataset.arrays import ImageArrays, InMemoryDataset

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def load_digits_dataset(data_root: object = None) -> InMemoryDataset:
    """The digits as 32x32x3 uint8 images: 1437 for training, 360 for testing, 10 classes.

    ``data_root`` is accepted like the other readers' and ignored: the digits ship inside
    scikit-learn.
    """
    return _digits()


@lru_cache(maxsize=1)
def _digits() -> InMemoryDataset:
    digits = load_digits()
    images = _to_cifar_shape(digits.images)
    targets = digits.target.astype(np.int64)
    train_positions, test_positions = train_test_split(
        np.arange(len(targets)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=targets,
        random_state=DIGITS_SPLIT_SEED,
    )
    train = ImageArrays(images[np.sort(train_positions)], targets[np.sort(train_positions)])
    test = ImageArrays(images[np.sort(test_positions)], targets[np.sort(test_positions)])
    scaled = train.images.astype(np.float64) / 255
    mean = tuple(float(value) for value in scaled.mean(axis=(0, 2, 3)))
    std = tuple(float(value) for value in scaled.std(axis=(0, 2, 3)))
    return InMemoryDataset(train, test, 10, mean, std, flip=False)


def _to_cifar_shape(images: np.ndarray) -> np.ndarray:
    """8x8 values 0..16 -> uint8 [N, 3, 32, 32]: scale to 0..255, bilinear upsampling, three channels."""
    scaled = np.rint(images * (255 / 16)).astype(np.uint8)
    small = torch.from_numpy(scaled).float().unsqueeze(1)
    large = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    large = large.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    return np.ascontiguousarray(large.numpy())
