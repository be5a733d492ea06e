"""Sales metrics from a deal history and its fitted pipeline model, open deals handled.

:func:`compute_metrics` returns :class:`SalesMetrics`, a frozen set of polars
tables:

``win_rates``
    Unit (deal count) and value (amount) win rates and no-decision rates per
    segment and creation quarter, *closed-only* (open deals ignored) and
    *censoring-aware* (each open deal counts its fitted probability of ending
    won / no decision given its stage and days in stage).
``conversion``
    Probability of eventually winning from a fresh entry to each stage, and of
    winning within given numbers of days, with percentile intervals over the
    model's Bayesian-bootstrap parameter draws.
``cycle_length``
    Creation-to-close days (median and quantiles) for all deals and for won
    deals: closed-only, and censoring-aware (Kaplan–Meier / Aalen–Johansen with
    open deals right-censored at the as-of date).
``time_in_stage``
    Median, quantiles and restricted mean of the time in each stage from the
    fitted (censoring-aware) exit curves.
``velocity``
    Sales velocity ``N × V × W ÷ L`` (currency per day) per segment and creation
    quarter, with what +10 % on each lever is worth.
``coverage``
    Pipeline Value Factor by simulation: the multiple of a quarterly target that
    each stage must hold today to make the target with a chosen probability.
``slippage``
    How often and how far rep close dates are pushed, per segment and stage, and
    how pushed deals convert.

Amounts are in the log's currency and durations in days throughout.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import check_bool, check_float, check_int, check_seed
from forecast.calendar import FiscalCalendar
from forecast.data.deal_log import DealLog
from forecast.deal_covariates import eventual_outcome_probabilities
from forecast.errors import ModelError, ParameterError
from forecast.fit.competing_risks import (
    CensoredSpells,
    ExitCurves,
    aalen_johansen,
    absorption_probabilities,
    win_probability,
)
from forecast.fit.fitting import fit
from forecast.fit.model import PipelineModel
from forecast.io import atomic_write_bytes
from forecast.segments import POOLED_SEGMENT, SEGMENT_COLUMN, segment_labels

__all__ = [
    "SalesMetrics",
    "compute_metrics",
    "fit_and_compute_metrics",
    "open_deal_outcome_probabilities",
]

#: Label of the rows that total over every period (creation quarter) or every stage.
TOTAL = "all"
_US_PER_DAY = 86_400_000_000.0
#: Ages (days in stage) beyond this are read at this age, as in the simulation.
_MAX_AGE_DAYS = 1095.0
#: Grid (days) on which stage-time quantiles and restricted means are read.
_STAGE_GRID_DAYS = 1095
_CYCLE_QUANTILES = (0.25, 0.5, 0.75, 0.9)


# =============================================================================================
# Result
# =============================================================================================
@dataclass(frozen=True, eq=False)
class SalesMetrics:
    """Sales metrics of a deal history at an as-of date (see the module docstring).

    Attributes
    ----------
    win_rates, conversion, cycle_length, time_in_stage, velocity, coverage, slippage : polars.DataFrame
        The tables; their columns are documented on :func:`compute_metrics`.
    as_of : datetime
        The as-of instant (naive UTC).
    info : dict
        How the metrics were computed: segment columns, number of parameter
        draws, interval level, coverage target and probability, model fingerprint.
    """

    win_rates: pl.DataFrame
    conversion: pl.DataFrame
    cycle_length: pl.DataFrame
    time_in_stage: pl.DataFrame
    velocity: pl.DataFrame
    coverage: pl.DataFrame
    slippage: pl.DataFrame
    as_of: dt.datetime
    info: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pl.DataFrame]:
        """Every table by name (``win_rates``, ``conversion``, ... ``slippage``)."""
        return {
            "win_rates": self.win_rates,
            "conversion": self.conversion,
            "cycle_length": self.cycle_length,
            "time_in_stage": self.time_in_stage,
            "velocity": self.velocity,
            "coverage": self.coverage,
            "slippage": self.slippage,
        }

    def to_parquet(self, directory: str | Path) -> list[Path]:
        """Write each table to ``directory/<name>.parquet`` atomically.

        Parameters
        ----------
        directory : str or Path
            Created if missing; existing files of the same names are replaced
            (readers see the old file or the new one, never a part).

        Returns
        -------
        list of Path
            The files written, in the order of :meth:`tables`.
        """
        out = Path(directory)
        paths = []
        for name, frame in self.tables().items():
            buf = io.BytesIO()
            frame.write_parquet(buf)
            path = out / f"{name}.parquet"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
        return paths

    def __str__(self) -> str:
        lines = [f"Sales metrics as of {self.as_of:%Y-%m-%d}"]
        wr = self.win_rates.filter(
            (pl.col("segment") == POOLED_SEGMENT) & (pl.col("period") == TOTAL)
        )
        if wr.height:
            r = wr.row(0, named=True)
            lines.append(
                f"  win rate, units: {_pct(r['unit_win_rate_closed_only'])} closed-only, "
                f"{_pct(r['unit_win_rate_censoring_aware'])} censoring-aware "
                f"({r['n_deals']} deals, {r['n_open']} open)"
            )
            lines.append(
                f"  win rate, value: {_pct(r['value_win_rate_closed_only'])} closed-only, "
                f"{_pct(r['value_win_rate_censoring_aware'])} censoring-aware"
            )
            lines.append(
                f"  no-decision rate: {_pct(r['no_decision_rate_closed_only'])} closed-only, "
                f"{_pct(r['no_decision_rate_censoring_aware'])} censoring-aware"
            )
        cy = self.cycle_length.filter(
            (pl.col("segment") == POOLED_SEGMENT) & (pl.col("method") == "censoring_aware")
        )
        for r in cy.iter_rows(named=True):
            lines.append(f"  median cycle ({r['deals']} deals): {_days(r['median_days'])}")
        conv = self.conversion.filter(
            pl.col("segment") == self.info.get("overall_segment", POOLED_SEGMENT)
        )
        if conv.height:
            parts = [
                f"{r['stage']} {_pct(r['win_probability'])}" for r in conv.iter_rows(named=True)
            ]
            lines.append("  win probability from stage: " + ", ".join(parts))
        sl = self.slippage.filter(
            (pl.col("segment") == POOLED_SEGMENT) & (pl.col("stage") == TOTAL)
        )
        if sl.height:
            r = sl.row(0, named=True)
            lines.append(
                f"  close dates pushed: {_pct(r['push_rate'])} of deals, median push "
                f"{_days(r['median_push_days'])}"
            )
        if self.coverage.height:
            parts = [
                f"{r['stage']} {_multiple(r['pipeline_value_factor'])}"
                for r in self.coverage.iter_rows(named=True)
                if r["stage"] in self.info.get("open_stages", ())
            ]
            cov = self.coverage.row(0, named=True)
            lines.append(
                f"  Pipeline Value Factor ({cov['quarter']}, target {cov['target']:,.0f}, "
                f"P={cov['probability']:.0%}): " + ", ".join(parts)
            )
        return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def _days(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.0f} days"


def _multiple(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}x"


# =============================================================================================
# Open deals through the model
# =============================================================================================
def _terminal_probabilities(curves: Sequence[ExitCurves], stage: int, age: float) -> np.ndarray:
    """Eventual (won, lost, no decision) probabilities of a deal in ``stage`` for ``age`` days."""
    k = len(curves)
    c = curves[stage]
    try:
        first = c.conditional_on_age(min(age, _MAX_AGE_DAYS)).eventual_shares()
    except ModelError:  # survival 0 at this age: the deal leaves like the stage's late exits
        first = c.tail_shares
    b = absorption_probabilities(curves)
    open_first = first[:k].copy()
    open_first[stage] = 0.0
    out = first[k : k + 3] + open_first @ b[:, :3]
    total = out.sum()
    return out / total if total > 0 else out


def open_deal_outcome_probabilities(
    model: PipelineModel, pipeline: pl.DataFrame, log: DealLog | None = None
) -> np.ndarray:
    """Eventual outcome probabilities of open deals under the fitted model.

    Parameters
    ----------
    model : PipelineModel
    pipeline : polars.DataFrame
        Open deals (:meth:`DealLog.pipeline`) with a ``_segment`` label column
        (:func:`forecast.segments.segment_labels` with ``model.segment_by``).
    log : DealLog, optional
        The history holding the pipeline. With it, a model with deal covariates
        gives each deal its own probabilities (its covariates at the model's as-of
        date, :func:`forecast.deal_covariates.eventual_outcome_probabilities`);
        without it, or without covariates, every deal of a (segment, stage, age)
        gets the same.

    Returns
    -------
    ndarray, shape (n_deals, 3)
        P(won), P(lost), P(no decision) of each deal given its stage and days in
        stage (rows sum to 1; mass that would never leave a stage is spread
        proportionally).
    """
    out = np.zeros((pipeline.height, 3))
    if pipeline.height == 0:
        return out
    seg = pipeline[SEGMENT_COLUMN].to_list()
    unknown = sorted(set(seg) - set(model.segments))
    if unknown:
        raise ParameterError(
            f"Open deals belong to segments {unknown} the model has not seen "
            f"(model segments: {list(model.segments)}). Fit the model on this log."
        )
    if log is not None and model.covariates is not None and model.covariates.active:
        return eventual_outcome_probabilities(model, log, pipeline)
    stage = pipeline["stage_code"].to_numpy()
    age = pipeline["days_in_stage"].to_numpy().astype(np.float64)
    curves = {g: model.stage_curves(g) for g in set(seg)}
    cache: dict[tuple[str, int, float], np.ndarray] = {}
    for i in range(pipeline.height):
        key = (seg[i], int(stage[i]), round(float(age[i]), 3))
        if key not in cache:
            cache[key] = _terminal_probabilities(curves[seg[i]], key[1], key[2])
        out[i] = cache[key]
    return out


# =============================================================================================
# Tables
# =============================================================================================
def _period_labels(times: pl.Series, calendar: FiscalCalendar) -> list[str]:
    days = times.dt.truncate("1d")
    mapping = {d: calendar.label(d) for d in days.unique().to_list() if d is not None}
    return [mapping.get(d, "(unknown)") for d in days.to_list()]


def _deal_table(
    log: DealLog, model: PipelineModel, t: dt.datetime, calendar: FiscalCalendar
) -> pl.DataFrame:
    """One row per deal at ``t``: segment, period, status, amount, outcome probabilities, days."""
    outcomes = segment_labels(log.outcomes(t), model.segment_by)
    view = model.view(log)
    pipe = segment_labels(view.pipeline(t), model.segment_by)
    p = open_deal_outcome_probabilities(model, pipe, view if t == model.as_of else None)
    probs = pipe.select("deal_id").with_columns(
        pl.Series("_p_won", p[:, 0]),
        pl.Series("_p_lost", p[:, 1]),
        pl.Series("_p_nd", p[:, 2]),
    )
    tlit = pl.lit(t, dtype=pl.Datetime("us"))
    deals = outcomes.join(probs, on="deal_id", how="left").with_columns(
        pl.col("amount").fill_null(0.0),
        pl.Series("period", _period_labels(outcomes["created_at"], calendar)),
        pl.col(SEGMENT_COLUMN).alias("segment"),
        pl.when(pl.col("status") == "won")
        .then(1.0)
        .when(pl.col("status") == "open")
        .then(pl.col("_p_won"))
        .otherwise(0.0)
        .alias("p_won"),
        pl.when(pl.col("status") == "no_decision")
        .then(1.0)
        .when(pl.col("status") == "open")
        .then(pl.col("_p_nd"))
        .otherwise(0.0)
        .alias("p_no_decision"),
        (
            (pl.coalesce("closed_at", tlit) - pl.col("created_at")).dt.total_microseconds()
            / _US_PER_DAY
        ).alias("days_to_close"),
    )
    return deals


def _with_all(deals: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """``deals`` stacked with copies where each key in ``keys`` is replaced by its total label
    (:data:`POOLED_SEGMENT` for ``segment``, :data:`TOTAL` for any other key)."""
    frames = [deals]
    label = {k: POOLED_SEGMENT if k == "segment" else TOTAL for k in keys}
    # a key whose only value is already its total (one unnamed segment) is not duplicated
    keys = [k for k in keys if not (deals[k] == label[k]).all()]
    for i in range(1, 2 ** len(keys)):
        repl = [key for j, key in enumerate(keys) if i >> j & 1]
        frames.append(deals.with_columns(pl.lit(label[key]).alias(key) for key in repl))
    return pl.concat(frames)


def _win_rates(deals: pl.DataFrame) -> pl.DataFrame:
    d = _with_all(deals, ["segment", "period"])
    closed = pl.col("status") != "open"
    won = pl.col("status") == "won"
    out = d.group_by(["segment", "period"], maintain_order=True).agg(
        pl.len().alias("n_deals"),
        won.sum().alias("n_won"),
        (pl.col("status") == "lost").sum().alias("n_lost"),
        (pl.col("status") == "no_decision").sum().alias("n_no_decision"),
        (pl.col("status") == "open").sum().alias("n_open"),
        pl.col("amount").sum().alias("amount_total"),
        pl.col("amount").filter(won).sum().alias("amount_won"),
        pl.col("amount").filter(closed).sum().alias("amount_closed"),
        pl.col("p_won").filter(~closed).sum().alias("expected_wins_open"),
        (pl.col("p_won") * pl.col("amount"))
        .filter(~closed)
        .sum()
        .alias("expected_won_amount_open"),
        pl.col("p_no_decision").sum().alias("_nd_expected"),
        (pl.col("p_won") * pl.col("amount")).sum().alias("_won_amount_expected"),
        pl.col("p_won").sum().alias("_won_expected"),
    )
    n_closed = pl.col("n_won") + pl.col("n_lost") + pl.col("n_no_decision")

    def ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
        return pl.when(den > 0).then(num / den).otherwise(None)

    return (
        out.with_columns(
            ratio(pl.col("n_won").cast(pl.Float64), n_closed).alias("unit_win_rate_closed_only"),
            ratio(pl.col("amount_won"), pl.col("amount_closed")).alias(
                "value_win_rate_closed_only"
            ),
            ratio(pl.col("_won_expected"), pl.col("n_deals").cast(pl.Float64)).alias(
                "unit_win_rate_censoring_aware"
            ),
            ratio(pl.col("_won_amount_expected"), pl.col("amount_total")).alias(
                "value_win_rate_censoring_aware"
            ),
            ratio(pl.col("n_no_decision").cast(pl.Float64), n_closed).alias(
                "no_decision_rate_closed_only"
            ),
            ratio(pl.col("_nd_expected"), pl.col("n_deals").cast(pl.Float64)).alias(
                "no_decision_rate_censoring_aware"
            ),
        )
        .drop("_nd_expected", "_won_amount_expected", "_won_expected")
        .sort(pl.col("segment") == POOLED_SEGMENT, "segment", pl.col("period") == TOTAL, "period")
    )


def _draw_curves(model: PipelineModel, g: str, b: int) -> list[ExitCurves]:
    d = model.draws
    gi = model.segments.index(g)
    return [
        model.curves[(g, k)].scaled(
            float(d.time_factor[b, gi, k]), d.destination_multiplier[b, gi, k]
        )
        for k in range(model.stages.n_open)
    ]


def _conversion(model: PipelineModel, within_days: Sequence[float], level: float) -> pl.DataFrame:
    won = model.stages.WON
    K = model.stages.n_open
    lo, hi = (1 - level) / 2, (1 + level) / 2
    B = 0 if model.draws is None else model.draws.n_draws
    segs: list[str | None] = list(model.segments)
    if len(model.segments) > 1:
        segs.append(None)
    rows = []
    for g in segs:
        curves = model.stage_curves(g)
        draw_sets = [_draw_curves(model, g, b) for b in range(B)] if g is not None else []
        for k in range(K):
            row: dict[str, Any] = {
                "segment": POOLED_SEGMENT if g is None else g,
                "stage": model.stages.open[k],
                "n_spells": int(curves[k].n_spells),
            }
            for name, within in [("win_probability", None)] + [
                (f"win_within_{w:g}_days", float(w)) for w in within_days
            ]:
                row[name] = win_probability(curves, k, won, within=within)
                if draw_sets:
                    vals = [win_probability(cs, k, won, within=within) for cs in draw_sets]
                    row[f"{name}_low"], row[f"{name}_high"] = (
                        float(np.quantile(vals, lo)),
                        float(np.quantile(vals, hi)),
                    )
                else:
                    row[f"{name}_low"] = row[f"{name}_high"] = None
            shares = curves[k].eventual_shares()
            row["conversion_to_next_stage"] = float(shares[k + 1]) if k + 1 < K else None
            row["interval"] = (
                f"{level:.0%} Bayesian-bootstrap percentile ({B} draws)"
                if draw_sets
                else "none (pooled or no draws)"
            )
            rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def _quantiles_from_cdf(times: np.ndarray, cdf: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Smallest step time at which the right-continuous step ``cdf`` reaches each ``q``."""
    out = []
    for q in qs:
        idx = np.flatnonzero(cdf >= q - 1e-12)
        out.append(float(times[idx[0]]) if idx.size else math.nan)
    return out


def _cycle_rows(segment: str, d: pl.DataFrame) -> list[dict[str, Any]]:
    code = {"won": 0, "lost": 1, "no_decision": 2}
    status = d["status"].to_list()
    dest = np.array([code.get(s, -1) for s in status], dtype=np.int64)
    days = np.maximum(d["days_to_close"].to_numpy().astype(np.float64), 0.0)
    rows = []
    names = [f"p{round(q * 100):02d}_days" for q in _CYCLE_QUANTILES]
    for deals, mask in (("all", dest >= 0), ("won", dest == 0)):
        x = np.sort(days[mask])
        n = int(x.size)
        emp = np.arange(1, n + 1) / n if n else np.zeros(0)
        vals = _quantiles_from_cdf(x, emp, _CYCLE_QUANTILES)
        rows.append(
            {
                "segment": segment,
                "deals": deals,
                "method": "closed_only",
                "n_deals": n,
                "n_censored": 0,
            }
            | {"median_days": vals[1]}
            | dict(zip(names, vals))
        )
    aj = aalen_johansen(CensoredSpells(days, dest, n_codes=3))
    n_cens = int(np.count_nonzero(dest < 0))
    if aj.times.size:
        f_all = 1.0 - aj.survival
        f_won = aj.cif[0]
        cond_won = f_won / f_won[-1] if f_won[-1] > 0 else np.zeros_like(f_won)
    else:
        f_all = cond_won = np.zeros(0)
    for deals, cdf in (("all", f_all), ("won", cond_won)):
        vals = _quantiles_from_cdf(aj.times, cdf, _CYCLE_QUANTILES)
        rows.append(
            {
                "segment": segment,
                "deals": deals,
                "method": "censoring_aware",
                "n_deals": int(d.height),
                "n_censored": n_cens,
                "median_days": vals[1],
            }
            | dict(zip(names, vals))
        )
    return rows


def _cycle_length(deals: pl.DataFrame) -> pl.DataFrame:
    rows = []
    segs = sorted(deals["segment"].unique().to_list())
    for g in segs + ([POOLED_SEGMENT] if len(segs) > 1 else []):
        d = deals if g == POOLED_SEGMENT else deals.filter(pl.col("segment") == g)
        rows.extend(_cycle_rows(g, d))
    return pl.DataFrame(rows, infer_schema_length=None)


def _time_in_stage(model: PipelineModel) -> pl.DataFrame:
    grid = np.arange(_STAGE_GRID_DAYS + 1, dtype=np.float64)
    rows = []
    segs: list[str | None] = list(model.segments)
    if len(model.segments) > 1:
        segs.append(None)
    for g in segs:
        for k, c in enumerate(model.stage_curves(g)):
            s = c.survival(grid)
            cdf = 1.0 - s
            # linear interpolation between integer days (exits uniform within a day)
            qv = []
            for q in (0.5, 0.75, 0.9):
                idx = np.flatnonzero(cdf >= q)
                if not idx.size:
                    qv.append(math.nan)
                elif idx[0] == 0:
                    qv.append(0.0)
                else:
                    i = int(idx[0])
                    qv.append(float(i - 1 + (q - cdf[i - 1]) / (cdf[i] - cdf[i - 1])))
            rows.append(
                {
                    "segment": POOLED_SEGMENT if g is None else g,
                    "stage": model.stages.open[k],
                    "n_spells": int(c.n_spells),
                    "median_days": qv[0],
                    "p75_days": qv[1],
                    "p90_days": qv[2],
                    f"mean_days_within_{_STAGE_GRID_DAYS}": float(np.trapezoid(s, grid)),
                }
            )
    return pl.DataFrame(rows)


def _velocity(deals: pl.DataFrame, cycle: pl.DataFrame) -> pl.DataFrame:
    won_cycle = dict(
        cycle.filter((pl.col("deals") == "won") & (pl.col("method") == "censoring_aware"))
        .select("segment", "median_days")
        .rows()
    )
    if POOLED_SEGMENT not in won_cycle and len(won_cycle) == 1:
        won_cycle[POOLED_SEGMENT] = next(iter(won_cycle.values()))
    d = _with_all(deals, ["segment", "period"])
    out = (
        d.group_by(["segment", "period"], maintain_order=True)
        .agg(
            pl.len().alias("opportunities"),
            pl.col("amount").mean().alias("average_value"),
            pl.col("p_won").mean().alias("win_rate"),
        )
        .with_columns(
            pl.col("segment")
            .replace_strict(won_cycle, default=None, return_dtype=pl.Float64)
            .alias("cycle_length_days")
        )
        .with_columns(
            (
                pl.col("opportunities")
                * pl.col("average_value")
                * pl.col("win_rate")
                / pl.col("cycle_length_days")
            ).alias("velocity_per_day")
        )
        .with_columns(
            (pl.col("velocity_per_day") * 0.1).alias("gain_per_day_opportunities_plus_10pct"),
            (pl.col("velocity_per_day") * 0.1).alias("gain_per_day_average_value_plus_10pct"),
            (pl.col("velocity_per_day") * 0.1).alias("gain_per_day_win_rate_plus_10pct"),
            (pl.col("velocity_per_day") * (1 / 0.9 - 1)).alias(
                "gain_per_day_cycle_length_minus_10pct"
            ),
            pl.lit(1.0).alias("elasticity_opportunities"),
            pl.lit(1.0).alias("elasticity_average_value"),
            pl.lit(1.0).alias("elasticity_win_rate"),
            pl.lit(-1.0).alias("elasticity_cycle_length"),
        )
    )
    return out.sort(
        pl.col("segment") == POOLED_SEGMENT, "segment", pl.col("period") == TOTAL, "period"
    )


def _slippage(
    log: DealLog, t: dt.datetime, model: PipelineModel, deals: pl.DataFrame
) -> pl.DataFrame:
    ev = log.as_of(t).events.select("deal_id", "timestamp", "stage", "close_date")
    prev = pl.col("close_date").forward_fill().shift(1).over("deal_id")
    pushes = (
        ev.with_columns(prev.alias("_prev"))
        .filter(pl.col("close_date") > pl.col("_prev"))
        .with_columns(
            ((pl.col("close_date") - pl.col("_prev")).dt.total_microseconds() / _US_PER_DAY).alias(
                "push_days"
            )
        )
        .select("deal_id", "stage", "push_days")
    )
    first_close = ev.group_by("deal_id").agg(
        pl.col("close_date").drop_nulls().first().alias("_first")
    )
    per_deal = (
        deals.select("deal_id", "segment", "status", "p_won", "closed_at")
        .join(first_close, on="deal_id", how="left")
        .with_columns(
            ((pl.col("closed_at") - pl.col("_first")).dt.total_microseconds() / _US_PER_DAY).alias(
                "slip_at_close_days"
            )
        )
    )
    visits = model.view(log).as_of(t).spells(t).select("deal_id", "stage").unique()
    stage_names = list(model.stages.open)
    rows = []
    segs = sorted(per_deal["segment"].unique().to_list())
    for g in segs + ([POOLED_SEGMENT] if len(segs) > 1 else []):
        pdg = per_deal if g == POOLED_SEGMENT else per_deal.filter(pl.col("segment") == g)
        ids = pdg["deal_id"]
        for stage in [*stage_names, TOTAL]:
            if stage == TOTAL:
                members = pdg
                ps = pushes.filter(pl.col("deal_id").is_in(ids.implode()))
            else:
                vis = visits.filter(
                    (pl.col("stage") == stage) & pl.col("deal_id").is_in(ids.implode())
                )
                members = pdg.filter(pl.col("deal_id").is_in(vis["deal_id"].implode()))
                ps = pushes.filter(
                    (pl.col("stage") == stage)
                    & pl.col("deal_id").is_in(members["deal_id"].implode())
                )
            pushed_ids = ps["deal_id"].unique()
            is_pushed = members["deal_id"].is_in(pushed_ids.implode())
            pushed, not_pushed = members.filter(is_pushed), members.filter(~is_pushed)
            n = members.height
            pd_ = ps["push_days"].to_numpy()
            row: dict[str, Any] = {
                "segment": g,
                "stage": stage,
                "n_deals": n,
                "n_deals_pushed": pushed.height,
                "push_rate": pushed.height / n if n else None,
                "pushes_per_deal": ps.height / n if n else None,
                "median_push_days": float(np.median(pd_)) if pd_.size else None,
                "mean_push_days": float(np.mean(pd_)) if pd_.size else None,
                "p90_push_days": float(np.quantile(pd_, 0.9)) if pd_.size else None,
            }
            for name, grp in (("pushed", pushed), ("not_pushed", not_pushed)):
                closed = grp.filter(pl.col("status") != "open")
                row[f"win_rate_{name}_closed_only"] = (
                    float((closed["status"] == "won").mean()) if closed.height else None
                )
                row[f"win_rate_{name}_censoring_aware"] = (
                    float(grp["p_won"].mean()) if grp.height else None
                )
            if stage == TOTAL:
                slip = members.filter(pl.col("slip_at_close_days").is_not_null())
                won_slip = slip.filter(pl.col("status") == "won")["slip_at_close_days"]
                row["median_slip_at_win_days"] = (
                    float(won_slip.median()) if won_slip.len() else None
                )
            else:
                row["median_slip_at_win_days"] = None
            rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


# =============================================================================================
# Coverage and Pipeline Value Factor
# =============================================================================================
def _replicated_log(log: DealLog, deal_ids: pl.Series, copies: int) -> DealLog:
    ev = log.events.filter(pl.col("deal_id").is_in(deal_ids.implode()))
    parts = [ev.with_columns(pl.col("deal_id") + f"#{i}") for i in range(copies)]
    out = pl.concat(parts).sort("deal_id", "timestamp", "source_row")
    return DealLog(out, log.stages, log.segment_columns, None)


def _default_target(log: DealLog, t: dt.datetime, calendar: FiscalCalendar) -> float:
    q = calendar.quarter_of(t)
    booked = [
        log.booked_amount(calendar.shift(q, -i).start, calendar.shift(q, -i).end)
        for i in range(1, 5)
    ]
    return float(np.mean(booked))


def _coverage(
    model: PipelineModel,
    log: DealLog,
    t: dt.datetime,
    target: float,
    probability: float,
    quarter: int,
    n_paths: int,
    seed: int,
    max_copies: int,
) -> pl.DataFrame:
    cut = model.view(log).as_of(t)
    pipe = cut.pipeline(t)
    quarters = model.calendar.quarters(t, quarter + 1)
    qlabel = quarters[quarter].label
    no_new = replace(model, adjustments={**model.adjustments, "new_deals": 0.0})

    def bookings(m: PipelineModel, lg: DealLog) -> np.ndarray:
        fc = m.simulate(lg, n_paths=n_paths, horizon=quarter + 1, seed=seed)
        return fc.totals[:, quarter].sum(axis=(1, 2))

    def low(x: np.ndarray) -> float:
        return float(np.quantile(x, 1.0 - probability))

    rows = []
    for k, stage in enumerate(model.stages.open):
        sub = pipe.filter(pl.col("stage_code") == k)
        amount = float(sub["amount"].fill_null(0.0).sum())
        row: dict[str, Any] = {
            "quarter": qlabel,
            "stage": stage,
            "target": target,
            "probability": probability,
            "n_deals": sub.height,
            "pipeline_amount": amount,
            "coverage": amount / target,
        }
        if sub.height == 0 or amount <= 0:
            rows.append(row | {"probability_today": 0.0, "expected_bookings": 0.0, "copies": None,
                               "pipeline_value_factor": None, "required_pipeline": None,
                               "gap": None})  # fmt: skip
            continue
        cache: dict[int, np.ndarray] = {}

        def at(
            r: int, cache: dict[int, np.ndarray] = cache, ids: pl.Series = sub["deal_id"]
        ) -> np.ndarray:
            if r not in cache:
                cache[r] = bookings(no_new, _replicated_log(cut, ids, r))
            return cache[r]

        x1 = at(1)
        row["probability_today"] = float(np.mean(x1 >= target))
        row["expected_bookings"] = float(x1.mean())
        r_hi = 1
        while low(at(r_hi)) < target and r_hi < max_copies:
            r_hi *= 2
        if low(at(r_hi)) < target:
            rows.append(row | {"copies": None, "pipeline_value_factor": math.inf,
                               "required_pipeline": math.inf, "gap": math.inf})  # fmt: skip
            continue
        r_lo = r_hi // 2  # low(at(r_lo)) < target, or r_lo == 0
        while r_hi - r_lo > 1:
            mid = (r_lo + r_hi) // 2
            if low(at(mid)) >= target:
                r_hi = mid
            else:
                r_lo = mid
        shrink = target / low(at(r_hi))  # ≤ 1: amounts of the r copies scaled to hit the target
        required = r_hi * amount * shrink
        row |= {
            "copies": r_hi,
            "pipeline_value_factor": required / target,
            "required_pipeline": required,
            "gap": max(required - amount, 0.0),
        }
        rows.append(row)
    whole = no_new.simulate(cut, n_paths=n_paths, horizon=quarter + 1, seed=seed)
    full = model.simulate(cut, n_paths=n_paths, horizon=quarter + 1, seed=seed)
    amount_all = float(pipe["amount"].fill_null(0.0).sum())
    for name, fc in (("all open stages", whole), ("pipeline and new deals", full)):
        x = (
            fc.samples[:, quarter]
            if name != "all open stages"
            else fc.totals[:, quarter].sum(axis=(1, 2))
        )
        rows.append(
            {
                "quarter": qlabel,
                "stage": name,
                "target": target,
                "probability": probability,
                "n_deals": pipe.height,
                "pipeline_amount": amount_all,
                "coverage": amount_all / target,
                "probability_today": float(np.mean(x >= target)),
                "expected_bookings": float(x.mean()),
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


# =============================================================================================
# Entry point
# =============================================================================================
def compute_metrics(
    model: PipelineModel,
    log: DealLog,
    *,
    within_days: Sequence[float] = (90.0, 180.0),
    interval_level: float = 0.9,
    coverage: bool = True,
    target: float | None = None,
    target_probability: float = 0.8,
    target_quarter: int = 0,
    n_paths: int = 2000,
    seed: int = 0,
    max_copies: int = 256,
) -> SalesMetrics:
    """The sales metrics of ``log`` at ``model.as_of``, open deals handled through ``model``.

    To fit the model and compute the metrics in one call, see
    :func:`fit_and_compute_metrics`.

    Parameters
    ----------
    model : PipelineModel
        A model fitted on ``log`` (its as-of date, segments and calendar are used).
    log : DealLog
        The history; only rows up to ``model.as_of`` are read.
    within_days : sequence of float, default (90, 180)
        Horizons (days) of the "win within" conversion probabilities.
    interval_level : float, default 0.9
        Level of the conversion intervals (percentiles over parameter draws).
    coverage : bool, default True
        Compute the coverage / Pipeline Value Factor table (by simulation).
    target : float, optional
        Bookings target (currency) of ``target_quarter``; default: the mean
        quarterly bookings of the four fiscal quarters before the as-of quarter.
    target_probability : float, default 0.8
        Probability with which the target must be reached.
    target_quarter : int, default 0
        Quarter index from the as-of quarter (0 = the quarter containing as_of).
    n_paths : int, default 2000
        Simulated paths per coverage evaluation (≥ 100).
    seed : int, default 0
        Seed of the coverage simulations.
    max_copies : int, default 256
        Largest multiple of a stage's deals tried before reporting an infinite
        Pipeline Value Factor.

    Returns
    -------
    SalesMetrics
        Tables (all amounts in currency, durations in days):

        - ``win_rates``: ``segment, period`` (creation fiscal quarter; ``"all"``
          rows aggregate), ``n_deals, n_won, n_lost, n_no_decision, n_open,
          amount_total, amount_won, amount_closed, expected_wins_open,
          expected_won_amount_open, unit_win_rate_closed_only,
          value_win_rate_closed_only, unit_win_rate_censoring_aware,
          value_win_rate_censoring_aware, no_decision_rate_closed_only,
          no_decision_rate_censoring_aware``. Closed-only rates divide by closed
          deals (won + lost + no decision); censoring-aware rates divide by all
          deals and count each open deal's model probability (its amount times
          that probability for value rates). Deals without an amount count 0.
        - ``conversion``: ``segment, stage, n_spells, win_probability,
          win_within_<d>_days`` each with ``_low``/``_high`` interval bounds
          (percentiles of the quantity recomputed under each Bayesian-bootstrap
          parameter draw: ``ExitCurves.scaled(time_factor, destination_multiplier)``
          then the chain's win probability; null for the pooled rows and without
          draws), ``conversion_to_next_stage, interval``.
        - ``cycle_length``: ``segment, deals ('all'|'won'), method
          ('closed_only'|'censoring_aware'), n_deals, n_censored, median_days,
          p25_days, p50_days, p75_days, p90_days``. Censoring-aware: Aalen–Johansen
          on creation-to-close with open deals censored at as_of; for won deals
          the distribution ``F_won(t) / F_won(τ)`` with ``τ`` the last observed
          close (wins later than any observed close are assumed negligible).
        - ``time_in_stage``: ``segment, stage, n_spells, median_days, p75_days,
          p90_days, mean_days_within_1095`` from the fitted exit curves.
        - ``velocity``: ``segment, period, opportunities, average_value,
          win_rate`` (censoring-aware), ``cycle_length_days`` (censoring-aware
          median creation-to-win of the segment), ``velocity_per_day`` and, per
          lever, the gain of +10 % (−10 % cycle length) and the elasticity of the
          formula. In a steady state with a fixed arrival rate the cycle length
          does not change bookings per day (Little's law, see
          :mod:`forecast.scenarios`).
        - ``coverage``: ``quarter, stage, target, probability, n_deals,
          pipeline_amount, coverage`` (amount ÷ target), ``probability_today``
          (of the stage's deals alone booking the target), ``expected_bookings,
          copies, pipeline_value_factor, required_pipeline, gap``; plus rows for
          all open stages together and for the pipeline with new deals.
          The Pipeline Value Factor of a stage: its deals as they are today
          (stage ages, segments, amounts) are replicated ``r`` times in a
          simulated pipeline of that stage alone (no other stage, no new deals,
          shared shocks kept); ``r`` is the smallest count whose
          ``1 − probability`` quantile of the quarter's bookings reaches the
          target (doubling, then bisection), and the amounts of the ``r`` copies
          are scaled down (≤ 1) so that the quantile equals the target exactly.
          PVF = that pipeline ÷ target.
        - ``slippage``: ``segment, stage`` (``"all"``: any stage), ``n_deals``
          that visited the stage, ``n_deals_pushed`` (rep close date moved later
          while in the stage), ``push_rate, pushes_per_deal, median_push_days,
          mean_push_days, p90_push_days``, win rates of pushed and not-pushed
          deals (closed-only and censoring-aware), ``median_slip_at_win_days``
          (win date − first rep close date, won deals, ``"all"`` rows).

    Raises
    ------
    ParameterError
        If an argument is out of range.
    """
    caller = "compute_metrics"
    if not isinstance(model, PipelineModel):
        raise ParameterError(
            f"The `model` parameter of `{caller}` must be a fitted `PipelineModel` (from "
            f"`forecast.fit`); to fit one here use `fit_and_compute_metrics`. "
            f"Got {type(model).__name__}."
        )
    if not isinstance(log, DealLog):
        raise ParameterError(
            f"The `log` parameter of `{caller}` must be a `DealLog`. Got {type(log).__name__}."
        )
    level = check_float(
        interval_level, "interval_level", caller, minimum=0.0, maximum=1.0, low_open=True,
        high_open=True,
    )  # fmt: skip
    probability = check_float(
        target_probability, "target_probability", caller, minimum=0.0, maximum=1.0,
        low_open=True, high_open=True,
    )  # fmt: skip
    if isinstance(within_days, str | bytes) or not isinstance(within_days, Sequence):
        raise ParameterError(
            f"The `within_days` parameter of `{caller}` must be a list of days > 0. "
            f"Got {within_days!r}."
        )
    within = [
        check_float(w, "within_days", caller, minimum=0.0, low_open=True) for w in within_days
    ]
    coverage = check_bool(coverage, "coverage", caller)
    target_quarter = check_int(target_quarter, "target_quarter", caller, minimum=0)
    n_paths = check_int(n_paths, "n_paths", caller, minimum=100)
    seed = check_seed(seed, caller)
    max_copies = check_int(max_copies, "max_copies", caller, minimum=1)
    t = model.as_of
    cal = model.calendar
    deals = _deal_table(log.as_of(t), model, t, cal)
    cycle = _cycle_length(deals)
    info: dict[str, Any] = {
        "segment_by": list(model.segment_by),
        "n_draws": 0 if model.draws is None else model.draws.n_draws,
        "interval_level": level,
        "model_fingerprint": model.fingerprint,
        "open_stages": tuple(model.stages.open),
        "overall_segment": POOLED_SEGMENT if len(model.segments) > 1 else model.segments[0],
    }
    cov = pl.DataFrame()
    if coverage:
        if target is None:
            tgt = _default_target(log, t, cal)
            if not (np.isfinite(tgt) and tgt > 0):
                raise ParameterError(
                    f"`{caller}` needs a `target` (currency > 0): the default, the mean bookings "
                    f"of the last four quarters, is {tgt!r}; pass `target=`."
                )
        else:
            tgt = check_float(target, "target", caller, minimum=0.0, low_open=True)
        cov = _coverage(model, log, t, tgt, probability, target_quarter, n_paths, seed, max_copies)
        info |= {"target": tgt, "target_probability": probability}
    return SalesMetrics(
        win_rates=_win_rates(deals),
        conversion=_conversion(model, within, level),
        cycle_length=cycle,
        time_in_stage=_time_in_stage(model),
        velocity=_velocity(deals, cycle),
        coverage=cov,
        slippage=_slippage(log, t, model, deals),
        as_of=t,
        info=info,
    )


def fit_and_compute_metrics(
    log: DealLog,
    *,
    as_of: object | None = None,
    segment_by: Sequence[str] = (),
    calendar: FiscalCalendar | None = None,
    n_draws: int = 16,
    seed: int = 0,
    model_kind: str = "auto",
    **options: Any,
) -> SalesMetrics:
    """Fit the model (:func:`forecast.fit`) and compute its sales metrics in one call.

    Parameters
    ----------
    log : DealLog
    as_of : date-like, optional
        Default: the log's last event.
    segment_by : sequence of str
        Segment columns (default none).
    calendar : FiscalCalendar, optional
        Default: calendar-year quarters.
    n_draws : int, default 16
        Parameter draws of the fit (the conversion intervals come from them).
    seed : int, default 0
        Seed of the fit and of the coverage simulations.
    model_kind : {"auto", "stages", "deal_level"}, default "auto"
        Which model to fit (see :func:`forecast.fit`).
    **options
        Keyword arguments of :func:`compute_metrics` (``within_days``,
        ``interval_level``, ``coverage``, ``target``, ...).

    Returns
    -------
    SalesMetrics
    """
    model = fit(
        log,
        as_of=as_of,
        segment_by=segment_by,
        calendar=calendar,
        n_draws=n_draws,
        seed=seed,
        model_kind=model_kind,
    )
    return compute_metrics(model, log, seed=seed, **options)
