"""A deal history seen the way finance sees it: the reports a CRM exports on given dates.

:func:`deal_table_at` renders the one-row-per-deal report of an event log at one
instant (every deal created by then, in its state then); :func:`export_snapshots`
stacks such reports for many dates; :func:`write_exports` writes them as a folder
of dated files, the input of ``read_deal_log(folder, shape="snapshots")``. Used to
check what a forecast loses when only weekly exports, not the event log, were kept
(``benchmarks/snapshot_accuracy.py``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from forecast._validation import as_datetime
from forecast.data.stages import StageMap
from forecast.errors import ParameterError

__all__ = ["deal_table_at", "export_dates", "export_snapshots", "write_exports"]


def export_dates(start: object, end: object, every_days: int = 7) -> list[dt.datetime]:
    """Export instants ``start, start + every_days, ...`` up to and including ``end``.

    Parameters
    ----------
    start, end : date-like
        First export and the last instant an export may have (naive UTC).
    every_days : int, default 7
        Days between exports.

    Returns
    -------
    list of datetime
    """
    t0, t1 = as_datetime(start, "start"), as_datetime(end, "end")
    if isinstance(every_days, bool) or not isinstance(every_days, int) or every_days < 1:
        raise ParameterError(
            f"The `every_days` parameter of `export_dates` must be an int ≥ 1. Got {every_days!r}."
        )
    if t1 < t0:
        raise ParameterError(
            f"`export_dates` needs `start` <= `end`. Got start={t0:%Y-%m-%d}, end={t1:%Y-%m-%d}."
        )
    n = int((t1 - t0) / dt.timedelta(days=every_days))
    return [t0 + dt.timedelta(days=every_days * i) for i in range(n + 1)]


def export_snapshots(
    events: pl.DataFrame,
    dates: Sequence[object],
    *,
    stages: StageMap | None = None,
    keep_closed_days: float | None = None,
    date_column: str = "export_date",
) -> pl.DataFrame:
    """The one-row-per-deal reports of an event log at each of ``dates``, stacked.

    Parameters
    ----------
    events : polars.DataFrame
        Canonical-like event rows (``deal_id``, ``timestamp``, ``stage`` and any
        other columns, e.g. ``generate_crm(...).events``): each row holds the
        deal's state from its ``timestamp`` on.
    dates : sequence of date-like
        Export instants.
    stages : StageMap, optional
        Needed with ``keep_closed_days``, to tell closed deals.
    keep_closed_days : float, optional
        Closed deals appear in the exports for this many days after they closed
        (a report of "open deals and deals closed recently"). Default: in every
        later export.
    date_column : str, default "export_date"
        Name of the column holding each row's export instant.

    Returns
    -------
    polars.DataFrame
        One row per (export, deal created by then): ``date_column`` then the
        columns of ``events`` but ``timestamp``, as they stood at the export;
        sorted by export then ``deal_id``.
    """
    when = sorted({as_datetime(d, "dates") for d in dates})
    if not when:
        raise ParameterError("The `dates` of `export_snapshots` are empty. Got [].")
    if keep_closed_days is not None and stages is None:
        raise ParameterError("`keep_closed_days` needs `stages` to tell closed deals.")
    ev = events.sort(["deal_id", "timestamp"]).unique(
        subset=["deal_id", "timestamp"], keep="last", maintain_order=True
    )
    grid = (
        ev.select(pl.col("deal_id").unique())
        .join(pl.DataFrame({date_column: pl.Series(when, dtype=pl.Datetime("us"))}), how="cross")
        .sort(date_column)
    )
    state = grid.join_asof(
        ev.sort("timestamp").with_columns(pl.col("timestamp").alias("_since")),
        left_on=date_column,
        right_on="_since",
        by="deal_id",
        strategy="backward",
        check_sortedness=False,  # both sides are sorted by time above
    ).filter(pl.col("_since").is_not_null())
    if keep_closed_days is not None:
        assert stages is not None
        kinds = {s: stages.kind(s) for s in stages.names()}
        closed = pl.col("stage").replace_strict(kinds, default="open") != "open"
        recent = pl.col(date_column) - pl.col("_since") <= dt.timedelta(days=keep_closed_days)
        state = state.filter(~closed | recent)
    rest = [c for c in events.columns if c not in ("deal_id", "timestamp")]
    return state.select(date_column, "deal_id", *rest).sort([date_column, "deal_id"])


def deal_table_at(events: pl.DataFrame, at: object) -> pl.DataFrame:
    """The one-row-per-deal report of an event log at instant ``at``.

    Every deal with a row at or before ``at``, with the columns of ``events`` but
    ``timestamp`` as they stood then (stage or outcome, amount, close date,
    creation date, segments).
    """
    return export_snapshots(events, [at]).drop("export_date")


def write_exports(
    events: pl.DataFrame,
    folder: str | os.PathLike[str],
    dates: Sequence[object],
    *,
    stages: StageMap | None = None,
    keep_closed_days: float | None = None,
    file_format: str = "csv",
    name: str = "pipeline_%Y-%m-%d",
) -> list[Path]:
    """Write the reports of :func:`export_snapshots` as one dated file per export.

    Parameters
    ----------
    events : polars.DataFrame
        See :func:`export_snapshots`.
    folder : path
        Created if missing; existing files of the same names are replaced.
    dates : sequence of date-like
        Export instants.
    stages, keep_closed_days
        See :func:`export_snapshots`.
    file_format : {"csv", "parquet"}, default "csv"
    name : str, default ``"pipeline_%Y-%m-%d"``
        strftime pattern of the file name (without suffix); it carries the date,
        which is how ``read_deal_log`` dates the files.

    Returns
    -------
    list of Path
        The files written, in date order.
    """
    if file_format not in ("csv", "parquet"):
        raise ParameterError(
            f"The `file_format` of `write_exports` must be 'csv' or 'parquet'. Got {file_format!r}."
        )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    table = export_snapshots(events, dates, stages=stages, keep_closed_days=keep_closed_days)
    written = []
    for when in sorted({as_datetime(d, "dates") for d in dates}):
        path = out / f"{when.strftime(name)}.{file_format}"
        # An export without deals is still written (header only): its date counts.
        part = table.filter(pl.col("export_date") == when).drop("export_date")
        if file_format == "csv":
            part.write_csv(path)
        else:
            part.write_parquet(path)
        written.append(path)
    return written
