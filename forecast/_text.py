"""Plain-text tables for people (the command line, ``str()`` of reports)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["text_table"]


def text_table(heads: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Lines of a table: first column left-aligned, the others right-aligned.

    Parameters
    ----------
    heads : sequence of str
        Column headings.
    rows : sequence of sequence of str
        Cells, already formatted, one sequence per row (as long as ``heads``).
    indent : str, default ""
        Prefix of every line.

    Returns
    -------
    list of str
        The heading line, then one line per row.
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        rest = "".join(f"  {c:>{w}}" for c, w in zip(cells[1:], widths[1:]))
        return f"{indent}{cells[0]:<{widths[0]}}{rest}"

    return [line(heads), *(line(r) for r in rows)]
