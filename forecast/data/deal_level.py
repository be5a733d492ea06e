"""The deal-level view of a history: one open state on the age-since-creation clock.

A one-row-per-deal table (``read_deal_log(..., shape="deals")``, an opportunity
report) shows each deal's creation date, its current stage or outcome, amount and
close date — but not when it moved between stages. Its stage sojourns are not
identifiable: the reader has to make up a path (closed deals "in the entry stage
from creation to the close date", open deals "in their current stage since
creation"), so a stage model fitted on it reads whole deal lifetimes as exits of
the first stage and sees no exit at all from the later ones.

What such a table does identify is the deal's lifetime: from creation to won,
lost or no decision, right-censored at the as-of date for open deals. The view
built here relabels every open stage as the single open state :data:`OPEN_STATE`,
so that a deal's open rows form one visit from its creation to its close. A stage
model fitted on the view is a competing-risk model of the deal's age since
creation with three outcomes (``docs/model.md``, "Deal-level model"), and open
deals are conditioned on their age. The stage a row reported is kept in the
column :data:`REPORTED_STAGE_COLUMN` of the view's events.

:func:`deal_level_view` is the only place the view is built; a fitted deal-level
model applies it to every log it reads (:meth:`PipelineModel.view
<forecast.fit.model.PipelineModel.view>`).
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from forecast.data.deal_log import DealLog
from forecast.data.stages import StageMap

__all__ = [
    "OPEN_STATE",
    "REPORTED_STAGE_COLUMN",
    "closed_deals_left_out",
    "deal_level_stages",
    "deal_level_view",
    "is_deal_level_view",
]

#: Name of the one open state of the deal-level view.
OPEN_STATE = "Open"
#: Column of the view's events holding the stage each row reported.
REPORTED_STAGE_COLUMN = "reported_stage"
_CACHE_KEY = "deal_level_view"


def deal_level_stages(stages: StageMap) -> StageMap:
    """The stage map of the view: one open state, the terminal names of ``stages``.

    The open state is :data:`OPEN_STATE` unless a terminal stage already has that
    name, in which case it is ``"Open (any stage)"``.
    """
    terminal = (*stages.won, *stages.lost, *stages.no_decision)
    name = OPEN_STATE if OPEN_STATE not in terminal else f"{OPEN_STATE} (any stage)"
    return StageMap(open=(name,), won=stages.won, lost=stages.lost, no_decision=stages.no_decision)


def is_deal_level_view(log: DealLog) -> bool:
    """Whether ``log`` is already a deal-level view (built by :func:`deal_level_view`)."""
    return REPORTED_STAGE_COLUMN in log.events.columns and log.stages.n_open == 1


def deal_level_view(log: DealLog) -> DealLog:
    """``log`` with every open stage relabelled as the one open state.

    Consecutive open rows of a deal then form one visit, from its creation (first
    row) to its close or the as-of date: ``spells`` has one row per open period of
    a deal, ``pipeline(t).days_in_stage`` is the deal's age since its first row,
    and the outcomes' ``first_stage`` is the open state. Terminal rows, amounts,
    close dates, segments and the cut are unchanged; the stage each row reported is
    kept in the column ``reported_stage``. The view of a view is itself, and the
    view of a log is built once (cached on the log).

    Parameters
    ----------
    log : DealLog

    Returns
    -------
    DealLog
        Same ``report``, ``cut`` and ``source``; stages :func:`deal_level_stages`.
    """
    if is_deal_level_view(log):
        return log
    cached = log._cache.get(_CACHE_KEY)
    if cached is not None:
        return cached
    stages = deal_level_stages(log.stages)
    is_open = pl.col("stage").is_in(list(log.stages.open))
    events = log.events.with_columns(
        pl.col("stage").alias(REPORTED_STAGE_COLUMN),
        pl.when(is_open).then(pl.lit(stages.open[0])).otherwise(pl.col("stage")).alias("stage"),
    )
    view = DealLog(events, stages, log.segment_columns, log.report, cut=log.cut, source=log.source)
    log._cache[_CACHE_KEY] = view
    return view


#: :func:`closed_deals_left_out` flags a table when at least this many deals were created
#: more than :data:`LEFT_OUT_LIFETIMES` median lifetimes before its earliest close.
LEFT_OUT_MIN_DEALS = 10
LEFT_OUT_LIFETIMES = 3.0


def closed_deals_left_out(log: DealLog, as_of: dt.datetime) -> str | None:
    """A warning when a one-row-per-deal table seems to leave out deals that closed early.

    A report of "open deals and deals closed recently" keeps only the long lives of the
    deals created long ago: the ones still open. Read as a complete table, lifetimes
    look too long and arrivals grow too fast (older quarters lose their short-lived
    deals). The sign: many deals created long before the table's earliest close. In a
    complete table the first deals close soon after the first creations, so no deal is
    created :data:`LEFT_OUT_LIFETIMES` median lifetimes (of the closed deals) before the
    earliest close; at least :data:`LEFT_OUT_MIN_DEALS` such deals flag the table.

    Parameters
    ----------
    log : DealLog
        Any log (the check reads its ``outcomes`` at ``as_of``).
    as_of : datetime

    Returns
    -------
    str or None
        The warning, naming the earliest close and the deals created long before it.
    """
    oc = log.outcomes(as_of)
    closed = oc.filter(pl.col("status") != "open")
    if closed.height == 0:
        return None
    life = (closed["closed_at"] - closed["created_at"]).dt.total_microseconds() / 86_400e6
    median = float(life.median())  # type: ignore[arg-type]
    first_close: dt.datetime = closed["closed_at"].min()  # type: ignore[assignment]
    before = first_close - dt.timedelta(days=LEFT_OUT_LIFETIMES * median)
    n_early = oc.filter(pl.col("created_at") < before).height
    if n_early < LEFT_OUT_MIN_DEALS:
        return None
    return (
        f"Every closed deal in the table closed on or after {first_close:%Y-%m-%d}, but "
        f"{n_early} deals created before {before:%Y-%m-%d} ({LEFT_OUT_LIFETIMES:g} median "
        f"lifetimes of the closed deals, {median:.0f} days, earlier) are in it, all still "
        "open: the export seems to leave out the deals that closed earlier (a report of "
        "open and recently closed deals). Read as complete, deal lifetimes look too long "
        "and new deals grow too fast; export every deal, closed ones included."
    )
