"""Contrastive positives and negatives for CRD-style methods (METHODS.md §1.14, §3.1).

For each sample of a batch, ``contrast_indices[b] = [positive, negative_1 .. negative_K]``:
the positive is the sample's own index (mode ``exact``) or a uniformly random index of the
same class (mode ``relax``); the K negatives are distinct indices drawn uniformly from the
samples of the *other* classes, without replacement, as upstream CRD draws them.

Upstream draws each sample's negatives in ``__getitem__`` with one ``np.random.choice`` per
image, which costs a permutation of the 49,500-element pool per image. Here one batch is
sampled at once, on the loader's device, at O(N + B·(K + largest class)) cost:

1. draw one uniformly random permutation σ of the whole training set [0, N);
2. give each row an independent uniform start s in [0, N) and walk σ cyclically from s,
   keeping the first K entries whose class differs from the row's class (at most
   K + |own class| steps), gathered with one scatter.

Why each row is a uniform K-subset of its pool: in a uniform permutation, the order of the
pool's members is a uniform arrangement independent of where the own-class members sit, and
the start s is independent of σ; reading K consecutive members of a uniformly arranged cycle
from any start chosen independently of that arrangement gives a uniform K-subset. Rows of a
batch share σ, which correlates rows (two rows of one class with nearby starts overlap) but not
the draws within a row. The simpler alternative, one permutation per distinct pool size in the
batch, costs O(N) per distinct size, and ImageNet's unequal classes give up to B distinct
sizes per batch: O(N·B). Memory: a few ``[B, K + largest class]`` int64 tensors per batch.

When K exceeds a class's pool (small data sets), that class's negatives are drawn uniformly
*with* replacement, as upstream does, and the sampler warns once.
"""

from __future__ import annotations

import warnings

import torch

from errors import UsageError

CONTRAST_MODES = ("exact", "relax")


class ContrastSampler:
    """Draws ``[B, K+1]`` contrast indices for batches of training-set indices.

    ``targets`` are the labels of the whole training set (indices are positions in it);
    every tensor lives on ``device``, and ``sample`` uses the generator it is given, so the
    draws of an epoch depend only on how that generator was seeded.
    """

    def __init__(self, targets: torch.Tensor, num_negatives: int, mode: str, device: torch.device) -> None:
        if mode not in CONTRAST_MODES:
            raise UsageError(f"--mode {mode!r} is not a contrast mode; use {' or '.join(CONTRAST_MODES)}")
        if num_negatives < 1:
            raise UsageError(f"--nce_k must be at least 1 for contrastive sampling, not {num_negatives}")
        self.targets = targets.to(device=device, dtype=torch.long)
        self.num_negatives = num_negatives
        self.mode = mode
        counts = torch.bincount(self.targets)
        self.class_count = counts
        self.class_start = torch.cumsum(counts, 0) - counts
        self.class_sorted = torch.argsort(self.targets, stable=True)
        pools = len(self.targets) - counts
        present = counts > 0
        if int(pools[present].max()) == 0:
            raise UsageError("contrastive sampling needs a training set with at least two classes")
        self.replace_class = pools < num_negatives
        self.any_replacement = bool(self.replace_class[present].any())
        self.all_replacement = bool(self.replace_class[present].all())
        self.window = num_negatives + int(counts.max())  # enough steps to meet K other-class samples
        if self.any_replacement:
            warnings.warn(
                f"nce_k={num_negatives} exceeds the {int(pools[present].min())} negatives of the smallest "
                "pool: negatives are drawn with replacement for such classes, as upstream CRD does",
                stacklevel=2,
            )

    @property
    def device(self) -> torch.device:
        return self.targets.device

    def sample(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Contrast indices ``[B, K+1]`` (int64, on the sampler's device) for training-set ``indices``."""
        indices = indices.to(self.device, dtype=torch.long)
        labels = self.targets[indices]
        positives = indices if self.mode == "exact" else self._same_class(labels, generator)
        rows = torch.empty(len(indices), self.num_negatives + 1, dtype=torch.long, device=self.device)
        if self.all_replacement:
            rows[:, 1:] = self._with_replacement(labels, generator)
        else:
            self._without_replacement(labels, generator, rows)
            if self.any_replacement:
                replaced = self._with_replacement(labels, generator)
                rows[:, 1:] = torch.where(self.replace_class[labels].unsqueeze(1), replaced, rows[:, 1:])
        rows[:, 0] = positives
        return rows

    def _same_class(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One uniformly random index of each row's own class (mode ``relax``)."""
        counts = self.class_count[labels]
        uniform = torch.rand(len(labels), generator=generator, device=self.device, dtype=torch.float64)
        offsets = torch.minimum((uniform * counts).long(), counts - 1)
        return self.class_sorted[self.class_start[labels] + offsets]

    def _without_replacement(self, labels: torch.Tensor, generator: torch.Generator, rows: torch.Tensor) -> None:
        """Write K distinct other-class indices per row into ``rows[:, 1:]`` (a walk over one permutation)."""
        size = len(self.targets)
        permutation = torch.randperm(size, generator=generator, device=self.device)
        starts = torch.randint(0, size, (len(labels),), generator=generator, device=self.device)
        # The permutation and its classes, repeated so that every walk of `window` steps from any
        # start is a contiguous slice: row b's walk is row starts[b] of the unfolded view.
        repeats = -(-(size + self.window) // size)
        walks = permutation.repeat(repeats).unfold(0, self.window, 1)[starts]
        walk_classes = self.targets[permutation].repeat(repeats).unfold(0, self.window, 1)[starts]
        kept = walk_classes != labels.unsqueeze(1)
        rank = kept.cumsum(dim=1)
        # The k-th kept candidate goes to column k; the rest to column 0, which the positive
        # overwrites afterwards. (A scatter, not boolean indexing: no host sync on a GPU.)
        columns = torch.where(kept & (rank <= self.num_negatives), rank, 0)
        rows.scatter_(1, columns, walks)

    def _with_replacement(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """K independent uniform other-class indices per row (pool smaller than K)."""
        counts, starts = self.class_count[labels].unsqueeze(1), self.class_start[labels].unsqueeze(1)
        pools = len(self.targets) - counts
        uniform = torch.rand(
            len(labels), self.num_negatives, generator=generator, device=self.device, dtype=torch.float64
        )
        slots = torch.minimum((uniform * pools).long(), pools - 1)
        # A slot past the start of the row's own class block skips over that block.
        return self.class_sorted[slots + (slots >= starts) * counts]
