"""A dry run of reading: how a history was read and what the model would see, without fitting.

:func:`inspect_log` describes a :class:`~forecast.data.deal_log.DealLog` at an as-of
date: where each canonical column came from, how every stage is classified and how
many deals reached it, the deals, events and date range, the open pipeline by stage,
the segments, the validation report, and warnings about what a fit would stumble on
(stages no deal has left yet, a one-row-per-deal table without stage history, ...).
``forecast inspect HISTORY`` prints it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from forecast._text import text_table
from forecast.data.deal_level import closed_deals_left_out
from forecast.data.deal_log import DealLog

__all__ = ["LogInspection", "inspect_log"]


@dataclass(frozen=True)
class LogInspection:
    """What :func:`inspect_log` found; ``str()`` gives the report for people.

    Attributes
    ----------
    as_of : datetime
        Instant the views were taken at (naive UTC).
    source : str
        One line: files, shape and preset.
    columns : polars.DataFrame
        ``canonical, source`` (source column, null when absent).
    stages : polars.DataFrame
        One row per stage of the map, open stages in pipeline order then the
        outcomes: ``stage, kind, deals`` (deals that reached it by ``as_of``),
        ``exits`` (visits that ended, open stages only), ``open_deals`` (deals in
        it at ``as_of``).
    pipeline : polars.DataFrame
        Open deals at ``as_of`` by stage: ``stage, deals, amount`` (currency, sum
        of the known amounts), ``median_days_in_stage``, ``median_age_days``.
    segments : polars.DataFrame
        ``column, value, deals`` for every segment column.
    deals, events : int
    first, last : datetime or None
        First event and the end of the known history.
    exports : int
        Number of dated exports (0 unless the history was rebuilt from exports).
    median_export_gap_days : float or None
    report : str
        The validation report.
    warnings : tuple of str
        What a fit would stumble on, one sentence each.
    """

    as_of: dt.datetime
    source: str
    columns: pl.DataFrame
    stages: pl.DataFrame
    pipeline: pl.DataFrame
    segments: pl.DataFrame
    deals: int
    events: int
    first: dt.datetime | None
    last: dt.datetime | None
    exports: int
    median_export_gap_days: float | None
    report: str
    warnings: tuple[str, ...]

    def __str__(self) -> str:
        out = [f"History: {self.source}"]
        out.append("\nColumns (canonical <- source):")
        for canon, src in self.columns.iter_rows():
            out.append(f"  {canon:<12} <- {src if src is not None else '(absent)'}")
        span = (
            f"{self.first:%Y-%m-%d} .. {self.last:%Y-%m-%d}"
            if self.first is not None and self.last is not None
            else "empty"
        )
        line = f"\n{self.deals:,} deals, {self.events:,} events, {span}"
        if self.exports:
            gap = self.median_export_gap_days
            line += f" ({self.exports} exports" + (f", median gap {gap:.1f} days)" if gap else ")")
        out.append(line)
        out.append(f"\nStages (as of {self.as_of:%Y-%m-%d}):")
        out += text_table(
            ["stage", "kind", "deals reached", "exits", "open now"],
            [
                [r["stage"], r["kind"], _int(r["deals"]), _int(r["exits"]), _int(r["open_deals"])]
                for r in self.stages.iter_rows(named=True)
            ],
            indent="  ",
            left=2,
        )
        total = self.pipeline.select(pl.col("deals").sum(), pl.col("amount").sum()).row(0)
        out.append(
            f"\nOpen pipeline at {self.as_of:%Y-%m-%d}: {total[0] or 0:,} deals, "
            f"amount {_money(total[1] or 0.0)}"
        )
        if self.pipeline.height:
            out += text_table(
                ["stage", "deals", "amount", "median days in stage", "median age (days)"],
                [
                    [
                        r["stage"],
                        _int(r["deals"]),
                        _money(r["amount"]),
                        _num(r["median_days_in_stage"]),
                        _num(r["median_age_days"]),
                    ]
                    for r in self.pipeline.iter_rows(named=True)
                ],
                indent="  ",
            )
        if self.segments.height:
            out.append("\nSegments:")
            for (column,), part in self.segments.group_by("column", maintain_order=True):
                shown = ", ".join(f"{v} {n:,}" for _, v, n in part.head(8).iter_rows())
                more = f", ... ({part.height} values)" if part.height > 8 else ""
                out.append(f"  {column}: {shown}{more}")
        out.append("")
        out.append(self.report)
        if self.warnings:
            out.append("\nWarnings:")
            out += [f"  - {w}" for w in self.warnings]
        return "\n".join(out)


def _int(v: object) -> str:
    return "-" if v is None else f"{int(v):,}"  # type: ignore[call-overload]


def _money(v: object) -> str:
    return "-" if v is None else f"{float(v):,.0f}"  # type: ignore[arg-type]


def _num(v: object) -> str:
    return "-" if v is None else f"{float(v):,.1f}"  # type: ignore[arg-type]


def inspect_log(log: DealLog, as_of: object | None = None) -> LogInspection:
    """Describe how a history was read and what a fit at ``as_of`` would see.

    Parameters
    ----------
    log : DealLog
        As returned by :func:`forecast.read_deal_log`.
    as_of : date-like, optional
        Instant of the views (default: the end of the known history).

    Returns
    -------
    LogInspection
    """
    cut = log.as_of(as_of) if as_of is not None else log
    t = cut.cut if cut.cut is not None else log.last_timestamp
    src = log.source
    if src is not None:
        files = (
            f"{len(src.files)} files in {_common_folder(src.files)}"
            if len(src.files) > 1
            else (src.files[0] if src.files else "a table in memory")
        )
        source = f"{files}; shape {src.shape!r}" + (
            f", preset {src.preset!r}" if src.preset else ""
        )
        columns = pl.DataFrame(
            {"canonical": list(src.columns), "source": list(src.columns.values())},
            schema={"canonical": pl.Utf8, "source": pl.Utf8},
        )
    else:
        source = "canonical events"
        columns = pl.DataFrame(schema={"canonical": pl.Utf8, "source": pl.Utf8})
    for seg in log.segment_columns:
        columns = pl.concat([columns, pl.DataFrame({"canonical": ["segment"], "source": [seg]})])

    spells = cut.spells(t) if cut.events.height else None
    pipe = cut.pipeline(t) if cut.events.height else None
    reached = (
        cut.events.group_by("stage").agg(pl.col("deal_id").n_unique().alias("deals"))
        if cut.events.height
        else pl.DataFrame(schema={"stage": pl.Utf8, "deals": pl.UInt32})
    )
    reached_d = dict(reached.iter_rows())
    exits_d: dict[str, int] = {}
    if spells is not None:
        exits_d = dict(spells.filter(~pl.col("censored")).group_by("stage").len().iter_rows())
    open_d: dict[str, int] = (
        dict(pipe.group_by("stage").len().iter_rows()) if pipe is not None else {}
    )
    stage_rows = []
    for name in (*log.stages.open, *log.stages.won, *log.stages.lost, *log.stages.no_decision):
        kind = log.stages.kind(name)
        stage_rows.append(
            {
                "stage": name,
                "kind": kind,
                "deals": int(reached_d.get(name, 0)),
                "exits": int(exits_d.get(name, 0)) if kind == "open" else None,
                "open_deals": int(open_d.get(name, 0)) if kind == "open" else None,
            }
        )
    stages = pl.DataFrame(
        stage_rows,
        schema={
            "stage": pl.Utf8,
            "kind": pl.Utf8,
            "deals": pl.Int64,
            "exits": pl.Int64,
            "open_deals": pl.Int64,
        },
    )
    if pipe is not None and pipe.height:
        order = {s: i for i, s in enumerate(log.stages.open)}
        pipeline = (
            pipe.group_by("stage")
            .agg(
                pl.len().cast(pl.Int64).alias("deals"),
                pl.col("amount").sum().alias("amount"),
                pl.col("days_in_stage").median().alias("median_days_in_stage"),
                pl.col("age_days").median().alias("median_age_days"),
            )
            .sort(pl.col("stage").replace_strict(order, return_dtype=pl.Int64))
        )
    else:
        pipeline = pl.DataFrame(
            schema={
                "stage": pl.Utf8,
                "deals": pl.Int64,
                "amount": pl.Float64,
                "median_days_in_stage": pl.Float64,
                "median_age_days": pl.Float64,
            }
        )
    seg_parts = [
        cut.events.group_by("deal_id")
        .agg(pl.col(c).drop_nulls().last())
        .group_by(c)
        .len()
        .sort(["len", c], descending=[True, False])
        .select(
            pl.lit(c).alias("column"),
            pl.col(c).alias("value"),
            pl.col("len").cast(pl.Int64).alias("deals"),
        )
        for c in log.segment_columns
    ]
    segments = (
        pl.concat(seg_parts)
        if seg_parts
        else pl.DataFrame(schema={"column": pl.Utf8, "value": pl.Utf8, "deals": pl.Int64})
    )
    dates = src.snapshot_dates if src is not None else ()
    dates = tuple(d for d in dates if d <= t)
    gaps = [(b - a).total_seconds() / 86400.0 for a, b in itertools.pairwise(dates)]
    report = str(log.report) if log.report is not None else "No validation report."
    return LogInspection(
        as_of=t,
        source=source,
        columns=columns,
        stages=stages,
        pipeline=pipeline,
        segments=segments,
        deals=cut.n_deals,
        events=cut.events.height,
        first=cut.first_timestamp if cut.events.height else None,
        last=cut.last_timestamp if cut.events.height else None,
        exports=len(dates),
        median_export_gap_days=statistics.median(gaps) if gaps else None,
        report=report,
        warnings=tuple(_warnings(log, cut, stages, t)),
    )


def _common_folder(files: Sequence[str]) -> str:

    parents = {str(Path(f).parent) for f in files}
    return parents.pop() if len(parents) == 1 else "several folders"


def _warnings(log: DealLog, cut: DealLog, stages: pl.DataFrame, t: dt.datetime) -> list[str]:
    out = []
    if log.source is not None and log.source.shape == "deals":
        out.append(
            "One row per deal: the table has no stage history, so the time spent in each "
            "stage is not identifiable from it. A fit takes the deal-level model (competing "
            "risks won / lost / no decision on the deal's age since creation, open deals "
            "conditioned on their age; `--model deal_level`, the default for this shape). A "
            "folder of dated exports of the same report (--shape snapshots) gives the stage "
            "history."
        )
    if cut.events.height == 0:
        out.append(f"No event on or before {t:%Y-%m-%d}: nothing to fit.")
        return out
    if log.source is not None and log.source.shape == "deals":
        left_out = closed_deals_left_out(cut, t)
        if left_out:
            out.append(left_out)
    unused = stages.filter(pl.col("deals") == 0)["stage"].to_list()
    if unused:
        out.append(
            f"No deal has reached stage(s) {unused} by {t:%Y-%m-%d}: a fit skips them (they "
            "stay in the stage map; no deal enters them)."
        )
    stuck = stages.filter(
        (pl.col("kind") == "open") & (pl.col("exits") == 0) & (pl.col("open_deals") > 0)
    )
    for name, n in stuck.select("stage", "open_deals").iter_rows():
        out.append(
            f"Stage {name!r} holds {n} open deal(s) but no deal has left it yet: a stage fit "
            "borrows its exit curves from the nearest stage with exits, with deliberately wide "
            "uncertainty, and names it in the model's diagnostics."
        )
    wins = stages.filter(pl.col("kind") == "won")["deals"].sum()
    if not wins:
        out.append(f"No deal has been won by {t:%Y-%m-%d}: win rates cannot be estimated.")
    if log.report is not None and log.report.amounts_missing:
        out.append(
            f"{log.report.amounts_missing} event(s) have no amount; deals never given one book "
            "nothing."
        )
    return out
