"""The fast loader: a whole in-memory split as one uint8 tensor on the device, batch-wise augmentation.

A per-image PIL pipeline spends most of a CIFAR epoch in Python; here the split lives on the
training device (the GPU when there is one, ~150 MB for CIFAR-100) and each batch is cropped,
flipped and normalised with a handful of tensor operations. The operations are the
reference pipeline's, RandomCrop(32, padding=4) (zero padding) → RandomHorizontalFlip(0.5) →
ToTensor → Normalize, with the same distributions and, for the same crop and flip, bit-identical
output (``crop_and_flip`` and ``normalize`` are exposed so tests can check it). The random
streams are torch generators on the device, re-seeded from (seed, epoch, rank) by ``set_epoch``.

The strong view (``strong_view=True``, MLKD): a second crop and flip, drawn from a stream of
its own, then torchvision's AutoAugment (CIFAR-10 policy) with every image drawing its own
sub-policy, application coins and signs. :class:`BatchAutoAugment` applies it to the whole
batch by grouping the images that drew the same operation and magnitude, using the very
operations and policy table of ``torchvision.transforms.AutoAugment``, which the reference
loader applies image by image to PIL images. The two loaders therefore draw from the same
distribution; for the same draws the pixels agree up to the rounding of the PIL and tensor
kernels (under one grey level on average). The strong view's streams are its own (its crops
and flips on the device, its policy draws on the CPU), so the ordinary view is the same with
or without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dataset.arrays import ImageArrays
from dataset.batch import Batch
from dataset.contrast import ContrastSampler
from dataset.seeding import Stream, derive_seed
from dataset.sharding import (
    ShardedPasses,
    evaluation_positions,
    split_batches,
    training_positions,
)

CROP_PADDING = 4
STRONG_VIEW = 1  # keys appended to the AUGMENT stream's for the strong view's two streams


def draw_crop_flip(
    batch_size: int, generator: torch.Generator, padding: int = CROP_PADDING, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets (uniform in [0, 2·padding]²) and flip flags (rate 0.5, or none).

    Offsets are positions in the zero-padded image, as ``RandomCrop(padding=...)`` draws them.
    """
    device = generator.device
    offsets = torch.randint(0, 2 * padding + 1, (2, batch_size), generator=generator, device=device)
    if flip:
        flips = torch.rand(batch_size, generator=generator, device=device) < 0.5
    else:
        flips = torch.zeros(batch_size, dtype=torch.bool, device=device)
    return offsets[0], offsets[1], flips


def crop_and_flip(
    images: torch.Tensor,
    offsets_y: torch.Tensor,
    offsets_x: torch.Tensor,
    flips: torch.Tensor,
    padding: int = CROP_PADDING,
) -> torch.Tensor:
    """Crop each image of ``[B, C, H, W]`` at its offset in its zero-padded copy, mirror the flagged ones.

    Equals torchvision's ``pad(padding) → crop(offset_y, offset_x, H, W) → hflip if flagged``
    image by image, done as one gather over the flattened padded images.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded_width = width + 2 * padding
    padded = F.pad(images, (padding, padding, padding, padding)).flatten(2)
    rows = offsets_y.unsqueeze(1) + torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    columns = torch.where(flips.unsqueeze(1), width - 1 - columns, columns) + offsets_x.unsqueeze(1)
    pixels = rows.unsqueeze(2) * padded_width + columns.unsqueeze(1)
    pixels = pixels.view(batch, 1, height * width).expand(batch, channels, height * width)
    return padded.gather(2, pixels).view(batch, channels, height, width)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` → float32 ``(x/255 − mean)/std``, in ToTensor's and Normalize's order.

    Doing the same float32 operations in the same order makes the result bit-identical to the
    reference pipeline's for the same pixels.
    """
    return images.float().div(255).sub(mean.view(-1, 1, 1)).div(std.view(-1, 1, 1))


@dataclass(frozen=True)
class PolicyDraws:
    """AutoAugment's random choices for a batch: ``policy_ids [B]``, ``probs [B, 2]``, ``signs [B, 2]``.

    The same quantities ``torchvision.transforms.AutoAugment.get_params`` draws for one image:
    a sub-policy uniformly, one uniform coin per operation (applied when ``coin <= p``) and
    one sign bit per operation (0 negates a signed magnitude).
    """

    policy_ids: torch.Tensor
    probs: torch.Tensor
    signs: torch.Tensor


class BatchAutoAugment:
    """torchvision's AutoAugment on a uint8 ``[B, C, H, W]`` batch, each image with its own draws.

    ``torchvision.transforms.AutoAugment`` called on a batch tensor would apply one draw to
    every image. Here the draws are made per image (:meth:`draw`, on the CPU from a given
    generator) and :meth:`apply` runs each distinct (operation, magnitude) once on the images
    that drew it, through torchvision's own operation function, so that every image is
    transformed exactly as ``AutoAugment`` transforms it alone for the same draws.
    """

    def __init__(self, policy_name: str = "CIFAR10") -> None:
        from torchvision import transforms
        from torchvision.transforms.autoaugment import _apply_op

        self.reference = transforms.AutoAugment(transforms.AutoAugmentPolicy[policy_name])
        self._apply_op = _apply_op  # the operation table AutoAugment itself uses (also on PIL images)

    def draw(self, batch_size: int, generator: torch.Generator) -> PolicyDraws:
        """One AutoAugment draw per image."""
        return PolicyDraws(
            torch.randint(len(self.reference.policies), (batch_size,), generator=generator),
            torch.rand((batch_size, 2), generator=generator),
            torch.randint(2, (batch_size, 2), generator=generator),
        )

    def apply(self, images: torch.Tensor, draws: PolicyDraws) -> torch.Tensor:
        """The batch with each image's two sub-policy operations applied in order."""
        height, width = images.shape[-2:]
        space = self.reference._augmentation_space(10, (height, width))
        images = images.clone()
        for stage in range(2):
            groups = self._groups(draws, stage, space)
            if not groups:
                continue
            # one copy to the device per stage, asynchronous, so that the host does not wait for it
            order = torch.tensor([row for members in groups.values() for row in members])
            order = order.to(images.device, non_blocking=True)
            start = 0
            for (op_name, magnitude), members in groups.items():
                rows = order[start:start + len(members)]
                start += len(members)
                images[rows] = self._apply_op(images[rows], op_name, magnitude,
                                              interpolation=self.reference.interpolation, fill=None)
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(len(images), generator))

    def _groups(self, draws: PolicyDraws, stage: int, space: dict) -> dict[tuple[str, float], list[int]]:
        """Images that apply the same (operation, signed magnitude) at ``stage``, as AutoAugment decides it."""
        groups: dict[tuple[str, float], list[int]] = {}
        rows = zip(draws.policy_ids.tolist(), draws.probs[:, stage].tolist(), draws.signs[:, stage].tolist())
        for row, (policy_id, coin, sign) in enumerate(rows):
            op_name, probability, magnitude_id = self.reference.policies[policy_id][stage]
            if coin > probability:
                continue
            magnitudes, signed = space[op_name]
            magnitude = float(magnitudes[magnitude_id].item()) if magnitude_id is not None else 0.0
            if signed and sign == 0:
                magnitude = -magnitude
            groups.setdefault((op_name, magnitude), []).append(row)
        return groups


class TensorLoader(ShardedPasses):
    """Batches of one in-memory split, held as a single uint8 tensor on ``device``.

    ``train=True``: a fresh permutation each epoch, this rank's shard of it, random crop and
    (if ``flip``; off for digits, where a mirrored image is another digit) horizontal flip,
    contrast indices when a ``contrast`` sampler is given, and with ``strong_view`` a second,
    strongly augmented view (see the module docstring).
    ``train=False``: the stored order, this rank's unpadded shard, no augmentation.
    Every batch carries ``indices`` (positions in this split).
    """

    def __init__(
        self,
        arrays: ImageArrays,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        device: torch.device,
        seed: int,
        train: bool,
        flip: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        contrast: ContrastSampler | None = None,
        strong_view: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(arrays.images)).to(self.device)
        self.targets = torch.from_numpy(np.asarray(arrays.targets, dtype=np.int64)).to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size = batch_size
        self.seed = seed
        self.train = train
        self.flip = flip
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.contrast = contrast
        self.strong_augment = BatchAutoAugment() if strong_view and train else None
        self.epoch = 0

    @property
    def split_size(self) -> int:
        return len(self.targets)

    def __iter__(self) -> Iterator[Batch]:
        if not self.train:
            positions = evaluation_positions(len(self.targets), rank=self.rank, world_size=self.world_size)
            for batch in split_batches(positions.to(self.device), self.batch_size, drop_last=False):
                yield Batch(normalize(self.images[batch], self.mean, self.std), self.targets[batch], batch)
            return
        positions = training_positions(
            len(self.targets), seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size
        )
        augment = self._generator(Stream.AUGMENT)
        contrast = self._generator(Stream.CONTRAST) if self.contrast is not None else None
        strong = self._strong_generators() if self.strong_augment is not None else None
        for batch in split_batches(positions.to(self.device), self.batch_size, self.drop_last):
            offsets_y, offsets_x, flips = draw_crop_flip(len(batch), augment, flip=self.flip)
            images = crop_and_flip(self.images[batch], offsets_y, offsets_x, flips)
            contrast_indices = None if contrast is None else self.contrast.sample(batch, contrast)
            strong_images = None if strong is None else self._strong_view(batch, *strong)
            yield Batch(normalize(images, self.mean, self.std), self.targets[batch], batch, contrast_indices,
                        strong_images)

    def _strong_view(self, batch: torch.Tensor, crops: torch.Generator, policies: torch.Generator) -> torch.Tensor:
        """The strong view of ``batch``: its own crop and flip, then AutoAugment, normalised."""
        offsets_y, offsets_x, flips = draw_crop_flip(len(batch), crops, flip=self.flip)
        images = crop_and_flip(self.images[batch], offsets_y, offsets_x, flips)
        return normalize(self.strong_augment(images, policies), self.mean, self.std)

    def _generator(self, stream: Stream) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        return generator.manual_seed(derive_seed(self.seed, self.epoch, self.rank, stream))

    def _strong_generators(self) -> tuple[torch.Generator, torch.Generator]:
        """The strong view's crop and flip stream (on the device) and its policy stream (on the CPU)."""
        keys = (self.seed, self.epoch, self.rank, Stream.AUGMENT, STRONG_VIEW)
        crops = torch.Generator(device=self.device).manual_seed(derive_seed(*keys, 0))
        policies = torch.Generator().manual_seed(derive_seed(*keys, 1))
        return crops, policies
