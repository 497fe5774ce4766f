"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015). METHODS.md §1.1.

The KD term itself (:class:`~distiller_zoo.common.DistillKL`) is computed by every method and
weighed by ``-a``; KD is the method whose only distillation signal it is.
"""

import argparse

from distiller_zoo.base import Distiller, Weights
from distiller_zoo.common import DistillKL
from distiller_zoo.registry import register

__all__ = ["KD", "DistillKL"]


@register("kd")
class KD(Distiller):
    """Cross-entropy plus the KD term: ``-r 0.1 -a 0.9`` (RepDistiller's script)."""

    recommended = Weights(gamma=0.1, alpha=0.9, beta=0.0)
    uses_features = False

    def method_weights(self, opt: argparse.Namespace) -> dict[str, float]:
        """No term of its own: the KD term every Distiller computes, weighed by ``-a``, is the method."""
        return {}
