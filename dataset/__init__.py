"""Data sets and loaders: every loader yields ``Batch`` objects (see ``dataset.build``)."""

from dataset.batch import Batch, DataNeeds
from dataset.build import DATASETS, LOADERS, DataBundle, EpochLoader, build
from dataset.contrast import ContrastSampler

__all__ = [
    "DATASETS",
    "LOADERS",
    "Batch",
    "ContrastSampler",
    "DataBundle",
    "DataNeeds",
    "EpochLoader",
    "build",
]
