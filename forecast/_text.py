"""Plain-text tables for people (the command line, ``str()`` of reports)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["text_table"]


def text_table(
    heads: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "", left: int = 1
) -> list[str]:
    """Lines of a table: the first ``left`` columns left-aligned, the others right-aligned.

    Parameters
    ----------
    heads : sequence of str
        Column headings.
    rows : sequence of sequence of str
        Cells, already formatted, one sequence per row (as long as ``heads``).
    indent : str, default ""
        Prefix of every line.
    left : int, default 1
        Number of leading (label) columns aligned to the left.

    Returns
    -------
    list of str
        The heading line, then one line per row.
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            f"{c:<{w}}" if i < left else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line(heads), *(line(r) for r in rows)]
