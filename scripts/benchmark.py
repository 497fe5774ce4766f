"""Speed of the real training step, against the bare floor of the same step.

For one teacher→student pair and any methods, loaders and precision/layout variants, this
times the training step the real runs take: ``helper.loops.train_one_epoch`` driving the
Distiller of ``distiller_zoo.build`` on the train loader of ``dataset.build``, with the SGD of
``helper.optim.make_sgd``, options parsed by train_student.py's own parser (so every method
runs with its recommended weights and flag defaults, e.g. CRD's ``nce_k`` 16384). Networks
have random weights; the teacher is frozen in eval mode by the Distiller, as in a real run.
Steps are those of the main stage (AB, FT and FSP's init stage is not timed).

In the same run it times the **bare floor**: teacher forward (inference mode) + student
forward/backward with cross-entropy + the SGD step, on one batch kept in memory, with the same
variant (autocast, channels-last, compile). Every configuration is reported as a ratio to the
floor of its variant, so an overhead (loader, loop bookkeeping, distillation term) is a ratio
of two numbers taken on the same machine at the same time, not a comparison across runs.

Data: CIFAR-100 files in the official layout holding uniformly random pixels (``--num_images``
training images, a fifth as many test images) are written to a temporary folder, so nothing
needs to be downloaded; ``--data_root`` uses a real CIFAR-100 folder instead.

Timing: ``--warmup`` steps (which also absorb ``--compile``'s compilation), then ``--repeats``
windows of ``--steps`` steps, the device synchronised before and after each window; the best
window is reported (the least disturbed by other work on the machine). All windows draw from
one stream of batches, so loader workers are not restarted between them.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` of each measurement. On the CPU, the peak
resident set size (``getrusage``), which is process-wide and never goes down: with
``--isolate`` every measurement runs in a fresh process and the number is its own peak; without
it the number is the peak *so far* in this process, and the report says so.

    python scripts/benchmark.py --teacher resnet32x4 --student resnet8x4 --methods kd --steps 20
    python scripts/benchmark.py --methods kd --variants fp32,bf16+cl          # CPU bf16 speed-up
    python scripts/benchmark.py --methods all --isolate --json all.json       # every method
    python scripts/benchmark.py --methods kd,crd --loader fast,torchvision --num_workers 2

Any flag of train_student.py not listed by ``--help`` (``--nce_k 4096``, ``--feat_dim 64``) is
handed on to every method's options.

JSON (``--json PATH``): ``machine`` (device, device_name, cpu, cpus, threads, torch, python,
platform), ``settings`` (teacher, student, batch_size, num_images, data, warmup, steps,
repeats, num_workers, isolate, baseline, variants, extra_flags), ``memory`` (what
``peak_memory_mib`` means), ``floors`` (one per variant) and ``results`` (one per method ×
loader × variant, ``--methods all`` putting the baseline first). Every floor and result has
``kind`` (``floor`` or ``step``), ``variant, amp, channels_last, compile,
images_per_second, ms_per_step, epoch_seconds`` (50,000 images at that rate),
``peak_memory_mib``, ``speedup`` (the first variant's ms/step over this one's; null for the first
variant) and ``error`` (null, or why the measurement failed); a result also has ``method,
loader, floor_ratio`` (ms/step over its variant's floor) and ``baseline_ratio`` (ms/step over
the ``--baseline`` method's with the same loader and variant; null when that was not measured).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import distiller_zoo
from dataset.batch import Batch
from dataset.bundle import EpochLoader
from dataset.catalog import LOADERS
from errors import UsageError
from helper.components import build_components
from helper.distributed import ProcessInfo
from helper.driver import AMP_DTYPES, select_device
from helper.loops import StepConfig, backward_and_step, train_one_epoch
from helper.optim import make_optimizer, make_sgd
from helper.options import parse_student_args, resolve_model
from helper.seeding import seed_everything
from models import build_model
from scripts.markdown_tables import markdown_table

CIFAR100_CLASSES, CIFAR_IMAGE_SIZE = 100, 32

CIFAR100_TRAIN_IMAGES = 50_000
PRECISIONS = ("fp32", "bf16", "fp16")
VARIANT_FLAGS = {"cl": "channels_last", "channels_last": "channels_last", "compile": "compile"}


@dataclass(frozen=True)
class Variant:
    """How the step runs: autocast precision, memory layout, torch.compile.

    Written ``fp32``, ``bf16``, ``fp16``, optionally followed by ``+cl`` (channels-last) and
    ``+compile``: ``bf16+cl``, ``bf16+cl+compile``.
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        return "+".join([self.precision, *(["cl"] if self.channels_last else []),
                         *(["compile"] if self.compile else [])])

    @property
    def amp(self) -> str | None:
        """The ``--amp`` value of the real runs (None for fp32)."""
        return None if self.precision == "fp32" else self.precision

    @classmethod
    def parse(cls, text: str) -> Variant:
        precision, *flags = text.strip().split("+")
        unknown = [flag for flag in flags if flag not in VARIANT_FLAGS]
        if precision not in PRECISIONS or unknown:
            raise UsageError(f"variant {text!r} is not PRECISION[+cl][+compile] with PRECISION one of "
                             f"{', '.join(PRECISIONS)} (e.g. fp32, bf16+cl, bf16+cl+compile)")
        chosen = {VARIANT_FLAGS[flag] for flag in flags}
        return cls(precision, "channels_last" in chosen, "compile" in chosen)


@dataclass(frozen=True)
class Job:
    """One measurement: the floor of a variant, or the training step of a method, loader and variant."""

    kind: str  # "floor" or "step"
    variant: str
    method: str | None = None
    loader: str | None = None


@dataclass
class Measurement:
    """What one measurement found."""

    images_per_second: float
    ms_per_step: float
    epoch_seconds: float
    peak_memory_mib: float


def parser() -> argparse.ArgumentParser:
    """The benchmark's own flags; anything else is handed to train_student.py's parser."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", default="resnet32x4", help="teacher network (random weights)")
    p.add_argument("--student", default="resnet8x4", help="student network")
    p.add_argument("--methods", default="kd", help="comma-separated method names, or 'all'")
    p.add_argument("--baseline", default="kd", help="the method every other one is compared with")
    p.add_argument("--loader", default="fast", help="comma-separated: fast, torchvision")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_images", type=int, default=CIFAR100_TRAIN_IMAGES,
                   help="generated training images (CIFAR-100 has 50000)")
    p.add_argument("--data_root", default=None, help="a real CIFAR-100 folder instead of generated data")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="autocast precision (without --variants)")
    p.add_argument("--channels_last", action="store_true", help="channels-last (without --variants)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (without --variants)")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants measured side by side, e.g. fp32,bf16+cl; "
                        "replaces --amp/--channels_last/--compile; speed-ups are against the first")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (compilation included)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per window")
    p.add_argument("--repeats", type=int, default=1, help="timed windows; the best is reported")
    p.add_argument("--num_workers", type=int, default=8,
                   help="torchvision loader workers (capped at the CPU count, as in the real runs)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isolate", action="store_true",
                   help="run every measurement in a fresh process (exact per-measurement CPU peak memory)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--_job", default=None, help=argparse.SUPPRESS)  # one measurement, in a child process
    return p


# --------------------------------------------------------------------------------------------
# Data


def write_random_cifar100(root: Path, num_images: int, seed: int = 0) -> Path:
    """``<root>/cifar-100-python/{train,test,meta}`` in the official layout, with uniformly random pixels.

    Every class is present (labels cycle through the 100 classes, then are shuffled); the test
    split has a fifth as many images, as CIFAR-100's 10,000 to 50,000. Pixel values do not
    change the speed of anything timed here, so they need not be learnable.
    """
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_images), ("test", max(1, num_images // 5))):
        labels = rng.permutation(np.arange(count) % 100)
        entry = {b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
                 b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()}
        with (folder / split).open("wb") as file:
            pickle.dump(entry, file, protocol=4)
    with (folder / "meta").open("wb") as file:
        pickle.dump({b"fine_label_names": [f"class_{n}".encode() for n in range(100)]}, file, protocol=4)
    return root


class BatchStream:
    """Epoch after epoch of a loader, handed out in windows of a fixed number of batches.

    ``train_one_epoch`` runs over one window at a time; the windows share one iterator, so a
    loader's workers and prefetching carry on across windows as they do within an epoch.
    """

    def __init__(self, loader: EpochLoader) -> None:
        self.loader = loader
        self.epoch = 0
        self.iterator: Iterator[Batch] | None = None

    def next_batch(self) -> Batch:
        while True:
            if self.iterator is None:
                self.epoch += 1
                self.loader.set_epoch(self.epoch)
                self.iterator = iter(self.loader)
            try:
                return next(self.iterator)
            except StopIteration:
                self.iterator = None

    def window(self, count: int) -> _Window:
        return _Window(self, count)


@dataclass
class _Window:
    """``count`` batches of a stream, as a loader (``len`` and iteration) for ``train_one_epoch``."""

    stream: BatchStream
    count: int

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.count):
            yield self.stream.next_batch()


# --------------------------------------------------------------------------------------------
# Measurement


def student_options(args: argparse.Namespace, extras: Sequence[str], method: str, loader: str,
                    variant: Variant, data_root: str) -> argparse.Namespace:
    """The options train_student.py would build for this configuration (its parser, its defaults)."""
    argv = ["--path_t", "(random weights)", "--model_s", args.student, "--distill", method,
            "--dataset", "cifar100", "--data_root", data_root, "--batch_size", str(args.batch_size),
            "--loader", loader, "--num_workers", str(args.num_workers), "--device", args.device,
            "--seed", str(args.seed), *extras]
    if variant.amp is not None:
        argv += ["--amp", variant.amp]
    if variant.channels_last:
        argv.append("--channels_last")
    if variant.compile:
        argv.append("--compile")
    return parse_student_args(argv)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def time_windows(run: Callable[[int], None], device: torch.device, args: argparse.Namespace,
                 batch_size: int) -> Measurement:
    """Warm up with ``run(args.warmup)``, then time ``args.repeats`` calls of ``run(args.steps)``.

    ``run(n)`` performs ``n`` training steps. The device is synchronised around each timed
    window, so queued GPU work is inside the window it belongs to.
    """
    _reset_peak_memory(device)
    if args.warmup > 0:
        run(args.warmup)
    seconds = []
    for _ in range(args.repeats):
        _synchronize(device)
        start = time.perf_counter()
        run(args.steps)
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    per_step = min(seconds) / args.steps
    images_per_second = batch_size / per_step
    return Measurement(images_per_second, 1000 * per_step, CIFAR100_TRAIN_IMAGES / images_per_second,
                       _peak_memory_mib(device))


def _place(module: torch.nn.Module, device: torch.device, variant: Variant) -> None:
    """Move to the device and layout of the run, as the driver does."""
    module.to(device)
    if variant.channels_last:
        module.to(memory_format=torch.channels_last)


def measure_step(args: argparse.Namespace, extras: Sequence[str], job: Job, data_root: str) -> Measurement:
    """The real training step of ``job.method`` on ``job.loader``: build as the driver does, then time."""
    variant = Variant.parse(job.variant)
    opt = student_options(args, extras, job.method, job.loader, variant, data_root)
    device = select_device(opt.device)
    seed_everything(opt.seed, deterministic=False)
    teacher_arch = resolve_model(args.teacher, opt.dataset, "--teacher")
    components = build_components(opt, device, ProcessInfo(),
                                  lambda classes, image_size: build_model(teacher_arch, classes, image_size),
                                  teacher_arch)
    data, distiller = components.data, components.task
    optimizer = make_optimizer(opt.optimizer, distiller.main_parameters(), opt.learning_rate, opt.momentum,
                               opt.weight_decay, opt.dot_delta, opt.amp)
    scaler = torch.amp.GradScaler("cuda") if variant.amp == "fp16" else None
    config = StepConfig(device, AMP_DTYPES[variant.amp], variant.channels_last, print_freq=10**9, is_main=False)
    stream = BatchStream(data.train)
    distiller.set_epoch(1)

    def run(steps: int) -> None:
        train_one_epoch(distiller, distiller.loss_weights, stream.window(steps), optimizer, config,
                        epoch=1, scaler=scaler)

    return time_windows(run, device, args, opt.batch_size)


def measure_floor(args: argparse.Namespace, extras: Sequence[str], job: Job, data_root: str) -> Measurement:
    """The bare floor: teacher forward + student forward/backward (cross-entropy) + SGD, one batch in memory."""
    variant = Variant.parse(job.variant)
    opt = student_options(args, extras, args.baseline, "fast", variant, data_root)
    device = select_device(opt.device)
    seed_everything(opt.seed, deterministic=False)
    teacher_arch = resolve_model(args.teacher, opt.dataset, "--teacher")
    teacher = build_model(teacher_arch, CIFAR100_CLASSES, CIFAR_IMAGE_SIZE).requires_grad_(False).eval()
    student = build_model(opt.model_s, CIFAR100_CLASSES, CIFAR_IMAGE_SIZE).train()
    for network in (teacher, student):
        _place(network, device, variant)
        if variant.compile:
            network.compile()
    optimizer = make_sgd(list(student.parameters()), opt.learning_rate, opt.momentum, opt.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if variant.amp == "fp16" else None
    config = StepConfig(device, AMP_DTYPES[variant.amp], variant.channels_last)
    images = torch.randn(opt.batch_size, 3, 32, 32, device=device)
    if variant.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, CIFAR100_CLASSES, (opt.batch_size,), device=device)

    def run(steps: int) -> None:
        for _ in range(steps):
            with config.autocast():
                with torch.inference_mode():
                    teacher(images)
                loss = F.cross_entropy(student(images).float(), targets)
            backward_and_step(loss, optimizer, scaler)

    return time_windows(run, device, args, opt.batch_size)


def failed_record(job: Job, error: str) -> dict[str, Any]:
    """The record of a measurement that did not complete: no numbers, and why."""
    variant = Variant.parse(job.variant)
    return {**asdict(job), "amp": variant.amp, "channels_last": variant.channels_last, "compile": variant.compile,
            "images_per_second": None, "ms_per_step": None, "epoch_seconds": None, "peak_memory_mib": None,
            "error": error}


def run_job(args: argparse.Namespace, extras: Sequence[str], job: Job, data_root: str) -> dict[str, Any]:
    """One measurement in this process, as a record; a failure becomes the record's ``error``."""
    variant = Variant.parse(job.variant)
    measure = measure_floor if job.kind == "floor" else measure_step
    try:
        measured = measure(args, extras, job, data_root)
    except Exception as error:  # one failed configuration must not lose the others' numbers
        return failed_record(job, f"{type(error).__name__}: {error}")
    finally:
        gc.collect()
        if variant.compile:
            torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {**failed_record(job, ""), **asdict(measured), "error": None}


def run_job_isolated(argv: Sequence[str], job: Job, data_root: str) -> dict[str, Any]:
    """One measurement in a fresh Python process (this script with ``--_job``), so its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="benchmark_job_") as folder:
        output = Path(folder) / "record.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--data_root", data_root,
                   "--_job", json.dumps(asdict(job)), "--json", str(output)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if output.is_file():
            return json.loads(output.read_text())["record"]
    lines = (done.stderr or done.stdout or "no output").strip().splitlines()
    return failed_record(job, f"child process exited with {done.returncode}: {lines[-1] if lines else ''}")


# --------------------------------------------------------------------------------------------
# Report


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def add_ratios(floors: list[dict[str, Any]], results: list[dict[str, Any]], variants: list[Variant],
               baseline: str) -> None:
    """Fill in ``floor_ratio``, ``baseline_ratio`` and ``speedup`` (ratios of ms/step, same run)."""
    first = variants[0].name
    floor_ms = {floor["variant"]: floor["ms_per_step"] for floor in floors}
    step_ms = {(r["method"], r["loader"], r["variant"]): r["ms_per_step"] for r in results}
    for floor in floors:
        floor["speedup"] = None if floor["variant"] == first else _ratio(floor_ms[first], floor["ms_per_step"])
    for result in results:
        ms, method, loader, variant = result["ms_per_step"], result["method"], result["loader"], result["variant"]
        result["floor_ratio"] = _ratio(ms, floor_ms.get(variant))
        result["baseline_ratio"] = _ratio(ms, step_ms.get((baseline, loader, variant)))
        result["speedup"] = None if variant == first else _ratio(step_ms.get((method, loader, first)), ms)


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpus": cpus,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cells(record: dict[str, Any]) -> list[str]:
    if record["error"] is not None:
        return [f"error: {record['error']}", "", "", ""]
    return [_number(record["images_per_second"], 0), _number(record["ms_per_step"], 1),
            _number(record["epoch_seconds"], 1), _number(record["peak_memory_mib"], 0)]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header describing the run, the floor table, the step table."""
    machine, settings = report["machine"], report["settings"]
    several = len(settings["variants"]) > 1
    first = settings["variants"][0]
    baseline = settings["baseline"]
    timing = (f"{settings['warmup']} warm-up steps, best of {settings['repeats']} window(s) of "
              f"{settings['steps']} timed steps")
    lines = [
        f"### {settings['teacher']} → {settings['student']}, batch {settings['batch_size']}, "
        f"{machine['device']} ({machine['device_name']}, {machine['threads']} threads), torch {machine['torch']}",
        "",
        f"{timing}; data: {settings['data']}; memory: {report['memory']}. "
        "s/epoch = 50,000 images at the measured rate.",
        "",
        "Bare floor (teacher forward + student forward/backward with cross-entropy + SGD, one batch in memory):",
        "",
    ]
    floor_header = ["variant", "img/s", "ms/step", "s/epoch", "peak MiB"]
    floor_header += [f"speed-up vs {first}"] if several else []
    floor_rows = [[f["variant"], *_cells(f), *([_number(f["speedup"], 2)] if several else [])]
                  for f in report["floors"]]
    lines += [markdown_table(floor_header, floor_rows), "",
              "Training step (train_one_epoch, real loader and Distiller):", ""]
    show_baseline = any(r["baseline_ratio"] is not None for r in report["results"])
    header = ["method", "loader", "variant", "img/s", "ms/step", "s/epoch", "peak MiB", "× floor"]
    header += [f"× {baseline}"] if show_baseline else []
    header += [f"speed-up vs {first}"] if several else []
    rows = []
    for r in report["results"]:
        row = [r["method"], r["loader"], r["variant"], *_cells(r), _number(r["floor_ratio"], 2)]
        row += [_number(r["baseline_ratio"], 2)] if show_baseline else []
        row += [_number(r["speedup"], 2)] if several else []
        rows.append(row)
    lines.append(markdown_table(header, rows))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry point


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def plan(args: argparse.Namespace) -> tuple[list[Variant], list[str], list[str]]:
    """Variants, methods and loaders to measure, checked before anything is timed."""
    if args.variants:
        variants = [Variant.parse(text) for text in _split(args.variants)]
    else:
        variants = [Variant(args.amp or "fp32", args.channels_last, args.compile)]
    if len({v.name for v in variants}) != len(variants):
        raise UsageError(f"--variants {args.variants} names a variant twice")
    args.baseline = distiller_zoo.canonical_name(args.baseline)
    if args.methods.strip() == "all":
        methods = [args.baseline, *(name for name in distiller_zoo.DISTILLERS if name != args.baseline)]
    else:
        methods = list(dict.fromkeys(distiller_zoo.canonical_name(m) for m in _split(args.methods)))
    loaders = list(dict.fromkeys(_split(args.loader)))
    unknown = [name for name in loaders if name not in LOADERS]
    if not methods or not loaders or unknown:
        raise UsageError(f"--methods and --loader must name at least one method and one of "
                         f"{', '.join(LOADERS)} (got {args.methods!r}, {args.loader!r})")
    for name, value in (("batch_size", args.batch_size), ("steps", args.steps), ("repeats", args.repeats),
                        ("num_images", args.num_images)):
        if value < 1:
            raise UsageError(f"--{name} must be positive, got {value}")
    if args.warmup < 0 or args.threads < 0:
        raise UsageError("--warmup and --threads must be 0 or more")
    return variants, methods, loaders


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, measure every configuration and its floor, print the report; 0 when all measured.

    Exit status 2 for a bad flag (before anything is timed), 1 when a measurement failed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser().parse_known_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _benchmark(argv, args, extras)
    finally:
        torch.set_num_threads(threads)  # a caller in this process (a test) keeps its own setting


def _benchmark(argv: list[str], args: argparse.Namespace, extras: list[str]) -> int:
    try:
        variants, methods, loaders = plan(args)
        if args._job is not None:
            record = run_job(args, extras, Job(**json.loads(args._job)), args.data_root)
            Path(args.json).write_text(json.dumps({"record": record}))
            return 0
        device = select_device(args.device)
        if device.type != "cuda" and any(v.precision == "fp16" for v in variants):
            raise UsageError("fp16 needs a CUDA device; on the CPU use bf16")
        # Every option set is parsed once up front, so a typo fails now, not after an hour of timing.
        for method in methods:
            for loader in loaders:
                for variant in variants:
                    student_options(args, extras, method, loader, variant, args.data_root or ".")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    jobs = [Job("floor", v.name) for v in variants]
    jobs += [Job("step", v.name, m, loader) for m in methods for loader in loaders for v in variants]
    with contextlib.ExitStack() as stack:
        data_root = args.data_root
        if data_root is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="benchmark_cifar100_")))
            data_root = str(write_random_cifar100(folder, args.num_images, args.seed))
        records = []
        for job in jobs:
            label = job.variant if job.kind == "floor" else f"{job.method} / {job.loader} / {job.variant}"
            print(f"measuring {job.kind}: {label}", file=sys.stderr, flush=True)
            if args.isolate:
                records.append(run_job_isolated(argv, job, data_root))
            else:
                records.append(run_job(args, extras, job, data_root))

    floors = [r for r in records if r["kind"] == "floor"]
    results = [r for r in records if r["kind"] == "step"]
    add_ratios(floors, results, variants, args.baseline)
    if device.type == "cuda":
        memory = "torch.cuda.max_memory_allocated per measurement (MiB)"
    elif args.isolate:
        memory = "peak RSS of a fresh process per measurement (MiB)"
    else:
        memory = "peak RSS of this process so far (MiB; monotone across rows, use --isolate for per-row peaks)"
    report = {
        "machine": machine_description(device),
        "settings": {
            "teacher": args.teacher, "student": args.student, "batch_size": args.batch_size,
            "num_images": None if args.data_root else args.num_images,
            "data": args.data_root or f"{args.num_images} generated CIFAR-100-shaped images",
            "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
            "num_workers": args.num_workers, "isolate": args.isolate, "baseline": args.baseline,
            "variants": [v.name for v in variants], "extra_flags": list(extras),
        },
        "memory": memory,
        "floors": floors,
        "results": results,
    }
    print(markdown(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = [r for r in records if r["error"] is not None]
    for record in failed:
        print(f"error: {record['kind']} {record['method'] or ''} {record['variant']}: {record['error']}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
