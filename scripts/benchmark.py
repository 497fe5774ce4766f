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

Packs (``--pack kd,crd,rrd``, instead of ``--methods``): the step of a packed run, every member
stepping on one batch after one teacher pass, against the sum of its members' solo steps,
measured in the same run. Both are the real :class:`helper.pack.Pack` of train_student.py's
``--distill kd,crd,rrd`` (its members' options from ``parse_student_pack``, a teacher file of
random weights, a temporary save folder), driven by ``helper.loops.feed_epoch`` over windows of
its loader as ``Pack`` drives an epoch; a member alone is a pack of one, with its own solo
loader. The teacher pass alone (its forward on the pack's batches) is timed too, being what the
pack saves per extra member. ``--student a,b`` packs students as ``--model_s a,b`` does.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` of each measurement. On the CPU, the peak
resident set size (``getrusage``), which is process-wide and never goes down: with
``--isolate`` every measurement runs in a fresh process and the number is its own peak; without
it the number is the peak *so far* in this process, and the report says so.

    python scripts/benchmark.py --teacher resnet32x4 --student resnet8x4 --methods kd --steps 20
    python scripts/benchmark.py --methods kd --variants fp32,bf16+cl          # CPU bf16 speed-up
    python scripts/benchmark.py --methods all --isolate --json all.json       # every method
    python scripts/benchmark.py --methods kd,crd --loader fast,torchvision --num_workers 2
    python scripts/benchmark.py --pack kd,crd,rrd --isolate                  # a pack against its solo runs

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
With ``--pack`` there are no floors; ``results`` holds, per loader × variant, one record per
member alone (``kind`` ``member``, ``member`` its index), the pack's (``pack``) and the teacher
pass's (``teacher``), ``method`` being the member's label or the pack's members, and ``packs``
one summary per loader × variant: ``loader, variant, members, solo_sum_ms_per_step,
pack_ms_per_step, teacher_ms_per_step, ratio`` (pack over the sum; null when a measurement failed).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
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
from distiller_zoo.base import TeacherPass
from errors import UsageError
from helper.components import build_components, data_needs
from helper.distributed import ProcessInfo
from helper.driver import AMP_DTYPES, select_device
from helper.loops import StepConfig, backward_and_step, feed_epoch, train_one_epoch
from helper.optim import make_optimizer, make_sgd
from helper.options import parse_student_args, parse_student_pack, resolve_model
from helper.pack import Pack, union_needs
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
    """One measurement: the floor of a variant, the training step of a method, loader and variant, or of a pack.

    ``kind`` is ``floor``, ``step``, or for ``--pack``: ``member`` (member ``member`` alone),
    ``pack`` (all members on one batch) or ``teacher`` (the pack's teacher pass alone).
    """

    kind: str
    variant: str
    method: str | None = None  # the method; of a pack's job, the member's label or the members'
    loader: str | None = None
    member: int | None = None


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
    p.add_argument("--methods", default=None, help="comma-separated method names, or 'all' (default: kd)")
    p.add_argument("--pack", default=None,
                   help="comma-separated methods trained as one pack (--distill A,B,C), timed against the "
                        "sum of their solo runs; replaces --methods")
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


def _student_argv(args: argparse.Namespace, extras: Sequence[str], methods: str, loader: str, variant: Variant,
                  data_root: str, path_t: str) -> list[str]:
    """train_student.py's command line for this configuration (``methods``: one, or a pack's)."""
    argv = ["--path_t", path_t, "--model_s", args.student, "--distill", methods,
            "--dataset", "cifar100", "--data_root", data_root, "--batch_size", str(args.batch_size),
            "--loader", loader, "--num_workers", str(args.num_workers), "--device", args.device,
            "--seed", str(args.seed), *extras]
    if variant.amp is not None:
        argv += ["--amp", variant.amp]
    if variant.channels_last:
        argv.append("--channels_last")
    if variant.compile:
        argv.append("--compile")
    return argv


def student_options(args: argparse.Namespace, extras: Sequence[str], method: str, loader: str,
                    variant: Variant, data_root: str) -> argparse.Namespace:
    """The options train_student.py would build for this configuration (its parser, its defaults)."""
    return parse_student_args(_student_argv(args, extras, method, loader, variant, data_root, "(random weights)"))


def pack_options(args: argparse.Namespace, extras: Sequence[str], loader: str, variant: Variant, data_root: str,
                 path_t: str = "(random weights)", save_dir: str = ".") -> list[argparse.Namespace]:
    """The members' options train_student.py builds for ``--distill <--pack>`` (one per member, in order).

    The members must be able to share one loader (:func:`helper.pack.union_needs`), as in a real pack.
    """
    argv = _student_argv(args, extras, args.pack, loader, variant, data_root, path_t)
    opts = parse_student_pack([*argv, "--model_t", args.teacher, "--save_dir", save_dir])
    union_needs([data_needs(opt, distils=True) for opt in opts])
    return opts


def member_labels(opts: Sequence[argparse.Namespace]) -> list[str]:
    """What the report calls each member: its method, with the student if the pack has several, and
    the weights if that is not yet unique."""
    several = len({opt.model_s for opt in opts}) > 1
    labels = [f"{opt.model_s} {opt.distill}" if several else opt.distill for opt in opts]
    return [f"{label} r:{opt.gamma} a:{opt.alpha} b:{opt.beta}" if labels.count(label) > 1 else label
            for label, opt in zip(labels, opts)]


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


def write_random_teacher(folder: Path, arch: str, seed: int) -> Path:
    """A teacher file of ``arch`` (CIFAR-100 sized) with random weights, as ``--path_t`` reads it."""
    torch.manual_seed(seed)
    path = folder / f"{arch}_random.pth"
    torch.save({"model": build_model(arch, CIFAR100_CLASSES, CIFAR_IMAGE_SIZE).state_dict()}, path)
    return path


def measure_pack(args: argparse.Namespace, extras: Sequence[str], job: Job, data_root: str) -> Measurement:
    """The step of the pack, of one member alone (a pack of one) or of the pack's teacher pass.

    The real :class:`~helper.pack.Pack` is built in a temporary folder (a random-weight teacher
    file, the save folder) and its runs are fed windows of its loader by ``feed_epoch``, one
    teacher pass per batch, as ``Pack`` feeds an epoch. The runs' progress line at each window's
    end is not printed.
    """
    variant = Variant.parse(job.variant)
    teacher_arch = resolve_model(args.teacher, "cifar100", "--teacher")
    with tempfile.TemporaryDirectory(prefix="benchmark_pack_") as folder:
        path_t = write_random_teacher(Path(folder), teacher_arch, args.seed)
        opts = pack_options(args, extras, job.loader, variant, data_root, str(path_t), str(Path(folder) / "save"))
        pack = Pack(opts if job.member is None else [opts[job.member]], "student")
        try:
            stream = BatchStream(pack.shared.data.train)
            config = pack.shared.config
            # Feature readers step first, as Pack.execute orders them, so a logits-only member reuses their pass.
            stepping = sorted(zip(pack.runs, pack.full_batches),
                              key=lambda member: not getattr(member[0].task, "uses_features", True))

            def run_pack(steps: int) -> None:
                trainers = [run.begin_epoch(1, steps, "train", full) for run, full in stepping]
                with contextlib.redirect_stdout(io.StringIO()):
                    feed_epoch(trainers, stream.window(steps), config, pack.teacher)

            def run_teacher(steps: int) -> None:
                for batch in stream.window(steps):
                    batch = batch.to(config.device, channels_last=config.channels_last)
                    with config.autocast():
                        TeacherPass(pack.teacher, batch.images).outputs(with_features=True)

            return time_windows(run_teacher if job.kind == "teacher" else run_pack, pack.shared.device, args,
                                opts[0].batch_size)
        finally:
            pack.close()


def failed_record(job: Job, error: str) -> dict[str, Any]:
    """The record of a measurement that did not complete: no numbers, and why."""
    variant = Variant.parse(job.variant)
    return {**asdict(job), "amp": variant.amp, "channels_last": variant.channels_last, "compile": variant.compile,
            "images_per_second": None, "ms_per_step": None, "epoch_seconds": None, "peak_memory_mib": None,
            "error": error}


def run_job(args: argparse.Namespace, extras: Sequence[str], job: Job, data_root: str) -> dict[str, Any]:
    """One measurement in this process, as a record; a failure becomes the record's ``error``."""
    variant = Variant.parse(job.variant)
    measure = {"floor": measure_floor, "step": measure_step}.get(job.kind, measure_pack)
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


def add_pack_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per loader × variant of ``--pack``: the pack's ms/step over the sum of its members' solo ones.

    Every record gets ``sum_ratio`` (its ms/step over that sum); the summaries are returned.
    """
    packs = []
    for loader, variant in dict.fromkeys((r["loader"], r["variant"]) for r in results):
        mine = [r for r in results if (r["loader"], r["variant"]) == (loader, variant)]
        members = [r for r in mine if r["kind"] == "member"]
        pack, teacher = (next(r for r in mine if r["kind"] == kind) for kind in ("pack", "teacher"))
        solo = [r["ms_per_step"] for r in members]
        total = None if None in solo else sum(solo)
        for record in mine:
            record["sum_ratio"] = _ratio(record["ms_per_step"], total)
        packs.append({"loader": loader, "variant": variant, "members": [r["method"] for r in members],
                      "solo_sum_ms_per_step": total, "pack_ms_per_step": pack["ms_per_step"],
                      "teacher_ms_per_step": teacher["ms_per_step"], "ratio": pack["sum_ratio"]})
    return packs


def _header_lines(report: dict[str, Any]) -> list[str]:
    """What every report starts with: the pair, the machine, the timing, the data and the memory."""
    machine, settings = report["machine"], report["settings"]
    timing = (f"{settings['warmup']} warm-up steps, best of {settings['repeats']} window(s) of "
              f"{settings['steps']} timed steps")
    return [
        f"### {settings['teacher']} → {settings['student']}, batch {settings['batch_size']}, "
        f"{machine['device']} ({machine['device_name']}, {machine['threads']} threads), torch {machine['torch']}",
        "",
        f"{timing}; data: {settings['data']}; memory: {report['memory']}. "
        "s/epoch = 50,000 images at the measured rate.",
        "",
    ]


def _step_lines(report: dict[str, Any]) -> list[str]:
    """The floor table and the step table."""
    settings = report["settings"]
    several = len(settings["variants"]) > 1
    first = settings["variants"][0]
    baseline = settings["baseline"]
    lines = ["Bare floor (teacher forward + student forward/backward with cross-entropy + SGD, one batch in memory):",
             ""]
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
    return [*lines, markdown_table(header, rows)]


PACK_ROWS = {"member": "{} alone", "pack": "pack {}", "teacher": "teacher pass (inside each step)"}


def _pack_lines(report: dict[str, Any]) -> list[str]:
    """Per loader × variant: each member alone, their sum, the pack, the teacher pass; then the ratios."""
    header = ["run", "loader", "variant", "img/s", "ms/step", "s/epoch", "peak MiB", "× sum of solos"]
    rows, verdicts = [], []
    for summary in report["packs"]:
        where = (summary["loader"], summary["variant"])
        mine = [r for r in report["results"] if (r["loader"], r["variant"]) == where]
        members = [r for r in mine if r["kind"] == "member"]
        for record in mine:
            if record["kind"] == "pack":  # the sum goes between the members and the pack
                epochs = [r["epoch_seconds"] for r in members]
                rows.append(["sum of the solo steps", *where, "–", _number(summary["solo_sum_ms_per_step"], 1),
                             "–" if None in epochs else _number(sum(epochs), 1), "–",
                             _number(1.0 if summary["solo_sum_ms_per_step"] else None, 2)])
            rows.append([PACK_ROWS[record["kind"]].format(record["method"]), *where, *_cells(record),
                         _number(record["sum_ratio"], 2)])
        verdicts.append(f"- {', '.join(where)}: pack / sum of solo steps = **{_number(summary['ratio'], 2)}**")
    return ["Pack (one batch, one teacher pass, then every member's step) against each member alone "
            "(a pack of one, on its own loader), all through helper.pack.Pack and feed_epoch:", "",
            markdown_table(header, rows), "", *verdicts]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header describing the run, then the floor and step tables, or the pack table."""
    body = _pack_lines(report) if report["packs"] else _step_lines(report)
    return "\n".join([*_header_lines(report), *body])


# --------------------------------------------------------------------------------------------
# Entry point


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def plan(args: argparse.Namespace) -> tuple[list[Variant], list[str], list[str]]:
    """Variants, methods and loaders to measure, checked before anything is timed (no methods with --pack)."""
    if args.variants:
        variants = [Variant.parse(text) for text in _split(args.variants)]
    else:
        variants = [Variant(args.amp or "fp32", args.channels_last, args.compile)]
    if len({v.name for v in variants}) != len(variants):
        raise UsageError(f"--variants {args.variants} names a variant twice")
    args.baseline = distiller_zoo.canonical_name(args.baseline)
    if args.pack is not None and args.methods is not None:
        raise UsageError("--pack measures its own methods; leave out --methods")
    chosen = "kd" if args.methods is None else args.methods
    if args.pack is not None:
        methods = []
    elif chosen.strip() == "all":
        methods = [args.baseline, *(name for name in distiller_zoo.DISTILLERS if name != args.baseline)]
    else:
        methods = list(dict.fromkeys(distiller_zoo.canonical_name(m) for m in _split(chosen)))
    loaders = list(dict.fromkeys(_split(args.loader)))
    unknown = [name for name in loaders if name not in LOADERS]
    if (not methods and args.pack is None) or not loaders or unknown:
        raise UsageError(f"--methods and --loader must name at least one method and one of "
                         f"{', '.join(LOADERS)} (got {chosen!r}, {args.loader!r})")
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


def pack_jobs(args: argparse.Namespace, extras: Sequence[str], loader: str, variant: Variant) -> list[Job]:
    """The measurements of ``--pack`` on one loader and variant: each member alone, the pack, its teacher pass."""
    labels = member_labels(pack_options(args, extras, loader, variant, args.data_root or "."))
    if len(labels) < 2:
        raise UsageError(f"--pack {args.pack} names one run; a pack has two or more (--pack kd,crd)")
    if len(set(labels)) < len(labels):
        raise UsageError(f"--pack {args.pack} names the same run twice; give each member its own method or weights")
    members = ",".join(labels)
    return [*(Job("member", variant.name, label, loader, number) for number, label in enumerate(labels)),
            Job("pack", variant.name, members, loader), Job("teacher", variant.name, members, loader)]


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
        jobs = [Job("floor", v.name) for v in variants]
        jobs += [Job("step", v.name, m, loader) for m in methods for loader in loaders for v in variants]
        if args.pack is not None:
            jobs = [job for loader in loaders for variant in variants
                    for job in pack_jobs(args, extras, loader, variant)]
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

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
    results = [r for r in records if r["kind"] != "floor"]
    add_ratios(floors, [r for r in results if r["kind"] == "step"], variants, args.baseline)
    packs = add_pack_ratios(results) if args.pack is not None else []
    if device.type == "cuda":
        memory = "torch.cuda.max_memory_allocated per measurement (MiB)"
    elif args.isolate:
        memory = "peak RSS of a fresh process per measurement (MiB)"
    else:
        memory = "peak RSS of this process so far (MiB; monotone across rows, use --isolate for per-row peaks)"
    report = {
        "machine": machine_description(device),
        "settings": {
            "teacher": args.teacher, "student": args.student, "pack": args.pack, "batch_size": args.batch_size,
            "num_images": None if args.data_root else args.num_images,
            "data": args.data_root or f"{args.num_images} generated CIFAR-100-shaped images",
            "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
            "num_workers": args.num_workers, "isolate": args.isolate, "baseline": args.baseline,
            "variants": [v.name for v in variants], "extra_flags": list(extras),
        },
        "memory": memory,
        "floors": floors,
        "results": results,
        "packs": packs,
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
