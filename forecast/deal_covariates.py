"""Deal covariates in simulation: each open deal's hazard ratios and covariate profiles.

With deal covariates kept (:mod:`forecast.fit.covariates`), a deal's exit curves are
its segment's baseline curves (the deal with ``x = 0``) with every cause-specific
hazard multiplied by ``exp(β · x)`` (``docs/model.md``, "Deal covariates"). This
module packs what the outcome kernel needs (:class:`forecast._kernels.CovariateArrays`):

- **Current stage, exact per deal.** Each open deal's covariates at the as-of date
  (:func:`deal_covariate_values`: the values known then — amount, close date,
  pushes so far, the user's columns) give its own hazard ratios for its current
  stage, per parameter draw; its first exit is conditioned on its age.
- **Later stages, by profile.** After its next move a deal enters a stage whose
  close-date values are not known today: a deal with a close date carries its own,
  pushed by the rule of :func:`covariate_paths` if it passes before the expected
  entry (:func:`later_entries`, :func:`expected_entry_days`); without one they are
  drawn from the segment's spread at entry of that stage (:func:`entry_close_at`).
  The amount, the pushes so far and the user's columns carry over. Solving the renewal equations per deal would cost
  ``O(K² n_days²)`` per deal and draw, so deals are grouped into at most
  :data:`MAX_PROFILES` profiles per segment (k-means on the linear predictors
  ``β_{k,G} · x`` of the later stages; exact when there are fewer distinct
  values), each profile with its members' mean covariates.
- **New deals** draw their covariates from the segment's recent new deals
  (their values at creation), grouped into at most :data:`MAX_NEW_PROFILES`
  profiles. When the amount is a kept covariate, new deals' amounts are drawn in
  proportion to each recent deal's eventual win probability (a won new deal's
  amount comes from the wins, not from all new deals).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from forecast._kernels import CovariateArrays, ModelArrays
from forecast._kernels.tilt import baseline_hazards, tilt_pieces
from forecast.errors import ParameterError
from forecast.fit.amounts import weighted_quantile_grid
from forecast.fit.covariates import (
    DEFAULT_PUSH_INTERVAL_DAYS,
    PUSH_CAP,
    CovariateModel,
    CovariateSpec,
    chain_win_probabilities,
    covariate_states,
    destination_groups,
)
from forecast.segments import SEGMENT_COLUMN, segment_labels

if TYPE_CHECKING:  # pragma: no cover
    from forecast.data.deal_log import DealLog
    from forecast.fit.competing_risks import ExitCurves
    from forecast.fit.model import PipelineModel

__all__ = [
    "MAX_NEW_PROFILES",
    "MAX_PROFILES",
    "covariate_arrays",
    "covariate_paths",
    "deal_covariate_values",
    "eventual_outcome_probabilities",
    "expected_entry_days",
    "group_profiles",
    "later_entries",
    "own_entry_close",
    "sized_new_amounts",
]

#: Covariate profiles per segment for the stages after today's deals' next move.
MAX_PROFILES = 8
#: Covariate profiles per segment for new deals.
MAX_NEW_PROFILES = 4
#: Equally likely values of the new-deal amount sample.
N_AMOUNT_VALUES = 200
#: Ages in a stage beyond this many days count as this age (as in the simulation).
MAX_AGE_DAYS = 1095


def deal_covariate_values(
    cov: CovariateModel,
    log: DealLog,
    as_of: dt.datetime,
    segment_by: tuple[str, ...],
    pipe: pl.DataFrame,
) -> np.ndarray:
    """Each open deal's covariates at ``as_of``, shape (N, d), in the rows of ``pipe``.

    The values known at the as-of instant, a change stamped exactly at it included
    (as ``DealLog.as_of`` and ``DealLog.pipeline`` see it): the last counting-process
    row of the deal's current stage visit
    (:func:`forecast.fit.covariates.covariate_states` with ``known_at_as_of``),
    encoded as in the fit.
    """
    d = len(cov.columns)
    if pipe.height == 0 or d == 0:
        return np.zeros((pipe.height, d))
    user = [s.name for s in cov.specs if s.kind in ("categorical", "numeric")]
    cols = set(log.events.columns)
    missing = [c for c in user if c not in cols]
    if missing:
        raise ParameterError(
            f"The model's covariates need the column(s) {missing}, which the log does not "
            f"have (its columns: {sorted(cols)}). Read the log with them "
            "(`segment_columns` or `numeric_columns` of `read_deal_log`)."
        )
    cut = log.as_of(as_of)
    spells = segment_labels(cut.spells(as_of), segment_by).filter(pl.col("censored"))
    overdue = any(spec.kind == "overdue" for spec in cov.specs)
    states = covariate_states(cut, spells, as_of, user, split_at_close=overdue, known_at_as_of=True)
    last = states.group_by("_spell", maintain_order=True).last()
    x = cov.encode(last)
    ids = spells["deal_id"].to_numpy()[last["_spell"].to_numpy()]
    where = {str(i): r for r, i in enumerate(ids)}
    out = np.zeros((pipe.height, d))
    for r, deal in enumerate(pipe["deal_id"].to_list()):
        j = where.get(str(deal))
        if j is not None:
            out[r] = x[j]
    return out


def group_profiles(features: np.ndarray, max_profiles: int, n_iter: int = 25) -> np.ndarray:
    """Deterministic grouping of rows into at most ``max_profiles`` profiles.

    Rows with equal features share a profile; with more distinct rows than
    ``max_profiles``, k-means (Lloyd) started from the rows at evenly spaced
    quantiles of the first principal component. Returns the profile of each row
    (int64, values ``0 .. P - 1``, every profile non-empty).
    """
    n = features.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(np.round(features, 12), axis=0, return_inverse=True)
    if uniq.shape[0] <= max_profiles:
        return inverse.reshape(-1).astype(np.int64)
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    score = centred @ vt[0]
    order = np.argsort(score, kind="stable")
    picks = order[((np.arange(max_profiles) + 0.5) / max_profiles * n).astype(np.int64)]
    centers = features[picks].copy()
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(n_iter):
        dist = ((features[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        new = np.argmin(dist, axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for c in range(centers.shape[0]):
            members = labels == c
            if members.any():
                centers[c] = features[members].mean(axis=0)
    _, labels = np.unique(labels, return_inverse=True)  # drop empty profiles
    return labels.reshape(-1).astype(np.int64)


#: Pieces of a covariate path: the values now, then after each of up to 8 expected pushes.
PATH_PIECES = 9


def _timing_columns(cov: CovariateModel) -> tuple[int | None, int | None, int | None]:
    """Design columns of ``pushes``, ``days_to_close`` and ``overdue`` (None when not kept)."""
    pos = 0
    ip = idc = io = None
    for spec in cov.specs:
        if spec.kind == "pushes":
            ip = pos
        elif spec.kind == "days_to_close":
            idc = pos
        elif spec.kind == "overdue":
            io = pos
        pos += len(spec.columns)
    return ip, idc, io


def _close_spec(cov: CovariateModel) -> CovariateSpec:
    """The spec of ``days_to_close`` (kept)."""
    return next(s for s in cov.specs if s.kind == "days_to_close")


def covariate_paths(
    cov: CovariateModel,
    x0: np.ndarray,
    close_days: np.ndarray,
    age: np.ndarray,
    interval: float,
    stage: np.ndarray,
    n_pieces: int = PATH_PIECES,
    delay: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected covariate paths: the values now, then after each expected push.

    A rep pushes the close date when it passes: the ``m``-th push is expected
    ``max(c, 0) + (m − 1) I`` days from now (``c`` the days until the current close
    date, ``I`` the segment's mean push interval), and moves the close date to
    ``I`` days after the push. So after it ``pushes = pushes now + m`` (capped as
    in the encoding) and ``days_to_close`` (close date minus stage entry, months)
    ``= (age + push time + I) / 30``. Rows without a close date, or a model without
    close-date covariates, keep their values (one piece). With ``overdue`` kept the
    deal is first overdue for ``D`` days before each push (:func:`_overdue_paths`).

    Parameters
    ----------
    cov : CovariateModel
    x0 : ndarray, shape (n, d)
        Values now (encoded).
    close_days : ndarray, shape (n,)
        Days until the current close date (NaN when unknown).
    age : ndarray, shape (n,)
        Days since the stage entry.
    interval : float
        ``I``, days.
    stage : ndarray of int, shape (n,)
        Each row's stage (the ``days_to_close`` encoding is per stage).
    n_pieces : int
    delay : float
        ``D``, days from the instant the close date passes to its push (only with
        ``overdue`` kept, :func:`_overdue_paths`).

    Returns
    -------
    x : ndarray, shape (n, n_pieces, d)
    starts : ndarray, shape (n, n_pieces)
        Days from now at which each piece starts (``inf`` for unused pieces).
    """
    n = x0.shape[0]
    x = np.repeat(x0[:, None, :], n_pieces, axis=1)
    starts = np.full((n, n_pieces), np.inf)
    starts[:, 0] = 0.0
    ip, idc, io = _timing_columns(cov)
    if io is not None:
        _overdue_paths(cov, x, starts, x0, close_days, age, interval, delay, stage, io)
        return x, starts
    if ip is None and idc is None:
        return x, starts
    known = np.isfinite(close_days)
    for m in range(1, n_pieces):
        when = np.maximum(close_days, 0.0) + (m - 1) * interval
        starts[known, m] = when[known]
        if ip is not None:
            x[known, m, ip] = np.minimum(x0[known, ip] + m, PUSH_CAP)
        if idc is not None:
            x[known, m, idc] = _close_spec(cov).close_months(
                age[known] + when[known] + interval, stage[known]
            )
    return x, starts


def _overdue_paths(
    cov: CovariateModel,
    x: np.ndarray,
    starts: np.ndarray,
    x0: np.ndarray,
    close_days: np.ndarray,
    age: np.ndarray,
    interval: float,
    delay: float,
    stage: np.ndarray,
    io: int,
) -> None:
    """Fill ``x`` (n, Q, d) and ``starts`` (n, Q) with the paths of a model with ``overdue``.

    The data rule, on the clock of days from now: the deal is overdue from the
    instant its close date passes (``c``, days until it; already when ``c <= 0``)
    until the push, expected ``D`` days after it passed (the segment's mean delay,
    ``CovariateModel.push_delay``), at ``max(c + D, 0)``; the push moves the close
    date ``I`` days on, which passes in turn. So piece ``2m − 1`` (overdue again)
    starts when the ``m``-th close date passes and piece ``2m`` (not overdue, one
    more push, ``days_to_close`` the new close date) at the ``m``-th push: the
    ``m``-th push is at ``max(c + D, 0) + (m − 1)(I + D)``. Rows without a close date
    keep their values.
    """
    ip, idc, _ = _timing_columns(cov)
    known = np.isfinite(close_days)
    first_push = np.maximum(close_days + delay, 0.0)
    n_pieces = x.shape[1]
    for piece in range(1, n_pieces):
        m = (piece + 1) // 2  # the push this piece leads to (odd) or follows (even)
        push = first_push + (m - 1) * (interval + delay)
        if piece % 2:  # the m-th close date passes: overdue until the m-th push
            when = np.maximum(close_days, 0.0) if m == 1 else push - delay
            pushes_done = m - 1
            overdue = 1.0
        else:  # the m-th push
            when = push
            pushes_done = m
            overdue = 0.0
        starts[known, piece] = when[known]
        x[known, piece, io] = overdue
        if ip is not None:
            x[known, piece, ip] = np.minimum(x0[known, ip] + pushes_done, PUSH_CAP)
        if idc is not None and pushes_done > 0:
            last_push = first_push + (pushes_done - 1) * (interval + delay)
            x[known, piece, idc] = _close_spec(cov).close_months(
                age[known] + last_push[known] + interval, stage[known]
            )


#: Step of the low-discrepancy sequence that gives each row its level of the close
#: date at a future stage entry (the golden ratio's fractional part).
_LEVEL_STEP = 0.6180339887498949


def entry_close_at(cov: CovariateModel, n: int, g: int) -> np.ndarray:
    """Days from each row's future entry into every stage to its close date then, (n, K).

    Row ``i`` takes the level ``frac((i + 1) φ)`` (``φ`` the golden ratio's
    fractional part) of the segment's quantiles at entry
    (``CovariateModel.entry_close_days``), the same level in every stage: over
    many rows the close dates at entry follow the history's spread rather than
    all sitting at its median (with a proportional effect, the median deal is
    not the average deal). :data:`DEFAULT_PUSH_INTERVAL_DAYS` without quantiles.
    """
    q = cov.entry_close_days
    n_open = cov.beta.shape[0]
    if q.size == 0:
        return np.full((n, n_open), DEFAULT_PUSH_INTERVAL_DAYS)
    n_levels = q.shape[2]
    frac = np.modf((np.arange(n) + 1.0) * _LEVEL_STEP)[0]
    level = np.minimum((frac * n_levels).astype(np.int64), n_levels - 1)
    return np.ascontiguousarray(q[g][:, level].T)


def expected_entry_days(
    curves: Sequence[ExitCurves], stage: np.ndarray, age: np.ndarray
) -> np.ndarray:
    """Expected days from now until each row's next entry into every open stage, (n, K).

    From the segment's baseline curves (``curves``, one per open stage): with ``P_kj``
    the share of stage ``k``'s exits that go to open stage ``j`` and ``D_kj`` their
    mean stay (days; mass beyond the grid at its end), the probability ``h_j`` of
    reaching a target stage ``t`` from an entry into ``j`` and ``m_j = E[T 1{reach}]``
    solve the first-step equations ``h = P_·t + A h`` and ``m = (P ∘ D) h̃ + A m``
    (``A`` is ``P`` with the column of ``t`` zeroed, ``h̃`` is ``h`` with
    ``h̃_t = 1``). A row in stage ``k`` at age ``a`` takes its first step from the
    exits after ``a`` (shares and mean remaining stay conditioned on the age), so the
    expected entry time given the stage is reached is
    ``Σ_j p_j(a) (d_j(a) h̃_j + m̃_j) / Σ_j p_j(a) h̃_j`` (``m̃_t = 0``). NaN where the
    stage cannot be reached.

    Parameters
    ----------
    curves : sequence of ExitCurves, length K
        Exit curves of the open stages (one segment).
    stage : ndarray of int, shape (n,)
        Each row's current open stage.
    age : ndarray of float, shape (n,)
        Days since the current stage entry.
    """
    n_open = len(curves)
    n = stage.shape[0]
    length = max(c.max_day for c in curves) + MAX_AGE_DAYS + 2
    mid = np.arange(length, dtype=np.float64) + 0.5
    mass = np.empty((n_open, n_open, length))  # stage, open destination, from day bin on
    spent = np.empty((n_open, n_open, length))
    for k in range(n_open):
        dens = curves[k].exit_density(length)
        beyond = max(1.0 - float(dens.sum()), 0.0) * curves[k].tail_shares[:n_open]
        f = dens[:n_open]
        mass[k] = np.cumsum(f[:, ::-1], axis=1)[:, ::-1] + beyond[:, None]
        spent[k] = np.cumsum((f * mid)[:, ::-1], axis=1)[:, ::-1] + beyond[:, None] * length
    share = mass[:, :, 0]  # P
    with np.errstate(invalid="ignore", divide="ignore"):
        stay = np.where(share > 0, spent[:, :, 0] / share, 0.0)  # D
    reach = np.ones((n_open, n_open))  # h̃[j, t]
    time_in = np.zeros((n_open, n_open))  # m̃[j, t]
    eye = np.eye(n_open)
    for t in range(n_open):
        a = share.copy()
        a[:, t] = 0.0
        try:
            h = np.linalg.solve(eye - a, share[:, t])
            h[t] = 1.0
            m = np.linalg.solve(eye - a, (share * stay) @ h)
        except np.linalg.LinAlgError:  # pragma: no cover - a closed loop without exits
            h, m = np.full(n_open, np.nan), np.full(n_open, np.nan)
        h[t], m[t] = 1.0, 0.0
        reach[:, t], time_in[:, t] = h, m
    b = np.minimum(np.floor(np.maximum(age, 0.0)).astype(np.int64), length - 1)
    p = mass[stage, :, b]  # (n, K): exits after the age, by open destination
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.where(p > 0, spent[stage, :, b] / p - age[:, None], 0.0)
        num = (p * np.maximum(left, 0.0)) @ reach + p @ time_in
        den = p @ reach
        out = np.where(den > 1e-12, num / den, np.nan)
    return out if n else np.zeros((0, n_open))


def own_entry_close(
    close_days: np.ndarray, entry_days: np.ndarray, interval: float, delay: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A deal's own close date carried to a later stage entry, with the push rule.

    The rule of :func:`covariate_paths`: the ``m``-th push is expected at
    ``max(c + D, 0) + (m − 1)(I + D)`` days from now (``c`` the days until the
    current close date, ``I`` the push interval, ``D`` the delay from a passed close
    date to its push, 0 unless ``overdue`` is kept) and moves the close date to ``I``
    days after it. At an entry ``T`` days from now the pushes so far are those
    before ``T``, and the close date is the current one (none yet) or the last
    push's.

    Parameters
    ----------
    close_days : ndarray, shape (n,)
        ``c``, days (NaN when unknown).
    entry_days : ndarray, shape (n, K)
        ``T`` per stage, days from now (NaN when unknown).
    interval, delay : float
        ``I`` and ``D``, days.

    Returns
    -------
    close_at : ndarray, shape (n, K)
        Days from the entry to the close date then (NaN where ``c`` or ``T`` is).
    added : ndarray, shape (n, K)
        Pushes between now and the entry.
    """
    c = close_days[:, None]
    cycle = max(interval + delay, 1.0)
    first = np.maximum(c + delay, 0.0)
    with np.errstate(invalid="ignore"):
        added = np.where(entry_days >= first, np.floor((entry_days - first) / cycle) + 1.0, 0.0)
    close = np.where(added > 0, first + (added - 1.0) * cycle + interval, c)
    close_at = close - entry_days
    return close_at, np.where(np.isfinite(close_at), added, 0.0)


def entry_values(
    cov: CovariateModel,
    x: np.ndarray,
    stage: np.ndarray | None,
    g: int,
    close_at: np.ndarray | None = None,
    added_pushes: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's expected covariates at a fresh entry into every stage, shape (n, K, d).

    The time-invariant values (amount, user columns) carry over; the close date at
    entry is ``close_at`` (days from the entry, (n, K)) where finite, else drawn from
    the stage's spread at entry (:func:`entry_close_at`), and with it whether the
    deal is ``overdue`` at entry. Pushes so far grow by ``added_pushes`` where
    ``close_at`` is finite (an open deal's own close date carried with the push
    rule, :func:`own_entry_close`), else by the typical number a deal collects
    between entering its current stage and entering the later one (the difference
    of the stage means at entry, if positive). ``stage`` is each row's current stage
    (None: rows are new deals, whose pushes at entry are the stage means at entry).
    """
    ip, idc, io = _timing_columns(cov)
    tv = cov.time_varying_columns()
    typical = cov.entry_values[g]  # (K, d)
    out = np.where(tv[None, None, :], typical[None], x[:, None, :])
    n, n_open = x.shape[0], out.shape[1]
    own = np.isfinite(close_at) if close_at is not None else np.zeros((n, n_open), dtype=bool)
    have_spread = cov.entry_close_days.size > 0
    if have_spread or own.any():
        drawn = entry_close_at(cov, n, g)
        days = np.where(own, close_at, drawn) if close_at is not None else drawn
        fresh = own | have_spread
        if idc is not None:
            months = _close_spec(cov).close_months(days, np.arange(n_open)[None, :])
            out[:, :, idc] = np.where(fresh, months, out[:, :, idc])
        if io is not None:  # overdue at entry: close date passed
            out[:, :, io] = np.where(fresh, (days <= 0.0).astype(np.float64), out[:, :, io])
    if ip is not None:
        if stage is None:
            out[:, :, ip] = np.maximum(typical[None, :, ip], out[:, :, ip])
        else:
            grow = np.maximum(typical[None, :, ip] - typical[stage, ip][:, None], 0.0)
            if added_pushes is not None:
                grow = np.where(own, added_pushes, grow)
            out[:, :, ip] = np.minimum(x[:, ip][:, None] + grow, PUSH_CAP)
    return out


def later_entries(
    cov: CovariateModel,
    g: int,
    curves: Sequence[ExitCurves],
    x: np.ndarray,
    stage: np.ndarray,
    close_days: np.ndarray,
    age: np.ndarray,
    interval: float,
    delay: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Open deals' covariates at entry into every stage and their close dates then.

    A deal with a close date carries its own into later stages
    (:func:`own_entry_close` at the expected entry time,
    :func:`expected_entry_days` on segment ``g``'s baseline curves); a deal without
    one, or a stage it cannot reach, takes the stage's spread at entry
    (:func:`entry_close_at`). ``curves`` are the segment's baseline curves of the
    open stages; the other arguments as in :func:`covariate_paths` (one segment).

    Returns
    -------
    at_entry : ndarray, shape (n, K, d)
        :func:`entry_values`.
    close_at : ndarray, shape (n, K)
        Days from each entry to the close date then.
    """
    n_open = cov.beta.shape[0]
    n = x.shape[0]
    drawn = entry_close_at(cov, n, g)
    known = np.isfinite(close_days)
    if n == 0 or _timing_columns(cov) == (None, None, None) or not known.any():
        return entry_values(cov, x, stage, g), drawn
    close_at = np.full((n, n_open), np.nan)
    added = np.zeros((n, n_open))
    sel = np.flatnonzero(known)
    when = expected_entry_days(curves, stage[sel], age[sel])
    close_at[sel], added[sel] = own_entry_close(close_days[sel], when, interval, delay)
    at_entry = entry_values(cov, x, stage, g, close_at, added)
    return at_entry, np.where(np.isfinite(close_at), close_at, drawn)


def _profiles(
    cov: CovariateModel,
    at_entry: np.ndarray,
    close_at: np.ndarray,
    interval: float,
    max_profiles: int,
    delay: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profiles of rows for fresh stage entries, from their values at entry (n, K, d).

    Rows are grouped (:func:`group_profiles`) on the linear predictors
    ``β_{k,G} · x_k`` of their values at entry into every stage; a profile's values
    are its members' mean, and its path in each stage starts from the entry
    (:func:`covariate_paths` with its members' mean days from entry to close date,
    ``close_at`` (n, K): :func:`later_entries` or :func:`entry_close_at`).

    Returns
    -------
    labels : ndarray (n,)
    x_path : ndarray (P, K, Q, d)
    starts : ndarray (P, K, Q)
    """
    n_open = cov.beta.shape[0]
    n, _, d = at_entry.shape
    feats = np.einsum("kgd,nkd->nkg", cov.beta, at_entry).reshape(n, -1)
    labels = group_profiles(feats, max_profiles)
    n_prof = int(labels.max()) + 1 if labels.size else 1
    x_path = np.zeros((n_prof, n_open, PATH_PIECES, d))
    starts = np.zeros((n_prof, n_open, PATH_PIECES))
    if close_at.shape[0] == 0:
        close_at = np.full((1, n_open), DEFAULT_PUSH_INTERVAL_DAYS)
    for p in range(n_prof):
        members = labels == p
        mean = at_entry[members].mean(axis=0) if members.any() else np.zeros((n_open, d))
        close = close_at[members].mean(axis=0) if members.any() else close_at.mean(axis=0)
        xp, sp = covariate_paths(
            cov, mean, close, np.zeros(n_open), interval, np.arange(n_open), delay=delay
        )
        x_path[p], starts[p] = xp, sp
    return labels, x_path, starts


def covariate_arrays(
    model: PipelineModel, log: DealLog, pipe: pl.DataFrame, arrays: ModelArrays
) -> tuple[CovariateArrays, dict[str, np.ndarray]]:
    """The :class:`~forecast._kernels.CovariateArrays` of ``model`` and the open pipeline.

    Parameters
    ----------
    model : PipelineModel
        With kept covariates (``model.covariates.active``).
    log : DealLog
        The history holding the pipeline.
    pipe : polars.DataFrame
        The open pipeline with segment labels, in the rows of ``arrays``.
    arrays : ModelArrays
        From :func:`forecast.simulate.model_arrays` (sizes, ages and day bins).

    Returns
    -------
    covariates : CovariateArrays
    new_amounts : dict segment -> ndarray
        When the amount is a kept covariate: per segment, the new-deal amounts drawn
        in proportion to each recent new deal's eventual win probability
        (:func:`sized_new_amounts`); empty otherwise.
    """
    cov = model.covariates
    assert cov is not None and cov.active
    segs = list(model.segments)
    sizes = arrays.shape
    n_draws, n_seg, n_open, n_codes, length = (sizes[x] for x in ("B", "G", "K", "C", "L"))
    betas = (
        cov.draw_beta[:n_draws]
        if cov.draw_beta is not None and model.draws is not None
        else np.broadcast_to(cov.beta, (n_draws, *cov.beta.shape))
    )
    draws = model.draws
    base = np.empty((n_draws, n_seg, n_open, n_codes, length))
    for b in range(n_draws):
        for g in range(n_seg):
            for k in range(n_open):
                c = cov.baseline[(segs[g], k)]
                if draws is not None:
                    c = c.scaled(
                        float(draws.time_factor[b, g, k]), draws.destination_multiplier[b, g, k]
                    )
                base[b, g, k] = c.exit_density(length)
    x = deal_covariate_values(cov, log, model.as_of, model.segment_by, pipe)
    seg_of = np.asarray(arrays.deal_segment)
    close = pipe["close_date"].to_list() if "close_date" in pipe.columns else [None] * pipe.height
    close_days = np.array(
        [np.nan if c is None else (c - model.as_of).total_seconds() / 86_400.0 for c in close]
    )
    age = pipe["days_in_stage"].to_numpy().astype(np.float64) if pipe.height else np.zeros(0)
    interval = np.array(
        [
            cov.push_interval.get(g, cov.push_interval.get("*", DEFAULT_PUSH_INTERVAL_DAYS))
            for g in segs
        ]
    )
    delay = np.array([cov.push_delay.get(g, cov.push_delay.get("*", 0.0)) for g in segs])
    deal_x, deal_starts = (
        covariate_paths(cov, x, close_days.reshape(-1), age, 0.0, np.zeros(0, np.int64))
        if x.shape[0] == 0
        else _deal_paths(
            cov,
            x,
            close_days,
            age,
            interval[seg_of],
            np.asarray(arrays.deal_stage),
            delay[seg_of],
        )
    )
    labels = np.zeros(x.shape[0], dtype=np.int64)
    prof: list[tuple[np.ndarray, np.ndarray]] = []
    news: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for g, label in enumerate(segs):
        idx = np.flatnonzero(seg_of == g)
        at_entry, close_at = later_entries(
            cov,
            g,
            [cov.baseline[(label, k)] for k in range(n_open)],
            x[idx],
            np.asarray(arrays.deal_stage)[idx],
            close_days[idx],
            age[idx],
            float(interval[g]),
            float(delay[g]),
        )
        lab, xp, sp = _profiles(
            cov, at_entry, close_at, float(interval[g]), MAX_PROFILES, float(delay[g])
        )
        labels[idx] = lab
        prof.append((xp, sp))
        sample = cov.new_deal_x.get(label, np.zeros((0, x.shape[1])))
        if sample.shape[0] == 0:
            sample = np.zeros((1, x.shape[1]))
        at_entry_n = entry_values(cov, sample, None, g)
        lab_n, xn, sn = _profiles(
            cov,
            at_entry_n,
            entry_close_at(cov, sample.shape[0], g),
            float(interval[g]),
            MAX_NEW_PROFILES,
            float(delay[g]),
        )
        news.append((xn, sn, np.bincount(lab_n, minlength=xn.shape[0]) / lab_n.size))
    d = x.shape[1]
    n_prof = max(p[0].shape[0] for p in prof)
    n_new = max(p[0].shape[0] for p in news)
    prof_x = np.zeros((n_seg, n_prof, n_open, PATH_PIECES, d))
    prof_s = np.zeros((n_seg, n_prof, n_open, PATH_PIECES))
    new_x = np.zeros((n_seg, n_new, n_open, PATH_PIECES, d))
    new_s = np.zeros((n_seg, n_new, n_open, PATH_PIECES))
    weights = np.zeros((n_seg, n_new))
    for g in range(n_seg):
        (xp, sp), (xn, sn, wn) = prof[g], news[g]
        prof_x[g, : xp.shape[0]], prof_s[g, : xp.shape[0]] = xp, sp
        prof_s[g, xp.shape[0] :, :, 1:] = np.inf
        new_x[g, : xn.shape[0]], new_s[g, : xn.shape[0]] = xn, sn
        new_s[g, xn.shape[0] :, :, 1:] = np.inf
        weights[g, : xn.shape[0]] = wn
    arrays_cov = CovariateArrays(
        base_dens=base,
        betas=np.ascontiguousarray(betas),
        deal_x=deal_x,
        deal_starts=deal_starts,
        deal_profile=labels,
        profile_x=prof_x,
        profile_starts=prof_s,
        new_x=new_x,
        new_starts=new_s,
        new_weights=weights,
    )
    new_amounts: dict[str, np.ndarray] = {}
    if any(s.kind == "amount" for s in cov.specs):
        new_amounts = sized_new_amounts(model)
    return arrays_cov, new_amounts


def _deal_paths(
    cov: CovariateModel,
    x: np.ndarray,
    close_days: np.ndarray,
    age: np.ndarray,
    interval: np.ndarray,
    stage: np.ndarray,
    delay: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`covariate_paths` of today's deals, each with its segment's push interval
    and delay."""
    out_x = np.empty((x.shape[0], PATH_PIECES, x.shape[1]))
    out_s = np.empty((x.shape[0], PATH_PIECES))
    delay = np.zeros_like(interval) if delay is None else delay
    pairs = np.unique(np.stack([interval, delay], axis=1), axis=0)
    for value, wait in pairs:
        sel = (interval == value) & (delay == wait)
        out_x[sel], out_s[sel] = covariate_paths(
            cov, x[sel], close_days[sel], age[sel], float(value), stage[sel], delay=float(wait)
        )
    return out_x, out_s


def sized_new_amounts(model: PipelineModel) -> dict[str, np.ndarray]:
    """Per segment, the amounts of new deals that win: recent amounts weighted by win probability.

    Each recent new deal (``CovariateModel.new_deal_x``, ``new_deal_amount``) gets
    the eventual win probability of a deal entering the first stage with its
    covariates (close-date values at each stage's median at entry) under the
    segment's baseline curves; its amount is weighted by it. Returned as
    :data:`N_AMOUNT_VALUES` equally likely values per segment.
    """
    cov = model.covariates
    assert cov is not None
    n_open = model.stages.n_open
    group_of = destination_groups(n_open)
    out: dict[str, np.ndarray] = {}
    for g, label in enumerate(model.segments):
        amounts = cov.new_deal_amount.get(label)
        sample = cov.new_deal_x.get(label)
        if amounts is None or sample is None or amounts.size == 0:
            continue
        curves = [cov.baseline[(label, k)] for k in range(n_open)]
        values = entry_values(cov, sample, None, g)
        r = np.exp(np.einsum("kgd,mkd->mkg", cov.beta, values))[..., group_of]  # (m, K, C)
        p = chain_win_probabilities(curves, r, n_open)
        ok = np.isfinite(amounts) & (amounts >= 0) & np.isfinite(p)
        if not ok.any() or not (p[ok] > 0).any():
            continue
        out[label] = weighted_quantile_grid(amounts[ok], p[ok], N_AMOUNT_VALUES)
    return out


def eventual_outcome_probabilities(
    model: PipelineModel, log: DealLog, pipe: pl.DataFrame
) -> np.ndarray:
    """Eventual (won, lost, no decision) probabilities of each open deal, with its covariates.

    The same model as the simulation's (:func:`covariate_arrays`) without a horizon:
    the deal's current stage with its own hazard ratios along its expected
    covariate path from its age on; the later stages through the absorbing chain
    ``B = (I − Q)⁻¹ R`` of its profile's tilted eventual shares. ``pipe`` is the
    open pipeline with segment labels. Returns shape (N, 3); rows sum to 1 where
    any mass leaves.
    """
    cov = model.covariates
    assert cov is not None and cov.active
    n_open = model.stages.n_open
    group_of = destination_groups(n_open)
    out = np.zeros((pipe.height, 3))
    if pipe.height == 0:
        return out
    x = deal_covariate_values(cov, log, model.as_of, model.segment_by, pipe)
    stage = pipe["stage_code"].to_numpy().astype(np.int64)
    age_days = pipe["days_in_stage"].to_numpy().astype(np.float64)
    age = np.minimum(np.floor(age_days + 0.5).astype(np.int64), MAX_AGE_DAYS)
    close = pipe["close_date"].to_list()
    close_days = np.array(
        [np.nan if c is None else (c - model.as_of).total_seconds() / 86_400.0 for c in close]
    )
    seg = np.array(pipe[SEGMENT_COLUMN].to_list())
    for g, label in enumerate(model.segments):
        idx = np.flatnonzero(seg == label)
        if idx.size == 0:
            continue
        interval = cov.push_interval.get(
            label, cov.push_interval.get("*", DEFAULT_PUSH_INTERVAL_DAYS)
        )
        delay = cov.push_delay.get(label, cov.push_delay.get("*", 0.0))
        curves = [cov.baseline[(label, k)] for k in range(n_open)]
        n_long = max(c.max_day for c in curves) * 3 + 30
        length = int(age[idx].max()) + n_long
        hazards = np.empty((n_open, group_of.size, length))
        for k in range(n_open):
            baseline_hazards(np.ascontiguousarray(curves[k].exit_density(length)), hazards[k])
        at_entry, close_at = later_entries(
            cov, g, curves, x[idx], stage[idx], close_days[idx], age_days[idx], interval, delay
        )
        labels, prof_x, prof_s = _profiles(cov, at_entry, close_at, interval, MAX_PROFILES, delay)
        buf = np.empty((group_of.size, length))
        chains = np.empty((prof_x.shape[0], n_open, 3))
        for p in range(prof_x.shape[0]):
            shares = np.empty((n_open, group_of.size))
            r = np.exp(np.einsum("kqd,kgd->kqg", prof_x[p], cov.beta))[..., group_of]
            for k in range(n_open):
                left = tilt_pieces(
                    hazards[k], np.ascontiguousarray(r[k]), prof_s[p, k], np.int64(0), buf
                )
                shares[k] = buf.sum(axis=1) + left * curves[k].tail_shares
            chains[p] = np.linalg.solve(np.eye(n_open) - shares[:, :n_open], shares[:, n_open:])[
                :, :3
            ]
        deal_x, deal_s = covariate_paths(
            cov, x[idx], close_days[idx], age_days[idx], interval, stage[idx], delay=delay
        )
        for row, i in enumerate(idx):
            k = int(stage[i])
            r = np.exp(deal_x[row] @ cov.beta[k].T)[:, group_of]
            left = tilt_pieces(
                hazards[k], np.ascontiguousarray(r), deal_s[row], np.int64(age[i]), buf
            )
            first = buf.sum(axis=1) + left * curves[k].tail_shares
            open_first = first[:n_open].copy()
            open_first[k] = 0.0
            p_out = first[n_open : n_open + 3] + open_first @ chains[labels[row]]
            total = p_out.sum()
            out[i] = p_out / total if total > 0 else p_out
    return out
