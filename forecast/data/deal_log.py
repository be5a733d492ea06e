"""`DealLog`: a validated, canonical deal history and its point-in-time views.

The canonical event frame is described in ``docs/internals.md`` §2. A `DealLog` is
built only by the readers (:func:`forecast.read_deal_log`), which validate and
repair; the constructor trusts its input. :class:`LogSource` records how the
reader got it (layout of the source, column mapping, export dates).

:meth:`DealLog.as_of` is the one place where time is cut: every view first keeps
the rows known at the as-of date (``timestamp <= as_of``; for a history rebuilt
from dated exports, ``timestamp <=`` the last export on or before it), so nothing
after the as-of date can reach a pipeline, a spell table or a fit.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from forecast._validation import as_datetime
from forecast.data.stages import StageMap
from forecast.data.validation import created_at_extremes_per_deal
from forecast.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from forecast.data.validation import ValidationReport

__all__ = ["CANONICAL_COLUMNS", "DealLog", "LogSource"]

#: Columns every canonical event frame has, with their polars dtypes.
CANONICAL_COLUMNS: dict[str, pl.DataType] = {
    "deal_id": pl.Utf8(),
    "timestamp": pl.Datetime("us"),
    "stage": pl.Utf8(),
    "amount": pl.Float64(),
    "close_date": pl.Datetime("us"),
    "created_at": pl.Datetime("us"),
    "source_row": pl.Int64(),
}

_US_PER_DAY = 86_400_000_000.0

#: Cuts (``DealLog.as_of``) a log keeps cached, most recently used: a fit and the
#: simulation after it share one, a backtest moves from one origin to the next.
_CUTS_KEPT = 2
#: Rows of a column hashed at a time by :attr:`DealLog.fingerprint`.
_FINGERPRINT_ROWS = 1 << 18


def _days(expr: pl.Expr) -> pl.Expr:
    """Duration expression -> float days."""
    return expr.dt.total_microseconds().cast(pl.Float64) / _US_PER_DAY


# Within-deal expressions on an events frame sorted by deal (as every ``DealLog``'s
# is): fills and differences on whole columns with deal-boundary masks, many times
# faster than ``.over("deal_id")`` with hundreds of thousands of deals.


def first_row_of_deal() -> pl.Expr:
    """Boolean: the row is its deal's first."""
    return (pl.col("deal_id") != pl.col("deal_id").shift(1)).fill_null(True)


def deal_start() -> pl.Expr:
    """Int64: row index of the first row of each row's deal."""
    return pl.when(first_row_of_deal()).then(pl.int_range(pl.len(), dtype=pl.Int64)).forward_fill()


def ffill_within_deal(col: str, start: pl.Expr | None = None) -> pl.Expr:
    """``col`` forward-filled within each deal (null before the deal's first value).

    ``start``: the deal-start row index (:func:`deal_start`), e.g. a column already
    computed.
    """
    start = deal_start() if start is None else start
    last_set = pl.when(pl.col(col).is_not_null()).then(pl.int_range(pl.len(), dtype=pl.Int64))
    return pl.when(last_set.forward_fill() >= start).then(pl.col(col).forward_fill())


def previous_close_date() -> pl.Expr:
    """The latest close date given before each row of the same deal (null on its first)."""
    return pl.when(~first_row_of_deal()).then(ffill_within_deal("close_date").shift(1))


def close_date_pushed() -> pl.Expr:
    """Int32: 1 where the row moves its deal's close date later (a push)."""
    return (pl.col("close_date") > previous_close_date()).fill_null(False).cast(pl.Int32)


@dataclass(frozen=True)
class LogSource:
    """How a reader built a log: the source's layout, column mapping and export dates.

    Parameters
    ----------
    shape : {"events", "deals", "snapshots"}
        Layout of the source table. ``"deals"`` (one row per deal) carries no stage
        history: its open deals are "in their current stage since creation" and its
        closed deals "in the entry stage until the close date" by construction.
    columns : mapping of str to str or None
        Canonical column -> the source column it was read from (``None``: absent).
    preset : str or None
        Name of the preset used, if any.
    files : tuple of str
        Files read, in order (several when a folder of exports was read).
    snapshot_dates : tuple of datetime
        ``shape="snapshots"``: the distinct export instants (naive UTC), ascending. A
        change first seen in export ``k`` is dated inside ``(export k-1, export k]``,
        so the history known at ``t`` is the events up to the last export ``<= t``.
    """

    shape: str = "events"
    columns: Mapping[str, str | None] = field(default_factory=dict)
    preset: str | None = None
    files: tuple[str, ...] = ()
    snapshot_dates: tuple[dt.datetime, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", dict(self.columns))  # a copy (and picklable)
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        object.__setattr__(self, "snapshot_dates", tuple(sorted(self.snapshot_dates)))

    def last_export_at_or_before(self, t: dt.datetime) -> dt.datetime | None:
        """The latest export instant ``<= t`` (``None``: before the first export)."""
        i = bisect.bisect_right(self.snapshot_dates, t)
        return self.snapshot_dates[i - 1] if i else None

    def first_export_at_or_after(self, t: dt.datetime) -> dt.datetime | None:
        """The earliest export instant ``>= t`` (``None``: after the last export)."""
        i = bisect.bisect_left(self.snapshot_dates, t)
        return self.snapshot_dates[i] if i < len(self.snapshot_dates) else None


@dataclass(frozen=True, eq=False)
class DealLog:
    """A deal history: one row per change, validated and in canonical form.

    Parameters
    ----------
    events : polars.DataFrame
        Canonical event frame (``docs/internals.md`` §2), sorted by
        ``(deal_id, timestamp, source_row)``.
    stages : StageMap
        Classification of every stage name in ``events``.
    segment_columns : tuple of str
        Names of the segment columns carried in ``events``.
    report : ValidationReport or None
        What the reader checked and repaired.
    cut : datetime or None
        The as-of instant this log was cut at (``None``: not cut).
    source : LogSource or None
        How the reader built the log (``None``: built directly from canonical
        events).
    numeric_columns : tuple of str
        Names of the numeric columns carried in ``events`` (Float64, value from each
        row on), e.g. for deal covariates.
    """

    events: pl.DataFrame
    stages: StageMap
    segment_columns: tuple[str, ...] = ()
    report: ValidationReport | None = None
    cut: dt.datetime | None = None
    source: LogSource | None = None
    numeric_columns: tuple[str, ...] = ()
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segment_columns", tuple(self.segment_columns))
        object.__setattr__(self, "numeric_columns", tuple(self.numeric_columns))
        missing = [c for c in CANONICAL_COLUMNS if c not in self.events.columns]
        missing += [c for c in self.segment_columns if c not in self.events.columns]
        missing += [c for c in self.numeric_columns if c not in self.events.columns]
        if missing:
            raise ParameterError(
                f"`DealLog` needs a canonical event frame; columns {missing} are missing. "
                "Build it with `forecast.read_deal_log`."
            )

    # -- basic facts -------------------------------------------------------------
    def __repr__(self) -> str:
        span = (
            f"{self.first_timestamp:%Y-%m-%d} .. {self.last_timestamp:%Y-%m-%d}"
            if self.events.height
            else "empty"
        )
        return (
            f"DealLog({self.n_deals} deals, {self.events.height} events, {span}, "
            f"open stages {list(self.stages.open)}, segments {list(self.segment_columns)})"
        )

    @property
    def n_deals(self) -> int:
        """Number of distinct deals."""
        return int(self.events["deal_id"].n_unique())

    @property
    def first_timestamp(self) -> dt.datetime:
        """Earliest event time (naive UTC)."""
        return self.events["timestamp"].min()  # type: ignore[return-value]

    @property
    def last_timestamp(self) -> dt.datetime:
        """Instant up to which the history is known (naive UTC): the latest event, or
        for a history rebuilt from dated exports the last export (within the cut),
        whichever is later."""
        last: dt.datetime = self.events["timestamp"].max()  # type: ignore[assignment]
        if self.source is None or not self.source.snapshot_dates:
            return last
        dates = self.source.snapshot_dates
        known = dates[-1] if self.cut is None else self.source.last_export_at_or_before(self.cut)
        if known is not None and (last is None or known > last):
            return known
        return last

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical events and stage map (hex, 16 characters).

        ``source_row`` is left out: the same history read from differently
        ordered or filtered tables has the same fingerprint.
        """
        h = hashlib.sha256()
        h.update(repr(self.stages.to_dict()).encode())
        h.update(repr(self.segment_columns).encode())
        if self.source is not None and self.source.snapshot_dates:
            h.update(repr(self.source.snapshot_dates).encode())
        for name in self.events.columns:
            if name == "source_row":
                continue
            col = self.events[name]
            h.update(name.encode())
            # hashed a slice at a time (the digest of the bytes fed in pieces is that of
            # the whole): a column is never copied whole as Python strings or bytes
            for lo in range(0, col.len(), _FINGERPRINT_ROWS):
                part = col.slice(lo, _FINGERPRINT_ROWS)
                if col.dtype == pl.Utf8:
                    text = "\x1f".join(part.fill_null("\x00").to_list())
                    h.update((text if lo == 0 else "\x1f" + text).encode())
                else:
                    h.update(part.to_physical().fill_null(-(2**62)).to_numpy().tobytes())
        return h.hexdigest()[:16]

    # -- the time cut ---------------------------------------------------------------
    def as_of(self, as_of: object) -> DealLog:
        """The log as it was known at ``as_of``: rows with ``timestamp <= as_of``.

        For a history rebuilt from dated exports (``source.snapshot_dates``), what is
        known at ``as_of`` is what the last export on or before it showed: the rows
        with ``timestamp <=`` that export's instant (a change first seen in a later
        export is dated after the export before it, so none of those rows leaks in).
        The views still measure ages and censor stays at ``as_of``.

        Parameters
        ----------
        as_of : date, datetime, numpy.datetime64 or ISO-8601 str
            Cut instant (naive UTC; a date means its midnight).

        Returns
        -------
        DealLog
            A new log; ``cut`` records the instant.
        """
        t = as_datetime(as_of, "as_of")
        if self.cut is not None and t >= self.cut:
            return self
        key = f"as_of:{t.isoformat()}"
        cut = self._cache.pop(key, None)
        if cut is None:
            known = t
            if self.source is not None and self.source.snapshot_dates:
                last_export = self.source.last_export_at_or_before(t)
                known = last_export if last_export is not None else dt.datetime.min
            latest = self.events["timestamp"].max()
            if latest is None or latest <= known:  # type: ignore[operator]
                ev = self.events  # every row is known: the same frame, no copy
            else:
                ev = self.events.filter(pl.col("timestamp") <= known)
            cut = DealLog(
                ev,
                self.stages,
                self.segment_columns,
                self.report,
                cut=t,
                source=self.source,
                numeric_columns=self.numeric_columns,
            )
        self._cache[key] = cut  # most recently used last
        # keep the most recent cuts only: each holds its events and views, and a backtest
        # cuts the log at one origin after another
        cuts = [k for k in list(self._cache) if k.startswith("as_of:")]
        for old_key in cuts[:-_CUTS_KEPT]:
            self._cache.pop(old_key, None)
        return cut

    def _resolve(self, as_of: object | None) -> tuple[DealLog, dt.datetime]:
        if as_of is None:
            if self.cut is not None:
                return self, self.cut
            return self, self.last_timestamp
        t = as_datetime(as_of, "as_of")
        return self.as_of(t), t

    # -- visits: the shared building block of every view ---------------------------
    def _visits(self) -> pl.DataFrame:
        """One row per stage visit of every deal in this (already cut) log."""
        if "visits" in self._cache:
            return self._cache["visits"]
        codes = self.stages.codes()
        kinds = {s: self.stages.kind(s) for s in codes}
        seg = list(self.segment_columns)
        # The frame is sorted by deal: within-deal operations are done on whole
        # columns with deal-boundary masks (much faster than `.over("deal_id")`
        # with hundreds of thousands of deals).
        first_row = first_row_of_deal()
        start = pl.col("_deal_start")
        ev = (
            self.events.with_columns(
                deal_start().alias("_deal_start"),
                (first_row | (pl.col("stage") != pl.col("stage").shift(1)).fill_null(True))
                .cum_sum()
                .alias("_visit_id"),
            )
            .with_columns(
                ffill_within_deal("amount", start).alias("_amount"),
                ffill_within_deal("close_date", start).alias("_close"),
            )
            .with_columns(
                (pl.col("_visit_id") - pl.col("_visit_id").gather(pl.col("_deal_start")))
                .cast(pl.Int32)
                .alias("visit")
            )
        )
        same_deal_next = pl.col("deal_id").shift(-1) == pl.col("deal_id")

        def next_within_deal(col: str) -> pl.Expr:
            return pl.when(same_deal_next).then(pl.col(col).shift(-1))

        # A visit's rows are contiguous, and so are a deal's: its first values are those
        # of its first row and its last values those of its last row, taken by masks
        # (no grouping by visit or deal, whose hash tables outweigh the frame).
        starts = pl.col("_visit_id") != pl.col("_visit_id").shift(1)
        ends = pl.col("_visit_id") != pl.col("_visit_id").shift(-1)
        first_rows = ev.filter(starts.fill_null(True)).select(
            "deal_id",
            "visit",
            "stage",
            pl.col("timestamp").alias("entered_at"),
            pl.col("_amount").alias("amount_at_entry"),
        )
        last_rows = ev.filter(ends.fill_null(True)).select(
            pl.col("_amount").alias("amount_last"),
            pl.col("_close").alias("close_date_last"),
        )
        visits = pl.concat([first_rows, last_rows], how="horizontal").with_columns(
            pl.col("stage").replace_strict(codes, return_dtype=pl.Int32).alias("stage_code"),
            pl.col("stage").replace_strict(kinds, return_dtype=pl.Utf8).alias("kind"),
            next_within_deal("stage").alias("destination"),
            next_within_deal("entered_at").alias("exited_at"),
            next_within_deal("amount_at_entry").alias("amount_next"),
        )
        del first_rows, last_rows
        # per deal: creation (the earlier of its created_at and its first event) and the
        # last known value of each segment column, at the deal's last row
        deal_end = (pl.col("deal_id") != pl.col("deal_id").shift(-1)).fill_null(True)
        per_deal = (
            ev.select(*[ffill_within_deal(c, start).alias(c) for c in seg], deal_end.alias("_end"))
            .filter("_end")
            .drop("_end")
        )
        del ev
        lengths, low, _ = created_at_extremes_per_deal(self.events)
        starts = np.cumsum(lengths) - lengths
        times = self.events["timestamp"].cast(pl.Datetime("us")).to_physical().to_numpy()
        first_time = np.minimum.reduceat(times, starts) if len(starts) else low
        del times
        created = pl.Series("created_at", np.minimum(low, first_time)).cast(pl.Datetime("us"))
        per_deal = per_deal.with_columns(created)
        # each visit's deal, as an index into the deals (in frame order)
        deal_of_visit = visits.select(
            (pl.col("deal_id") != pl.col("deal_id").shift(1))
            .fill_null(True)
            .cum_sum()
            .cast(pl.Int64)
            - 1
        ).to_series()
        visits = pl.concat(
            [visits, per_deal.select(pl.col("created_at", *seg).gather(deal_of_visit))],
            how="horizontal",
        )
        self._cache["visits"] = visits
        return visits

    # -- views -------------------------------------------------------------------------
    def spells(self, as_of: object | None = None) -> pl.DataFrame:
        """One row per visit to an open stage, right-censored at ``as_of``.

        Parameters
        ----------
        as_of : date-like, optional
            Cut instant; default: this log's cut, else its last event.

        Returns
        -------
        polars.DataFrame
            Columns ``deal_id, visit, stage, stage_code, entered_at, exited_at,
            destination, destination_code, duration_days, censored,
            amount_at_entry, amount_at_exit, created_at, <segments>``
            (``docs/internals.md`` §3). Durations in days, amounts in currency.
        """
        log, t = self._resolve(as_of)
        cached = log._cache.get("spells")
        if cached is not None and cached[0] == t:  # one instant kept: (t, view)
            return cached[1]
        codes = self.stages.codes()
        v = log._visits().filter(pl.col("kind") == "open")
        out = v.select(
            "deal_id",
            "visit",
            "stage",
            "stage_code",
            "entered_at",
            "exited_at",
            "destination",
            pl.col("destination")
            .replace_strict(codes, default=-1, return_dtype=pl.Int32)
            .alias("destination_code"),
            _days(
                pl.col("exited_at").fill_null(pl.lit(t, dtype=pl.Datetime("us")))
                - pl.col("entered_at")
            ).alias("duration_days"),
            pl.col("exited_at").is_null().alias("censored"),
            "amount_at_entry",
            pl.coalesce("amount_next", "amount_last").alias("amount_at_exit"),
            "created_at",
            *self.segment_columns,
        )
        log._cache["spells"] = (t, out)
        return out

    def pipeline(self, as_of: object | None = None) -> pl.DataFrame:
        """Open deals at ``as_of``.

        Returns
        -------
        polars.DataFrame
            One row per open deal: ``deal_id, stage, stage_code, entered_stage_at,
            days_in_stage, created_at, age_days, amount, close_date,
            close_date_pushes, <segments>``. ``days_in_stage`` and ``age_days`` in
            days; ``amount`` in currency (latest known, null if never given);
            ``close_date_pushes`` counts how often the rep's close date moved later.
        """
        log, t = self._resolve(as_of)
        cached = log._cache.get("pipeline")
        if cached is not None and cached[0] == t:  # one instant kept: (t, view)
            return cached[1]
        tlit = pl.lit(t, dtype=pl.Datetime("us"))
        last = log._visits().group_by("deal_id", maintain_order=True).last()
        open_ = last.filter(pl.col("kind") == "open")
        pushes = (
            log.events.select("deal_id", close_date_pushed().alias("_pushed"))
            .group_by("deal_id")
            .agg(pl.col("_pushed").sum().cast(pl.Int32).alias("close_date_pushes"))
        )
        out = open_.join(pushes, on="deal_id", how="left", maintain_order="left").select(
            "deal_id",
            "stage",
            "stage_code",
            pl.col("entered_at").alias("entered_stage_at"),
            _days(tlit - pl.col("entered_at")).alias("days_in_stage"),
            "created_at",
            _days(tlit - pl.col("created_at")).alias("age_days"),
            pl.col("amount_last").alias("amount"),
            pl.col("close_date_last").alias("close_date"),
            pl.col("close_date_pushes").fill_null(0),
            *self.segment_columns,
        )
        log._cache["pipeline"] = (t, out)
        return out

    def outcomes(self, as_of: object | None = None) -> pl.DataFrame:
        """Every deal that exists at ``as_of``, with its status then.

        Returns
        -------
        polars.DataFrame
            ``deal_id, created_at, first_stage, first_stage_code,
            amount_at_creation, status ('open'|'won'|'lost'|'no_decision'),
            closed_at, amount, <segments>``; amounts in currency.
        """
        log, _ = self._resolve(as_of)
        if "outcomes" in log._cache:
            return log._cache["outcomes"]
        out = (
            log._visits()
            .group_by("deal_id", maintain_order=True)
            .agg(
                pl.col("created_at").first(),
                pl.col("stage").first().alias("first_stage"),
                pl.col("stage_code").first().alias("first_stage_code"),
                pl.col("amount_at_entry").first().alias("amount_at_creation"),
                pl.col("kind").last().alias("status"),
                pl.when(pl.col("kind").last() != "open")
                .then(pl.col("entered_at").last())
                .otherwise(None)
                .alias("closed_at"),
                pl.col("amount_last").last().alias("amount"),
                *[pl.col(c).first() for c in self.segment_columns],
            )
        )
        log._cache["outcomes"] = out
        return out

    def bookings(self, start: object, end: object) -> pl.DataFrame:
        """Wins booked in ``[start, end)``: every transition into a won stage.

        Parameters
        ----------
        start, end : date-like
            Window bounds (naive UTC); ``end`` is exclusive.

        Returns
        -------
        polars.DataFrame
            ``deal_id, won_at, amount, <segments>``; amount in currency at the win.
        """
        t0, t1 = as_datetime(start, "start"), as_datetime(end, "end")
        if t1 <= t0:
            raise ParameterError(
                f"`bookings` needs `start` < `end`. Got start={t0:%Y-%m-%d %H:%M}, "
                f"end={t1:%Y-%m-%d %H:%M}."
            )
        if self.cut is not None and self.cut < t1:
            wins = self._wins()  # every row is already before `end`
        else:
            ev = self.events.filter(pl.col("timestamp") < t1)
            wins = DealLog(ev, self.stages, self.segment_columns, self.report, cut=t1)._wins()
        return wins.filter((pl.col("won_at") >= t0) & (pl.col("won_at") < t1))

    def _wins(self) -> pl.DataFrame:
        """Every transition into a won stage of this log: ``deal_id, won_at, amount,
        <segments>`` (cached: small beside the visits, and kept when they are released)."""
        if "wins" not in self._cache:
            self._cache["wins"] = (
                self._visits()
                .filter(pl.col("kind") == "won")
                .select(
                    "deal_id",
                    pl.col("entered_at").alias("won_at"),
                    pl.col("amount_at_entry").alias("amount"),
                    *self.segment_columns,
                )
            )
        return self._cache["wins"]

    def release_visits(self) -> None:
        """Drop the cached visit table (about the size of the event frame).

        The views already taken stay cached (:meth:`spells`, :meth:`outcomes` and
        :meth:`pipeline` per as-of instant, :meth:`bookings`' wins); a view not yet
        taken rebuilds the visits. :meth:`forecast.fit.data.FitData.from_log` calls it
        once it holds its views, so the visits do not outlive the fit's input.
        """
        self._cache.pop("visits", None)

    def booked_amount(self, start: object, end: object) -> float:
        """Total won amount (currency) booked in ``[start, end)``."""
        return float(self.bookings(start, end)["amount"].fill_null(0.0).sum())

    def segments(self, by: Sequence[str] | None = None) -> list[tuple[str, ...]]:
        """Distinct segment keys (tuples of values of ``by``), sorted."""
        by = list(self.segment_columns if by is None else by)
        if not by:
            return [()]
        keys = self.events.select(by).unique().sort(by).rows()
        return [tuple(str(x) for x in k) for k in keys]

    def deal_ids(self) -> np.ndarray:
        """Distinct deal ids, in event-frame order."""
        return self.events["deal_id"].unique(maintain_order=True).to_numpy()
