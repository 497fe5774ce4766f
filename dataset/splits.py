"""The held-out validation split (``--val_split``): tuning without touching the test set.

torchdistill's practice: hyper-parameters are chosen on a held-out part of the training set,
and the test set is looked at once. The split is stratified by class and fixed for the whole
run (seeded from ``--seed`` alone, not the epoch), so a resumed run holds out the same images.
"""

from __future__ import annotations

import numpy as np

from dataset.seeding import Stream, derive_seed
from errors import UsageError


def stratified_holdout(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(targets)-1`` into (kept for training, held out), both sorted.

    Each class holds out ``round(fraction * class size)`` of its samples, but always keeps at
    least one for training.
    """
    generator = np.random.default_rng(derive_seed(seed, Stream.HOLDOUT))
    held_out = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        count = min(int(np.floor(fraction * len(members) + 0.5)), len(members) - 1)
        held_out.append(generator.permutation(members)[:count])
    held = np.sort(np.concatenate(held_out)).astype(np.int64)
    if len(held) == 0:
        raise UsageError(
            f"--val_split {fraction} holds out no image of this training set ({len(targets)} images); "
            "use a larger fraction or --val_split 0"
        )
    mask = np.ones(len(targets), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held
