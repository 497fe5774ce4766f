"""What finished and unfinished runs left behind, read back: run folders, summaries, epoch records.

Shared by ``summarize.py`` (tables) and ``plot_curves.py`` (curves). A run folder is any folder
under the given root that holds a ``summary.json``, a ``metrics.jsonl`` or a ``latest.pth`` and is
named as train_teacher.py or train_student.py name their folders (:mod:`helper.run_names`);
TensorBoard folders, which carry the same names, hold none of those files. What a run was is read
from the arguments its ``summary.json`` records, else from its folder name (an unfinished run has
no summary); only the arguments tell which row options (``--logit_stand``, ``--optimizer``) it set.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from helper.run_names import DISTILLED, ROOTS, VANILLA, parse_run_name
from scripts.table_rows import Options, run_options

RUN_FILES = ("summary.json", "metrics.jsonl", "latest.pth")
METRICS = {"last": "last_acc", "best": "best_acc"}  # --metric → the summary.json field


class GroupKey(NamedTuple):
    """What the trials of one experiment share; runs with equal keys are averaged together."""

    kind: str  # VANILLA (train_teacher.py: cross-entropy only) or DISTILLED (train_student.py)
    dataset: str
    model: str  # the network the run trained
    teacher: str | None
    method: str | None
    weights: tuple[float, float, float] | None  # (gamma, alpha, beta) of -r/-a/-b
    options: Options = ()  # the row options it set (--logit_stand, --optimizer dot, ...: scripts.table_rows)


@dataclass(frozen=True)
class Run:
    """One run folder."""

    path: Path
    key: GroupKey
    trial: str
    summary: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished") is True)

    def accuracy(self, metric: str) -> float | None:
        """Top-1 test accuracy at the last epoch (``"last"``) or the selected best epoch (``"best"``)."""
        value = (self.summary or {}).get(METRICS[metric])
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    @property
    def selection(self) -> str | None:
        """What the best epoch was selected on: ``"val_acc"`` (held-out split) or ``"test_acc"``."""
        return (self.summary or {}).get("selection")

    @property
    def wall_time_seconds(self) -> float | None:
        """How long the run took, as its summary records it."""
        value = (self.summary or {}).get("wall_time_seconds")
        return float(value) if isinstance(value, (int, float)) else None

    def history(self) -> list[dict[str, Any]]:
        """The main-stage epoch records of ``metrics.jsonl`` (init-stage records left out), in order."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if record.get("stage", "main") == "main" and "epoch" in record:
                records.append(record)
        return records


def _key_from_args(args: dict[str, Any]) -> tuple[GroupKey, str] | None:
    try:
        if "model_s" in args:
            weights = (float(args["gamma"]), float(args["alpha"]), float(args["beta"]))
            key = GroupKey(DISTILLED, args["dataset"], args["model_s"], args["model_t"], args["distill"], weights,
                           run_options(args))
        else:
            key = GroupKey(VANILLA, args["dataset"], args["model"], None, None, None)
    except (KeyError, TypeError, ValueError):
        return None
    return key, str(args.get("trial", ""))


def _key_from_name(name: str) -> tuple[GroupKey, str] | None:
    run = parse_run_name(name)
    if run is None:
        return None
    return GroupKey(run.kind, run.dataset, run.model, run.teacher, run.method, run.weights), run.trial


def read_run(path: Path) -> Run | None:
    """The run in folder ``path``, or None if it is not a run folder."""
    if not any((path / name).is_file() for name in RUN_FILES):
        return None
    summary = None
    with contextlib.suppress(OSError, ValueError):  # absent, or cut short by a crash: an unfinished run
        summary = json.loads((path / "summary.json").read_text())
    identity = _key_from_args(summary.get("args", {})) if isinstance(summary, dict) else None
    identity = identity or _key_from_name(path.name)
    if identity is None:
        return None
    return Run(path, identity[0], identity[1], summary if isinstance(summary, dict) else None)


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder under ``root`` (``root`` included), sorted by path."""
    runs = []
    for folder, subfolders, _ in os.walk(root):
        run = read_run(Path(folder))
        if run is not None:
            runs.append(run)
            subfolders.clear()
        else:
            subfolders[:] = [name for name in subfolders if name != "tensorboard"]
    return sorted(runs, key=lambda run: str(run.path))


def load_runs(save_dir: Path) -> list[Run]:
    """Every run under ``save_dir``; given ``save/students``, ``save/teachers`` beside it too (and the reverse).

    The tables and figures need the teachers' and plain students' runs beside the distilled
    ones, and it is natural to point them at the students' folder.
    """
    folders = [save_dir]
    sibling = {ROOTS[DISTILLED]: ROOTS[VANILLA], ROOTS[VANILLA]: ROOTS[DISTILLED]}.get(save_dir.name)
    if sibling and (save_dir.parent / sibling).is_dir():
        folders.append(save_dir.parent / sibling)
    return [run for folder in folders for run in find_runs(folder)]


def group_runs(runs: Iterable[Run]) -> dict[GroupKey, list[Run]]:
    """Runs by experiment, each experiment's trials in trial order."""
    groups: dict[GroupKey, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    return {key: sorted(members, key=lambda run: run.trial) for key, members in groups.items()}


@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (None for one value) and number of trials."""

    mean: float
    std: float | None
    n: int

    def __str__(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} ({self.n})"


def stats(values: Iterable[float]) -> Stats | None:
    """:class:`Stats` of ``values``, or None when there are none."""
    values = list(values)
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stats(statistics.fmean(values), std, len(values))
