"""What the training loop drives: a network, the terms it is trained on and how they weigh.

:class:`TrainingTask` is the interface that ``helper`` (the loop, checkpoints, the driver)
relies on; :class:`Supervised` trains one network on the labels (a teacher, or a plain
student), and :class:`~distiller_zoo.base.Distiller` adds a frozen teacher and a method.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch, DataNeeds


class TrainingTask(nn.Module):
    """A trainable network and its named loss terms.

    ``forward(batch)`` returns the logits training accuracy is measured on and a dict of
    *named, unweighted* loss terms; :attr:`loss_weights` says how much each counts.
    ``teacher`` is ``None`` unless the task distils.
    """

    name: ClassVar[str] = "vanilla"

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.teacher: nn.Module | None = None
        self.stage = "main"
        self.epoch = 1

    @classmethod
    def data_needs(cls, **flags: object) -> DataNeeds:
        """What the training loader must add to each batch (indices, contrastive negatives)."""
        return DataNeeds()

    @property
    def loss_weights(self) -> dict[str, float]:
        """The weight of each term that :meth:`forward` returns in the current stage."""
        return {"cls": 1.0}

    @property
    def init_stage(self):
        """The pre-training stage run before the main stage, if any (see ``Distiller``)."""
        return None

    def main_parameters(self) -> list[nn.Parameter]:
        """What the main stage optimises."""
        return [p for p in self.parameters() if p.requires_grad]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation."""
        return self.student(images)

    def set_epoch(self, epoch: int) -> None:
        """Tell epoch-dependent methods (e.g. loss warm-up) which epoch is running (1-indexed)."""
        self.epoch = epoch

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the task's own parts besides the student (saved apart, as ``'model'``) and the teacher."""
        return {key: value for key, value in self.state_dict().items()
                if not key.startswith(("student.", "teacher."))}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`trainable_state_dict` saved; the key sets must agree exactly."""
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"method state mismatch: missing {missing}, unexpected {unexpected}")
        self.load_state_dict({**self.state_dict(), **state}, strict=True)


class Supervised(TrainingTask):
    """One network trained with cross-entropy on the labels: a teacher run of train_teacher.py."""

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(batch.images)
        return logits, {"cls": F.cross_entropy(logits.float(), batch.targets)}
