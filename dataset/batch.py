"""The one batch type every loader yields, and what a method may ask the loaders for."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """Images and labels, plus what contrastive methods asked for.

    ``indices`` is each sample's position in the training set (memory-bank methods update
    their banks at these rows); ``contrast_indices`` is ``[B, 1 + nce_k]``: column 0 the
    positive, the rest negatives drawn from other classes (CRD, METHODS.md §1.14).
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor | None = None
    contrast_indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, channels_last: bool = False) -> Batch:
        """Move every tensor to ``device`` without blocking the host."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        images = self.images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return replace(
            self,
            images=images,
            targets=move(self.targets),
            indices=move(self.indices),
            contrast_indices=move(self.contrast_indices),
        )


@dataclass(frozen=True)
class DataNeeds:
    """What a method needs from the training loader beyond images and labels.

    ``contrast_k > 0`` asks for ``contrast_indices`` with that many negatives per sample,
    drawn in ``contrast_mode`` (``exact``: the positive is the sample itself; ``relax``: a
    random sample of the same class). ``drop_last`` asks for full batches only (FIFO queues,
    modules whose width is the batch size).
    """

    indices: bool = False
    contrast_k: int = 0
    contrast_mode: str = "exact"
    drop_last: bool = False
