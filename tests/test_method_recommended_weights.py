"""train_student.py run without ``-r/-a/-b`` weighs a method's terms as its upstream script does.

The expected weights are the upstream facts of ``tests/fixtures/recommended_weights.json``, not
the classes' own constants: a method whose recommendation is mistyped, or an options layer that
ignores it for one of the three weights, fails here.
"""

from __future__ import annotations

import argparse

import pytest

import distiller_zoo
from helper.options import parse_student_args
from tests.fixtures import load_fixture

RECOMMENDED = load_fixture("recommended_weights.json")
DUMMY_TEACHER = "teachers/never_loaded/resnet32x4_best.pth"  # parsing does not read the checkpoint


def parse(*argv: str) -> argparse.Namespace:
    """train_student.py's options for ``argv`` (with a teacher path that is never opened)."""
    return parse_student_args(["--path_t", DUMMY_TEACHER, *argv])


def weights(opt: argparse.Namespace) -> tuple[float, float, float]:
    return opt.gamma, opt.alpha, opt.beta


def test_every_registered_method_has_an_upstream_recommendation():
    assert set(RECOMMENDED) == set(distiller_zoo.DISTILLERS)


@pytest.mark.parametrize("method", sorted(RECOMMENDED))
def test_default_weights_are_the_upstream_recommendation(method):
    expected = RECOMMENDED[method]
    assert weights(parse("--distill", method)) == (expected["gamma"], expected["alpha"], expected["beta"])


def test_default_method_is_kd_with_its_recommendation():
    kd = RECOMMENDED["kd"]
    opt = parse()
    assert opt.distill == "kd"
    assert weights(opt) == (kd["gamma"], kd["alpha"], kd["beta"])


@pytest.mark.parametrize("method", sorted(RECOMMENDED))
def test_weights_on_the_command_line_win_even_when_zero(method):
    assert weights(parse("--distill", method, "-r", "0", "-a", "0", "-b", "0")) == (0.0, 0.0, 0.0)
    assert weights(parse("--distill", method, "-r", "0.25", "-a", "0.5", "-b", "2")) == (0.25, 0.5, 2.0)
    assert weights(parse("--distill", method, "-c", "0.25", "-d", "0.5")) == (
        0.25, 0.5, RECOMMENDED[method]["beta"])  # SimKD's spellings of -r/-a
