"""The Distiller: a student, a frozen teacher and one method's trainable parts in one module.

The training loop only ever calls ``distiller(batch)``, which returns the logits that accuracy
is measured on and a dict of *named, unweighted* loss terms, and ``distiller.loss_weights``,
which says how much each term counts. A method is a subclass that overrides :meth:`distill`
(and, for two-stage methods, :meth:`init_stage` and :meth:`init_terms`); nothing outside its
file knows it exists. The teacher-only case (training a teacher) is this base class with no
teacher: its only term is ``cls``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch, DataNeeds
from distiller_zoo.common import DistillKL
from helper.errors import UsageError


@dataclass
class Outputs:
    """One network's forward pass on a batch.

    ``features`` is the network's feature list (METHODS.md §0.1: stem, stage maps, pooled
    embedding last). ``prediction`` is what training accuracy is measured on; it is the logits
    unless a method replaces it (SimKD predicts through the teacher's classifier).
    """

    features: list[torch.Tensor]
    logits: torch.Tensor
    prediction: torch.Tensor | None = None

    def float(self) -> Outputs:
        """The same outputs in float32, so that every loss term is computed in full precision."""
        return Outputs([f.float() for f in self.features], self.logits.float(),
                       None if self.prediction is None else self.prediction.float())


@dataclass(frozen=True)
class Argument:
    """A command-line flag a method reads (declared by the method, added by the options layer)."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        long_flag = next(flag for flag in self.flags if flag.startswith("--"))
        return long_flag[2:].replace("-", "_")


def argument(*flags: str, **options: Any) -> Argument:
    """Declare a method flag: ``argument("--nce_k", type=int, default=16384, help=...)``."""
    return Argument(tuple(flags), options)


@dataclass(frozen=True)
class Weights:
    """Recommended loss weights in RepDistiller's ``-r/-a/-b`` convention (METHODS.md §1.23)."""

    gamma: float = 1.0  # cross-entropy with the labels
    alpha: float = 0.0  # the KD term
    beta: float = 0.0  # the method's own term(s)


@dataclass(frozen=True)
class InitStage:
    """A pre-training stage run before the main stage (AB, FT, FSP; METHODS.md §3.2).

    It trains :meth:`Distiller.init_parameters` with a fresh SGD at a constant learning rate
    for ``epochs`` epochs, on the terms named in ``terms`` (each with weight 1).
    """

    epochs: int
    learning_rate: float
    terms: tuple[str, ...]


def feature_shapes(network: nn.Module, image_size: int, preact: bool = False) -> list[torch.Size]:
    """Shapes of ``network``'s feature list, probed with one 2-image dummy batch in eval mode."""
    was_training = network.training
    network.eval()
    parameter = next(network.parameters())
    probe = torch.randn(2, 3, image_size, image_size, device=parameter.device)
    with torch.no_grad():
        features, _ = network(probe, is_feat=True, preact=preact)
    network.train(was_training)
    return [f.shape for f in features]


class Distiller(nn.Module):
    """Student + frozen teacher + a method's trainable parts.

    Class attributes a method sets: ``recommended`` (its weights), ``preact`` (whether both
    networks are tapped before their last activations), ``uses_features`` (False for methods
    that read only the logits), ``arguments`` (the flags it reads).
    ``name`` is filled in by :func:`distiller_zoo.registry.register`.
    """

    name: ClassVar[str] = "vanilla"
    recommended: ClassVar[Weights] = Weights()
    preact: ClassVar[bool] = False
    uses_features: ClassVar[bool] = True  # False: the method reads logits only, no feature maps are kept
    arguments: ClassVar[tuple[Argument, ...]] = ()

    def __init__(self, student: nn.Module, teacher: nn.Module | None, opt: argparse.Namespace):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.stage = "main"
        self.epoch = 1
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            self.kd_loss = DistillKL(opt.kd_T)
            self.student_shapes = feature_shapes(student, opt.image_size, self.preact)
            self.teacher_shapes = feature_shapes(teacher, opt.image_size, self.preact)
            problem = self.pairing_problem(self.student_shapes, self.teacher_shapes)
            if problem is not None:
                raise UsageError(f"--distill {self.name} cannot pair student {opt.model_s} with teacher "
                                 f"{opt.model_t}: {problem}")
        self.main_weights = self._main_weights(opt)
        self.loss_weights = self.main_weights

    # ----------------------------------------------------------------------------------------
    # What a method overrides.

    @classmethod
    def data_needs(cls, opt: argparse.Namespace) -> DataNeeds:
        """What the training loader must add to each batch (indices, contrastive negatives)."""
        return DataNeeds()

    @classmethod
    def pairing_problem(cls, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> str | None:
        """Why this method cannot pair these two networks' features, or None when it can."""
        return None

    def method_weights(self, opt: argparse.Namespace) -> dict[str, float]:
        """Weights of the method's own terms; by default one term, named after the method, at β."""
        return {self.name: opt.beta}

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """The method's own loss terms, unweighted, computed in float32 outside autocast."""
        return {}

    def init_stage(self, opt: argparse.Namespace) -> InitStage | None:
        """The pre-training stage this method runs before the main stage, if any."""
        return None

    def init_parameters(self) -> list[nn.Parameter]:
        """What the pre-training stage optimises."""
        raise NotImplementedError(f"{self.name} declares no init stage")

    def init_terms(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """The pre-training stage's loss terms."""
        raise NotImplementedError(f"{self.name} declares no init stage")

    def main_parameters(self) -> list[nn.Parameter]:
        """What the main stage optimises: the student and every trainable part of the method."""
        return [p for p in self.parameters() if p.requires_grad]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation: the student's own, unless the method predicts otherwise."""
        return self.student(images)

    # ----------------------------------------------------------------------------------------
    # The machinery every method shares.

    def _main_weights(self, opt: argparse.Namespace) -> dict[str, float]:
        if self.teacher is None:
            return {"cls": 1.0}
        own = self.method_weights(opt)
        if {"cls", "kd"} & set(own):
            raise ValueError(f"{self.name}: the method's own terms may not be named 'cls' or 'kd'")
        return {"cls": opt.gamma, "kd": opt.alpha, **own}

    def set_stage(self, stage: str, opt: argparse.Namespace) -> None:
        """Switch between the pre-training stage (``"init"``) and the main stage (``"main"``)."""
        if stage == "init":
            spec = self.init_stage(opt)
            if spec is None:
                raise ValueError(f"{self.name} has no init stage")
            self.loss_weights = dict.fromkeys(spec.terms, 1.0)
        elif stage == "main":
            self.loss_weights = self.main_weights
        else:
            raise ValueError(f"unknown stage {stage!r}")
        self.stage = stage
        self.train(self.training)  # methods whose parts train in one stage only switch their modes

    def set_epoch(self, epoch: int) -> None:
        """Tell epoch-dependent methods (e.g. loss warm-up) which epoch is running (1-indexed)."""
        self.epoch = epoch

    def train(self, mode: bool = True) -> Distiller:
        """Switch modes as usual, except that the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def run_student(self, images: torch.Tensor) -> Outputs:
        if not self.uses_features:
            return Outputs([], self.student(images))
        features, logits = self.student(images, is_feat=True, preact=self.preact)
        return Outputs(list(features), logits)

    def run_teacher(self, images: torch.Tensor) -> Outputs:
        """The teacher's forward without autograd (inference mode), as ordinary tensors.

        The outputs are cloned out of inference mode because losses save them for backward,
        which inference tensors do not allow.
        """
        with torch.inference_mode():
            if not self.uses_features:
                return Outputs([], self.teacher(images).clone())
            features, logits = self.teacher(images, is_feat=True, preact=self.preact)
        return Outputs([f.clone() for f in features], logits.clone())

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the logits accuracy is measured on and the named, unweighted loss terms."""
        if self.teacher is None:
            logits = self.student(batch.images)
            return logits, {"cls": F.cross_entropy(logits.float(), batch.targets)}
        student = self.run_student(batch.images)
        teacher = self.run_teacher(batch.images)
        with torch.autocast(batch.images.device.type, enabled=False):
            student_fp32, teacher_fp32 = student.float(), teacher.float()
            if self.stage == "init":
                terms = self.init_terms(student_fp32, teacher_fp32, batch)
            else:
                terms = {
                    "cls": F.cross_entropy(student_fp32.logits, batch.targets),
                    "kd": self.kd_loss(student_fp32.logits, teacher_fp32.logits),
                    **self.distill(student_fp32, teacher_fp32, batch),
                }
        prediction = student_fp32.prediction if student_fp32.prediction is not None else student.logits
        return prediction, terms

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the method's own parts (connectors, embeddings, memory banks, queues).

        The student is saved on its own (``'model'``, as upstream checkpoints hold it) and the
        teacher never, since it is read from its own file.
        """
        return {
            key: value
            for key, value in self.state_dict().items()
            if not key.startswith(("student.", "teacher."))
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`trainable_state_dict` saved; the key sets must agree exactly."""
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"method state mismatch: missing {missing}, unexpected {unexpected}")
        self.load_state_dict({**self.state_dict(), **state}, strict=True)

    def named_trainable_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """The method's own top-level modules (everything but the student and the teacher)."""
        for name, module in self.named_children():
            if name not in ("student", "teacher", "kd_loss"):
                yield name, module

