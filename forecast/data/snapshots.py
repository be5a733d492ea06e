"""Snapshot histories: dated exports of the pipeline -> stage-change events.

A finance team's weekly export (one row per deal, its stage, amount and close date
that day) is a history once the exports are put side by side. This module holds
the two steps the reader (:func:`forecast.read_deal_log`) takes for it:

- :func:`load_export_folder` reads every export file of a folder (CSV, TSV, TXT,
  Parquet) into one table and dates each file by a column or by its file name
  (:func:`date_in_file_name`);
- :func:`snapshots_to_events` turns the dated rows into canonical events.

What is lost between two exports, and what is done about it
-----------------------------------------------------------
An export shows the state of each deal at its date, not when the state began. A
change first seen in export ``k`` happened at an unknown instant of
``(export k-1, export k]`` (interval censoring), and several changes inside one
interval show as one (a visit shorter than the gap between exports can be
missed entirely). Each change is dated:

- at its ``close_date``, for a move into a terminal stage whose close date falls
  inside the interval (CRMs set the close date when a deal is closed);
- at its ``created_at``, for a deal's first appearance when its creation falls
  inside the interval (or at the export, when the export's date is the day of a
  creation later that day);
- otherwise at the midpoint of the interval. Dating at the first export showing
  the change would make every instant late by half a gap on average; the
  midpoint is unbiased to first order: if the true instant has density ``g`` over
  an interval of length ``h``, the error of the midpoint has mean
  ``-(h²/12)·g'/g + O(h³)``, i.e. a bias of order ``h²`` divided by the time
  scale on which ``g`` varies (a sojourn's duration).

Deals in the first export are dated from it: their time in stage before it is
unknown (left truncation). Nothing is dated at or before the export preceding the
one that first shows it, so the history known at ``t`` is exactly the events up to
the last export on or before ``t`` (:meth:`DealLog.as_of` cuts there).

A deal open in one export and missing from every later one (deleted in the CRM,
or filtered out of the report) gets the rule chosen by ``vanished``: closed as no
decision (default) or as lost under the stage name :data:`VANISHED_STAGE`,
halfway between the last export showing it and the next — for the bookings
forecast it is a deal that left the pipeline without a win, at the rate such
deals leave — or kept open in its last stage (it then stays in every later
pipeline). Either way it is counted in ``ValidationReport.vanished_deals``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from forecast.data.stages import StageMap
from forecast.data.validation import RepairCounts, deduplicate_and_sort
from forecast.errors import DataError, MissingColumnError, ParameterError

__all__ = [
    "DEFAULT_FILE_DATE_FORMAT",
    "EXPORT_SUFFIXES",
    "FILE_DATE_COLUMN",
    "VANISHED_RULES",
    "VANISHED_STAGE",
    "ExportFolder",
    "Vanished",
    "date_in_file_name",
    "export_files",
    "file_columns",
    "load_export_folder",
    "snapshots_to_events",
]

#: Suffixes of the files read from a folder of exports (others are ignored).
EXPORT_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".txt", ".parquet", ".pq")
#: Pattern of the date in export file names unless told otherwise: an ISO date
#: ``YYYY-MM-DD`` anywhere in the name (``pipeline_2024-01-15.csv``).
DEFAULT_FILE_DATE_FORMAT = "%Y-%m-%d"
#: Name of the column holding each file's date when the files are dated by name.
FILE_DATE_COLUMN = "date in file name"
#: Stage name given to deals that vanish from the exports while open.
VANISHED_STAGE = "Vanished from exports"

#: What to do with a deal open in one export and missing from every later one.
Vanished = Literal["no_decision", "lost", "keep_open"]
VANISHED_RULES: tuple[str, ...] = ("no_decision", "lost", "keep_open")

_DIRECTIVES = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{1,2}",
    "d": r"\d{1,2}",
    "H": r"\d{1,2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "j": r"\d{3}",
    "b": r"[A-Za-z]{3}",
    "B": r"[A-Za-z]+",
    "%": "%",
}


# ---------------------------------------------------------------------------------------
# dating a file by its name
# ---------------------------------------------------------------------------------------
def _format_regex(fmt: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(fmt):
        ch = fmt[i]
        if ch != "%":
            out.append(re.escape(ch))
            i += 1
            continue
        code = fmt[i + 1 : i + 2]
        if code not in _DIRECTIVES:
            raise ParameterError(
                f"The `file_date_format` {fmt!r} uses %{code}, which file names are not read "
                f"with; use {', '.join('%' + c for c in _DIRECTIVES if c != '%')}."
            )
        out.append(_DIRECTIVES[code])
        i += 2
    if not any(f"%{c}" in fmt for c in "Yy"):
        raise ParameterError(
            f"The `file_date_format` {fmt!r} has no year (%Y or %y); a file's date needs one."
        )
    return re.compile(r"(?<!\d)" + "".join(out) + r"(?!\d)")


def date_in_file_name(name: str, fmt: str = DEFAULT_FILE_DATE_FORMAT) -> dt.datetime:
    """The date written in an export's file name.

    Parameters
    ----------
    name : str
        File name (a path's directories are ignored).
    fmt : str, default ``"%Y-%m-%d"``
        strftime pattern of the date (``%Y %y %m %d %H %M %S %j %b %B``); text
        around the directives must match literally, which tells apart two dates
        in one name (e.g. ``"to_%Y-%m-%d"``). The pattern is looked for anywhere
        in the name, not inside a longer run of digits.

    Returns
    -------
    datetime.datetime
        The date (midnight unless the pattern has a time), naive UTC.

    Raises
    ------
    DataError
        If the name holds no such date, or holds two different ones.
    ParameterError
        If ``fmt`` is not a pattern a file name can be read with.

    Examples
    --------
    >>> date_in_file_name("pipeline_2024-01-15.csv")
    datetime.datetime(2024, 1, 15, 0, 0)
    >>> date_in_file_name("export-20240115.parquet", "%Y%m%d")
    datetime.datetime(2024, 1, 15, 0, 0)
    """
    stem = Path(name).name
    pattern = _format_regex(fmt)
    found = []
    for m in pattern.finditer(stem):
        try:
            found.append(dt.datetime.strptime(m.group(0), fmt))
        except ValueError:
            continue  # e.g. 2024-13-45: digits, but not a date
    dates = sorted(set(found))
    if len(dates) == 1:
        return dates[0]
    if not dates:
        raise DataError(
            f"File {stem}: no date matching {fmt!r} in its name. Name the exports by their "
            "date (e.g. pipeline_2024-01-15.csv), pass `file_date_format=` (CLI: "
            "--file-date-format) with the strftime pattern of your names (e.g. '%Y%m%d'), or "
            "map a column holding each row's export date to `timestamp`.",
            expected=f"a date like {dt.datetime(2024, 1, 15).strftime(fmt)!r} in the file name",
            found=stem,
        )
    raise DataError(
        f"File {stem}: its name holds {len(dates)} dates matching {fmt!r} "
        f"({', '.join(f'{d:%Y-%m-%d}' for d in dates)}). Pass a `file_date_format` with the "
        "text around the export date (e.g. 'to_%Y-%m-%d').",
        expected="one date in the file name",
        found=stem,
    )


# ---------------------------------------------------------------------------------------
# reading a folder
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportFolder:
    """The files of a folder of exports, as read into one table.

    Attributes
    ----------
    folder : Path
    files : tuple of Path
        In reading order (by date when dated by name, else by name).
    dates : tuple of datetime or None
        Each file's date when dated by name (else ``None``).
    first_rows : tuple of int
        Row of the combined table where each file starts (rows are numbered
        0, 1, ... over the files in order).
    columns : tuple of tuple of str
        Each file's column names.
    """

    folder: Path
    files: tuple[Path, ...]
    dates: tuple[dt.datetime, ...] | None
    first_rows: tuple[int, ...]
    columns: tuple[tuple[str, ...], ...] = field(repr=False)

    @property
    def by_name(self) -> bool:
        """Whether the files are dated by their names."""
        return self.dates is not None

    def where(self, row: int) -> str:
        """``"row 12 of pipeline_2024-01-15.csv"`` for a row of the combined table."""
        i = max(j for j, start in enumerate(self.first_rows) if start <= row)
        return f"row {row - self.first_rows[i]} of {self.files[i].name}"

    def check_columns(self, needed: Mapping[str, str]) -> None:
        """Raise :class:`MissingColumnError` naming the first file that lacks a column.

        ``needed`` maps canonical names to source columns that every file must have.
        """
        for path, cols in zip(self.files, self.columns):
            for canon, src in needed.items():
                if src != FILE_DATE_COLUMN and src not in cols:
                    raise MissingColumnError(
                        f"File {path.name} has no column `{src}` (read as `{canon}`); the other "
                        f"exports in {self.folder} have it. Its columns: {list(cols)}.",
                        column=canon,
                        expected=src,
                        found=list(cols),
                    )


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def file_columns(path: Path) -> list[str]:
    """Column names of one export file (read from its header or schema only)."""
    if _is_parquet(path):
        return pl.scan_parquet(path).collect_schema().names()
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    return pl.read_csv(path, n_rows=0, infer_schema=False, separator=sep).columns


def _read(path: Path, keep: Sequence[str]) -> pl.DataFrame:
    if _is_parquet(path):
        return pl.scan_parquet(path).select(list(keep)).collect()
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    return pl.read_csv(path, infer_schema=False, separator=sep, columns=list(keep))


def export_files(folder: Path) -> list[Path]:
    """The export files of ``folder``: suffix in :data:`EXPORT_SUFFIXES`, not hidden."""
    if not folder.is_dir():
        raise FileNotFoundError(f"The folder of exports does not exist: {folder}")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in EXPORT_SUFFIXES and not p.name.startswith((".", "_"))
    )
    if not files:
        raise DataError(
            f"The folder {folder} holds no export file (names ending in "
            f"{', '.join(EXPORT_SUFFIXES)}; names starting with '.' or '_' are skipped).",
            expected="export files",
            found=sorted(p.name for p in folder.iterdir()),
        )
    return files


def load_export_folder(
    folder: Path,
    *,
    wanted: set[str] | None,
    by_name: bool,
    file_date_format: str | None = None,
) -> tuple[pl.DataFrame, ExportFolder]:
    """Read every export of ``folder`` into one table.

    Parameters
    ----------
    folder : Path
    wanted : set of str or None
        Columns to read (others are skipped, so wide exports stay cheap); ``None``
        reads every column.
    by_name : bool
        Date each file by its name (adds the column :data:`FILE_DATE_COLUMN`).
    file_date_format : str, optional
        strftime pattern of the date in the names (default
        :data:`DEFAULT_FILE_DATE_FORMAT`).

    Returns
    -------
    (polars.DataFrame, ExportFolder)
        The rows of every file, in file order (a column missing from a file is
        null there; a column read with different types in different files is
        text), and what was read.
    """
    files = export_files(folder)
    fmt = file_date_format or DEFAULT_FILE_DATE_FORMAT
    dates = [date_in_file_name(p.name, fmt) for p in files] if by_name else None
    if dates is not None:
        order = sorted(range(len(files)), key=lambda i: (dates[i], files[i].name))
        files = [files[i] for i in order]
        dates = [dates[i] for i in order]
    headers = [file_columns(p) for p in files]
    frames = []
    for i, (path, cols) in enumerate(zip(files, headers)):
        keep = [c for c in cols if wanted is None or c in wanted]
        frame = _read(path, keep)
        if dates is not None:
            frame = frame.with_columns(
                pl.lit(dates[i], dtype=pl.Datetime("us")).alias(FILE_DATE_COLUMN)
            )
        frames.append(frame)
    dtypes: dict[str, set[pl.DataType]] = {}
    for f in frames:
        for name, dtype in f.schema.items():
            dtypes.setdefault(name, set()).add(dtype)
    mixed = [name for name, ds in dtypes.items() if len(ds) > 1]
    if mixed:
        frames = [
            f.with_columns(pl.col(c).cast(pl.Utf8) for c in mixed if c in f.columns) for f in frames
        ]
    table = pl.concat(frames, how="diagonal") if len(frames) > 1 else frames[0]
    starts, n = [], 0
    for f in frames:
        starts.append(n)
        n += f.height
    info = ExportFolder(
        folder=folder,
        files=tuple(files),
        dates=tuple(dates) if dates is not None else None,
        first_rows=tuple(starts),
        columns=tuple(tuple(h) for h in headers),
    )
    return table, info


# ---------------------------------------------------------------------------------------
# snapshots -> events
# ---------------------------------------------------------------------------------------
def _inside(value: pl.Expr, lo: pl.Expr, hi: pl.Expr) -> pl.Expr:
    """``value`` when it lies in ``(lo, hi]`` (any ``value`` when ``lo`` is null)."""
    return value.is_not_null() & (lo.is_null() | (value > lo)) & (value <= hi)


def snapshots_to_events(
    frame: pl.DataFrame,
    segments: tuple[str, ...],
    stages: StageMap,
    found: Mapping[str, str | None],
    tally: RepairCounts,
    vanished: Vanished = "no_decision",
    *,
    entry_stage: str | None = None,
    export_instants: Sequence[dt.datetime] = (),
) -> tuple[pl.DataFrame, StageMap, tuple[dt.datetime, ...]]:
    """Turn dated snapshot rows into canonical events (see the module docstring).

    Parameters
    ----------
    frame : polars.DataFrame
        Typed rows: ``deal_id, timestamp`` (the export's instant), ``stage, amount,
        close_date, created_at``, the segment columns and ``source_row``.
    segments : tuple of str
        Segment columns; a change of one is an event too.
    stages : StageMap
    found : mapping of str to str or None
        Canonical -> source column (for messages).
    tally : RepairCounts
        Receives the duplicates, the vanished deals and the notes.
    vanished : {"no_decision", "lost", "keep_open"}, default "no_decision"
        Rule for deals open in one export and missing from every later one.
    entry_stage : str, optional
        Open stage in which a deal first seen already closed (created and closed
        between two exports) is created; default: the first open stage.
    export_instants : sequence of datetime, optional
        Every export's instant, including exports without rows (e.g. from the
        file names); the instants of the rows are always included.

    Returns
    -------
    (polars.DataFrame, StageMap, tuple of datetime)
        Events (canonical columns, unsorted), the stage map (with
        :data:`VANISHED_STAGE` added when it was used) and the export instants.

    Raises
    ------
    DataError
        A deal appears twice in one export with different values, or the exports
        hold no closed deal at all while deals vanish from them (open deals only:
        wins cannot be told from losses).
    """
    if vanished not in VANISHED_RULES:
        raise ParameterError(
            f"The `vanished` parameter of `read_deal_log` must be one of {list(VANISHED_RULES)}. "
            f"Got {vanished!r}."
        )
    rows = deduplicate_and_sort(frame, tally)
    twice = rows.filter(pl.struct("deal_id", "timestamp").is_duplicated())
    if twice.height:
        r = twice.row(0, named=True)
        both = twice.filter(
            (pl.col("deal_id") == r["deal_id"]) & (pl.col("timestamp") == r["timestamp"])
        )["source_row"].to_list()
        raise DataError(
            f"Column `deal_id`{_src(found, 'deal_id')}: deal `{r['deal_id']}` appears on rows "
            f"{both} of the export of {r['timestamp']:%Y-%m-%d %H:%M} with different values. An "
            "export shows each deal once; remove the extra row, or give the exports different "
            "dates.",
            column="deal_id",
            deal_id=r["deal_id"],
            row=both[1],
            expected="one row per deal and export",
            found=both,
        )
    entry = stages.open[0] if entry_stage is None else str(entry_stage)
    if entry not in stages.open:
        raise ParameterError(
            f"The `entry_stage` parameter of `read_deal_log` must be an open stage "
            f"{list(stages.open)}. Got {entry_stage!r}."
        )
    dates = tuple(sorted({*rows["timestamp"].unique().to_list(), *export_instants}))
    calendar = pl.DataFrame(
        {
            "timestamp": pl.Series(dates, dtype=pl.Datetime("us")),
            "_k": pl.Series(range(len(dates)), dtype=pl.Int64),
            "_lo": pl.Series([None, *dates[:-1]], dtype=pl.Datetime("us")),
        }
    )
    rows = rows.join(calendar, on="timestamp", how="left", maintain_order="left")
    kinds = {s: stages.kind(s) for s in stages.names()}
    is_open = pl.col("stage").replace_strict(kinds, return_dtype=pl.Utf8) == "open"
    watched = ["stage", "amount", "close_date", *segments]
    first = pl.int_range(pl.len()).over("deal_id") == 0
    prev_k = pl.col("_k").shift(1).over("deal_id")
    changed = pl.any_horizontal(
        [pl.col(c).ne_missing(pl.col(c).shift(1).over("deal_id")) for c in watched]
    )
    rows = rows.with_columns(
        first.alias("_first"),
        changed.fill_null(True).alias("_changed"),
        (prev_k < pl.col("_k") - 1).fill_null(False).alias("_after_gap"),
        pl.col("stage").shift(1).over("deal_id").alias("_prev_stage"),
    )
    events = rows.filter(pl.col("_first") | pl.col("_changed"))
    lo, hi = pl.col("_lo"), pl.col("timestamp")
    mid = lo + (hi - lo) / 2
    in_first_export = pl.col("_first") & lo.is_null()
    by_created = pl.col("_first") & lo.is_not_null() & (pl.col("created_at") > lo)
    appeared = pl.when(by_created).then(pl.min_horizontal("created_at", "timestamp")).otherwise(mid)
    closing = ~is_open & (pl.col("stage") != pl.col("_prev_stage")).fill_null(True)
    # A deal first seen already closed was created and closed between two exports: it
    # enters `entry` when it appeared, and closes at its close date if that lies between
    # its appearance and the export, else halfway.
    born_closed = pl.col("_first") & lo.is_not_null() & ~is_open
    start = pl.when(born_closed).then(appeared).otherwise(lo)
    by_close = closing & ~in_first_export & _inside(pl.col("close_date"), start, hi)
    events = events.with_columns(
        pl.when(in_first_export & ~is_open & (pl.col("close_date") <= hi))
        .then(pl.col("close_date"))  # closed before the first export: known at it
        .when(in_first_export)
        .then(hi)
        .when(by_close)
        .then(pl.col("close_date"))
        .when(born_closed)
        .then(appeared + (hi - appeared) / 2)
        .when(pl.col("_first"))
        .then(appeared)
        .otherwise(mid)
        .alias("_when"),
        by_close.fill_null(False).alias("_by_close"),
        (by_created & ~born_closed).fill_null(False).alias("_by_created"),
        born_closed.fill_null(False).alias("_born_closed"),
    )
    openings = (
        events.filter(pl.col("_born_closed"))
        .with_columns(
            appeared.alias("_when"),
            pl.lit(entry).alias("stage"),
            pl.lit(None, dtype=pl.Datetime("us")).alias("close_date"),
            by_created.fill_null(False).alias("_by_created"),
            pl.lit(False).alias("_by_close"),
        )
        .select(events.columns)
    )
    n_close = int(events["_by_close"].sum())
    n_created = int(events["_by_created"].sum() + openings["_by_created"].sum())
    n_born_closed = openings.height
    n_first = int(events.select(in_first_export.sum()).item())
    n_mid = events.height + openings.height - n_close - n_created - n_first
    events = pl.concat([openings, events])
    gap_deals = int(rows.filter(pl.col("_after_gap"))["deal_id"].n_unique())

    # -- deals missing from every later export while open ----------------------------------
    last = rows.group_by("deal_id", maintain_order=True).last()
    gone = last.filter((pl.col("_k") < len(dates) - 1) & is_open)
    tally.vanished_deals += gone.height
    stage_map = stages
    extra = events.clear()
    if gone.height and not (~rows.select(is_open).to_series()).any():
        raise DataError(
            f"The exports show no closed deal, but {gone.height} open deal(s) disappear from "
            f"them (first: deal `{gone['deal_id'][0]}`, last seen on "
            f"{gone['timestamp'][0]:%Y-%m-%d}). Exports of open deals only cannot tell a won "
            "deal from a lost one: export closed deals too (at least those closed since the "
            "previous export).",
            column="stage",
            deal_id=gone["deal_id"][0],
            row=gone["source_row"][0],
            expected="closed deals in the exports",
            found="open deals only",
        )
    if gone.height and vanished != "keep_open":
        nxt = dict(itertools.pairwise(dates))
        extra = gone.with_columns(
            pl.col("timestamp").replace_strict(nxt, return_dtype=pl.Datetime("us")).alias("_next"),
        ).with_columns(
            (pl.col("timestamp") + (pl.col("_next") - pl.col("timestamp")) / 2).alias("_when"),
            pl.lit(VANISHED_STAGE).alias("stage"),
            pl.lit(False).alias("_by_close"),
            pl.lit(False).alias("_by_created"),
            pl.lit(False).alias("_born_closed"),
        )
        extra = extra.select(events.columns)
        stage_map = _with_vanished_stage(stages, vanished)
        outcome = "no decision" if vanished == "no_decision" else "lost"
        tally.notes.append(
            f"{gone.height} deal(s) open in an export are missing from every later one "
            f"(deleted in the CRM or filtered out of the report): closed as {outcome} "
            f"(stage {VANISHED_STAGE!r}) halfway between the last export showing them and the "
            "next. For the bookings forecast they left the pipeline without a win."
        )
    elif gone.height:
        tally.notes.append(
            f"{gone.height} deal(s) open in an export are missing from every later one: kept "
            "open in their last stage (`vanished='keep_open'`), so they stay in every later "
            "pipeline."
        )
    out = pl.concat([events, extra]).with_columns(pl.col("_when").alias("timestamp"))
    gaps = [(b - a).total_seconds() / 86400.0 for a, b in itertools.pairwise(dates)]
    gap_text = f"median gap {statistics.median(gaps):.1f} days" if gaps else "a single export"
    tally.notes.append(
        f"Snapshot history: {len(dates)} export(s) from {dates[0]:%Y-%m-%d} to "
        f"{dates[-1]:%Y-%m-%d} ({gap_text}); {rows.height} rows became {out.height} events. "
        "Between two exports the instant of a change is unknown (interval-censored) and "
        "several changes show as one; a change first seen in an export is dated inside the "
        f"interval since the export before it: {n_close} close(s) at their close date, "
        f"{n_created} first appearance(s) at their creation date, {n_mid} change(s) at the "
        f"interval's midpoint; {n_first} row(s) of the first export are dated at it (time "
        "in stage before it unknown; closed deals at their close date)."
    )
    if n_born_closed:
        tally.notes.append(
            f"{n_born_closed} deal(s) were first seen already closed (created and closed between "
            f"two exports): each enters {entry!r} when it appeared and closes at its close date "
            "if that falls after, else halfway to the export."
        )
    if gap_deals:
        tally.notes.append(
            f"{gap_deals} deal(s) are missing from some exports between two that show them; "
            "their changes across the gap are dated inside the interval before the export "
            "that shows them."
        )
    if found.get("created_at") is None:
        tally.notes.append(
            "No `created_at` column: a deal's first appearance after the first export is dated "
            "at the midpoint of the interval it appeared in."
        )
    keep = ["deal_id", "timestamp", "stage", "amount", "close_date", "created_at", *segments]
    return out.select(*keep, "source_row"), stage_map, dates


def _with_vanished_stage(stages: StageMap, vanished: Vanished) -> StageMap:
    if VANISHED_STAGE in stages.names():
        kind = stages.kind(VANISHED_STAGE)
        if kind != vanished:
            raise ParameterError(
                f"The stage map lists {VANISHED_STAGE!r} as {kind!r}, but `vanished="
                f"{vanished!r}` closes vanished deals as {vanished!r}. Use one of the two."
            )
        return stages
    if vanished == "lost":
        return StageMap(stages.open, stages.won, (*stages.lost, VANISHED_STAGE), stages.no_decision)
    return StageMap(stages.open, stages.won, stages.lost, (*stages.no_decision, VANISHED_STAGE))


def _src(found: Mapping[str, str | None], canon: str) -> str:
    src = found.get(canon)
    return f" (source column `{src}`)" if src is not None and src != canon else ""
