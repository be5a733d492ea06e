"""Rolling-origin backtests: cut, fit, simulate, and score against what was booked.

For each origin ``t`` (an as-of instant in the past):

1. the log is cut with :meth:`DealLog.as_of` — the only place time is cut — so
   the fit sees nothing after ``t``;
2. :func:`forecast.fit` and :meth:`PipelineModel.simulate` give samples of the
   bookings of the ``horizon`` fiscal quarters from the one containing ``t``
   (bookings of that quarter already won before ``t`` included);
3. the samples are scored against the realised bookings of each quarter with
   proper scores (:mod:`forecast.scores`), next to three point-forecast
   baselines computed from the same cut:

   - ``weighted_pipeline`` — stage win probability × amount of the open deals
     whose rep close date falls in the quarter (overdue ones in the first),
     :func:`forecast.simulate.weighted_pipeline`;
   - ``stage_sum`` — stage win probability × amount summed over *all* open deals,
     ignoring close dates (the same number for every quarter of the horizon);
   - ``trailing`` — the bookings of the last full fiscal quarter before the one
     containing ``t`` (the same number for every quarter of the horizon).

   For the quarter containing ``t`` the first two also get what was booked in it
   before ``t``. A point forecast's CRPS is its absolute error.

Only a job's own slice of history reaches it: each origin's job gets the log cut
at the end of its last horizon quarter, and the fit inside it cuts again at ``t``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import as_datetime, check_int, check_seed
from forecast.calendar import FiscalCalendar, check_calendar
from forecast.data.deal_log import DealLog
from forecast.errors import ParameterError
from forecast.fit.fitting import fit
from forecast.fit.kinds import choose_model_kind
from forecast.fit.model import PipelineModel
from forecast.results import QUANTILES
from forecast.scores import (
    crps_samples,
    interval_hits,
    pinball_loss,
    pit,
    sample_quantiles,
    skill,
    wilson_interval,
)

__all__ = ["BASELINES", "BacktestResult", "backtest", "default_origins"]

#: Names of the point-forecast baselines, in column order.
BASELINES: tuple[str, ...] = ("weighted_pipeline", "stage_sum", "trailing")
#: A quarter counts as realised when the log holds an event no earlier than this
#: long before the quarter's end (exports rarely stop exactly at midnight).
REALISED_TOLERANCE = dt.timedelta(days=1)
_EPOCH = dt.datetime(1970, 1, 1)


def _data_end(log: DealLog) -> dt.datetime:
    """Instant up to which the log is complete: its cut, else its last event."""
    return log.cut if log.cut is not None else log.last_timestamp


def _is_realised(quarter_end: dt.datetime, data_end: dt.datetime) -> bool:
    return quarter_end <= data_end + REALISED_TOLERANCE


def default_origins(
    log: DealLog,
    *,
    horizon: int = 1,
    calendar: FiscalCalendar | None = None,
    min_history_quarters: int = 4,
) -> list[dt.datetime]:
    """Every fiscal quarter start with enough history before it and a realised quarter after it.

    Parameters
    ----------
    log : DealLog
    horizon : int, default 1
        Unused for the choice (an origin needs only its first quarter realised);
        kept for symmetry with :func:`backtest`.
    calendar : FiscalCalendar, optional
        Default: fiscal year = calendar year.
    min_history_quarters : int, default 4
        Fiscal quarters of history required before an origin (the quarter
        holding the first event counts if that event lies in its first half).

    Returns
    -------
    list of datetime
        Ascending quarter starts ``t`` whose quarter ends by the log's end
        (within :data:`REALISED_TOLERANCE`).
    """
    del horizon
    cal = check_calendar(calendar, "default_origins")
    check_int(min_history_quarters, "min_history_quarters", "default_origins", minimum=0)
    first = log.first_timestamp
    q = cal.quarter_of(first)
    if first - q.start > (q.end - q.start) / 2:
        q = cal.shift(q, 1)
    q = cal.shift(q, int(min_history_quarters))
    end = _data_end(log)
    out = []
    while _is_realised(q.end, end):
        out.append(q.start)
        q = cal.shift(q, 1)
    return out


def origin_seed(seed: int, origin: dt.datetime) -> int:
    """Seed of one origin's fit and simulation, from ``(seed, origin)`` (int in [0, 2**32)).

    Depends only on the run seed and the origin instant, so adding or removing
    other origins, or sharding them over workers, never changes an origin's result.
    """
    secs = int((origin - _EPOCH).total_seconds())
    return int(
        np.random.SeedSequence([int(seed), secs & 0xFFFFFFFF, secs >> 32]).generate_state(1)[0]
    )


def _score_origin(
    log: DealLog,
    origin: dt.datetime,
    horizon: int,
    n_paths: int,
    segment_by: tuple[str, ...],
    calendar: FiscalCalendar,
    n_draws: int,
    seed: int,
    fit_options: Mapping[str, Any] | None = None,
    transform: Callable[[PipelineModel], PipelineModel] | None = None,
    truth: DealLog | None = None,
) -> list[dict[str, Any]]:
    """Fit at ``origin``, simulate ``horizon`` quarters, score each realised one.

    ``fit_options`` (extra keyword arguments of :func:`forecast.fit`) and
    ``transform`` (applied to the fitted model) serve ablation studies
    (``benchmarks/accuracy.py``); ``truth`` (default ``log``) is the log whose
    bookings are the realised values, for scoring a forecast made from a poorer
    view of the same history (``benchmarks/snapshot_accuracy.py``).
    """
    s = origin_seed(seed, origin)
    model = fit(
        log,
        as_of=origin,
        segment_by=segment_by,
        calendar=calendar,
        n_draws=n_draws,
        seed=s,
        **dict(fit_options or {}),
    )
    if transform is not None:
        model = transform(model)
    fc = model.simulate(log, n_paths=n_paths, horizon=horizon, seed=s)
    quarters = calendar.quarters(origin, horizon)
    samples = fc.samples.T  # (H, P)
    booked = fc.booked_to_date.sum(axis=1)  # (H,)
    pipe = model.view(log).pipeline(origin)
    stage_p = np.array([model.win_probability(k, segment=None) for k in range(model.stages.n_open)])
    stage_sum = float(
        (pipe["amount"].fill_null(0.0).to_numpy() * stage_p[pipe["stage_code"].to_numpy()]).sum()
    )
    prev = calendar.shift(quarters[0], -1)
    trailing = (
        log.booked_amount(prev.start, prev.end) if prev.start >= log.first_timestamp else math.nan
    )
    booked_log = log if truth is None else truth
    data_end = _data_end(booked_log)
    levels = list(QUANTILES)
    rows = []
    for h, q in enumerate(quarters):
        realised = (
            booked_log.booked_amount(q.start, q.end) if _is_realised(q.end, data_end) else None
        )
        x = samples[h]
        quant = sample_quantiles(x, levels)
        row: dict[str, Any] = {
            "origin": origin,
            "step": h + 1,
            "quarter": q.label,
            "quarter_start": q.start,
            "realised": realised,
            "mean": float(x.mean()),
            **{f"p{round(lv * 100):02d}": float(v) for lv, v in zip(levels, quant)},
            "booked_to_date": float(booked[h]),
            "weighted_pipeline": float(fc.weighted_pipeline[h] + booked[h]),
            "stage_sum": stage_sum + float(booked[h]),
            "trailing": trailing,
            "n_open_deals": int(pipe.height),
            "seed": s,
        }
        if realised is None:
            row.update(crps=None, pinball=None, pit=None, hit50=None, hit80=None)
            row.update({f"crps_{b}": None for b in BASELINES})
        else:
            row["crps"] = float(crps_samples(x, realised))
            row["pinball"] = float(pinball_loss(quant, levels, realised).mean())
            row["pit"] = float(pit(x, realised))
            row["hit50"] = bool(interval_hits(x, realised, 0.5))
            row["hit80"] = bool(interval_hits(x, realised, 0.8))
            for b in BASELINES:
                v = row[b]
                row[f"crps_{b}"] = abs(v - realised) if np.isfinite(v) else None
        rows.append(row)
    return rows


def backtest(
    log: DealLog,
    *,
    origins: Sequence[object] | None = None,
    horizon: int = 2,
    n_paths: int = 2000,
    segment_by: Sequence[str] = (),
    calendar: FiscalCalendar | None = None,
    n_draws: int = 16,
    seed: int = 0,
    min_history_quarters: int = 4,
    executor: Any = None,
    model_kind: str = "auto",
) -> BacktestResult:
    """Rolling-origin backtest of the pipeline model with proper scores and baselines.

    Parameters
    ----------
    log : DealLog
        The full history; each origin's fit sees only ``log.as_of(origin)``.
    origins : sequence of date-like, optional
        As-of instants to forecast from. Default: :func:`default_origins` (every
        fiscal quarter start with ``min_history_quarters`` full quarters before it
        and its first quarter realised).
    horizon : int, default 2
        Fiscal quarters forecast from each origin, the first one containing it.
    n_paths : int, default 2000
        Simulated paths per origin.
    segment_by : sequence of str
        Segment columns for the fit (see :func:`forecast.fit`).
    calendar : FiscalCalendar, optional
        Fiscal calendar (default: fiscal year = calendar year).
    n_draws : int, default 16
        Parameter draws of each fit (0: none).
    seed : int, default 0
        Run seed; origin ``t`` uses :func:`origin_seed` ``(seed, t)`` for its fit and
        simulation, so results do not depend on the other origins or on ``executor``.
    min_history_quarters : int, default 4
        See :func:`default_origins`.
    executor : concurrent.futures.Executor, optional
        Run the origins as tasks on this executor (e.g. a process pool or
        ``dask.distributed.Client.get_executor()``); results are identical to a
        local run.
    model_kind : {"auto", "stages", "deal_level"}, default "auto"
        The model each origin fits (see :func:`forecast.fit`).

    Returns
    -------
    BacktestResult

    Examples
    --------
    >>> from forecast.datasets import load_sample
    >>> res = backtest(load_sample(), origins=["2024-07-01"], horizon=1, n_paths=200, n_draws=0)
    >>> res.scores().select("quarter", "step").row(0)
    ('FY2024-Q3', 1)
    """
    caller = "backtest"
    cal = check_calendar(calendar, caller)
    horizon = check_int(horizon, "horizon", caller, minimum=1)
    n_paths = check_int(n_paths, "n_paths", caller, minimum=1)
    n_draws = check_int(n_draws, "n_draws", caller, minimum=0)
    seed = check_seed(seed, caller)
    check_int(min_history_quarters, "min_history_quarters", caller, minimum=0)
    segment_by = tuple(segment_by)
    choose_model_kind(log, model_kind, caller)  # checked before any work
    if origins is None:
        chosen = default_origins(log, calendar=cal, min_history_quarters=min_history_quarters)
        if not chosen:
            raise ParameterError(
                "`backtest` found no origin: it needs a fiscal quarter start with "
                f"{min_history_quarters} full quarters of history before it and a complete "
                f"quarter after it; the log covers {log.first_timestamp:%Y-%m-%d} .. "
                f"{_data_end(log):%Y-%m-%d}. Pass `origins=` or lower `min_history_quarters`."
            )
    else:
        chosen = sorted({as_datetime(o, "origins", "backtest") for o in origins})
        if not chosen:
            raise ParameterError("The `origins` parameter of `backtest` is empty. Got [].")
        early = [o for o in chosen if o <= log.first_timestamp]
        if early:
            raise ParameterError(
                f"The `origins` of `backtest` must be after the first event "
                f"({log.first_timestamp:%Y-%m-%d %H:%M}). Got {early[0]:%Y-%m-%d %H:%M}."
            )
    jobs = []
    exports = log.source.snapshot_dates if log.source is not None else ()
    for o in chosen:
        last_end = cal.quarters(o, horizon)[-1].end
        # Each job gets only the history it may use: nothing after its last quarter (for
        # a history rebuilt from exports, nothing after the export that shows how that
        # quarter ended; the fit itself cuts at the origin).
        known_by = (log.source.first_export_at_or_after(last_end) if exports else None) or last_end
        part = log.as_of(known_by) if known_by < _data_end(log) else log
        options = {"model_kind": model_kind}
        jobs.append((part, o, horizon, n_paths, segment_by, cal, n_draws, seed, options))
    if executor is None:
        parts = [_score_origin(*j) for j in jobs]
    else:
        futures = [executor.submit(_score_origin, *j) for j in jobs]
        parts = [f.result() for f in futures]
    frame = pl.DataFrame([r for p in parts for r in p], schema=_SCHEMA)
    return BacktestResult(
        frame=frame,
        origins=tuple(chosen),
        horizon=horizon,
        info={
            "n_paths": n_paths,
            "n_draws": n_draws,
            "seed": seed,
            "segment_by": list(segment_by),
            "model_kind": model_kind,
            "calendar": cal.to_dict(),
            "data_fingerprint": log.fingerprint,
        },
    )


_SCHEMA: dict[str, Any] = {
    "origin": pl.Datetime("us"),
    "step": pl.Int64,
    "quarter": pl.Utf8,
    "quarter_start": pl.Datetime("us"),
    "realised": pl.Float64,
    "mean": pl.Float64,
    **{f"p{round(lv * 100):02d}": pl.Float64 for lv in QUANTILES},
    "booked_to_date": pl.Float64,
    **dict.fromkeys(BASELINES, pl.Float64),
    "n_open_deals": pl.Int64,
    "seed": pl.Int64,
    "crps": pl.Float64,
    "pinball": pl.Float64,
    "pit": pl.Float64,
    "hit50": pl.Boolean,
    "hit80": pl.Boolean,
    **{f"crps_{b}": pl.Float64 for b in BASELINES},
}


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """Scores of a rolling-origin backtest (see :func:`backtest`).

    Attributes
    ----------
    frame : polars.DataFrame
        One row per (origin, horizon quarter); see :meth:`scores`.
    origins : tuple of datetime
        The origins, ascending.
    horizon : int
        Quarters forecast from each origin.
    info : dict
        Run settings (paths, draws, seed, segments, calendar, data fingerprint).
    """

    frame: pl.DataFrame
    origins: tuple[dt.datetime, ...]
    horizon: int
    info: dict[str, Any] = field(default_factory=dict)

    def scores(self) -> pl.DataFrame:
        """Per origin and horizon quarter: forecast, outcome, scores and baselines (long format).

        Returns
        -------
        polars.DataFrame
            ``origin, step`` (1 = the quarter containing the origin), ``quarter,
            quarter_start, realised`` (currency, null if the quarter is not complete
            in the log), ``mean, p05 .. p95`` (forecast, currency), ``booked_to_date,
            weighted_pipeline, stage_sum, trailing`` (baseline point forecasts,
            currency), ``n_open_deals, seed``, and the scores ``crps`` (currency),
            ``pinball`` (mean over the levels p05 .. p95, currency), ``pit`` (in
            [0, 1]), ``hit50, hit80`` (outcome inside the P25–P75 / P10–P90
            interval) and ``crps_<baseline>`` (absolute error, currency); scores are
            null for quarters not realised.
        """
        return self.frame.clone()

    def summary(self) -> pl.DataFrame:
        """Per horizon step: mean scores, coverage with 95% Wilson intervals, skill.

        Returns
        -------
        polars.DataFrame
            ``step, n`` (scored cases), ``mean_crps, mean_pinball`` (currency),
            ``bias`` (mean of forecast mean − realised over mean realised),
            ``mean_pit``, ``coverage50, coverage50_low, coverage50_high, coverage80,
            coverage80_low, coverage80_high``, and per baseline ``mae_<baseline>``
            (its mean CRPS, currency) and ``skill_<baseline>`` (``1 − mean_crps /
            mae``; > 0 means the model beats it).
        """
        rows = []
        done = self.frame.filter(pl.col("realised").is_not_null())
        for step in range(1, self.horizon + 1):
            d = done.filter(pl.col("step") == step)
            n = d.height
            row: dict[str, Any] = {"step": step, "n": n}
            if n == 0:
                rows.append(row)
                continue
            mean_real = float(d["realised"].mean())  # type: ignore[arg-type]
            row["mean_crps"] = float(d["crps"].mean())  # type: ignore[arg-type]
            row["mean_pinball"] = float(d["pinball"].mean())  # type: ignore[arg-type]
            row["bias"] = (
                float((d["mean"] - d["realised"]).mean()) / mean_real  # type: ignore[operator]
                if mean_real > 0
                else math.nan
            )
            row["mean_pit"] = float(d["pit"].mean())  # type: ignore[arg-type]
            for c in (50, 80):
                hits = int(d[f"hit{c}"].sum())
                lo, hi = wilson_interval(hits, n)
                row[f"coverage{c}"] = hits / n
                row[f"coverage{c}_low"] = lo
                row[f"coverage{c}_high"] = hi
            for b in BASELINES:
                errs = d[f"crps_{b}"].drop_nulls()
                mae = float(errs.mean()) if errs.len() else math.nan  # type: ignore[arg-type]
                # Skill on the cases the baseline covers.
                own = d.filter(pl.col(f"crps_{b}").is_not_null())["crps"]
                row[f"mae_{b}"] = mae
                row[f"skill_{b}"] = (
                    skill(float(own.mean()), mae) if own.len() else math.nan  # type: ignore[arg-type]
                )
            rows.append(row)
        return pl.DataFrame(rows, infer_schema_length=None)

    # -- figure data and figures ------------------------------------------------------
    def pit_histogram(self, bins: int = 10, step: int | None = None) -> pl.DataFrame:
        """PIT counts in ``bins`` equal bins of [0, 1] (uniform if calibrated).

        Returns
        -------
        polars.DataFrame
            ``bin_low, bin_high, count, expected`` (``expected = n / bins``).
        """
        bins = check_int(bins, "bins", "pit_histogram", minimum=1)
        d = self.frame.filter(pl.col("pit").is_not_null())
        if step is not None:
            d = d.filter(pl.col("step") == step)
        counts, edges = np.histogram(d["pit"].to_numpy(), bins=bins, range=(0.0, 1.0))
        return pl.DataFrame(
            {
                "bin_low": edges[:-1],
                "bin_high": edges[1:],
                "count": counts.astype(np.int64),
                "expected": np.full(bins, d.height / bins),
            }
        )

    def plot_pit(self, ax: Any = None, bins: int = 10, step: int | None = None) -> Any:
        """Bar chart of :meth:`pit_histogram` with the uniform line; returns the Axes (matplotlib)."""
        import matplotlib.pyplot as plt

        h = self.pit_histogram(bins, step)
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        width = 1.0 / bins
        ax.bar(
            h["bin_low"].to_numpy(),
            h["count"].to_numpy(),
            width=width,
            align="edge",
            edgecolor="white",
        )
        ax.axhline(float(h["expected"][0]), color="k", ls="--", lw=1, label="uniform")
        ax.set_xlabel("PIT")
        ax.set_ylabel("cases")
        ax.set_title("PIT histogram" + ("" if step is None else f" (step {step})"))
        ax.legend()
        return ax

    def plot_coverage(self, ax: Any = None) -> Any:
        """50% and 80% interval coverage per horizon step with Wilson intervals; returns the Axes."""
        import matplotlib.pyplot as plt

        s = self.summary().filter(pl.col("n") > 0)
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        steps = s["step"].to_numpy()
        for c, off in ((50, -0.05), (80, 0.05)):
            y = s[f"coverage{c}"].to_numpy()
            err = np.vstack(
                [y - s[f"coverage{c}_low"].to_numpy(), s[f"coverage{c}_high"].to_numpy() - y]
            )
            ax.errorbar(steps + off, y, yerr=err, fmt="o", capsize=3, label=f"{c}% interval")
            ax.axhline(c / 100, ls="--", lw=1, color="grey")
        ax.set_xticks(steps)
        ax.set_xlabel("horizon step (quarters)")
        ax.set_ylabel("coverage")
        ax.set_ylim(0, 1)
        ax.legend()
        return ax

    def plot_forecast_vs_realised(self, step: int = 1, ax: Any = None) -> Any:
        """Forecast median, 50% and 80% bands, realised bookings and the weighted pipeline over origins."""
        import matplotlib.pyplot as plt

        d = self.frame.filter(pl.col("step") == step).sort("quarter_start")
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        x = d["quarter_start"].to_list()
        ax.fill_between(x, d["p10"].to_numpy(), d["p90"].to_numpy(), alpha=0.2, label="P10–P90")
        ax.fill_between(x, d["p25"].to_numpy(), d["p75"].to_numpy(), alpha=0.3, label="P25–P75")
        ax.plot(x, d["p50"].to_numpy(), lw=1.5, label="median")
        ax.plot(x, d["weighted_pipeline"].to_numpy(), ls=":", label="weighted pipeline")
        ax.plot(x, d["realised"].to_numpy(), "ko", ms=4, label="realised")
        ax.set_ylabel("bookings (currency)")
        ax.set_title(f"Forecast vs realised, step {step}")
        ax.legend(fontsize="small")
        return ax

    def __repr__(self) -> str:
        return (
            f"BacktestResult({len(self.origins)} origins, horizon {self.horizon}, "
            f"{self.frame.filter(pl.col('realised').is_not_null()).height} scored cases)"
        )
