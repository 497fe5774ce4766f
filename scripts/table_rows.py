"""The rows of the paper tables, and which row a run belongs to.

The papers' CIFAR-100 tables have one column per teacher→student pair (:mod:`scripts.published`)
and one row per method, in the order of :data:`ROWS` ("+KD" rows included), under the two rows
made of networks trained alone (:data:`TEACHER_ROW`, :data:`STUDENT_ROW`). A row's weights are
its method's recommendation in the method registry, unless the row says otherwise; a few rows
also run with flags of their own (logit standardisation, DOT). The sweeps (``sweep.py``) run
these rows, and ``summarize.py`` and ``plot_curves.py`` label runs with them, so all three agree
on what a row is.

A run belongs to a row when its method, its weights and its *row options* match the row's. The
row options are the options that some row's flags set (``--logit_stand``, ``--kd_T``,
``--optimizer``); a run records them in its ``summary.json``, and only the ones that differ from
train_student.py's defaults count, so a plain KD run is "KD" and the same weights with
``--optimizer dot`` are "KD+DOT".

The method registry and the option parser are imported only when a row's weights or options are
needed: they pull in PyTorch, which ``summarize.py --help`` and a table of networks trained alone
can do without.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

TEACHER_ROW, STUDENT_ROW = "teacher", "student (vanilla)"  # the rows made of train_teacher.py runs

Options = tuple[tuple[str, Any], ...]  # (option name, value) pairs, sorted by name


@dataclass(frozen=True)
class Row:
    """A method row of the paper tables: the label the papers print, the registered method, "+KD".

    ``extra`` are train_student.py flags the row runs with beyond its weights, spelled as on the
    command line; ``weights`` replaces the method's recommendation (``(gamma, alpha, beta)``).
    """

    label: str
    method: str
    with_kd: bool = False  # the "+KD" rows: -a 1 on top of the method's recommended weights
    extra: tuple[str, ...] = ()
    weights: tuple[float, float, float] | None = None

    @property
    def key(self) -> str:
        """The name ``METHODS=`` selects the row by: the method, with ``+kd`` for a "+KD" row and
        ``+<what follows the + of its label>`` for a row with flags (``kd+ls``, ``kd+dot``)."""
        if self.with_kd:
            return f"{self.method}+kd"
        if self.extra:
            return f"{self.method}+{self.label.rsplit('+', 1)[1].lower()}"
        return self.method


LS = ("--logit_stand", "--kd_T", "2")  # logit standardisation at base temperature 2 (Sun et al. 2024)

ROWS = (
    Row("KD", "kd"), Row("FitNet", "hint"), Row("AT", "attention"), Row("SP", "similarity"),
    Row("CC", "correlation"), Row("VID", "vid"), Row("RKD", "rkd"), Row("PKT", "pkt"), Row("AB", "abound"),
    Row("FT", "factor"), Row("FSP", "fsp"), Row("NST", "nst"), Row("KDSVD", "kdsvd"),
    Row("CRD", "crd"), Row("CRD+KD", "crd", True), Row("DCD", "dcd"), Row("DCD+KD", "dcd", True),
    Row("RRD", "rrd"), Row("RRD+KD", "rrd", True), Row("ITRD", "itrd"), Row("DKD", "dkd"),
    Row("SRRL", "srrl"), Row("SemCKD", "semckd"), Row("SimKD", "simkd"),
    # The methods of 2019-2024 in the order of the issue that added them, each logit-standardised
    # variant right after its method (KD's and DKD's under DIST, where logit standardisation comes).
    # The "+LS" rows take the LS paper's KD weight 9; DKD's as -b 9, which is 9·α and 9·β of DKD's
    # own weights (the paper's --dkd_alpha 9 --dkd_beta 72 for β = 8) and keeps its folder apart from DKD's.
    Row("DIST", "dist"), Row("KD+LS", "kd", extra=LS, weights=(0.1, 9.0, 0.0)),
    Row("DKD+LS", "dkd", extra=LS, weights=(1.0, 0.0, 9.0)), Row("CTKD", "ctkd"),
    Row("CTKD+LS", "ctkd", extra=("--logit_stand",), weights=(0.1, 9.0, 0.0)), Row("NKD", "nkd"),
    Row("MLKD", "mlkd"), Row("MLKD+LS", "mlkd", extra=LS, weights=(0.1, 0.0, 9.0)), Row("ReviewKD", "reviewkd"),
    Row("OFD", "ofd"), Row("KD+DOT", "kd", extra=("--optimizer", "dot")), Row("WSLD", "wsld"), Row("EGA", "ega"),
)


def _registry():
    import distiller_zoo

    return distiller_zoo


@cache
def _parser():
    from helper.options import student_parser

    return student_parser()


def method_rows() -> list[Row]:
    """:data:`ROWS`, then one row for every registered method the papers' tables do not have."""
    covered = {row.method for row in ROWS}
    return [*ROWS, *(Row(name, name) for name in sorted(_registry().DISTILLERS) if name not in covered)]


def row_weights(row: Row) -> tuple[float, float, float]:
    """``(gamma, alpha, beta)`` of a row: its own, else the method's recommendation, with alpha 1 for "+KD"."""
    if row.weights is not None:
        return tuple(float(w) for w in row.weights)
    recommended = _registry().get(row.method).recommended
    alpha = 1.0 if row.with_kd else recommended.alpha
    return float(recommended.gamma), float(alpha), float(recommended.beta)


@cache
def _defaults() -> dict[str, Any]:
    """train_student.py's option values when no flag is given (``--path_t`` aside), as its parser leaves them."""
    return vars(_parser().parse_args(["--path_t", "-"]))


def _changed(values: Mapping[str, Any], names: Iterable[str]) -> Options:
    """The ``names`` whose value in ``values`` differs from train_student.py's default, sorted."""
    defaults = _defaults()
    return tuple(sorted((name, values[name]) for name in names if name in values and values[name] != defaults[name]))


@cache
def row_options(row: Row) -> Options:
    """The options a row's ``extra`` flags set, as train_student.py parses them (``logit_stand=True``, ...)."""
    if not row.extra:
        return ()
    parsed = vars(_parser().parse_args(["--path_t", "-", *row.extra]))
    return _changed(parsed, set(parsed) - {"path_t"})


@cache
def option_names() -> frozenset[str]:
    """The row options: every option that some row's flags set."""
    return frozenset(name for row in method_rows() for name, _ in row_options(row))


def run_options(args: Mapping[str, Any]) -> Options:
    """The row options a run's recorded arguments (``summary.json``'s ``args``) set away from their defaults."""
    return _changed(args, option_names())


@cache
def _rows_by_run() -> dict[tuple[str, tuple[float, float, float], Options], Row]:
    return {(row.method, row_weights(row), row_options(row)): row for row in method_rows()}


def _spelled(options: Options) -> str:
    return "".join(f" {name}" if value is True else f" {name}:{value}" for name, value in options)


def row_label(method: str, weights: tuple[float, float, float], options: Options = ()) -> str:
    """The table label of runs of ``method`` with ``(gamma, alpha, beta)`` weights and row ``options``.

    Runs with a row's weights and options get its label ("CRD", "CRD+KD", "KD+LS"); any others
    get the method's label followed by the weights and options, so they never mix with a paper
    row.
    """
    weights = tuple(float(w) for w in weights)
    row = _rows_by_run().get((method, weights, tuple(options)))
    if row is not None:
        return row.label
    base = next((r.label for r in method_rows() if r.method == method and r.key == method), method)
    gamma, alpha, beta = weights
    return f"{base} (r:{gamma} a:{alpha} b:{beta}{_spelled(options)})"


def row_order(label: str) -> tuple[int, str]:
    """Sort key of table rows: the papers' order, a row with other weights right after its method's."""
    labels = [TEACHER_ROW, STUDENT_ROW, *(row.label for row in method_rows())]
    if label in labels:
        return labels.index(label), ""
    base = label.split(" (", 1)[0]
    return (labels.index(base) if base in labels else len(labels)), label
