"""Which samples a process sees in an epoch, in which order, cut into batches.

Training (``DistributedSampler``'s rule): one permutation of the whole training set, the same
on every rank because it is seeded by (seed, epoch) only, padded by wrap-around to a multiple
of the world size and strided by rank, so that every rank gets the same number of samples and
therefore the same number of batches (unequal counts would hang the gradient all-reduce).
Evaluation: the set in its stored order, strided by rank without padding, so that per-rank
sums and counts add up to the exact metric over the whole set (a rank may have one batch
fewer; evaluation has no collective inside the loop).
"""

from __future__ import annotations

import math

import torch

from dataset.seeding import Stream, derive_seed


def training_positions(
    num_samples: int, *, seed: int, epoch: int, rank: int, world_size: int
) -> torch.Tensor:
    """This rank's training-set positions for ``epoch``, shuffled (LongTensor on the CPU)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, Stream.ORDER))
    order = torch.randperm(num_samples, generator=generator)
    total = training_share(num_samples, world_size) * world_size
    if total > num_samples:
        order = order.repeat(math.ceil(total / num_samples))[:total]
    return order[rank::world_size]


def evaluation_positions(num_samples: int, *, rank: int, world_size: int) -> torch.Tensor:
    """This rank's positions of an evaluation set, in stored order, unpadded (LongTensor)."""
    return torch.arange(rank, num_samples, world_size)


def training_share(num_samples: int, world_size: int) -> int:
    """Samples each rank trains on per epoch (the set padded to a multiple of ``world_size``)."""
    return math.ceil(num_samples / world_size)


def evaluation_share(num_samples: int, rank: int, world_size: int) -> int:
    """Samples of an evaluation set that ``rank`` sees."""
    return len(range(rank, num_samples, world_size))


def batch_count(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Batches that ``num_samples`` make, with or without the last partial batch."""
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)


def split_batches(positions: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
    """Cut ``positions`` into consecutive batches, the last one partial unless ``drop_last``."""
    return list(positions.split(batch_size))[: batch_count(len(positions), batch_size, drop_last)]


class ShardedPasses:
    """What the in-process loaders share: each pass keyed by its epoch, and this rank's share of it.

    A subclass sets ``batch_size``, ``train``, ``drop_last`` (honoured for training only),
    ``rank``, ``world_size`` and ``epoch``, and says how many samples its split holds.
    """

    batch_size: int
    train: bool
    drop_last: bool
    rank: int
    world_size: int
    epoch: int = 0

    @property
    def split_size(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Fix the randomness of the next pass: order, crops, flips and negatives of ``epoch``."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per pass (including wrap-around padding when sharded)."""
        if self.train:
            return training_share(self.split_size, self.world_size)
        return evaluation_share(self.split_size, self.rank, self.world_size)

    def __len__(self) -> int:
        return batch_count(self.num_samples, self.batch_size, self.train and self.drop_last)
