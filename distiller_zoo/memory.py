"""Memories of past embeddings for the contrastive methods (CRD, RRD), and the DDP gather they use.

* :class:`ContrastMemory` — CRD's two momentum memory banks, one row per training sample
  (Tian et al., "Contrastive Representation Distillation", ICLR 2020; METHODS.md §1.14).
  Buffers and their names follow RepDistiller's ``ContrastMemory`` (``params`` =
  ``[K, T, Z_v1, Z_v2, momentum]``, ``memory_v1`` = student bank, ``memory_v2`` = teacher
  bank), so a RepDistiller checkpoint's memory loads by name.
* :class:`FIFOQueue` — a first-in-first-out queue of the last ``K`` teacher embeddings
  (MoCo-style; RRD, METHODS.md §1.16), buffers ``queue`` and ``queue_ptr`` as in the
  distillers repository.
* :func:`concat_all_gather` — every rank's tensor, concatenated, under DDP.

Both memories update with batched tensor ops on the memory's device (``index_select`` /
``index_copy_``): nothing runs per sample in Python.

**Distributed training.** Every update goes through :func:`concat_all_gather`: the embeddings
*and* the sample indices of all ranks are gathered, so every rank applies the same update and
all ranks keep identical memories (as if one process had seen the global batch). Scoring uses
only the local batch. All ranks must pass tensors of the same shape, which
``DistributedSampler`` guarantees (it pads every rank to the same number of samples).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distiller_zoo.common import l2_normalize_exact


def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` from every rank concatenated along dim 0 (rank order), without gradient.

    Outside an initialised process group, or with world size 1, ``tensor`` comes back
    unchanged. Every rank must pass a tensor of the same shape.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    tensor = tensor.detach().contiguous()
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat(gathered, dim=0)




class ContrastMemory(nn.Module):
    """CRD's momentum memory banks and its exponentiated, Z-normalised scores (METHODS.md §1.14).

    ``memory_v1`` holds the student embeddings, ``memory_v2`` the teacher embeddings, one row
    per training sample, initialised i.i.d. uniform in ``[-σ, σ]`` with ``σ = 1/sqrt(d/3)``
    (rows of expected norm 1). ``params = [K, T, Z_v1, Z_v2, momentum]``; the two Z constants
    start at -1 and are fixed once, on the first batch ever, from that batch's mean score times
    N; being in a buffer, they travel with every checkpoint. Under DDP the first batch's means
    are averaged over the ranks, so every rank holds the same Z (one process: upstream's value).
    """

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float = 0.07, nce_m: float = 0.5):
        super().__init__()
        self.n_data = n_data
        self.nce_k = nce_k
        self.register_buffer("params", torch.tensor([nce_k, nce_t, -1.0, -1.0, nce_m]))
        sigma = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_v1", torch.rand(n_data, feat_dim).mul_(2 * sigma).sub_(sigma))
        self.register_buffer("memory_v2", torch.rand(n_data, feat_dim).mul_(2 * sigma).sub_(sigma))
        self._z_fixed = False

    def scores(self, anchor: torch.Tensor, memory: torch.Tensor, contrast_idx: torch.Tensor) -> torch.Tensor:
        """``exp(<memory[contrast_idx[b, k]], anchor[b]> / T)`` as ``[B, K+1]``; memory rows are constants.

        When the bank has fewer rows than the batch draws (CIFAR: N = 50,000 against
        B·(K+1) ≈ 1M), scoring the anchors against the whole bank and picking the drawn columns
        is far cheaper than gathering a ``[B, K+1, d]`` copy of the rows; otherwise (ImageNet)
        the rows are gathered. Both compute the same dot products.
        """
        batch_size, width = contrast_idx.shape
        if memory.shape[0] <= batch_size * width:
            # a snapshot: the product keeps the bank for backward, and the bank is updated in place below
            dots = (anchor @ memory.clone().t()).gather(1, contrast_idx)
        else:
            rows = memory.index_select(0, contrast_idx.reshape(-1)).view(batch_size, width, -1)
            dots = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)
        # a copy of T: autograd keeps the divisor, and ``params`` may change in place below
        return dots.div(self.params[1].clone()).exp()

    def forward(
        self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, contrast_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score both views against the other view's bank, then update both banks.

        ``v1``/``v2``: student/teacher embeddings ``[B, d]`` (unit rows); ``y``: dataset indices
        ``[B]``; ``contrast_idx``: ``[B, K+1]`` bank rows to score (column 0 the positive).
        Returns ``(out_v1, out_v2)``, each ``[B, K+1]`` and divided by its Z:
        ``out_v1`` = student anchor against the teacher bank, ``out_v2`` = teacher anchor
        against the student bank.
        """
        out_v1 = self.scores(v1, self.memory_v2, contrast_idx)
        out_v2 = self.scores(v2, self.memory_v1, contrast_idx)
        if not self._normalisers_fixed():
            self._fix_normalisers(out_v1, out_v2)
        z_v1, z_v2 = self.params[2:4].clone()
        out_v1 = out_v1 / z_v1
        out_v2 = out_v2 / z_v2
        self.update(v1, v2, y)
        return out_v1, out_v2

    def _normalisers_fixed(self) -> bool:
        """Whether Z is set; read from the buffer until it is (one scalar read), then remembered."""
        if not self._z_fixed:
            self._z_fixed = bool(self.params[2] >= 0)
        return self._z_fixed

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._z_fixed = False  # a loaded state may or may not have Z yet
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def _fix_normalisers(self, out_v1: torch.Tensor, out_v2: torch.Tensor) -> None:
        means = torch.stack([out_v1.mean(), out_v2.mean()]).unsqueeze(0)
        self.params[2:4] = concat_all_gather(means).mean(0) * self.n_data

    @torch.no_grad()
    def update(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor) -> None:
        """``M[y] <- normalize(μ·M[y] + (1-μ)·v)`` for both banks, with every rank's batch.

        Only the rows named in ``y`` change. With repeated indices in one update (possible only
        when DDP pads the last global batch) one of the candidate rows is kept.
        """
        momentum = self.params[4]
        y = concat_all_gather(y).reshape(-1)
        for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
            v = concat_all_gather(v.detach()).to(memory.dtype)
            rows = memory.index_select(0, y) * momentum + v * (1 - momentum)
            memory.index_copy_(0, y, l2_normalize_exact(rows))


class FIFOQueue(nn.Module):
    """A queue of the ``K`` most recent embeddings (MoCo-style memory; RRD, METHODS.md §1.16).

    ``queue`` ``[K, d]`` starts as N(0, 1) normalised **along dim 0** (each column unit-norm
    over the K rows, so rows are tiny at first), as upstream does; every row is replaced after
    K samples. ``queue_ptr`` is the next row to write.

    Upstream writes ``queue[ptr:ptr+B]`` and needs ``K mod B = 0`` at every step: a partial
    last batch (50000 mod 64 = 16) shifts the pointer and a later batch overruns the queue
    (METHODS.md §5 item 22). Here row ``i`` of a batch goes to ``(ptr + i) mod K``, so any
    batch size works, partial last batches included, and the queue always holds the newest K
    embeddings (a batch larger than K keeps only its last K rows).
    """

    def __init__(self, nce_k: int, feat_dim: int):
        super().__init__()
        self.nce_k = nce_k
        self.register_buffer("queue", F.normalize(torch.randn(nce_k, feat_dim), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Append ``keys`` ``[B, d]`` (every rank's, under DDP), overwriting the oldest rows."""
        keys = concat_all_gather(keys.detach()).to(self.queue.dtype)
        count = keys.shape[0]
        offsets = torch.arange(count, device=self.queue.device)
        if count > self.nce_k:
            keys, offsets = keys[-self.nce_k:], offsets[-self.nce_k:]
        positions = (self.queue_ptr + offsets) % self.nce_k
        self.queue.index_copy_(0, positions, keys)
        self.queue_ptr.copy_((self.queue_ptr + count) % self.nce_k)
