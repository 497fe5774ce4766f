"""Seeds for each epoch's randomness, derived from (seed, epoch, rank) and nothing else.

A run resumed at an epoch boundary must see exactly the batches an uninterrupted run sees, so
no loader carries random state from one epoch to the next: every random stream is re-seeded
at the start of an epoch from the run's ``--seed``, the epoch, the process rank and the
stream's purpose. NumPy's ``SeedSequence`` mixes these keys so that neighbouring epochs or
ranks get unrelated streams.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """What a random stream is used for; each gets its own seed so that one does not shift another."""

    ORDER = 1  # the epoch's permutation of the training set, shared by every rank
    AUGMENT = 2  # crops, flips, resized crops
    CONTRAST = 3  # contrastive positives and negatives
    WORKERS = 4  # the DataLoader's own generator (worker base seeds)
    HOLDOUT = 5  # the held-out validation split, fixed for the whole run


def derive_seed(*keys: int) -> int:
    """A 63-bit seed, a deterministic function of the integer ``keys`` (any sign, any size)."""
    entropy = [int(key) % 2**64 for key in keys]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1
