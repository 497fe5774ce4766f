"""The sweep plans behind run_cifar_vanilla.sh and run_cifar_distill.sh.

A sweep runs the paper tables: every standard teacher→student pair (:mod:`scripts.published`)
with every method row (:mod:`scripts.table_rows`, "+KD" rows included) at the row's weights and
with the row's own flags ("KD+LS": ``--logit_stand --kd_T 2``; "KD+DOT": ``--optimizer dot``).

    python scripts/sweep.py vanilla   # every teacher and student network, TRIALS times each
    python scripts/sweep.py distill   # every method row on every pair, TRIALS times each

The distill sweep runs *packs*: one train_student.py process trains the rows of one teacher,
student, trial and row flags together (``--distill kd,crd -r 0.1,1.0 -a 0.9,0.0 -b 0.0,0.8``),
from one teacher forward pass and one data stream, each member writing the run folder its solo
run would. ``PACK`` (or ``--pack N``) caps a pack's members (``PACK=1``: one run per command).
A teacher run is never packed. Where the commands run is chosen by :mod:`scripts.launchers`:
one after another here (the default), ``--gpus 0,1 --runs_per_gpu 2`` on this machine's GPUs,
or ``--launcher slurm --partition P --time MIN`` as one Slurm job array.

The plan is read from the environment, as the two shell scripts document: ``DATA_ROOT``,
``SAVE_DIR``, ``GPUS``, ``TEACHER_DIR``, ``TEACHER_TRIAL``, ``PAIRS``, ``METHODS``, ``TRIALS``,
``PACK``, ``EXTRA_ARGS``, ``DRY_RUN`` (or ``--dry_run``), ``PYTHON``. Every command line is
parsed by the entry scripts' own option parser before anything starts, so a typo in
``EXTRA_ARGS`` fails at once, not after hours; so does a flag in ``EXTRA_ARGS`` that the sweep
sets itself (``--trial``, ``--distill``, ``-r``, ...), which would otherwise run every trial in
one folder or one method under another row's name. A run whose folder already holds a
``summary.json`` with ``"finished": true`` is left out (a pack keeps its unfinished members),
and every command carries ``--resume auto``, so a sweep can be re-run after an interruption and
continues where it stopped. Trial ``t`` (1..TRIALS) runs with ``--seed t``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from errors import UsageError
from helper import run_names
from models.spec import spec_component
from scripts import launchers, published
from scripts.launchers import Command, is_finished
from scripts.table_rows import Row, method_rows, row_weights

REPO = Path(__file__).resolve().parents[1]
DATASET = published.DATASET
STANDARD_PAIRS = published.STANDARD_PAIRS
TEACHER_FILE = "{arch}_last.pth"  # the last epoch, as the released RepDistiller teachers (ckpt_epoch_240)
Weights = tuple[float, float, float]  # -r/-a/-b


# ---------------------------------------------------------------------------------------------
# The settings.


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
    pack: int | None = None  # members per pack; None = every row of a (teacher, student, trial, row flags)
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
        pack = get("PACK")
        if pack is not None and (not pack.isdigit() or int(pack) < 1):
            raise ValueError(f"PACK={pack!r} must be a positive integer (members per pack)")
        return cls(
            data_root=get("DATA_ROOT") or cls.data_root,
            save_dir=get("SAVE_DIR") or cls.save_dir,
            gpus=get("GPUS"),
            teacher_dir=get("TEACHER_DIR"),
            teacher_trial=get("TEACHER_TRIAL") or cls.teacher_trial,
            pairs=parse_pairs(get("PAIRS")) if get("PAIRS") else STANDARD_PAIRS,
            methods=tuple(parse_methods(get("METHODS"))) if get("METHODS") else None,
            trials=int(trials),
            pack=int(pack) if pack else None,
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
    """``"resnet56:resnet20,timm:resnet50:resnet8"`` → pairs; a pair need not be standard (it runs as given).

    Either side may be a ``timm:``/``torchvision:`` name (``models.spec``); CIFAR-100 must fit it.
    """
    from helper.options import resolve_model
    from models.spec import split_pair

    pairs = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        pair = split_pair(entry)
        if pair is None:
            raise ValueError(f"PAIRS entry {entry!r} must be teacher:student")
        try:
            pairs.append(tuple(resolve_model(name, DATASET, "PAIRS") for name in pair))
        except UsageError as error:
            raise ValueError(f"PAIRS entry {entry!r}: {error}") from None
    return pairs


def parse_methods(text: str) -> list[str]:
    """``"kd,crd,crd+kd,fitnet"`` → row keys (method names or aliases, ``+kd`` for the "+KD" rows)."""
    from distiller_zoo.registry import ALIASES

    keys = {row.key for row in method_rows()}
    chosen = []
    for entry in filter(None, (part.strip().lower() for part in text.split(","))):
        method, plus, kd = entry.partition("+")
        key = ALIASES.get(method, method) + plus + kd
        if key not in keys:
            raise ValueError(f"METHODS entry {entry!r} is not a method row; choose from: {' '.join(sorted(keys))}")
        chosen.append(key)
    return chosen


@dataclass
class Plan:
    """The commands to run, what was left out and why (notes), and the runs that cannot start."""

    commands: list[Command]
    notes: list[str]
    blocked: int = 0  # runs left out because their teacher checkpoint is missing

    @property
    def runs(self) -> int:
        """How many runs the commands train (a pack trains several)."""
        return sum(len(command.run_dirs) for command in self.commands)


# ---------------------------------------------------------------------------------------------
# The flags of each command: the sweep's own, then EXTRA_ARGS.


def teacher_args(arch: str, trial: int, config: SweepConfig) -> list[str]:
    """The flags the vanilla sweep gives train_teacher.py for ``arch`` in trial ``trial``."""
    return ["--model", arch, *config.common_args(trial)]


def student_args(path_t: str | Path, student: str, members: Sequence[tuple[str, Weights]], trial: int,
                 config: SweepConfig, extra: Sequence[str] = ()) -> list[str]:
    """The flags the distill sweep gives train_student.py for a pack of method rows in trial ``trial``.

    ``members`` are the rows' (method, weights), in order: one member is a solo run's command
    line (``--distill kd -r 0.1 -a 0.9 -b 0.0``), several a pack's (``--distill kd,crd -r 0.1,1.0
    ...``, one value per member). ``extra`` are the rows' own flags (``--logit_stand --kd_T 2``,
    ``--optimizer dot``), the same for every member; they come after the weights and before
    ``EXTRA_ARGS``, which may change them (and the runs then no longer count as the rows').
    """
    def listed(values) -> str:
        return ",".join(str(value) for value in values)

    methods = [method for method, _ in members]
    gamma, alpha, beta = zip(*(weights for _, weights in members))
    return ["--path_t", str(path_t), "--model_s", student, "--distill", listed(methods),
            "-r", listed(gamma), "-a", listed(alpha), "-b", listed(beta), *extra, *config.common_args(trial)]


# Where to choose what the sweep sets itself, for the message refusing it in EXTRA_ARGS.
OWNED_BY = {
    "model": "PAIRS", "model_s": "PAIRS", "model_t": "PAIRS", "path_t": "TEACHER_DIR and TEACHER_TRIAL",
    "distill": "METHODS", "gamma": "METHODS: each row has its weights", "alpha": "METHODS: each row has its weights",
    "beta": "METHODS: each row has its weights", "trial": "TRIALS", "seed": "TRIALS: trial t runs with --seed t",
    "save_dir": "SAVE_DIR", "data_root": "DATA_ROOT", "gpu_id": "GPUS",
    "dataset": "the sweeps run CIFAR-100 only", "resume": "every run resumes from its own folder",
}
_PROBE = "<the teacher checkpoint of the option probe>"  # a --path_t no EXTRA_ARGS passes


def _options_set(tokens: Sequence[str]) -> set[str]:
    """The train_student.py options that ``tokens`` set, whatever their spelling.

    The tokens are parsed by train_student.py's own parser, so every spelling it accepts is
    matched: aliases (``-c`` for ``-r``), ``--flag=value``, hyphens (``--path-t``) and
    abbreviations (``--tri``). A student flag that train_teacher.py lacks sets its option here
    too, so one question answers for both scripts (``--model`` alone is ambiguous to this parser
    and is an error).
    """
    from helper.options import student_parser

    required = ["--path_t", _PROBE]
    unset = object()  # argparse leaves attributes already on the namespace alone unless a flag sets them
    namespace = argparse.Namespace(**dict.fromkeys(vars(student_parser().parse_args(required)), unset))
    student_parser().parse_args([*required, *tokens], namespace=namespace)
    chosen = {name for name, value in vars(namespace).items() if value is not unset}
    return chosen - {"path_t"} if namespace.path_t == _PROBE else chosen


def _owned_options(config: SweepConfig) -> set[str]:
    """The options the sweep sets itself, and ``model_t``, which the distill sweep derives from the pair.

    The teacher commands carry the same common flags and ``--model``, which EXTRA_ARGS cannot
    set anyway: train_student.py's parser finds it ambiguous (``--model_s``/``--model_t``).
    """
    return _options_set(student_args("-", "resnet8", [("kd", (1.0, 1.0, 1.0))], 1, config)) | {"model_t"}


def check_extra_args(config: SweepConfig) -> None:
    """Refuse ``EXTRA_ARGS`` with an unknown flag, or with a flag that sets what the sweep sets itself.

    The sweep's own flags come first on each command line, so a later ``--trial 5`` would win:
    every trial would share one folder, and ``--distill crd`` would run CRD under every row's
    name. Raises :class:`~errors.UsageError` naming the flags and where to choose instead.
    """
    from helper.options import student_parser

    try:
        _, unknown = student_parser().parse_known_args(["--path_t", _PROBE, *config.extra_args])
        if unknown:
            raise UsageError(f"unknown flag(s) {' '.join(unknown)} (see train_student.py --help)")
        owned = _owned_options(config)
        refused = [f"{shlex.join(group)} sets --{name} ({OWNED_BY.get(name, 'the sweep sets it')})"
                   for group in _flag_groups(config.extra_args) for name in sorted(_options_set(group) & owned)]
    except UsageError as error:
        raise UsageError(f"EXTRA_ARGS: {error}") from None
    if refused:
        raise UsageError("EXTRA_ARGS may not set what the sweep sets itself: " + "; ".join(refused))


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
    vanilla sweep drops the flags only train_student.py knows. Each flag is matched by the
    option it sets in the student parser, not by its spelling, so that an abbreviation the
    teacher parser would misread (``--mode`` for ``--model``) cannot slip through.
    """
    from helper.options import teacher_parser

    teacher_options = set(vars(teacher_parser().parse_args([])))
    kept: list[str] = []
    dropped: list[str] = []
    for group in _flag_groups(extra):
        (kept if _options_set(group) <= teacher_options else dropped).extend(group)
    return kept, dropped


def _teacher_run_dir(opt: argparse.Namespace) -> Path:
    """The folder train_teacher.py will write for the options ``opt``."""
    return run_names.run_dir(opt.save_dir, run_names.VANILLA,
                             run_names.teacher_run_name(opt.model, opt.dataset, opt.trial))


def _student_run_dir(opt: argparse.Namespace, teacher: str) -> Path:
    """The folder train_student.py will write for the options ``opt`` and teacher architecture ``teacher``."""
    from helper.driver import run_name  # it names DOT runs apart (``kd+dot``)

    return run_names.run_dir(opt.save_dir, run_names.DISTILLED, run_name(opt, teacher))


# ---------------------------------------------------------------------------------------------
# The plans.


def vanilla_plan(config: SweepConfig) -> Plan:
    """Every network of the selected pairs trained with cross-entropy alone, trial by trial."""
    from helper.options import parse_teacher_args

    check_extra_args(config)
    architectures = list(dict.fromkeys(name for pair in config.pairs for name in pair))
    extra, dropped = _teacher_extra_args(config.extra_args)
    notes = [f"EXTRA_ARGS for students only, not passed to teacher runs: {shlex.join(dropped)}"] if dropped else []
    commands, finished = [], 0
    for trial in range(1, config.trials + 1):
        for arch in architectures:
            args = [*teacher_args(arch, trial, config), *extra]
            run_dir = _teacher_run_dir(parse_teacher_args(args))
            if is_finished(run_dir):
                finished += 1
                continue
            commands.append(Command((config.python, str(REPO / "train_teacher.py"), *args), (run_dir,)))
    if finished:
        notes.append(f"{finished} finished run(s) skipped (their summary.json says finished)")
    return Plan(commands, notes)


def teacher_candidates(arch: str, config: SweepConfig) -> list[Path]:
    """Where the teacher checkpoint of ``arch`` is looked for, in order.

    This repository's teacher run folders (trial ``TEACHER_TRIAL``, last epoch) under
    ``TEACHER_DIR`` (default ``SAVE_DIR/teachers/models``), then RepDistiller's released layout
    ``<arch>_vanilla/ckpt_epoch_240.pth`` and SimKD's ``<arch>_vanilla/<arch>_best.pth``.
    """
    ours = run_names.teacher_run_name(arch, DATASET, config.teacher_trial)
    folder = Path(config.teacher_dir) if config.teacher_dir else run_names.run_dir(
        config.save_dir, run_names.VANILLA, ours).parent
    return [folder / ours / TEACHER_FILE.format(arch=spec_component(arch)),
            folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth",
            folder / f"{arch}_vanilla" / f"{arch}_best.pth"]


@cache
def probed_shapes(arch: str) -> list:
    """Shapes of ``arch``'s feature list, probed on the meta device (no memory, no compute)."""
    import torch

    from distiller_zoo.base import feature_shapes
    from models import build_model

    with torch.device("meta"):
        network = build_model(arch, 100, 32)
    return feature_shapes(network, 32)


def infeasible_reason(method: str, teacher: str, student: str) -> str | None:
    """Why ``method`` cannot run on ``teacher``→``student`` (the method's own check), or None if it can."""
    import distiller_zoo

    return distiller_zoo.get(method).pairing_problem(probed_shapes(student), probed_shapes(teacher))


def _find_teachers(config: SweepConfig, notes: list[str]) -> dict[str, Path | None]:
    """Each selected pair's teacher checkpoint (None where missing, noted); a dry run names the first place."""
    teachers: dict[str, Path | None] = {}
    for teacher in dict.fromkeys(teacher for teacher, _ in config.pairs):
        candidates = teacher_candidates(teacher, config)
        teachers[teacher] = next((path for path in candidates if path.is_file()), None)
        if teachers[teacher] is None:
            notes.append(f"teacher {teacher} not found (looked for {', '.join(map(str, candidates))}); "
                         "train it with run_cifar_vanilla.sh or set TEACHER_DIR"
                         + ("; the commands name the first place" if config.dry_run else ""))
            teachers[teacher] = candidates[0] if config.dry_run else None
    return teachers


def distill_plan(config: SweepConfig) -> Plan:
    """Every selected method row on every selected pair with its weights and flags, trial by trial, in packs.

    Trials are the outer loop, so an interrupted sweep leaves whole tables of fewer trials. The
    unfinished runs of one pair and trial are packed by their rows' flags (the plain rows
    together, the "+LS" rows together, ...), in the rows' order, at most ``config.pack`` a pack.
    """
    from helper.options import parse_student_args

    check_extra_args(config)
    rows = method_rows()
    if config.methods is not None:
        rows = [row for row in rows if row.key in config.methods]
    notes: list[str] = []
    runnable: dict[published.Pair, list[Row]] = {}
    for teacher, student in config.pairs:
        runnable[teacher, student] = []
        for row in rows:
            reason = infeasible_reason(row.method, teacher, student)
            if reason:
                notes.append(f"skip {row.label} on {teacher}→{student}: {row.method} {reason}")
            else:
                runnable[teacher, student].append(row)
    teachers = _find_teachers(config, notes)

    commands, finished, blocked, twice, planned = [], 0, 0, 0, set()
    for trial in range(1, config.trials + 1):
        for (teacher, student), pair_rows in runnable.items():
            path_t = teachers[teacher]
            if path_t is None:
                blocked += len(pair_rows)
                continue
            groups: dict[tuple[str, ...], list[tuple[tuple[str, Weights], Path]]] = {}
            for row in pair_rows:
                member = (row.method, row_weights(row))
                args = [*student_args(path_t, student, [member], trial, config, row.extra), *config.extra_args]
                run_dir = _student_run_dir(parse_student_args(args), teacher)
                if run_dir in planned:
                    twice += 1
                    continue
                planned.add(run_dir)
                if is_finished(run_dir):
                    finished += 1
                    continue
                groups.setdefault(row.extra, []).append((member, run_dir))
            for extra, members in groups.items():
                size = config.pack or len(members)
                for start in range(0, len(members), size):
                    pack = members[start:start + size]
                    args = [*student_args(path_t, student, [member for member, _ in pack], trial, config, extra),
                            *config.extra_args]
                    commands.append(Command((config.python, str(REPO / "train_student.py"), *args),
                                            tuple(run_dir for _, run_dir in pack)))
    if finished:
        notes.append(f"{finished} finished run(s) skipped (their summary.json says finished)")
    if twice:
        notes.append(f"{twice} run(s) planned once: EXTRA_ARGS gives two rows the same run folder")
    if blocked:
        notes.append(f"{blocked} run(s) not started: their teacher checkpoint is missing")
    return Plan(commands, notes, blocked)


# ---------------------------------------------------------------------------------------------
# Running it.


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are usage errors (one line, exit 2, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


def parser() -> argparse.ArgumentParser:
    """``sweep.py``'s flags: the kind of sweep, the pack size, the dry run and the launcher."""
    result = _Parser(description=__doc__.split("\n\n")[0])
    result.add_argument("kind", choices=["vanilla", "distill"])
    result.add_argument("--pack", type=int, help="distill: at most this many runs per command (overrides PACK; "
                                                 "default: every row of a pair, trial and row flags)")
    result.add_argument("--dry_run", action="store_true", help="print the commands, run nothing (as DRY_RUN=1)")
    launchers.add_arguments(result)
    return result


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """``sweep.py vanilla|distill [flags]``: print (``DRY_RUN=1``, ``--dry_run``) or run the sweep's commands."""
    try:
        args = parser().parse_args(argv)
        if args.pack is not None and args.pack < 1:
            raise UsageError(f"--pack {args.pack} must be positive (runs per command)")
        if args.pack is not None and args.kind == "vanilla":
            raise UsageError("--pack is for the distill sweep; teacher runs are not packed")
        config = SweepConfig.from_env(os.environ if env is None else env)
        config = dataclasses.replace(config, pack=args.pack or config.pack, dry_run=config.dry_run or args.dry_run)
        launcher = launchers.from_args(args, config.save_dir, config.gpus)
        plan = vanilla_plan(config) if args.kind == "vanilla" else distill_plan(config)
    except (UsageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if config.dry_run:
        for command in plan.commands:
            print(command)
        for line in launcher.describe(plan.commands):
            print(line, file=sys.stderr)
        print(f"{len(plan.commands)} command(s), {plan.runs} run(s)", file=sys.stderr)
        return 0
    try:
        return launcher.launch(plan.commands, plan.blocked)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
