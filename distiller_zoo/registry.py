"""Method registry: ``--distill NAME`` → the Distiller subclass registered under that name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from dataset.batch import DataNeeds
from distiller_zoo.base import Argument, Distiller, DistillSetup
from errors import UsageError

DISTILLERS: dict[str, type[Distiller]] = {}
DEFAULT_METHOD = "kd"  # what --distill means when it is not given, as upstream
ALIASES: dict[str, str] = {}


def register(name: str, *aliases: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Register a Distiller subclass as ``--distill name`` (and its upstream aliases)."""

    def decorate(cls: type[Distiller]) -> type[Distiller]:
        for key in (name, *aliases):
            if key in DISTILLERS or key in ALIASES:
                raise ValueError(f"method name {key!r} is registered twice")
        cls.name = name
        DISTILLERS[name] = cls
        ALIASES.update(dict.fromkeys(aliases, name))
        return cls

    return decorate


def canonical_name(name: str) -> str:
    """The registered name for ``name`` or one of its aliases; a usage error if unknown."""
    name = ALIASES.get(name, name)
    if name not in DISTILLERS:
        known = " ".join([*DISTILLERS, *ALIASES])
        raise UsageError(f"unknown method --distill {name!r}; choose one of: {known}")
    return name


def get(name: str) -> type[Distiller]:
    """The Distiller class for a method name or alias."""
    return DISTILLERS[canonical_name(name)]


def all_arguments() -> list[Argument]:
    """Every method's flags, each once (methods that share a flag declare it identically)."""
    seen: dict[str, Argument] = {}
    for cls in DISTILLERS.values():
        for arg in cls.arguments:
            if arg.dest in seen and seen[arg.dest] != arg:
                raise ValueError(f"flag --{arg.dest} is declared differently by two methods")
            seen.setdefault(arg.dest, arg)
    return list(seen.values())


def method_flags(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the flags method ``name`` declares, taken from ``values`` (else their defaults).

    ``values`` may hold anything else (the whole parsed command line, say): a method receives
    only what it declares.
    """
    return {arg.dest: values.get(arg.dest, arg.default) for arg in get(name).arguments}


def data_needs(name: str, values: Mapping[str, Any]) -> DataNeeds:
    """What method ``name``'s training loader must serve, given its flag values."""
    return get(name).data_needs(**method_flags(name, values))


def build(name: str, student: nn.Module, teacher: nn.Module, setup: DistillSetup,
          values: Mapping[str, Any] | None = None) -> Distiller:
    """Build method ``name``'s Distiller around a student and a (frozen) teacher.

    ``values`` holds the method's flag values (missing ones take their declared defaults).
    """
    return get(name)(student, teacher, setup, **method_flags(name, values or {}))
