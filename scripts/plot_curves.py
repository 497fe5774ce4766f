"""Plot test accuracy and test loss over epochs: one figure per teacher→student pair.

    python scripts/plot_curves.py save --out save/curves [--band minmax|std]

Each method row of the tables (``summarize.py``) is one line: the mean over its trials at
every epoch, with a band over the trials (min–max by default, or mean ± sample std). The
plain student's runs (``train_teacher.py`` on the student network) and the teacher's are drawn
dashed for reference. Unfinished runs are drawn too, as far as they got, so a running sweep can
be watched; at each epoch only the trials that reached it count. Runs that trained a network
alone also get one figure per data set (``<dataset>_vanilla.png``), a line per network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from helper.run_names import DISTILLED, VANILLA
from scripts.results import GroupKey, Run, group_runs, load_runs
from scripts.table_rows import STUDENT_ROW, TEACHER_ROW, row_label, row_order

PANELS = (("test_acc", "test top-1 accuracy (%)"), ("test_loss", "test loss"))


def curve(runs: Sequence[Run], field: str, band: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, mean, band low and band high of ``field`` over the runs that reached each epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for record in run.history():
            if isinstance(record.get(field), (int, float)):
                by_epoch.setdefault(int(record["epoch"]), []).append(float(record[field]))
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[epoch]) for epoch in epochs]
    if band == "std":
        spread = [statistics.stdev(by_epoch[epoch]) if len(by_epoch[epoch]) > 1 else 0.0 for epoch in epochs]
        return epochs, means, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)]
    return epochs, means, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs]


def draw_curve(axis: Axes, runs: Sequence[Run], field: str, band: str, colour: str | tuple[float, ...], dashed: bool,
               label: str) -> None:
    """One line of a panel: the mean of ``field`` over ``runs`` and its band over the trials.

    A line needs two epochs to show, so a curve of one epoch (a one-epoch run) is drawn as a
    marker, and its band, which then has no area, as a vertical bar.
    """
    epochs, mean, low, high = curve(runs, field, band)
    if not epochs:
        return
    single = len(epochs) == 1
    axis.plot(epochs, mean, color=colour, linestyle="--" if dashed else "-", linewidth=1.2,
              marker="o" if single else None, markersize=5, label=f"{label} (n={len(runs)})")
    if len(runs) > 1 and single:
        axis.vlines(epochs, low, high, color=colour, alpha=0.4, linewidth=3)
    elif len(runs) > 1:
        axis.fill_between(epochs, low, high, color=colour, alpha=0.15, linewidth=0)


def plot_lines(lines: Sequence[tuple[str, Sequence[Run], bool]], title: str, band: str) -> Figure:
    """A figure of accuracy and loss panels; ``lines`` are ``(label, runs, dashed)``."""
    figure = Figure(figsize=(13, 4.8))
    FigureCanvasAgg(figure)  # the Agg back end, without pyplot's global state: no display needed
    axes = figure.subplots(1, len(PANELS), squeeze=False)
    colours = matplotlib.colormaps["tab20"]
    for index, (label, runs, dashed) in enumerate(lines):
        # tab20 pairs a dark and a light shade: take the dark ones first, so neighbours differ
        colour = "black" if dashed and label == TEACHER_ROW else "grey" if dashed else colours(
            (2 * index) % 20 + (index // 10) % 2)
        for axis, (field, _) in zip(axes[0], PANELS):
            draw_curve(axis, runs, field, band, colour, dashed, label)
    for axis, (_, name) in zip(axes[0], PANELS):
        axis.set_xlabel("epoch")
        low, high = axis.get_xlim()
        if high - low < 2:  # one epoch: widen the axis to whole epochs, or it is labelled in fractions
            axis.set_xlim((low + high) / 2 - 1, (low + high) / 2 + 1)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    spread = "min–max" if band == "minmax" else "± std"
    figure.suptitle(f"{title} (mean over trials, band: {spread})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.tight_layout()
    return figure


def pair_lines(groups: dict[GroupKey, list[Run]], dataset: str, teacher: str,
               student: str) -> list[tuple[str, list[Run], bool]]:
    """The lines of one pair's figure: every method row, then the plain student and the teacher."""
    methods = [(row_label(key.method, key.weights, key.options), runs, False) for key, runs in groups.items()
               if key.kind == DISTILLED and (key.dataset, key.teacher, key.model) == (dataset, teacher, student)]
    methods.sort(key=lambda line: row_order(line[0]))
    references = [(label, runs, True) for label, model in ((STUDENT_ROW, student), (TEACHER_ROW, teacher))
                  for key, runs in groups.items()
                  if key.kind == VANILLA and (key.dataset, key.model) == (dataset, model)]
    return [*methods, *references]


def plot_all(save_dir: Path, out: Path, band: str = "minmax") -> list[Path]:
    """Write every figure of ``save_dir``'s runs into ``out``; returns the files written."""
    groups = group_runs(load_runs(save_dir))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    pairs = sorted({(key.dataset, key.teacher, key.model) for key in groups if key.kind == DISTILLED})
    for dataset, teacher, student in pairs:
        figure = plot_lines(pair_lines(groups, dataset, teacher, student), f"{dataset}: {teacher}→{student}", band)
        written.append(out / f"{dataset}_{teacher}_to_{student}.png")
        figure.savefig(written[-1], dpi=120, bbox_inches="tight")
    for dataset in sorted({key.dataset for key in groups if key.kind == VANILLA}):
        lines = [(key.model, runs, False) for key, runs in sorted(groups.items(), key=lambda item: item[0].model)
                 if key.kind == VANILLA and key.dataset == dataset]
        figure = plot_lines(lines, f"{dataset}: networks trained alone", band)
        written.append(out / f"{dataset}_vanilla.png")
        figure.savefig(written[-1], dpi=120, bbox_inches="tight")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("save_dir", type=Path, help="the --save_dir of the runs (or its students/ folder)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--band", choices=["minmax", "std"], default="minmax",
                        help="band over trials: min–max, or mean ± sample std")
    args = parser.parse_args(argv)
    if not args.save_dir.is_dir():
        print(f"error: {args.save_dir} is not a folder; pass the --save_dir of your runs", file=sys.stderr)
        return 2
    written = plot_all(args.save_dir, args.out, args.band)
    if not written:
        print(f"error: no run with epoch records under {args.save_dir}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
