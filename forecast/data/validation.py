"""Validation of deal histories, the repairs made on purpose, and the report that counts them.

Every reader (:func:`forecast.read_deal_log`) runs its input through the functions
here, in one path, before a :class:`~forecast.data.deal_log.DealLog` is built:

- :func:`resolve_columns` — required columns exist (:class:`MissingColumnError`);
- :func:`check_deal_ids`, :func:`parse_datetime_column`, :func:`check_event_time_range`,
  :func:`parse_amount_column`, :func:`check_stages` — every cell is usable (:class:`DataError`,
  :class:`TimestampError`, :class:`MixedTimezoneError`, :class:`AmountError`,
  :class:`UnknownStageError`);
- :func:`deduplicate_and_sort`, :func:`check_terminal_transitions` and
  :func:`check_creation_dates` — the deliberate repairs (exact duplicates removed, rows
  sorted into time order, re-opened deals kept, updates after a terminal outcome kept,
  rows before ``created_at`` kept) and the impossible histories
  (:class:`TerminalEventError`; a deal closed before its creation,
  :class:`TimestampError`).

Errors name the column (canonical name and the caller's name), the deal, the 0-based
row of the caller's table and the raw value. Repairs are counted in a
:class:`ValidationReport`; nothing is dropped silently.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import polars as pl

from forecast.data.stages import StageMap
from forecast.errors import (
    AmountError,
    DataError,
    MissingColumnError,
    MixedTimezoneError,
    ParameterError,
    TerminalEventError,
    TimestampError,
    UnknownStageError,
)

__all__ = [
    "DEFAULT_TIMESTAMP_FORMATS",
    "EARLIEST_EVENT",
    "INT64_MAX_CENTS",
    "LATEST_EVENT",
    "MAX_AMOUNT",
    "MAX_SUMMED_AMOUNTS",
    "EpochUnit",
    "RepairCounts",
    "ValidationReport",
    "check_creation_dates",
    "check_deal_ids",
    "check_event_time_range",
    "check_stages",
    "check_terminal_transitions",
    "deduplicate_and_sort",
    "parse_amount_column",
    "parse_datetime_column",
    "resolve_columns",
    "resolve_stage_map",
]

#: Largest sum the simulation can hold: won amounts are added in whole cents (1/100 of
#: the currency unit) as int64, so that every sum is exact and order-independent.
INT64_MAX_CENTS = 2**63 - 1
#: Most amounts the simulation adds into one integer: the won deals of a segment in one
#: path and quarter (open deals plus new deals), or one deal's wins over all paths.
MAX_SUMMED_AMOUNTS = 9_000_000
#: Largest amount the loader accepts, in the log's currency: the power of ten at most
#: ``INT64_MAX_CENTS / 100 / MAX_SUMMED_AMOUNTS`` (1.02e10), so that a sum of
#: ``MAX_SUMMED_AMOUNTS`` amounts of this size, in cents, fits int64.
MAX_AMOUNT = float(10 ** math.floor(math.log10(INT64_MAX_CENTS / 100 / MAX_SUMMED_AMOUNTS)))

#: Unit of numeric (epoch) timestamps: seconds, milliseconds or microseconds since
#: 1970-01-01T00:00:00Z.
EpochUnit = Literal["s", "ms", "us"]

_EPOCH_TO_US = {"s": 1_000_000, "ms": 1_000, "us": 1}

#: Naive date-time formats tried, in order, on text timestamps (polars/chrono syntax;
#: ``%.f`` also matches no fraction). Offsets (``Z``, ``+0000``, ``+02:00``) are
#: recognised separately and converted to UTC.
DEFAULT_TIMESTAMP_FORMATS: tuple[str, ...] = (
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)

# A time of day followed by a UTC offset: "...10:30:00Z", "...10:30:00.000+0000",
# "...10:30+02:00". Date-only strings such as "2024-01-15" never match.
_AWARE_PATTERN = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}:?\d{2})$"
_EPOCH_PATTERN = r"^[+-]?\d+(?:\.\d*)?$"


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationReport:
    """What a reader checked and repaired on purpose; nothing is dropped silently.

    Attributes
    ----------
    rows_read : int
        Rows in the caller's table.
    rows_kept : int
        Source rows used: ``rows_read - rows_filtered - exact_duplicates_removed``.
    rows_filtered : int
        Rows dropped by a preset's rule (e.g. Salesforce ``IsDeleted = true``).
    exact_duplicates_removed : int
        Rows identical to an earlier row in every loaded column (first kept).
    rows_reordered : int
        Rows not already in time order: earlier than a row given before them for the
        same deal. All rows are sorted by ``(deal_id, timestamp, source row)``; deals
        appearing interleaved or in any order does not count.
    reopened_deals : int
        Deals that move from a terminal outcome back to an open stage. Kept as-is:
        the point-in-time views see the deal closed until it re-opens.
    post_terminal_updates : int
        Rows after a terminal outcome that keep the same outcome (e.g. the amount of
        a won deal corrected later). Kept; a differently spelt stage of the same
        outcome is renamed to the first one (see ``notes``).
    timestamps_converted_to_utc : int
        Date-time cells (all date columns) that carried a UTC offset or time zone
        and were converted to naive UTC.
    vanished_deals : int
        Snapshot histories only: deals open in some export and missing from every
        later one without a terminal stage (deleted in the CRM or filtered out of
        the report). What was done with them is in ``notes`` (by default: closed
        as no decision halfway between the last export showing them and the next).
    amounts_missing : int
        Events whose amount is null (unknown from that row on).
    deals : int
        Distinct deals in the canonical events.
    events : int
        Rows of the canonical event frame.
    notes : tuple of str
        Everything else worth knowing, one sentence each.
    """

    rows_read: int
    rows_kept: int
    rows_filtered: int = 0
    exact_duplicates_removed: int = 0
    rows_reordered: int = 0
    reopened_deals: int = 0
    post_terminal_updates: int = 0
    timestamps_converted_to_utc: int = 0
    vanished_deals: int = 0
    amounts_missing: int = 0
    deals: int = 0
    events: int = 0
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "notes", tuple(self.notes))

    def __str__(self) -> str:
        lines = [
            f"Validation report: {self.rows_read} rows read, {self.rows_kept} kept -> "
            f"{self.events} events for {self.deals} deals",
        ]
        labels = {
            "rows_filtered": "rows filtered by the preset",
            "exact_duplicates_removed": "exact duplicate rows removed",
            "rows_reordered": "rows sorted into time order",
            "reopened_deals": "deals re-opened after a terminal outcome (kept)",
            "post_terminal_updates": "updates after a terminal outcome (kept)",
            "timestamps_converted_to_utc": "timestamps converted to UTC",
            "vanished_deals": "open deals missing from every later export",
            "amounts_missing": "events without an amount",
        }
        for name, label in labels.items():
            if name == "vanished_deals" and not self.vanished_deals:
                continue  # only snapshot histories can have them
            lines.append(f"  {label:<48} {getattr(self, name):>8}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (``notes`` as a list)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["notes"] = list(self.notes)
        return d

    def to_polars(self) -> pl.DataFrame:
        """One-row frame with one column per count and ``notes`` as a list of str."""
        d = self.to_dict()
        schema: dict[str, pl.DataType] = {k: pl.Int64() for k in d if k != "notes"}
        schema["notes"] = pl.List(pl.Utf8())
        return pl.DataFrame([d], schema=schema)


@dataclass
class RepairCounts:
    """Mutable counters a reader fills while it validates and repairs.

    The fields mirror :class:`ValidationReport`; :meth:`report` freezes them, adding
    the counts read off the final canonical events (deals, events, missing amounts).
    """

    rows_read: int = 0
    rows_filtered: int = 0
    exact_duplicates_removed: int = 0
    rows_reordered: int = 0
    reopened_deals: int = 0
    post_terminal_updates: int = 0
    timestamps_converted_to_utc: int = 0
    vanished_deals: int = 0
    notes: list[str] = field(default_factory=list)

    def report(self, events: pl.DataFrame) -> ValidationReport:
        """The frozen report for the canonical event frame ``events``."""
        return ValidationReport(
            rows_read=self.rows_read,
            rows_kept=self.rows_read - self.rows_filtered - self.exact_duplicates_removed,
            rows_filtered=self.rows_filtered,
            exact_duplicates_removed=self.exact_duplicates_removed,
            rows_reordered=self.rows_reordered,
            reopened_deals=self.reopened_deals,
            post_terminal_updates=self.post_terminal_updates,
            timestamps_converted_to_utc=self.timestamps_converted_to_utc,
            vanished_deals=self.vanished_deals,
            amounts_missing=int(events["amount"].null_count()),
            deals=int(events["deal_id"].n_unique()),
            events=events.height,
            notes=tuple(self.notes),
        )


# ---------------------------------------------------------------------------------------
# helpers for messages
# ---------------------------------------------------------------------------------------
def _label(column: str, source: str | None) -> str:
    """ "`amount` (source column `Amount`)" or just "`amount`"."""
    if source is None or source == column:
        return f"`{column}`"
    return f"`{column}` (source column `{source}`)"


def _first(frame: pl.DataFrame, mask: pl.Series, *cols: str) -> dict[str, Any]:
    """Values of ``cols`` on the first row where ``mask`` holds (in frame order)."""
    return frame.filter(mask).select(cols).row(0, named=True)


# ---------------------------------------------------------------------------------------
# columns
# ---------------------------------------------------------------------------------------
def resolve_columns(
    available: Sequence[str],
    candidates: Mapping[str, Sequence[str]],
    required: Iterable[str],
    *,
    context: str = "",
) -> dict[str, str | None]:
    """Find each canonical column's source column.

    Parameters
    ----------
    available : sequence of str
        Column names of the caller's table.
    candidates : mapping of str to sequence of str
        Canonical name -> source names to look for, first present wins. An empty
        sequence means the column is absent on purpose.
    required : iterable of str
        Canonical names that must be found.
    context : str, optional
        Where the mapping came from (e.g. ``"preset 'salesforce'"``), for messages.

    Returns
    -------
    dict of str to str or None
        Canonical name -> source column name, or ``None`` if absent.

    Raises
    ------
    MissingColumnError
        For the first required column not found; the message names the canonical
        column, the source name(s) looked for, and lists the available columns.
    """
    have = list(available)
    present = set(have)
    found: dict[str, str | None] = {}
    for canonical, names in candidates.items():
        found[canonical] = next((n for n in names if n in present), None)
    for canonical in required:
        if found.get(canonical) is not None:
            continue
        names = list(candidates.get(canonical, ()))
        if not names:
            raise ParameterError(
                f"Column `{canonical}` is required but was mapped to nothing "
                f"(`columns={{'{canonical}': None}}`). Map it to a column of the table."
            )
        looked = " or ".join(f"`{n}`" for n in names)
        close = sorted({m for n in names for m in difflib.get_close_matches(n, have, n=3)})
        hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        src = f" ({context})" if context else ""
        extra = (
            f" If the table has no amounts at all, pass `columns={{'{canonical}': None}}`."
            if canonical == "amount"
            else ""
        )
        raise MissingColumnError(
            f"Missing column `{canonical}`: looked for source column {looked}{src}, "
            f"but the table has only {have}.{hint} Map it with "
            f"`columns={{'{canonical}': '<column name in your table>'}}`.{extra}",
            column=canonical,
            expected=names,
            found=have,
        )
    return found


def check_deal_ids(frame: pl.DataFrame, source: str | None = None) -> pl.Series:
    """Deal ids as non-empty text.

    Parameters
    ----------
    frame : polars.DataFrame
        Must hold ``deal_id`` (any dtype) and ``source_row``.
    source : str, optional
        The caller's name of the column, for messages.

    Returns
    -------
    polars.Series
        ``deal_id`` as Utf8, shape ``(n_rows,)``.

    Raises
    ------
    DataError
        If a deal id is missing or empty, naming the row.
    """
    ids = frame["deal_id"].cast(pl.Utf8)
    bad = ids.is_null() | (ids.str.strip_chars() == "")
    if bad.any():
        row = _first(frame, bad, "source_row")["source_row"]
        raise DataError(
            f"Column {_label('deal_id', source)}, row {row}: the deal id is missing. "
            "Every row needs the id of the deal it describes.",
            column="deal_id",
            row=row,
            expected="a non-empty deal id",
            found=None,
        )
    return ids.alias("deal_id")


# ---------------------------------------------------------------------------------------
# timestamps
# ---------------------------------------------------------------------------------------
def _timestamp_error(
    frame: pl.DataFrame,
    mask: pl.Series,
    raw: pl.Series,
    column: str,
    source: str | None,
    what: str,
    expected: str,
) -> TimestampError:
    r = frame.select("deal_id", "source_row").with_columns(raw.alias("_raw")).filter(mask).row(0)
    deal, row, value = r
    return TimestampError(
        f"Column {_label(column, source)}, deal `{deal}`, row {row}: {what} "
        f"(found {value!r}). Expected {expected}.",
        column=column,
        deal_id=deal,
        row=row,
        expected=expected,
        found=value,
    )


#: Event times outside ``[EARLIEST_EVENT, LATEST_EVENT)`` are typos or placeholders
#: (``0001-01-01``, ``9999-12-31``): a forecast from them would be wrong without a trace.
EARLIEST_EVENT = dt.datetime(1900, 1, 1)
LATEST_EVENT = dt.datetime(2200, 1, 1)


def check_event_time_range(
    frame: pl.DataFrame, values: pl.Series, column: str, source: str | None = None
) -> None:
    """Every parsed event time lies in ``[EARLIEST_EVENT, LATEST_EVENT)``.

    Parameters
    ----------
    frame : polars.DataFrame
        Holds the raw ``column`` plus ``deal_id`` and ``source_row`` (for messages).
    values : polars.Series
        The parsed column (naive UTC ``Datetime``), shape ``(n_rows,)``; nulls pass.
    column : str
        Canonical name of the column.
    source : str, optional
        The caller's name of the column, for messages.

    Raises
    ------
    TimestampError
        For the first value out of range (deal, row and raw value named).
    """
    bad = ((values < EARLIEST_EVENT) | (values >= LATEST_EVENT)).fill_null(False)
    if bad.any():
        when = values.filter(bad)[0]
        raise _timestamp_error(
            frame,
            bad,
            frame[column],
            column,
            source,
            f"the date-time {when} is outside the supported range "
            f"{EARLIEST_EVENT:%Y-%m-%d} .. {LATEST_EVENT - dt.timedelta(days=1):%Y-%m-%d} "
            "(a typo, or a placeholder for an unknown date?)",
            "the date and time the row became true; leave the cell empty where it is unknown "
            "and the column allows it",
        )


def parse_datetime_column(
    frame: pl.DataFrame,
    column: str,
    *,
    source: str | None = None,
    required: bool = False,
    formats: Sequence[str] | None = None,
    epoch_unit: EpochUnit | None = None,
    tally: RepairCounts | None = None,
) -> pl.Series:
    """Parse one date column into naive UTC ``Datetime("us")``.

    Accepted cells: datetimes (naive: taken as UTC; time-zone aware: converted),
    dates (midnight), text in ISO-8601 or one of ``formats`` with or without a UTC
    offset (``Z``, ``+0000``, ``+02:00``; offsets are converted to UTC), and numbers
    or all-digit text as epoch time when ``epoch_unit`` is given.

    Parameters
    ----------
    frame : polars.DataFrame
        Holds ``column`` plus ``deal_id`` and ``source_row`` (for messages).
    column : str
        Canonical name of the column to parse.
    source : str, optional
        The caller's name of the column, for messages.
    required : bool, default False
        Whether a missing (null or empty) cell is an error.
    formats : sequence of str, optional
        strptime-style formats (polars/chrono syntax) tried before
        :data:`DEFAULT_TIMESTAMP_FORMATS`.
    epoch_unit : {"s", "ms", "us"}, optional
        Unit of numeric timestamps; without it numbers are an error.
    tally : RepairCounts, optional
        Receives the count of converted time-zone-aware cells.

    Returns
    -------
    polars.Series
        Naive UTC ``Datetime("us")``, shape ``(n_rows,)``, named ``column``.

    Raises
    ------
    TimestampError
        A required cell is missing, or a cell cannot be parsed (deal, row and raw
        value named).
    MixedTimezoneError
        Text cells of the column mix values with a UTC offset and values without.
    """
    raw = frame[column]
    dtype = raw.dtype
    out: pl.Series
    converted = 0
    if dtype == pl.Null:
        out = pl.Series(column, [None] * frame.height, dtype=pl.Datetime("us"))
    elif dtype == pl.Date:
        out = raw.cast(pl.Datetime("us"))
    elif isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            converted = raw.len() - raw.null_count()
            out = raw.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        else:
            out = raw
        out = out.dt.cast_time_unit("us")
    elif dtype.is_numeric():
        out = _parse_epoch(frame, raw, column, source, epoch_unit)
    else:
        text = raw.cast(pl.Utf8) if dtype != pl.Utf8 else raw
        out, converted = _parse_text(frame, text, column, source, formats, epoch_unit)
    out = out.alias(column)
    if required and out.null_count():
        raise _timestamp_error(
            frame,
            out.is_null(),
            raw,
            column,
            source,
            "the date-time is missing",
            "a date-time on every row",
        )
    if tally is not None:
        tally.timestamps_converted_to_utc += int(converted)
    return out


def _parse_epoch(
    frame: pl.DataFrame,
    raw: pl.Series,
    column: str,
    source: str | None,
    epoch_unit: EpochUnit | None,
) -> pl.Series:
    if epoch_unit is None:
        raise _timestamp_error(
            frame,
            raw.is_not_null(),
            raw,
            column,
            source,
            "numbers found where date-times were expected",
            "date-times, or numbers with `epoch_unit='s'|'ms'|'us'` passed to `read_deal_log`",
        )
    if epoch_unit not in _EPOCH_TO_US:
        raise ParameterError(
            f"The `epoch_unit` parameter must be one of {sorted(_EPOCH_TO_US)}. Got {epoch_unit!r}."
        )
    values = raw.cast(pl.Float64)
    bad = values.is_nan() | values.is_infinite()
    if bad.any():
        raise _timestamp_error(
            frame, bad.fill_null(False), raw, column, source, "not a finite number", "epoch time"
        )
    us = (values * _EPOCH_TO_US[epoch_unit]).round(0).cast(pl.Int64)
    return us.cast(pl.Datetime("us"))


def _parse_text(
    frame: pl.DataFrame,
    text: pl.Series,
    column: str,
    source: str | None,
    formats: Sequence[str] | None,
    epoch_unit: EpochUnit | None,
) -> tuple[pl.Series, int]:
    s = text.str.strip_chars()
    s = pl.select(pl.when(s.str.len_chars() == 0).then(None).otherwise(s)).to_series()
    present = s.is_not_null()
    epoch = (s.str.contains(_EPOCH_PATTERN) & present) if epoch_unit else present & False
    aware = s.str.contains(_AWARE_PATTERN).fill_null(False) & ~epoch
    naive = present & ~aware & ~epoch
    user = list(formats or ())
    if aware.any() and naive.any():
        a = _first(frame.with_columns(text.alias("_raw")), aware, "deal_id", "source_row", "_raw")
        n = _first(frame.with_columns(text.alias("_raw")), naive, "deal_id", "source_row", "_raw")
        raise MixedTimezoneError(
            f"Column {_label(column, source)} mixes date-times with a UTC offset (deal "
            f"`{a['deal_id']}`, row {a['source_row']}: {a['_raw']!r}) and without one (deal "
            f"`{n['deal_id']}`, row {n['source_row']}: {n['_raw']!r}). The naive ones cannot be "
            "placed in time; export the column with offsets everywhere, or naive UTC everywhere.",
            column=column,
            deal_id=n["deal_id"],
            row=n["source_row"],
            expected="all values with a UTC offset, or none",
            found=[a["_raw"], n["_raw"]],
        )
    parsed = pl.Series(column, [None] * s.len(), dtype=pl.Datetime("us"))
    converted = 0
    if aware.any():
        norm = s.str.replace(r"\s*[zZ]$", "+0000").str.replace(r"\s+([+-]\d{2}:?\d{2})$", "$1")
        fmts = [f for f in user if "%z" in f] + [
            f + "%z" for f in (*user, *DEFAULT_TIMESTAMP_FORMATS) if "%z" not in f and "%H" in f
        ]
        parts = [
            norm.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC")
            .dt.replace_time_zone(None)
            .alias(column)
            for f in fmts
        ]
        got = pl.select(pl.coalesce(parts)).to_series()
        parsed = pl.select(pl.when(aware).then(got).otherwise(parsed)).to_series()
        converted = int((aware & got.is_not_null()).sum())
    if naive.any():
        fmts = [f for f in (*user, *DEFAULT_TIMESTAMP_FORMATS) if "%z" not in f]
        parts = [s.str.to_datetime(f, strict=False, time_unit="us").alias(column) for f in fmts]
        got = pl.select(pl.coalesce(parts)).to_series()
        parsed = pl.select(pl.when(naive).then(got).otherwise(parsed)).to_series()
    if epoch.any():
        assert epoch_unit is not None
        us = (s.cast(pl.Float64, strict=False) * _EPOCH_TO_US[epoch_unit]).round(0)
        got = us.cast(pl.Int64, strict=False).cast(pl.Datetime("us"))
        parsed = pl.select(pl.when(epoch).then(got).otherwise(parsed)).to_series()
    bad = present & parsed.is_null()
    if bad.any():
        shown = [*user, *DEFAULT_TIMESTAMP_FORMATS]
        raise _timestamp_error(
            frame,
            bad,
            text,
            column,
            source,
            "cannot parse the date-time",
            f"ISO-8601 such as '2024-01-15T10:30:00' or '2024-01-15T10:30:00.000+0000'; "
            f"formats tried: {shown}"
            + ("; epoch numbers need `epoch_unit`" if epoch_unit is None else "")
            + ". Pass `timestamp_formats=[...]` to `read_deal_log` for other layouts",
        )
    return parsed.alias(column), converted


# ---------------------------------------------------------------------------------------
# amounts
# ---------------------------------------------------------------------------------------
def parse_amount_column(frame: pl.DataFrame, source: str | None = None) -> pl.Series:
    """Amounts as finite, non-negative Float64 up to :data:`MAX_AMOUNT` (null = unknown).

    The simulation adds won amounts in whole cents as 64-bit integers (exact, and the
    same in any order); the limit keeps every such sum of up to
    :data:`MAX_SUMMED_AMOUNTS` amounts below ``2**63`` cents. Larger amounts are to be
    given in a larger unit (thousands, millions of the currency).

    Parameters
    ----------
    frame : polars.DataFrame
        Holds ``amount`` (numeric or text) plus ``deal_id`` and ``source_row``.
    source : str, optional
        The caller's name of the column, for messages.

    Returns
    -------
    polars.Series
        ``amount`` in the log's currency, Float64, shape ``(n_rows,)``.

    Raises
    ------
    AmountError
        A cell is not a number, is NaN or infinite, is negative, or is above
        :data:`MAX_AMOUNT` (the message suggests a currency unit that fits).
    """
    raw = frame["amount"]
    if raw.dtype == pl.Null:
        return pl.Series("amount", [None] * frame.height, dtype=pl.Float64)
    if raw.dtype == pl.Utf8:
        s = raw.str.strip_chars()
        s = pl.select(pl.when(s.str.len_chars() == 0).then(None).otherwise(s)).to_series()
        values = s.cast(pl.Float64, strict=False)
        bad = s.is_not_null() & values.is_null()
        _raise_amount(frame, bad, raw, source, "is not a number")
    elif raw.dtype.is_numeric():
        values = raw.cast(pl.Float64)
    else:
        _raise_amount(frame, raw.is_not_null(), raw, source, f"has dtype {raw.dtype}")
        values = raw.cast(pl.Float64)  # pragma: no cover (unreachable)
    _raise_amount(frame, values.is_nan().fill_null(False), raw, source, "is not a number (NaN)")
    _raise_amount(frame, values.is_infinite().fill_null(False), raw, source, "is infinite")
    _raise_amount(frame, (values < 0).fill_null(False), raw, source, "is negative")
    too_big = (values > MAX_AMOUNT).fill_null(False)
    if too_big.any():
        deal, row, value = (
            frame.select("deal_id", "source_row").with_columns(raw.alias("_raw")).filter(too_big)
        ).row(0)
        raise AmountError(
            f"Column {_label('amount', source)}, deal `{deal}`, row {row}: the amount "
            f"{value!r} is above the largest amount forecast accepts, {MAX_AMOUNT:,.0f} "
            f"({MAX_AMOUNT:.0e}) currency units: won amounts are added up in whole cents as "
            f"64-bit integers, and {MAX_SUMMED_AMOUNTS:,} amounts of that size must fit. "
            + _unit_advice(float(values.max())),  # type: ignore[arg-type]
            column="amount",
            deal_id=deal,
            row=row,
            expected=f"an amount <= {MAX_AMOUNT:.0e}",
            found=value,
        )
    return values.alias("amount")


_UNITS = ((1e3, "thousands"), (1e6, "millions"), (1e9, "billions"), (1e12, "trillions"))


def _unit_advice(largest: float) -> str:
    """How to rescale an amount column whose largest value is ``largest`` (> MAX_AMOUNT)."""
    for factor, name in _UNITS:
        if largest / factor <= MAX_AMOUNT:
            return (
                f"Give the amounts in a larger currency unit, e.g. {name} "
                f"(divide the column by {factor:,.0f})."
            )
    return (
        f"No currency unit up to trillions brings the largest amount, {largest:.3g}, under "
        "the limit: check that the column holds money amounts."
    )


def _raise_amount(
    frame: pl.DataFrame, bad: pl.Series, raw: pl.Series, source: str | None, what: str
) -> None:
    if not bad.any():
        return
    deal, row, value = (
        frame.select("deal_id", "source_row").with_columns(raw.alias("_raw")).filter(bad).row(0)
    )
    raise AmountError(
        f"Column {_label('amount', source)}, deal `{deal}`, row {row}: the amount {what} "
        f"(found {value!r}). Expected a finite number >= 0 in the log's currency, or an "
        "empty cell if unknown.",
        column="amount",
        deal_id=deal,
        row=row,
        expected="a finite number >= 0 or null",
        found=value,
    )


# ---------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------
def resolve_stage_map(
    stage_names: Iterable[str],
    stages: StageMap | Mapping[str, Sequence[str]] | None = None,
    open_stages: Sequence[str] | None = None,
) -> StageMap:
    """The stage map to use: given, built from a partial classification, or inferred by name.

    Parameters
    ----------
    stage_names : iterable of str
        Every stage name in the data.
    stages : StageMap or mapping, optional
        A ``StageMap`` is used as-is. A mapping gives part of the classification —
        any of the keys ``"open"`` (in pipeline order), ``"won"``, ``"lost"``,
        ``"no_decision"`` -> stage names; names it does not list are classified by
        :meth:`StageMap.infer`.
    open_stages : sequence of str, optional
        Open stages in pipeline order (same as ``stages={"open": [...]}``); the
        remaining names are classified as won, lost or no decision by their names
        ("Closed Won", "Lost", "No Decision", ...), with ``"Closed Won"`` /
        ``"Closed Lost"`` as defaults.

    Returns
    -------
    StageMap

    Raises
    ------
    ParameterError
        If both a ``StageMap`` and ``open_stages`` are given, or the mapping has an
        unknown key.
    UnknownStageError
        If inference cannot classify a name.
    """
    if isinstance(stages, StageMap):
        if open_stages is not None:
            raise ParameterError(
                "Pass either `stages=StageMap(...)` or `open_stages=[...]` to `read_deal_log`, "
                "not both."
            )
        return stages
    if stages is not None and not isinstance(stages, Mapping):
        raise ParameterError(
            "The `stages` parameter must be a `StageMap` or a mapping of 'open' / 'won' / "
            f"'lost' / 'no_decision' to stage names. Got {type(stages).__name__}."
        )
    spec = {k: _names(v) for k, v in dict(stages or {}).items()}
    bad = sorted(set(spec) - {"open", "won", "lost", "no_decision"})
    if bad:
        raise ParameterError(
            f"The `stages` mapping has unknown key(s) {bad}; keys are 'open', 'won', 'lost' "
            "and 'no_decision'."
        )
    if open_stages is not None:
        if "open" in spec:
            raise ParameterError(
                "Pass the open stages once: either `open_stages=[...]` or `stages={'open': "
                "[...]}`, not both."
            )
        spec["open"] = _names(open_stages)
    names = sorted({str(s) for s in stage_names})
    return StageMap.infer(
        names,
        open_stages=spec.get("open"),
        won=spec.get("won"),
        lost=spec.get("lost"),
        no_decision=spec.get("no_decision"),
    )


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def check_stages(frame: pl.DataFrame, stages: StageMap, source: str | None = None) -> None:
    """Every row has a stage the map classifies.

    Parameters
    ----------
    frame : polars.DataFrame
        Holds ``stage`` (Utf8), ``deal_id`` and ``source_row``.
    stages : StageMap
    source : str, optional
        The caller's name of the column, for messages.

    Raises
    ------
    UnknownStageError
        A stage is missing, or names not in the map (all listed, with the deal and
        row of the first occurrence of each, and how to classify them).
    """
    missing = frame["stage"].is_null()
    if missing.any():
        r = _first(frame, missing, "deal_id", "source_row")
        raise UnknownStageError(
            f"Column {_label('stage', source)}, deal `{r['deal_id']}`, row {r['source_row']}: "
            "the stage is missing. Every row needs the stage the deal was in from then on.",
            column="stage",
            deal_id=r["deal_id"],
            row=r["source_row"],
            expected="a stage name",
            found=None,
        )
    known = set(stages.names())
    unknown = frame.filter(~pl.col("stage").is_in(list(known)))
    if unknown.height == 0:
        return
    firsts = unknown.group_by("stage", maintain_order=True).first().sort("stage")
    where = "; ".join(
        f"{s!r} (first at deal `{d}`, row {r})"
        for s, d, r in firsts.select("stage", "deal_id", "source_row").iter_rows()
    )
    first = firsts.row(0, named=True)
    raise UnknownStageError(
        f"Column {_label('stage', source)}: cannot classify stage(s) {where}. Known open "
        f"stages (in order): {list(stages.open)}; won: {list(stages.won)}; lost: "
        f"{list(stages.lost)}; no decision: {list(stages.no_decision)}. Pass "
        "`stages=StageMap(open=[...in order...], won=[...], lost=[...], no_decision=[...])` "
        "(or `open_stages=[...]`) to `read_deal_log` to classify them.",
        column="stage",
        deal_id=first["deal_id"],
        row=first["source_row"],
        expected="a stage listed in the StageMap",
        found=firsts["stage"].to_list(),
    )


def created_at_extremes_per_deal(
    events: pl.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Earliest and latest ``created_at`` of each deal, and the deals' row counts.

    The rows of a deal are adjacent (the events are sorted by deal), so the extremes
    are reduced over contiguous blocks (``numpy.minimum.reduceat``) rather than
    grouped by ``deal_id`` (a hash table of every deal).

    Parameters
    ----------
    events : polars.DataFrame
        ``deal_id`` and ``created_at`` (Datetime("us"), nullable), a deal's rows adjacent.

    Returns
    -------
    lengths : numpy.ndarray
        int64, shape ``(n_deals,)``: rows of each deal, in frame order.
    low, high : numpy.ndarray
        int64 microseconds since the epoch, shape ``(n_deals,)``; a deal without any
        ``created_at`` has ``low = int64 max`` and ``high = int64 min``.
    """
    n = events.height
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = (
        events.select((pl.col("deal_id") != pl.col("deal_id").shift(1)).fill_null(True))
        .to_series()
        .arg_true()
        .to_numpy()
        .astype(np.int64)
    )
    lengths = np.diff(np.append(starts, n))
    micros = events["created_at"].cast(pl.Datetime("us")).to_physical()
    limit = np.iinfo(np.int64)
    low = np.minimum.reduceat(micros.fill_null(limit.max).to_numpy(), starts)
    high = np.maximum.reduceat(micros.fill_null(limit.min).to_numpy(), starts)
    return lengths, low, high


def check_creation_dates(
    events: pl.DataFrame, stages: StageMap, tally: RepairCounts, source: str | None = None
) -> None:
    """No deal closes before its ``created_at``; earlier open-stage rows are counted.

    A deal's creation in the views is the earlier of its ``created_at`` and its first
    event. Rows more than a day before ``created_at`` (one day of slack for dates
    written without a time) contradict it: an open-stage row is kept and the deal
    counted in a note; a terminal row (closed before it was created) is an error.

    Parameters
    ----------
    events : polars.DataFrame
        Canonical events (``deal_id``, ``timestamp``, ``stage``, ``created_at``,
        ``source_row``), sorted by deal and time.
    stages : StageMap
    tally : RepairCounts
        Receives the note.
    source : str, optional
        The caller's name of the ``created_at`` column, for messages.

    Raises
    ------
    TimestampError
        Naming the deal, the terminal row, its stage and both dates.
    """
    lengths, low, _ = created_at_extremes_per_deal(events)
    slack = 86_400_000_000  # one day in microseconds
    # a deal without created_at (low = int64 max) has no early row
    cutoff = np.where(low == np.iinfo(np.int64).max, np.iinfo(np.int64).min, low - slack)
    times = events["timestamp"].cast(pl.Datetime("us")).to_physical().to_numpy()
    is_early = times < np.repeat(cutoff, lengths)
    del times
    if not is_early.any():
        return
    created = pl.Series("_created", np.repeat(low, lengths)).cast(pl.Datetime("us"))
    early = events.with_columns(created).filter(pl.Series(is_early))
    kinds = {s: stages.kind(s) for s in stages.names()}
    closed = early.filter(pl.col("stage").replace_strict(kinds, return_dtype=pl.Utf8) != "open")
    if closed.height:
        r = closed.row(0, named=True)
        raise TimestampError(
            f"Column {_label('created_at', source)}, deal `{r['deal_id']}`, row "
            f"{r['source_row']}: the deal closed ({r['stage']!r} at {r['timestamp']}) before "
            f"it was created ({r['_created']}). Expected a creation date on or before every "
            "event of the deal; correct `created_at` or the row.",
            column="created_at",
            deal_id=r["deal_id"],
            row=r["source_row"],
            expected="created_at <= the time of every event of the deal",
            found=r["_created"],
        )
    first = early.row(0, named=True)
    tally.notes.append(
        f"{early['deal_id'].n_unique()} deal(s) have stage changes more than a day before "
        f"their `created_at` (first: deal `{first['deal_id']}`, row {first['source_row']}); "
        "each is taken as created at its first event."
    )


# ---------------------------------------------------------------------------------------
# repairs and the history check
# ---------------------------------------------------------------------------------------
def deduplicate_and_sort(frame: pl.DataFrame, tally: RepairCounts) -> pl.DataFrame:
    """Remove exact duplicate rows and sort by ``(deal_id, timestamp, source_row)``.

    Parameters
    ----------
    frame : polars.DataFrame
        Typed rows in the caller's order, with ``deal_id``, ``timestamp`` and
        ``source_row`` among the columns.
    tally : RepairCounts
        Receives ``exact_duplicates_removed`` (rows equal to an earlier row in every
        column but ``source_row``; the earliest is kept) and ``rows_reordered``
        (rows earlier than a row given before them for the same deal).

    Returns
    -------
    polars.DataFrame
        Same columns, sorted.
    """
    subset = [c for c in frame.columns if c != "source_row"]
    n_rows = frame.height
    if not frame["source_row"].is_sorted():
        frame = frame.sort("source_row")
    if _is_sorted(frame):
        # already in order (the usual CRM export): no sorted copy; deal_id flagged sorted
        # as the sort flags it (polars then groups by deal in order, deterministically)
        events, late = frame.with_columns(pl.col("deal_id").set_sorted()), 0
    else:
        events = frame.sort(["deal_id", "timestamp", "source_row"], maintain_order=True)
        # A row is late when an earlier row of its deal has a later timestamp: in the
        # order of the rows as given (per deal), its rank in the sorted events is below
        # the largest rank before it. Ranks grow with the deal, so a running maximum over
        # the whole frame never carries one deal's ranks into the next.
        late = -1
    del frame
    # Exact duplicates share deal_id and timestamp, so in this order they lie in runs of
    # rows with the same (deal_id, timestamp): only the rows of such runs are compared in
    # full (a table or hash set of every row's values would take several times the
    # frame's memory).
    same_key = (
        pl.col("deal_id").eq_missing(pl.col("deal_id").shift(1))
        & pl.col("timestamp").eq_missing(pl.col("timestamp").shift(1))
    ).fill_null(False)
    shared = events.select(same_key | same_key.shift(-1).fill_null(False)).to_series()
    if shared.any():
        candidates = events.filter(shared).sort("source_row")
        kept = candidates.unique(subset=subset, keep="first", maintain_order=True)
        dropped = candidates["source_row"].filter(
            ~candidates["source_row"].is_in(kept["source_row"].implode())
        )
        if dropped.len():
            events = events.filter(~pl.col("source_row").is_in(dropped.implode()))
    tally.exact_duplicates_removed += n_rows - events.height
    if late < 0:
        late = (
            events.select("deal_id", "source_row")
            .with_row_index("_rank")
            .sort(["deal_id", "source_row"])
            .select((pl.col("_rank") < pl.col("_rank").cum_max().shift(1)).fill_null(False).sum())
            .item()
        )
    tally.rows_reordered += int(late)
    return events


def _is_sorted(frame: pl.DataFrame) -> bool:
    """Whether the rows are sorted by ``(deal_id, timestamp, source_row)`` (strictly,
    since ``source_row`` is unique); one pass with the previous row, no sort."""
    if frame.height < 2:
        return True
    prev = [pl.col(c).shift(1) for c in ("deal_id", "timestamp", "source_row")]
    deal, ts, row = (pl.col(c) for c in ("deal_id", "timestamp", "source_row"))
    after = (deal > prev[0]) | (
        (deal == prev[0]) & ((ts > prev[1]) | ((ts == prev[1]) & (row > prev[2])))
    )
    return bool(frame.select(after.slice(1).fill_null(False).all()).item())


def check_terminal_transitions(
    events: pl.DataFrame, stages: StageMap, tally: RepairCounts
) -> pl.DataFrame:
    """Check what happens after each terminal outcome; count the kept repairs.

    Within each deal (rows sorted by time):

    - terminal -> open stage: a re-opened deal, kept as-is (counted per deal);
    - terminal -> the same outcome: a post-terminal update, kept (counted per row);
      a different name of the same outcome is renamed to the first one so that the
      views see one visit (counted in a note);
    - terminal -> a different outcome with no open stage between: an error.

    Parameters
    ----------
    events : polars.DataFrame
        Canonical events sorted by ``deal_id`` then time (a deal's rows adjacent).
    stages : StageMap
    tally : RepairCounts

    Returns
    -------
    polars.DataFrame
        ``events`` with same-outcome renames applied.

    Raises
    ------
    TerminalEventError
        Naming the deal, both rows and both stages.
    """
    # kinds as small integer codes (one byte a row, not a text column a row); the rows of
    # a deal are adjacent: the previous row of the same deal is the previous row when its
    # deal_id is the same (no grouping by deal needed)
    kind_names = ("open", "won", "lost", "no_decision")
    code = {s: kind_names.index(stages.kind(s)) for s in stages.names()}
    same_deal = events.select(
        (pl.col("deal_id") == pl.col("deal_id").shift(1)).fill_null(False)
    ).to_series()
    kind = events["stage"].replace_strict(code, return_dtype=pl.UInt8)
    prev_kind = pl.select(pl.when(same_deal).then(kind.shift(1))).to_series()
    prev_terminal = (prev_kind.is_not_null() & (prev_kind != 0)).fill_null(False)
    is_terminal = kind != 0
    conflict = (prev_terminal & is_terminal & (kind != prev_kind)).fill_null(False)
    if conflict.any():
        i = int(conflict.arg_true()[0])
        r = events.row(i, named=True)
        before = events.row(i - 1, named=True)  # the deal's previous row
        this_kind, prev_name = kind_names[kind[i]], kind_names[prev_kind[i]]
        raise TerminalEventError(
            f"Column `stage`, deal `{r['deal_id']}`, row {r['source_row']}: the deal goes from "
            f"the terminal stage {before['stage']!r} (row {before['source_row']}, "
            f"{prev_name}) to the different terminal stage {r['stage']!r} "
            f"({this_kind}) without being re-opened. A deal has one outcome at a time; if it "
            "was re-opened, the history needs a row in an open stage between the two, "
            "otherwise correct or remove one of the rows.",
            column="stage",
            deal_id=r["deal_id"],
            row=r["source_row"],
            expected=f"{prev_name} or an open stage after {before['stage']!r}",
            found=r["stage"],
        )
    # runs of one kind (a deal's first row starts one); the stage a run started with, by
    # the index of its first row (runs are contiguous: no grouping by run needed)
    new_run = (kind != prev_kind).fill_null(True)
    idx = pl.int_range(pl.len(), dtype=pl.UInt32)
    run_stage = pl.col("stage").gather(pl.when(pl.lit(new_run)).then(idx).forward_fill())
    renamed_mask = events.select(pl.lit(is_terminal) & (pl.col("stage") != run_stage)).to_series()
    same_outcome = int((prev_terminal & is_terminal).sum())
    reopened = int(events["deal_id"].filter(prev_terminal & ~is_terminal).n_unique())
    tally.post_terminal_updates += same_outcome
    tally.reopened_deals += reopened
    n_renamed = int(renamed_mask.sum())
    if n_renamed:
        renamed = events.select("stage", run_stage.alias("_run_stage")).filter(renamed_mask)
        pairs = sorted(set(renamed.iter_rows()))
        tally.notes.append(
            f"{n_renamed} row(s) after a terminal outcome name the same outcome "
            f"differently; renamed to the first name so the outcome is one visit: "
            + ", ".join(f"{a!r} -> {b!r}" for a, b in pairs)
            + "."
        )
    if reopened:
        tally.notes.append(
            f"{reopened} deal(s) re-open after a terminal outcome; kept as-is (closed until "
            "re-opened in the point-in-time views)."
        )
    if not n_renamed:
        return events  # nothing renamed: the same frame, no copy
    return events.with_columns(
        pl.when(pl.lit(is_terminal)).then(run_stage).otherwise(pl.col("stage")).alias("stage")
    )
