"""ImageNet through NVIDIA DALI (``--dali cpu|gpu``, METHODS.md §3.5), yielding the common ``Batch``.

The pipeline is SimKD's:

* train: ``readers.file`` → ``decoders.image_random_crop`` (RGB, aspect ratio 0.8–1.25, area
  0.1–1, 100 attempts) → ``resize`` to exactly 224×224 (triangular) → mirror with
  ``random.coin_flip(0.5)``;
* evaluation: ``readers.file`` → ``decoders.image`` (RGB) → ``resize`` so that the shorter side
  is 256 (triangular) → no mirror;
* both: ``crop_mirror_normalize`` to a float CHW centre crop of 224×224 with the ImageNet mean
  and std ×255.

``--dali gpu`` decodes with the ``mixed`` (nvJPEG) decoder and resizes and normalises on the
process's GPU (its *local* rank); ``--dali cpu`` does everything on the CPU, so it runs on a
machine without a GPU (upstream always normalises on the GPU).

What differs from upstream, and why:

* **Sample indices.** The reader gets the file list itself, with each file's *index in the
  training set* as its label; the class label is looked up from that index. So every batch
  carries ``indices`` (and, when a method asks, ``contrast_indices`` from the shared
  ``ContrastSampler``), and CRD/RRD run on DALI (upstream's DALI loader has no indices).
* **Sharding and order.** Each rank's reader is given exactly the positions the shared rule of
  ``dataset/sharding.py`` assigns it for the epoch (one permutation seeded by (seed, epoch),
  padded to a multiple of the world size, strided by rank; evaluation: stored order, strided,
  unpadded), the same samples the torchvision loader would give it. DALI's own
  ``shard_id/num_shards`` split the list into contiguous shards whose sizes differ by one, so
  ranks could get different numbers of batches or a different last-batch size: a hang in DDP's
  all-reduce, or an all-gather of unequal shapes in the memory banks. Its ``random_shuffle`` is
  a fixed-seed shuffle of the list done once plus a 1024-sample shuffle buffer, and
  ``shuffle_after_epoch`` reshuffles from the pipeline's own running state: with either, the
  order of epoch *e* depends on every epoch the pipeline ran before it, so a run resumed at
  epoch *e* would see another order than one that never stopped.
* **Per-epoch reproducibility.** A fresh pipeline is built for every pass, seeded by
  (seed, epoch, rank), so crops and flips are a function of those alone, independent of the
  number of DALI threads and of history, as for the other loaders. Building one for a rank's
  shard of ImageNet takes a fraction of a second (0.3 s for 160,000 files, first batch
  included), against minutes per epoch; and nothing has to be ``reset()`` between passes, as
  upstream's two iterators must be after every epoch and after the teacher's evaluation.
* **Single process** works: rank 0 of a world of 1 (upstream needs ``--multiprocessing-distributed``).
* **Unreadable files.** The file list is the one ``dataset/imagenet.py`` scanned (without the
  files ``--bad_images skip`` left out). A file that passes that scan but still fails in DALI's
  decoder is a usage error naming the file (found by decoding the failing batch's files with
  PIL), instead of DALI's multi-line pipeline error.

DALI is imported lazily: without it everything else works, and ``--dali`` fails with one line
that says how to install it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

from dataset.batch import Batch
from dataset.contrast import ContrastSampler
from dataset.imagenet import IMAGENET_MEAN, IMAGENET_STD, UnreadableImage, load_rgb
from dataset.seeding import Stream, derive_seed
from dataset.sharding import (
    ShardedPasses,
    evaluation_positions,
    training_positions,
)
from errors import UsageError

DALI_MODES = ("cpu", "gpu")
CROP_SIZE = 224
RESIZE_SHORTER = 256
RANDOM_ASPECT_RATIO = (0.8, 1.25)
RANDOM_AREA = (0.1, 1.0)
RANDOM_CROP_ATTEMPTS = 100
# nvJPEG pre-allocations of SimKD's pipeline (enough for ImageNet's largest images).
DEVICE_MEMORY_PADDING = 211025920
HOST_MEMORY_PADDING = 140544512
READER_NAME = "Reader"
DECODER_FAILURE = "fn.decoders."  # in the message of a pipeline error raised by a decoder operator
INSTALL_HINT = (
    "pip install nvidia-dali-cuda130 (Linux x86_64; pinned in requirements.txt), "
    "or drop --dali to use the torchvision loader"
)


def import_dali() -> tuple[ModuleType, ModuleType]:
    """``(nvidia.dali, nvidia.dali.plugin.pytorch)``, or a usage error saying how to install DALI."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.plugin.pytorch as dali_torch
    except ImportError as error:
        raise UsageError(f"--dali needs NVIDIA DALI, which does not import here ({error}); {INSTALL_HINT}") from None
    return dali, dali_torch


def _pipeline(
    dali: ModuleType,
    files: list[str],
    indices: list[int],
    *,
    train: bool,
    gpu: bool,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
) -> Any:
    """One pass's pipeline over ``files``, outputs ``(images [B,3,224,224] float, indices [B,1] int32)``."""
    fn, types = dali.fn, dali.types
    decoder: dict[str, Any] = {"device": "mixed" if gpu else "cpu", "output_type": types.RGB}
    if gpu:
        decoder.update(device_memory_padding=DEVICE_MEMORY_PADDING, host_memory_padding=HOST_MEMORY_PADDING)
    pipeline = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    with pipeline:
        # pad_last_batch: the last batch is filled with copies of the last sample, which the
        # iterator trims, so the reader never reads into the next pass.
        jpegs, labels = fn.readers.file(files=files, labels=indices, random_shuffle=False,
                                        pad_last_batch=True, name=READER_NAME)
        if train:
            images = fn.decoders.image_random_crop(
                jpegs, random_aspect_ratio=list(RANDOM_ASPECT_RATIO), random_area=list(RANDOM_AREA),
                num_attempts=RANDOM_CROP_ATTEMPTS, **decoder)
            images = fn.resize(images, resize_x=CROP_SIZE, resize_y=CROP_SIZE, interp_type=types.INTERP_TRIANGULAR)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, **decoder)
            images = fn.resize(images, size=RESIZE_SHORTER, mode="not_smaller", interp_type=types.INTERP_TRIANGULAR)
            mirror = False
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", crop=(CROP_SIZE, CROP_SIZE),
            mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD], mirror=mirror)
        pipeline.set_outputs(images, labels)
    return pipeline


class DaliLoader(ShardedPasses):
    """An ``EpochLoader`` over image files decoded and augmented by DALI (see the module docstring).

    ``samples`` are ``(path, class)`` pairs, as ``ImageFolder.samples``; ``positions`` select
    the view this loader serves (the training set after ``--val_split``, or the held-out part),
    and a batch's ``indices`` are positions in that view, as with the other loaders.
    ``num_threads`` is DALI's CPU thread count (``--num_workers``, at least 1).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        positions: np.ndarray | None = None,
        *,
        mode: str,
        batch_size: int,
        device: torch.device,
        seed: int,
        train: bool,
        num_workers: int,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        contrast: ContrastSampler | None = None,
    ) -> None:
        if mode not in DALI_MODES:
            raise UsageError(f"--dali {mode!r} is not a DALI mode; use cpu or gpu")
        device = torch.device(device)
        if mode == "gpu" and device.type != "cuda":
            raise UsageError("--dali gpu decodes on the GPU but this run has no CUDA device; use --dali cpu")
        self.dali, self.dali_torch = import_dali()
        chosen = np.arange(len(samples)) if positions is None else np.asarray(positions)
        self.files = [str(samples[int(p)][0]) for p in chosen]
        self.targets = torch.tensor([int(samples[int(p)][1]) for p in chosen], dtype=torch.long)
        self.gpu = mode == "gpu"
        self.device_id: int | None = None  # a CPU-only pipeline
        if self.gpu:
            self.device_id = device.index if device.index is not None else torch.cuda.current_device()
        self.batch_size = batch_size
        self.num_threads = max(1, int(num_workers))
        self.seed = seed
        self.train = train
        self.drop_last = drop_last and train
        self.rank = rank
        self.world_size = world_size
        self.contrast = contrast
        self.epoch = 0

    @property
    def split_size(self) -> int:
        return len(self.files)

    def positions(self) -> torch.Tensor:
        """This rank's positions for the current pass, in the order the pipeline reads them."""
        if self.train:
            return training_positions(len(self.files), seed=self.seed, epoch=self.epoch, rank=self.rank,
                                      world_size=self.world_size)
        return evaluation_positions(len(self.files), rank=self.rank, world_size=self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        positions = self.positions().tolist()
        if len(self) == 0:
            return
        files = [self.files[p] for p in positions]
        generator = None
        if self.contrast is not None:
            generator = torch.Generator(device=self.contrast.device)
            generator.manual_seed(derive_seed(self.seed, self.epoch, self.rank, Stream.CONTRAST))
        done = 0  # batches yielded: DALI raises a decoder failure at the batch that holds the file
        try:
            for (outputs,) in self._outputs(files, positions):
                indices = outputs["indices"].reshape(-1).long().cpu()
                contrast_indices = None if generator is None else self.contrast.sample(indices, generator)
                yield Batch(outputs["images"], self.targets[indices], indices, contrast_indices)
                done += 1
        except RuntimeError as error:
            if DECODER_FAILURE not in str(error):
                raise
            raise UsageError(_undecodable(files[done * self.batch_size : (done + 1) * self.batch_size])) from None

    def _outputs(self, files: list[str], positions: list[int]) -> Any:
        """This pass's DALI iterator (building it already decodes the first batch)."""
        pipeline = _pipeline(
            self.dali, files, positions, train=self.train, gpu=self.gpu,
            batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
            seed=derive_seed(self.seed, self.epoch, self.rank, Stream.AUGMENT) % 2**31,
        )
        policy = self.dali_torch.LastBatchPolicy
        return self.dali_torch.DALIGenericIterator(
            [pipeline], ["images", "indices"], reader_name=READER_NAME, auto_reset=False,
            last_batch_policy=policy.DROP if self.drop_last else policy.PARTIAL,
        )


def _undecodable(files: list[str]) -> str:
    """One line for a batch of ``files`` that DALI could not decode, naming the file PIL cannot decode either."""
    for path in files:
        try:
            load_rgb(path)
        except UnreadableImage as error:
            return f"DALI could not decode a batch: {error}"
    return (f"DALI could not decode one of the {len(files)} files of a batch starting at {files[0]}, though PIL "
            "decodes them; replace that file, or drop --dali to use the torchvision loader")
