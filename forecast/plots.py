"""Figures of a :class:`~forecast.results.Forecast` for a sales leader (matplotlib, optional).

Three views: :func:`fan_chart` (quarterly bookings with their uncertainty and the
targets), :func:`quarter_distribution` (one quarter's distribution with the target
and the weighted pipeline marked) and :func:`deal_risk_chart` (which deals carry the
risk). :func:`save_figures` writes all of them as PNG files. Needs the ``plots``
extra (``pip install forecast[plots]``); figures are built on the Agg backend with
the object-oriented API, so nothing opens a window and the global pyplot state is
untouched.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forecast._validation import check_int
from forecast.errors import ParameterError
from forecast.io import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from forecast.results import Forecast

__all__ = ["deal_risk_chart", "fan_chart", "quarter_distribution", "save_figures"]

_BAND = "#1f77b4"
_TARGET = "#d62728"
_WEIGHTED = "#7f7f7f"
_CLASS_COLOURS = {"rock": "#d62728", "stone": "#ff7f0e", "pebble": "#9e9e9e"}

Targets = float | Sequence[float] | Mapping[str, float] | None


def _figure(figsize: tuple[float, float]) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Figures need matplotlib: install the `plots` extra (pip install 'forecast[plots]')."
        ) from None
    return Figure(figsize=figsize, layout="constrained")


def _money(x: float, _pos: object = None) -> str:
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.1f}B"
    if a >= 1e6:
        return f"{x / 1e6:.1f}M"
    if a >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def _per_quarter_targets(fc: Forecast, targets: Targets) -> dict[str, float]:
    """Targets as quarter label -> currency (a single number applies to every quarter)."""
    if targets is None:
        return {}
    if isinstance(targets, Mapping):
        unknown = [k for k in targets if k not in fc.quarters]
        if unknown:
            raise ParameterError(
                f"The `targets` name unknown quarters {unknown}. "
                f"Quarters in this forecast: {list(fc.quarters)}."
            )
        return {k: float(v) for k, v in targets.items()}
    if np.isscalar(targets):
        return dict.fromkeys(fc.quarters, float(targets))  # type: ignore[arg-type]
    values = [float(v) for v in targets]  # type: ignore[union-attr]
    if len(values) != len(fc.quarters):
        raise ParameterError(
            f"A sequence of `targets` needs one value per quarter ({len(fc.quarters)}). "
            f"Got {len(values)}."
        )
    return dict(zip(fc.quarters, values))


def fan_chart(fc: Forecast, *, targets: Targets = None, title: str | None = None) -> Figure:
    """Quarterly bookings as a fan: P05–P95, P10–P90 and P25–P75 bands around the median.

    Parameters
    ----------
    fc : Forecast
    targets : float, sequence of float (one per quarter) or mapping quarter -> float, optional
        Bookings targets (currency), drawn as red lines with P(reaching them).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        Also marks the mean, the weighted pipeline (grey diamonds) and what is
        already booked.
    """
    from matplotlib.ticker import FuncFormatter

    q = fc.quarterly()
    tg = _per_quarter_targets(fc, targets)
    x = np.arange(len(fc.quarters))
    fig = _figure((8.0, 4.8))
    ax = fig.add_subplot()
    for lo, hi, alpha, label in (
        ("p05", "p95", 0.15, "90% range"),
        ("p10", "p90", 0.25, "80% range"),
        ("p25", "p75", 0.40, "50% range"),
    ):
        ax.fill_between(x, q[lo], q[hi], color=_BAND, alpha=alpha, lw=0, label=label)
    ax.plot(x, q["p50"], color=_BAND, lw=2, marker="o", label="median")
    ax.plot(x, q["mean"], color="black", lw=0, marker="x", label="mean")
    ax.plot(x, q["weighted_pipeline"], color=_WEIGHTED, lw=0, marker="D", label="weighted pipeline")
    booked = q["booked_to_date"].to_numpy()
    if booked.any():
        ax.bar(x, booked, width=0.35, color="#2ca02c", alpha=0.6, label="booked to date")
    if tg:
        probs = fc.prob_at_least(tg)
        for (quarter, target), p in zip(tg.items(), probs["probability"]):
            i = fc.quarters.index(quarter)
            ax.hlines(target, i - 0.3, i + 0.3, color=_TARGET, lw=2.5)
            ax.annotate(
                f"P(≥ target) {p:.0%}",
                (i, target),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                color=_TARGET,
                fontsize=9,
            )
        ax.plot([], [], color=_TARGET, lw=2.5, label="target")
    ax.set_xticks(x, list(fc.quarters))
    ax.yaxis.set_major_formatter(FuncFormatter(_money))
    ax.set_ylabel("bookings")
    ax.grid(axis="y", alpha=0.3)
    top = max(q["p95"].max(), q["weighted_pipeline"].max(), *tg.values(), 1.0)
    ax.set_ylim(0, 1.08 * top)
    fig.legend(loc="outside lower center", fontsize=8, ncols=4, frameon=False)
    ax.set_title(title or f"Bookings forecast as of {fc.as_of:%Y-%m-%d} ({fc.n_paths:,} paths)")
    return fig


def quarter_distribution(
    fc: Forecast, quarter: str | None = None, *, target: float | None = None, bins: int = 60
) -> Figure:
    """Histogram of one quarter's total bookings with P10/P50/P90, target and weighted pipeline.

    Parameters
    ----------
    fc : Forecast
    quarter : str, optional
        Quarter label; default the first (current) quarter.
    target : float, optional
        Bookings target (currency); the probability of reaching it is shown.
    bins : int, default 60

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    quarter = fc.quarters[0] if quarter is None else quarter
    qi = fc._quarter_indices(quarter, "quarter_distribution")[0]
    s = fc.samples[:, qi]
    fig = _figure((8.0, 4.5))
    ax = fig.add_subplot()
    ax.hist(s, bins=bins, weights=np.full(s.size, 1.0 / s.size), color=_BAND, alpha=0.6)
    p10, p50, p90 = np.quantile(s, [0.1, 0.5, 0.9])
    for v, lab, style in ((p10, "P10", ":"), (p50, "P50", "-"), (p90, "P90", ":")):
        ax.axvline(v, color=_BAND, ls=style, lw=1.5, label=f"{lab} {_money(v)}")
    wp = float(np.asarray(fc.weighted_pipeline)[qi])
    ax.axvline(wp, color=_WEIGHTED, ls="--", lw=2, label=f"weighted pipeline {_money(wp)}")
    if target is not None:
        p = float(np.mean(s >= target))
        ax.axvline(target, color=_TARGET, lw=2.5, label=f"target {_money(target)}: P(≥) {p:.0%}")
    ax.xaxis.set_major_formatter(FuncFormatter(_money))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel(f"total bookings in {quarter}")
    ax.set_ylabel("share of simulated futures")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{quarter}: distribution of bookings")
    return fig


def deal_risk_chart(fc: Forecast, quarter: str | None = None, *, top: int = 20) -> Figure:
    """The deals that carry the most risk in a quarter ("rocks, stones and pebbles").

    One horizontal bar per deal: its share of the variance of the quarter's total
    bookings (see :meth:`Forecast.deal_risk`), coloured by class, labelled with the
    deal's amount and win probability in the quarter.

    Parameters
    ----------
    fc : Forecast
    quarter : str, optional
        Default: :meth:`Forecast.riskiest_quarter` (usually the current quarter).
    top : int, default 20
        Number of deals shown.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    top = check_int(top, "top", "deal_risk_chart", minimum=1)
    quarter = fc.riskiest_quarter() if quarter is None else quarter
    risk = fc.deal_risk(quarter).head(top)
    fig = _figure((8.0, max(2.5, 0.6 + 0.32 * max(risk.height, 1))))
    ax = fig.add_subplot()
    if risk.height == 0:
        ax.text(0.5, 0.5, "no open deals", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(risk.height)[::-1]
    share = risk["share_of_total_variance"].to_numpy()
    colours = [_CLASS_COLOURS[c] for c in risk["risk_class"]]
    ax.barh(y, share, color=colours)
    labels = [
        f"{d}  {_money(a)} @ {p:.1%}" if p < 0.1 else f"{d}  {_money(a)} @ {p:.0%}"
        for d, a, p in zip(risk["deal_id"], risk["amount"], risk["p_win"])
    ]
    ax.set_yticks(y, labels, fontsize=8)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel(
        f"share of the variance of {quarter} total bookings "
        "(the rest: smaller deals, new deals, shared market swings)"
    )
    ax.legend(
        handles=[Patch(color=c, label=k) for k, c in _CLASS_COLOURS.items()],
        fontsize=8,
        frameon=False,
        loc="lower right",
    )
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{quarter}: deals carrying the most risk (deal, amount @ P(win))")
    return fig


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", label)


def save_figures(
    fc: Forecast,
    directory: str | Path,
    *,
    targets: Targets = None,
    dpi: int = 120,
) -> list[Path]:
    """Write the fan chart, each quarter's distribution and the current quarter's deal risk as PNG.

    Parameters
    ----------
    fc : Forecast
    directory : path
        Created if missing; files are written atomically (old or new, never partial).
    targets : float, sequence (one per quarter) or mapping quarter -> float, optional
    dpi : int, default 120

    Returns
    -------
    list of Path
        ``fan_chart.png``, ``distribution_<quarter>.png`` per quarter and
        ``deal_risk_<quarter>.png`` for :meth:`Forecast.riskiest_quarter`.
    """
    tg = _per_quarter_targets(fc, targets)
    directory = Path(directory)
    figures: list[tuple[str, Any]] = [("fan_chart.png", fan_chart(fc, targets=tg or None))]
    for q in fc.quarters:
        figures.append(
            (f"distribution_{_slug(q)}.png", quarter_distribution(fc, q, target=tg.get(q)))
        )
    risk_quarter = fc.riskiest_quarter()
    figures.append((f"deal_risk_{_slug(risk_quarter)}.png", deal_risk_chart(fc, risk_quarter)))
    written = []
    for name, fig in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        path = directory / name
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written
