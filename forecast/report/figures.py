"""SVG figures of the HTML report (matplotlib's SVG backend, no window, no global state).

The forecast's own figures come from :mod:`forecast.plots`; this module adds the
backtest and what-changed figures and turns any figure into inline SVG whose
element ids are prefixed, so that several figures can live in one page.
"""

from __future__ import annotations

import io
import re
from html import escape
from typing import TYPE_CHECKING

import numpy as np

from forecast.errors import MissingDependencyError
from forecast.plots import _figure as plots_figure
from forecast.plots import _money

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from forecast.backtest import BacktestResult
    from forecast.compare import Movement

__all__ = [
    "backtest_coverage",
    "backtest_history",
    "pit_histogram",
    "require_matplotlib",
    "svg",
    "waterfall",
]

_UP = "#2ca02c"
_DOWN = "#d62728"
_TOTAL = "#1f77b4"


def require_matplotlib() -> None:
    """Raise :class:`MissingDependencyError` with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "The HTML report draws its figures with matplotlib, which is not installed: "
            "pip install 'forecast[plots]'."
        ) from None


def _figure(figsize: tuple[float, float]) -> Figure:

    return plots_figure(figsize)


_ID = re.compile(r'\bid="([^"]+)"')


def svg(fig: Figure, prefix: str, *, label: str) -> str:
    """The figure as an inline ``<svg>`` element: ids prefixed, scalable, with an accessible label.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    prefix : str
        Prefix of every element id (unique per figure in a page).
    label : str
        Text alternative (``aria-label``).

    Returns
    -------
    str
        The ``<svg>`` element, glyphs drawn as paths (no font needed to view it).
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    ids = set(_ID.findall(text))
    for old in sorted(ids, key=len, reverse=True):
        new = f"{prefix}-{old}"
        text = text.replace(f'id="{old}"', f'id="{new}"')
        text = text.replace(f'href="#{old}"', f'href="#{new}"')
        text = text.replace(f"url(#{old})", f"url(#{new})")
    text = re.sub(r'<svg\b([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)

    return text.replace("<svg", f'<svg role="img" aria-label="{escape(label)}"', 1)


def waterfall(movement: Movement) -> Figure:
    """The what-changed waterfall: previous expected bookings, one bar per cause, current.

    Parameters
    ----------
    movement : Movement
        From :func:`forecast.compare`.

    Returns
    -------
    matplotlib.figure.Figure
        Causes without change are left out; increases green, decreases red.
    """
    from matplotlib.ticker import FuncFormatter

    causes = movement.by_cause().filter(movement.by_cause()["change"].abs() > 0.5)
    labels = [f"as of {movement.previous_as_of:%Y-%m-%d}"]
    bottoms = [0.0]
    heights = [movement.previous_expected]
    colours = [_TOTAL]
    for r in causes.iter_rows(named=True):
        labels.append(r["label"])
        bottoms.append(min(r["start"], r["end"]))
        heights.append(abs(r["change"]))
        colours.append(_UP if r["change"] > 0 else _DOWN)
    labels.append(f"as of {movement.current_as_of:%Y-%m-%d}")
    bottoms.append(0.0)
    heights.append(movement.current_expected)
    colours.append(_TOTAL)
    fig = _figure((8.0, 0.9 + 0.36 * len(labels)))
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, heights, left=bottoms, color=colours, height=0.6)
    changes = [movement.previous_expected, *causes["change"].to_list(), movement.current_expected]
    for yi, b, h, c, first in zip(y, bottoms, heights, changes, [True] + [False] * len(changes)):
        total = first or yi == y[-1]
        text = _money(c) if total else ("+" if c > 0 else "−") + _money(abs(c))
        ax.annotate(
            text,
            (b + h, yi),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, labels, fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(_money))
    ends = [movement.previous_expected, movement.current_expected, *causes["start"], *causes["end"]]
    lo, hi = min(ends), max(max(ends), 1.0)
    pad = 0.15 * (hi - lo) + 0.02 * hi
    ax.set_xlim(max(0.0, lo - pad) if lo > 0.3 * hi else 0.0, hi + pad)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"expected bookings in {movement.quarter}")
    ax.set_title(f"{movement.quarter}: what changed since {movement.previous_as_of:%Y-%m-%d}")
    return fig


def pit_histogram(result: BacktestResult, step: int = 1, bins: int = 5) -> Figure:
    """PIT histogram of the backtest (flat if the forecast distributions are calibrated)."""
    fig = _figure((4.6, 3.2))
    ax = fig.add_subplot()
    result.plot_pit(ax=ax, bins=bins, step=step)
    ax.set_title(f"Where the outcome fell in the forecast (step {step})", fontsize=10)
    ax.set_xlabel("forecast probability below the outcome (PIT)")
    return fig


def backtest_coverage(result: BacktestResult) -> Figure:
    """50% and 80% interval coverage per horizon step, with 95% Wilson intervals."""
    fig = _figure((4.6, 3.2))
    ax = fig.add_subplot()
    result.plot_coverage(ax=ax)
    ax.set_title("How often the outcome fell in the range", fontsize=10)
    return fig


def backtest_history(result: BacktestResult, step: int = 1) -> Figure:
    """Past forecasts (P10–P90, median) against what was booked and the weighted pipeline."""
    from matplotlib.ticker import FuncFormatter

    fig = _figure((8.0, 3.4))
    ax = fig.add_subplot()
    result.plot_forecast_vs_realised(step=step, ax=ax)
    ax.yaxis.set_major_formatter(FuncFormatter(_money))
    ax.set_ylabel("bookings")
    ax.set_title("Past quarters: forecast at the quarter start vs booked", fontsize=10)
    return fig
