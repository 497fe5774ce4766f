"""The one batch type every loader yields, and what a method may ask the loaders for."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """Images and labels, plus what a method asked for.

    ``indices`` is each sample's position in the training set (memory-bank methods update
    their banks at these rows); ``contrast_indices`` is ``[B, 1 + nce_k]``: column 0 the
    positive, the rest negatives drawn from other classes (CRD, METHODS.md §1.14);
    ``strong_images`` is a second, strongly augmented view of the same samples, in the same
    order and normalised alike (``DataNeeds.strong_view``; MLKD). ``images`` stays the ordinary
    (weak) view, so a method that ignores the second view trains exactly as without it.
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor | None = None
    contrast_indices: torch.Tensor | None = None
    strong_images: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, channels_last: bool = False) -> Batch:
        """Move every tensor to ``device`` without blocking the host."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        def move_images(images: torch.Tensor | None) -> torch.Tensor | None:
            images = move(images)
            if images is not None and channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            return images

        return replace(
            self,
            images=move_images(self.images),
            targets=move(self.targets),
            indices=move(self.indices),
            contrast_indices=move(self.contrast_indices),
            strong_images=move_images(self.strong_images),
        )


@dataclass(frozen=True)
class DataNeeds:
    """What a method needs from the training loader beyond images and labels.

    ``contrast_k > 0`` asks for ``contrast_indices`` with that many negatives per sample,
    drawn in ``contrast_mode`` (``exact``: the positive is the sample itself; ``relax``: a
    random sample of the same class). ``drop_last`` asks for full batches only (FIFO queues,
    modules whose width is the batch size). ``strong_view`` asks for a second view of every
    training image, augmented strongly (``Batch.strong_images``: the usual crop and flip drawn
    anew, then AutoAugment; MLKD); evaluation batches never carry one.
    """

    indices: bool = False
    contrast_k: int = 0
    contrast_mode: str = "exact"
    drop_last: bool = False
    strong_view: bool = False
