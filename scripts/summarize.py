"""Summarise a save folder as the papers' CIFAR-100 tables: mean ± std over trials per cell.

    python scripts/summarize.py save                       # last-epoch accuracy (the papers' metric)
    python scripts/summarize.py save --metric best         # accuracy at the selected best epoch
    python scripts/summarize.py save --compare             # the published number and the difference
    python scripts/summarize.py save --runs                # one row per experiment, any data set
    python scripts/summarize.py save --html report.html    # also one self-contained page: tables, curves, plots

The paper layout has a column per teacher→student pair and a row per method; the rows
"teacher" and "student (vanilla)" come from the train_teacher.py runs of the pair's two
networks. On CIFAR-100 the standard pairs are split into the papers' same- and
cross-architecture tables; any other pair goes into a third table. Every finished experiment
that no such table shows (a network trained alone that is in no pair, a run whose accuracy is
not a number) is listed below them, one row per experiment, so that no finished run goes
unseen. Each cell is ``mean ± sample std (n)`` over the finished trials (no std for one trial).
Runs that have not finished are listed at the end and never averaged in. The Markdown is printed
and written, with a CSV of the same tables, to ``--out`` (default: the save folder) as
``table_<metric>.md`` and ``.csv`` (the experiments outside the tables in
``table_<metric>_other.csv``; ``runs_<metric>.*`` with ``--runs``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from helper.run_names import DISTILLED, VANILLA
from scripts import published
from scripts.markdown_tables import markdown_table
from scripts.results import GroupKey, Run, Stats, group_runs, load_runs, stats
from scripts.table_rows import STUDENT_ROW, TEACHER_ROW, row_label, row_order
from scripts.transfer_results import transfer_section

EMPTY = "—"


def arrow(pair: published.Pair) -> str:
    """``("resnet56", "resnet20")`` → ``"resnet56→resnet20"``, the column header of the papers."""
    return f"{pair[0]}→{pair[1]}"


def label_of(key: GroupKey) -> str:
    """The table row of an experiment: its method row ("KD", "CRD+KD", "KD+LS"), or ``vanilla``."""
    return "vanilla" if key.method is None else row_label(key.method, key.weights, key.options)


def cell(runs: Sequence[Run], metric: str) -> Stats | None:
    """Mean ± std over the finished runs' accuracies."""
    return stats(value for run in runs if run.finished and (value := run.accuracy(metric)) is not None)


@dataclass
class Table:
    """One paper-layout table: pairs as columns, method rows of per-pair cells."""

    title: str
    dataset: str
    pairs: list[published.Pair]
    rows: dict[str, dict[published.Pair, Stats]]
    keys: frozenset[GroupKey]  # the experiments whose cells it shows

    def published(self, label: str, pair: published.Pair) -> tuple[float, str] | None:
        return published.published(label, pair) if self.dataset == published.DATASET else None


def _sections(dataset: str, keys: Iterable[GroupKey]) -> list[tuple[str, list[published.Pair]]]:
    """The tables of one data set, as (title, pair columns): the papers' tables, then the other pairs."""
    sections = [(table.title, list(table.pairs)) for table in published.TABLES if dataset == published.DATASET]
    standard = {pair for _, pairs in sections for pair in pairs}
    distilled = {(key.teacher, key.model) for key in keys if key.dataset == dataset and key.kind == DISTILLED}
    return [*sections, ("Other pairs" if sections else "Pairs", sorted(distilled - standard))]


def _column(pair: published.Pair, dataset: str, keys: Iterable[GroupKey]) -> dict[str, GroupKey]:
    """The experiments of one pair's column, by row label: its two networks alone, then its methods."""
    teacher, student = pair
    column: dict[str, GroupKey] = {}
    for key in keys:
        if key.dataset == dataset and key.kind == VANILLA:
            column.update({label: key for label, model in ((TEACHER_ROW, teacher), (STUDENT_ROW, student))
                           if key.model == model})
    column.update({label_of(key): key for key in keys
                   if key.dataset == dataset and key.kind == DISTILLED and (key.teacher, key.model) == pair})
    return column


def _pair_table(title: str, dataset: str, pairs: Sequence[published.Pair],
                cells: dict[GroupKey, Stats]) -> Table | None:
    """The table of ``pairs`` (those with a run of their own; a teacher's runs alone do not count), or None."""
    columns = {pair: _column(pair, dataset, cells) for pair in pairs}
    shown = [pair for pair in pairs if set(columns[pair]) - {TEACHER_ROW}]
    if not shown:
        return None
    rows: dict[str, dict[published.Pair, Stats]] = {}
    for pair in shown:
        for label, key in columns[pair].items():
            rows.setdefault(label, {})[pair] = cells[key]
    ordered = dict(sorted(rows.items(), key=lambda item: row_order(item[0])))
    return Table(title, dataset, shown, ordered, frozenset(key for pair in shown for key in columns[pair].values()))


def paper_tables(runs: Sequence[Run], metric: str) -> list[Table]:
    """The tables of :func:`main`: per data set, the papers' pair groups, then the other pairs."""
    cells = {key: value for key, members in group_runs(runs).items() if (value := cell(members, metric)) is not None}
    tables = []
    for dataset in sorted({key.dataset for key in cells}):
        for title, pairs in _sections(dataset, cells):
            table = _pair_table(title, dataset, pairs, cells)
            if table is not None:
                tables.append(table)
    return tables


def metric_title(runs: Sequence[Run], metric: str) -> str:
    """What the numbers are, for the title line: which epoch, and what chose it."""
    if metric == "last":
        return "last epoch"
    selections = {run.selection for run in runs if run.finished}
    if selections == {"val_acc"}:
        return "best epoch, selected on the held-out validation split (--val_split)"
    if selections == {"test_acc"}:
        return "best epoch, selected on test accuracy (optimistic: the test set chose the epoch)"
    return "best epoch, selected on validation accuracy where --val_split was used, else on test accuracy"


def _compared(table: Table, label: str, pair: published.Pair, value: Stats | None) -> str:
    text = str(value) if value is not None else EMPTY
    reference = table.published(label, pair)
    if reference is None:
        return text
    difference = f" ({value.mean - reference[0]:+.2f})" if value is not None else ""
    return f"{text} vs {reference[0]:.2f}{difference}"


def render_tables(tables: Sequence[Table], title: str, compare: bool) -> str:
    """The tables as Markdown, each cell with the published number and the difference if ``compare``."""
    lines = [f"# {title}", ""]
    for table in tables:
        lines += [f"## {table.dataset}: {table.title}", ""]
        with_published = compare and table.dataset == published.DATASET
        header = ["method", *map(arrow, table.pairs), *(["published in"] if with_published else [])]
        body = []
        for label, cells in table.rows.items():
            row = [label]
            for pair in table.pairs:
                row.append(_compared(table, label, pair, cells.get(pair)) if with_published
                           else str(cells[pair]) if pair in cells else EMPTY)
            if with_published:
                sources = {reference[1] for pair in table.pairs if (reference := table.published(label, pair))}
                row.append(", ".join(sorted(sources)) or EMPTY)
            body.append(row)
        lines += [markdown_table(header, body), ""]
    if compare:
        lines += ["Published numbers: "
                  + "; ".join(f"{tag} = {source}" for tag, source in published.SOURCES.items()), ""]
    return "\n".join(lines)


def write_tables_csv(tables: Sequence[Table], path: Path, compare: bool) -> None:
    """The tables as one CSV: a line per (table, method), mean/std/n columns per pair."""
    pairs = list(dict.fromkeys(pair for table in tables for pair in table.pairs))
    fields = ["mean", "std", "n", *(["published", "difference"] if compare else [])]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = [f"{arrow(pair)} {field}" for pair in pairs for field in fields]
        writer.writerow(["dataset", "table", "method", *columns])
        for table in tables:
            for label, cells in table.rows.items():
                line = [table.dataset, table.title, label]
                for pair in pairs:
                    value = cells.get(pair) if pair in table.pairs else None
                    line += [f"{value.mean:.4f}", "" if value.std is None else f"{value.std:.4f}", value.n] if value \
                        else ["", "", ""]
                    if compare:
                        reference = table.published(label, pair) if pair in table.pairs else None
                        line += ["", ""] if reference is None else [
                            reference[0], "" if value is None else f"{value.mean - reference[0]:+.4f}"]
                writer.writerow(line)


@dataclass(frozen=True)
class RunRow:
    """One line of the ``--runs`` table: an experiment, its row label, accuracy and wall time."""

    key: GroupKey
    label: str
    accuracy: Stats | None
    hours: Stats | None  # wall time per finished run, in hours

    def cells(self) -> list[str]:
        key = self.key
        return [key.kind, key.dataset, key.model, key.teacher or EMPTY, self.label if key.method else EMPTY,
                "/".join(map(str, key.weights)) if key.weights else EMPTY,
                str(self.accuracy) if self.accuracy else EMPTY, f"{self.hours.mean:.2f}" if self.hours else EMPTY]


def run_rows(runs: Sequence[Run], metric: str) -> list[RunRow]:
    """One :class:`RunRow` per experiment: vanilla runs first (teachers before students), then distilled."""
    groups = group_runs(runs)
    teachers = {key.teacher for key in groups if key.kind == DISTILLED}

    def order(key: GroupKey) -> tuple:
        if key.kind == VANILLA:
            return (0, key.dataset, key.model not in teachers, key.model)
        return (1, key.dataset, key.teacher, key.model, row_order(label_of(key)))

    return [RunRow(key, label_of(key), cell(groups[key], metric),
                   stats(run.wall_time_seconds / 3600 for run in groups[key]
                         if run.finished and run.wall_time_seconds is not None))
            for key in sorted(groups, key=order)]


RUN_HEADER = ["kind", "dataset", "model", "teacher", "method", "weights (r/a/b)", "top-1 (%)", "hours per run"]


def render_runs(rows: Sequence[RunRow], title: str) -> str:
    """The flat ``--runs`` table as Markdown."""
    return "\n".join([f"# {title}", "", markdown_table(RUN_HEADER, [row.cells() for row in rows]), ""])


def other_rows(runs: Sequence[Run], tables: Sequence[Table], metric: str) -> list[RunRow]:
    """The experiments with a finished run that none of ``tables`` shows, as ``--runs`` rows."""
    shown = frozenset().union(*(table.keys for table in tables))
    finished = {run.key for run in runs if run.finished}
    return [row for row in run_rows(runs, metric) if row.key in finished and row.key not in shown]


def render_others(rows: Sequence[RunRow]) -> str:
    """The experiments outside the paper tables, as a Markdown section ("" when there are none)."""
    if not rows:
        return ""
    return "\n".join(["## Finished runs outside the tables above", "",
                      markdown_table(RUN_HEADER, [row.cells() for row in rows]), ""])


def write_runs_csv(rows: Sequence[RunRow], path: Path) -> None:
    """The ``--runs`` table as CSV, with the numbers in columns of their own."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "dataset", "model", "teacher", "method", "gamma", "alpha", "beta",
                         "mean", "std", "n", "hours_per_run"])
        for row in rows:
            key, value = row.key, row.accuracy
            weights = list(key.weights) if key.weights else ["", "", ""]
            numbers = [f"{value.mean:.4f}", "" if value.std is None else f"{value.std:.4f}", value.n] if value \
                else ["", "", 0]
            hours = f"{row.hours.mean:.4f}" if row.hours else ""
            writer.writerow([key.kind, key.dataset, key.model, key.teacher or "", row.label if key.method else "",
                             *weights, *numbers, hours])


def runs_report(runs: Sequence[Run], metric: str, title: str, stem: Path) -> tuple[str, list[Path]]:
    """The ``--runs`` table as Markdown, and the CSV of it written to ``<stem>.csv``."""
    rows = run_rows(runs, metric)
    write_runs_csv(rows, stem.with_suffix(".csv"))
    return render_runs(rows, title), [stem.with_suffix(".csv")]


def tables_report(runs: Sequence[Run], metric: str, title: str, compare: bool,
                  stem: Path) -> tuple[str, list[Path]]:
    """The paper tables and below them the finished experiments they leave out, as Markdown, and the CSVs written.

    The tables go to ``<stem>.csv``, the rest to ``<stem>_other.csv`` (removed when there is no rest, so
    that an old one cannot pass for current).
    """
    tables = paper_tables(runs, metric)
    others = other_rows(runs, tables, metric)
    written = [stem.with_suffix(".csv")]
    write_tables_csv(tables, written[0], compare)
    other_csv = stem.with_name(f"{stem.name}_other.csv")
    if others:
        write_runs_csv(others, other_csv)
        written.append(other_csv)
    else:
        other_csv.unlink(missing_ok=True)
    if not tables and not others:
        return f"# {title}\n\nNo finished runs.\n", written
    return "\n".join(part for part in (render_tables(tables, title, compare), render_others(others)) if part), written


def render_incomplete(runs: Sequence[Run], root: Path) -> str:
    """The runs left out because they have not finished, with how far each got."""
    unfinished = [run for run in runs if not run.finished]
    if not unfinished:
        return ""
    lines = ["Incomplete runs (not averaged in):", ""]
    for run in unfinished:
        done = len(run.history())
        planned = ((run.summary or {}).get("args") or {}).get("epochs")
        progress = f"{done}/{planned}" if planned else f"{done}"
        state = "summary.json says not finished" if run.summary else "no summary.json"
        base = root if run.path.is_relative_to(root) else root.parent
        name = run.path.relative_to(base) if run.path.is_relative_to(base) else run.path
        lines.append(f"- `{name}`: {progress} epoch(s) recorded, {state}")
    return "\n".join([*lines, ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("save_dir", type=Path, help="the --save_dir of the runs (or its students/ folder)")
    parser.add_argument("--metric", choices=["last", "best"], default="last",
                        help="last-epoch accuracy (the papers' metric) or the accuracy at the selected best epoch")
    parser.add_argument("--compare", action="store_true",
                        help="put the published number and the difference beside each cell")
    parser.add_argument("--runs", action="store_true", help="one row per experiment instead of the paper layout")
    parser.add_argument("--out", type=Path, default=None, help="folder for the .md and .csv files (default: save_dir)")
    parser.add_argument("--html", type=Path, default=None,
                        help="also write one self-contained HTML page of the whole save folder to this file")
    args = parser.parse_args(argv)
    if not args.save_dir.is_dir():
        print(f"error: {args.save_dir} is not a folder; pass the --save_dir of your runs", file=sys.stderr)
        return 2
    runs = load_runs(args.save_dir)
    if not runs:
        print(f"error: no run folders under {args.save_dir}", file=sys.stderr)
        return 2
    title = f"Top-1 test accuracy (%), {metric_title(runs, args.metric)}: mean ± sample std (n trials)"
    out = args.out or args.save_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{'runs' if args.runs else 'table'}_{args.metric}"
    if args.runs:
        text, written = runs_report(runs, args.metric, title, stem)
    else:
        text, written = tables_report(runs, args.metric, title, args.compare, stem)
    incomplete = render_incomplete(runs, args.save_dir)
    transfer = transfer_section(args.save_dir, args.metric, args.compare)  # scripts/transfer.py probes, if any
    text = "\n".join(part for part in (text, transfer, incomplete) if part).rstrip("\n") + "\n"
    stem.with_suffix(".md").write_text(text)
    print(text, end="")
    print(f"wrote {', '.join(map(str, [stem.with_suffix('.md'), *written]))}", file=sys.stderr)
    if args.html:
        from scripts.report_html import write_report  # it builds on this module, and draws figures

        print(f"wrote {write_report(args.html, args.save_dir, runs, args.metric, args.compare, title)}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
