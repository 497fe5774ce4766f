"""One static HTML page that shows a whole save folder at a glance (``summarize.py SAVE --html report.html``).

The page stands alone: its styles are inline, every figure is embedded as a PNG data URI, and
it has no script and no link to the network, so it opens from disk (or an e-mail, or an
archive) in any browser. Its sections, each only when there is something to show:

* the paper-layout tables of ``summarize.py`` (``mean ± std (n)``, and with ``--compare`` the
  published number, the difference and the source), and the finished experiments they leave out;
* the linear-probe transfer tables (``scripts/transfer.py`` runs, :mod:`scripts.transfer_results`);
* the accuracy and loss curves of every pair and of the networks trained alone (``plot_curves.py``);
* the analysis figures (``scripts/analyze.py``: t-SNE and class-correlation difference) found
  anywhere under the save folder;
* every run folder with links to its files (relative to the page, so the page and the save
  folder move together), and apart from them the runs that have not finished.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from scripts import published, summarize
from scripts.analyze import CORRELATION_FILE, TSNE_FILE
from scripts.plot_curves import plot_all
from scripts.results import Run
from scripts.transfer_results import (
    TransferRun,
    cites_published,
    load_transfer_runs,
    stats_table,
    table_cells,
    transfer_tables,
)

STYLE = """
body { font-family: sans-serif; margin: 24px auto; padding: 0 16px; max-width: 1400px; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccd; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccd; padding: 4px 8px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th { background: #eef0f6; } tr:nth-child(even) td { background: #f8f9fc; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { display: inline-block; margin: 0 16px 24px 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ccd; }
figcaption { font-size: 0.85em; color: #444; max-width: 900px; }
nav a { margin-right: 1em; } .files a { margin-right: 0.8em; } .note { color: #555; }
"""


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(header: Sequence[object], rows: Iterable[Sequence[object]], raw_last: bool = False) -> str:
    """An HTML table of text cells (escaped; the last cell of each row given as HTML when ``raw_last``)."""
    head = "".join(f"<th>{_escape(cell)}</th>" for cell in header)
    lines = []
    for row in rows:
        cells = [f'<td class="num">{_escape(cell)}</td>' if index else f"<td>{_escape(cell)}</td>"
                 for index, cell in enumerate(row[:-1] if raw_last else row)]
        if raw_last:
            cells.append(f"<td>{row[-1]}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _image(path: Path, caption: str) -> str:
    """A PNG file embedded as a data URI, with its caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_escape(caption)}">'
            f"<figcaption>{_escape(caption)}</figcaption></figure>")


def _link(target: Path, page: Path, text: str) -> str:
    """A link from the page to ``target``, relative (``:`` in run names escaped, so it is no URL scheme)."""
    relative = Path(os.path.relpath(target, page.parent)).as_posix()
    href = quote(relative if relative.startswith("../") else f"./{relative}")
    return f'<a href="{_escape(href)}">{_escape(text)}</a>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_escape(title)}</h2>{body}</section>' if body else ""


# ---------------------------------------------------------------------------------------------


def paper_tables_html(runs: Sequence[Run], metric: str, compare: bool) -> str:
    """The paper-layout tables and the finished experiments outside them."""
    tables = summarize.paper_tables(runs, metric)
    parts = []
    for table in tables:
        cited = compare and table.dataset == published.DATASET
        header, body = stats_table("method", table.pairs, [summarize.arrow(p) for p in table.pairs], table.rows,
                                   table.published if cited else None)
        parts.append(f"<h3>{_escape(f'{table.dataset}: {table.title}')}</h3>{_table(header, body)}")
    others = summarize.other_rows(runs, tables, metric)
    if others:
        parts.append("<h3>Finished runs outside the tables above</h3>"
                     + _table(summarize.RUN_HEADER, [row.cells() for row in others]))
    if compare and any(table.dataset == published.DATASET for table in tables):
        sources = "; ".join(f"{tag} = {source}" for tag, source in published.SOURCES.items())
        parts.append(f'<p class="note">Published numbers: {_escape(sources)}</p>')
    return "".join(parts)


def transfer_html(probes: Sequence[TransferRun], metric: str, compare: bool) -> str:
    """The linear-probe transfer tables."""
    tables = transfer_tables(probes, metric)
    parts = []
    for table in tables:
        header, body = table_cells(table, compare)
        parts.append(f"<h3>{_escape(table.title)}</h3>{_table(header, body)}")
    if compare and cites_published(tables):
        sources = "; ".join(f"{tag} = {source}" for tag, source in published.TRANSFER_SOURCES.items())
        parts.append(f'<p class="note">Published transfer numbers: {_escape(sources)}</p>')
    return "".join(parts)


def curves_html(save_dir: Path) -> str:
    """Every figure of ``plot_curves.py`` for the save folder, embedded."""
    with tempfile.TemporaryDirectory(prefix="report_curves_") as folder:
        return "".join(_image(path, path.stem.replace("_to_", "→")) for path in plot_all(save_dir, Path(folder)))


def _analysis_caption(record: dict, folder: str) -> str:
    student, teacher = record.get("student") or {}, record.get("teacher") or {}
    who = (f"student {student.get('arch')} ({student.get('run')}, test {student.get('test_acc', 0):.2f}%) vs "
           f"teacher {teacher.get('arch')} ({teacher.get('run')}, test {teacher.get('test_acc', 0):.2f}%)")
    if record.get("kind") == "correlation":
        return f"{folder}: class-correlation difference, mean {record.get('mean_abs_difference', 0):.4f}; {who}"
    return f"{folder}: t-SNE of {len(record.get('labels', []))} test images; {who}"


def analysis_html(save_dir: Path) -> str:
    """The figures ``scripts/analyze.py`` wrote anywhere under the save folder, with their JSON's numbers."""
    names = {f"{TSNE_FILE}.json", f"{CORRELATION_FILE}.json"}
    found = []
    for folder, subfolders, files in os.walk(save_dir):
        subfolders[:] = [name for name in subfolders if name != "tensorboard"]
        found += [Path(folder) / name for name in names & set(files)]
    parts = []
    for path in sorted(found):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        png = path.with_suffix(".png")
        if png.is_file() and isinstance(record, dict):
            parts.append(_image(png, _analysis_caption(record, os.path.relpath(path.parent, save_dir))))
    return "".join(parts)


def _files(folder: Path, page: Path) -> str:
    """Links to the files of a run folder and of its analysis subfolders."""
    entries = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "run.lock")
    links = "".join(_link(path, page, path.relative_to(folder).as_posix()) for path in entries)
    return f'<span class="files">{links}</span>'


def _status(run: Run) -> str:
    planned = ((run.summary or {}).get("args") or {}).get("epochs")
    done = len(run.history())
    if run.finished:
        return "finished"
    return f"{done}/{planned or '?'} epochs, " + ("summary says not finished" if run.summary else "no summary.json")


def runs_html(runs: Sequence[Run], probes: Sequence[TransferRun], save_dir: Path, page: Path,
              finished: bool) -> str:
    """The finished (or the unfinished) runs and probes: folder, what it is, status, accuracy, file links."""
    rows = []
    entries = [(run, "training") for run in runs] + [(probe.run, f"probe on {probe.target}") for probe in probes]
    for run, what in sorted(entries, key=lambda entry: str(entry[0].path)):
        if run.finished != finished:
            continue
        key = run.key
        label = summarize.label_of(key)
        accuracy = run.accuracy("last")
        rows.append([os.path.relpath(run.path, save_dir), f"{what}: {key.kind} {key.model}"
                     + (f" ← {key.teacher} ({label})" if key.teacher else ""), key.dataset, _status(run),
                     summarize.EMPTY if accuracy is None else f"{accuracy:.2f}", _files(run.path, page)])
    header = ["run folder", "what", "trained on", "status", "last top-1 (%)", "files"]
    return _table(header, rows, raw_last=True) if rows else ""



def render_report(save_dir: Path, page: Path, runs: Sequence[Run], metric: str, compare: bool, title: str) -> str:
    """The page's HTML."""
    probes = load_transfer_runs(save_dir)
    sections = [
        ("tables", "Paper-layout tables", paper_tables_html(runs, metric, compare)),
        ("transfer", "Transfer (linear probe)", transfer_html(probes, metric, compare)),
        ("curves", "Accuracy curves", curves_html(save_dir)),
        ("analysis", "Analysis: t-SNE and class correlations", analysis_html(save_dir)),
        ("runs", "Run folders", runs_html(runs, probes, save_dir, page, finished=True)),
        ("unfinished", "Unfinished runs (not averaged in)", runs_html(runs, probes, save_dir, page, finished=False)),
    ]
    shown = [(anchor, name, body) for anchor, name, body in sections if body]
    nav = "".join(f'<a href="#{anchor}">{_escape(name)}</a>' for anchor, name, _ in shown)
    body = "".join(_section(anchor, name, content) for anchor, name, content in shown)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{_escape(title)}</h1>"
            f'<p class="note">Save folder {_escape(save_dir.resolve())}, written {stamp}.</p>'
            f"<nav>{nav}</nav>{body}</body></html>\n")


def write_report(page: Path, save_dir: Path, runs: Sequence[Run], metric: str, compare: bool, title: str) -> Path:
    """Write the page for ``save_dir``'s ``runs`` to ``page``; returns ``page``."""
    page = Path(page)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_report(Path(save_dir), page, runs, metric, compare, title), encoding="utf-8")
    return page
