"""Running averages and top-k accuracy."""

from __future__ import annotations

import torch


class AverageMeter:
    """A running, sample-weighted mean kept as tensors, so updating it never syncs the device."""

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.count = 0

    def update(self, value: torch.Tensor | float, n: int = 1) -> None:
        self.total = self.total + (value.detach() if isinstance(value, torch.Tensor) else value) * n
        self.count += n

    def restore(self, total: float, count: int) -> None:
        """Continue from running sums saved by an interrupted epoch."""
        self.total, self.count = total, count

    @property
    def avg(self) -> float:
        return float(self.total) / max(self.count, 1)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Top-k accuracies in percent, as 0-dim tensors (k is capped at the number of classes)."""
    maxk = min(max(topk), logits.shape[1])
    predictions = logits.topk(maxk, dim=1).indices
    correct = predictions.eq(targets.view(-1, 1))
    return [correct[:, : min(k, maxk)].any(dim=1).float().mean() * 100 for k in topk]
