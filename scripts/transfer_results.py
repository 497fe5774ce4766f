"""Linear-probe runs (``scripts/transfer.py``) read back and tabulated like the papers' transfer table.

A probe's folder is ``<save_dir>/transfer/models/<source run>/<target>_<checkpoint>_trial_<t>``
and its ``summary.json`` records the probed network (``"source"``) and the data set probed on
(``"transfer"``). A probe is keyed by its source's experiment (:class:`scripts.results.GroupKey`)
and its target, so that probes of every trial of an experiment average into one cell. The tables
follow the CRD paper's Table 5: per data set the networks were trained on and teacher→student
pair, a row per method (with "teacher" and "student (vanilla)" from networks trained alone), a
column per target data set; probes of networks trained alone that are in no probed pair get a
table of their own. Each cell is ``mean ± sample std (n)`` over finished probes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helper.run_names import DISTILLED, ROOTS, VANILLA, parse_run_name
from scripts import published
from scripts.markdown_tables import markdown_table
from scripts.results import GroupKey, Run, Stats, stats
from scripts.table_rows import STUDENT_ROW, TEACHER_ROW, row_label, row_order

TRANSFER_ROOT = "transfer"  # <save_dir>/transfer/{models,tensorboard}: where scripts/transfer.py writes
UNRECORDED = "unrecorded"  # the source data set of a probed file that does not say what it was trained on
EMPTY = "—"


@dataclass(frozen=True)
class TransferRun:
    """One probe: the run (keyed by its source's experiment) and the data set it probed on."""

    run: Run
    target: str


def _key_of_source(source: dict[str, Any]) -> GroupKey:
    weights = source.get("weights")
    return GroupKey(source.get("kind") or VANILLA, source.get("dataset") or UNRECORDED,
                    source.get("model") or source.get("arch") or "?", source.get("teacher"), source.get("method"),
                    None if weights is None else tuple(float(w) for w in weights))


def _key_of_folder(folder: Path) -> GroupKey:
    """The source experiment of a probe without a summary, from its parent folder (the source run's name)."""
    parsed = parse_run_name(folder.parent.name)
    if parsed is None:
        return GroupKey(VANILLA, UNRECORDED, folder.parent.name, None, None, None)
    return GroupKey(parsed.kind, parsed.dataset, parsed.model, parsed.teacher, parsed.method, parsed.weights)


def read_transfer_run(folder: Path) -> TransferRun | None:
    """The probe in ``folder``, or None if it holds none (a finished one by its summary, else by its place)."""
    summary = None
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((folder / "summary.json").read_text())
    if isinstance(summary, dict) and isinstance(summary.get("transfer"), dict) and isinstance(
            summary.get("source"), dict):
        source, target = summary["source"], str(summary["transfer"].get("dataset"))
        trial = f"{source.get('trial')}/{(summary.get('args') or {}).get('trial')}"
        return TransferRun(Run(folder, _key_of_source(source), trial, summary), target)
    in_place = folder.parent.parent.name == "models" and folder.parent.parent.parent.name == TRANSFER_ROOT
    if in_place and (folder / "metrics.jsonl").is_file():
        return TransferRun(Run(folder, _key_of_folder(folder), folder.name, None), folder.name.split("_", 1)[0])
    return None


def transfer_roots(save_dir: Path) -> list[Path]:
    """Where the probes of ``save_dir`` lie: its ``transfer/`` folder, or the one beside ``students/``/``teachers/``."""
    if save_dir.name == TRANSFER_ROOT:
        return [save_dir]
    candidates = [save_dir / TRANSFER_ROOT]
    if save_dir.name in ROOTS.values():
        candidates.append(save_dir.parent / TRANSFER_ROOT)
    return [folder for folder in candidates if folder.is_dir()]


def load_transfer_runs(save_dir: Path) -> list[TransferRun]:
    """Every probe under the transfer folders of ``save_dir``, sorted by path."""
    found = []
    for root in transfer_roots(Path(save_dir)):
        for folder, subfolders, _ in os.walk(root):
            subfolders[:] = [name for name in subfolders if name != "tensorboard"]
            probe = read_transfer_run(Path(folder))
            if probe is not None:
                found.append(probe)
                subfolders.clear()
    return sorted(found, key=lambda probe: str(probe.run.path))


@dataclass
class TransferTable:
    """One transfer table: the probes of one pair's networks (or of networks alone), a column per target."""

    dataset: str  # what the probed networks were trained on
    pair: published.Pair | None  # None: networks trained alone that are in no probed pair
    targets: list[str]
    rows: dict[str, dict[str, Stats]]

    @property
    def title(self) -> str:
        what = "networks trained alone" if self.pair is None else f"{self.pair[0]}→{self.pair[1]}"
        return f"{self.dataset} → other data sets: {what} (linear probe)"

    def published(self, label: str, target: str) -> tuple[float, str] | None:
        return None if self.pair is None else published.published_transfer(label, self.pair, self.dataset, target)


def _cells(probes: Iterable[TransferRun], metric: str) -> dict[tuple[GroupKey, str], Stats]:
    """Mean ± std over the finished probes of each (source experiment, target)."""
    values: dict[tuple[GroupKey, str], list[float]] = {}
    for probe in probes:
        accuracy = probe.run.accuracy(metric)
        if probe.run.finished and accuracy is not None:
            values.setdefault((probe.run.key, probe.target), []).append(accuracy)
    return {cell: stats(numbers) for cell, numbers in values.items()}


def _target_order(targets: Iterable[str]) -> list[str]:
    known = [t for table in published.TRANSFER_TABLES for t in table.targets]
    return sorted(set(targets), key=lambda t: (known.index(t) if t in known else len(known), t))


def _pairs(dataset: str, keys: Iterable[GroupKey]) -> list[published.Pair]:
    """The probed pairs of ``dataset``: those of probed students, and a published pair whose networks were probed."""
    keys = [key for key in keys if key.dataset == dataset]
    pairs = {(key.teacher, key.model) for key in keys if key.kind == DISTILLED}
    vanilla = {key.model for key in keys if key.kind == VANILLA}
    pairs |= {table.pair for table in published.TRANSFER_TABLES
              if table.dataset == dataset and vanilla & set(table.pair)}
    return sorted(pairs)


def _pair_rows(pair: published.Pair, dataset: str,
               cells: dict[tuple[GroupKey, str], Stats]) -> dict[str, dict[str, Stats]]:
    teacher, student = pair
    rows: dict[str, dict[str, Stats]] = {}
    for (key, target), value in cells.items():
        if key.dataset != dataset:
            continue
        if key.kind == VANILLA:
            labels = [label for label, model in ((TEACHER_ROW, teacher), (STUDENT_ROW, student)) if key.model == model]
        else:
            labels = [row_label(key.method, key.weights)] if (key.teacher, key.model) == pair else []
        for label in labels:
            rows.setdefault(label, {})[target] = value
    return dict(sorted(rows.items(), key=lambda item: row_order(item[0])))


def transfer_tables(probes: Sequence[TransferRun], metric: str) -> list[TransferTable]:
    """The transfer tables of ``probes``: per source data set, one per probed pair, then networks alone."""
    cells = _cells(probes, metric)
    keys = {key for key, _ in cells}
    targets = _target_order(target for _, target in cells)
    tables = []
    for dataset in sorted({key.dataset for key in keys}):
        pairs = _pairs(dataset, keys)
        for pair in pairs:
            tables.append(TransferTable(dataset, pair, targets, _pair_rows(pair, dataset, cells)))
        in_pairs = {model for pair in pairs for model in pair}
        alone = {key.model: {} for key in keys if key.dataset == dataset and key.kind == VANILLA
                 and key.model not in in_pairs}
        for (key, target), value in cells.items():
            if key.model in alone and key.dataset == dataset and key.kind == VANILLA:
                alone[key.model][target] = value
        if alone:
            tables.append(TransferTable(dataset, None, targets, dict(sorted(alone.items()))))
    return tables


def compared(value: Stats | None, reference: tuple[float, str] | None) -> str:
    """A cell's text: ``mean ± std (n)``, with ``vs published (difference)`` when there is a reference."""
    text = EMPTY if value is None else str(value)
    if reference is None:
        return text
    difference = "" if value is None else f" ({value.mean - reference[0]:+.2f})"
    return f"{text} vs {reference[0]:.2f}{difference}"


Reference = Callable[[str, Any], "tuple[float, str] | None"]


def stats_table(first: str, columns: Sequence[Any], names: Sequence[str], rows: dict[str, dict[Any, Stats]],
                reference: Reference | None = None) -> tuple[list[str], list[list[str]]]:
    """The header and text rows of a table of :class:`Stats` cells (``rows[label][column]``).

    With ``reference`` (``(label, column) → (published value, source tag) or None``) each cell gets
    its published number and the difference, and a last column names the sources of the row.
    """
    header = [first, *names, *(["published in"] if reference else [])]
    body = []
    for label, cells in rows.items():
        row = [label, *(compared(cells.get(column), reference(label, column) if reference else None)
                        for column in columns)]
        if reference:
            sources = {found[1] for column in columns if (found := reference(label, column))}
            row.append(", ".join(sorted(sources)) or EMPTY)
        body.append(row)
    return header, body


def cites_published(tables: Iterable[TransferTable]) -> bool:
    """Whether any cell of ``tables`` has a published number to be compared with."""
    return any(table.published(label, target) for table in tables for label in table.rows for target in table.targets)


def table_cells(table: TransferTable, compare: bool) -> tuple[list[str], list[list[str]]]:
    """The header and rows of ``table`` as text (the published number beside each cell if ``compare``)."""
    cited = compare and cites_published([table])
    first = "network" if table.pair is None else "method"
    return stats_table(first, table.targets, table.targets, table.rows, table.published if cited else None)


def render_transfer(tables: Sequence[TransferTable], metric: str, compare: bool) -> str:
    """The transfer tables as a Markdown section ("" when there are none)."""
    if not tables:
        return ""
    epoch = "last epoch" if metric == "last" else "best epoch (selected on test accuracy)"
    lines = [f"## Transfer: linear-probe top-1 (%), {epoch}", ""]
    for table in tables:
        header, body = table_cells(table, compare)
        lines += [f"### {table.title}", "", markdown_table(header, body), ""]
    if compare and cites_published(tables):
        lines += ["Published transfer numbers: "
                  + "; ".join(f"{tag} = {source}" for tag, source in published.TRANSFER_SOURCES.items()), ""]
    return "\n".join(lines)


def render_unfinished(probes: Sequence[TransferRun], save_dir: Path) -> str:
    """The probes that have not finished, as a Markdown list ("" when there are none)."""
    lines = []
    for probe in probes:
        if not probe.run.finished:
            planned = ((probe.run.summary or {}).get("args") or {}).get("epochs")
            done = len(probe.run.history())
            name = os.path.relpath(probe.run.path, save_dir)
            lines.append(f"- `{name}`: {done}/{planned or '?'} epoch(s) recorded")
    return "\n".join(["Incomplete transfer runs (not averaged in):", "", *lines, ""]) if lines else ""


def transfer_section(save_dir: Path, metric: str, compare: bool) -> str:
    """What ``summarize.py`` adds for the probes of ``save_dir``: their tables and the unfinished ones."""
    probes = load_transfer_runs(Path(save_dir))
    parts = (render_transfer(transfer_tables(probes, metric), metric, compare), render_unfinished(probes, save_dir))
    return "\n".join(part for part in parts if part)
