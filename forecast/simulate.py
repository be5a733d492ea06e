"""Pack a fitted model and the open pipeline into arrays, run the kernels, build a `Forecast`.

The path range is split into chunks; every path has its own random stream seeded
from ``(seed, path index)``, so the samples do not depend on the chunk size, the
thread count or the executor. The outcome probabilities and the sampling scheme
are described in ``docs/model.md`` (sections 12 and 13), the arrays in
``docs/internals.md`` §5.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from scipy import special
from tqdm import tqdm

from forecast._blas import one_blas_thread
from forecast._kernels import (
    CovariateArrays,
    ModelArrays,
    OutcomeArrays,
    PathSamples,
    SamplingInputs,
    dated_outcome_probabilities,
    outcome_probabilities,
    sample_paths,
    sampling_inputs,
    simulate_arrays,
    tilted_outcome_probabilities,
)
from forecast._validation import check_int, check_seed
from forecast.data.validation import INT64_MAX_CENTS
from forecast.deal_covariates import covariate_arrays
from forecast.errors import AmountError, ParameterError
from forecast.fit.data import mid_stream_deals
from forecast.fit.trend import COHORT_DAYS, MAX_COHORTS, cohort_factors
from forecast.results import Forecast
from forecast.segments import SEGMENT_COLUMN, segment_labels

if TYPE_CHECKING:  # pragma: no cover
    from forecast.data.deal_log import DealLog
    from forecast.fit.model import PipelineModel

__all__ = [
    "check_won_cents_fit",
    "condition_on_not_pulled_in",
    "early_window_days",
    "entry_dated_densities",
    "model_arrays",
    "prepare_simulation",
    "quarter_bins",
    "shock_scale",
    "simulate",
    "simulate_quarter_totals",
    "weighted_pipeline",
]

_DAY = dt.timedelta(days=1)
#: Ages beyond this many days in a stage are treated as this age (the tail is
#: parametric there, so the answer barely changes, and arrays stay small).
MAX_AGE_DAYS = 1095


def _csr(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(groups) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(g) for g in groups])
    values = (
        np.concatenate([np.asarray(g, dtype=np.float64) for g in groups]) if groups else np.zeros(0)
    )
    return offsets, np.ascontiguousarray(values, dtype=np.float64)


#: Upper tail probability at which the count of new deals in one path is bounded by
#: :func:`check_won_cents_fit` (the Gamma multiplier's quantile, then Poisson + 12 sd).
_NEW_DEAL_TAIL = 1e-15


def _segment_max(offsets: np.ndarray, values: np.ndarray, empty: float) -> np.ndarray:
    """Largest value of each CSR row, ``empty`` for empty rows."""
    off = np.asarray(offsets).ravel()
    return np.array(
        [values[lo:hi].max() if hi > lo else empty for lo, hi in itertools.pairwise(off)],
        dtype=np.float64,
    )


def check_won_cents_fit(arrays: Any, n_paths: int, deal_ids: Any, segments: Any) -> None:
    """Raise :class:`AmountError` unless every integer sum of won cents the sampler makes fits.

    The sampler rounds each won amount (pipeline amount × win ratio) to whole cents and
    adds them as int64: per path, quarter and segment over the open and the new deals,
    and per deal over all paths. This bounds each sum from the largest win ratio of
    the segment (amounts can grow when won), the largest new-deal amount, and a count
    of new deals per path exceeded with probability below ``1e-15`` (the
    Gamma-Poisson count's multiplier at that upper quantile, then the Poisson mean
    plus 12 standard deviations).

    Parameters
    ----------
    arrays : forecast._kernels.ModelArrays
        Amounts after any scenario lever.
    n_paths : int
        Paths of the whole run (all shards).
    deal_ids : array_like, shape (N,)
        Open deals' ids, in the order of ``arrays.deal_amount``.
    segments : sequence of str, length G
        Segment labels by code.

    Raises
    ------
    AmountError
        Naming the deal (and segment) whose amounts would overflow, the bound and the
        limit, and what to change (a larger currency unit, fewer paths).
    """

    amount = np.asarray(arrays.deal_amount, dtype=np.float64)
    seg = np.asarray(arrays.deal_segment, dtype=np.int64)
    n_seg = len(segments)
    ratio_max = np.maximum(
        _segment_max(arrays.ratio_offsets, arrays.ratio_values, 1.0),
        _segment_max(arrays.ratio_qe_offsets, arrays.ratio_qe_values, 1.0),
    )
    new_max = _segment_max(arrays.new_amount_offsets, arrays.new_amount_values, 1.0)
    limit = float(INT64_MAX_CENTS)
    advice = "Give the amounts in a larger currency unit (e.g. thousands)"
    # One deal, one win: its cents (rounded half up).
    deal_cents = amount * ratio_max[seg] * 100.0 + 1.0
    if deal_cents.size and float(deal_cents.max()) * n_paths > limit:
        i = int(np.argmax(deal_cents))
        raise AmountError(
            f"Deal `{deal_ids[i]}` (amount {amount[i]:,.2f}, segment {segments[seg[i]]}, "
            f"largest won/pipeline ratio {ratio_max[seg[i]]:.4g}) won in all {n_paths:,} paths "
            f"would sum to {float(deal_cents[i]) * n_paths:.3g} cents, above the int64 limit "
            f"{limit:.3g} of the per-deal sums. {advice}, or simulate fewer paths.",
            column="amount",
            deal_id=deal_ids[i],
            expected=f"amount x ratio x 100 x n_paths <= {limit:.3g}",
            found=float(deal_cents[i]) * n_paths,
        )
    pipeline = np.bincount(seg, weights=deal_cents, minlength=n_seg)
    counts = np.asarray(arrays.new_counts, dtype=np.float64)  # (B, G, H)
    shape = np.asarray(arrays.new_shape, dtype=np.float64)  # (G,)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        mult = np.where(
            np.isfinite(shape) & (shape > 0),
            special.gammainccinv(np.where(shape > 0, shape, 1.0), _NEW_DEAL_TAIL) / shape,
            1.0,
        )
        lam = counts.max(axis=0).sum(axis=-1) * mult if counts.size else np.zeros(n_seg)
        n_new = lam + 12.0 * np.sqrt(lam) + 50.0
        total = pipeline + n_new * (new_max * ratio_max * 100.0 + 1.0)
    bad = np.flatnonzero(~(total <= limit))
    if bad.size:
        g = int(bad[0])
        in_g = np.flatnonzero(seg == g)
        top = in_g[np.argmax(amount[in_g])] if in_g.size else None
        raise AmountError(
            f"The won amounts of segment {segments[g]} in one path and quarter could reach "
            f"{float(total[g]):.3g} cents ({float(pipeline[g]):.3g} from today's "
            f"{in_g.size:,} open deals, the rest from up to {float(n_new[g]):.3g} new deals of "
            f"up to {float(new_max[g]):,.2f} each; largest won/pipeline ratio "
            f"{float(ratio_max[g]):.4g}), above the int64 limit {limit:.3g}. {advice}."
            + ("" if top is None else f" Largest open deal: `{deal_ids[top]}`."),
            column="amount",
            deal_id=None if top is None else deal_ids[top],
            expected=f"sum of won cents <= {limit:.3g}",
            found=float(total[g]),
        )


def quarter_bins(model: PipelineModel, horizon: int) -> tuple[list[Any], np.ndarray]:
    """Horizon quarters and their day-bin boundaries ``qb`` (H + 1,) relative to ``as_of``."""
    quarters = model.calendar.quarters(model.as_of, horizon)
    ends = [q.end for q in quarters]
    qb = np.zeros(horizon + 1, dtype=np.int64)
    for i, end in enumerate(ends):
        # Day bin d covers [as_of + d, as_of + d + 1); a quarter ends at the first
        # bin boundary at or after its end (and every quarter keeps at least one bin).
        qb[i + 1] = max(math.ceil((end - model.as_of) / _DAY), qb[i] + 1)
    return quarters, qb


def weighted_pipeline(model: PipelineModel, pipe: pl.DataFrame, quarters: list[Any]) -> np.ndarray:
    """The classical weighted pipeline per quarter, currency, shape (H,).

    Each open deal counts ``amount × P(win from its stage)`` (the model's pooled
    eventual win probability of a fresh deal in that stage, i.e. the stage
    probability a CRM would show) in the quarter holding its rep close date; deals
    whose close date has already passed count in the first quarter, deals without
    a close date or beyond the horizon do not count.
    """
    stage_p = np.array([model.win_probability(k, segment=None) for k in range(model.stages.n_open)])
    out = np.zeros(len(quarters))
    if pipe.height == 0:
        return out
    amount = pipe["amount"].fill_null(0.0).to_numpy()
    p = stage_p[pipe["stage_code"].to_numpy()]
    close = pipe["close_date"].to_list()
    for i, c in enumerate(close):
        if c is None:
            continue
        for q, fq in enumerate(quarters):
            if c < fq.end:
                out[q] += amount[i] * p[i]
                break
    return out


def early_window_days(model: PipelineModel, quarters: list[Any]) -> int:
    """Day bins from ``model.as_of`` to the end of the first quarter's early window (0 if past it).

    The early window is the first ``quarter_end.window_days`` days of the quarter
    holding the as-of instant, the days whose wins the quarter-end push moves
    into the previous quarter.
    """
    w = dt.timedelta(days=int(model.quarter_end.window_days))
    left = quarters[0].start + w - model.as_of
    return max(0, math.ceil(left / _DAY)) if left > dt.timedelta(0) else 0


def condition_on_not_pulled_in(
    arrays: ModelArrays,
    outcomes: OutcomeArrays,
    early_days: int,
    covariates: CovariateArrays | None = None,
    outcomes_of: Any = None,
) -> OutcomeArrays:
    """Condition today's open deals on not having been pulled into the closed quarter.

    Under the quarter-end model a win due in the first ``W`` days of a quarter
    closes, with probability ``pi``, in the last ``W`` days of the previous one.
    When the as-of instant lies inside that early window (e.g. at a quarter
    start), a deal still open then has *not* been pulled in; so its raw win
    probability ``r`` for the rest of the window is thinned by ``1 - pi`` and the
    whole outcome distribution renormalised by ``1 - pi r`` (Bayes). Without this
    the forecast of the quarter starting at the as-of date counts those pulled-in
    wins twice: once in the previous quarter's bookings and once more here (on the
    synthetic generator +5 % wins of SMB deals open at the quarter start).

    Parameters
    ----------
    arrays : ModelArrays
    outcomes : OutcomeArrays
        From :func:`forecast._kernels.outcome_probabilities` of ``arrays``.
    early_days : int
        Day bins from the as-of instant to the end of the early window
        (:func:`early_window_days`); 0 leaves ``outcomes`` unchanged.
    covariates : CovariateArrays, optional
        The deals' own hazards, when the model has deal covariates.
    outcomes_of : callable, optional
        ``outcomes_of(arrays) -> OutcomeArrays``, the raw outcome probabilities of
        ``arrays`` (default: :func:`~forecast._kernels.outcome_probabilities`, or the
        tilted ones with ``covariates``).

    Returns
    -------
    forecast._kernels.OutcomeArrays
        New ``p_win``/``p_qe`` of today's deals (new deals unchanged).
    """
    n_deals = outcomes.p_win.shape[1]
    if early_days <= 0 or n_deals == 0:
        return outcomes
    pull = np.asarray(arrays.pull_in, dtype=np.float64)  # (B, G)
    if not np.any(pull > 0):
        return outcomes
    # Raw (no pull-in) P(win within the first `early_days` bins), shape (B, N, 1).
    early = dataclasses.replace(
        arrays,
        qb=np.array([0, early_days], dtype=np.int64),
        qe_window=0,
        pull_in=0.0,
        new_counts=None,
        new_shape=None,
        new_entry_mix=None,
        new_amount=None,
    )
    if outcomes_of is not None:
        r = outcomes_of(early).p_win[:, :, 0]
    elif covariates is None:
        r = outcome_probabilities(early).p_win[:, :, 0]
    else:
        r = tilted_outcome_probabilities(early, covariates).p_win[:, :, 0]
    pi = pull[:, np.asarray(arrays.deal_segment, dtype=np.int64)]  # (B, N)
    removed = pi * r
    denom = 1.0 - removed
    p_win = outcomes.p_win.copy()
    p_qe = outcomes.p_qe.copy()
    first = p_win[:, :, 0]
    qe_mass = p_qe[:, :, 0] * first
    new_first = np.maximum(first - removed, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_qe[:, :, 0] = np.where(new_first > 0, np.minimum(qe_mass / new_first, 1.0), 0.0)
        p_win[:, :, 0] = new_first / denom
        p_win[:, :, 1:] /= denom[:, :, None]
    return dataclasses.replace(outcomes, p_win=p_win, p_qe=p_qe)


def _won_elasticity(dens_gk: np.ndarray, won: int, n_bins: int = 8) -> tuple[float, float]:
    """Win-weighted ``1 − P(won | exit at t)`` of one (segment, stage), and its won mass.

    ``dens_gk`` is (C, L) exit sub-densities. The day bins are grouped into
    ``n_bins`` groups of equal won mass (single days are too noisy: a day with one
    exit, a win, would read ``P(won | exit) = 1``).
    """
    f_won = dens_gk[won]
    f_all = dens_gk.sum(axis=0)
    total = float(f_won.sum())
    if not total > 0:
        return 0.0, 0.0
    # Group of a day: won mass before it; days after the last win form group n_bins
    # (no wins there, so no weight).
    before = np.cumsum(f_won) - f_won
    group = np.minimum((before / total * n_bins).astype(np.int64), n_bins)
    w = np.bincount(group, weights=f_won, minlength=n_bins + 1)
    a = np.bincount(group, weights=f_all, minlength=n_bins + 1)
    ok = a > 0
    return float((w[ok] * (1.0 - w[ok] / a[ok])).sum() / total), total


def shock_scale(model: PipelineModel, arrays: ModelArrays, outcomes: OutcomeArrays) -> float:
    """Factor on the shock sigma that gives the kernel's tilt the fitted effect on bookings.

    The fitted ``sigma`` (:mod:`forecast.fit.shocks`) is the spread of a shift of
    the log-odds of "won" against the other destinations *at each exit*: a win
    from an exit whose win probability is ``p`` moves by ``(1 − p) z`` in log
    terms. The kernel tilts each deal's *horizon* categorical instead, where a
    win in quarter ``q`` moves by ``(1 − P(q)) z``, and ``P(q)`` (a deal's chance
    to win in one quarter) is much smaller than the win probability of the exits
    wins come from (late-stage exits are mostly wins). Unscaled, the shock moved
    quarterly bookings about twice as much as the fitted one does, and the
    intervals were too wide (50 % coverage 0.64, 80 % 0.89 over 120 synthetic
    cases). Returns ``ē / κ``: ``ē`` the win-weighted exit elasticity
    ``1 − P(won | exit at t)`` (per segment and stage, weighted by the stage's
    spells × won share), ``κ`` the kernel's amount-weighted elasticity
    ``1 − P(q)`` over today's deals (and new deals, elasticity ≈ 1) in the first
    quarter, both for parameter draw 0.
    """
    dens = np.asarray(arrays.dens)
    K = dens.shape[2]
    n_spells = {
        (r["segment"], r["stage"]): r["n_spells"] for r in model.shrinkage.iter_rows(named=True)
    }
    num = den = 0.0
    for g, seg in enumerate(model.segments):
        for k, name in enumerate(model.stages.open):
            e, won_mass = _won_elasticity(dens[0, g, k], K)
            w = float(n_spells.get((seg, name), 1)) * won_mass
            num += w * e
            den += w
    if not den > 0:
        return 1.0
    target = num / den
    p = outcomes.p_win[0, :, 0]
    amount = np.asarray(arrays.deal_amount, dtype=np.float64)
    pipe_w = amount * p
    new_w = 0.0
    if arrays.new_counts is not None and np.asarray(arrays.new_counts).size:
        counts = np.asarray(arrays.new_counts)[0, :, 0]  # (G,)
        pmf = outcomes.new_pmf[0, :, 0, 0]
        mean_amount = np.array(
            [
                arrays.new_amount_values[lo:hi].mean() if hi > lo else 1.0
                for lo, hi in itertools.pairwise(np.asarray(arrays.new_amount_offsets).ravel())
            ]
        )[: counts.shape[0]]
        new_w = float((counts * pmf * mean_amount).sum())
    total = float(pipe_w.sum()) + new_w
    if not total > 0:
        return 1.0
    kernel = (float((pipe_w * (1.0 - p)).sum()) + new_w) / total
    return float(min(1.0, target / kernel)) if kernel > 0 else 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class AgeMixture:
    """Open deals whose age in stage is known only within a range: a mixture of ages.

    A deal already in progress when the log started and still in its first recorded
    stage entered that stage at an unknown time between its creation and its first
    event. Its outcome distribution is the average over ``ages`` (whole days) of the
    age-conditioned ones, each of its rows weighing ``weights`` (``docs/model.md``,
    "Logs that start mid-stream").

    Attributes
    ----------
    deal : ndarray of int64, shape (M,)
        Index of the deal (row of the open pipeline) of each mixture row.
    ages : ndarray of int64, shape (M,)
        Age in stage (days) of each mixture row.
    weights : ndarray of float64, shape (M,)
        Weight of each row; a deal's rows sum to 1.
    """

    deal: np.ndarray
    ages: np.ndarray
    weights: np.ndarray

    @classmethod
    def empty(cls) -> AgeMixture:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))

    @property
    def n(self) -> int:
        return int(self.deal.size)


#: Ages of the mixture of a deal whose age in stage is known only within a range.
MIXTURE_AGES = 8


def mid_stream_ages(
    model: PipelineModel,
    log: DealLog,
    pipe: pl.DataFrame,
    deal_segment: np.ndarray,
    deal_age: np.ndarray,
    shared: dict[Any, Any] | None = None,
) -> tuple[np.ndarray, AgeMixture]:
    """Ages in stage of open deals that were already in progress when the log started.

    Such a deal still in its first recorded stage (its stage entry is its first event)
    entered it at an unknown time ``e`` between its creation ``c`` (when unknown, the
    age cap :data:`MAX_AGE_DAYS` before ``t₀``) and its first event ``o``: its age at
    the as-of instant ``t₀`` lies in ``[t₀ − o, t₀ − c]``. In the first open stage with ``c`` known it has been there
    since creation (age ``t₀ − c``, as in the fit). Otherwise, with ``e`` uniform a
    priori over ``[c, o]`` and the deal still in the stage at ``t₀``, the age ``a``
    has density ``∝ S(a)`` on that range (``S`` the stage's fitted survival), and the
    deal's outcome is the mixture over :data:`MIXTURE_AGES` equally likely ages at the
    midpoints of that density's quantiles.

    ``shared``: as :func:`model_arrays` (the deals in progress when the log started are
    found once for the models sharing it).

    Returns
    -------
    deal_age : ndarray of int64, shape (N,)
        Ages with the known ones set (the lower bound for mixture deals).
    mixture : AgeMixture
    """
    if pipe.height == 0:
        return deal_age, AgeMixture.empty()
    recorded = model.options.get("recorded_from")
    t = model.as_of
    key = ("mid_stream_deals", model.model_kind, t, recorded)
    mid = None if shared is None else shared.get(key)
    if mid is None:
        mid = mid_stream_deals(log.as_of(t), recorded)
        if shared is not None:
            shared[key] = mid
    if not mid["in_progress"].any():
        return deal_age, AgeMixture.empty()
    first = pipe.select(pl.col("deal_id").cast(pl.Utf8), "entered_stage_at", "stage_code").join(
        mid.select(pl.col("deal_id").cast(pl.Utf8), "first_event", "created_at", "in_progress"),
        on="deal_id",
        how="left",
        maintain_order="left",
    )
    first_visit = (
        first["in_progress"].fill_null(False)
        & (first["entered_stage_at"] == first["first_event"]).fill_null(False)
    ).to_numpy()
    if not first_visit.any():
        return deal_age, AgeMixture.empty()
    deal_age = deal_age.copy()
    us = 86_400_000_000.0
    t0 = np.datetime64(t, "us")
    created = first["created_at"].to_numpy().astype("datetime64[us]")
    known_c = ~np.isnat(created)
    upper = np.full(pipe.height, MAX_AGE_DAYS, dtype=np.int64)
    upper[known_c] = np.minimum(
        np.floor((t0 - created[known_c]).astype(np.int64) / us + 0.5).astype(np.int64),
        MAX_AGE_DAYS,
    )
    stage = first["stage_code"].to_numpy().astype(np.int64)
    exact = first_visit & known_c & (stage == 0)
    deal_age[exact] = np.maximum(upper[exact], deal_age[exact])
    rows_d, rows_a, rows_w = [], [], []
    segs = model.segments
    for n in np.flatnonzero(first_visit & ~exact):
        lo, hi = int(deal_age[n]), max(int(upper[n]), int(deal_age[n]))
        if hi <= lo:
            continue
        grid = np.arange(lo, hi + 1, dtype=np.float64)
        dens = model.curves[(segs[int(deal_segment[n])], int(stage[n]))].survival(grid)
        if not dens.sum() > 0:
            continue
        cdf = np.cumsum(dens) / dens.sum()
        p = (np.arange(MIXTURE_AGES) + 0.5) / MIXTURE_AGES
        ages = grid[np.minimum(np.searchsorted(cdf, p), grid.size - 1)].astype(np.int64)
        rows_d.append(np.full(MIXTURE_AGES, n, dtype=np.int64))
        rows_a.append(ages)
        rows_w.append(np.full(MIXTURE_AGES, 1.0 / MIXTURE_AGES))
    if not rows_d:
        return deal_age, AgeMixture.empty()
    return deal_age, AgeMixture(
        np.concatenate(rows_d), np.concatenate(rows_a), np.concatenate(rows_w)
    )


def mix_ages(arrays: ModelArrays, mixture: AgeMixture, outcomes_of: Any) -> OutcomeArrays:
    """Outcome probabilities with each mixture deal averaged over its ages.

    ``outcomes_of(arrays)`` computes the outcome arrays of a set of deals; it is called
    once on the deals with the mixture rows appended (as extra deals with their
    ages), whose ``p_win`` and ``p_qe`` are then folded back into their deals.
    """
    if mixture.n == 0:
        return outcomes_of(arrays)
    d = mixture.deal
    n = np.asarray(arrays.deal_age).size
    x = dataclasses.replace(
        arrays,
        deal_segment=np.concatenate(
            [np.asarray(arrays.deal_segment), np.asarray(arrays.deal_segment)[d]]
        ),
        deal_stage=np.concatenate(
            [np.asarray(arrays.deal_stage), np.asarray(arrays.deal_stage)[d]]
        ),
        deal_age=np.concatenate([np.asarray(arrays.deal_age), mixture.ages]),
        deal_amount=np.concatenate(
            [np.asarray(arrays.deal_amount), np.asarray(arrays.deal_amount)[d]]
        ),
    )
    out = outcomes_of(x)
    p_win = np.array(out.p_win[:, :n])
    p_qe = np.array(out.p_qe[:, :n])
    w = mixture.weights[None, :, None]
    extra_win = out.p_win[:, n:] * w
    mixed_win = np.zeros((p_win.shape[0], n, p_win.shape[2]))
    mixed_qe = np.zeros_like(mixed_win)
    np.add.at(mixed_win, (slice(None), d), extra_win)
    np.add.at(mixed_qe, (slice(None), d), extra_win * out.p_qe[:, n:])
    mixed = np.unique(d)
    p_win[:, mixed] = mixed_win[:, mixed]
    with np.errstate(divide="ignore", invalid="ignore"):
        p_qe[:, mixed] = np.where(
            mixed_win[:, mixed] > 0, mixed_qe[:, mixed] / mixed_win[:, mixed], 0.0
        )
    return dataclasses.replace(out, p_win=p_win, p_qe=p_qe)


def exit_densities(model: PipelineModel, n_bins: int) -> np.ndarray:
    """The day-binned exit sub-densities of every draw, segment and stage, (B, G, K, C, L).

    Row ``[b, g, k]`` is ``curves[(g, k)].scaled(time_factor[b, g, k],
    destination_multiplier[b, g, k]).exit_density(L)`` (``B = 1`` and the curves
    themselves without parameter draws; ``docs/internals.md`` §4–5), built for all
    draws of a curve at once (:meth:`ExitCurves.scaled_exit_densities`). Computed once
    per model and number of bins (the model is immutable): the array is cached on the
    model, read-only.
    """
    key = ("exit_densities", int(n_bins))
    cached = model._cache.get("exit_densities")
    if cached is not None and cached[0] == key:
        return cached[1]
    stages, segs, draws = model.stages, list(model.segments), model.draws
    K, C, G = stages.n_open, stages.n_codes, len(segs)
    B = 1 if draws is None else draws.n_draws
    dens = np.empty((B, G, K, C, n_bins))
    for g in range(G):
        for k in range(K):
            c = model.curves[(segs[g], k)]
            if draws is None:
                dens[0, g, k] = c.exit_density(n_bins)
            else:
                dens[:, g, k] = c.scaled_exit_densities(
                    n_bins, draws.time_factor[:, g, k], draws.destination_multiplier[:, g, k]
                )
    dens.setflags(write=False)
    model._cache["exit_densities"] = (key, dens)  # one size kept: the arrays are large
    return dens


def entry_dated_densities(model: PipelineModel, n_bins: int, oldest: int) -> np.ndarray | None:
    """Exit sub-densities of the open deals' current visits at their entry dates.

    Under a calendar trend (``fit(..., trend=True)``) the model's curves describe the
    market at the as-of instant, where the new deals' and the later visits enter; an
    open deal's current visit entered ``age`` days earlier. Row ``[b, g, c · K + k]``
    is the curve of segment ``g`` and stage ``k`` moved to the middle of age cohort
    ``c`` (:func:`forecast.fit.trend.cohort_factors`) on top of draw ``b``'s
    perturbation, shape (B, G, n_cohorts · K, C, n_bins) with ``n_cohorts`` enough
    for ages up to ``oldest`` days (at most :data:`~forecast.fit.trend.MAX_COHORTS`).
    With active deal covariates the curves are their baselines (the deals' own hazard
    ratios tilt them). None without a trend.
    """
    slopes = model.options.get("trend_fit")
    if not slopes:
        return None
    cov = model.covariates
    curves = cov.baseline if cov is not None and cov.active else model.curves
    stages, segs, draws = model.stages, list(model.segments), model.draws
    K, C, G = stages.n_open, stages.n_codes, len(segs)
    n_cohorts = min(MAX_COHORTS, oldest // COHORT_DAYS + 1)
    factors = cohort_factors(slopes, tuple(stages.open), C, stages.WON, n_cohorts)
    if factors is None:
        return None
    f, m = factors
    B = 1 if draws is None else draws.n_draws
    out = np.empty((B, G, n_cohorts * K, C, n_bins))
    for g in range(G):
        for k in range(K):
            tf = np.ones(B) if draws is None else draws.time_factor[:, g, k]
            dm = np.ones((B, C)) if draws is None else draws.destination_multiplier[:, g, k]
            c = curves[(segs[g], k)]
            for h in range(n_cohorts):
                out[:, g, h * K + k] = c.scaled_exit_densities(n_bins, tf * f[h, k], dm * m[h, k])
    return out


def model_arrays(
    model: PipelineModel,
    log: DealLog,
    horizon: int,
    pipe: pl.DataFrame | None = None,
    shared: dict[Any, Any] | None = None,
) -> tuple[ModelArrays, pl.DataFrame, list[Any], np.ndarray, AgeMixture]:
    """Pack ``model`` and the open pipeline of ``log`` at ``model.as_of`` into kernel arrays.

    ``pipe``, when given, is ``model.view(log).pipeline(model.as_of)`` computed before
    (several models fitted at one instant share it). ``shared``, when given, is a dict
    that models fitted at one instant on ``log`` with the same segments pass to each
    call (the half-life backtest's candidates): what depends only on the log at that
    instant (the open pipeline's segment labels, the deals in progress when the log
    started, the wins booked so far) is computed on the first call and kept in it.

    Returns
    -------
    arrays : forecast._kernels.ModelArrays
    pipe : polars.DataFrame
        The open pipeline (rows in the order of the per-deal arrays).
    quarters : list of FiscalQuarter
    booked : ndarray, shape (H, G)
        Won before the as-of instant in each horizon quarter, currency.
    mixture : AgeMixture
        Open deals in progress since before the log started whose age in stage is
        known only within a range (:func:`mid_stream_ages`).
    """
    t = model.as_of
    log = model.view(log)  # the deal-level model reads every open stage as one
    stages = model.stages
    K = stages.n_open
    segs = list(model.segments)
    gidx = {g: i for i, g in enumerate(segs)}
    G = len(segs)
    quarters, qb = quarter_bins(model, horizon)
    W = int(model.quarter_end.window_days)

    key = ("pipeline", model.model_kind, t, tuple(model.segment_by))
    labelled = None if shared is None else shared.get(key)
    if labelled is None:
        labelled = segment_labels(log.pipeline(t) if pipe is None else pipe, model.segment_by)
        if shared is not None:
            shared[key] = labelled
    pipe = labelled
    unknown = sorted(set(pipe[SEGMENT_COLUMN].unique().to_list()) - set(segs))
    if unknown:
        raise ParameterError(
            f"Open deals at {t:%Y-%m-%d} belong to segments {unknown} that the model "
            f"has not seen (model segments: {segs}). Fit the model on this log."
        )
    deal_seg = np.array([gidx[g] for g in pipe[SEGMENT_COLUMN].to_list()], dtype=np.int64)
    deal_stage = pipe["stage_code"].to_numpy().astype(np.int64)
    # Nearest whole day (see the discretisation in forecast._kernels.outcomes).
    deal_age = np.minimum(
        np.floor(pipe["days_in_stage"].to_numpy() + 0.5).astype(np.int64), MAX_AGE_DAYS
    )
    deal_age, mixture = mid_stream_ages(model, log, pipe, deal_seg, deal_age, shared)
    amount = pipe["amount"].to_numpy().astype(np.float64)
    missing = ~np.isfinite(amount)
    if missing.any():  # no amount ever given: use the segment's typical new-deal amount
        for i in np.nonzero(missing)[0]:
            amount[i] = float(np.median(model.amounts.new_deal_amount_samples(segs[deal_seg[i]])))

    oldest = max(int(deal_age.max()) if deal_age.size else 0, int(mixture.ages.max(initial=0)))
    L = int(oldest + qb[-1] + W + 2)
    dens = exit_densities(model, L)
    draws = model.draws
    B = dens.shape[0]
    adj = model.adjustments
    bounds = [(q.start, q.end) for q in quarters]
    base_counts = model.arrivals.expected_counts(bounds, t)  # (G_arr, H)
    arr_idx = {s: i for i, s in enumerate(model.arrivals.segments)}
    counts = np.zeros((G, horizon))
    for g, s in enumerate(segs):
        if s in arr_idx:
            counts[g] = base_counts[arr_idx[s]]
    new_counts = np.broadcast_to(counts, (B, G, horizon)).copy()
    if draws is not None:
        new_counts *= draws.arrival_multiplier[:, :, None]
    new_counts *= float(adj.get("new_deals", 1.0))
    shapes = model.arrivals.shapes()
    new_shape = np.array(
        [shapes[arr_idx[s]] if s in arr_idx else np.inf for s in segs], dtype=np.float64
    )
    mix = np.zeros((G, K))
    for g, s in enumerate(segs):
        if s in arr_idx:
            mix[g] = model.arrivals.entry_mix[arr_idx[s]]
        if mix[g].sum() <= 0:
            mix[g, 0] = 1.0
    mix /= mix.sum(axis=1, keepdims=True)
    size = float(adj.get("deal_size", 1.0))
    ratio = _csr([model.amounts.ratio_samples(s, False) for s in segs])
    ratio_qe = _csr([model.amounts.ratio_samples(s, True) for s in segs])
    new_amount = _csr([model.amounts.new_deal_amount_samples(s) * size for s in segs])
    pull_in = np.full(B, float(model.quarter_end.pi)) if draws is None else draws.pull_in.copy()
    sigma = np.full(B, float(model.shocks.sigma)) if draws is None else draws.shock_sigma.copy()
    arrays = ModelArrays(
        dens=dens,
        qb=qb,
        deal_segment=deal_seg,
        deal_stage=deal_stage,
        deal_age=deal_age,
        deal_amount=amount * size,
        qe_window=W,
        pull_in=np.repeat(pull_in[:, None], G, axis=1),
        ratio=ratio,
        ratio_qe=ratio_qe,
        new_counts=new_counts,
        new_shape=new_shape,
        new_entry_mix=mix,
        new_amount=new_amount,
        shock_sigma=sigma,
    )
    booked = np.zeros((horizon, G))
    # the wins up to t are those of the log cut at t (the same rows; its views are
    # cached by the pipeline above), except in a history rebuilt from exports, where
    # the cut holds only what the last export before t showed
    key = ("booked", model.model_kind, t, quarters[0].start, tuple(model.segment_by))
    b = None if shared is None else shared.get(key)
    if b is None:
        snapshots = log.source is not None and bool(log.source.snapshot_dates)
        known = log if snapshots else log.as_of(t)
        b = segment_labels(
            known.bookings(quarters[0].start, t + dt.timedelta(microseconds=1)), model.segment_by
        )
        if shared is not None:
            shared[key] = b
    for g_label, amt in (
        b.group_by(SEGMENT_COLUMN).agg(pl.col("amount").fill_null(0.0).sum()).rows()
    ):
        if g_label in gidx:
            booked[0, gidx[g_label]] = amt
    return arrays, pipe, quarters, booked, mixture


def prepare_simulation(
    model: PipelineModel,
    log: DealLog,
    horizon: int,
    pipe: pl.DataFrame | None = None,
    shared: dict[Any, Any] | None = None,
) -> tuple[ModelArrays, OutcomeArrays, pl.DataFrame, list[Any], np.ndarray]:
    """Everything a simulation samples from: arrays, per-deal outcome probabilities.

    :func:`model_arrays`, the outcome probabilities conditioned on not having been
    pulled into the closed quarter (:func:`condition_on_not_pulled_in`) and mixed
    over the possible ages of deals in progress since before the log started
    (:func:`mix_ages`), and the shock sigma scaled for the kernel (:func:`shock_scale`).

    Returns
    -------
    arrays : forecast._kernels.ModelArrays
    outcomes : forecast._kernels.OutcomeArrays
    pipe, quarters, booked
        As :func:`model_arrays` (``pipe`` and ``shared`` given: as there).
    """
    arrays, pipe, quarters, booked, mixture = model_arrays(model, log, horizon, pipe, shared)
    cov_arrays = None
    if model.covariates is not None and model.covariates.active:
        cov_arrays, new_amounts = covariate_arrays(model, model.view(log), pipe, arrays)
        if new_amounts:
            size = float(model.adjustments.get("deal_size", 1.0))
            arrays = dataclasses.replace(
                arrays,
                new_amount=_csr(
                    [
                        new_amounts.get(s, model.amounts.new_deal_amount_samples(s)) * size
                        for s in model.segments
                    ]
                ),
            )
    early = early_window_days(model, quarters)

    cov = cov_arrays
    if cov is not None and mixture.n > 0:
        # the mixture's extra rows (one per possible age) carry their deal's covariates
        d = mixture.deal
        cov = dataclasses.replace(
            cov,
            **{
                name: np.concatenate([np.asarray(v), np.asarray(v)[d]])
                for name in ("deal_x", "deal_starts", "deal_profile")
                for v in (getattr(cov, name),)
            },
        )

    oldest = max(int(np.max(arrays.deal_age, initial=0)), int(mixture.ages.max(initial=0)))
    first = entry_dated_densities(model, arrays.shape["L"], oldest)

    def raw_outcomes(a: ModelArrays) -> OutcomeArrays:
        if cov is not None:
            if first is None:
                return tilted_outcome_probabilities(a, cov)
            return tilted_outcome_probabilities(a, cov, first, COHORT_DAYS)
        if first is not None:
            return dated_outcome_probabilities(a, first, COHORT_DAYS)
        return outcome_probabilities(a)

    def conditioned(a: ModelArrays) -> OutcomeArrays:
        return condition_on_not_pulled_in(a, raw_outcomes(a), early, cov, raw_outcomes)

    outcomes = mix_ages(arrays, mixture, conditioned)
    arrays = dataclasses.replace(
        arrays, shock_sigma=arrays.shock_sigma * shock_scale(model, arrays, outcomes)
    )
    return arrays, outcomes, pipe, quarters, booked


def simulate_quarter_totals(
    model: PipelineModel,
    log: DealLog,
    n_paths: int,
    seed: int,
    pipe: pl.DataFrame | None = None,
    shared: dict[Any, Any] | None = None,
) -> np.ndarray:
    """Simulated bookings of the quarter holding ``model.as_of`` (with what it booked before).

    A lean :func:`simulate` for scoring many fits (the half-life backtest): one
    quarter, no per-deal output, no :class:`~forecast.results.Forecast`. ``pipe`` and
    ``shared``: as :func:`model_arrays` (the open pipeline and what else depends only on
    the log at that instant, computed once for models fitted at one instant).

    Returns
    -------
    ndarray of float64, shape (n_paths,)
        Currency.
    """
    arrays, outcomes, _, _, booked = prepare_simulation(model, log, 1, pipe, shared)
    samples = simulate_arrays(arrays, n_paths=n_paths, seed=seed, outcomes=outcomes)
    return samples.totals[:, 0].sum(axis=(1, 2)) + float(booked[0].sum())


@one_blas_thread
def simulate(
    model: PipelineModel,
    log: DealLog,
    *,
    n_paths: int = 10_000,
    horizon: int = 4,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
    chunk_size: int | None = None,
    executor: Any = None,
) -> Forecast:
    """Simulate bookings per fiscal quarter from the open pipeline at ``model.as_of``.

    Parameters
    ----------
    model : PipelineModel
        Fitted model; its ``as_of`` is the start of the simulation.
    log : DealLog
        History holding the open pipeline at ``model.as_of`` (usually the log the
        model was fitted on; only rows up to ``as_of`` are read).
    n_paths : int, default 10000
        Number of simulated futures.
    horizon : int, default 4
        Number of fiscal quarters, the first one containing ``as_of``.
    seed : int, default 0
        Seed; the samples are bit-identical for a seed whatever ``threads``,
        ``chunk_size`` or ``executor``.
    threads : int, optional
        Numba threads (default: all cores).
    progress : bool, default False
        Show a progress bar (tqdm).
    chunk_size : int, optional
        Paths per kernel call (progress and Ctrl-C are checked between chunks).
    executor : concurrent.futures.Executor, optional
        Shard the path range over this executor (e.g. ``dask.distributed.Client
        .get_executor()``); results are identical to a local run.

    Returns
    -------
    Forecast
    """
    caller = "simulate"
    n_paths = check_int(n_paths, "n_paths", caller, minimum=1)
    horizon = check_int(horizon, "horizon", caller, minimum=1)
    seed = check_seed(seed, caller)
    if threads is not None:
        threads = check_int(threads, "threads", caller, minimum=1)
    arrays, outcomes, pipe, quarters, booked = prepare_simulation(model, log, horizon)
    check_won_cents_fit(arrays, n_paths, pipe["deal_id"].to_numpy(), model.segments)
    if executor is not None:
        samples = _simulate_sharded(executor, arrays, outcomes, n_paths, seed, chunk_size)
    else:
        bar = None
        callback = None
        if progress:
            bar = tqdm(total=n_paths, unit="path", desc="simulate")

            def callback(paths_done_in_chunk: int) -> None:
                bar.update(paths_done_in_chunk)

        try:
            samples = simulate_arrays(
                arrays,
                n_paths=n_paths,
                seed=seed,
                outcomes=outcomes,
                chunk_size=chunk_size,
                threads=threads,
                progress=callback,
            )
        finally:
            if bar is not None:
                bar.close()
    if np.any(samples.totals < 0) or np.any(samples.deal_won_cents < 0):
        # Beyond the bound of check_won_cents_fit (probability < 1e-15 per path).
        raise AmountError(
            "The won amounts of a simulated path overflowed the int64 cents they are "
            f"added in (limit {INT64_MAX_CENTS:.3g} cents): more new deals were drawn than "
            "the bound allows. Give the amounts in a larger currency unit (e.g. thousands).",
            column="amount",
            expected=f"sum of won cents <= {INT64_MAX_CENTS:.3g}",
        )
    return Forecast(
        totals=samples.totals,
        booked_to_date=booked,
        deal_ids=pipe["deal_id"].to_numpy(),
        deal_amounts=np.asarray(arrays.deal_amount, dtype=np.float64),
        deal_segments=pipe[SEGMENT_COLUMN].to_numpy(),
        deal_wins=samples.deal_wins,
        deal_won_cents=samples.deal_won_cents,
        quarters=tuple(q.label for q in quarters),
        segments=tuple(model.segments),
        weighted_pipeline=weighted_pipeline(model, pipe, quarters),
        as_of=model.as_of,
        info={
            "seed": seed,
            "n_paths": n_paths,
            "model_fingerprint": model.fingerprint,
            "data_fingerprint": model.data_fingerprint,
            "calendar": model.calendar.to_dict(),
            "version": model.version,
        },
    )


def _run_shard(
    inputs: SamplingInputs, start: int, count: int, seed: int, chunk: int | None
) -> PathSamples:
    return sample_paths(inputs, seed=seed, n_paths=count, path_start=start, chunk_size=chunk)


def _simulate_sharded(
    executor: Any,
    arrays: ModelArrays,
    outcomes: OutcomeArrays,
    n_paths: int,
    seed: int,
    chunk: int | None,
) -> PathSamples:
    """Shard the path range over ``executor``; merge in path order (bit-identical to local)."""
    inputs = sampling_inputs(arrays, outcomes)
    n_shards = max(1, min(64, n_paths // 2000))
    edges = np.linspace(0, n_paths, n_shards + 1).astype(np.int64)
    futures = [
        executor.submit(_run_shard, inputs, int(a), int(b - a), seed, chunk)
        for a, b in itertools.pairwise(edges)
        if b > a
    ]
    parts = [f.result() for f in futures]
    return PathSamples(
        totals=np.concatenate([p.totals for p in parts], axis=0),
        deal_wins=sum(p.deal_wins for p in parts),
        deal_won_cents=sum(p.deal_won_cents for p in parts),
        path_start=0,
    )
