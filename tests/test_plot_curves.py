"""scripts/plot_curves.py: accuracy and loss curves, mean and band over trials, one figure per pair."""

from __future__ import annotations

import io
import statistics

import matplotlib.image
import pytest
from matplotlib.collections import LineCollection, PolyCollection

from scripts import plot_curves, results
from tests.runfolders import write_run

PNG = b"\x89PNG\r\n\x1a\n"
KD_TRIALS = [[50.0, 60.0, 70.0], [52.0, 61.0, 69.0], [49.0, 63.0, 72.0]]


@pytest.fixture
def save(tmp_path):
    """Three KD trials and two CRD trials on resnet32x4→resnet8x4, plus the plain student and teacher."""
    for trial, curve in enumerate(KD_TRIALS, 1):
        write_run(tmp_path, "resnet8x4", curve, teacher="resnet32x4", method="kd", weights=(0.1, 0.9, 0.0),
                  trial=str(trial))
    write_run(tmp_path, "resnet8x4", [55.0, 65.0, 75.0], teacher="resnet32x4", method="crd", weights=(1.0, 0.0, 0.8))
    write_run(tmp_path, "resnet8x4", [56.0, 66.0], teacher="resnet32x4", method="crd", weights=(1.0, 0.0, 0.8),
              trial="2", finished=None)  # cut off after two epochs
    write_run(tmp_path, "resnet8x4", [40.0, 50.0, 60.0])
    write_run(tmp_path, "resnet32x4", [60.0, 70.0, 80.0])
    return tmp_path


def test_one_png_per_pair_and_one_for_the_networks_trained_alone(save, tmp_path):
    out = tmp_path / "figures"
    assert plot_curves.main([str(save), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["cifar100_resnet32x4_to_resnet8x4.png",
                                                           "cifar100_vanilla.png"]
    assert all(path.read_bytes()[:8] == PNG for path in out.iterdir())


def test_a_line_per_method_with_its_mean_and_min_max_band(save):
    groups = results.group_runs(results.find_runs(save))
    lines = plot_curves.pair_lines(groups, "cifar100", "resnet32x4", "resnet8x4")
    assert [label for label, _, _ in lines] == ["KD", "CRD", "student (vanilla)", "teacher"]
    figure = plot_curves.plot_lines(lines, "test", "minmax")
    accuracy, loss = figure.axes[:2]
    kd_line = accuracy.lines[0]
    assert list(kd_line.get_xdata()) == [1, 2, 3]
    assert list(kd_line.get_ydata()) == pytest.approx([statistics.mean(epoch) for epoch in zip(*KD_TRIALS)])
    assert list(loss.lines[0].get_ydata()) == pytest.approx([100 - statistics.mean(e) for e in zip(*KD_TRIALS)])
    assert len(accuracy.lines) == 4  # KD, CRD, and the dashed references
    assert [line.get_linestyle() for line in accuracy.lines] == ["-", "-", "--", "--"]
    assert {line.get_marker() for line in accuracy.lines} == {"None"}  # curves of several epochs: lines only
    bands = [artist for artist in accuracy.collections if isinstance(artist, PolyCollection)]
    assert len(bands) == 2  # KD and CRD have several trials; the references one each
    low, high = bands[0].get_paths()[0].vertices[:, 1].min(), bands[0].get_paths()[0].vertices[:, 1].max()
    assert (low, high) == (min(min(t) for t in KD_TRIALS), max(max(t) for t in KD_TRIALS))


def test_unfinished_trials_count_only_where_they_reached(save):
    crd = next(runs for key, runs in results.group_runs(results.find_runs(save)).items() if key.method == "crd")
    epochs, mean, low, high = plot_curves.curve(crd, "test_acc", "minmax")
    assert epochs == [1, 2, 3]
    assert mean == pytest.approx([55.5, 65.5, 75.0])
    assert (low[2], high[2]) == (75.0, 75.0)
    _, mean, low, high = plot_curves.curve(crd, "test_acc", "std")
    spread = statistics.stdev([55.0, 56.0])
    assert (low[0], high[0]) == pytest.approx((55.5 - spread, 55.5 + spread))


def test_no_runs_is_an_error(tmp_path, capsys):
    assert plot_curves.main([str(tmp_path), "--out", str(tmp_path / "figures")]) == 2
    assert "no run" in capsys.readouterr().err


def test_a_one_epoch_run_is_drawn_as_a_visible_point(tmp_path):
    """A line through one point draws nothing; the PNG must still show the point inside the axes."""
    write_run(tmp_path, "resnet8x4", [42.0], teacher="resnet32x4", method="kd", weights=(0.1, 0.9, 0.0))
    lines = plot_curves.pair_lines(results.group_runs(results.find_runs(tmp_path)), "cifar100", "resnet32x4",
                                   "resnet8x4")
    figure = plot_curves.plot_lines(lines, "one epoch", "minmax")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)  # no tight crop: pixels are at the figure's coordinates
    pixels = matplotlib.image.imread(io.BytesIO(buffer.getvalue()))[..., :3]
    height = pixels.shape[0]
    for axis, value in zip(figure.axes[:2], (42.0, 58.0)):  # accuracy, and loss = 100 - accuracy
        (line,) = axis.lines
        assert list(line.get_xdata()) == [1] and list(line.get_ydata()) == [value]
        left, bottom, right, top = axis.get_window_extent().extents
        inside = pixels[int(height - top) + 3:int(height - bottom) - 3, int(left) + 3:int(right) - 3]
        coloured = inside.max(axis=-1) - inside.min(axis=-1) > 0.3  # not white, not the grey frame or grid
        assert coloured.sum() > 10
        x, y = axis.transData.transform((1, value))
        point = pixels[round(height - y), round(x)]
        assert point.max() - point.min() > 0.3  # the coloured pixels are where the point is


def test_a_one_epoch_band_is_a_bar_over_the_trials(tmp_path):
    for trial, accuracy in enumerate([50.0, 54.0, 53.0], 1):
        write_run(tmp_path, "resnet8x4", [accuracy], teacher="resnet32x4", method="kd", weights=(0.1, 0.9, 0.0),
                  trial=str(trial))
    lines = plot_curves.pair_lines(results.group_runs(results.find_runs(tmp_path)), "cifar100", "resnet32x4",
                                   "resnet8x4")
    accuracy = plot_curves.plot_lines(lines, "one epoch", "minmax").axes[0]
    assert list(accuracy.lines[0].get_ydata()) == pytest.approx([statistics.mean([50.0, 54.0, 53.0])])
    (bar,) = [artist for artist in accuracy.collections if isinstance(artist, LineCollection)]
    assert bar.get_segments()[0].tolist() == [[1.0, 50.0], [1.0, 54.0]]
    assert accuracy.get_xlim() == (0.0, 2.0)  # whole epochs on the axis, not fractions of one
