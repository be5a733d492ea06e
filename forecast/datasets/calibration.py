"""Mean forecast against mean bookings over independent synthetic worlds.

A forecast is unbiased for a quarter when, over many worlds drawn from the same
generator, the mean of its forecast means equals the mean of what the worlds then
booked, within the standard error of the mean difference. Each world is generated
independently (:func:`forecast.datasets.generate_crm` with seed ``first_seed + i``)
past the end of the horizon, fitted on its history up to ``as_of`` and simulated;
its bookings after ``as_of`` are then read from the same log. Used by the test of
the engine's calibration and by ``benchmarks/calibration.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from forecast._validation import as_datetime, check_int
from forecast.calendar import FiscalCalendar
from forecast.data.readers import read_deal_log
from forecast.datasets.synthetic import generate_crm
from forecast.fit.fitting import fit

__all__ = ["forecast_vs_bookings", "summarise_bias"]

#: Parts of a quarter's bookings: open deals at ``as_of``, and deals created after it.
PARTS = ("pipeline", "new")


def forecast_vs_bookings(
    n_worlds: int,
    *,
    as_of: object = "2025-01-01",
    horizon: int = 2,
    n_paths: int = 2000,
    n_draws: int = 4,
    first_seed: int = 500,
    shrink: bool = True,
    history_start: object = "2022-01-01",
    half_life: float | str | None = "auto",
    covariates: Sequence[str] | None = None,
    **generator: Any,
) -> pl.DataFrame:
    """Forecast mean and realised bookings per world, horizon quarter and part.

    Parameters
    ----------
    n_worlds : int
        Number of independent worlds, >= 2.
    as_of : date-like, default "2025-01-01"
        Cut of every fit and start of the forecast.
    horizon : int, default 2
        Fiscal quarters forecast (the one containing ``as_of`` first).
    n_paths : int, default 2000
        Paths per forecast.
    n_draws : int, default 4
        Parameter draws of each fit.
    first_seed : int, default 500
        World ``i`` uses generator seed ``first_seed + i`` and fit/simulation seed ``i``.
    shrink : bool, default True
        Passed to :func:`forecast.fit`.
    half_life : "auto", float or None, default "auto"
        Recency half-life of every fit (days), passed to :func:`forecast.fit`.
    history_start : date-like, default "2022-01-01"
        Start of every generated history.
    covariates : sequence of str, optional
        Passed to :func:`forecast.fit` (default: the fit's default covariates). The
        generator's ``lead_source`` and ``product_line`` columns (``category_effect``)
        are read as segment columns, so they can be named here.
    **generator
        Further keyword arguments of :func:`forecast.datasets.generate_crm`
        (e.g. ``sigma_shock``, ``pull_in``, ``scale``).

    Returns
    -------
    polars.DataFrame
        One row per (world, quarter, part): ``world`` (int), ``quarter`` (fiscal label),
        ``quarter_index`` (0-based), ``part`` (``"pipeline"`` or ``"new"``),
        ``forecast`` (mean simulated bookings, currency) and ``booked`` (realised
        bookings after ``as_of``, currency).
    """
    caller = "forecast_vs_bookings"
    n_worlds = check_int(n_worlds, "n_worlds", caller, minimum=2)
    t = as_datetime(as_of, "as_of", caller)
    calendar = generator.get("calendar") or FiscalCalendar()
    quarters = calendar.quarters(t, horizon)
    rows = []
    for i in range(n_worlds):
        world = generate_crm(
            seed=first_seed + i, start=history_start, end=quarters[-1].end, **generator
        )
        extra = tuple(c for c in ("lead_source", "product_line") if c in world.events.columns)
        log = read_deal_log(
            world.events, stages=world.stage_map, segment_columns=("segment", *extra)
        )
        model = fit(
            log,
            as_of=t,
            segment_by=["segment"],
            calendar=calendar,
            n_draws=n_draws,
            seed=i,
            shrink=shrink,
            half_life=half_life,
            **({} if covariates is None else {"covariates": tuple(covariates)}),
        )
        fc = model.simulate(log, n_paths=n_paths, horizon=horizon, seed=i)
        open_ids = log.pipeline(t)["deal_id"].implode()
        for qi, q in enumerate(quarters):
            booked = log.bookings(max(q.start, t), q.end)
            from_pipeline = float(booked.filter(pl.col("deal_id").is_in(open_ids))["amount"].sum())
            realised = (from_pipeline, float(booked["amount"].sum()) - from_pipeline)
            for part_index, part in enumerate(PARTS):
                rows.append(
                    {
                        "world": i,
                        "quarter": q.label,
                        "quarter_index": qi,
                        "part": part,
                        "forecast": float(fc.totals[:, qi, :, part_index].sum(axis=1).mean()),
                        "booked": realised[part_index],
                    }
                )
    return pl.DataFrame(rows)


def summarise_bias(table: pl.DataFrame) -> pl.DataFrame:
    """Per quarter and part (and their total): means, mean difference, its SE and z.

    Parameters
    ----------
    table : polars.DataFrame
        Output of :func:`forecast_vs_bookings`.

    Returns
    -------
    polars.DataFrame
        ``quarter_index, quarter, part`` (``"pipeline"``, ``"new"``, ``"total"``),
        ``forecast``, ``booked`` (means over worlds, currency), ``difference`` (mean of
        forecast − booked), ``se`` (its standard error, sd / sqrt(worlds)), ``z``
        (difference / se) and ``relative`` (difference / booked).
    """
    total = (
        table.group_by("world", "quarter_index", "quarter")
        .agg(pl.col("forecast").sum(), pl.col("booked").sum())
        .with_columns(pl.lit("total").alias("part"))
        .select(table.columns)
    )
    both = pl.concat([table, total])
    out = (
        both.with_columns((pl.col("forecast") - pl.col("booked")).alias("_d"))
        .group_by("quarter_index", "quarter", "part")
        .agg(
            pl.col("forecast").mean(),
            pl.col("booked").mean(),
            pl.col("_d").mean().alias("difference"),
            (pl.col("_d").std(ddof=1) / pl.len().sqrt()).alias("se"),
        )
        .with_columns(
            (pl.col("difference") / pl.col("se")).alias("z"),
            (pl.col("difference") / pl.col("booked")).alias("relative"),
        )
    )
    order = {p: i for i, p in enumerate((*PARTS, "total"))}
    return (
        out.with_columns(pl.col("part").replace_strict(order).alias("_o"))
        .sort("quarter_index", "_o")
        .drop("_o")
    )
