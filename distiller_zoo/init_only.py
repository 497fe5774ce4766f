"""Methods whose whole effect is a pre-training stage (AB, FSP; METHODS.md §1.9, §1.11).

Such a method first trains the student's feature modules (and any parts of its own, such as
AB's connectors) for ``--init_epochs`` epochs on its one term, at the main learning rate, and
then trains the student as usual: its main stage adds no term of its own, so ``-b`` is unused.
"""

from __future__ import annotations

from torch import nn

from distiller_zoo.base import Distiller, DistillSetup, InitStage, Weights
from distiller_zoo.flags import INIT_EPOCHS


class InitOnlyDistiller(Distiller):
    """A Distiller whose method term (named after it) is trained in an init stage only."""

    arguments = (INIT_EPOCHS,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, init_epochs: int):
        super().__init__(student, teacher, setup)
        self.init_epochs = init_epochs

    def init_modules(self) -> list[nn.Module]:
        """The method's own modules trained in the init stage (besides the student's feature modules)."""
        return []

    def method_weights(self, weights: Weights) -> dict[str, float]:
        """No main-stage term: the method's whole effect comes from its init stage."""
        return {}

    @property
    def init_stage(self) -> InitStage:
        return InitStage(epochs=self.init_epochs, learning_rate=self.setup.learning_rate, terms=(self.name,))

    def init_parameters(self) -> list[nn.Parameter]:
        """The method's init modules and the student's feature modules (not its classifier)."""
        own = [p for module in self.init_modules() for p in module.parameters()]
        return [*own, *self.student.get_feat_modules().parameters()]

    def main_parameters(self) -> list[nn.Parameter]:
        """The student only: the init modules are used in the init stage alone."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> InitOnlyDistiller:
        """Init stage: only the feature modules and init modules train; main stage: init modules in eval."""
        super().train(mode)
        if mode and self.stage == "init":
            self.student.eval()
            self.student.get_feat_modules().train()
        for module in self.init_modules():
            module.train(mode and self.stage == "init")
        return self
