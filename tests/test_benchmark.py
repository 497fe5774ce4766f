"""scripts/benchmark.py: a tiny run measures the real step and its floor and reports both."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEASURED = ("images_per_second", "ms_per_step", "epoch_seconds", "peak_memory_mib")
TINY = ["--teacher", "resnet8", "--student", "resnet8", "--batch_size", "8", "--num_images", "128",
        "--warmup", "2", "--steps", "2", "--loader", "fast", "--device", "cpu"]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_tiny_run_reports_steps_floor_and_ratios(benchmark, tmp_path, capsys):
    path = tmp_path / "bench.json"
    # --nce_k is not a benchmark flag: it is handed on to the methods' options.
    status = benchmark.main([*TINY, "--methods", "kd,crd", "--variants", "fp32,bf16+cl", "--nce_k", "32",
                             "--json", str(path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "| method | loader | variant | img/s | ms/step |" in out and "| crd | fast | bf16+cl |" in out

    report = json.loads(path.read_text())
    assert set(report) == {"machine", "settings", "memory", "floors", "results", "packs"}
    assert report["packs"] == []
    assert report["settings"]["extra_flags"] == ["--nce_k", "32"]
    assert report["settings"]["variants"] == ["fp32", "bf16+cl"]
    assert [f["variant"] for f in report["floors"]] == ["fp32", "bf16+cl"]
    assert [(r["method"], r["variant"]) for r in report["results"]] == [
        ("kd", "fp32"), ("kd", "bf16+cl"), ("crd", "fp32"), ("crd", "bf16+cl")]
    for record in report["floors"] + report["results"]:
        assert record["error"] is None
        assert all(_positive(record[key]) for key in MEASURED), record
    for record in report["results"]:
        assert _positive(record["floor_ratio"]) and _positive(record["baseline_ratio"])
        assert record["loader"] == "fast"
    kd_fp32, kd_bf16 = report["results"][:2]
    assert kd_fp32["baseline_ratio"] == 1.0 and kd_fp32["speedup"] is None
    assert kd_bf16["speedup"] == pytest.approx(kd_fp32["ms_per_step"] / kd_bf16["ms_per_step"])
    assert kd_bf16["amp"] == "bf16" and kd_bf16["channels_last"] is True
    assert _positive(report["floors"][1]["speedup"])


def test_pack_is_timed_against_the_sum_of_its_members_alone(benchmark, tmp_path, capsys, monkeypatch):
    fed = []  # per feed_epoch call: (trainers fed, batches fed, teacher forwards)
    feed_epoch = benchmark.feed_epoch

    def counting_feed_epoch(trainers, loader, config, teacher, *args, **kwargs):
        forwards = []
        hook = teacher.register_forward_hook(lambda *_: forwards.append(1))
        batches = list(loader)
        try:
            return feed_epoch(trainers, batches, config, teacher, *args, **kwargs)
        finally:
            hook.remove()
            fed.append((len(trainers), len(batches), len(forwards)))

    monkeypatch.setattr(benchmark, "feed_epoch", counting_feed_epoch)
    path = tmp_path / "pack.json"
    status = benchmark.main([*TINY, "--pack", "kd,crd,rrd", "--nce_k", "32", "--json", str(path)])
    out = capsys.readouterr().out
    assert status == 0
    # Three members alone, then the pack: warm-up and timed windows each; one teacher forward per batch.
    assert [trainers for trainers, _, _ in fed] == [1] * 6 + [3] * 2
    assert all(batches == forwards == 2 for _, batches, forwards in fed)
    for row in ("kd alone", "crd alone", "rrd alone", "sum of the solo steps", "pack kd,crd,rrd",
                "teacher pass (inside each step)"):
        assert f"| {row} | fast | fp32 |" in out, row
    assert "pack / sum of solo steps = **" in out

    report = json.loads(path.read_text())
    assert report["floors"] == [] and report["settings"]["pack"] == "kd,crd,rrd"
    assert [(r["kind"], r["method"], r["member"]) for r in report["results"]] == [
        ("member", "kd", 0), ("member", "crd", 1), ("member", "rrd", 2),
        ("pack", "kd,crd,rrd", None), ("teacher", "kd,crd,rrd", None)]
    for record in report["results"]:
        assert record["error"] is None
        assert all(_positive(record[key]) for key in MEASURED), record
    (summary,) = report["packs"]
    solo = [r["ms_per_step"] for r in report["results"][:3]]
    pack, teacher = report["results"][3:]
    assert summary["members"] == ["kd", "crd", "rrd"]
    assert summary["solo_sum_ms_per_step"] == pytest.approx(sum(solo))
    assert summary["pack_ms_per_step"] == pack["ms_per_step"]
    assert summary["teacher_ms_per_step"] == teacher["ms_per_step"]
    assert _positive(summary["ratio"]) and summary["ratio"] == pytest.approx(pack["ms_per_step"] / sum(solo))
    assert pack["sum_ratio"] == summary["ratio"]


def test_pack_members_are_labelled_by_what_tells_them_apart(benchmark):
    def member(student, method, alpha=0.9):
        return argparse.Namespace(model_s=student, distill=method, gamma=0.1, alpha=alpha, beta=0.0)

    assert benchmark.member_labels([member("resnet8", "kd"), member("resnet8", "crd")]) == ["kd", "crd"]
    assert benchmark.member_labels([member("resnet8", "kd"), member("resnet14", "kd")]) == [
        "resnet8 kd", "resnet14 kd"]
    assert benchmark.member_labels([member("resnet8", "kd"), member("resnet8", "kd", alpha=0.0)]) == [
        "kd r:0.1 a:0.9 b:0.0", "kd r:0.1 a:0.0 b:0.0"]


def test_ratios_are_ms_per_step_quotients(benchmark):
    variants = [benchmark.Variant.parse("fp32"), benchmark.Variant.parse("bf16+cl")]
    floors = [{"variant": "fp32", "ms_per_step": 10.0}, {"variant": "bf16+cl", "ms_per_step": 5.0}]
    results = [{"method": m, "loader": "fast", "variant": v, "ms_per_step": ms}
               for m, v, ms in (("kd", "fp32", 11.0), ("kd", "bf16+cl", 5.5), ("crd", "fp32", 13.2))]
    benchmark.add_ratios(floors, results, variants, "kd")
    assert floors[1]["speedup"] == 2.0
    assert [r["floor_ratio"] for r in results] == pytest.approx([1.1, 1.1, 1.32])
    assert [r["baseline_ratio"] for r in results] == pytest.approx([1.0, 1.0, 1.2])
    assert [r["speedup"] for r in results] == [None, 2.0, None]


def test_variant_names(benchmark):
    assert benchmark.Variant.parse("bf16+cl+compile") == benchmark.Variant("bf16", True, True)
    assert benchmark.Variant.parse("fp16+channels_last").name == "fp16+cl"
    with pytest.raises(benchmark.UsageError):
        benchmark.Variant.parse("bf16cl")


def test_bad_flags_fail_before_timing(benchmark, capsys):
    assert benchmark.main([*TINY, "--methods", "kd,no_such_method"]) == 2
    assert "no_such_method" in capsys.readouterr().err
    assert benchmark.main([*TINY, "--variants", "fp16"]) == 2
    assert benchmark.main([*TINY, "--nce_kk", "3"]) == 2
    assert benchmark.main([*TINY, "--pack", "kd,crd", "--methods", "kd"]) == 2
    assert "leave out --methods" in capsys.readouterr().err
    assert benchmark.main([*TINY, "--pack", "kd"]) == 2
    assert "a pack has two or more" in capsys.readouterr().err
    assert benchmark.main([*TINY, "--pack", "kd,kd"]) == 2
    assert "the same run twice" in capsys.readouterr().err
    assert benchmark.main([*TINY, "--pack", "kd,no_such_method"]) == 2
    assert "no_such_method" in capsys.readouterr().err
