"""scripts/summarize.py: the paper-layout table from run folders with known accuracies.

Also the pieces it is made of: run folder names read back (helper/run_names.py) and Markdown tables.
"""

from __future__ import annotations

import csv
import json
import re
import statistics

import pytest

from helper import run_names
from scripts import published, results, summarize
from scripts.markdown_tables import markdown_table
from tests.conftest import run_main
from tests.runfolders import REPO, write_run

KD = ("kd", (0.1, 0.9, 0.0))  # the KD row: RepDistiller's -r 0.1 -a 0.9 -b 0
CRD_KD = ("crd", (1.0, 1.0, 0.8))  # the CRD+KD row
TEACHER, STUDENT = "resnet32x4", "resnet8x4"


def cell(values: list[float]) -> str:
    """The expected cell text, computed independently of the script."""
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def row_of(text: str, label: str, table: str | None = None) -> list[str]:
    """The cells of the Markdown row ``label`` (in the section titled ``table`` if given)."""
    if table is not None:
        text = text[text.index(table):]
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [part.strip() for part in line.strip("|").split("|")][1:]


@pytest.fixture
def save(tmp_path):
    """A save folder: 3 KD trials, 2 CRD+KD trials, teacher and plain-student runs, one vgg pair."""
    kd_last = [73.1, 73.9, 74.4]
    for trial, last in enumerate(kd_last, 1):
        write_run(tmp_path, STUDENT, [60.0, 75.0, last], teacher=TEACHER, method=KD[0], weights=KD[1], trial=str(trial))
    for trial, last in enumerate([75.0, 75.6], 1):
        write_run(tmp_path, STUDENT, [60.0, 76.5, last], teacher=TEACHER, method=CRD_KD[0], weights=CRD_KD[1],
                  trial=str(trial))
    for trial, last in enumerate([79.0, 79.8, 79.3], 1):
        write_run(tmp_path, TEACHER, [70.0, last], trial=str(trial))
    write_run(tmp_path, STUDENT, [70.0, 72.1], trial="1")
    write_run(tmp_path, "vgg8", [60.0, 71.0], teacher="vgg13", method="crd", weights=(1.0, 0.0, 0.8))
    return tmp_path


def test_cells_are_mean_and_sample_std_over_trials(save, tmp_path, capsys):
    out = tmp_path / "out"
    assert summarize.main([str(save), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "last epoch" in text.splitlines()[0]
    section = "Same-architecture pairs"
    header = next(line for line in text[text.index(section):].splitlines() if line.startswith("| method"))
    assert header == "| method | resnet32x4→resnet8x4 | vgg13→vgg8 |"
    assert row_of(text, "KD", section) == [cell([73.1, 73.9, 74.4]), "—"]
    assert row_of(text, "CRD+KD", section) == [cell([75.0, 75.6]), "—"]
    assert row_of(text, "CRD", section) == ["—", cell([71.0])]
    assert row_of(text, "teacher", section) == [cell([79.0, 79.8, 79.3]), "—"]
    assert row_of(text, "student (vanilla)", section) == [cell([72.1]), "—"]
    assert "72.10 (1)" in text and "72.10 ±" not in text  # one trial: no std
    assert (out / "table_last.md").read_text() == text

    with (out / "table_last.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    kd = rows["KD"]
    assert float(kd["resnet32x4→resnet8x4 mean"]) == pytest.approx(statistics.mean([73.1, 73.9, 74.4]), abs=1e-4)
    assert float(kd["resnet32x4→resnet8x4 std"]) == pytest.approx(statistics.stdev([73.1, 73.9, 74.4]), abs=1e-4)
    assert kd["resnet32x4→resnet8x4 n"] == "3" and kd["vgg13→vgg8 n"] == ""


def test_rows_follow_the_papers_order(save, tmp_path, capsys):
    summarize.main([str(save), "--out", str(tmp_path / "out")])
    labels = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
              if line.startswith("| ") and not line.startswith(("| method", "| ---"))]
    assert labels == ["teacher", "student (vanilla)", "KD", "CRD", "CRD+KD"]


def test_incomplete_and_missing_runs_are_listed_not_averaged(save, tmp_path, capsys):
    unfinished = write_run(save, STUDENT, [60.0, 10.0], teacher=TEACHER, method=KD[0], weights=KD[1], trial="4",
                           finished=False)
    cut_off = write_run(save, STUDENT, [60.0], teacher=TEACHER, method=KD[0], weights=KD[1], trial="5",
                        finished=None)
    summarize.main([str(save), "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert row_of(text, "KD")[0] == cell([73.1, 73.9, 74.4])  # still the 3 finished trials
    listed = text[text.index("Incomplete runs"):]
    assert f"{unfinished.name}`: 2/2 epoch(s) recorded, summary.json says not finished" in listed
    assert f"{cut_off.name}`: 1 epoch(s) recorded, no summary.json" in listed


def test_compare_puts_the_published_number_and_the_difference(save, tmp_path, capsys):
    out = tmp_path / "out"
    summarize.main([str(save), "--compare", "--out", str(out)])
    text = capsys.readouterr().out
    kd_mean = statistics.mean([73.1, 73.9, 74.4])
    published_kd = 73.33  # METHODS.md §4, resnet32x4→resnet8x4, KD (RD)
    assert row_of(text, "KD") == [f"{cell([73.1, 73.9, 74.4])} vs 73.33 ({kd_mean - published_kd:+.2f})",
                                  "— vs 72.98", "RD"]
    assert row_of(text, "CRD+KD")[0] == f"{cell([75.0, 75.6])} vs 75.46 ({statistics.mean([75.0, 75.6]) - 75.46:+.2f})"
    assert row_of(text, "CRD+KD")[-1] == "DS@e6bd9f9"
    assert "HobbitLong/RepDistiller" in text
    with (out / "table_last.csv").open() as handle:
        kd = next(row for row in csv.DictReader(handle) if row["method"] == "KD")
    assert float(kd["resnet32x4→resnet8x4 published"]) == published_kd
    assert float(kd["resnet32x4→resnet8x4 difference"]) == pytest.approx(kd_mean - published_kd, abs=1e-4)


def test_metric_best_reports_the_selected_epoch(save, tmp_path, capsys):
    out = tmp_path / "out"
    summarize.main([str(save), "--metric", "best", "--out", str(out)])
    text = capsys.readouterr().out
    assert "best epoch" in text.splitlines()[0] and "selected on test accuracy" in text.splitlines()[0]
    # every KD trial peaked at epoch 2 (75.0) and every CRD+KD trial at 76.5, whatever their last epoch
    assert row_of(text, "KD")[0] == cell([75.0, 75.0, 75.0])
    assert row_of(text, "CRD+KD")[0] == cell([76.5, 76.5])
    assert row_of(text, "teacher")[0] == cell([79.0, 79.8, 79.3])  # their last epoch was their best
    assert (out / "table_best.md").is_file() and (out / "table_best.csv").is_file()


def test_other_weights_get_their_own_row(save, tmp_path, capsys):
    write_run(save, STUDENT, [60.0, 70.0], teacher=TEACHER, method="kd", weights=(1.0, 1.0, 0.0))
    summarize.main([str(save), "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert row_of(text, "KD")[0] == cell([73.1, 73.9, 74.4])
    assert row_of(text, "KD (r:1.0 a:1.0 b:0.0)")[0] == cell([70.0])


def with_options(folder, **options):
    """``folder``'s run, its summary recording ``options`` as train_student.py records every option."""
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    summary["args"].update(options)
    path.write_text(json.dumps(summary))
    return folder


def test_runs_with_a_rows_flags_go_to_that_row(save, tmp_path, capsys):
    """KD+LS has weights of its own; KD+DOT has KD's weights and differs by --optimizer alone."""
    with_options(write_run(save, STUDENT, [60.0, 76.0], teacher=TEACHER, method="kd", weights=(0.1, 9.0, 0.0)),
                 logit_stand=True, kd_T=2.0, optimizer="sgd")
    for trial, last in enumerate([75.0, 75.4], 1):  # named as the driver names DOT runs, recorded as it records them
        with_options(write_run(save, STUDENT, [60.0, last], teacher=TEACHER, method="kd+dot", weights=KD[1],
                               trial=str(trial)), distill="kd", optimizer="dot", logit_stand=False, kd_T=4.0)
    with_options(write_run(save, STUDENT, [60.0, 70.5], teacher=TEACHER, method=KD[0], weights=KD[1], trial="8"),
                 kd_T=8.0)
    summarize.main([str(save), "--compare", "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert row_of(text, "KD")[0].startswith(cell([73.1, 73.9, 74.4]) + " vs 73.33")  # none of them mixed in
    assert row_of(text, "KD+LS")[0] == f"{cell([76.0])} vs 76.62 ({76.0 - 76.62:+.2f})"
    assert row_of(text, "KD+LS")[-1] == "LS"
    assert row_of(text, "KD+DOT")[0] == f"{cell([75.0, 75.4])} vs 75.12 ({statistics.mean([75.0, 75.4]) - 75.12:+.2f})"
    assert row_of(text, "KD (r:0.1 a:0.9 b:0.0 kd_T:8.0)")[0] == cell([70.5])
    labels = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert labels.index("KD") < labels.index("KD (r:0.1 a:0.9 b:0.0 kd_T:8.0)") < labels.index("CRD") \
        < labels.index("KD+LS") < labels.index("KD+DOT")


def methods_md_table(heading: str) -> dict[str, tuple[dict[str, float | None], str]]:
    """A §4 table of docs/METHODS.md: per row label, the value per ``teacher→student`` column and the source."""
    text = (REPO / "docs" / "METHODS.md").read_text()
    section = text[text.index(f"#### {heading}\n"):]
    lines = [line for line in section.split("\n\n| method", 1)[1].split("\n\n", 1)[0].splitlines()]
    header = ["method", *[part.strip() for part in lines[0].strip("|").split("|")][1:]]
    table = {}
    for line in lines[2:]:
        cells = dict(zip(header, (part.strip() for part in line.strip("|").split("|"))))
        values = {column: float(match[0]) if (match := re.match(r"\d+\.\d+", value)) else None
                  for column, value in cells.items() if "→" in column}
        table[cells["method"]] = (values, cells["source"])
    return table


@pytest.mark.parametrize("heading, table", [("Same-architecture pairs", published.SAME_ARCHITECTURE),
                                            ("Cross-architecture pairs", published.CROSS_ARCHITECTURE),
                                            ("ImageNet top-1", published.IMAGENET)])
def test_the_published_numbers_are_those_of_methods_md(heading, table):
    documented = methods_md_table(heading)
    stored = {label: ({summarize.arrow(pair): value for pair, value in zip(table.pairs, values)}, source)
              for label, (values, source) in table.rows.items()}
    assert {label: ({column: row[0][column] for column in stored[label][0]}, row[1])
            for label, row in documented.items() if label in stored} == stored
    sources = published.IMAGENET_SOURCES if table is published.IMAGENET else published.SOURCES
    assert {label for label, (_, source) in documented.items() if source in sources} == set(stored)


def test_students_folder_reads_the_teachers_beside_it(save, tmp_path, capsys):
    summarize.main([str(save / "students"), "--out", str(tmp_path / "out")])
    assert row_of(capsys.readouterr().out, "teacher")[0] == cell([79.0, 79.8, 79.3])


def test_runs_mode_lists_teacher_plain_student_and_distilled(save, tmp_path, capsys):
    summarize.main([str(save), "--runs", "--out", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0].startswith("| kind | dataset | model | teacher | method | weights")
    body = [[part.strip() for part in line.strip("|").split("|")] for line in lines[1:]]
    # runfolders.write_run records half an hour per epoch
    assert body[0] == ["vanilla", "cifar100", TEACHER, "—", "—", "—", cell([79.0, 79.8, 79.3]), "1.00"]
    assert body[1] == ["vanilla", "cifar100", STUDENT, "—", "—", "—", cell([72.1]), "1.00"]
    assert ["distilled", "cifar100", STUDENT, TEACHER, "KD", "0.1/0.9/0.0", cell([73.1, 73.9, 74.4]), "1.50"] in body
    assert (tmp_path / "out" / "runs_last.csv").is_file()


def test_a_folder_without_runs_is_an_error(tmp_path, capsys):
    assert summarize.main([str(tmp_path)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_val_split_selects_the_best_epoch_on_validation_never_on_test(tmp_path, cifar100_root, monkeypatch,
                                                                      capsys):
    """A real run with --val_split whose validation and test curves peak at different epochs.

    The evaluations are scripted (the real ones still run): test accuracy peaks at epoch 2,
    validation accuracy at epoch 3, so selecting on the test set would pick epoch 2.
    """
    from helper import driver

    test_curve, val_curve = [10.0, 30.0, 20.0], [10.0, 20.0, 30.0]
    evaluate = driver.Run._evaluate

    def scripted(self, loader):
        measured = evaluate(self, loader)
        curve = val_curve if loader is self.data.val else test_curve
        return {**measured, "acc1": curve[self.state.epoch]}  # state.epoch: epochs finished before this one

    monkeypatch.setattr(driver.Run, "_evaluate", scripted)
    status, _ = run_main("teacher", ["--model", "resnet8", "--data_root", str(cifar100_root), "--epochs", "3",
                                     "--val_split", "0.5", "--save_dir", str(tmp_path), "--num_workers", "0",
                                     "--batch_size", "32", "--trial", "1"])
    assert status == 0
    folder = tmp_path / "teachers" / "models" / "resnet8_vanilla_cifar100_trial_1"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_acc"] for r in records] == test_curve and [r["val_acc"] for r in records] == val_curve
    summary = json.loads((folder / "summary.json").read_text())
    by_val = max(records, key=lambda r: r["val_acc"])["epoch"]
    by_test = max(records, key=lambda r: r["test_acc"])["epoch"]
    assert by_val != by_test
    assert summary["selection"] == "val_acc" and summary["best_epoch"] == by_val
    assert summary["best_acc"] == test_curve[by_val - 1] and summary["best_val_acc"] == max(val_curve)

    capsys.readouterr()
    summarize.main([str(tmp_path), "--runs", "--metric", "best", "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert "selected on the held-out validation split" in text.splitlines()[0]
    assert f"| {cell([test_curve[by_val - 1]])} |" in text.splitlines()[4]


# ---------------------------------------------------------------------------------------------
# Finished runs outside the paper tables


def other_rows(text: str) -> list[list[str]]:
    """The body rows of the table of finished runs outside the paper tables."""
    section = text[text.index("## Finished runs outside the tables above"):]
    section = section.split("\n\n## ", 1)[0].split("Incomplete runs", 1)[0]
    return [[part.strip() for part in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| kind", "| ---"))]


def test_a_finished_run_in_no_pair_is_shown_not_hidden(tmp_path, capsys):
    write_run(tmp_path, "resnet8", [50.0, 61.5])  # resnet8 is in no standard pair, and nothing was distilled
    assert summarize.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "No finished runs." not in text
    assert other_rows(text) == [["vanilla", "cifar100", "resnet8", "—", "—", "—", cell([61.5]), "1.00"]]
    with (tmp_path / "out" / "table_last_other.csv").open() as handle:
        (row,) = csv.DictReader(handle)
    assert (row["model"], float(row["mean"]), row["n"]) == ("resnet8", 61.5, "1")


def test_runs_the_paper_tables_leave_out_go_below_them(save, tmp_path, capsys):
    write_run(save, "resnet8", [50.0, 61.5])  # in no pair
    write_run(save, "resnet110", [70.0, 74.0])  # a standard teacher, but none of its students has run
    write_run(save, "resnet8", [80.0, 90.0], dataset="cifar10")
    write_run(save, "vgg8", [60.0, float("nan")], teacher="vgg13", method=KD[0], weights=KD[1])  # diverged
    write_run(save, "resnet20", [30.0], teacher="resnet56", method=KD[0], weights=KD[1], finished=False)
    summarize.main([str(save), "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    tables = text[:text.index("## Finished runs outside")]
    assert row_of(tables, "KD") == [cell([73.1, 73.9, 74.4]), "—"]  # the paper tables are as before
    assert "resnet110" not in tables and "resnet56→resnet20" not in tables
    assert other_rows(text) == [
        ["vanilla", "cifar10", "resnet8", "—", "—", "—", cell([90.0]), "1.00"],
        ["vanilla", "cifar100", "resnet110", "—", "—", "—", cell([74.0]), "1.00"],
        ["vanilla", "cifar100", "resnet8", "—", "—", "—", cell([61.5]), "1.00"],
        ["distilled", "cifar100", "vgg8", "vgg13", "KD", "0.1/0.9/0.0", "—", "1.00"],
    ]  # the unfinished resnet20 run is listed as incomplete only
    assert "S:resnet20_T:resnet56_cifar100_kd" in text[text.index("Incomplete runs"):]


def test_a_standard_pair_on_another_data_set_gets_a_table_of_its_own(tmp_path, capsys):
    write_run(tmp_path, STUDENT, [50.0, 60.0], teacher=TEACHER, method=KD[0], weights=KD[1], dataset="cifar10")
    summarize.main([str(tmp_path), "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert row_of(text, "KD", "## cifar10: Pairs") == [cell([60.0])]
    assert "outside the tables" not in text


def test_no_finished_run_at_all_says_so(tmp_path, capsys):
    write_run(tmp_path, STUDENT, [60.0], teacher=TEACHER, method=KD[0], weights=KD[1], finished=None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table_last_other.csv").write_text("stale\n")
    summarize.main([str(tmp_path), "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert "No finished runs." in text and "outside the tables" not in text
    assert not (tmp_path / "out" / "table_last_other.csv").exists()  # an old one cannot pass for current


# ---------------------------------------------------------------------------------------------
# Run folder names and Markdown tables


NAMED_PAIRS = [("wrn_16_2", "wrn_40_2"), ("MobileNetV2_1_0", "ResNet50_Imagenet"), ("resnet8x4", "resnet32x4"),
               ("resnext50_32x4d", "wrn_50_2")]


def test_run_names_keep_the_upstream_format():
    assert run_names.teacher_run_name("wrn_40_2", "cifar100", 3) == "wrn_40_2_vanilla_cifar100_trial_3"
    assert run_names.student_run_name("resnet8x4", "resnet32x4", "cifar100", "kd", 0.1, 0.9, 0, "1") == \
        "S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1"
    assert run_names.student_run_name("vgg8", "vgg13", "cifar100", "crd", 1, 1e-5, 0.8, 2) == \
        "S:vgg8_T:vgg13_cifar100_crd_r:1.0_a:1e-05_b:0.8_2"
    save = run_names.run_dir("save", run_names.DISTILLED, "x")
    assert save.parts == ("save", "students", "models", "x")
    assert run_names.tensorboard_dir("save", run_names.VANILLA, "x").parts == ("save", "teachers", "tensorboard", "x")


@pytest.mark.parametrize("separator", [":", "~", "_"])
@pytest.mark.parametrize("student, teacher", NAMED_PAIRS)
def test_a_student_run_name_reads_back_whatever_the_separator(student, teacher, separator):
    name = run_names.student_run_name(student, teacher, "imagenet", "dkd", 1.0, 0.0, 1e-05, "run_2")
    parsed = run_names.parse_run_name(name.replace(":", separator))
    assert parsed == run_names.RunName(run_names.DISTILLED, student, teacher, "imagenet", "dkd", (1.0, 0.0, 1e-05),
                                       "run_2")


@pytest.mark.parametrize("model", ["wrn_40_2", "MobileNetV2_1_0", "resnet8"])
def test_a_teacher_run_name_reads_back(model):
    parsed = run_names.parse_run_name(run_names.teacher_run_name(model, "cifar10", "7"))
    assert parsed == run_names.RunName(run_names.VANILLA, model, None, "cifar10", None, None, "7")


@pytest.mark.parametrize("name", [
    "tensorboard", "resnet56_vanilla", "resnet8_vanilla_cifar100_trial_",
    "S:resnet8_T:resnet8_cifar100_kd_r:x_a:0.9_b:0.0_1",  # a weight that is no number
    "S:resnet8_T:resnet8_cifar100_kd_r:0.1_a:0.9_1",  # no beta
])
def test_names_of_no_run_read_back_as_none(name):
    assert run_names.parse_run_name(name) is None


def test_a_copied_folder_without_summary_joins_its_experiment(tmp_path):
    """A run folder copied where ``:`` is not allowed (``~``) is still grouped with its trials."""
    finished = write_run(tmp_path, "wrn_16_2", [60.0, 70.0], teacher="wrn_40_2", method=KD[0], weights=KD[1])
    copied = write_run(tmp_path, "wrn_16_2", [61.0], teacher="wrn_40_2", method=KD[0], weights=KD[1], trial="2",
                       finished=None)
    copied.rename(copied.with_name(copied.name.replace(":", "~")))
    groups = results.group_runs(results.find_runs(tmp_path))
    assert [[run.path.name for run in members] for members in groups.values()] == [
        [finished.name, copied.name.replace(":", "~")]]
    (key,) = groups
    assert key == results.GroupKey(run_names.DISTILLED, "cifar100", "wrn_16_2", "wrn_40_2", "kd", KD[1])


def test_markdown_table_escapes_pipes_and_pads_short_rows():
    table = markdown_table(["method", "a→b", "c"], [["KD", "1 | 2", "x"], ["CRD"]])
    assert table.splitlines() == ["| method | a→b | c |", "| --- | --- | --- |", r"| KD | 1 \| 2 | x |",
                                  "| CRD |  |  |"]
    with pytest.raises(ValueError, match="more cells"):
        markdown_table(["a"], [["1", "2"]])
