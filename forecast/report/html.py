"""The HTML page of the report: numbers for people, tables, sections, one self-contained file.

Nothing here computes a forecast; :func:`forecast.report.report` gathers the
results and :func:`render` lays them out with the package's ``template.html``
(inline CSS, inline SVG figures, no script, no external resource).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from importlib import resources
from string import Template
from typing import Any

from forecast.plots import _money

__all__ = ["Section", "days", "money", "percent", "render", "signed_money", "table"]


def money(x: float | None) -> str:
    """An amount for people: ``1.2M``, ``350k``, ``940``; ``–`` when missing."""

    if x is None or not math.isfinite(x):
        return "–"
    return _money(x)


def signed_money(x: float | None) -> str:
    """A change for people: ``+1.2M``, ``−350k``, ``0``."""
    if x is None or not math.isfinite(x):
        return "–"
    if abs(x) < 0.5:
        return "0"
    return ("+" if x > 0 else "−") + money(abs(x))


def percent(p: float | None, *, digits: int = 0) -> str:
    """A probability or share for people: ``37%``; ``<1%`` / ``>99%`` at the ends."""
    if p is None or not math.isfinite(p):
        return "–"
    if digits == 0 and 0 < p < 0.005:
        return "<1%"
    if digits == 0 and 0.995 < p < 1:
        return ">99%"
    return f"{100 * p:.{digits}f}%"


def days(x: float | None) -> str:
    """A duration in days for people: ``45 days``."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:,.0f} day" + ("" if round(x) == 1 else "s")


def num(value: float | None, text: str, key: str | None = None) -> str:
    """A number's text with its exact value in ``data-value`` (and ``data-key``) for machines."""
    attrs = ""
    if value is not None and math.isfinite(value):
        attrs = f' data-value="{value!r}"'
    if key:
        attrs += f' data-key="{escape(key)}"'
    return f"<span{attrs}>{escape(text)}</span>"


def table(
    heads: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    text_columns: Sequence[int] = (0,),
    caption: str | None = None,
    cls: str = "",
) -> str:
    """An HTML table; cells already in HTML are passed as :class:`Raw`, others are escaped."""
    out = [f'<div class="wide"><table class="{escape(cls)}">']
    if caption:
        out.append(f"<caption class='note'>{escape(caption)}</caption>")
    out.append(
        "<thead><tr>"
        + "".join(
            f'<th class="t">{escape(h)}</th>' if i in text_columns else f"<th>{escape(h)}</th>"
            for i, h in enumerate(heads)
        )
        + "</tr></thead><tbody>"
    )
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            body = c.html if isinstance(c, Raw) else escape(str(c))
            cells.append(f'<td class="t">{body}</td>' if i in text_columns else f"<td>{body}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


@dataclass(frozen=True)
class Raw:
    """HTML that :func:`table` inserts as it is."""

    html: str


@dataclass(frozen=True)
class Section:
    """One section of the page: ``<section id=...>`` with a heading and HTML content."""

    id: str
    title: str
    html: str

    def render(self) -> str:
        return f'<section id="{escape(self.id)}"><h2>{escape(self.title)}</h2>\n{self.html}\n</section>'


def cards(items: Sequence[tuple[str, str, str, str]]) -> str:
    """Headline cards: (label, value HTML, detail text, css class)."""
    out = ['<div class="cards">']
    for label, value, detail, cls in items:
        out.append(
            f'<div class="card {escape(cls)}"><div class="k">{escape(label)}</div>'
            f'<div class="v">{value}</div><div class="d">{escape(detail)}</div></div>'
        )
    out.append("</div>")
    return "".join(out)


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def render(
    *,
    title: str,
    subtitle: str,
    sections: Sequence[Section],
    footer: str,
    version: str,
) -> str:
    """The whole page from the package's ``template.html``."""
    template = Template(
        resources.files("forecast.report").joinpath("template.html").read_text(encoding="utf-8")
    )
    nav = " ".join(f'<a href="#{escape(s.id)}">{escape(s.title)}</a>' for s in sections)
    return template.substitute(
        title=escape(title),
        subtitle=subtitle,
        nav=nav,
        body="\n".join(s.render() for s in sections),
        footer=footer,
        version=escape(version),
    )


def date(t: dt.datetime | dt.date | None) -> str:
    """``2025-01-01`` (``–`` when missing)."""
    return "–" if t is None else f"{t:%Y-%m-%d}"
