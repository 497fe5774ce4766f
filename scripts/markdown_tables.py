"""Markdown tables, rendered one way for every report the scripts print."""

from __future__ import annotations

from collections.abc import Sequence


def _cell(text: object) -> str:
    """A cell's text on one line, with ``|`` escaped so that it cannot split the cell."""
    return " ".join(str(text).split()).replace("|", r"\|")


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(_cell, cells)) + " |"


def markdown_table(headers: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, one line per row, no trailing newline.

    Columns are left-aligned (``---``) and not padded: readers render them, and diffs of the
    written ``.md`` files stay one line per changed row. A row shorter than the header is
    padded with empty cells; a longer one is an error, since its extra cells would vanish.
    """
    width = len(headers)
    if any(len(row) > width for row in rows):
        raise ValueError(f"a row has more cells than the {width} headers")
    body = [_line([*row, *[""] * (width - len(row))]) for row in rows]
    return "\n".join([_line(headers), "| " + " | ".join("---" for _ in headers) + " |", *body])
