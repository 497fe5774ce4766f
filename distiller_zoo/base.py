"""The Distiller: a student, a frozen teacher and one method's trainable parts in one module.

The training loop only ever calls ``distiller(batch)``, which returns the logits that accuracy
is measured on and a dict of *named, unweighted* loss terms, and ``distiller.loss_weights``,
which says how much each term counts. A method is a subclass that overrides :meth:`distill`
(and, for two-stage methods, :meth:`init_stage` and :meth:`init_terms`); nothing outside its
file knows it exists. A Distiller receives what it needs explicitly: the two networks, a
:class:`DistillSetup` (the facts of the run it depends on and the loss weights) and, as
keyword arguments, the values of the flags its class declares in ``arguments``. Training a
teacher is :class:`~distiller_zoo.task.Supervised`, not a Distiller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.common import DistillKL
from distiller_zoo.task import TrainingTask
from errors import UsageError


@dataclass
class Outputs:
    """One network's forward pass on a batch.

    ``features`` is the network's feature list (METHODS.md §0.1: stem, stage maps, pooled
    embedding last).
    """

    features: list[torch.Tensor]
    logits: torch.Tensor

    def float(self) -> Outputs:
        """The same outputs in float32, so that every loss term is computed in full precision."""
        return Outputs([f.float() for f in self.features], self.logits.float())


class TeacherPass:
    """The frozen teacher's forward on one batch, run once for every Distiller that reads it.

    The teacher runs without autograd (inference mode) at most once per tap (``preact``); a
    Distiller that reads the logits only takes them from a pass with features when there is
    one. Each reader gets its own copy, out of inference mode (losses save their inputs for
    backward, which inference tensors do not allow), so no Distiller can alter another's.
    """

    def __init__(self, teacher: nn.Module, images: torch.Tensor) -> None:
        self.teacher, self.images = teacher, images
        self.passes: dict[bool | None, tuple[list[torch.Tensor], torch.Tensor]] = {}  # preact → pass; None: logits

    def outputs(self, with_features: bool, preact: bool = False) -> Outputs:
        """The teacher's feature list (if ``with_features``) and logits, as a fresh copy."""
        key: bool | None = preact if with_features else next((k for k in self.passes if k is not None), None)
        if key not in self.passes:
            with torch.inference_mode():
                if key is None:
                    self.passes[key] = [], self.teacher(self.images)
                else:
                    features, logits = self.teacher(self.images, is_feat=True, preact=key)
                    self.passes[key] = list(features), logits
        features, logits = self.passes[key]
        return Outputs([f.clone() for f in features] if with_features else [], logits.clone())


@dataclass(frozen=True)
class Argument:
    """A command-line flag a method reads (declared by the method, added by the options layer).

    A float flag takes finite, non-negative values (weights, temperatures, rates) unless it is
    declared ``signed``.
    """

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    signed: bool = False

    @property
    def dest(self) -> str:
        long_flag = next(flag for flag in self.flags if flag.startswith("--"))
        return long_flag[2:].replace("-", "_")

    @property
    def default(self) -> Any:
        return self.options.get("default")


def argument(*flags: str, signed: bool = False, **options: Any) -> Argument:
    """Declare a method flag: ``argument("--nce_k", type=int, default=16384, help=...)``."""
    return Argument(tuple(flags), options, signed)


@dataclass(frozen=True)
class Weights:
    """Recommended loss weights in RepDistiller's ``-r/-a/-b`` convention (METHODS.md §1.23)."""

    gamma: float = 1.0  # cross-entropy with the labels
    alpha: float = 0.0  # the KD term
    beta: float = 0.0  # the method's own term(s)


@dataclass(frozen=True)
class DistillSetup:
    """What a Distiller needs to know of the run besides its two networks and its own flags.

    ``num_train`` is the size of the training set trained on (memory banks have that many
    rows); ``batch_size`` is per process (SemCKD's attention is that wide); ``learning_rate``
    is the main stage's (two-stage methods pre-train at it); the registry names of the two
    networks appear in errors (and FT picks its init-stage learning rate by the student's family).
    """

    image_size: int
    num_train: int
    batch_size: int
    learning_rate: float
    weights: Weights
    kd_T: float = 4.0  # noqa: N815  (the upstream flag name)
    student_name: str = "student"
    teacher_name: str = "teacher"


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


class Distiller(TrainingTask):
    """Student + frozen teacher + a method's trainable parts.

    Class attributes a method sets: ``recommended`` (its weights), ``preact`` (whether both
    networks are tapped before their last activations), ``uses_features`` (False for methods
    that read only the logits), ``arguments`` (the flags it reads; their values arrive as
    keyword arguments of ``__init__``). ``name`` is filled in by
    :func:`distiller_zoo.registry.register`.
    """

    recommended: ClassVar[Weights] = Weights()
    preact: ClassVar[bool] = False
    uses_features: ClassVar[bool] = True  # False: the method reads logits only, no feature maps are kept
    arguments: ClassVar[tuple[Argument, ...]] = ()
    # Why the method's student is no network on its own (its predictions need parts of the method's
    # state), or None: such a student cannot serve as a teacher.
    not_standalone: ClassVar[str | None] = None

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student)
        self.teacher = teacher
        self.setup = setup
        teacher.requires_grad_(False)
        teacher.eval()
        self.kd_loss = DistillKL(setup.kd_T)
        self.student_shapes = feature_shapes(student, setup.image_size, self.preact)
        self.teacher_shapes = feature_shapes(teacher, setup.image_size, self.preact)
        problem = self.pairing_problem(self.student_shapes, self.teacher_shapes)
        if problem is not None:
            raise UsageError(f"--distill {self.name} cannot pair student {setup.student_name} with teacher "
                             f"{setup.teacher_name}: {problem}")

    # ----------------------------------------------------------------------------------------
    # What a method overrides.

    @classmethod
    def recognises_checkpoint(cls, checkpoint: dict[str, Any]) -> bool:
        """Whether a checkpoint that records no method is this method's student (its upstream file layout)."""
        return False

    @classmethod
    def pairing_problem(cls, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> str | None:
        """Why this method cannot pair these two networks' features, or None when it can."""
        return None

    def method_weights(self, weights: Weights) -> dict[str, float]:
        """Weights of the method's own terms; by default one term, named after the method, at β."""
        return {self.name: weights.beta}

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """The method's own loss terms, unweighted, computed in float32 outside autocast."""
        return {}

    def distill_and_predict(self, student: Outputs, teacher: Outputs,
                            batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """What training accuracy is measured on (the student's logits) and :meth:`distill`'s terms.

        A method that predicts otherwise (SimKD, through the teacher's classifier) overrides this.
        """
        return student.logits, self.distill(student, teacher, batch)

    @property
    def init_stage(self) -> InitStage | None:
        """The pre-training stage this method runs before the main stage, if any."""
        return None

    def init_parameters(self) -> list[nn.Parameter]:
        """What the pre-training stage optimises."""
        raise NotImplementedError(f"{self.name} declares no init stage")

    def init_terms(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """The pre-training stage's loss terms."""
        raise NotImplementedError(f"{self.name} declares no init stage")

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation: the student's own, unless the method predicts otherwise."""
        return self.student(images)

    # ----------------------------------------------------------------------------------------
    # The machinery every method shares.

    @property
    def main_weights(self) -> dict[str, float]:
        """``cls`` at γ, ``kd`` at α, and the method's own terms (at β unless it says otherwise)."""
        own = self.method_weights(self.setup.weights)
        if {"cls", "kd"} & set(own):
            raise ValueError(f"{self.name}: the method's own terms may not be named 'cls' or 'kd'")
        return {"cls": self.setup.weights.gamma, "kd": self.setup.weights.alpha, **own}

    @property
    def loss_weights(self) -> dict[str, float]:
        if self.stage == "init":
            return dict.fromkeys(self.init_stage.terms, 1.0)
        return self.main_weights

    def set_stage(self, stage: str) -> None:
        """Switch between the pre-training stage (``"init"``) and the main stage (``"main"``)."""
        if stage not in ("init", "main"):
            raise ValueError(f"unknown stage {stage!r}")
        if stage == "init" and self.init_stage is None:
            raise ValueError(f"{self.name} has no init stage")
        self.stage = stage
        self.train(self.training)  # methods whose parts train in one stage only switch their modes

    def train(self, mode: bool = True) -> Distiller:
        """Switch modes as usual, except that the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def run_student(self, images: torch.Tensor) -> Outputs:
        if not self.uses_features:
            return Outputs([], self.student(images))
        features, logits = self.student(images, is_feat=True, preact=self.preact)
        return Outputs(list(features), logits)

    def run_teacher(self, images: torch.Tensor) -> Outputs:
        """The teacher's outputs on ``images`` (its forward without autograd), as this method reads them."""
        return TeacherPass(self.teacher, images).outputs(self.uses_features, self.preact)

    def forward(self, batch: Batch,
                teacher: TeacherPass | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the logits accuracy is measured on and the named, unweighted loss terms.

        ``teacher`` is the teacher's pass on ``batch.images`` when several Distillers of one
        teacher train on the same batch (a pack); by default this Distiller runs its teacher.
        """
        student = self.run_student(batch.images)
        teacher_pass = TeacherPass(self.teacher, batch.images) if teacher is None else teacher
        teacher = teacher_pass.outputs(self.uses_features, self.preact)
        with torch.autocast(batch.images.device.type, enabled=False):
            student_fp32, teacher_fp32 = student.float(), teacher.float()
            if self.stage == "init":
                return student.logits, self.init_terms(student_fp32, teacher_fp32, batch)
            prediction, own = self.distill_and_predict(student_fp32, teacher_fp32, batch)
            terms = {
                "cls": F.cross_entropy(student_fp32.logits, batch.targets),
                "kd": self.kd_loss(student_fp32.logits, teacher_fp32.logits),
                **own,
            }
        return (student.logits if prediction is student_fp32.logits else prediction), terms
