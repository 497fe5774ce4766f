"""The sweep plans behind run_cifar_vanilla.sh and run_cifar_distill.sh, and the rows of the tables.

One place holds what the paper tables are made of: the standard teacher→student pairs (the
columns of METHODS.md §4, taken from :mod:`published`) and the method rows (:data:`ROWS`, in
the papers' order, "+KD" rows included), with each method's recommended weights read from the
method registry. ``summarize.py`` and ``plot_curves.py`` label runs with the same rows.

    python scripts/sweep.py vanilla   # every teacher and student network, TRIALS times each
    python scripts/sweep.py distill   # every method row on every pair, TRIALS times each

The plan is read from the environment, as the two shell scripts document: ``DATA_ROOT``,
``SAVE_DIR``, ``GPUS``, ``TEACHER_DIR``, ``TEACHER_TRIAL``, ``PAIRS``, ``METHODS``, ``TRIALS``,
``EXTRA_ARGS``, ``DRY_RUN``, ``PYTHON``. Every command line is parsed by the entry scripts' own
option parser before anything starts, so a typo in ``EXTRA_ARGS`` fails at once, not after
hours. A run whose folder already holds a ``summary.json`` with ``"finished": true`` is left
out, and every command carries ``--resume auto``, so a sweep can be re-run after an
interruption and continues where it stopped. Trial ``t`` (1..TRIALS) runs with ``--seed t``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import published

REPO = Path(__file__).resolve().parents[1]
DATASET = published.DATASET
STANDARD_PAIRS: tuple[published.Pair, ...] = tuple(pair for table in published.TABLES for pair in table.pairs)
TEACHER_FILE = "{arch}_last.pth"  # the last epoch, as the released RepDistiller teachers (ckpt_epoch_240)
INTERRUPTED = {130, 143, -2, -15}  # exit statuses of a run stopped by SIGINT/SIGTERM (helper/cli.py)


TEACHER_ROW, STUDENT_ROW = "teacher", "student (vanilla)"  # the rows made of train_teacher.py runs


@dataclass(frozen=True)
class Row:
    """A method row of the paper tables: the label the papers print, the registered method, "+KD"."""

    label: str
    method: str
    with_kd: bool = False  # the "+KD" rows: -a 1 on top of the method's recommended weights

    @property
    def key(self) -> str:
        """The name ``METHODS=`` selects the row by: the method, with ``+kd`` for a "+KD" row."""
        return f"{self.method}+kd" if self.with_kd else self.method


ROWS = (
    Row("KD", "kd"), Row("FitNet", "hint"), Row("AT", "attention"), Row("SP", "similarity"),
    Row("CC", "correlation"), Row("VID", "vid"), Row("RKD", "rkd"), Row("PKT", "pkt"), Row("AB", "abound"),
    Row("FT", "factor"), Row("FSP", "fsp"), Row("NST", "nst"), Row("KDSVD", "kdsvd"),
    Row("CRD", "crd"), Row("CRD+KD", "crd", True), Row("DCD", "dcd"), Row("DCD+KD", "dcd", True),
    Row("RRD", "rrd"), Row("RRD+KD", "rrd", True), Row("ITRD", "itrd"), Row("DKD", "dkd"),
    Row("SRRL", "srrl"), Row("SemCKD", "semckd"), Row("SimKD", "simkd"),
)

def _repository_on_path() -> None:
    """Make the repository's packages importable when this file runs as a script."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _registry():
    _repository_on_path()
    import distiller_zoo

    return distiller_zoo


def method_rows() -> list[Row]:
    """:data:`ROWS`, then one row for every registered method the papers' tables do not have."""
    covered = {row.method for row in ROWS}
    return [*ROWS, *(Row(name, name) for name in sorted(_registry().DISTILLERS) if name not in covered)]


def row_weights(row: Row) -> tuple[float, float, float]:
    """``(gamma, alpha, beta)`` of a row: the method's recommendation, with alpha 1 for "+KD"."""
    recommended = _registry().get(row.method).recommended
    alpha = 1.0 if row.with_kd else recommended.alpha
    return float(recommended.gamma), float(alpha), float(recommended.beta)


@cache
def _rows_by_run() -> dict[tuple[str, tuple[float, float, float]], Row]:
    return {(row.method, row_weights(row)): row for row in method_rows()}


def row_label(method: str, weights: tuple[float, float, float]) -> str:
    """The table label of runs of ``method`` with ``(gamma, alpha, beta)`` weights.

    Runs with the recommended weights get their row's label ("CRD", "CRD+KD"); any other
    weights get the method's label followed by the weights, so they never mix with a paper row.
    """
    weights = tuple(float(w) for w in weights)
    row = _rows_by_run().get((method, weights))
    if row is not None:
        return row.label
    base = next((r.label for r in method_rows() if r.method == method and not r.with_kd), method)
    gamma, alpha, beta = weights
    return f"{base} (r:{gamma} a:{alpha} b:{beta})"


def row_order(label: str) -> tuple[int, str]:
    """Sort key of table rows: the papers' order, a row with other weights right after its method's."""
    labels = [TEACHER_ROW, STUDENT_ROW, *(row.label for row in method_rows())]
    if label in labels:
        return labels.index(label), ""
    base = label.split(" (", 1)[0]
    return (labels.index(base) if base in labels else len(labels)), label


# ---------------------------------------------------------------------------------------------
# The plan.


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs, from the environment variables of the shell scripts."""

    data_root: str = "./data"
    save_dir: str = "./save"
    gpus: str | None = None
    teacher_dir: str | None = None
    teacher_trial: str = "1"
    pairs: tuple[published.Pair, ...] = STANDARD_PAIRS
    methods: tuple[str, ...] | None = None  # row keys; None = every row
    trials: int = 3
    extra_args: tuple[str, ...] = ()
    dry_run: bool = False
    python: str = "python"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SweepConfig:
        """Read ``DATA_ROOT``, ``SAVE_DIR``, ``GPUS``, ``TEACHER_DIR``, ``PAIRS``, ... (unset → default)."""
        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        trials = get("TRIALS") or "3"
        if not trials.isdigit() or int(trials) < 1:
            raise ValueError(f"TRIALS={trials!r} must be a positive integer")
        return cls(
            data_root=get("DATA_ROOT") or cls.data_root,
            save_dir=get("SAVE_DIR") or cls.save_dir,
            gpus=get("GPUS"),
            teacher_dir=get("TEACHER_DIR"),
            teacher_trial=get("TEACHER_TRIAL") or cls.teacher_trial,
            pairs=parse_pairs(get("PAIRS")) if get("PAIRS") else STANDARD_PAIRS,
            methods=tuple(parse_methods(get("METHODS"))) if get("METHODS") else None,
            trials=int(trials),
            extra_args=tuple(shlex.split(get("EXTRA_ARGS") or "")),
            dry_run=(get("DRY_RUN") or "0") not in ("0", "false", "no"),
            python=get("PYTHON") or cls.python,
        )

    def common_args(self, trial: int) -> list[str]:
        """The flags every command of trial ``trial`` carries before ``EXTRA_ARGS``."""
        gpu = ["--gpu_id", self.gpus] if self.gpus else []
        return ["--dataset", DATASET, "--data_root", self.data_root, "--save_dir", self.save_dir,
                "--trial", str(trial), "--seed", str(trial), "--resume", "auto", *gpu]


def parse_pairs(text: str) -> list[published.Pair]:
    """``"resnet56:resnet20,vgg13:vgg8"`` → pairs; a pair need not be standard (it runs as given)."""
    _repository_on_path()
    from models import model_dict

    pairs = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        teacher, sep, student = entry.partition(":")
        unknown = [name for name in (teacher, student) if name not in model_dict]
        if not sep or unknown:
            raise ValueError(f"PAIRS entry {entry!r} must be teacher:student with registered model names"
                             + (f" (unknown: {', '.join(unknown)})" if sep else ""))
        pairs.append((teacher, student))
    return pairs


def parse_methods(text: str) -> list[str]:
    """``"kd,crd,crd+kd,fitnet"`` → row keys (method names or aliases, ``+kd`` for the "+KD" rows)."""
    registry = _registry()
    keys = {row.key for row in method_rows()}
    chosen = []
    for entry in filter(None, (part.strip().lower() for part in text.split(","))):
        method, plus, kd = entry.partition("+")
        key = registry.registry.ALIASES.get(method, method) + plus + kd
        if key not in keys:
            raise ValueError(f"METHODS entry {entry!r} is not a method row; choose from: {' '.join(sorted(keys))}")
        chosen.append(key)
    return chosen


@dataclass(frozen=True)
class Command:
    """One run of the sweep: its command line and the folder it will write."""

    argv: tuple[str, ...]
    run_dir: Path

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Plan:
    """The commands to run, what was left out and why (notes), and the runs that cannot start."""

    commands: list[Command]
    notes: list[str]
    blocked: int = 0  # runs left out because their teacher checkpoint is missing


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a ``summary.json`` that says the run finished."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


def _run_dir(opt: argparse.Namespace, kind: str) -> Path:
    from helper.driver import run_name

    root = Path(opt.save_dir).expanduser() / ("teachers" if kind == "teacher" else "students")
    return root / "models" / run_name(opt, kind)


def _flag_groups(tokens: Sequence[str]) -> list[list[str]]:
    """``--epochs 1 --nce_k 64`` → ``[["--epochs", "1"], ["--nce_k", "64"]]``: each flag with its values."""
    groups: list[list[str]] = []
    for token in tokens:
        starts_flag = token.startswith("-") and not token.lstrip("-").replace(".", "", 1).isdigit()
        if starts_flag or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def _teacher_extra_args(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``EXTRA_ARGS`` into what train_teacher.py accepts and the student-only flags.

    One ``EXTRA_ARGS`` serves both scripts (``--nce_k 64`` belongs to the students), so the
    vanilla sweep drops the flags only train_student.py knows; a flag neither knows is an error.
    Each flag is matched by the option it sets in the student parser, not by its spelling, so
    that an abbreviation the teacher parser would misread (``--mode`` for ``--model``) cannot
    slip through.
    """
    from helper.errors import UsageError
    from helper.options import student_parser, teacher_parser

    required = ["--path_t", "-"]
    student_options = set(vars(student_parser().parse_args(required)))
    teacher_options = set(vars(teacher_parser().parse_args([])))
    _, unknown = student_parser().parse_known_args([*required, *extra])
    if unknown:
        raise UsageError(f"EXTRA_ARGS: unknown flag(s) {' '.join(unknown)} (see train_student.py --help)")
    kept: list[str] = []
    dropped: list[str] = []
    for group in _flag_groups(extra):
        unset = object()  # argparse leaves attributes already on the namespace alone unless a flag sets them
        namespace = argparse.Namespace(**dict.fromkeys(student_options, unset))
        student_parser().parse_args([*required, *group], namespace=namespace)
        options = {name for name, value in vars(namespace).items() if value is not unset} - {"path_t"}
        (kept if options <= teacher_options else dropped).extend(group)
    return kept, dropped


def vanilla_plan(config: SweepConfig) -> Plan:
    """Every network of the selected pairs trained with cross-entropy alone, trial by trial."""
    _repository_on_path()
    from helper.options import parse_teacher_args

    architectures = list(dict.fromkeys(name for pair in config.pairs for name in pair))
    extra, dropped = _teacher_extra_args(config.extra_args)
    notes = [f"EXTRA_ARGS for students only, not passed to teacher runs: {shlex.join(dropped)}"] if dropped else []
    commands, finished = [], 0
    for trial in range(1, config.trials + 1):
        for arch in architectures:
            args = ["--model", arch, *config.common_args(trial), *extra]
            run_dir = _run_dir(parse_teacher_args(args), "teacher")
            if is_finished(run_dir):
                finished += 1
                continue
            commands.append(Command((config.python, str(REPO / "train_teacher.py"), *args), run_dir))
    if finished:
        notes.append(f"{finished} finished run(s) skipped (their summary.json says finished)")
    return Plan(commands, notes)


def teacher_candidates(arch: str, config: SweepConfig) -> list[Path]:
    """Where the teacher checkpoint of ``arch`` is looked for, in order.

    This repository's teacher run folders (trial ``TEACHER_TRIAL``, last epoch) under
    ``TEACHER_DIR`` (default ``SAVE_DIR/teachers/models``), then RepDistiller's released layout
    ``<arch>_vanilla/ckpt_epoch_240.pth`` and SimKD's ``<arch>_vanilla/<arch>_best.pth``.
    """
    from helper.driver import run_name

    folder = Path(config.teacher_dir or Path(config.save_dir) / "teachers" / "models")
    ours = run_name(argparse.Namespace(model=arch, dataset=DATASET, trial=config.teacher_trial), "teacher")
    return [folder / ours / TEACHER_FILE.format(arch=arch),
            folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth",
            folder / f"{arch}_vanilla" / f"{arch}_best.pth"]


@cache
def probed_shapes(arch: str) -> list:
    """Shapes of ``arch``'s feature list, probed on the meta device (no memory, no compute)."""
    _repository_on_path()
    import torch

    from distiller_zoo.base import feature_shapes
    from models import model_dict

    with torch.device("meta"):
        network = model_dict[arch](num_classes=100)
    return feature_shapes(network, 32)


def infeasible_reason(method: str, teacher: str, student: str) -> str | None:
    """Why ``method`` cannot run on ``teacher``→``student`` (the method's own check), or None if it can."""
    return _registry().get(method).pairing_problem(probed_shapes(student), probed_shapes(teacher))


def distill_plan(config: SweepConfig) -> Plan:
    """Every selected method row on every selected pair with its recommended weights, trial by trial.

    Trials are the outer loop, so an interrupted sweep leaves whole tables of fewer trials.
    """
    _repository_on_path()
    from helper.options import parse_student_args

    rows = method_rows()
    if config.methods is not None:
        rows = [row for row in rows if row.key in config.methods]
    notes: list[str] = []
    runnable: dict[published.Pair, list[Row]] = {}
    teachers: dict[str, Path | None] = {}
    for teacher, student in config.pairs:
        runnable[teacher, student] = []
        for row in rows:
            reason = infeasible_reason(row.method, teacher, student)
            if reason:
                notes.append(f"skip {row.label} on {teacher}→{student}: {row.method} {reason}")
            else:
                runnable[teacher, student].append(row)
        if teacher not in teachers:
            candidates = teacher_candidates(teacher, config)
            teachers[teacher] = next((path for path in candidates if path.is_file()), None)
            if teachers[teacher] is None:
                notes.append(f"teacher {teacher} not found (looked for {', '.join(map(str, candidates))}); "
                             "train it with run_cifar_vanilla.sh or set TEACHER_DIR"
                             + ("; the commands name the first place" if config.dry_run else ""))
                teachers[teacher] = candidates[0] if config.dry_run else None

    commands, finished, blocked = [], 0, 0
    for trial in range(1, config.trials + 1):
        for (teacher, student), pair_rows in runnable.items():
            path_t = teachers[teacher]
            if path_t is None:
                blocked += len(pair_rows)
                continue
            for row in pair_rows:
                gamma, alpha, beta = row_weights(row)
                args = ["--path_t", str(path_t), "--model_s", student, "--distill", row.method,
                        "-r", str(gamma), "-a", str(alpha), "-b", str(beta), *config.common_args(trial),
                        *config.extra_args]
                opt = parse_student_args(args)
                opt.model_t = teacher
                run_dir = _run_dir(opt, "student")
                if is_finished(run_dir):
                    finished += 1
                    continue
                commands.append(Command((config.python, str(REPO / "train_student.py"), *args), run_dir))
    if finished:
        notes.append(f"{finished} finished run(s) skipped (their summary.json says finished)")
    if blocked:
        notes.append(f"{blocked} run(s) not started: their teacher checkpoint is missing")
    return Plan(commands, notes, blocked)


# ---------------------------------------------------------------------------------------------
# Running it.


def _run(argv: Sequence[str]) -> int:
    """Run one command; on Ctrl-C wait for it, since it received the signal too and saves first."""
    process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise


def execute(plan: Plan) -> int:
    """Run the plan's commands in order; a failed run is reported and the sweep goes on.

    Returns 0 when every command succeeded and none was blocked, 1 otherwise, and the run's
    status when a run was interrupted (the sweep stops there; re-running it resumes).
    """
    failed = []
    total = len(plan.commands)
    for number, command in enumerate(plan.commands, 1):
        print(f"[{number}/{total}] {command}", flush=True)
        try:
            status = _run(command.argv)
        except KeyboardInterrupt:
            status = 130
        if status in INTERRUPTED:
            print(f"interrupted during {command.run_dir.name}; run the sweep again to resume", file=sys.stderr)
            return status
        if status != 0:
            failed.append(f"{command.run_dir.name} (exit status {status})")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    print(f"{total - len(failed)} of {total} run(s) succeeded"
          + (f"; {plan.blocked} not started for want of a teacher" if plan.blocked else ""), file=sys.stderr)
    return 1 if failed or plan.blocked else 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """``sweep.py vanilla|distill``: print (``DRY_RUN=1``) or run the sweep's commands."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["vanilla", "distill"])
    kind = parser.parse_args(argv).kind
    _repository_on_path()
    from helper.errors import UsageError

    try:
        config = SweepConfig.from_env(os.environ if env is None else env)
        plan = vanilla_plan(config) if kind == "vanilla" else distill_plan(config)
    except (UsageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if config.dry_run:
        for command in plan.commands:
            print(command)
        print(f"{len(plan.commands)} command(s)", file=sys.stderr)
        return 0
    return execute(plan)


if __name__ == "__main__":
    sys.exit(main())
