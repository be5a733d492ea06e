"""`FitData`: the frozen, once-validated input of every component fitter.

:func:`forecast.fit` builds one :class:`FitData` from a :class:`DealLog` and an
as-of instant (:meth:`FitData.from_log`): the log is cut once, the three views
every estimator reads (spells, outcomes, bookings) are taken once, each row gets
its segment label once (:mod:`forecast.segments`) and the index of its deal in
the deal table, and the open-stage spells are laid out as flat arrays grouped
once by (open stage, segment) stratum. Every component fitter
(:func:`~forecast.fit.exits.fit_exits`, :func:`~forecast.fit.amounts.fit_amounts`,
:func:`~forecast.fit.arrivals.fit_arrivals`,
:func:`~forecast.fit.calendar_effects.fit_quarter_end_effect`,
:func:`~forecast.fit.shocks.fit_shocks`) takes it.

**Weights.** A :class:`FitData` carries one weight per deal (all 1 when built).
A Bayesian-bootstrap draw (:mod:`forecast.fit.bootstrap`) — or any other
re-weighting of deals — is the same data with another weight vector,
:meth:`FitData.with_weights`: nothing is cut, labelled, validated or grouped
again; each row's weight is its deal's weight, gathered through the deal index.

**Recency.** With a half-life ``h`` (days; :meth:`FitData.with_half_life`) every
estimator weighs what it reads from the past by ``2^(−age / h)``, ``age`` the days
from the time of the observation to the as-of instant (``docs/model.md``,
"Recency weighting"): a spell by its stage entry (:meth:`FitData.stratum_spells`
applies it), a win by its win time, a creation by its creation quarter, a quarter
by its midpoint (each fitter applies :meth:`FitData.recency` to its own times). The
deal weights (bootstrap) multiply it.

**Logs that start mid-stream.** A deal already in progress when the recording began
(:func:`mid_stream_deals`: created before the recording start) is not a new deal
(:meth:`FitData.row_in_progress`; the arrival and new-deal fits leave it out), and
its first recorded stage visit started at an unknown time before its first event:
that spell is left out of the exit curves — unless it is in the first open stage
and the deal's creation time is known, when it entered the stage at creation and is
a delayed entry (:attr:`SpellArrays.entry`).

**Order.** Every frame keeps the row order of its :class:`DealLog` view, and the
spells of a stratum keep that order too (the grouping is a stable sort), so the
estimators see exactly the rows, in the order, of a direct filter of the view.

Adding to the fit input — e.g. an entry-age column for logs that start
mid-stream (delayed entry) or deal covariates — means one more array in
:class:`SpellArrays` (or column in a frame), filled here; the strata, the deal
index and the weights then apply to it unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import (
    as_datetime,
    check_as_of,
    check_float,
    check_int,
    check_segment_by,
    require_columns,
)
from forecast.calendar import FiscalCalendar, check_calendar
from forecast.data.deal_log import DealLog
from forecast.data.stages import StageMap
from forecast.errors import ModelError, ParameterError
from forecast.fit.competing_risks import CensoredSpells
from forecast.segments import SEGMENT_COLUMN, segment_labels

__all__ = [
    "FRAMES",
    "MAX_DAYS_AFTER_LAST_EVENT",
    "WEIGHT_COLUMN",
    "FitData",
    "SpellArrays",
    "mid_stream_deals",
    "recency_weights",
    "recording_start",
]

#: Names of the frames a :class:`FitData` may hold.
FRAMES: tuple[str, ...] = ("spells", "outcomes", "bookings")
#: Name of the per-row weight column of :meth:`FitData.frame` (the row's deal weight).
WEIGHT_COLUMN = "weight"


_US_PER_DAY = 86_400_000_000.0


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def recency_weights(days_before: Any, half_life: float | None) -> np.ndarray:
    """Recency weights ``2^(−days_before / half_life)`` (all 1 when ``half_life`` is None).

    Parameters
    ----------
    days_before : array_like of float
        Days from each observation to the as-of instant (≥ 0 for the past).
    half_life : float or None
        Days after which an observation counts half; None: no weighting.

    Returns
    -------
    numpy.ndarray of float64, shape of ``days_before``
    """
    d = np.asarray(days_before, dtype=np.float64)
    if half_life is None:
        return np.ones(d.shape)
    return np.exp2(-np.maximum(d, 0.0) / float(half_life))


def recording_start(log: DealLog, recorded_from: object | None = None) -> dt.datetime:
    """When the recording of ``log`` began: ``recorded_from`` if given, else the first
    export of a history rebuilt from exports, else the first event (naive UTC)."""
    if recorded_from is not None:
        return as_datetime(recorded_from, "recorded_from")
    if log.source is not None and log.source.snapshot_dates:
        return log.source.snapshot_dates[0]
    return log.first_timestamp


def mid_stream_deals(log: DealLog, recorded_from: object | None = None) -> pl.DataFrame:
    """Per deal of ``log``: whether it was already in progress when the recording began.

    A deal is *in progress at the start* when it was created before the recording
    start :func:`recording_start` (its ``created_at`` is earlier), or — when
    ``recorded_from`` is given explicitly, for logs without ``created_at`` — when its
    first event is not after that start (the state recorded at the start). Such a
    deal is not a new arrival, and its first recorded stage visit began at an unknown
    time before its first event, except in the first open stage when its creation
    time is known (it has been there since creation: ``entry_known``).

    Returns
    -------
    polars.DataFrame
        ``deal_id, first_event`` (Datetime), ``created_at`` (Datetime, the source's
        creation time, null if none), ``in_progress`` (Boolean), ``entry_known``
        (Boolean: in progress, first event in open stage 0, creation known and
        earlier) and ``days_before_first_event`` (Float64, first event − creation,
        days; null when unknown), in the event frame's deal order.
    """
    start = recording_start(log, recorded_from)
    first_open = log.stages.open[0]
    per = log.events.group_by("deal_id", maintain_order=True).agg(
        pl.col("timestamp").first().alias("first_event"),
        pl.col("created_at").min().alias("created_at"),
        pl.col("stage").first().alias("_first_stage"),
    )
    created_before = pl.col("created_at").is_not_null() & (pl.col("created_at") < start)
    in_progress = created_before
    if recorded_from is not None:
        in_progress = in_progress | (pl.col("first_event") <= start)
    known = (
        pl.col("in_progress")
        & (pl.col("_first_stage") == first_open)
        & pl.col("created_at").is_not_null()
        & (pl.col("created_at") < pl.col("first_event"))
    )
    return (
        per.with_columns(in_progress.alias("in_progress"))
        .with_columns(
            known.alias("entry_known"),
            pl.when(pl.col("created_at") < pl.col("first_event"))
            .then(
                (pl.col("first_event") - pl.col("created_at")).dt.total_microseconds() / _US_PER_DAY
            )
            .alias("days_before_first_event"),
        )
        .drop("_first_stage")
    )


@dataclass(frozen=True, eq=False)
class SpellArrays:
    """Open-stage spells as flat arrays, in the row order of the spells frame.

    Attributes
    ----------
    deal : ndarray of int64, shape (n,)
        Index of the spell's deal in :attr:`FitData.deal_ids`.
    stage : ndarray of int64, shape (n,)
        Open stage code ``0 .. K-1``.
    segment : ndarray of int64, shape (n,)
        Index of the spell's segment label in :attr:`FitData.segments`.
    duration : ndarray of float64, shape (n,)
        Days in the stage (exit − entry, or as-of − entry when censored), ≥ 0.
    destination : ndarray of int64, shape (n,)
        Code of the next stage, ``-1`` when censored.
    order : ndarray of int64, shape (m,)
        Spell rows grouped by stratum ``stage * G + segment`` (stable: each group
        keeps the row order); group ``s`` is ``order[offsets[s]:offsets[s + 1]]``.
        Rows of spells whose stage entry is unknown (``excluded``) are in no group.
    offsets : ndarray of int64, shape (K * G + 1,)
    stage_order : ndarray of int64, shape (m,)
        Spell rows grouped by stage alone (stable), for the pooled fits.
    stage_offsets : ndarray of int64, shape (K + 1,)
    entry : ndarray of float64, shape (n,)
        Delayed entry, days on the sojourn clock (0: observed from the stage entry;
        for the first visit of a deal in progress when the log started, in the first
        open stage with a known creation, the days from creation to its first
        event, and ``duration`` counts from creation).
    days_before_as_of : ndarray of float64, shape (n,)
        Days from the stage entry to the as-of instant (the age recency weights use).
    excluded : ndarray of bool, shape (n,)
        First visit of a deal in progress when the log started whose stage entry is
        unknown: left out of the exit curves.
    """

    deal: np.ndarray
    stage: np.ndarray
    segment: np.ndarray
    duration: np.ndarray
    destination: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    stage_order: np.ndarray
    stage_offsets: np.ndarray
    entry: np.ndarray | None = None
    days_before_as_of: np.ndarray | None = None
    excluded: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of spells."""
        return int(self.stage.size)


def _group(
    key: np.ndarray, n_groups: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stable grouping of rows by an integer key in ``0 .. n_groups - 1``: (order, offsets).

    Rows with ``keep`` False are left out of every group."""
    if keep is not None and not keep.all():
        key = np.where(keep, key, n_groups)
    order = np.argsort(key, kind="stable").astype(np.int64)
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=n_groups)[:n_groups], out=offsets[1:])
    return _readonly(order[: offsets[-1]]), _readonly(offsets)


@dataclass(frozen=True, eq=False)
class FitData:
    """The cut history at an as-of instant, arranged once for every component fitter.

    Build it with :meth:`from_log` (or :meth:`from_frames` for hand-made frames);
    see the module docstring.

    Attributes
    ----------
    as_of : datetime
        The cut (naive UTC); nothing after it is in the data.
    calendar : FiscalCalendar
    segment_by : tuple of str
        Segment columns the labels are built from (empty: one segment).
    segments : tuple of str
        Sorted segment labels of the spells (the segments of a fitted model).
    n_open, n_codes : int or None
        ``K`` open stages and ``C = K + 3`` stage codes (None when unknown, for
        hand-made frames without a stage count).
    stages : StageMap or None
        The log's stage map (None for hand-made frames).
    history_start : datetime or None
        Start of the observed history (the log's first event); None: each fitter
        falls back to the earliest time in its own frame.
    deal_ids : polars.Series
        The deal table (Utf8): sorted deal ids of every frame (then, for frames
        without a ``deal_id`` column, one entry per row).
    weights : ndarray of float64, shape (n_deals,)
        Weight of each deal (read-only; 1 when built).
    spells, outcomes, bookings : polars.DataFrame or None
        The :class:`DealLog` views (``docs/internals.md`` §3) with the segment
        label column ``_segment`` added; None when not given.
    spell_arrays : SpellArrays or None
        The spells as flat arrays grouped by stratum (needs ``stage_code``,
        ``duration_days`` and ``destination_code`` and a stage count).
    cut : DealLog or None
        The log cut at ``as_of`` (None for hand-made frames).
    half_life : float or None
        Recency half-life in days (None: every observation counts fully); see
        :meth:`with_half_life`.
    recorded_from : datetime or None
        When the recording of the log began (:func:`recording_start`); deals created
        before it were in progress then.
    in_progress : ndarray of bool, shape (n_deals,), or None
        Per deal of the deal table: already in progress when the recording began
        (:func:`mid_stream_deals`); None: none was.
    covariate_design : CovariateDesign or None
        The counting-process rows with the candidate covariates
        (:func:`forecast.fit.covariates.build_design`; set by
        :meth:`with_covariate_design`), None without covariates.
    """

    as_of: dt.datetime
    calendar: FiscalCalendar
    segment_by: tuple[str, ...]
    segments: tuple[str, ...]
    n_open: int | None
    n_codes: int | None
    stages: StageMap | None
    history_start: dt.datetime | None
    deal_ids: pl.Series
    weights: np.ndarray
    spells: pl.DataFrame | None
    outcomes: pl.DataFrame | None
    bookings: pl.DataFrame | None
    spell_arrays: SpellArrays | None
    cut: DealLog | None = None
    covariate_design: Any = None
    _deal_index: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    _resampled: np.ndarray | None = dataclasses.field(default=None, repr=False)
    half_life: float | None = None
    recorded_from: dt.datetime | None = None
    in_progress: np.ndarray | None = dataclasses.field(default=None, repr=False)
    _spell_recency: np.ndarray | None = dataclasses.field(default=None, repr=False)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_log(
        cls,
        log: DealLog,
        *,
        as_of: object | None = None,
        segment_by: Sequence[str] = (),
        calendar: FiscalCalendar | None = None,
        caller: str = "fit",
        recorded_from: object | None = None,
    ) -> FitData:
        """Cut ``log`` at ``as_of`` and take the views every fitter reads.

        Parameters
        ----------
        log : DealLog
            Validated history (:func:`forecast.read_deal_log`).
        as_of : date-like, optional
            Cut instant; default: the log's last event.
        segment_by : sequence of str
            Segment columns of the log (empty: one pooled segment).
        calendar : FiscalCalendar, optional
            Default: fiscal year = calendar year.
        caller : str
            Function name for error messages.
        recorded_from : date-like, optional
            When the recording of the log began (default: its first event, or its
            first export); deals created before it were already in progress
            (:func:`mid_stream_deals`).

        Returns
        -------
        FitData

        Raises
        ------
        ModelError
            When the history cannot support a fit at ``as_of``: the as-of date is
            before the first event or more than :data:`MAX_DAYS_AFTER_LAST_EVENT` days
            after the last, or there is no open-stage visit or no won deal before it.
        """
        if not isinstance(log, DealLog):
            raise ParameterError(
                f"The `log` parameter of `{caller}` must be a `DealLog` (from "
                f"`forecast.read_deal_log`). Got {type(log).__name__}."
            )
        calendar = check_calendar(calendar, caller)
        segment_by = check_segment_by(segment_by, log.segment_columns, caller)
        t = log.last_timestamp if as_of is None else check_as_of(as_of, caller)
        _check_as_of_within_history(log, t)
        cut = log.as_of(t)
        spells = cut.spells(t)
        if spells.height == 0:
            raise ModelError(
                f"The history has no stage visits before {t:%Y-%m-%d}; nothing to fit."
            )
        outcomes = cut.outcomes(t)
        _check_fittable(spells, outcomes, log.stages, t)
        bookings = cut.bookings(cut.first_timestamp, t + dt.timedelta(microseconds=1))
        # the open pipeline (what a simulation at `t` starts from) is the last view read
        # from the visits: then the visits, as large as the event frame, are released
        # (the views stay cached on the cut)
        cut.pipeline(t)
        cut.release_visits()
        if recorded_from is not None:
            recorded_from = as_datetime(recorded_from, "recorded_from", caller)
        start = recording_start(cut, recorded_from)
        mid = mid_stream_deals(cut, recorded_from)
        data = cls._build(
            as_of=t,
            calendar=calendar,
            segment_by=segment_by,
            stages=log.stages,
            history_start=start,
            frames={"spells": spells, "outcomes": outcomes, "bookings": bookings},
            cut=cut,
            caller=caller,
            mid_stream=mid if mid["in_progress"].any() else None,
        )
        return dataclasses.replace(data, recorded_from=start)

    @classmethod
    def from_frames(
        cls,
        *,
        as_of: object,
        calendar: FiscalCalendar | None = None,
        spells: pl.DataFrame | None = None,
        outcomes: pl.DataFrame | None = None,
        bookings: pl.DataFrame | None = None,
        segment_by: Sequence[str] = (),
        n_open_stages: int | None = None,
        history_start: object | None = None,
        caller: str = "FitData.from_frames",
    ) -> FitData:
        """A :class:`FitData` from frames shaped like the :class:`DealLog` views.

        For hand-made data (tests, studies of one component). Each fitter checks
        that the frame it reads has the columns it needs.

        Parameters
        ----------
        as_of : date-like
            The cut the frames describe.
        calendar : FiscalCalendar, optional
        spells, outcomes, bookings : polars.DataFrame, optional
            Like ``DealLog.spells``, ``outcomes`` and ``bookings`` (``docs/internals.md``
            §3); ``bookings`` may also be any one-row-per-win frame with a ``won_at``,
            ``closed_at`` or ``exited_at`` column. A frame without ``deal_id`` counts
            each row as its own deal. Weights are not read from the frames: use
            :meth:`with_weights`.
        segment_by : sequence of str
            Segment columns, present in every frame given.
        n_open_stages : int, optional
            ``K``; needed for the exit curves (and the spell arrays). Default:
            unknown, each fitter infers it from its frame.
        history_start : date-like, optional
            Start of the observed history (default: each fitter's own fallback).
        caller : str
            Function name for error messages.
        """
        t = check_as_of(as_of, caller)
        calendar = check_calendar(calendar, caller)
        if isinstance(segment_by, str):
            raise ParameterError(
                f"The `segment_by` parameter of `{caller}` must be a list of column names. "
                f"Got {segment_by!r}."
            )
        seg = tuple(segment_by)
        frames = {"spells": spells, "outcomes": outcomes, "bookings": bookings}
        for name, frame in frames.items():
            if frame is None:
                continue
            if not isinstance(frame, pl.DataFrame):
                raise ParameterError(
                    f"The `{name}` parameter of `{caller}` must be a polars DataFrame. "
                    f"Got {type(frame).__name__}."
                )
            require_columns(frame, seg, caller, name)
            if WEIGHT_COLUMN in frame.columns:
                raise ParameterError(
                    f"The `{name}` frame passed to `{caller}` has a `{WEIGHT_COLUMN}` column; "
                    "weights are given to the fit data instead: "
                    "`FitData.from_frames(...).with_weights(w)`, one weight per deal."
                )
        stages = None
        if n_open_stages is not None:
            k = check_int(n_open_stages, "n_open_stages", caller, minimum=1)
            stages = (k, k + 3)
        start = None if history_start is None else as_datetime(history_start, "history_start")
        return cls._build(
            as_of=t,
            calendar=calendar,
            segment_by=seg,
            stages=stages,
            history_start=start,
            frames={k: v for k, v in frames.items() if v is not None},
            cut=None,
            caller=caller,
        )

    @classmethod
    def _build(
        cls,
        *,
        as_of: dt.datetime,
        calendar: FiscalCalendar,
        segment_by: tuple[str, ...],
        stages: StageMap | tuple[int, int] | None,
        history_start: dt.datetime | None,
        frames: dict[str, pl.DataFrame],
        cut: DealLog | None,
        caller: str,
        mid_stream: pl.DataFrame | None = None,
    ) -> FitData:
        labelled = {name: segment_labels(f, segment_by) for name, f in frames.items()}
        # the deal table: sorted ids of every frame, then one entry per row of frames
        # without deal ids (the Bayesian bootstrap assigns its weights in sorted-id order)
        sorted_index = _sorted_deal_index(labelled)
        if sorted_index is not None:
            ids, index = sorted_index
        else:
            with_ids = [
                f["deal_id"].cast(pl.Utf8) for f in labelled.values() if "deal_id" in f.columns
            ]
            ids = (
                pl.concat(with_ids).unique().sort()
                if with_ids
                else pl.Series("deal_id", [], dtype=pl.Utf8)
            )
            index = {}
        if ids.null_count():
            raise ParameterError(f"The frames passed to `{caller}` hold a null `deal_id`.")
        parts = [ids.alias("deal_id")]
        n = ids.len()
        table = pl.DataFrame({"deal_id": ids, "_deal": np.arange(n, dtype=np.int64)})
        for name, f in labelled.items():
            if name in index:
                continue
            if "deal_id" in f.columns:
                joined = f.select(pl.col("deal_id").cast(pl.Utf8)).join(
                    table, on="deal_id", how="left", maintain_order="left"
                )
                index[name] = _readonly(joined["_deal"].to_numpy().astype(np.int64))
            else:
                index[name] = _readonly(np.arange(n, n + f.height, dtype=np.int64))
                parts.append(pl.Series("deal_id", [f"{name}#{i}" for i in range(f.height)]))
                n += f.height
        deal_ids = pl.concat(parts) if len(parts) > 1 else parts[0]
        resampled = None
        if "outcomes" in labelled and "deal_id" in labelled["outcomes"].columns:
            mask = np.zeros(n, dtype=bool)
            mask[index["outcomes"]] = True
            resampled = _readonly(mask)

        if isinstance(stages, StageMap):
            n_open, n_codes = stages.n_open, stages.n_codes
        elif stages is not None:
            n_open, n_codes = stages
        else:
            n_open = n_codes = None
        sp = labelled.get("spells")
        segments: tuple[str, ...] = ()
        arrays = None
        in_progress = None
        if mid_stream is not None and _same_ids(mid_stream["deal_id"], ids):
            # one row per deal of the table, in its order (the cut's events are sorted by
            # deal): aligned, no join
            mid_stream = mid_stream.with_columns(pl.int_range(n, dtype=pl.Int64).alias("_deal"))
        elif mid_stream is not None:
            mid_stream = mid_stream.join(
                table, on="deal_id", how="left", maintain_order="left"
            ).filter(pl.col("_deal").is_not_null())
        if mid_stream is not None:
            in_progress = np.zeros(n, dtype=bool)
            in_progress[mid_stream["_deal"].to_numpy()] = (
                mid_stream["in_progress"].fill_null(False).to_numpy()
            )
            in_progress = _readonly(in_progress)
        if sp is not None:
            segments = tuple(sorted(sp[SEGMENT_COLUMN].unique().to_list()))
            needed = ("stage_code", "duration_days", "destination_code")
            if n_open is not None and all(c in sp.columns for c in needed):
                arrays = _spell_arrays(
                    sp, index["spells"], segments, n_open, n_codes, caller, as_of, mid_stream
                )
        return cls(
            as_of=as_of,
            calendar=calendar,
            segment_by=segment_by,
            segments=segments,
            n_open=n_open,
            n_codes=n_codes,
            stages=stages if isinstance(stages, StageMap) else None,
            history_start=history_start,
            deal_ids=deal_ids,
            weights=_readonly(np.ones(n)),
            spells=labelled.get("spells"),
            outcomes=labelled.get("outcomes"),
            bookings=labelled.get("bookings"),
            spell_arrays=arrays,
            cut=cut,
            _deal_index=index,
            _resampled=resampled,
            in_progress=in_progress,
        )

    # -- weights --------------------------------------------------------------------------
    @property
    def n_deals(self) -> int:
        """Number of entries of the deal table."""
        return int(self.deal_ids.len())

    @property
    def resampled_deals(self) -> np.ndarray:
        """bool (n_deals,): the deals a bootstrap resamples — those of the outcomes view
        (every deal that exists at ``as_of``), or every deal without an outcomes frame."""
        if self._resampled is None:
            return np.ones(self.n_deals, dtype=bool)
        return self._resampled

    def with_weights(self, weights: Any) -> FitData:
        """The same data with another weight per deal (nothing else is recomputed).

        Parameters
        ----------
        weights : array_like of float, shape (n_deals,)
            Finite and ≥ 0, in the order of :attr:`deal_ids`.

        Returns
        -------
        FitData
        """
        w = np.array(weights, dtype=np.float64, copy=True)
        if w.shape != (self.n_deals,):
            raise ParameterError(
                f"The `weights` of `FitData.with_weights` must have one value per deal, shape "
                f"({self.n_deals},). Got shape {w.shape}."
            )
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            i = int(bad[0])
            raise ParameterError(
                "The `weights` of `FitData.with_weights` must be finite and ≥ 0. "
                f"Got {float(w[i])!r} for deal {self.deal_ids[i]!r} (index {i})."
            )
        return dataclasses.replace(self, weights=_readonly(w))

    def with_half_life(self, half_life: float | None) -> FitData:
        """The same data weighing the past by recency with this half-life (days; None: not).

        Nothing is recomputed but the spells' recency weights; the deal weights are
        kept (a bootstrap draw of a recency-weighted fit is
        ``data.with_half_life(h).with_weights(w)``).
        """
        if half_life is not None:
            half_life = check_float(
                half_life, "half_life", "FitData.with_half_life", minimum=0.0, low_open=True
            )
        rec = None
        if half_life is not None and self.spell_arrays is not None:
            days = self.spell_arrays.days_before_as_of
            if days is not None:
                rec = _readonly(recency_weights(days, half_life))
        return dataclasses.replace(self, half_life=half_life, _spell_recency=rec)

    @property
    def spell_recency(self) -> np.ndarray | None:
        """float64 (n_spells,), read-only: the recency weight of each spell row by its
        stage entry (None without a half-life); see :meth:`with_half_life`."""
        return self._spell_recency

    def recency(self, times: Any) -> np.ndarray:
        """Recency weights of observations made at ``times`` (1 without a half-life).

        Parameters
        ----------
        times : polars.Series or array_like of datetime64
            Instants of the observations (naive UTC); null or NaT weigh 1.

        Returns
        -------
        numpy.ndarray of float64, shape (n,)
            ``2^(−(as_of − time) / half_life)``, days.
        """
        if isinstance(times, pl.Series):
            us = times.cast(pl.Datetime("us")).dt.epoch("us").to_numpy().astype(np.float64)
        else:
            arr = np.asarray(times).astype("datetime64[us]")
            us = np.where(np.isnat(arr), np.nan, arr.astype(np.int64).astype(np.float64))
        if self.half_life is None:
            return np.ones(us.shape)
        t0 = (np.datetime64(self.as_of, "us") - np.datetime64(0, "us")).astype(np.float64)
        days = (t0 - us) / _US_PER_DAY
        return np.where(
            np.isfinite(days), recency_weights(np.nan_to_num(days), self.half_life), 1.0
        )

    def row_in_progress(self, name: str) -> np.ndarray:
        """bool (rows,): whether each row's deal was in progress when the recording began."""
        idx = self._deal_index[name]
        if self.in_progress is None:
            return np.zeros(idx.size, dtype=bool)
        return self.in_progress[idx]

    def with_covariate_design(self, design: Any) -> FitData:
        """The same data holding ``design`` (:func:`forecast.fit.covariates.build_design`)."""
        return dataclasses.replace(self, covariate_design=design)

    def deal_index(self, name: str) -> np.ndarray:
        """int64 (rows,), read-only: the index in :attr:`deal_ids` of each row of frame ``name``.

        ``weights[deal_index(name)]`` are the row weights; a block of draws' weights
        ``(B, n_deals)`` gathers the same way, ``W[:, deal_index(name)]``.
        """
        return self._deal_index[name]

    def row_weights(self, name: str) -> np.ndarray:
        """float64 (rows,): the weight of each row of frame ``name`` (its deal's weight)."""
        return self.weights[self._deal_index[name]]

    def frame(self, name: str, caller: str, columns: Sequence[str] = ()) -> pl.DataFrame:
        """Frame ``name`` with its row weights as column ``weight`` (Float64).

        Parameters
        ----------
        name : {"spells", "outcomes", "bookings"}
        caller : str
            The fitter asking, for error messages.
        columns : sequence of str
            Columns the fitter needs (checked against the frame's schema).

        Raises
        ------
        ParameterError
            The frame was not given.
        MissingColumnError
            A needed column is absent.
        """
        frame = getattr(self, name)
        if frame is None:
            raise ParameterError(
                f"`{caller}` needs the `{name}` frame; the fit data holds "
                f"{[f for f in FRAMES if getattr(self, f) is not None]}."
            )
        require_columns(frame, columns, caller, name)
        return frame.with_columns(pl.Series(WEIGHT_COLUMN, self.row_weights(name)))

    # -- spells by stratum ----------------------------------------------------------------
    def _arrays(self, caller: str) -> SpellArrays:
        if self.spell_arrays is None:
            raise ParameterError(
                f"`{caller}` needs the spells as arrays: a `spells` frame with `stage_code`, "
                "`duration_days` and `destination_code`, and the number of open stages."
            )
        return self.spell_arrays

    def stratum_spells(self, stage: int, segment: int | None = None) -> CensoredSpells:
        """The weighted spells of one open stage: of one segment, or pooled (``None``).

        Rows are in the spells frame's order. Built from the arrays validated at
        construction, without checking them again. Each spell weighs its deal's
        weight times its recency weight (by its stage entry, :meth:`with_half_life`);
        spells whose stage entry is unknown are left out and delayed entries kept
        (:class:`SpellArrays`).

        Parameters
        ----------
        stage : int
            Open stage code ``0 .. K-1``.
        segment : int, optional
            Index into :attr:`segments`; ``None`` for every segment together.
        """
        a = self._arrays("stratum_spells")
        if segment is None:
            rows = a.stage_order[a.stage_offsets[stage] : a.stage_offsets[stage + 1]]
        else:
            s = stage * len(self.segments) + segment
            rows = a.order[a.offsets[s] : a.offsets[s + 1]]
        w = self.weights[a.deal[rows]]
        if self._spell_recency is not None:
            w = w * self._spell_recency[rows]
        return CensoredSpells.trusted(
            a.duration[rows],
            a.destination[rows],
            int(self.n_codes),  # type: ignore[arg-type]
            w,
            None if a.entry is None else a.entry[rows],
        )

    def strata(self) -> Iterator[tuple[int, int]]:
        """Every (open stage, segment index) pair, stage-major."""
        for k in range(int(self.n_open or 0)):
            for g in range(len(self.segments)):
                yield k, g


def _spell_arrays(
    sp: pl.DataFrame,
    deal: np.ndarray,
    segments: tuple[str, ...],
    n_open: int,
    n_codes: int | None,
    caller: str,
    as_of: dt.datetime | None = None,
    mid_stream: pl.DataFrame | None = None,
) -> SpellArrays:
    """Validate the spell columns once and group the rows by stratum."""
    stage = sp["stage_code"].to_numpy().astype(np.int64)
    duration = sp["duration_days"].to_numpy().astype(np.float64)
    destination = sp["destination_code"].to_numpy().astype(np.int64)
    c = int(n_codes if n_codes is not None else n_open + 3)
    problems = (
        ("stage_code", (stage < 0) | (stage >= n_open), f"an open stage code in 0..{n_open - 1}"),
        ("duration_days", ~np.isfinite(duration) | (duration < 0), "finite days ≥ 0"),
        ("destination_code", (destination < -1) | (destination >= c), f"a code in -1..{c - 1}"),
    )
    for column, bad, expected in problems:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            deal_id = sp["deal_id"][i] if "deal_id" in sp.columns else None
            raise ParameterError(
                f"The `{column}` of the spells passed to `{caller}` must be {expected}. Got "
                f"{sp[column][i]!r} at row {i}" + (f" (deal {deal_id!r})." if deal_id else ".")
            )
    lookup = {g: i for i, g in enumerate(segments)}
    segment = sp[SEGMENT_COLUMN].replace_strict(lookup, return_dtype=pl.Int64).to_numpy()
    days_before = None
    if as_of is not None and "entered_at" in sp.columns:
        entered = sp["entered_at"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy()
        t0 = float((np.datetime64(as_of, "us") - np.datetime64(0, "us")).astype(np.int64))
        days_before = np.nan_to_num((t0 - entered.astype(np.float64)) / _US_PER_DAY)
    entry = excluded = None
    if mid_stream is not None and "visit" in sp.columns and "deal_id" in sp.columns:
        # per deal of the deal table (`_deal`, from `FitData._build`), gathered per spell
        # through its deal index: no join on the ids
        n_deals = int(deal.max()) + 1 if deal.size else 0
        rows = mid_stream["_deal"].to_numpy()
        per_deal = {}
        for column, fill in (
            ("in_progress", False),
            ("entry_known", False),
            ("days_before_first_event", 0.0),
        ):
            values = np.full(n_deals, fill, dtype=type(fill))
            keep = rows < n_deals
            values[rows[keep]] = mid_stream[column].fill_null(fill).to_numpy()[keep]
            per_deal[column] = values[deal]
        truncated = (sp["visit"] == 0).to_numpy() & per_deal["in_progress"]
        known = truncated & per_deal["entry_known"]
        before = per_deal["days_before_first_event"].astype(np.float64)
        entry = np.where(known, before, 0.0)
        duration = duration + entry
        if days_before is not None:
            days_before = days_before + entry
        excluded = _readonly(truncated & ~known)
        entry = _readonly(entry)
    keep = None if excluded is None else ~excluded
    order, offsets = _group(stage * len(segments) + segment, n_open * len(segments), keep)
    stage_order, stage_offsets = _group(stage, n_open, keep)
    return SpellArrays(
        deal=deal,
        stage=_readonly(stage),
        segment=_readonly(segment),
        duration=_readonly(duration),
        destination=_readonly(destination),
        order=order,
        offsets=offsets,
        stage_order=stage_order,
        stage_offsets=stage_offsets,
        entry=entry,
        days_before_as_of=None if days_before is None else _readonly(days_before),
        excluded=excluded,
    )


def _same_ids(a: pl.Series, b: pl.Series) -> bool:
    """Whether two deal-id columns hold the same ids in the same order."""
    return a.len() == b.len() and bool((a.cast(pl.Utf8) == b.cast(pl.Utf8)).all())


def _sorted_deal_index(
    frames: dict[str, pl.DataFrame],
) -> tuple[pl.Series, dict[str, np.ndarray]] | None:
    """The deal table and each frame's deal index without hashing the ids, or None.

    The views of one :class:`DealLog` come in its deal order, sorted by ``deal_id``:
    the outcomes hold every deal once, in that order, and the ids of every other view
    are among them in the same order. Then the deal table is the outcomes' ids and each
    other row's index is found by binary search, checked. Anything else (hand-made
    frames) returns None and takes the general path (sort and join).
    """
    oc = frames.get("outcomes")
    if oc is None or any(
        "deal_id" not in f.columns or f["deal_id"].dtype != pl.Utf8 for f in frames.values()
    ):
        return None
    ids = oc["deal_id"]
    n = ids.len()
    if ids.null_count() or (n > 1 and not bool((ids.slice(1) > ids.slice(0, n - 1)).all())):
        return None  # not strictly increasing: not the deal order of a log
    index = {"outcomes": _readonly(np.arange(n, dtype=np.int64))}
    for name, f in frames.items():
        if name == "outcomes":
            continue
        col = f["deal_id"]
        if col.len() == 0:
            index[name] = _readonly(np.zeros(0, dtype=np.int64))
            continue
        if n == 0 or col.null_count():
            return None
        pos = ids.search_sorted(col).cast(pl.Int64).to_numpy()
        if pos.max() >= n or not bool((ids.gather(pos) == col).all()):
            return None  # an id the outcomes do not hold
        index[name] = _readonly(pos)
    return ids.alias("deal_id"), index


#: How far past the last event of a history an as-of date may lie, in days (a quarter).
MAX_DAYS_AFTER_LAST_EVENT = 92


def _check_as_of_within_history(log: DealLog, t: dt.datetime) -> None:
    """The as-of instant lies within the history (or at most a quarter after its end)."""
    if log.events.height == 0:
        raise ModelError("The history has no events; nothing to fit.")
    first, last = log.first_timestamp, log.last_timestamp
    known_until = max(last, log.cut) if log.cut is not None else last
    latest = known_until + dt.timedelta(days=MAX_DAYS_AFTER_LAST_EVENT)
    if t < first:
        raise ModelError(
            f"The as-of date {t:%Y-%m-%d} is before the first event of the history "
            f"({first:%Y-%m-%d %H:%M}): nothing is known at that date. Expected an as-of "
            f"date from {first:%Y-%m-%d} to {latest:%Y-%m-%d}."
        )
    if t > latest:
        days = (t - known_until).total_seconds() / 86_400
        raise ModelError(
            f"The as-of date {t:%Y-%m-%d} is {days:,.0f} days after the last event of the "
            f"history ({last:%Y-%m-%d %H:%M}): with no events in between, the fit would read "
            "the silence as deals that stopped moving and no new deals. Expected an as-of "
            f"date at most {MAX_DAYS_AFTER_LAST_EVENT} days after the last event (up to "
            f"{latest:%Y-%m-%d}), or a more recent export of the history."
        )


def _check_fittable(
    spells: pl.DataFrame, outcomes: pl.DataFrame, stages: StageMap, t: dt.datetime
) -> None:
    """Some deal has been won before ``t`` (an open stage without history is borrowed for
    by :mod:`forecast.fit.borrowing`, not refused)."""
    counts = dict(outcomes.group_by("status").len().iter_rows())
    if not counts.get("won"):
        found = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("open", "lost", "no_decision"))
        raise ModelError(
            f"No deal was won before the as-of date {t:%Y-%m-%d} ({found}): win "
            "probabilities and won amounts cannot be estimated. Expected at least one deal "
            f"in a won stage {list(stages.won)}; fit at a later as-of date, or check which "
            "stage names are classified as won (`StageMap(won=[...])`)."
        )
