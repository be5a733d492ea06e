"""Readers: a CRM table in any supported form and shape -> a validated `DealLog`.

:func:`read_deal_log` is the only way a :class:`~forecast.data.deal_log.DealLog` is
built from outside data. It loads the table, maps the caller's (or a preset's)
column names onto the canonical ones, parses and checks every cell, turns
one-row-per-deal tables and pipeline snapshots into stage-change events, makes the
deliberate repairs and counts them in a
:class:`~forecast.data.validation.ValidationReport`, and returns the canonical event
frame of ``docs/internals.md`` §2.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from forecast.data.deal_log import DealLog, LogSource
from forecast.data.presets import Preset, Shape, get_preset
from forecast.data.snapshots import (
    FILE_DATE_COLUMN,
    ExportFolder,
    Vanished,
    export_files,
    file_columns,
    load_export_folder,
    snapshots_to_events,
)
from forecast.data.stages import StageMap
from forecast.data.validation import (
    EpochUnit,
    RepairCounts,
    check_creation_dates,
    check_deal_ids,
    check_event_time_range,
    check_stages,
    check_terminal_transitions,
    created_at_extremes_per_deal,
    deduplicate_and_sort,
    parse_amount_column,
    parse_datetime_column,
    resolve_columns,
    resolve_stage_map,
)
from forecast.errors import DataError, ParameterError, TimestampError, UnknownStageError

__all__ = ["CANONICAL_NAMES", "SHAPES", "load_table", "read_deal_log"]

#: Canonical column names a caller's ``columns=`` mapping may use.
CANONICAL_NAMES: tuple[str, ...] = (
    "deal_id",
    "timestamp",
    "stage",
    "amount",
    "close_date",
    "created_at",
)
#: Accepted values of ``shape``.
SHAPES: tuple[str, ...] = ("events", "deals", "snapshots")

_ROW = "__forecast_source_row__"
_REQUIRED: dict[str, frozenset[str]] = {
    "events": frozenset({"deal_id", "timestamp", "stage", "amount"}),
    "snapshots": frozenset({"deal_id", "timestamp", "stage", "amount"}),
    "deals": frozenset({"deal_id", "created_at", "close_date", "stage", "amount"}),
}
_MAY_BE_ABSENT = frozenset({"amount", "close_date", "created_at"})
_TRUE_TEXT = ["true", "t", "1", "yes", "y"]


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------
def load_table(source: Any) -> pl.DataFrame:
    """Load a table as a polars DataFrame, unchanged.

    Parameters
    ----------
    source : str, path, polars DataFrame or LazyFrame, pandas DataFrame, pyarrow Table
        A ``.parquet``/``.pq`` or ``.csv``/``.txt``/``.tsv`` file, or a table in
        memory. CSV cells are read as text (so deal ids keep leading zeros) and
        parsed by the validators; empty cells are null.

    Returns
    -------
    polars.DataFrame
        Rows in the caller's order (row ``i`` is ``source_row`` ``i``; for CSV, the
        first line after the header is row 0).

    Raises
    ------
    ParameterError
        For an unsupported type or file suffix, or a directory.
    FileNotFoundError
        If a path does not exist.
    DataError
        If the file cannot be read as a table: empty, not UTF-8 text (e.g. Latin-1
        or UTF-16), binary, a CSV line with more fields than the header, a header
        naming a column twice or separated by another character, or not a Parquet
        file. The message names the file, the line or byte, and how to fix it.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".pq", ".csv", ".txt", ".tsv"):
            raise ParameterError(
                "The `source` file of `read_deal_log` must end in .parquet, .pq, .csv, .txt or "
                f".tsv. Got {path.name!r}."
            )
        _check_file(path)
        if suffix in (".parquet", ".pq"):
            try:
                return pl.read_parquet(path)
            except pl.exceptions.PolarsError as err:
                raise _parquet_error(path, err) from None
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if isinstance(source, pl.DataFrame):
        return source
    if isinstance(source, pl.LazyFrame):
        return source.collect()
    module = type(source).__module__
    if module.startswith("pandas") and type(source).__name__ == "DataFrame":
        return pl.from_pandas(source)
    if module.startswith("pyarrow") and type(source).__name__ in ("Table", "RecordBatch"):
        frame = pl.from_arrow(source)
        assert isinstance(frame, pl.DataFrame)
        return frame
    raise ParameterError(
        "The `source` parameter of `read_deal_log` must be a Parquet or CSV path, a polars "
        f"DataFrame or LazyFrame, a pandas DataFrame or a pyarrow Table. Got {type(source).__name__}."
    )


# ---------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------
def read_deal_log(
    source: Any,
    *,
    shape: Shape | None = None,
    preset: str | Preset | None = None,
    columns: Mapping[str, str | None] | None = None,
    stages: StageMap | Mapping[str, Sequence[str]] | None = None,
    open_stages: Sequence[str] | None = None,
    segment_columns: Sequence[str] = (),
    entry_stage: str | None = None,
    timestamp_formats: Sequence[str] | None = None,
    epoch_unit: EpochUnit | None = None,
    file_date_format: str | None = None,
    vanished: Vanished = "no_decision",
    numeric_columns: Sequence[str] = (),
) -> DealLog:
    """Load, validate and canonicalise a CRM deal history.

    Parameters
    ----------
    source : str, path, polars DataFrame or LazyFrame, pandas DataFrame, pyarrow Table
        The caller's table (see :func:`load_table`), or a folder of dated exports
        (every ``.csv``/``.tsv``/``.txt``/``.parquet``/``.pq`` file in it; see
        :mod:`forecast.data.snapshots`), read as one snapshot history.
    shape : {"events", "deals", "snapshots"}, optional
        ``"events"`` (default; the preset's if given; for a folder ``"snapshots"``
        unless the preset is an event-log preset, whose files are then parts of one log):
        one row per change — the deal's stage, amount and close date from
        ``timestamp`` on. ``"deals"``: one row per deal with ``created_at``,
        ``close_date``, current stage or outcome and ``amount``; becomes a creation
        event (in the current open stage, or for closed deals in ``entry_stage``)
        and, for closed deals, a terminal event at the close date; the log's
        ``source.shape`` says it has no stage history. ``"snapshots"``: a row per
        deal per export, dated by ``timestamp`` (for a folder: by a ``timestamp``
        column if the files have one, else by the date in each file's name); an
        event is emitted whenever the stage, amount, close date or a segment
        changes between exports, dated inside the interval between the export
        before and the one first showing it (:mod:`forecast.data.snapshots` says
        how and what is lost).
    preset : str or Preset, optional
        Column names, parsing rules, deleted-row filter and default stages of a
        vendor export: ``"salesforce"`` (``OpportunityHistory``), ``"hubspot"``
        (deal-stage history), ``"salesforce_opportunity"`` (the ``Opportunity``
        object, one row per deal), ``"hubspot_deals"`` (the deals export); see
        :mod:`forecast.data.presets`.
    columns : mapping of str to str or None, optional
        Canonical name (``deal_id``, ``timestamp``, ``stage``, ``amount``,
        ``close_date``, ``created_at``) -> column name in the caller's table;
        overrides the preset. ``None`` declares an optional column (``amount``,
        ``close_date``, ``created_at``; for a folder also ``timestamp``: date the
        files by name) absent on purpose. Unmapped names default to the preset's,
        else to the canonical name; ``amount`` is required unless mapped to ``None``.
    stages : StageMap or mapping, optional
        Stage classification: a ``StageMap``, or part of one as a mapping of any of
        ``"open"`` (in order), ``"won"``, ``"lost"``, ``"no_decision"`` to stage
        names, the other names being classified by name. Default: the preset's,
        else inferred from common stage names (and, with a preset that has them,
        from the closed/won flag columns).
    open_stages : sequence of str, optional
        Open stages in pipeline order; terminal names are recognised by name.
    segment_columns : sequence of str, optional
        Columns of the caller's table to carry as segments (text, value from each
        row on), under their own names. A preset adds its descriptive columns
        (e.g. Salesforce ``ForecastCategoryName``, ``Type``, ``LeadSource``) when
        the table has them.
    entry_stage : str, optional
        The open stage in which closed deals of a ``shape="deals"`` table, and deals
        of a snapshot history first seen already closed, are created. Default: the
        first open stage.
    timestamp_formats : sequence of str, optional
        Extra strptime formats (polars/chrono syntax, e.g. ``"%m/%d/%Y"``) tried
        before ISO-8601, for every date column.
    epoch_unit : {"s", "ms", "us"}, optional
        Unit of numeric timestamps (default: the preset's; otherwise numbers are an
        error).
    file_date_format : str, optional
        Folder of exports: date each file by this strftime pattern in its name
        (default when there is no ``timestamp`` column: ``"%Y-%m-%d"``, an ISO date
        anywhere in the name; see :func:`~forecast.data.snapshots.date_in_file_name`).
    vanished : {"no_decision", "lost", "keep_open"}, default "no_decision"
        Snapshots only: what becomes of a deal open in one export and missing from
        every later one (counted in ``report.vanished_deals``).
    numeric_columns : sequence of str, optional
        Numeric columns of the caller's table to carry under their own names (Float64,
        value from each row on), e.g. for deal covariates (``fit(covariates=...)``).
        A value that is not a number is an error naming the column and the row;
        empty cells are unknown values.

    Returns
    -------
    DealLog
        Canonical events (``docs/internals.md`` §2) sorted by ``(deal_id,
        timestamp, source_row)``, the stage map, the segment columns, a
        :class:`~forecast.data.validation.ValidationReport` (``log.report``) and a
        :class:`~forecast.data.deal_log.LogSource` (``log.source``: shape, column
        mapping, files, export dates).

    Raises
    ------
    MissingColumnError
        A required column is absent (names the canonical and the source column).
    TimestampError, MixedTimezoneError, AmountError, UnknownStageError,
    TerminalEventError, DataError
        A cell or a deal history is invalid (names column, deal and 0-based row;
        for a folder, also the file and its row).
    ParameterError
        An argument is invalid.
    FileNotFoundError
        A path does not exist.

    Examples
    --------
    >>> import polars as pl
    >>> from forecast.data.readers import read_deal_log
    >>> table = pl.DataFrame({
    ...     "Id": ["a", "a", "b"],
    ...     "When": ["2024-01-02", "2024-02-01", "2024-01-05"],
    ...     "Stage": ["Prospecting", "Closed Won", "Prospecting"],
    ...     "Value": [100.0, 120.0, 50.0],
    ... })
    >>> log = read_deal_log(table, columns={"deal_id": "Id", "timestamp": "When",
    ...                                     "stage": "Stage", "amount": "Value"})
    >>> log.pipeline("2024-03-01")["deal_id"].to_list()
    ['b']
    >>> log.report.events
    3
    """
    p = get_preset(preset) if preset is not None else None
    folder = Path(source) if _is_folder(source) else None
    if shape is None:
        shape = p.shape if p is not None else "events"
        if folder is not None and (p is None or shape == "deals"):
            shape = "snapshots"  # one-row-per-deal exports saved over time
    if shape not in SHAPES:
        raise ParameterError(
            f"The `shape` parameter of `read_deal_log` must be one of {list(SHAPES)}. Got {shape!r}."
        )
    if folder is not None and shape == "deals":
        raise ParameterError(
            f"{folder} is a folder: its exports, side by side, are a snapshot history. Pass "
            "`shape='snapshots'` (one row per deal per export) or `shape='events'` (parts of "
            "one event log)."
        )
    if file_date_format is not None and (folder is None or shape != "snapshots"):
        raise ParameterError(
            "`file_date_format` dates the files of a folder of exports; it needs a folder as "
            "`source` and `shape='snapshots'`."
        )
    if epoch_unit is None and p is not None:
        epoch_unit = p.epoch_unit
    if epoch_unit not in (None, "s", "ms", "us"):
        raise ParameterError(
            "The `epoch_unit` parameter of `read_deal_log` must be 's', 'ms' or 'us'. "
            f"Got {epoch_unit!r}."
        )
    if isinstance(timestamp_formats, str):
        timestamp_formats = (timestamp_formats,)
    formats = [*(timestamp_formats or ()), *(p.timestamp_formats if p is not None else ())]
    segments = _check_segments(segment_columns)
    numerics = _check_numeric_columns(numeric_columns, segments)
    if stages is None and open_stages is None and p is not None:
        stages = p.stages

    exports: ExportFolder | None = None
    if folder is not None:
        by_name = _dated_by_name(folder, shape, p, columns, file_date_format)
        if by_name:
            columns = {**dict(columns or {}), "timestamp": FILE_DATE_COLUMN}
        candidates, _ = _column_plan(shape, p, columns)
        wanted = {c for cands in candidates.values() for c in cands} | set(segments)
        wanted |= set(numerics)
        wanted |= set(p.extra_columns if p is not None else ())
        table, exports = load_export_folder(
            folder, wanted=wanted, by_name=by_name, file_date_format=file_date_format
        )
    else:
        table = _load_needed_columns(source, shape, p, columns, (*segments, *numerics))
    # handed over in a list so that `_canonical` holds the only reference and can let the
    # loaded table go as soon as the typed frame exists (a copy less at the peak)
    loaded = [table]
    del table
    try:
        return _canonical(
            loaded,
            shape,
            p,
            columns,
            stages,
            open_stages,
            segments,
            entry_stage,
            formats,
            epoch_unit,
            vanished,
            exports,
            source,
            numerics,
        )
    except DataError as err:
        if exports is None or err.row is None:
            raise
        raise type(err)(
            f"{err.message} (Row {err.row} is {exports.where(err.row)}.)",
            column=err.column,
            deal_id=err.deal_id,
            row=err.row,
            expected=err.expected,
            found=err.found,
        ) from None


def _canonical(
    loaded: list[pl.DataFrame],
    shape: str,
    p: Preset | None,
    columns: Mapping[str, str | None] | None,
    stages: StageMap | Mapping[str, Sequence[str]] | None,
    open_stages: Sequence[str] | None,
    segments: tuple[str, ...],
    entry_stage: str | None,
    formats: Sequence[str],
    epoch_unit: EpochUnit | None,
    vanished: Vanished,
    exports: ExportFolder | None,
    source: Any,
    numerics: tuple[str, ...] = (),
) -> DealLog:
    """The reader's steps after loading: map, type, classify, build events.

    ``loaded`` holds the loaded table, taken out of it here: once the typed frame
    exists nothing refers to the table any more and its memory is released.
    """
    table = loaded.pop()
    numbered = _ROW in table.columns  # numbered by the scan (`_collect_needed`)
    if table.height == 0:
        raise DataError(
            f"{_what(source).capitalize()} has no rows (only the columns "
            f"{[c for c in table.columns if c != _ROW]}). "
            "Expected a deal history: at least one row per deal.",
            expected="at least one row",
            found=0,
        )
    tally = RepairCounts(rows_read=table.height)
    if not numbered:
        table = table.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW))
    if p is not None:
        table = _drop_deleted(table, p, tally)
        if table.height == 0:
            raise DataError(
                f"All {tally.rows_read} rows of {_what(source)} are marked deleted "
                f"(dropped by preset {p.name!r}): nothing is left to read.",
                expected="at least one row not marked deleted",
                found=0,
            )

    candidates, required = _column_plan(shape, p, columns)
    available = [c for c in table.columns if c != _ROW]
    context = f"preset {p.name!r}" if p is not None else ""
    found = resolve_columns(available, candidates, required, context=context)
    for s in (*segments, *numerics):
        if s not in table.columns:
            resolve_columns(available, {s: (s,)}, [s])  # raises MissingColumnError
    if exports is not None:
        exports.check_columns({c: src for c, src in found.items() if src is not None})
        exports.check_columns({s: s for s in (*segments, *numerics)})
    if p is not None:
        used = {src for src in found.values() if src is not None}
        segments = (
            *segments,
            *(c for c in p.segment_columns if c in table.columns and c not in (*segments, *used)),
        )
    for name in sorted(_MAY_BE_ABSENT - set(required)):
        if found.get(name) is None and (columns is None or name not in columns):
            tally.notes.append(f"No `{name}` column in the table: `{name}` is null throughout.")

    if stages is None or not isinstance(stages, StageMap):
        stages = _stage_spec_from_flags(table, p, found.get("stage"), stages, open_stages, tally)
    frame = table.select(
        *[
            (pl.col(src) if src is not None else pl.lit(None)).alias(canon)
            for canon, src in found.items()
        ],
        *[pl.col(s).cast(pl.Utf8) for s in segments],
        *[pl.col(s) for s in numerics],
        pl.col(_ROW).alias("source_row"),
    )
    del table  # columns not selected are released; the selected ones live on in `frame`
    frame = _numeric_typed(frame, numerics)
    frame = _typed(frame, found, shape, formats, epoch_unit, tally)
    stage_map = _stage_map(frame, stages, open_stages, found["stage"])
    check_stages(frame, stage_map, found["stage"])

    snapshot_dates: tuple[dt.datetime, ...] = ()
    if shape == "events":
        # one chunk per column, as a sort leaves it: sums over the columns then add up in
        # the same order whatever the source's row groups (no copy if already one chunk)
        events = deduplicate_and_sort(frame, tally).rechunk()
        del frame
        _note_created_at(events, tally)
    elif shape == "snapshots":
        events, stage_map, snapshot_dates = snapshots_to_events(
            frame,
            (*segments, *numerics),
            stage_map,
            found,
            tally,
            vanished,
            entry_stage=entry_stage,
            export_instants=(exports.dates or ()) if exports is not None else (),
        )
        events = events.sort(["deal_id", "timestamp", "source_row"], maintain_order=True)
    else:
        events = _deals_to_events(
            frame, (*segments, *numerics), stage_map, entry_stage, found, tally
        )
    events = check_terminal_transitions(events, stage_map, tally)
    check_creation_dates(events, stage_map, tally, source=found["created_at"])
    events = events.select(
        pl.col("deal_id").cast(pl.Utf8),
        pl.col("timestamp").cast(pl.Datetime("us")),
        pl.col("stage").cast(pl.Utf8),
        pl.col("amount").cast(pl.Float64),
        pl.col("close_date").cast(pl.Datetime("us")),
        pl.col("created_at").cast(pl.Datetime("us")),
        *[pl.col(s).cast(pl.Utf8) for s in segments],
        *[pl.col(s).cast(pl.Float64) for s in numerics],
        pl.col("source_row").cast(pl.Int64),
    )
    if exports is not None:
        files: tuple[str, ...] = tuple(str(f) for f in exports.files)
    elif isinstance(source, str | os.PathLike):
        files = (str(source),)
    else:
        files = ()
    origin = LogSource(
        shape=shape,
        columns=found,
        preset=p.name if p is not None else None,
        files=files,
        snapshot_dates=snapshot_dates,
    )
    return DealLog(
        events, stage_map, segments, tally.report(events), source=origin, numeric_columns=numerics
    )


# ---------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------
def _load_needed_columns(
    source: Any,
    shape: str,
    p: Preset | None,
    columns: Mapping[str, str | None] | None,
    segments: tuple[str, ...],
) -> pl.DataFrame:
    """Read the table; Parquet files and LazyFrames are scanned and only the columns
    the mapping needs are materialised (large CRM exports carry many more)."""
    lazy: pl.LazyFrame | None = None
    if isinstance(source, pl.LazyFrame):
        lazy = source
    elif isinstance(source, str | os.PathLike) and Path(source).suffix.lower() in (
        ".parquet",
        ".pq",
    ):
        _check_file(Path(source))
        lazy = pl.scan_parquet(source)
    if lazy is None:
        return load_table(source)
    try:
        return _collect_needed(lazy, shape, p, columns, segments)
    except pl.exceptions.PolarsError as err:
        if isinstance(source, pl.LazyFrame):
            raise
        raise _parquet_error(Path(source), err) from None


def _collect_needed(
    lazy: pl.LazyFrame,
    shape: str,
    p: Preset | None,
    columns: Mapping[str, str | None] | None,
    segments: tuple[str, ...],
) -> pl.DataFrame:
    names = lazy.collect_schema().names()
    candidates, required = _column_plan(shape, p, columns)
    complete = all(any(c in names for c in candidates.get(r, ())) for r in required)
    if not complete or not set(segments) <= set(names):
        # Materialise everything so the missing-column error can list what the table has.
        return lazy.collect()
    wanted = {c for cands in candidates.values() for c in cands}
    wanted |= set(segments) | set(p.extra_columns if p is not None else ())
    # rows numbered while scanning: the numbers come in the same chunks as the columns,
    # so selecting columns later does not copy (re-chunk) the whole table
    return (
        lazy.select([c for c in names if c in wanted])
        .with_row_index(_ROW)
        .with_columns(pl.col(_ROW).cast(pl.Int64))
        .collect()
    )


def _is_folder(source: Any) -> bool:
    return isinstance(source, str | os.PathLike) and Path(source).is_dir()


def _dated_by_name(
    folder: Path,
    shape: str,
    p: Preset | None,
    columns: Mapping[str, str | None] | None,
    file_date_format: str | None,
) -> bool:
    """Whether the exports of ``folder`` are dated by their file names.

    By name when ``file_date_format`` is given or ``columns['timestamp']`` is
    ``None``; by column when ``columns['timestamp']`` names one; otherwise by a
    column if the first file has the (preset's or canonical) timestamp column, else
    by name.
    """
    columns = dict(columns or {})
    if file_date_format is not None:
        if columns.get("timestamp") is not None:
            raise ParameterError(
                "Date the exports either by a column (`columns['timestamp']`) or by their file "
                "names (`file_date_format`), not both."
            )
        return True
    if shape != "snapshots":
        return False
    if "timestamp" in columns:
        return columns["timestamp"] is None
    candidates, _ = _column_plan(shape, p, {})
    first = export_files(folder)[0]
    header = set(file_columns(first))
    return not any(c in header for c in candidates["timestamp"])


def _truthy(col: pl.Series) -> pl.Series:
    """A flag column (bool, 0/1, or text true/false/yes/no) as booleans, null stays null."""
    if col.dtype == pl.Boolean:
        return col
    if col.dtype.is_numeric():
        return col != 0
    return (
        col.cast(pl.Utf8)
        .str.strip_chars()
        .str.to_lowercase()
        .is_in(_TRUE_TEXT)
        .set(col.is_null() | (col.cast(pl.Utf8).str.strip_chars() == ""), None)
    )


def _stage_spec_from_flags(
    table: pl.DataFrame,
    p: Preset | None,
    stage_source: str | None,
    stages: Mapping[str, Sequence[str]] | None,
    open_stages: Sequence[str] | None,
    tally: RepairCounts,
) -> Mapping[str, Sequence[str]] | None:
    """Add the won/lost names told by a preset's closed/won flag columns to ``stages``.

    A stage name is won when every row with it is flagged closed and won, lost when
    every row is closed and not won; names the caller classified are left alone.
    """
    if p is None or stage_source is None:
        return stages
    closed = next((c for c in p.closed_columns if c in table.columns), None)
    won = next((c for c in p.won_columns if c in table.columns), None)
    if closed is None or won is None:
        return stages
    flags = pl.DataFrame(
        {
            "stage": table[stage_source].cast(pl.Utf8),
            "closed": _truthy(table[closed]),
            "won": _truthy(table[won]),
        }
    ).filter(pl.col("stage").is_not_null())
    per = flags.group_by("stage").agg(
        pl.col("closed").all().alias("all_closed"),
        pl.col("closed").any().alias("any_closed"),
        (pl.col("closed") & pl.col("won")).all().alias("all_won"),
        (pl.col("closed") & ~pl.col("won")).all().alias("all_lost"),
    )
    spec = {k: list(v) for k, v in dict(stages or {}).items()}
    taken = {s for names in spec.values() for s in names} | set(open_stages or ())
    told = {"won": [], "lost": []}
    mixed = []
    for row in per.sort("stage").iter_rows(named=True):
        if row["stage"] in taken:
            continue
        if row["all_won"]:
            told["won"].append(row["stage"])
        elif row["all_lost"]:
            told["lost"].append(row["stage"])
        elif row["any_closed"] and not row["all_closed"]:
            mixed.append(row["stage"])
    for kind, names in told.items():
        spec[kind] = [*spec.get(kind, []), *names]
    if mixed:
        tally.notes.append(
            f"Stage(s) {mixed} are flagged closed (`{closed}`) on some rows only; classified by "
            "name instead."
        )
    return spec


def _check_segments(segment_columns: Sequence[str]) -> tuple[str, ...]:
    if isinstance(segment_columns, str):
        segment_columns = (segment_columns,)
    segs = tuple(str(s) for s in segment_columns)
    clash = [s for s in segs if s in (*CANONICAL_NAMES, "source_row")]
    if clash or len(set(segs)) != len(segs):
        raise ParameterError(
            "The `segment_columns` of `read_deal_log` must be distinct and must not use the "
            f"canonical names {[*CANONICAL_NAMES, 'source_row']}. Got {list(segs)}; rename "
            "the column in the table first."
        )
    return segs


def _check_numeric_columns(
    numeric_columns: Sequence[str], segments: tuple[str, ...]
) -> tuple[str, ...]:
    if isinstance(numeric_columns, str):
        numeric_columns = (numeric_columns,)
    names = tuple(str(s) for s in numeric_columns)
    clash = [s for s in names if s in (*CANONICAL_NAMES, "source_row", *segments)]
    if clash or len(set(names)) != len(names):
        raise ParameterError(
            "The `numeric_columns` of `read_deal_log` must be distinct and must not use the "
            f"canonical names {[*CANONICAL_NAMES, 'source_row']} or a segment column. Got "
            f"{list(names)}."
        )
    return names


def _numeric_typed(frame: pl.DataFrame, numerics: tuple[str, ...]) -> pl.DataFrame:
    """The numeric columns as Float64; a cell that is not a number is a DataError."""
    for name in numerics:
        col = frame[name]
        if col.dtype.is_numeric():
            as_float = col.cast(pl.Float64)
        else:
            text = col.cast(pl.Utf8).str.strip_chars()
            as_float = text.cast(pl.Float64, strict=False)
            bad = (text.is_not_null() & (text != "") & as_float.is_null()).arg_true()
            if bad.len():
                i = int(bad[0])
                row = int(frame["source_row"][i])
                raise DataError(
                    f"Column `{name}` (declared in `numeric_columns`), row {row}: "
                    f"{col[i]!r} is not a number. Expected a number or an empty cell.",
                    column=name,
                    row=row,
                    expected="a number",
                    found=col[i],
                )
        bad_inf = as_float.is_infinite().arg_true()
        if bad_inf.len():
            i = int(bad_inf[0])
            row = int(frame["source_row"][i])
            raise DataError(
                f"Column `{name}` (declared in `numeric_columns`), row {row}: {col[i]!r} is "
                "infinite. Expected a finite number or an empty cell.",
                column=name,
                row=row,
                expected="a finite number",
                found=col[i],
            )
        frame = frame.with_columns(as_float.alias(name))
    return frame


def _column_plan(
    shape: str, p: Preset | None, columns: Mapping[str, str | None] | None
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Candidate source names per canonical column, and the required ones."""
    columns = dict(columns or {})
    bad = sorted(set(columns) - set(CANONICAL_NAMES))
    if bad:
        raise ParameterError(
            f"The `columns` mapping of `read_deal_log` has unknown key(s) {bad}; keys are "
            f"canonical names {list(CANONICAL_NAMES)} and values your table's column names. "
            "Segment columns go in `segment_columns`."
        )
    if shape == "deals" and columns.get("timestamp") is not None:
        raise ParameterError(
            "`columns['timestamp']` is not used with `shape='deals'`: a one-row-per-deal table "
            "is dated by `created_at` and `close_date`."
        )
    candidates: dict[str, tuple[str, ...]] = {}
    explicit: set[str] = set()
    for canon in CANONICAL_NAMES:
        if canon in columns:
            value = columns[canon]
            if value is not None and not isinstance(value, str):
                raise ParameterError(
                    f"`columns[{canon!r}]` must be a column name (str) or None. Got {value!r}."
                )
            candidates[canon] = () if value is None else (value,)
            if value is not None:
                explicit.add(canon)
        elif p is not None and canon in p.columns:
            candidates[canon] = p.columns[canon]
        else:
            candidates[canon] = (canon,)
    if shape == "deals":
        candidates["timestamp"] = ()
    required = set(_REQUIRED[shape])
    if p is not None:
        required -= p.optional
    required -= {c for c in _MAY_BE_ABSENT if c in columns and columns[c] is None}
    if shape == "deals":
        required |= {"created_at", "close_date"}  # the only dates of a deal row
    required |= explicit
    return candidates, [c for c in CANONICAL_NAMES if c in required]


def _drop_deleted(table: pl.DataFrame, p: Preset, tally: RepairCounts) -> pl.DataFrame:
    name = next((c for c in p.deleted_columns if c in table.columns), None)
    if name is None:
        return table
    flag = _truthy(table[name]).fill_null(False)
    n = int(flag.sum())
    if n:
        tally.rows_filtered += n
        tally.notes.append(
            f"{n} row(s) with `{name}` true (deleted in the CRM) were dropped by preset {p.name!r}."
        )
    return table.filter(~flag)


def _typed(
    frame: pl.DataFrame,
    found: Mapping[str, str | None],
    shape: str,
    formats: Sequence[str],
    epoch_unit: EpochUnit | None,
    tally: RepairCounts,
) -> pl.DataFrame:
    frame = frame.with_columns(check_deal_ids(frame, found["deal_id"]))
    dates = {}
    for name, required in (
        ("timestamp", shape != "deals"),
        ("close_date", False),
        ("created_at", shape == "deals"),
    ):
        dates[name] = parse_datetime_column(
            frame,
            name,
            source=found[name],
            required=required,
            formats=formats,
            epoch_unit=epoch_unit,
            tally=tally,
        )
    # the times of events: stage changes, creation, and the close of a one-row-per-deal table
    for name in ("timestamp", "created_at", *(("close_date",) if shape == "deals" else ())):
        check_event_time_range(frame, dates[name], name, source=found[name])
    amount = parse_amount_column(frame, found["amount"])
    return frame.with_columns(*dates.values(), amount, pl.col("stage").cast(pl.Utf8)).select(
        "deal_id", *CANONICAL_NAMES[1:], pl.exclude(*CANONICAL_NAMES)
    )


def _stage_map(
    frame: pl.DataFrame,
    stages: StageMap | None,
    open_stages: Sequence[str] | None,
    source: str | None,
) -> StageMap:
    names = frame["stage"].drop_nulls().unique().to_list()
    try:
        return resolve_stage_map(names, stages, open_stages)
    except UnknownStageError as err:
        found = err.found if isinstance(err.found, list) else []
        firsts = (
            frame.filter(pl.col("stage").is_in(found))
            .group_by("stage", maintain_order=True)
            .first()
            .sort("stage")
        )
        where = "; ".join(
            f"{s!r} first at deal `{d}`, row {r}"
            for s, d, r in firsts.select("stage", "deal_id", "source_row").iter_rows()
        )
        col = "`stage`" if source in (None, "stage") else f"`stage` (source column `{source}`)"
        first = (
            firsts.row(0, named=True) if firsts.height else {"deal_id": None, "source_row": None}
        )
        raise UnknownStageError(
            err.message.replace("Column `stage`", f"Column {col}", 1)
            + (f" Where: {where}." if where else ""),
            column="stage",
            deal_id=first["deal_id"],
            row=first["source_row"],
            expected=err.expected,
            found=err.found,
        ) from None


def _note_created_at(events: pl.DataFrame, tally: RepairCounts) -> None:
    _, low, high = created_at_extremes_per_deal(events)
    varying = int(np.count_nonzero(low < high))  # deals without created_at: low > high
    if varying:
        tally.notes.append(
            f"{varying} deal(s) have `created_at` values that differ between rows; kept as "
            "given (each view uses the earliest value known at its as-of date)."
        )


def _deals_to_events(
    frame: pl.DataFrame,
    segments: tuple[str, ...],
    stages: StageMap,
    entry_stage: str | None,
    found: Mapping[str, str | None],
    tally: RepairCounts,
) -> pl.DataFrame:
    entry = stages.open[0] if entry_stage is None else str(entry_stage)
    if entry not in stages.open:
        raise ParameterError(
            f"The `entry_stage` parameter of `read_deal_log` must be an open stage "
            f"{list(stages.open)}. Got {entry_stage!r}."
        )
    subset = [c for c in frame.columns if c != "source_row"]
    deduped = frame.sort("source_row").unique(subset=subset, keep="first", maintain_order=True)
    tally.exact_duplicates_removed += frame.height - deduped.height
    frame = deduped
    dup = frame.filter(pl.col("deal_id").is_duplicated())
    if dup.height:
        deal = dup["deal_id"][0]
        rows = dup.filter(pl.col("deal_id") == deal)["source_row"].to_list()
        raise DataError(
            f"Column `deal_id`{_src(found, 'deal_id')}: deal `{deal}` appears on rows {rows} "
            "with different values, but `shape='deals'` needs one row per deal. Use "
            "`shape='events'` or `shape='snapshots'` for a history.",
            column="deal_id",
            deal_id=deal,
            row=rows[1],
            expected="one row per deal",
            found=rows,
        )
    kinds = {s: stages.kind(s) for s in stages.names()}
    closed = pl.col("stage").replace_strict(kinds, return_dtype=pl.Utf8) != "open"
    frame = frame.with_columns(closed.alias("_closed"))
    no_close = frame.filter(pl.col("_closed") & pl.col("close_date").is_null())
    if no_close.height:
        r = no_close.row(0, named=True)
        raise TimestampError(
            f"Column `close_date`{_src(found, 'close_date')}, deal `{r['deal_id']}`, row "
            f"{r['source_row']}: the deal is closed ({r['stage']!r}) but has no close date. "
            "Expected the date the deal was won or lost.",
            column="close_date",
            deal_id=r["deal_id"],
            row=r["source_row"],
            expected="a close date for every closed deal",
            found=None,
        )
    early = frame.filter(
        pl.col("_closed") & (pl.col("close_date") < pl.col("created_at").dt.truncate("1d"))
    )
    if early.height:
        r = early.row(0, named=True)
        raise TimestampError(
            f"Column `close_date`{_src(found, 'close_date')}, deal `{r['deal_id']}`, row "
            f"{r['source_row']}: the deal closed on {r['close_date']:%Y-%m-%d}, before it was "
            f"created ({r['created_at']:%Y-%m-%d %H:%M}). Expected a close date on or after "
            "the creation date.",
            column="close_date",
            deal_id=r["deal_id"],
            row=r["source_row"],
            expected="close_date >= created_at",
            found=r["close_date"],
        )
    keep = ["deal_id", "timestamp", "stage", "amount", "close_date", "created_at", *segments]
    creation = frame.with_columns(
        pl.col("created_at").alias("timestamp"),
        pl.when(pl.col("_closed")).then(pl.lit(entry)).otherwise(pl.col("stage")).alias("stage"),
        # a closed deal's close date is its actual close, unknown before it: no leak
        pl.when(pl.col("_closed"))
        .then(pl.lit(None, dtype=pl.Datetime("us")))
        .otherwise(pl.col("close_date"))
        .alias("close_date"),
        pl.lit(0).alias("_order"),
    ).select(*keep, "source_row", "_order")
    closing = (
        frame.filter(pl.col("_closed"))
        .with_columns(
            pl.max_horizontal("close_date", "created_at").alias("timestamp"),
            pl.lit(1).alias("_order"),
        )
        .select(*keep, "source_row", "_order")
    )
    events = (
        pl.concat([creation, closing])
        .sort(["deal_id", "timestamp", "source_row", "_order"])
        .drop("_order")
    )
    n_closed = closing.height
    tally.notes.append(
        f"One-row-per-deal table: {frame.height} deals became {events.height} events. The "
        f"{n_closed} closed deal(s) enter {entry!r} at creation and close at their close date "
        "(no stage history in between; their close date is not shown before it happens); "
        "open deals are in their current stage since creation."
    )
    return events


def _src(found: Mapping[str, str | None], canon: str) -> str:
    src = found.get(canon)
    return f" (source column `{src}`)" if src is not None and src != canon else ""


# ---------------------------------------------------------------------------------------
# reading files: what went wrong, in words
# ---------------------------------------------------------------------------------------
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_PARQUET_MAGIC = b"PAR1"
_CHUNK = 1 << 20


def _what(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return f"the file {Path(source).name}"
    return "the table"


def _check_file(path: Path) -> None:
    """A readable, non-empty file (the readers' own messages do not say which)."""
    if path.is_dir():
        raise ParameterError(
            f"The `source` of `read_deal_log` must be a file. Got the directory {path}."
        )
    if not path.is_file():
        raise FileNotFoundError(f"The `source` file of `read_deal_log` does not exist: {path}")
    if path.stat().st_size == 0:
        what = (
            "a Parquet file"
            if path.suffix.lower() in (".parquet", ".pq")
            else "a header row with the column names, then one row per event"
        )
        raise DataError(
            f"The file {path.name} is empty (0 bytes). Expected a deal history: {what}.",
            expected="a non-empty file",
            found="0 bytes",
        )


def _read_csv(path: Path, sep: str) -> pl.DataFrame:
    with open(path, "rb") as fh:
        head = fh.read(_CHUNK)
    _check_not_utf16_or_parquet(path, head)
    try:
        frame = pl.read_csv(path, infer_schema=False, separator=sep)
    except pl.exceptions.NoDataError:
        raise DataError(
            f"The file {path.name} holds no table: no header row, only blank lines. Expected "
            "a header row with the column names, then one row per event.",
            expected="a header row",
            found="blank lines",
        ) from None
    except pl.exceptions.PolarsError as err:
        _check_utf8(path, head)
        raise _csv_error(path, sep, err) from None
    header = _csv_header(path, sep)
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        where = "; ".join(
            f"`{c}` in columns {[i + 1 for i, h in enumerate(header) if h == c]}" for c in twice
        )
        raise DataError(
            f"The header of {path.name} names a column more than once: {where}. Expected "
            "distinct column names; rename or remove the extra column(s).",
            column=twice[0],
            expected="distinct column names",
            found=header,
        )
    if frame.width == 1:
        other = next((c for c in (";", "\t", "|", ",") if c != sep and c in frame.columns[0]), None)
        if other is not None:
            said = {"\t": "tabs", ",": "commas", ";": "semicolons", "|": "'|'"}
            raise DataError(
                f"The file {path.name} has a single column {frame.columns[0]!r}: its fields "
                f"seem to be separated by {said[other]}, not {said[sep]}. Expected "
                f"{said[sep]}: save it with commas as .csv (or tabs as .tsv), or read it "
                f"yourself, e.g. `polars.read_csv(path, separator={other!r})`, and pass the "
                "frame to `read_deal_log`.",
                expected=f"fields separated by {said[sep]}",
                found=frame.columns[0],
            )
    return frame


def _csv_header(path: Path, sep: str) -> list[str]:
    """The header fields as written (polars renames repeated names)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        try:
            return next(csv.reader(fh, delimiter=sep), [])
        except csv.Error:
            return []


def _check_not_utf16_or_parquet(path: Path, head: bytes) -> None:
    name = path.name
    if head.startswith(_UTF16_BOMS) or (b"\x00" in head and _looks_utf16(head)):
        raise DataError(
            f"The file {name} is encoded as UTF-16, not UTF-8. Expected UTF-8 text: re-save "
            "it as UTF-8 (in Excel: 'CSV UTF-8'), or convert it, e.g. "
            f"`iconv -f UTF-16 -t UTF-8 {name}`.",
            expected="UTF-8 text",
            found="UTF-16",
        )
    if head.startswith(_PARQUET_MAGIC):
        raise DataError(
            f"The file {name} is a Parquet file, not CSV text. Give it a .parquet suffix.",
            expected="CSV text",
            found="Parquet data",
        )


def _check_utf8(path: Path, head: bytes) -> None:
    """Raise a :class:`DataError` naming the first byte that is not UTF-8, if any."""
    name = path.name
    bad = _first_invalid_utf8(path)
    if bad is None:
        return
    offset, line, byte = bad
    if b"\x00" in head:
        raise DataError(
            f"The file {name} is binary data, not CSV text (byte 0x{byte:02X} at offset "
            f"{offset}, line {line}, is not UTF-8; the file holds NUL bytes). Expected a CSV "
            "export of the deal history.",
            expected="UTF-8 text",
            found=f"binary data (0x{byte:02X} at byte {offset})",
        )
    guess = bytes([byte]).decode("cp1252", errors="replace")
    raise DataError(
        f"The file {name} is not UTF-8 text: byte 0x{byte:02X} at offset {offset} (line "
        f"{line}) is not valid UTF-8; it reads as {guess!r} in Latin-1/Windows-1252, the "
        "usual culprit. Expected UTF-8: re-save it as UTF-8 (in Excel: 'CSV UTF-8'), or "
        f"convert it, e.g. `iconv -f WINDOWS-1252 -t UTF-8 {name}`.",
        row=line - 2 if line >= 2 else None,
        expected="UTF-8 text",
        found=f"0x{byte:02X} at byte {offset}",
    )


def _looks_utf16(head: bytes) -> bool:
    """Text of mostly ASCII characters in UTF-16: every other byte is NUL."""
    sample = head[:4096]
    if len(sample) < 4:
        return False
    even, odd = sample[0::2], sample[1::2]
    return max(even.count(0) / len(even), odd.count(0) / len(odd)) > 0.9


def _first_invalid_utf8(path: Path) -> tuple[int, int, int] | None:
    """``(byte offset, 1-based line, byte value)`` of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = 0
    lines = 1
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                data = pending + chunk
                offset = fed - len(pending) + err.start
                return offset, lines + data[: err.start].count(b"\n"), data[err.start]
            if not chunk:
                return None
            fed += len(chunk)
            lines += chunk.count(b"\n")


def _csv_error(path: Path, sep: str, err: Exception) -> DataError:
    """The first malformed line of a UTF-8 CSV file that polars could not parse."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep, strict=True)
        n_header = 0
        try:
            for record in reader:
                if reader.line_num == 1:
                    n_header = len(record)
                elif len(record) > n_header:
                    return DataError(
                        f"The file {path.name}, line {reader.line_num}: {len(record)} fields "
                        f"where the header has {n_header}. Expected one field per column; "
                        f"quote fields that contain the separator {sep!r} and check for "
                        "stray separators at the end of the line.",
                        row=reader.line_num - 2,
                        expected=f"{n_header} fields",
                        found=f"{len(record)} fields",
                    )
        except csv.Error as csv_err:
            return DataError(
                f"The file {path.name}, line {reader.line_num}: {csv_err}. Expected well-formed "
                "CSV: a field that starts with a quote must end with one, and a quote inside "
                'a quoted field is written "".',
                row=max(reader.line_num - 2, 0),
                expected="well-formed CSV",
                found=str(csv_err),
            )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(
        f"Cannot read the CSV file {path.name}: {first}.",
        expected="well-formed CSV",
        found=first,
    )


def _parquet_error(path: Path, err: Exception) -> DataError:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if head == _PARQUET_MAGIC and tail != _PARQUET_MAGIC:
        return DataError(
            f"The file {path.name} is a truncated Parquet file: it starts with the bytes "
            f"'PAR1' but does not end with them ({size} bytes; an interrupted copy or "
            "download?). Expected a complete Parquet file: copy or export it again.",
            expected="a complete Parquet file",
            found=f"{size} bytes ending with {tail!r}",
        )
    if head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
        hint = ""
        try:
            head_text = path.read_bytes()[:200].decode("utf-8")
            if "," in head_text or ";" in head_text or "\t" in head_text:
                hint = " It looks like CSV text: give it a .csv suffix."
        except UnicodeDecodeError:
            pass
        return DataError(
            f"The file {path.name} is not a Parquet file: a Parquet file starts and ends with "
            f"the bytes 'PAR1', this one starts with {head!r} and ends with {tail!r} "
            f"({size} bytes).{hint}",
            expected="a Parquet file",
            found=f"{size} bytes starting with {head!r}",
        )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(
        f"Cannot read the Parquet file {path.name} ({size} bytes; damaged?): {first}.",
        expected="a readable Parquet file",
        found=first,
    )
