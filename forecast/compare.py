"""What changed between two forecasts: the movement of expected bookings, per deal and per cause.

:func:`compare` explains the change in a quarter's expected bookings between a
previous forecast (as of ``t0``) and the current one (as of ``t1 > t0``). Every
currency unit of the change is given to exactly one cause, and the causes add up to
the total change:

``current_expected - previous_expected = Σ causes``

with, for each deal ``d``, ``x0(d)`` its expected won amount in the quarter under the
previous forecast, ``x1(d)`` under the current one (0 when not open) and ``b(d)`` what
it booked in the quarter between ``t0`` and ``t1``:

``won``
    Deals open at ``t0`` and won by ``t1``: ``b(d) - x0(d)``.
``lost``
    Deals open at ``t0`` and lost (or closed without decision) by ``t1``: ``-x0(d)``.
``created``
    Deals not open at ``t0`` (created, or re-opened, after it): ``b(d) + x1(d)``.
``amount_change``
    Deals open at both dates whose amount changed: the amount's share of
    ``x1(d) - x0(d)``. With ``x = A r`` (``A`` the pipeline amount, ``r`` the expected
    won amount per unit of pipeline), ``x1 - x0 = (A1 - A0)(r0 + r1)/2 +
    (r1 - r0)(A0 + A1)/2``; the first term goes here, the second to one of the
    four causes below.
``stage_move``
    Deals open at both dates in another stage at ``t1``: the rest of their change.
``slipped``
    Deals open at both dates, same stage, whose rep close date moved from inside
    (or before) the quarter to after its end.
``pulled_in``
    Deals open at both dates, same stage, whose rep close date moved from after
    the quarter's end into it.
``aged``
    Deals open at both dates with none of the above: their forecast moved only
    because time passed (a week more in the stage, a week less of the quarter).
``new_deals``
    The change in the expected bookings of deals still to be created (it shrinks
    as the quarter runs out; the deals that were created are in ``created``).
``model_change``
    The change that comes from refitting the model: today's pipeline under the
    current model minus today's pipeline under the previous model (per deal and
    for the deals still to be created). Only separated when the previous model is
    given (``previous_model=``); otherwise it stays inside the causes above.
``other``
    What is left: history restated between the two runs (bookings the previous
    run saw differently), deals that vanished from the history, and rounding of the
    per-deal amounts to cents; about zero for two runs on the same history.

With ``previous_model``, the deal causes are measured under the previous model
(today's pipeline is simulated with it, same paths and seed as the current
forecast), so that model change and deal changes do not mix.

The two forecasts can be :class:`~forecast.results.Forecast` objects or the Parquet
output of :func:`forecast.io.write_forecast` (a root directory; the as-of partition
is chosen as described on :func:`compare`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from forecast._validation import as_datetime
from forecast.calendar import FiscalCalendar, FiscalQuarter
from forecast.data.deal_log import DealLog
from forecast.errors import ParameterError
from forecast.io import read_forecast, table_files
from forecast.results import Forecast

if TYPE_CHECKING:  # pragma: no cover
    from forecast.fit.model import PipelineModel

__all__ = ["CAUSES", "CAUSE_LABELS", "Movement", "compare", "output_as_of_dates"]

#: Causes of a movement, in waterfall order.
CAUSES: tuple[str, ...] = (
    "won",
    "lost",
    "slipped",
    "pulled_in",
    "created",
    "amount_change",
    "stage_move",
    "aged",
    "new_deals",
    "model_change",
    "other",
)

#: Words for each cause, for people.
CAUSE_LABELS: dict[str, str] = {
    "won": "Won",
    "lost": "Lost",
    "slipped": "Slipped out of the quarter",
    "pulled_in": "Pulled into the quarter",
    "created": "Created",
    "amount_change": "Amount changed",
    "stage_move": "Stage moved",
    "aged": "Aged in stage",
    "new_deals": "Deals still to be created",
    "model_change": "Model refit",
    "other": "Other (restated history, rounding)",
}

_US = dt.timedelta(microseconds=1)

_DEAL_SCHEMA: dict[str, Any] = {
    "deal_id": pl.Utf8,
    "segment": pl.Utf8,
    "cause": pl.Utf8,
    "change": pl.Float64,
    "expected_previous": pl.Float64,
    "expected_current": pl.Float64,
    "booked": pl.Float64,
    "amount_previous": pl.Float64,
    "amount_current": pl.Float64,
    "stage_previous": pl.Utf8,
    "stage_current": pl.Utf8,
    "close_date_previous": pl.Datetime("us"),
    "close_date_current": pl.Datetime("us"),
}


@dataclass(frozen=True, eq=False)
class Movement:
    """The change in one quarter's expected bookings between two forecasts (see :func:`compare`).

    Attributes
    ----------
    quarter : str
        Fiscal quarter label, e.g. ``"FY2025-Q1"``.
    previous_as_of, current_as_of : datetime
        As-of instants of the two forecasts (naive UTC).
    previous_expected, current_expected : float
        Expected bookings of the quarter in each forecast (currency; booked to
        date included), the ``mean`` of :meth:`Forecast.quarterly`.
    deals : polars.DataFrame
        One row per (deal, cause) with a change, and one row per aggregate cause
        (``deal_id`` null): ``deal_id, segment, cause, change`` (currency) and the
        deal's ``expected_previous, expected_current`` (expected won amount in the
        quarter, currency; ``expected_current`` under the model the cause is
        measured with), ``booked`` (won in the quarter between the two dates),
        ``amount_previous, amount_current`` (pipeline amount, currency),
        ``stage_previous, stage_current, close_date_previous, close_date_current``
        (from the history; null when the deal was not open). ``change`` sums to
        :attr:`total_change`.
    info : dict
        ``model_change_separated`` (bool), the sources of the two forecasts, their
        paths, seeds and model fingerprints.
    """

    quarter: str
    previous_as_of: dt.datetime
    current_as_of: dt.datetime
    previous_expected: float
    current_expected: float
    deals: pl.DataFrame
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_change(self) -> float:
        """``current_expected - previous_expected``, currency."""
        return self.current_expected - self.previous_expected

    def by_cause(self) -> pl.DataFrame:
        """One row per cause, in waterfall order (:data:`CAUSES`).

        Returns
        -------
        polars.DataFrame
            ``cause, label, change`` (currency; sums to :attr:`total_change`),
            ``n_deals`` (deals behind the bar), ``start, end`` (the running total
            before and after the bar, from ``previous_expected``).
        """
        sums = dict.fromkeys(CAUSES, 0.0)
        counts = dict.fromkeys(CAUSES, 0)
        for cause, change, n in (
            self.deals.group_by("cause")
            .agg(pl.col("change").sum(), pl.col("deal_id").drop_nulls().n_unique().alias("n"))
            .rows()
        ):
            sums[cause] = float(change)
            counts[cause] = int(n)
        start = np.cumsum([self.previous_expected, *(sums[c] for c in CAUSES)])
        return pl.DataFrame(
            {
                "cause": list(CAUSES),
                "label": [CAUSE_LABELS[c] for c in CAUSES],
                "change": [sums[c] for c in CAUSES],
                "n_deals": [counts[c] for c in CAUSES],
                "start": start[:-1],
                "end": start[1:],
            },
            schema_overrides={"n_deals": pl.Int64},
        )

    def by_deal(self) -> pl.DataFrame:
        """The deal rows of :attr:`deals` (aggregate rows dropped), largest moves first."""
        return self.deals.filter(pl.col("deal_id").is_not_null()).sort(
            pl.col("change").abs(), descending=True
        )

    def __repr__(self) -> str:
        return (
            f"Movement({self.quarter}: {self.previous_expected:,.0f} as of "
            f"{self.previous_as_of:%Y-%m-%d} -> {self.current_expected:,.0f} as of "
            f"{self.current_as_of:%Y-%m-%d}, change {self.total_change:+,.0f})"
        )


# -- the two forecasts, whatever their source -------------------------------------------
@dataclass(frozen=True)
class _Snapshot:
    """What :func:`compare` needs of one forecast, read from a Forecast or a Parquet output."""

    as_of: dt.datetime
    quarters: tuple[str, ...]
    expected: np.ndarray  # (H,) quarterly mean, currency
    from_new_deals: np.ndarray  # (H,)
    deals: pl.DataFrame  # deal_id, segment, amount, quarter, expected
    calendar: FiscalCalendar | None
    n_paths: int
    seed: int | None
    model_fingerprint: str
    source: str

    def deal_values(self, quarter: str) -> dict[str, tuple[float, float, str | None]]:
        """deal id -> (expected won amount in ``quarter``, pipeline amount, segment)."""
        d = self.deals.filter(pl.col("quarter") == quarter)
        return {
            r[0]: (float(r[3] or 0.0), float(r[2] or 0.0), r[1])
            for r in d.select("deal_id", "segment", "amount", "expected").iter_rows()
        }


def _snapshot_of_forecast(fc: Forecast, source: str = "Forecast") -> _Snapshot:
    q = fc.quarterly()
    n = max(fc.n_paths, 1)
    segs = (
        np.asarray(fc.deal_segments, dtype=str)
        if fc.deal_segments is not None
        else np.full(len(fc.deal_ids), None, dtype=object)
    )
    frames = [
        pl.DataFrame(
            {
                "deal_id": pl.Series(np.asarray(fc.deal_ids, dtype=str), dtype=pl.Utf8),
                "segment": pl.Series(segs.tolist(), dtype=pl.Utf8),
                "amount": np.asarray(fc.deal_amounts, dtype=np.float64),
                "quarter": [label] * len(fc.deal_ids),
                "expected": fc.deal_won_cents[:, i] / 100.0 / n,
            },
            schema_overrides={"quarter": pl.Utf8},
        )
        for i, label in enumerate(fc.quarters)
    ]
    cal = fc.info.get("calendar")
    return _Snapshot(
        as_of=fc.as_of,
        quarters=tuple(fc.quarters),
        expected=q["mean"].to_numpy(),
        from_new_deals=q["from_new_deals"].to_numpy(),
        deals=pl.concat(frames),
        calendar=FiscalCalendar.from_dict(dict(cal)) if cal else None,
        n_paths=fc.n_paths,
        seed=_int_or_none(fc.info.get("seed")),
        model_fingerprint=str(fc.info.get("model_fingerprint", "")),
        source=source,
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def output_as_of_dates(root: str | os.PathLike[str]) -> list[dt.date]:
    """The as-of dates of the forecasts written under ``root`` by :func:`forecast.io.write_forecast`.

    Returns
    -------
    list of date
        Ascending; empty when ``root`` holds no ``quarterly`` table.
    """

    try:
        q = read_forecast(root, "quarterly")
    except FileNotFoundError:
        return []
    return sorted(set(q["as_of"].to_list()))


def _snapshot_of_output(root: str | os.PathLike[str], as_of: object | None) -> _Snapshot:
    """Read one forecast written by :func:`forecast.io.write_forecast` (the one place that does).

    ``as_of``: a date, or ``None`` for the latest partition.
    """

    root = Path(root)
    dates = output_as_of_dates(root)
    if not dates:
        raise FileNotFoundError(
            f"No forecast output under {root}: expected the `quarterly/` and `deals/` Parquet "
            "datasets written by `forecast run` (forecast.io.write_forecast)."
        )
    if as_of is None:
        day = dates[-1]
    else:
        day = as_datetime(as_of, "as_of").date()
        if day not in dates:
            raise ParameterError(
                f"The forecast output under {root} has no forecast as of {day}. "
                f"As-of dates there: {[str(d) for d in dates]}."
            )
    quarterly = read_forecast(root, "quarterly", as_of=day).sort("quarter_index")
    deals = read_forecast(root, "deals", as_of=day)
    files = table_files(root, "quarterly", as_of=day)
    import pyarrow.parquet as pq  # deferred: it loads OpenSSL (~0.1 s) for its file systems

    meta = {k.decode(): v.decode() for k, v in (pq.read_schema(files[0]).metadata or {}).items()}
    cal = json.loads(meta.get("forecast.calendar", "{}") or "{}")
    as_of_instant = (
        dt.datetime.fromisoformat(meta["forecast.as_of"])
        if meta.get("forecast.as_of")
        else dt.datetime(day.year, day.month, day.day)
    )
    return _Snapshot(
        as_of=as_of_instant,
        quarters=tuple(quarterly["quarter"].to_list()),
        expected=quarterly["mean"].to_numpy(),
        from_new_deals=quarterly["from_new_deals"].to_numpy(),
        deals=deals.select(
            "deal_id",
            "segment",
            "amount",
            "quarter",
            pl.col("expected_won_amount").alias("expected"),
        ),
        calendar=FiscalCalendar.from_dict(cal) if cal else None,
        n_paths=int(meta.get("forecast.n_paths") or 0),
        seed=_int_or_none(meta.get("forecast.seed")),
        model_fingerprint=meta.get("forecast.model_fingerprint", ""),
        source=f"{root} (as of {day})",
    )


def _snapshot(value: object, name: str, as_of: object | None) -> _Snapshot:

    if isinstance(value, Forecast):
        return _snapshot_of_forecast(value)
    if isinstance(value, str | os.PathLike):
        return _snapshot_of_output(value, as_of)
    raise ParameterError(
        f"The `{name}` parameter of `compare` must be a Forecast or the directory of a "
        f"forecast output (forecast.io.write_forecast). Got {type(value).__name__}."
    )


# -- the comparison ----------------------------------------------------------------------
def compare(
    previous: Forecast | str | os.PathLike[str],
    current: Forecast | str | os.PathLike[str],
    log: DealLog,
    *,
    quarter: str | None = None,
    previous_model: PipelineModel | None = None,
    previous_as_of: object | None = None,
    current_as_of: object | None = None,
    threads: int | None = None,
) -> Movement:
    """Explain the change in a quarter's expected bookings between two forecasts.

    Parameters
    ----------
    previous, current : Forecast or path
        The two forecasts, as :class:`~forecast.results.Forecast` objects or as the
        root directory of a :func:`forecast.io.write_forecast` output. For a
        directory, the as-of partition is ``previous_as_of`` / ``current_as_of``;
        by default the latest one for ``current`` and, for ``previous``, the latest
        one before the current forecast's as-of date.
    log : DealLog
        The deal history covering both as-of dates: it tells which deals were won
        or lost in between, their stages and rep close dates.
    quarter : str, optional
        Fiscal quarter label; default the current forecast's first quarter. Must be
        in both forecasts' horizons.
    previous_model : PipelineModel, optional
        The model of the previous forecast. When given, today's pipeline is
        simulated with it (same number of paths and seed as ``current``) and the
        refit of the model is its own cause (``model_change``); otherwise it stays
        inside the deal causes.
    previous_as_of, current_as_of : date-like, optional
        Partition to read from a directory (ignored for Forecast objects).
    threads : int, optional
        Threads of the re-simulation under ``previous_model``.

    Returns
    -------
    Movement
        Per deal and per cause (see the module docstring for the causes); the
        causes sum to ``current_expected - previous_expected``.

    Raises
    ------
    ParameterError
        If the previous forecast is not earlier than the current one or the quarter
        is not in both horizons.

    Examples
    --------
    >>> mv = forecast.compare("out/", "out/", log)  # doctest: +SKIP
    >>> mv.by_cause().select("label", "change")  # doctest: +SKIP
    """

    if not isinstance(log, DealLog):
        raise ParameterError(
            f"The `log` parameter of `compare` must be a DealLog. Got {type(log).__name__}."
        )
    cur = _snapshot(current, "current", current_as_of)
    if previous_as_of is None and isinstance(previous, str | os.PathLike):
        dates = [d for d in output_as_of_dates(previous) if d < cur.as_of.date()]  # type: ignore[arg-type]
        previous_as_of = dates[-1] if dates else None
    prev = _snapshot(previous, "previous", previous_as_of)
    if not prev.as_of < cur.as_of:
        raise ParameterError(
            f"The `previous` forecast of `compare` must be earlier than the current one. Got "
            f"previous as of {prev.as_of:%Y-%m-%d %H:%M}, current as of {cur.as_of:%Y-%m-%d %H:%M}."
        )
    quarter = cur.quarters[0] if quarter is None else str(quarter).upper()
    for snap, which in ((prev, "previous"), (cur, "current")):
        if quarter not in snap.quarters:
            raise ParameterError(
                f"The quarter {quarter} is not in the {which} forecast's horizon "
                f"{list(snap.quarters)}; pass `quarter=` with a quarter both forecasts cover."
            )
    calendar = cur.calendar or prev.calendar or FiscalCalendar()
    mid = cur
    if previous_model is not None:
        mid = _snapshot_of_forecast(
            previous_model.replace(as_of=cur.as_of).simulate(
                log,
                n_paths=max(cur.n_paths, 1),
                horizon=len(cur.quarters),
                seed=cur.seed or 0,
                threads=threads,
            ),
            source="previous model on the current pipeline",
        )
    rows = _movement_rows(prev, mid, cur, log, calendar.quarter_from_label(quarter), quarter)
    i0, i1 = prev.quarters.index(quarter), cur.quarters.index(quarter)
    e0, e1 = float(prev.expected[i0]), float(cur.expected[i1])
    explained = sum(r["change"] for r in rows)
    rows.append(_aggregate("other", e1 - e0 - explained))
    frame = pl.DataFrame(rows, schema=_DEAL_SCHEMA, orient="row")
    return Movement(
        quarter=quarter,
        previous_as_of=prev.as_of,
        current_as_of=cur.as_of,
        previous_expected=e0,
        current_expected=e1,
        deals=frame,
        info={
            "model_change_separated": previous_model is not None,
            "previous_source": prev.source,
            "current_source": cur.source,
            "previous_n_paths": prev.n_paths,
            "current_n_paths": cur.n_paths,
            "previous_model_fingerprint": prev.model_fingerprint,
            "current_model_fingerprint": cur.model_fingerprint,
        },
    )


def _aggregate(cause: str, change: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_DEAL_SCHEMA)
    row["cause"] = cause
    row["change"] = float(change)
    return row


def _movement_rows(
    prev: _Snapshot,
    mid: _Snapshot,
    cur: _Snapshot,
    log: DealLog,
    fq: FiscalQuarter,
    quarter: str,
) -> list[dict[str, Any]]:
    """Deal and aggregate rows of every cause but ``other``.

    ``mid`` is today's pipeline under the previous model (``cur`` itself when the
    model change is not separated).
    """
    t0, t1 = prev.as_of, cur.as_of
    x0, xm, x1 = prev.deal_values(quarter), mid.deal_values(quarter), cur.deal_values(quarter)
    p0 = _pipeline_facts(log, t0)
    p1 = _pipeline_facts(log, t1)
    status = dict(log.outcomes(t1).select("deal_id", "status").iter_rows())
    booked: dict[str, float] = {}
    start, end = max(fq.start, t0 + _US), min(fq.end, t1 + _US)
    if start < end:
        for deal_id, amount in (
            log.bookings(start, end)
            .group_by("deal_id")
            .agg(pl.col("amount").fill_null(0.0).sum())
            .iter_rows()
        ):
            booked[deal_id] = float(amount)
    rows: list[dict[str, Any]] = []
    for d in sorted(set(x0) | set(xm) | set(booked)):
        e0, a0, g0 = x0.get(d, (0.0, 0.0, None))
        em, am, gm = xm.get(d, (0.0, 0.0, None))
        b = booked.get(d, 0.0)
        s0, c0 = p0.get(d, (None, None))
        s1, c1 = p1.get(d, (None, None))
        base = {
            "deal_id": d,
            "segment": gm if gm is not None else g0,
            "expected_previous": e0,
            "expected_current": em,
            "booked": b,
            "amount_previous": a0 if d in x0 else None,
            "amount_current": am if d in xm else None,
            "stage_previous": s0,
            "stage_current": s1,
            "close_date_previous": c0,
            "close_date_current": c1,
        }

        def add(cause: str, change: float, base: dict[str, Any] = base) -> None:
            if change != 0.0:
                rows.append({**base, "cause": cause, "change": float(change)})

        if d not in x0:
            add("created", b + em)
            continue
        if d not in xm:
            st = status.get(d)
            add(
                "won" if st == "won" else "lost" if st in ("lost", "no_decision") else "other",
                b - e0,
            )
            continue
        add("won", b)  # won and re-opened between the two dates (rare)
        delta = em - e0
        if a0 > 0 and am > 0 and not np.isclose(a0, am, rtol=1e-12, atol=0.0):
            r0, r1 = e0 / a0, em / am
            amount_part = (am - a0) * (r0 + r1) / 2.0
        elif a0 != am:
            amount_part = delta
        else:
            amount_part = 0.0
        add("amount_change", amount_part)
        rest = delta - amount_part
        if s0 is not None and s1 is not None and s0 != s1:
            add("stage_move", rest)
        elif c0 is not None and c1 is not None and c0 < fq.end <= c1:
            add("slipped", rest)
        elif c0 is not None and c1 is not None and c1 < fq.end <= c0:
            add("pulled_in", rest)
        else:
            add("aged", rest)
    if mid is not cur:
        for d in sorted(set(xm) | set(x1)):
            em, _, gm = xm.get(d, (0.0, 0.0, None))
            e1, a1, g1 = x1.get(d, (0.0, 0.0, None))
            if e1 != em:
                s1, c1 = p1.get(d, (None, None))
                rows.append(
                    {
                        "deal_id": d,
                        "segment": g1 if g1 is not None else gm,
                        "cause": "model_change",
                        "change": e1 - em,
                        "expected_previous": em,
                        "expected_current": e1,
                        "booked": 0.0,
                        "amount_previous": xm[d][1] if d in xm else None,
                        "amount_current": a1 if d in x1 else None,
                        "stage_previous": s1,
                        "stage_current": s1,
                        "close_date_previous": c1,
                        "close_date_current": c1,
                    }
                )
    i0, im, i1 = (
        prev.quarters.index(quarter),
        mid.quarters.index(quarter),
        cur.quarters.index(quarter),
    )
    rows.append(_aggregate("new_deals", float(mid.from_new_deals[im] - prev.from_new_deals[i0])))
    if mid is not cur:
        rows.append(
            _aggregate("model_change", float(cur.from_new_deals[i1] - mid.from_new_deals[im]))
        )
    return rows


def _pipeline_facts(log: DealLog, t: dt.datetime) -> dict[str, tuple[str, dt.datetime | None]]:
    """deal id -> (stage, rep close date) of the deals open at ``t``."""
    return {
        d: (s, c)
        for d, s, c in log.pipeline(t).select("deal_id", "stage", "close_date").iter_rows()
    }
