"""The published CIFAR-100 top-1 accuracies (%) of METHODS.md §4, as data.

These are the two tables that ``summarize.py --compare`` puts beside measured cells, and their
columns are the standard teacher→student pairs that the sweep scripts run. Each row keeps the
source its numbers were copied from, so a comparison always says whom it compares with:

* ``RD`` — RepDistiller ``README.md`` at b84f547 (the CRD paper's tables);
* ``DS@e6bd9f9`` — distillers ``README.md`` at commit e6bd9f9 (2025-02-11), the last version with
  tables (RRD with τ_s 0.04 / τ_t 0.10; DCD with trainable τ, b);
* ``IT`` — ITRD ``README.md`` at 5d08c6b (WCoRD and ReviewKD quoted from their papers);
* ``MD`` — mdistiller ``README.md`` at a08d46f (DKD and KD+DOT; its "MobileNet-V2" column under
  resnet32x4 is read as ShuffleV2, METHODS.md §4 †);
* ``DIST`` — DIST_KD ``README.md`` at 2418f18 (the mean of its mean ± std);
* ``LS`` — logit-standardization-KD ``README.md`` at 07356ad (the "+LS" rows, and the CTKD and
  MLKD rows it prints beside them; its CTKD row repeats the CTKD README's six pairs).

``None`` marks a cell the source leaves empty ("N/A", "-", "—"). The SimKD table and the
earlier DS numbers of METHODS.md §4 use other teachers or settings and are not cell-for-cell
comparable, so they are not stored here.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = {
    "RD": "HobbitLong/RepDistiller README.md @ b84f547",
    "DS@e6bd9f9": "giakoumoglou/distillers README.md @ e6bd9f9",
    "IT": "roymiles/ITRD README.md @ 5d08c6b",
    "MD": "megvii-research/mdistiller README.md @ a08d46f",
    "DIST": "hunto/DIST_KD README.md @ 2418f18",
    "LS": "sunshangquan/logit-standardization-KD README.md @ 07356ad",
}

Pair = tuple[str, str]  # (teacher, student), registry names


@dataclass(frozen=True)
class PublishedTable:
    """One paper table: its title, its pair columns, and per row label the values and source."""

    title: str
    pairs: tuple[Pair, ...]
    rows: dict[str, tuple[tuple[float | None, ...], str]]

    def value(self, label: str, pair: Pair) -> float | None:
        """The published accuracy of row ``label`` for ``pair``, or None if there is none."""
        if label not in self.rows or pair not in self.pairs:
            return None
        return self.rows[label][0][self.pairs.index(pair)]

    def source(self, label: str) -> str | None:
        """The source tag (a key of :data:`SOURCES`) of row ``label``."""
        return self.rows[label][1] if label in self.rows else None


SAME_ARCHITECTURE = PublishedTable(
    title="Same-architecture pairs",
    pairs=(("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
           ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")),
    rows={
        "teacher": ((75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64), "RD"),
        "student (vanilla)": ((73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36), "RD"),
        "KD": ((74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98), "RD"),
        "FitNet": ((73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02), "RD"),
        "AT": ((74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43), "RD"),
        "SP": ((73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68), "RD"),
        "CC": ((73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71), "RD"),
        "VID": ((74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23), "RD"),
        "RKD": ((73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48), "RD"),
        "PKT": ((74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88), "RD"),
        "AB": ((72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94), "RD"),
        "FT": ((73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58), "RD"),
        "FSP": ((72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23), "RD"),
        "NST": ((73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53), "RD"),
        "CRD": ((75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94), "RD"),
        "CRD+KD": ((75.64, 74.38, 71.63, 71.56, 73.75, 75.46, 74.29), "DS@e6bd9f9"),
        "DCD": ((74.99, 73.69, 71.18, 71.00, 73.12, 74.23, 73.22), "DS@e6bd9f9"),
        "DCD+KD": ((76.06, 74.76, 71.81, 72.03, 73.62, 75.09, 73.95), "DS@e6bd9f9"),
        "RRD": ((75.33, 73.55, 70.71, 70.72, 73.10, 74.48, 73.99), "DS@e6bd9f9"),
        "RRD+KD": ((75.66, 74.67, 72.19, 71.74, 73.54, 75.08, 74.32), "DS@e6bd9f9"),
        "WCoRD": ((76.11, 74.72, 71.92, 71.88, 74.20, 76.15, 74.72), "IT"),
        "ReviewKD": ((76.12, 75.09, 71.89, None, 73.89, 75.63, 74.85), "IT"),
        "ITRD": ((76.12, 75.18, 71.47, 71.99, 74.26, 76.69, 74.93), "IT"),
        "DKD": ((76.23, 74.81, 71.97, None, 74.11, 76.32, 74.68), "MD"),
        "DIST": ((None, 74.43, 71.75, None, None, 76.31, None), "DIST"),
        "KD+LS": ((76.11, 74.37, 71.43, 71.48, 74.17, 76.62, 74.36), "LS"),
        "DKD+LS": ((76.39, 74.89, 72.32, 71.85, 74.29, 77.01, 74.81), "LS"),
        "CTKD": ((75.45, 73.93, 71.19, 70.99, 73.52, 73.39, 73.52), "LS"),
        "CTKD+LS": ((76.08, 74.58, 71.34, 71.39, 74.01, 76.67, 74.47), "LS"),
        "MLKD": ((76.63, 75.35, 72.19, 71.89, 74.11, 77.08, 75.18), "LS"),
        "MLKD+LS": ((76.95, 75.56, 72.33, 72.27, 74.32, 78.28, 75.22), "LS"),
        "KD+DOT": ((None, None, None, None, None, 75.12, 73.77), "MD"),
    },
)

CROSS_ARCHITECTURE = PublishedTable(
    title="Cross-architecture pairs",
    pairs=(("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
           ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")),
    rows={
        "teacher": ((74.64, 79.34, 79.34, 79.42, 79.42, 75.61), "RD"),
        "student (vanilla)": ((64.60, 64.60, 70.36, 70.50, 71.82, 70.50), "RD"),
        "KD": ((67.37, 67.35, 73.81, 74.07, 74.45, 74.83), "RD"),
        "FitNet": ((64.14, 63.16, 70.69, 73.59, 73.54, 73.73), "RD"),
        "AT": ((59.40, 58.58, 71.84, 71.73, 72.73, 73.32), "RD"),
        "SP": ((66.30, 68.08, 73.34, 73.48, 74.56, 74.52), "RD"),
        "CC": ((64.86, 65.43, 70.25, 71.14, 71.29, 71.38), "RD"),
        "VID": ((65.56, 67.57, 70.30, 73.38, 73.40, 73.61), "RD"),
        "RKD": ((64.52, 64.43, 71.50, 72.28, 73.21, 72.21), "RD"),
        "PKT": ((67.13, 66.52, 73.01, 74.10, 74.69, 73.89), "RD"),
        "AB": ((66.06, 67.20, 70.65, 73.55, 74.31, 73.34), "RD"),
        "FT": ((61.78, 60.99, 70.29, 71.75, 72.50, 72.03), "RD"),
        "NST": ((58.16, 64.96, 71.28, 74.12, 74.68, 74.89), "RD"),
        "CRD": ((69.73, 69.11, 74.30, 75.11, 75.65, 76.05), "RD"),
        "CRD+KD": ((69.94, 69.54, 74.58, 75.12, 76.05, 76.27), "DS@e6bd9f9"),
        "DCD": ((68.35, 67.39, 73.85, 74.26, 75.26, 74.98), "DS@e6bd9f9"),
        "DCD+KD": ((69.77, 70.03, 74.08, 76.01, 76.95, 76.51), "DS@e6bd9f9"),
        "RRD": ((67.93, 68.84, 74.01, 74.11, 74.80, 74.98), "DS@e6bd9f9"),
        "RRD+KD": ((69.98, 69.13, 74.26, 75.18, 76.83, 76.31), "DS@e6bd9f9"),
        "WCoRD": ((70.02, 70.12, 74.68, 75.77, 76.48, 76.68), "IT"),
        "ReviewKD": ((70.37, 69.89, None, 77.45, 77.78, 77.14), "IT"),
        "ITRD": ((70.39, 71.34, 75.49, 76.69, 77.40, 77.09), "IT"),
        "DKD": ((69.71, 70.35, None, 76.45, 77.07, 76.70), "MD"),
        "DIST": ((None, 68.66, None, 76.34, 77.35, None), "DIST"),
        "KD+LS": ((68.61, 69.02, None, None, 75.56, None), "LS"),
        "DKD+LS": ((69.98, 70.45, None, None, 77.37, None), "LS"),
        "CTKD": ((68.50, 68.67, None, None, 75.37, None), "LS"),
        "CTKD+LS": ((68.98, 69.36, None, None, 76.18, None), "LS"),
        "MLKD": ((70.57, 71.04, None, None, 78.44, None), "LS"),
        "MLKD+LS": ((70.94, 71.19, None, None, 78.76, None), "LS"),
        "KD+DOT": ((None, None, None, None, 75.55, None), "MD"),
    },
)

TABLES = (SAME_ARCHITECTURE, CROSS_ARCHITECTURE)
STANDARD_PAIRS: tuple[Pair, ...] = tuple(pair for table in TABLES for pair in table.pairs)  # every column, in order
DATASET = "cifar100"  # every number above is CIFAR-100 top-1


def table_of(pair: Pair) -> PublishedTable | None:
    """The published table whose columns include ``pair``, if any."""
    return next((table for table in TABLES if pair in table.pairs), None)


def published(label: str, pair: Pair) -> tuple[float, str] | None:
    """``(accuracy, source tag)`` of row ``label`` for ``pair``, or None where nothing is published."""
    table = table_of(pair)
    if table is None:
        return None
    value = table.value(label, pair)
    return None if value is None else (value, table.source(label))


# ---------------------------------------------------------------------------------------------
# Transfer of representations (METHODS.md §4, "Transfer of representations"): linear probes
# (scripts/transfer.py) of CIFAR-100 networks on STL-10 and Tiny-ImageNet, top-1 (%). The CRD
# paper's Table 5 probes its wrn_40_2 teacher and wrn_16_2 students; the distillers README at
# e6bd9f9 quotes those rows and adds its own DCD and RRD students, probed the same way.

TRANSFER_SOURCES = {
    "CRD": "Tian et al., Contrastive Representation Distillation (ICLR 2020), Table 5, "
           "as quoted by giakoumoglou/distillers README.md @ e6bd9f9",
    "DS@e6bd9f9": SOURCES["DS@e6bd9f9"],
}


@dataclass(frozen=True)
class PublishedTransfer:
    """Published linear-probe accuracies of one pair's networks: per row label, a value per target data set."""

    title: str
    dataset: str  # what the probed networks were trained on
    pair: Pair
    targets: tuple[str, ...]  # the data sets probed on (scripts/transfer.py --dataset names)
    rows: dict[str, tuple[tuple[float | None, ...], str]]

    def value(self, label: str, target: str) -> float | None:
        """The published accuracy of row ``label`` on ``target``, or None if there is none."""
        if label not in self.rows or target not in self.targets:
            return None
        return self.rows[label][0][self.targets.index(target)]


TRANSFER = PublishedTransfer(
    title="Transfer of representations (linear probe)",
    dataset="cifar100",
    pair=("wrn_40_2", "wrn_16_2"),
    targets=("stl10", "tinyimagenet"),
    rows={
        "teacher": ((68.6, 31.5), "CRD"),
        "student (vanilla)": ((69.7, 33.7), "CRD"),
        "KD": ((70.9, 33.9), "CRD"),
        "AT": ((70.7, 34.2), "CRD"),
        "FitNet": ((70.3, 33.5), "CRD"),
        "CRD": ((71.6, 35.6), "CRD"),
        "CRD+KD": ((72.2, 35.5), "CRD"),
        "DCD": ((71.2, 35.0), "DS@e6bd9f9"),
        "DCD+KD": ((72.5, 36.2), "DS@e6bd9f9"),
        "RRD": ((71.2, 34.6), "DS@e6bd9f9"),
        "RRD+KD": ((71.4, 34.5), "DS@e6bd9f9"),
    },
)
TRANSFER_TABLES = (TRANSFER,)


def published_transfer(label: str, pair: Pair, dataset: str, target: str) -> tuple[float, str] | None:
    """``(accuracy, source tag of TRANSFER_SOURCES)`` of row ``label`` of ``pair`` (trained on ``dataset``)
    probed on ``target``, or None where nothing is published."""
    table = next((t for t in TRANSFER_TABLES if (t.dataset, t.pair) == (dataset, pair)), None)
    value = None if table is None else table.value(label, target)
    return None if value is None else (value, table.rows[label][1])


# ---------------------------------------------------------------------------------------------
# ImageNet (METHODS.md §4, "ImageNet top-1"): ResNet34 (torchvision, 73.31) → ResNet18, 100 epochs,
# the protocol of the CRD paper and of every source below. Reference data: summarize.py --compare
# compares CIFAR-100 cells only, and most of these rows use ImageNet weights other than the
# CIFAR recommendation that names a row (METHODS.md §1.24–§1.33).

IMAGENET_SOURCES = {
    "MD": SOURCES["MD"],
    "DIST": SOURCES["DIST"],
    "RK": "dvlab-research/ReviewKD ImageNet/README.md @ 4a9d225",
    "CTKD": "zhengli97/CTKD README.md @ 0879a83 (its own teacher, 73.96, and student, 70.26)",
    "NKD": "yzd-v/cls_KD nkd.md @ 08a5ddd",
    "WSLD": "bellymonster/Weighted-Soft-Label-Distillation README.md @ 4726c82",
}

IMAGENET = PublishedTable(
    title="ImageNet",
    pairs=(("ResNet34", "ResNet18"),),
    rows={
        "KD": ((71.03,), "MD"),
        "DKD": ((71.70,), "MD"),
        "KD+DOT": ((71.72,), "MD"),
        "ReviewKD": ((71.61,), "RK"),
        "DIST": ((72.07,), "DIST"),
        "CTKD": ((71.32,), "CTKD"),
        "NKD": ((71.96,), "NKD"),
        "WSLD": ((72.04,), "WSLD"),
    },
)
