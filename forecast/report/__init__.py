"""The HTML report: one self-contained page a sales leader reads in two minutes.

:func:`report` fits and simulates (or takes a fitted model and its forecast),
backtests the same model on the same history, computes the sales metrics and,
given a previous forecast, what changed since; it returns a :class:`Report`
whose :attr:`~Report.html` is one file with inline CSS and SVG figures: no
script, no font, image or style sheet fetched from anywhere, and it prints.

Sections (their ``id`` in the page): ``headline``, ``outlook`` (fan chart and
quarterly table), ``distribution`` (the current quarter with the targets),
``deals`` (rocks, stones and pebbles), ``segments``, ``metrics``, ``trust``
(backtest calibration), ``diagnostics`` (model and data warnings) and, with a
previous forecast, ``changes`` (the what-changed waterfall).

Needs matplotlib (``pip install 'forecast[plots]'``).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from forecast._version import __version__
from forecast.backtest import backtest, default_origins
from forecast.compare import CAUSE_LABELS, _snapshot, compare, output_as_of_dates
from forecast.data.deal_log import DealLog
from forecast.errors import ParameterError
from forecast.fit.fitting import fit
from forecast.io import atomic_write_text
from forecast.metrics import _default_target, compute_metrics
from forecast.plots import fan_chart, quarter_distribution
from forecast.report import figures
from forecast.report.html import (
    Raw,
    Section,
    cards,
    date,
    days,
    figure,
    money,
    num,
    percent,
    render,
    signed_money,
    table,
)
from forecast.results import Forecast

if TYPE_CHECKING:  # pragma: no cover
    from forecast.backtest import BacktestResult
    from forecast.calendar import FiscalCalendar
    from forecast.compare import Movement
    from forecast.fit.model import PipelineModel
    from forecast.metrics import SalesMetrics

__all__ = ["SECTIONS", "Report", "report"]

#: Section ids of the page, in order (``changes`` only with a previous forecast).
SECTIONS: tuple[str, ...] = (
    "headline",
    "changes",
    "outlook",
    "distribution",
    "deals",
    "segments",
    "metrics",
    "trust",
    "diagnostics",
)

#: At most this many deals in the rocks-and-stones table.
MAX_DEAL_ROWS = 25
#: Deals shown behind each bar of the what-changed waterfall.
MAX_MOVEMENT_DEALS = 12
#: A stage fitted on fewer stays than this (in a segment) is flagged.
FEW_SPELLS = 30

Targets = float | Sequence[float] | Mapping[str, float | Sequence[float]] | None


@dataclass(frozen=True, eq=False)
class Report:
    """A rendered report and the results it shows.

    Attributes
    ----------
    html : str
        The page (UTF-8 text, self-contained).
    sections : tuple of str
        Ids of the sections in the page, in order.
    forecast : Forecast
    model : PipelineModel
    backtest : BacktestResult or None
        ``None`` when the history is too short for a backtest (said in the page).
    metrics : SalesMetrics
    movement : Movement or None
        What changed since the previous forecast, when one was given.
    warnings : tuple of str
        The warnings listed in the ``diagnostics`` section.
    timings : dict str -> float
        Seconds spent per step (fit, simulate, backtest, metrics, compare, render).
    """

    html: str
    sections: tuple[str, ...]
    forecast: Forecast
    model: PipelineModel
    backtest: BacktestResult | None
    metrics: SalesMetrics
    movement: Movement | None = None
    warnings: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` atomically (the old file stays intact if the write fails)."""

        path = Path(path)
        atomic_write_text(path, self.html)
        return path

    def _repr_html_(self) -> str:  # pragma: no cover - notebooks
        return (
            '<iframe style="width:100%;height:900px;border:1px solid #ddd" '
            f'srcdoc="{escape(self.html, quote=True)}"></iframe>'
        )

    def __repr__(self) -> str:
        return (
            f"Report(as of {self.forecast.as_of:%Y-%m-%d}, sections {list(self.sections)}, "
            f"{len(self.html):,} characters)"
        )


def report(
    log: DealLog,
    path: str | os.PathLike[str] | None = None,
    *,
    model: PipelineModel | None = None,
    forecast: Forecast | None = None,
    as_of: object | None = None,
    segment_by: Sequence[str] = (),
    calendar: FiscalCalendar | None = None,
    n_paths: int = 10_000,
    horizon: int = 4,
    n_draws: int = 32,
    seed: int = 0,
    targets: Targets = None,
    previous: Forecast | str | os.PathLike[str] | None = None,
    previous_model: PipelineModel | None = None,
    backtest_origins: int = 6,
    backtest_paths: int = 1000,
    backtest_draws: int = 8,
    pipeline_value_factor: bool = False,
    threads: int | None = None,
    executor: Any = None,
    progress: bool = False,
    title: str | None = None,
) -> Report:
    """Build the HTML report of a forecast (and write it to ``path`` when given).

    Parameters
    ----------
    log : DealLog
        The deal history.
    path : path, optional
        Write the page there (atomically).
    model : PipelineModel, optional
        A model fitted on ``log``; default ``forecast.fit(log, as_of=as_of,
        segment_by=segment_by, calendar=calendar, n_draws=n_draws, seed=seed)``.
    forecast : Forecast, optional
        The model's forecast; default ``model.simulate(log, n_paths=n_paths,
        horizon=horizon, seed=seed, ...)``.
    as_of, segment_by, calendar, n_draws, seed
        Fit options when ``model`` is not given (see :func:`forecast.fit`).
    n_paths, horizon, threads, executor, progress
        Simulation options when ``forecast`` is not given (see
        :meth:`PipelineModel.simulate`).
    targets : float, sequence of float or mapping quarter -> float or sequence, optional
        Bookings targets (currency): one or several for every quarter, or per
        quarter label. The headline shows the probability of reaching each.
    previous : Forecast or path, optional
        An earlier forecast, or the output directory of an earlier ``forecast run``
        (its latest as-of date before this forecast's is used): adds the
        what-changed section (:func:`forecast.compare`).
    previous_model : PipelineModel, optional
        The earlier forecast's model, to separate the model refit from the deal
        changes. Default: refitted on ``log`` at the earlier as-of date with this
        model's options, and used only if it reproduces the earlier model's
        fingerprint exactly.
    backtest_origins : int, default 6
        Number of past quarter starts the model is backtested from (the latest
        ones with their quarter complete before the as-of date; 0: no backtest).
    backtest_paths : int, default 1000
        Simulated paths per backtest origin.
    backtest_draws : int, default 8
        Parameter draws per backtest fit (at most the model's own number).
    pipeline_value_factor : bool, default False
        Also compute the Pipeline Value Factor per stage (by simulation; tens of
        seconds).
    title : str, optional
        Page title.

    Returns
    -------
    Report

    Raises
    ------
    MissingDependencyError
        If matplotlib is not installed.

    Examples
    --------
    >>> from forecast.datasets import load_sample
    >>> rep = forecast.report(load_sample(), "report.html", segment_by=["segment"])  # doctest: +SKIP
    """

    figures.require_matplotlib()
    if not isinstance(log, DealLog):
        raise ParameterError(
            f"The `log` parameter of `report` must be a DealLog. Got {type(log).__name__}."
        )
    for name, value, minimum in (
        ("backtest_origins", backtest_origins, 0),
        ("backtest_paths", backtest_paths, 1),
        ("backtest_draws", backtest_draws, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ParameterError(
                f"The `{name}` parameter of `report` must be an int ≥ {minimum}. Got {value!r}."
            )
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if model is None:
        model = fit(
            log,
            as_of=as_of,
            segment_by=tuple(segment_by),
            calendar=calendar,
            n_draws=n_draws,
            seed=seed,
        )
        timings["fit"] = time.perf_counter() - t
    if forecast is None:
        t = time.perf_counter()
        forecast = model.simulate(
            log,
            n_paths=n_paths,
            horizon=horizon,
            seed=seed,
            threads=threads,
            progress=progress,
            executor=executor,
        )
        timings["simulate"] = time.perf_counter() - t
    elif forecast.as_of != model.as_of:
        raise ParameterError(
            f"The `forecast` of `report` is as of {forecast.as_of:%Y-%m-%d %H:%M} but the model "
            f"as of {model.as_of:%Y-%m-%d %H:%M}; pass the model's own forecast."
        )
    fc = forecast
    tg = _targets(fc, targets)
    previous_as_of = None if previous is None else _previous_as_of(previous, fc)

    t = time.perf_counter()
    bt, bt_note = _backtest(log, model, backtest_origins, backtest_paths, backtest_draws, seed)
    timings["backtest"] = time.perf_counter() - t

    t = time.perf_counter()
    first_target = tg.get(fc.quarters[0], [None])[0]
    # Point estimates only (the page shows no intervals): without the parameter draws the
    # conversion table takes a fraction of the time. The Pipeline Value Factor simulates
    # and keeps them.
    metrics = compute_metrics(
        model if pipeline_value_factor else model.replace(draws=None),
        log,
        coverage=bool(pipeline_value_factor),
        target=first_target if pipeline_value_factor else None,
        seed=seed,
    )
    timings["metrics"] = time.perf_counter() - t

    movement = None
    movement_note = ""
    if previous is not None:
        t = time.perf_counter()
        movement, movement_note = _movement(
            previous, previous_as_of, fc, log, model, previous_model, threads
        )
        timings["compare"] = time.perf_counter() - t

    t = time.perf_counter()
    pipe = log.pipeline(model.as_of)
    warnings = _warnings(log, model, fc, bt, pipe)
    sections = [_headline(fc, tg, model)]
    if movement is not None:
        sections.append(_changes(movement, movement_note))
    sections += [
        _outlook(fc, tg),
        _distribution(fc, tg),
        _deals(fc, pipe),
        _segments(fc),
        _metrics(metrics, fc, pipe, tg, log, model),
        _trust(bt, bt_note),
        _diagnostics(warnings, log, model),
    ]
    info = dict(fc.info)
    page_title = title or f"Bookings forecast as of {fc.as_of:%Y-%m-%d}"
    subtitle = escape(
        f"{len(fc.deal_ids):,} open deals · {fc.n_paths:,} simulated futures · "
        f"model fitted on {log.n_deals:,} deals from {log.first_timestamp:%Y-%m-%d} "
        f"to {min(log.last_timestamp, model.as_of):%Y-%m-%d}"
        + (f" · segments by {', '.join(model.segment_by)}" if model.segment_by else "")
    )
    footer = escape(
        f"forecast {__version__} · seed {info.get('seed', '–')} · model "
        f"{info.get('model_fingerprint', model.fingerprint)} · data {model.data_fingerprint} · "
        f"written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Amounts in the history's "
        "currency; k = thousand, M = million."
    )
    page = render(
        title=page_title,
        subtitle=subtitle,
        sections=sections,
        footer=footer,
        version=__version__,
    )
    timings["render"] = time.perf_counter() - t
    rep = Report(
        html=page,
        sections=tuple(s.id for s in sections),
        forecast=fc,
        model=model,
        backtest=bt,
        metrics=metrics,
        movement=movement,
        warnings=tuple(text for level, text in warnings if level == "warn"),
        timings=timings,
    )
    if path is not None:
        rep.write(path)
    return rep


# -- inputs ----------------------------------------------------------------------------
def _targets(fc: Forecast, targets: Targets) -> dict[str, list[float]]:
    """Targets as quarter -> list of currency amounts (checked by :meth:`Forecast.prob_at_least`)."""
    if targets is None:
        return {}
    probs = fc.prob_at_least(targets)  # validates quarters and values
    out: dict[str, list[float]] = {}
    for quarter, target in probs.select("quarter", "target").iter_rows():
        out.setdefault(quarter, []).append(float(target))
    return out


def _backtest(
    log: DealLog, model: PipelineModel, n_origins: int, n_paths: int, n_draws: int, seed: int
) -> tuple[BacktestResult | None, str]:

    if n_origins == 0:
        return None, "The backtest was switched off for this report."
    past = log.as_of(model.as_of)
    origins = default_origins(past, calendar=model.calendar)[-n_origins:]
    if not origins:
        return None, (
            "The history is too short for a backtest: it needs four fiscal quarters of history "
            "before a past quarter start and that quarter complete before the as-of date."
        )
    own = 0 if model.draws is None else model.draws.n_draws
    result = backtest(
        past,
        origins=origins,
        horizon=2,
        n_paths=n_paths,
        segment_by=model.segment_by,
        calendar=model.calendar,
        n_draws=min(n_draws, own),
        seed=seed,
        model_kind=model.model_kind,
    )
    return result, ""


def _previous_as_of(previous: Any, fc: Forecast) -> dt.date | None:
    """The as-of date to read from a previous output directory (checked before any work)."""

    if isinstance(previous, Forecast):
        return None
    if not isinstance(previous, str | os.PathLike):
        raise ParameterError(
            "The `previous` parameter of `report` must be a Forecast or the output directory "
            f"of an earlier `forecast run`. Got {type(previous).__name__}."
        )
    dates = output_as_of_dates(previous)
    earlier = [d for d in dates if d < fc.as_of.date()]
    if not earlier:
        raise FileNotFoundError(
            f"The previous forecast output {previous} holds no forecast before "
            f"{fc.as_of:%Y-%m-%d} (as-of dates there: {[str(d) for d in dates]}); give the "
            "output directory of an earlier `forecast run`."
        )
    return earlier[-1]


def _movement(
    previous: Any,
    prev_as_of: dt.date | None,
    fc: Forecast,
    log: DealLog,
    model: PipelineModel,
    previous_model: PipelineModel | None,
    threads: int | None,
) -> tuple[Movement, str]:

    snap = _snapshot(previous, "previous", prev_as_of)
    note = ""
    if previous_model is None:
        options = dict(model.options)
        options["segment_by"] = tuple(options.get("segment_by", model.segment_by))
        refit = fit(log, as_of=snap.as_of, calendar=model.calendar, **options)
        if refit.fingerprint == snap.model_fingerprint:
            previous_model = refit
            note = (
                "The previous model was refitted on the history up to its date and reproduces "
                "the previous run exactly, so the model refit is shown on its own."
            )
        else:
            note = (
                "The previous run's model could not be reproduced from this history (different "
                "options, or the history was edited since), so the effect of refitting the model "
                "stays inside the other bars."
            )
    mv = compare(
        previous,
        fc,
        log,
        previous_model=previous_model,
        previous_as_of=prev_as_of,
        threads=threads,
    )
    return mv, note


# -- sections --------------------------------------------------------------------------
def _q0(fc: Forecast) -> dict[str, Any]:
    return fc.quarterly().row(0, named=True)


def _headline(fc: Forecast, tg: dict[str, list[float]], model: PipelineModel) -> Section:
    r = _q0(fc)
    q = fc.quarters[0]
    items = [
        ("P50 (median)", num(r["p50"], money(r["p50"]), "p50"), "as likely above as below", "main"),
        ("P10", num(r["p10"], money(r["p10"]), "p10"), "90% chance of at least", ""),
        ("P90", num(r["p90"], money(r["p90"]), "p90"), "10% chance of more", ""),
        (
            "Booked to date",
            num(r["booked_to_date"], money(r["booked_to_date"]), "booked_to_date"),
            f"won in {q} before {fc.as_of:%Y-%m-%d}",
            "",
        ),
        (
            "Weighted pipeline",
            num(
                r["weighted_pipeline"] + r["booked_to_date"],
                money(r["weighted_pipeline"] + r["booked_to_date"]),
                "weighted_pipeline",
            ),
            "booked + stage % × amount (close date in quarter)",
            "",
        ),
    ]
    probs = fc.prob_at_least({q: tg[q]}) if q in tg else None
    if probs is not None:
        for target, p in probs.select("target", "probability").iter_rows():
            items.append(
                (
                    f"Reach {money(target)}",
                    num(p, percent(p), f"prob_at_least:{target!r}"),
                    f"probability of at least {money(target)}",
                    "main",
                )
            )
    wp = r["weighted_pipeline"] + r["booked_to_date"]
    p_wp = float(np.mean(fc.samples[:, 0] >= wp))
    lead = (
        f"<p class='lead'>For <strong>{escape(q)}</strong> the forecast is "
        f"<strong>{escape(money(r['p50']))}</strong> (median), with an 80% chance of landing between "
        f"<strong>{escape(money(r['p10']))}</strong> and <strong>{escape(money(r['p90']))}</strong>. "
        f"{escape(money(r['booked_to_date']))} is already booked. The weighted pipeline says "
        f"{escape(money(wp))}; the chance of reaching it is {escape(percent(p_wp))}.</p>"
    )
    src = fc.by_source().filter(pl.col("quarter") == q)
    shares = {s: v for s, v in src.select("source", "share_of_mean").iter_rows()}
    detail = (
        f"<p class='note'>Of the expected {escape(money(r['mean']))}: "
        f"{escape(percent(shares.get('booked', 0.0)))} booked, "
        f"{escape(percent(shares.get('pipeline', 0.0)))} from today's {len(fc.deal_ids):,} open deals, "
        f"{escape(percent(shares.get('new_deals', 0.0)))} from deals not created yet. "
        "P10/P50/P90: 10%, 50% and 90% of the simulated futures book less.</p>"
    )
    return Section("headline", f"{q} at a glance", cards(items) + lead + detail)


def _outlook(fc: Forecast, tg: dict[str, list[float]]) -> Section:

    first = {q: v[0] for q, v in tg.items()}
    svg = figures.svg(fan_chart(fc, targets=first or None), "fan", label="Fan chart of bookings")
    q = fc.quarterly()
    probs = fc.prob_at_least(tg) if tg else None
    heads = ["Quarter", "Booked", "P10", "P50", "P90", "Mean", "From open deals", "From new deals"]
    heads.append("Weighted pipeline")
    if probs is not None:
        heads.append("P(reach target)")
    rows = []
    for r in q.iter_rows(named=True):
        row: list[Any] = [
            r["quarter"],
            *(
                Raw(num(r[c], money(r[c]), f"{r['quarter']}:{c}"))
                for c in (
                    "booked_to_date",
                    "p10",
                    "p50",
                    "p90",
                    "mean",
                    "from_pipeline",
                    "from_new_deals",
                )
            ),
            Raw(num(r["weighted_pipeline"], money(r["weighted_pipeline"]))),
        ]
        if probs is not None:
            sub = probs.filter(pl.col("quarter") == r["quarter"])
            row.append(
                ", ".join(
                    f"{percent(p)} ≥ {money(t)}"
                    for t, p in sub.select("target", "probability").iter_rows()
                )
                or "–"
            )
        rows.append(row)
    caption = (
        "Bands: 50%, 80% and 90% ranges of the simulated futures; grey diamonds: the weighted "
        "pipeline (open deals only, by rep close date)."
    )
    return Section(
        "outlook",
        "The coming quarters",
        figure(svg, caption)
        + table(heads, rows, text_columns=(0, len(heads) - 1) if probs is not None else (0,)),
    )


def _distribution(fc: Forecast, tg: dict[str, list[float]]) -> Section:

    q = fc.quarters[0]
    targets = tg.get(q, [])
    fig = quarter_distribution(fc, q, target=targets[0] if targets else None)
    ax = fig.axes[0]
    for extra in targets[1:]:
        p = float(np.mean(fc.samples[:, 0] >= extra))
        ax.axvline(
            extra, color="#d62728", lw=1.5, ls="-.", label=f"target {money(extra)}: {percent(p)}"
        )
    if len(targets) > 1:
        ax.legend(fontsize=8, frameon=False)
    svg = figures.svg(fig, "dist", label=f"Distribution of {q} bookings")
    s = fc.samples[:, 0]
    text = (
        f"<p>Each bar is the share of the {fc.n_paths:,} simulated futures in which {escape(q)} "
        f"books that much (booked to date included). The spread comes from which deals close, "
        "when, at what discount, how many new deals arrive, and quarter-wide swings that move "
        f"all deals together. Standard deviation {escape(money(float(np.std(s, ddof=1)) if s.size > 1 else 0.0))}.</p>"
    )
    return Section("distribution", f"{q}: the range of outcomes", figure(svg, "") + text)


def _deals(fc: Forecast, pipe: pl.DataFrame) -> Section:
    if len(fc.deal_ids) == 0:
        return Section("deals", "Deals that carry the risk", "<p>No open deals.</p>")
    q = fc.riskiest_quarter()
    risk = fc.deal_risk(q)
    facts = pipe.select(
        "deal_id", "stage", "days_in_stage", "age_days", "close_date", "close_date_pushes"
    )
    risk = risk.join(facts, on="deal_id", how="left", maintain_order="left")
    summary = fc.risk_summary().filter(pl.col("quarter") == q).row(0, named=True)
    shown = risk.filter(pl.col("risk_class") != "pebble").head(MAX_DEAL_ROWS)
    if shown.height == 0:
        shown = risk.head(10)
    heads = [
        "Deal",
        "Class",
        "Segment",
        "Stage",
        "Amount",
        "Age",
        "In stage",
        f"P(win in {q})",
        "Expected",
        "Rep close date",
        "Pushes",
        "Share of risk",
    ]
    rows = []
    for r in shown.iter_rows(named=True):
        rows.append(
            [
                r["deal_id"],
                Raw(f"<span class='{escape(r['risk_class'])}'>{escape(r['risk_class'])}</span>"),
                r.get("segment") or "–",
                r["stage"] or "–",
                Raw(num(r["amount"], money(r["amount"]), f"deal:{r['deal_id']}:amount")),
                days(r["age_days"]),
                days(r["days_in_stage"]),
                Raw(num(r["p_win"], percent(r["p_win"]), f"deal:{r['deal_id']}:p_win")),
                money(r["expected_won_amount"]),
                date(r["close_date"]),
                "–" if r["close_date_pushes"] is None else str(r["close_date_pushes"]),
                percent(r["share_of_deal_variance"]),
            ]
        )
    text = (
        f"<p>The risk in {escape(q)} sits in few deals: {summary['n_rocks']} <span class='rock'>rocks</span> "
        f"hold half of the deal-level uncertainty, {summary['n_stones']} <span class='stone'>stones</span> "
        f"the next 40%, and {summary['n_pebbles']} pebbles the rest. A deal's risk is how much "
        "its win-or-lose swings the quarter (amount × chance of winning in the quarter). "
        "Age: days since creation; in stage: days in the current stage; pushes: how often "
        "the rep moved the close date later.</p>"
    )
    return Section(
        "deals",
        "Rocks, stones and pebbles: the deals that carry the risk",
        text + table(heads, rows, text_columns=(0, 1, 2, 3, 9)),
    )


def _segments(fc: Forecast) -> Section:
    seg = fc.by_segment()
    q = fc.quarters[0]
    cur = seg.filter(pl.col("quarter") == q)
    heads = ["Segment", "Booked", "P10", "P50", "P90", "Mean", "From open deals", "From new deals"]
    rows = [
        [
            r["segment"],
            *(
                Raw(num(r[c], money(r[c]), f"segment:{r['segment']}:{c}"))
                for c in ("booked_to_date", "p10", "p50", "p90", "mean")
            ),
            money(r["from_pipeline"]),
            money(r["from_new_deals"]),
        ]
        for r in cur.iter_rows(named=True)
    ]
    by_q = [
        [g, *(money(v) for v in seg.filter(pl.col("segment") == g)["mean"].to_list())]
        for g in fc.segments
    ]
    html = (
        f"<h3>{escape(q)}</h3>"
        + table(heads, rows)
        + "<p class='note'>Segment ranges do not add up to the total's range: segments "
        "rarely all do well or badly at once.</p>"
        + "<h3>Expected bookings per quarter</h3>"
        + table(["Segment", *fc.quarters], by_q)
    )
    return Section("segments", "By segment", html)


def _metrics(
    metrics: SalesMetrics,
    fc: Forecast,
    pipe: pl.DataFrame,
    tg: dict[str, list[float]],
    log: DealLog,
    model: PipelineModel,
) -> Section:

    wr = metrics.win_rates.filter(pl.col("period") == "all")
    rows = [
        [
            r["segment"],
            f"{r['n_deals']:,}",
            f"{r['n_open']:,}",
            percent(r["unit_win_rate_closed_only"]),
            Raw(
                num(
                    r["unit_win_rate_censoring_aware"],
                    percent(r["unit_win_rate_censoring_aware"]),
                    f"win_rate_unit:{r['segment']}",
                )
            ),
            percent(r["value_win_rate_closed_only"]),
            percent(r["value_win_rate_censoring_aware"]),
            percent(r["no_decision_rate_censoring_aware"]),
        ]
        for r in wr.iter_rows(named=True)
    ]
    html = "<h3>Win rates</h3>" + table(
        [
            "Segment",
            "Deals",
            "Open",
            "Unit, closed only",
            "Unit",
            "Value, closed only",
            "Value",
            "No decision",
        ],
        rows,
    )
    html += (
        "<p class='note'>Unit: share of deals won; value: share of the amount won. 'Closed "
        "only' ignores open deals (what most CRM reports show); the other columns count each "
        "open deal's chance of ending won from its stage and age.</p>"
    )
    cyc = metrics.cycle_length.filter(pl.col("method") == "censoring_aware")
    vel = metrics.velocity.filter(pl.col("period") == "all")
    vel_by = {r["segment"]: r for r in vel.iter_rows(named=True)}
    segs = sorted({r["segment"] for r in cyc.iter_rows(named=True)}, key=lambda s: (s != "all", s))
    rows = []
    for g in segs:
        c_all = cyc.filter((pl.col("segment") == g) & (pl.col("deals") == "all"))
        c_won = cyc.filter((pl.col("segment") == g) & (pl.col("deals") == "won"))
        v = vel_by.get(g)
        rows.append(
            [
                g,
                days(c_all["median_days"][0] if c_all.height else None),
                days(c_won["median_days"][0] if c_won.height else None),
                money(v["velocity_per_day"]) if v else "–",
                money(v["average_value"]) if v else "–",
                money(v["gain_per_day_win_rate_plus_10pct"]) if v else "–",
            ]
        )
    html += "<h3>Cycle and velocity</h3>" + table(
        [
            "Segment",
            "Median cycle, all deals",
            "Median cycle, won deals",
            "Velocity per day",
            "Average deal",
            "+10% win rate is worth per day",
        ],
        rows,
    )
    html += (
        "<p class='note'>Cycle: creation to close, open deals counted as still running. Sales "
        "velocity = deals × average value × win rate ÷ cycle length.</p>"
    )
    conv = metrics.conversion.filter(
        pl.col("segment") == metrics.info.get("overall_segment", "all")
    )
    html += "<h3>Win probability from each stage</h3>" + table(
        ["Stage", "Stays", "Eventually won", "Won within 90 days", "To next stage"],
        [
            [
                r["stage"],
                f"{r['n_spells']:,}",
                percent(r["win_probability"]),
                percent(r.get("win_within_90_days")),
                percent(r["conversion_to_next_stage"]),
            ]
            for r in conv.iter_rows(named=True)
        ],
    )
    q = fc.quarters[0]
    qb = model.calendar.quarter_from_label(q)
    in_q = pipe.filter(pl.col("close_date").is_not_null() & (pl.col("close_date") < qb.end))
    pipe_q = float(in_q["amount"].fill_null(0.0).sum())
    booked = float(fc.booked_to_date[0].sum())
    target = tg.get(q, [None])[0]
    basis = "the target"
    if target is None:
        target = _default_target(log, model.as_of, model.calendar)
        basis = "the average of the last four quarters' bookings"
    remaining = target - booked if target is not None and math.isfinite(target) else math.nan
    cov = pipe_q / remaining if remaining > 0 else math.nan
    html += "<h3>Coverage</h3>" + table(
        ["", "Amount"],
        [
            ["Open pipeline, all deals", money(float(pipe["amount"].fill_null(0.0).sum()))],
            [f"Open pipeline with rep close date in {q} or earlier", money(pipe_q)],
            [f"Target ({basis})", money(target)],
            ["Still to book (target − booked)", money(remaining)],
            [
                "Coverage (pipeline in quarter ÷ still to book)",
                Raw(num(cov, f"{cov:.1f}×" if math.isfinite(cov) else "–", "coverage")),
            ],
        ],
    )
    if metrics.coverage.height:
        html += "<h3>Pipeline Value Factor</h3>" + table(
            ["Stage", "Pipeline", "Pipeline Value Factor", "Required pipeline", "Gap"],
            [
                [
                    r["stage"],
                    money(r["pipeline_amount"]),
                    f"{r['pipeline_value_factor']:.1f}×"
                    if math.isfinite(r["pipeline_value_factor"])
                    else "∞",
                    money(r["required_pipeline"]),
                    money(r["gap"]),
                ]
                for r in metrics.coverage.iter_rows(named=True)
            ],
        )
    sl = metrics.slippage.filter((pl.col("segment") == "all") & (pl.col("stage") == "all"))
    if sl.height:
        r = sl.row(0, named=True)
        html += (
            f"<p>Close dates: {escape(percent(r['push_rate']))} of deals had their close date "
            f"pushed at least once (median push {escape(days(r['median_push_days']))}); pushed deals "
            f"win {escape(percent(r['win_rate_pushed_censoring_aware']))} of the time, others "
            f"{escape(percent(r['win_rate_not_pushed_censoring_aware']))}.</p>"
        )
    return Section("metrics", "Sales metrics", html)


def _trust(bt: BacktestResult | None, note: str) -> Section:
    if bt is None:
        return Section("trust", "How far to trust it", f"<p>{escape(note)}</p>")
    s = bt.summary()
    info = bt.info
    origins = bt.origins
    intro = (
        f"<p>The same model was fitted at <strong>{len(origins)} past quarter starts</strong> "
        f"({date(origins[0])} to {date(origins[-1])}), each time on the history before that "
        f"date only, and its forecasts ({info['n_paths']:,} paths, {info['n_draws']} parameter "
        "draws each) were compared with what was then booked. With so few quarters the "
        "coverage is only roughly known: the brackets are 95% intervals.</p>"
    )
    rows = []
    for r in s.iter_rows(named=True):
        if not r.get("n"):
            continue
        rows.append(
            [
                "this quarter" if r["step"] == 1 else "next quarter",
                str(r["n"]),
                Raw(
                    num(
                        r["coverage80"],
                        f"{percent(r['coverage80'])} [{percent(r['coverage80_low'])}–{percent(r['coverage80_high'])}]",
                        f"coverage80:{r['step']}",
                    )
                ),
                f"{percent(r['coverage50'])} [{percent(r['coverage50_low'])}–{percent(r['coverage50_high'])}]",
                money(r["mean_crps"]),
                money(r["mae_weighted_pipeline"]),
                Raw(
                    num(
                        r["skill_weighted_pipeline"],
                        percent(r["skill_weighted_pipeline"]),
                        f"skill_weighted_pipeline:{r['step']}",
                    )
                ),
                percent(r["bias"], digits=1),
            ]
        )
    tbl = table(
        [
            "Forecast of",
            "Quarters",
            "In the 80% range (target 80%)",
            "In the 50% range (target 50%)",
            "Mean error (CRPS)",
            "Weighted pipeline's error",
            "Better than weighted pipeline by",
            "Bias",
        ],
        rows,
    )
    explain = (
        "<p class='note'>CRPS is the error of a whole forecast distribution, in currency; for a "
        "single number such as the weighted pipeline it is the absolute error. 'Better by' is "
        "1 − CRPS ÷ the weighted pipeline's error. The PIT histogram counts where each outcome fell "
        "within its forecast; a calibrated forecast gives flat bars.</p>"
    )
    figs = (
        "<div class='pair'>"
        + figure(figures.svg(figures.backtest_coverage(bt), "cov", label="Backtest coverage"), "")
        + figure(figures.svg(figures.pit_histogram(bt), "pit", label="PIT histogram"), "")
        + "</div>"
        + figure(figures.svg(figures.backtest_history(bt), "hist", label="Past forecasts"), "")
    )
    return Section("trust", "How far to trust it", intro + tbl + explain + figs)


def _warnings(
    log: DealLog,
    model: PipelineModel,
    fc: Forecast,
    bt: BacktestResult | None,
    pipe: pl.DataFrame,
) -> list[tuple[str, str]]:
    """(level, text) pairs: level ``warn`` (read the forecast with care) or ``info``."""
    out: list[tuple[str, str]] = []
    stale = model.as_of - log.last_timestamp
    if stale > dt.timedelta(days=14):
        out.append(
            (
                "warn",
                f"The history's last event is {stale.days} days before the as-of date "
                f"({log.last_timestamp:%Y-%m-%d}): the export may be stale.",
            )
        )
    if model.draws is None:
        out.append(
            (
                "warn",
                "No parameter draws: the uncertainty of the fit itself is left out, so the "
                "ranges are too narrow (fit with n_draws ≥ 16).",
            )
        )
    if bt is not None:
        s = bt.summary().filter(pl.col("step") == 1)
        if s.height and s["n"][0]:
            r = s.row(0, named=True)
            if r["coverage80_high"] < 0.8:
                out.append(
                    (
                        "warn",
                        f"In the backtest the 80% range held the outcome in only "
                        f"{percent(r['coverage80'])} of past quarters: the ranges look too narrow.",
                    )
                )
            if r["coverage80_low"] > 0.8:
                out.append(
                    (
                        "warn",
                        f"In the backtest the 80% range held the outcome in "
                        f"{percent(r['coverage80'])} of past quarters: the ranges look too wide.",
                    )
                )
            if (
                math.isfinite(r.get("skill_weighted_pipeline", math.nan))
                and r["skill_weighted_pipeline"] < 0
            ):
                out.append(
                    (
                        "warn",
                        "In the backtest this model did worse than the weighted pipeline on "
                        "this history.",
                    )
                )
    small = [
        f"{r['segment']}/{r['stage']} ({r['n_spells']})"
        for r in model.shrinkage.iter_rows(named=True)
        if r["n_spells"] < FEW_SPELLS
    ]
    if small:
        out.append(
            (
                "warn",
                f"Few stays in some stages (fewer than {FEW_SPELLS}; they borrow from the pooled "
                "fit): " + ", ".join(small) + ".",
            )
        )
    for name, text in (
        ("Quarter-end push", model.quarter_end.note),
        ("Shared quarterly swings", model.shocks.note),
        *((f"New deals ({g})", f.note) for g, f in model.arrivals.fits.items()),
    ):
        if text:
            out.append(("warn", f"{name}: {text}"))
    r = _q0(fc)
    if r["mean"] > 0 and r["from_new_deals"] / r["mean"] > 0.5:
        out.append(
            (
                "info",
                f"More than half of {fc.quarters[0]}'s expected bookings come from deals not "
                "created yet: the forecast leans on the arrival model.",
            )
        )
    missing = int(pipe["amount"].is_null().sum())
    if missing:
        out.append(
            (
                "info",
                f"{missing} open deals have no amount; they count with their segment's median "
                "new-deal amount.",
            )
        )
    out.append(
        (
            "info",
            f"Monte Carlo error: probabilities are within about "
            f"±{percent(1.0 / math.sqrt(max(fc.n_paths, 1)), digits=1)} of their exact value "
            f"({fc.n_paths:,} paths).",
        )
    )
    return out


def _diagnostics(warnings: list[tuple[str, str]], log: DealLog, model: PipelineModel) -> Section:
    items = "".join(f"<li class='{level}'>{escape(text)}</li>" for level, text in warnings)
    html = f"<ul class='warnings'>{items}</ul>"
    rep = log.report
    if rep is not None:
        counts = [
            ("rows read", rep.rows_read),
            ("rows filtered by the preset", rep.rows_filtered),
            ("exact duplicates removed", rep.exact_duplicates_removed),
            ("rows sorted into time order", rep.rows_reordered),
            ("deals re-opened (kept)", rep.reopened_deals),
            ("updates after a close (kept)", rep.post_terminal_updates),
            ("timestamps converted to UTC", rep.timestamps_converted_to_utc),
            ("events without an amount", rep.amounts_missing),
        ]
        html += "<h3>Data checks and repairs</h3>" + table(
            ["", "Count"], [[k, f"{v:,}"] for k, v in counts]
        )
        if rep.notes:
            html += "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in rep.notes) + "</ul>"
    summ = model.summary()
    pooled = summ.filter(pl.col("segment") == summ["segment"][-1])
    html += "<h3>The fitted model</h3>" + table(
        ["Stage", "Stays", "Exits", "Eventually won", "Median days to leave", "Tail beyond data"],
        [
            [
                r["stage"],
                f"{r['n_spells']:,}",
                f"{r['n_exits']:,}",
                percent(r["win_probability"]),
                days(r["median_days_to_exit"]),
                r["tail_family"],
            ]
            for r in pooled.iter_rows(named=True)
        ],
    )
    html += (
        f"<p class='note'>Pooled over segments. Quarter-end push: {escape(percent(model.quarter_end.pi))} "
        f"of wins due in the first {model.quarter_end.window_days} days of a quarter close in the last "
        f"days of the one before. Shared quarterly swing of win odds: σ = "
        f"{model.shocks.sigma:.2f} (log-odds). Parameter draws: "
        f"{0 if model.draws is None else model.draws.n_draws}.</p>"
    )
    return Section("diagnostics", "Model diagnostics and warnings", html)


def _changes(mv: Movement, note: str) -> Section:

    svg = figures.svg(figures.waterfall(mv), "wf", label="What changed waterfall")
    causes = mv.by_cause()
    rows = [
        [
            r["label"],
            Raw(num(r["change"], signed_money(r["change"]), f"cause:{r['cause']}")),
            str(r["n_deals"]) if r["n_deals"] else "–",
        ]
        for r in causes.iter_rows(named=True)
    ]
    rows.append(
        [
            "Total change",
            Raw(num(mv.total_change, signed_money(mv.total_change), "total_change")),
            "",
        ]
    )
    intro = (
        f"<p>Expected bookings of <strong>{escape(mv.quarter)}</strong> moved from "
        f"{num(mv.previous_expected, money(mv.previous_expected), 'previous_expected')} "
        f"(as of {date(mv.previous_as_of)}) to "
        f"{num(mv.current_expected, money(mv.current_expected), 'current_expected')} "
        f"({escape(signed_money(mv.total_change))}).</p>"
    )
    details = []
    deals = mv.by_deal()
    for cause in causes.filter(pl.col("n_deals") > 0)["cause"].to_list():
        d = deals.filter(pl.col("cause") == cause).head(MAX_MOVEMENT_DEALS)
        n = int(causes.filter(pl.col("cause") == cause)["n_deals"][0])
        body = table(
            [
                "Deal",
                "Segment",
                "Change",
                "Stage then → now",
                "Amount then → now",
                "Close date then → now",
            ],
            [
                [
                    r["deal_id"],
                    r["segment"] or "–",
                    signed_money(r["change"]),
                    f"{r['stage_previous'] or '–'} → {r['stage_current'] or '–'}",
                    f"{money(r['amount_previous'])} → {money(r['amount_current'])}",
                    f"{date(r['close_date_previous'])} → {date(r['close_date_current'])}",
                ]
                for r in d.iter_rows(named=True)
            ],
            text_columns=(0, 1, 3, 4, 5),
        )
        more = f"<p class='note'>and {n - d.height} more.</p>" if n > d.height else ""
        details.append(
            f"<details><summary>{escape(CAUSE_LABELS[cause])}: {n} deals, "
            f"{escape(signed_money(float(causes.filter(pl.col('cause') == cause)['change'][0])))}"
            f"</summary>{body}{more}</details>"
        )
    explain = (
        "<p class='note'>Each deal's change is its expected won amount in the quarter now minus "
        "then (plus what it booked in between). Amount changes are split from the rest; a deal "
        "that moved stage counts under 'Stage moved', one whose rep close date left or entered the "
        "quarter under 'Slipped' or 'Pulled in', the others under 'Aged in stage' (time passed). "
        "'Deals still to be created' is the change in the expected bookings of deals that do not "
        f"exist yet. {escape(note)}</p>"
    )
    return Section(
        "changes",
        f"What changed since {date(mv.previous_as_of)}",
        intro
        + figure(svg, "")
        + table(["Cause", "Change", "Deals"], rows)
        + "<h3>The deals behind each bar</h3>"
        + "".join(details)
        + explain,
    )
