"""A pack's command line, split into the command lines of its members.

``train_student.py --model_s resnet8x4,ShuffleV2 --distill A,B -r 1 -a 0.9,0,0.9,0 ...`` names
four runs: every student with every method (students outer). ``-r/-a/-b`` take one value for
all of them or one per member, in that order; left out, each member gets its method's
recommended weights, as its solo run would. Every member's command line is its solo run's, so
the member is parsed, validated, named and recorded exactly as that run (resume checks
included): nothing downstream can tell a member from a solo run but the sharing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from errors import UsageError

PACKED = ("model_s", "distill", "gamma", "alpha", "beta")  # the options a pack lists, one value per member
_WEIGHTS = ("gamma", "alpha", "beta")


@cache
def _spellings() -> dict[str, str]:
    """Every spelling of the packed options (``-r``, ``--gamma``, ``-c``, ``--cls``, ...) → the option."""
    from helper.options import student_parser

    return {flag: action.dest for action in student_parser()._actions if action.dest in PACKED
            for flag in action.option_strings}


def _take_packed(argv: Sequence[str]) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """``argv`` without the packed options, and each packed option's last (spelling, value).

    Spellings are matched whole (``--distill A``, ``--distill=A``, ``-r1``), as argparse reads them;
    a flag at the end with no value is left in place for the parser to report.
    """
    spellings = _spellings()
    rest: list[str] = []
    found: dict[str, tuple[str, str]] = {}
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        flag, attached = token.split("=", 1) if token.startswith("--") and "=" in token else (token, None)
        if attached is None and not token.startswith("--") and token[:2] in spellings and len(token) > 2:
            flag, attached = token[:2], token[2:]
        if flag in spellings and (attached is not None or index + 1 < len(tokens)):
            value = attached if attached is not None else tokens[index + 1]
            found[spellings[flag]] = (flag, value)
            index += 1 if attached is not None else 2
            continue
        rest.append(token)
        index += 1
    return rest, found


def _values(flag: str, text: str) -> list[str]:
    values = [part.strip() for part in text.split(",")]
    if not all(values):
        raise UsageError(f"{flag} {text!r} has an empty entry; list the values separated by commas")
    return values


def _students(flag: str, text: str) -> list[str]:
    """Student names; a spec's own arguments (``name@depth=6,patch_size=4``) stay with their name."""
    students: list[str] = []
    for part in _values(flag, text):
        if students and "=" in part and "@" not in part and "@" in students[-1]:
            students[-1] += "," + part
        else:
            students.append(part)
    return students


def member_argvs(argv: Sequence[str]) -> list[list[str]]:
    """The solo command line of every member of the pack ``argv`` names; ``[argv]`` for a single run."""
    rest, found = _take_packed(argv)
    if not any("," in value for _, value in found.values()):
        return [list(argv)]
    students = _students(*found["model_s"]) if "model_s" in found else [None]
    methods = _values(*found["distill"]) if "distill" in found else [None]
    members = [(student, method) for student in students for method in methods]
    weights: dict[str, list[str]] = {}
    for option in _WEIGHTS:
        if option not in found:
            continue
        flag, text = found[option]
        values = _values(flag, text)
        if len(values) not in (1, len(members)):
            raise UsageError(f"{flag} {text!r} gives {len(values)} values for {len(members)} runs "
                             "(each --model_s with each --distill); give one value, or one per run")
        weights[flag] = values if len(values) > 1 else values * len(members)
    argvs = []
    for number, (student, method) in enumerate(members):
        member = list(rest)
        if student is not None:
            member += ["--model_s", student]
        if method is not None:
            member += ["--distill", method]
        for flag, values in weights.items():
            member += [flag, values[number]]
        argvs.append(member)
    return argvs
