"""Data sets and loaders: every loader yields ``Batch`` objects (see ``dataset.build``).

The loaders' modules (torchvision, DALI, scikit-learn's digits) are imported when first used,
so that parsing a command line does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import Any

from dataset.batch import Batch, DataNeeds
from dataset.catalog import DATASETS, LOADERS

_LAZY = {"DataBundle": "dataset.bundle", "EpochLoader": "dataset.bundle", "build": "dataset.bundle",
         "check_full_batches": "dataset.bundle",
         "ContrastSampler": "dataset.contrast"}

__all__ = ["DATASETS", "LOADERS", "Batch", "ContrastSampler", "DataBundle", "DataNeeds", "EpochLoader", "build",
           "check_full_batches"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dataset' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
