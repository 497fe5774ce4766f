"""Checkpoints: atomic writes, safe reads, and teacher files from any of the upstream code bases.

A checkpoint written here holds everything a run needs to continue exactly: the student under
``'model'`` (the key RepDistiller and SimKD use, so their scripts read our files and we read
theirs), the method's own state, optimiser, scheduler, stage, epoch, best accuracy, the
random-number states, and a record of the architecture, class count and data set.
Every file is read with ``torch.load(weights_only=True)``: nothing in it can run code.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from helper.errors import UsageError
from models import model_dict
from models.imagenet_resnet import IMAGENET_ALIASES


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old or the new file whole.

    The data goes to a temporary file in the same folder, is flushed to disk, and only then
    renamed over ``path``. A failed write raises an OSError naming the file; the previous
    checkpoint is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"could not write checkpoint {path}: {error.strerror}") from error
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; every way it can be wrong is a one-line usage error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0] if str(error) else "it is not a weights-only file"
        raise UsageError(f"refusing to load {path}: it needs arbitrary unpickling ({reason}); "
                         "re-save it as a plain dict of tensors") from None
    except Exception as error:  # a truncated or foreign file fails in many ways inside the unpickler
        reason = str(error).splitlines()[0] if str(error) else "truncated or corrupt"
        raise UsageError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model", state.get("net")), dict):
        raise UsageError(f"{path} is not a model checkpoint: expected a dict with a 'model' state dict")
    return state


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint (``'model'``; HSAKD-style ``'net'`` with prefixes stripped)."""
    if "model" in checkpoint:
        return checkpoint["model"]
    return {key.removeprefix("backbone."): value for key, value in checkpoint["net"].items()
            if not key.startswith("auxiliary")}


def infer_arch_from_path(path: str | Path) -> str | None:
    """The teacher architecture from its folder name, as RepDistiller and SimKD name folders.

    A student run folder (``S:<arch>_T:...``) gives the student's architecture; otherwise the
    longest registered model name that the folder name starts with (followed by ``_``) wins,
    which also handles names containing ``_`` (``MobileNetV2_1_0``, ``wrn_40_2``) that the
    upstream split rule mis-parses.
    """
    directory = Path(path).resolve().parent.name
    match = re.match(r"S[:~_](.+?)_T[:~_]", directory)
    if match:
        directory = match.group(1) + "_"
    names = sorted([*model_dict, *IMAGENET_ALIASES], key=len, reverse=True)
    return next((name for name in names if directory == name or directory.startswith(name + "_")), None)


def teacher_arch(checkpoint: dict[str, Any], path: str | Path, model_t: str | None) -> str:
    """The teacher architecture: the checkpoint's own record, else the flag, else the path."""
    recorded = checkpoint.get("arch")
    if recorded is not None and model_t is not None and recorded != model_t:
        raise UsageError(f"--model_t {model_t} contradicts the checkpoint {path}, which records "
                         f"architecture {recorded}; drop --model_t or pick the right file")
    arch = recorded or model_t or infer_arch_from_path(path)
    if arch is None:
        raise UsageError(f"cannot infer the teacher architecture of {path}: pass --model_t "
                         "or keep the file in a folder named <arch>_..., as RepDistiller does")
    return arch


def load_weights(network: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, arch: str) -> None:
    """Load a state dict strictly; a mismatch is a one-line usage error naming the cause."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        text = str(error)
        if "size mismatch" in text and any(k.endswith(("fc.weight", "linear.weight", "classifier.weight",
                                                       "classifier.0.weight", "classifier.1.weight"))
                                           for k in re.findall(r"size mismatch for ([\w.]+)", text)):
            raise UsageError(f"teacher {path} has a different number of classes than the data set; "
                             "use a teacher trained on this --dataset") from None
        first = re.sub(r"\s+", " ", text.split("\n\t", 1)[-1])[:200]
        raise UsageError(f"{path} does not fit architecture {arch} ({first}); pass the right --model_t") from None
