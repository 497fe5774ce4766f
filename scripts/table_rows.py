"""The rows of the paper tables, and which row a run belongs to.

The papers' CIFAR-100 tables have one column per teacher→student pair (:mod:`scripts.published`)
and one row per method, in the order of :data:`ROWS` ("+KD" rows included), under the two rows
made of networks trained alone (:data:`TEACHER_ROW`, :data:`STUDENT_ROW`). A row's weights are
its method's recommendation in the method registry. The sweeps (``sweep.py``) run these rows,
and ``summarize.py`` and ``plot_curves.py`` label runs with them, so all three agree on what a
row is.

The method registry is imported only when a row's weights are needed: it pulls in PyTorch,
which ``summarize.py --help`` and a table of networks trained alone can do without.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

TEACHER_ROW, STUDENT_ROW = "teacher", "student (vanilla)"  # the rows made of train_teacher.py runs


@dataclass(frozen=True)
class Row:
    """A method row of the paper tables: the label the papers print, the registered method, "+KD"."""

    label: str
    method: str
    with_kd: bool = False  # the "+KD" rows: -a 1 on top of the method's recommended weights

    @property
    def key(self) -> str:
        """The name ``METHODS=`` selects the row by: the method, with ``+kd`` for a "+KD" row."""
        return f"{self.method}+kd" if self.with_kd else self.method


ROWS = (
    Row("KD", "kd"), Row("FitNet", "hint"), Row("AT", "attention"), Row("SP", "similarity"),
    Row("CC", "correlation"), Row("VID", "vid"), Row("RKD", "rkd"), Row("PKT", "pkt"), Row("AB", "abound"),
    Row("FT", "factor"), Row("FSP", "fsp"), Row("NST", "nst"), Row("KDSVD", "kdsvd"),
    Row("CRD", "crd"), Row("CRD+KD", "crd", True), Row("DCD", "dcd"), Row("DCD+KD", "dcd", True),
    Row("RRD", "rrd"), Row("RRD+KD", "rrd", True), Row("ITRD", "itrd"), Row("DKD", "dkd"),
    Row("SRRL", "srrl"), Row("SemCKD", "semckd"), Row("SimKD", "simkd"),
)


def _registry():
    import distiller_zoo

    return distiller_zoo


def method_rows() -> list[Row]:
    """:data:`ROWS`, then one row for every registered method the papers' tables do not have."""
    covered = {row.method for row in ROWS}
    return [*ROWS, *(Row(name, name) for name in sorted(_registry().DISTILLERS) if name not in covered)]


def row_weights(row: Row) -> tuple[float, float, float]:
    """``(gamma, alpha, beta)`` of a row: the method's recommendation, with alpha 1 for "+KD"."""
    recommended = _registry().get(row.method).recommended
    alpha = 1.0 if row.with_kd else recommended.alpha
    return float(recommended.gamma), float(alpha), float(recommended.beta)


@cache
def _rows_by_run() -> dict[tuple[str, tuple[float, float, float]], Row]:
    return {(row.method, row_weights(row)): row for row in method_rows()}


def row_label(method: str, weights: tuple[float, float, float]) -> str:
    """The table label of runs of ``method`` with ``(gamma, alpha, beta)`` weights.

    Runs with the recommended weights get their row's label ("CRD", "CRD+KD"); any other
    weights get the method's label followed by the weights, so they never mix with a paper row.
    """
    weights = tuple(float(w) for w in weights)
    row = _rows_by_run().get((method, weights))
    if row is not None:
        return row.label
    base = next((r.label for r in method_rows() if r.method == method and not r.with_kd), method)
    gamma, alpha, beta = weights
    return f"{base} (r:{gamma} a:{alpha} b:{beta})"


def row_order(label: str) -> tuple[int, str]:
    """Sort key of table rows: the papers' order, a row with other weights right after its method's."""
    labels = [TEACHER_ROW, STUDENT_ROW, *(row.label for row in method_rows())]
    if label in labels:
        return labels.index(label), ""
    base = label.split(" (", 1)[0]
    return (labels.index(base) if base in labels else len(labels)), label
