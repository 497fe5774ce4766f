"""Distillation methods, one file each, registered by their ``--distill`` name."""

import importlib
import pkgutil

from distiller_zoo.base import Distiller, Outputs
from distiller_zoo.registry import DISTILLERS, build, canonical_name, get

_SHARED = {"base", "common", "flags", "memory", "registry"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _SHARED:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DISTILLERS", "Distiller", "Outputs", "build", "canonical_name", "get"]
