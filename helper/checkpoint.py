"""Checkpoints: atomic writes, safe reads, teacher files from any of the upstream code bases.

A checkpoint written here holds everything a run needs to continue exactly: the student under
``'model'`` (the key RepDistiller and SimKD use, so their scripts read our files and we read
theirs), the method's own state, optimiser, scheduler, stage, epoch, best accuracy, the
random-number states, and a record of the run: architecture, class count, data set, method and
every flag (``'args'``). Every file is read with ``torch.load(weights_only=True)`` (or as
safetensors): nothing in it can run code. The record lets a teacher from another data set, a
student that is not a plain network, and a resume with changed flags be refused before training.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import distiller_zoo
from errors import UsageError
from helper.run_names import parse_run_name
from models import model_dict
from models.library import torchvision_file_arch
from models.registry import IMAGENET_ALIASES
from models.spec import ARGS_SEPARATOR, LIBRARIES, spec_from_component

CHECKPOINT_SUFFIXES = (".pth", ".safetensors")
WEIGHT_FORMATS = ("{'model': state_dict} (RepDistiller, SimKD, this repository)", "{'net': state_dict} (HSAKD)",
                  "{'state_dict': state_dict} (timm, Lightning)", "a plain state dict of tensors (torchvision)")
WRAPPER_PREFIXES = ("module.", "model.")  # DistributedDataParallel, Lightning
LISTED_CHECKPOINTS = 5

# Flags that may differ when a run is resumed: where things are, how fast, how often to log or save,
# how long to train. Every other flag, and the training-set size, changes the numbers of the run.
RESUME_MAY_CHANGE = frozenset({
    "resume", "epochs", "print_freq", "save_freq", "num_workers", "device", "gpu_id", "skip_validation",
    "data_root", "save_dir", "path_t", "channels_last", "compile", "multiprocessing_distributed", "dist_url",
    "num_classes", "image_size",  # follow from --dataset, which is compared
})
RECORD_LABELS = {"n_data": "number of training images"}


def _current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``).

    Elsewhere it is read by setting a temporary mask and restoring it; the temporary mask is the
    strictest one, so a file another thread creates meanwhile is private rather than public.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError that caused ``error``: torch's writer reports a failed write as a RuntimeError."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _write_error(error: BaseException, path: Path) -> OSError:
    """A failed write as an OSError naming ``path`` (exit 4 in the entry scripts)."""
    cause = _os_error_behind(error)
    if cause is not None:
        return OSError(cause.errno, f"could not write checkpoint {path}: {cause.strerror or cause}")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return OSError(errno.EIO, f"could not write checkpoint {path}: {reason}")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old or the new file whole.

    The data goes to a temporary file in the same folder, is flushed to disk, and only then
    renamed over ``path``. The file gets the permissions of any file the user creates (the umask),
    not the owner-only mode of a temporary file. A failed write (a full disk, a quota, a file-size
    limit: torch reports some as RuntimeError) raises an OSError naming the file; the previous
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
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):
            raise _write_error(error, path) from error
        raise


def _folder_message(path: Path) -> str:
    """What to say when a checkpoint path names a folder: the checkpoints it holds, if any."""
    names = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not names:
        return f"checkpoint {path} is a folder, and it holds no *.pth or *.safetensors file; pass a checkpoint file"
    shown = ", ".join(names[:LISTED_CHECKPOINTS]) + (", …" if len(names) > LISTED_CHECKPOINTS else "")
    return f"checkpoint {path} is a folder, not a file; it holds {shown}: pass one of them"


def _read(path: Path) -> Any:
    """The object stored in ``path``, read without running any code from it."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError(f"{path} is a safetensors file; pip install safetensors to read it") from None
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; every way it can be wrong is a one-line usage error."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(_folder_message(path))
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        state = _read(path)
    except UsageError:
        raise
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0] if str(error) else "it is not a weights-only file"
        raise UsageError(f"refusing to load {path}: it needs arbitrary unpickling ({reason}); "
                         "re-save it as a plain dict of tensors") from None
    except Exception as error:  # a truncated or foreign file fails in many ways inside the unpickler
        reason = str(error).splitlines()[0] if str(error) else "truncated or corrupt"
        raise UsageError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or _weights(state) is None:
        raise UsageError(f"{path} is not a model checkpoint: expected one of {'; '.join(WEIGHT_FORMATS)}")
    return state


def _is_state_dict(value: Any) -> bool:
    """Whether ``value`` is a non-empty dict of tensors (a network's ``state_dict()``)."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The state dict inside ``checkpoint`` in any of :data:`WEIGHT_FORMATS`, as stored; None if none."""
    for key in ("model", "net", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint if _is_state_dict(checkpoint) else None


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` or ``model.`` prefix that every key carries (DDP, Lightning), repeatedly."""
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in state)), None)
        if prefix is None:
            break
        state = {key.removeprefix(prefix): value for key, value in state.items()}
    return state


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint in any of :data:`WEIGHT_FORMATS`, wrapper prefixes stripped.

    HSAKD's ``'net'`` holds the network under ``backbone.`` beside its auxiliary branches, which go.
    """
    weights = _weights(checkpoint)
    if weights is None:
        raise UsageError(f"not a model checkpoint: expected one of {'; '.join(WEIGHT_FORMATS)}")
    if weights is checkpoint.get("net"):
        weights = {key.removeprefix("backbone."): value for key, value in weights.items()
                   if not key.startswith("auxiliary")}
    return _strip_wrapper_prefixes(weights)


def _recorded_method(checkpoint: dict[str, Any]) -> type[distiller_zoo.Distiller] | None:
    """The method a student checkpoint was trained with: its record (``'method'``, ``'args'``), else
    the method that recognises the file's layout (a method's own upstream files record nothing)."""
    args = checkpoint.get("args")
    method = checkpoint.get("method") or (args.get("distill") if isinstance(args, dict) else None)
    if method is not None:
        return distiller_zoo.DISTILLERS.get(distiller_zoo.registry.ALIASES.get(str(method), str(method)))
    return next((cls for cls in distiller_zoo.DISTILLERS.values() if cls.recognises_checkpoint(checkpoint)), None)


def _recorded_dataset(checkpoint: dict[str, Any]) -> str | None:
    args = checkpoint.get("args")
    dataset = checkpoint.get("dataset") or (args.get("dataset") if isinstance(args, dict) else None)
    return None if dataset is None else str(dataset)


def check_teacher(checkpoint: dict[str, Any], path: str | Path, dataset: str) -> None:
    """Refuse a teacher checkpoint that records another data set, or a student that is no plain network.

    Class counts alone do not tell digits from CIFAR-10, so the recorded data set is compared. A
    student distilled with most methods is an ordinary network and may teach; a SimKD student
    predicts through its projector and the teacher's classifier, which a plain teacher would drop.
    Files that record nothing (upstream teachers) pass.
    """
    recorded = _recorded_dataset(checkpoint)
    if recorded is not None and recorded != dataset:
        raise UsageError(f"teacher {path} was trained on {recorded}, as its checkpoint records, not on "
                         f"--dataset {dataset}; use a teacher trained on {dataset}")
    method = _recorded_method(checkpoint)
    if method is not None and method.not_standalone is not None:
        raise UsageError(f"teacher {path} is a {method.name} student checkpoint ({method.not_standalone}); a "
                         f"{method.name} student cannot be used as a plain teacher: pass a teacher "
                         "trained with train_teacher.py, or a student of another method")


def _shown(value: Any) -> str:
    """A flag value as a user would type it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def changed_run_flags(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Every flag that differs between a run's recorded options and the resuming command, as ``--flag old → new``.

    Only options both sides know are compared (a checkpoint from before a flag existed says
    nothing about it); those in :data:`RESUME_MAY_CHANGE` may differ. The batch size is compared
    like any other: at an epoch boundary a new batch size trains another run, and in the middle of
    an epoch the saved position in it would point at other images.
    """
    changed = []
    for key in sorted(recorded.keys() & current.keys() - RESUME_MAY_CHANGE):
        if recorded[key] != current[key]:
            label = RECORD_LABELS.get(key, f"--{key}")
            changed.append(f"{label} {_shown(recorded[key])} → {_shown(current[key])}")
    return changed


def check_resume_flags(recorded: Mapping[str, Any] | None, current: Mapping[str, Any], path: str | Path) -> None:
    """Refuse to resume the run saved in ``path`` with options that would change its numbers."""
    changed = changed_run_flags(recorded or {}, current)
    if changed:
        raise UsageError(f"--resume {path} would change the run: {', '.join(changed)}; resume with the "
                         "run's own flags, or start a new run with another --trial")


def infer_arch_from_path(path: str | Path) -> str | None:
    """The teacher architecture from its folder name, as RepDistiller and SimKD name folders, or its file name.

    A run folder of this repository (``S:<arch>_T:...``, ``<arch>_vanilla_...``) gives its
    network, a library one included (``timm-resnet18_vanilla_...`` → ``timm:resnet18``);
    otherwise the longest registered model name that the folder name starts with (followed by
    ``_``) wins, which also handles names containing ``_`` (``MobileNetV2_1_0``, ``wrn_40_2``)
    that the upstream split rule mis-parses. Last, torchvision's weight files name their network
    (``resnet34-b627a593.pth`` → ``ResNet34``, see models/library.py).
    """
    directory = Path(path).resolve().parent.name
    names = sorted([*model_dict, *IMAGENET_ALIASES], key=len, reverse=True)
    run = parse_run_name(directory)
    if run is not None:
        spec = spec_from_component(run.model)
        if spec.split(ARGS_SEPARATOR)[0] in names or spec.partition(":")[0] in LIBRARIES:
            return spec
    folder = next((name for name in names if directory == name or directory.startswith(name + "_")), None)
    return folder or torchvision_file_arch(Path(path).name)


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
        if "size mismatch" in text and any(k.endswith(("fc.weight", "linear.weight", "classifier.weight", "head.weight",
                                                       "classifier.0.weight", "classifier.1.weight"))
                                           for k in re.findall(r"size mismatch for ([\w.]+)", text)):
            raise UsageError(f"teacher {path} has a different number of classes than the data set; "
                             "use a teacher trained on this --dataset") from None
        first = re.sub(r"\s+", " ", text.split("\n\t", 1)[-1])[:200]
        raise UsageError(f"{path} does not fit architecture {arch} ({first}); pass the right --model_t") from None
