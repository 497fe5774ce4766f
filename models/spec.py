"""Model specifications: a network's name and constructor arguments as one string.

Wherever the command line takes a network (``--model``, ``--model_s``, ``--model_t``) it takes

* a registry name (``resnet8x4``, ``ResNet34``), or
* a library name: ``timm:<name>`` (``timm.create_model``) or ``torchvision:<name>``
  (``torchvision.models.get_model``),

with constructor arguments from ``--model_args`` / ``--model_s_args`` / ``--model_t_args``
(``key=value,...``; each value is read as a bool, ``none``, an int, a float, else a string).
Name and arguments together are written ``<name>@<key>=<value>,...`` with the keys sorted, e.g.
``timm:vit_tiny_patch16_224@depth=6,patch_size=4``. That string is what a checkpoint records as
the architecture, so ``--path_t`` alone rebuilds the network later; its folder-safe form
(``timm-vit_tiny_patch16_224@depth=6,patch_size=4``: no ``:`` or ``/``) names run folders and
checkpoint files.

This module is plain Python: parsing a command line never imports a model library.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from errors import UsageError

LIBRARIES = ("timm", "torchvision")  # the prefixes of library names, ``<library>:<name>``
ARGS_SEPARATOR = "@"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # nothing a folder name or the spec syntax would trip on
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_INT = re.compile(r"^[-+]?\d+$")
ArgValue = bool | int | float | str | None


def parse_value(text: str) -> ArgValue:
    """``"true"`` → True, ``"none"`` → None, ``"4"`` → 4, ``"0.1"`` → 0.1, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def format_value(value: ArgValue) -> str:
    """The text :func:`parse_value` reads back as ``value``."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def parse_args(text: str | None, flag: str = "model arguments") -> dict[str, ArgValue]:
    """``"patch_size=4,depth=6"`` → ``{"patch_size": 4, "depth": 6}``; a malformed entry is a usage error."""
    args: dict[str, ArgValue] = {}
    for entry in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.match(key) or not _VALUE.match(value):
            raise UsageError(f"{flag} entry {entry!r} must be key=value with a letters/digits/_.+- value, "
                             "e.g. patch_size=4,depth=6")
        if key in args:
            raise UsageError(f"{flag} gives {key} twice")
        args[key] = parse_value(value)
    return args


@dataclass(frozen=True)
class ModelSpec:
    """A network to build: a registry or library name and its constructor arguments."""

    name: str
    args: tuple[tuple[str, ArgValue], ...] = ()

    @property
    def library(self) -> str | None:
        """``"timm"`` or ``"torchvision"`` for a library name, None for a registry name."""
        prefix, sep, _ = self.name.partition(":")
        return prefix if sep and prefix in LIBRARIES else None

    @property
    def library_name(self) -> str:
        """The name inside the library (``vit_tiny_patch16_224`` of ``timm:vit_tiny_patch16_224``)."""
        return self.name.partition(":")[2] if self.library else self.name

    @property
    def kwargs(self) -> dict[str, ArgValue]:
        return dict(self.args)

    @property
    def text(self) -> str:
        """The canonical string, ``<name>[@key=value,...]`` with sorted keys."""
        if not self.args:
            return self.name
        return self.name + ARGS_SEPARATOR + ",".join(f"{k}={format_value(v)}" for k, v in self.args)

    @property
    def component(self) -> str:
        """The folder-safe form, for run folders and checkpoint files: ``timm:x`` → ``timm-x``."""
        return spec_component(self.text)


def make_spec(name: str, args: Mapping[str, ArgValue] | None = None) -> ModelSpec:
    """A spec of ``name`` with ``args`` (sorted by key)."""
    return ModelSpec(name, tuple(sorted((args or {}).items())))


def parse_spec(text: str, args_text: str | None = None, flag: str = "--model") -> ModelSpec:
    """Read ``name[@key=value,...]`` and the arguments flag's ``key=value,...`` into one spec.

    An argument given in both places takes the flag's value. Only the syntax is checked here;
    whether the name exists is :func:`models.registry.resolve_spec`'s business.
    """
    name, _, inline = text.strip().partition(ARGS_SEPARATOR)
    library, sep, inner = name.partition(":")
    if sep and library not in LIBRARIES:
        raise UsageError(f"{flag} {text!r}: unknown library {library!r}; library names are "
                         f"{' or '.join(f'{lib}:<name>' for lib in LIBRARIES)}")
    if not _NAME.match(inner if sep else name):
        raise UsageError(f"{flag} {text!r} is not a model name (letters, digits, _ . - only)")
    args = {**parse_args(inline, flag), **parse_args(args_text, f"{flag}_args")}
    return make_spec(name, args)


def spec_from_component(component: str) -> str:
    """The spec text a folder-safe component stands for (``timm-x`` → ``timm:x``); others unchanged."""
    for library in LIBRARIES:
        if component.startswith(f"{library}-"):
            return f"{library}:{component[len(library) + 1:]}"
    return component


def spec_component(text: str) -> str:
    """The folder-safe form of a spec string (see :attr:`ModelSpec.component`)."""
    library, sep, rest = text.partition(":")
    return f"{library}-{rest}" if sep and library in LIBRARIES else text


def split_pair(text: str) -> tuple[str, str] | None:
    """``teacher:student`` → the two names, where either may itself be ``timm:x`` or ``torchvision:x``.

    None when ``text`` is not such a pair (e.g. no separator).
    """
    parts = text.split(":")
    names: list[str] = []
    while parts:
        head = parts.pop(0)
        if head in LIBRARIES and parts:
            head = f"{head}:{parts.pop(0)}"
        names.append(head)
    return (names[0], names[1]) if len(names) == 2 and all(names) else None

