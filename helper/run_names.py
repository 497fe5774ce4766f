"""Run folder names: the one place where they are written and read back.

train_teacher.py and train_student.py name each run's folder after what the run is, in the
RepDistiller/SimKD spelling, so that upstream sweep scripts and released folders line up:

* a network trained alone: ``<model>_vanilla_<dataset>_trial_<trial>``
  (``resnet8_vanilla_cifar100_trial_1``);
* a distilled student: ``S:<student>_T:<teacher>_<dataset>_<method>_r:<gamma>_a:<alpha>_b:<beta>_<trial>``
  (``S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1``), weights written as Python floats.

File systems that forbid ``:`` (Windows, some network shares) get copies of such folders with
``~`` or ``_`` in its place, so :func:`parse_run_name` accepts all three separators. Model
names may contain ``_`` (``wrn_40_2``, ``MobileNetV2_1_0``); data-set and method names never
do (the option parser and the method registry guarantee it), and the parser leans on that.

A library network's name has a ``:`` of its own (``timm:resnet18``) and arguments after ``@``
(models/spec.py); inside a folder name it is written ``timm-resnet18@...``, which
:func:`models.spec.spec_from_component` reads back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from models.spec import spec_component

VANILLA, DISTILLED = "vanilla", "distilled"  # the two kinds of run
ROOTS = {VANILLA: "teachers", DISTILLED: "students"}  # the folder under --save_dir of each kind

_SEP = "[:~_]"  # what separates a field's tag (S, T, r, a, b) from its value
_FLOAT = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"  # what str(float) writes
_TEACHER = re.compile(r"^(?P<model>.+)_vanilla_(?P<dataset>[^_]+)_trial_(?P<trial>.+)$")
_STUDENT = re.compile(
    rf"^S{_SEP}(?P<model>.+?)_T{_SEP}(?P<teacher>.+?)_(?P<dataset>[^_]+)_(?P<method>[^_]+)"
    rf"_r{_SEP}(?P<gamma>{_FLOAT})_a{_SEP}(?P<alpha>{_FLOAT})_b{_SEP}(?P<beta>{_FLOAT})_(?P<trial>.+)$"
)


@dataclass(frozen=True)
class RunName:
    """What a run folder's name says about its run.

    ``teacher``, ``method`` and ``weights`` (``(gamma, alpha, beta)`` of ``-r/-a/-b``) are None
    for a network trained alone.
    """

    kind: str  # VANILLA (train_teacher.py) or DISTILLED (train_student.py)
    model: str  # the network the run trained
    teacher: str | None
    dataset: str
    method: str | None
    weights: tuple[float, float, float] | None
    trial: str


def _weight(value: float) -> str:
    return str(float(value))


def teacher_run_name(model: str, dataset: str, trial: str | int) -> str:
    """The folder name of a train_teacher.py run: ``<model>_vanilla_<dataset>_trial_<trial>``."""
    return f"{spec_component(model)}_vanilla_{dataset}_trial_{trial}"


def student_run_name(model_s: str, model_t: str, dataset: str, method: str, gamma: float, alpha: float,
                     beta: float, trial: str | int) -> str:
    """The folder name of a train_student.py run, weights written as floats (``1`` → ``1.0``)."""
    return (f"S:{spec_component(model_s)}_T:{spec_component(model_t)}_{dataset}_{method}"
            f"_r:{_weight(gamma)}_a:{_weight(alpha)}_b:{_weight(beta)}_{trial}")


def parse_run_name(name: str) -> RunName | None:
    """The run a folder name describes (the folder's own name, not a path), or None if it names none."""
    match = _STUDENT.match(name)
    if match:
        weights = (float(match["gamma"]), float(match["alpha"]), float(match["beta"]))
        return RunName(DISTILLED, match["model"], match["teacher"], match["dataset"], match["method"], weights,
                       match["trial"])
    match = _TEACHER.match(name)
    if match:
        return RunName(VANILLA, match["model"], None, match["dataset"], None, None, match["trial"])
    return None


def run_dir(save_dir: str | Path, kind: str, name: str) -> Path:
    """The folder of run ``name`` of ``kind`` (VANILLA or DISTILLED): ``<save_dir>/<teachers|students>/models/<name>``.

    It holds the run's checkpoints, ``metrics.jsonl`` and ``summary.json``.
    """
    return Path(save_dir).expanduser() / ROOTS[kind] / "models" / name


def tensorboard_dir(save_dir: str | Path, kind: str, name: str) -> Path:
    """The TensorBoard folder of run ``name``: ``<save_dir>/<teachers|students>/tensorboard/<name>``."""
    return Path(save_dir).expanduser() / ROOTS[kind] / "tensorboard" / name
