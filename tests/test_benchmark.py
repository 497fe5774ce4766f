"""scripts/benchmark.py: a tiny run measures the real step and its floor and reports both."""

from __future__ import annotations

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
    assert set(report) == {"machine", "settings", "memory", "floors", "results"}
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
