"""`forecast.fit`: estimate a `PipelineModel` from a `DealLog` cut at an as-of date.

:func:`fit` checks its arguments, builds the :class:`~forecast.fit.data.FitData`
once, fits every component on it (:func:`fit_components`) and, for the
parameter uncertainty, refits on Bayesian-bootstrap re-weightings of the same
data (:func:`parameter_draws`). The estimators are written out in
``docs/model.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecast._blas import one_blas_thread
from forecast._validation import check_bool, check_int, check_seed
from forecast._version import __version__
from forecast.calendar import FiscalCalendar
from forecast.data.deal_level import closed_deals_left_out, deal_level_view
from forecast.data.deal_log import DealLog
from forecast.errors import ModelError, ParameterError
from forecast.fit.amounts import AmountModel, fit_amounts
from forecast.fit.arrivals import ArrivalLayout, ArrivalModel, fit_arrivals
from forecast.fit.bootstrap import bootstrap_weight_block
from forecast.fit.borrowing import borrowed_draw
from forecast.fit.calendar_effects import (
    QuarterEndEffect,
    QuarterEndLayout,
    fit_quarter_end_effect,
)
from forecast.fit.competing_risks import ExitCurves
from forecast.fit.covariates import (
    DEFAULT_COVARIATES,
    RIDGE_PENALTY,
    CoefficientFit,
    CovariateModel,
    baseline_curves,
    build_design,
    cause_rows,
    check_covariates,
    entry_and_new_deal_values,
    entry_close_days,
    push_delays,
    push_intervals,
    select_covariates,
)
from forecast.fit.cox import fit_cox_draws
from forecast.fit.data import FitData
from forecast.fit.diagnostics import Diagnostic, tail_diagnostics
from forecast.fit.exits import ExitDrawLayout, ExitFit, fit_exits, shrink_toward
from forecast.fit.kinds import choose_model_kind
from forecast.fit.model import ParameterDraws, PipelineModel
from forecast.fit.recency import (
    DEFAULT_HALF_LIFE_GRID,
    HalfLifeChoice,
    check_half_life,
    select_half_life,
)
from forecast.fit.shocks import ShockLayout, ShockModel, fit_shocks
from forecast.fit.trend import TrendFit, apply_trend, fit_trend
from forecast.scores import crps_samples
from forecast.simulate import simulate_quarter_totals

__all__ = [
    "BACKTEST_MAX_DEALS",
    "COX_DRAW_CELLS",
    "DRAW_BLOCK",
    "FitOptions",
    "PointFit",
    "assemble_model",
    "choose_half_life",
    "covariate_draws",
    "fit",
    "fit_components",
    "fit_covariates",
    "parameter_draws",
]


@dataclass(frozen=True)
class FitOptions:
    """The fitting options that every fit of one model (point and draws) shares.

    Attributes
    ----------
    tail_families : tuple of str
        Candidate families for the tail beyond the last observed sojourn.
    quarter_end_window_days : int
        Quarter-end window, days (pull-in and deeper discounts).
    arrivals_lookback_quarters : int
        Full fiscal quarters of history in the arrival model.
    shrink : bool
        Shrink segment exit curves toward the pooled ones.
    covariates : tuple of str
        Candidate deal covariates (empty: none); the fit data holds their design.
    tail_mixture : bool
        Split the mass left beyond a stage's longest stay by a destination-mixture
        fit (:func:`~forecast.fit.competing_risks.tail_destination_shares`); False:
        by the late exits' mix.
    """

    tail_families: tuple[str, ...] = ("exponential", "weibull", "lognormal")
    quarter_end_window_days: int = 14
    arrivals_lookback_quarters: int = 12
    shrink: bool = True
    covariates: tuple[str, ...] = ()
    tail_mixture: bool = True


@dataclass(frozen=True, eq=False)
class PointFit:
    """Every component fitted on one :class:`FitData` (the point fit of a model)."""

    exits: ExitFit
    amounts: AmountModel
    arrivals: ArrivalModel
    quarter_end: QuarterEndEffect
    shocks: ShockModel
    covariates: CovariateModel | None = None
    coefficients: CoefficientFit | None = None
    #: The data of the arrivals, quarter-end effect and shocks as their fits laid it out
    #: (:func:`parameter_draws` estimates its draws on the same layouts).
    arrival_layout: ArrivalLayout | None = None
    quarter_end_layout: QuarterEndLayout | None = None
    shock_layout: ShockLayout | None = None


def fit_components(data: FitData, options: FitOptions) -> PointFit:
    """Fit the exit curves, amounts, arrivals, quarter-end effect, shocks and deal covariates."""
    window = options.quarter_end_window_days
    exits = fit_exits(
        data,
        tail_families=options.tail_families,
        shrink=options.shrink,
        tail_mixture=options.tail_mixture,
    )
    covariates, coefficients = (
        fit_covariates(data, exits, options) if data.covariate_design is not None else (None, None)
    )
    if data.covariate_design is not None and not (covariates is not None and covariates.active):
        data.covariate_design.release_rows()  # the selection's Cox rows: nothing refits them
    amounts = fit_amounts(data, window_days=window)
    lookback = options.arrivals_lookback_quarters
    arrival_layout = ArrivalLayout.from_data(data, lookback_quarters=lookback)
    arrivals = fit_arrivals(data, lookback_quarters=lookback, layout=arrival_layout)
    quarter_end_layout = QuarterEndLayout.from_data(data, window_days=window)
    quarter_end = fit_quarter_end_effect(data, window_days=window, layout=quarter_end_layout)
    shock_layout = ShockLayout.from_data(data)
    return PointFit(
        exits=exits,
        amounts=amounts,
        arrivals=arrivals,
        quarter_end=quarter_end,
        shocks=fit_shocks(data, layout=shock_layout),
        covariates=covariates,
        coefficients=coefficients,
        arrival_layout=arrival_layout,
        quarter_end_layout=quarter_end_layout,
        shock_layout=shock_layout,
    )


def fit_covariates(
    data: FitData, exits: ExitFit, options: FitOptions
) -> tuple[CovariateModel, CoefficientFit]:
    """Select the deal covariates, fit their coefficients and the baseline curves at ``x = 0``.

    ``docs/model.md`` ("Deal covariates"). With no covariate kept the model holds
    only the selection table, and the exit curves alone describe every deal.
    """
    design = data.covariate_design
    selected, table, coef = select_covariates(data, design)
    if selected:
        baseline, pooled = baseline_curves(
            data,
            design,
            coef,
            selected,
            credibility=exits.credibility,
            destination_effects=exits.destination_effects,
            tail_families=options.tail_families,
            tail_mixture=options.tail_mixture,
            shrink_toward=shrink_toward if options.shrink else _no_shrinkage,
            borrowed={k: (exits.curves, exits.pooled[k]) for k in exits.borrowed},
        )
    else:
        baseline, pooled = {}, {}
    entry, new_x, new_a = entry_and_new_deal_values(data, design, selected)
    model = CovariateModel(
        candidates=design.candidates,
        selection=table,
        specs=tuple(design.spec(n) for n in selected),
        columns=coef.columns,
        beta=coef.beta,
        covariance=coef.covariance,
        n_events=coef.n_events,
        baseline=baseline,
        pooled_baseline=pooled,
        entry_values=entry,
        new_deal_x=new_x,
        new_deal_amount=new_a,
        push_interval=push_intervals(data),
        entry_close_days=entry_close_days(data, design),
        push_delay=push_delays(data) if "overdue" in design.candidates else {},
    )
    return model, coef


def _no_shrinkage(
    own: ExitCurves, pooled: ExitCurves, credibility: float, effect: Any
) -> ExitCurves:
    return own


#: (row, draw) weights the covariates' Cox refits hold at once (each also takes a float of
#: the kernel's scratch): 4M, 64 MB in all; a stage with more rows fits fewer draws per
#: sweep.
COX_DRAW_CELLS = 1 << 22


def covariate_draws(
    data: FitData,
    point: PointFit,
    n_draws: int,
    seed: int,
    max_iter: int = 4,
    threads: int | None = None,
) -> np.ndarray | None:
    """Coefficients of each bootstrap draw, shape (B, K, 4, d), or None without covariates.

    Draw ``b`` refits the kept covariates' Cox models on the deals re-weighted by
    ``bootstrap_weights(data, seed, b)`` (the weights of :func:`parameter_draws`),
    starting from the point fit (``max_iter`` Newton steps): the coefficients of
    ``fit_covariate_coefficients(data.with_weights(...), ..., start=point fit)``, bit
    for bit. Each (stage, destination group)'s rows, events and orders are laid out
    once, and the draws of a block (:data:`DRAW_BLOCK`, fewer for a stage with more than
    :data:`COX_DRAW_CELLS` / :data:`DRAW_BLOCK` rows) are fitted together
    (:func:`~forecast.fit.cox.fit_cox_draws`: one compiled sweep over the sorted rows
    per Newton round for all of them, split over ``threads``).
    """
    cov = point.covariates
    if cov is None or not cov.active or point.coefficients is None:
        return None
    design = data.covariate_design
    cols = np.concatenate([design.blocks[n] for n in cov.kept])
    n_open = int(data.n_open or 0)
    stages = [cause_rows(design, cols, k, n_open) for k in range(n_open)]
    rec = data.spell_recency
    out = np.empty((n_draws, *cov.beta.shape))
    for lo in range(0, n_draws, DRAW_BLOCK):
        hi = min(n_draws, lo + DRAW_BLOCK)
        # (n_deals, block): each deal's weights for the block's draws are adjacent
        deal_weights = bootstrap_weight_block(data, seed, range(lo, hi), threads=threads).T
        for k, (idx, rows, events) in enumerate(stages):
            at = idx[rows.index]  # design rows in the Cox rows' order
            deals = design.deal[at]
            # the deal's weight times the spell's recency (as row_weights)
            recency = None if rec is None else rec[design.spell[at]][:, None]
            # draws fitted together: at most COX_DRAW_CELLS (row, draw) weights at once
            step = max(1, min(hi - lo, COX_DRAW_CELLS // max(rows.n, 1)))
            for a in range(lo, hi, step):
                b = min(hi, a + step)
                w = deal_weights[deals, a - lo : b - lo]
                if recency is not None:
                    w *= recency
                for grp, event in enumerate(events):
                    out[a:b, k, grp] = fit_cox_draws(
                        rows,
                        event,
                        w,
                        point.coefficients.beta[k, grp],
                        penalty=RIDGE_PENALTY,
                        max_iter=max_iter,
                        threads=threads,
                    )
    return out


@one_blas_thread
def fit(
    log: DealLog,
    *,
    as_of: object | None = None,
    segment_by: Sequence[str] = (),
    calendar: FiscalCalendar | None = None,
    n_draws: int = 32,
    seed: int = 0,
    tail_families: Sequence[str] = ("exponential", "weibull", "lognormal"),
    quarter_end_window_days: int = 14,
    arrivals_lookback_quarters: int = 12,
    shrink: bool = True,
    model_kind: str = "auto",
    half_life: float | str | None = "auto",
    recorded_from: object | None = None,
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    trend: bool = False,
) -> PipelineModel:
    """Fit the pipeline model to the history known at ``as_of``.

    The model and its estimators are described in ``docs/model.md``: the
    semi-Markov stage model, or for a one-row-per-deal table the deal-level
    model (competing risks on the deal's age since creation; ``model_kind``).

    Parameters
    ----------
    log : DealLog
        Validated history (from :func:`forecast.read_deal_log`).
    as_of : date-like, optional
        Cut instant; nothing after it is used. Default: the log's last event.
    segment_by : sequence of str
        Segment columns of the log to fit separately (with shrinkage toward the
        pooled fit). Empty: one pooled segment.
    calendar : FiscalCalendar, optional
        Fiscal calendar (default: fiscal year = calendar year).
    n_draws : int, default 32
        Number of Bayesian-bootstrap parameter draws (0: no parameter uncertainty).
    seed : int, default 0
        Seed of the bootstrap weights.
    tail_families : sequence of str
        Candidate families for the tail beyond the last observed sojourn.
    quarter_end_window_days : int, default 14
        Days at each fiscal quarter end over which the quarter-end push and the
        deeper discounts are measured.
    arrivals_lookback_quarters : int, default 12
        Quarters of history used for the new-deal arrival model.
    shrink : bool, default True
        Shrink segment fits toward the pooled fit (credibility weighting).
    model_kind : {"auto", "stages", "deal_level"}, default "auto"
        ``"stages"``: the stage model (needs a stage history); ``"deal_level"``:
        one open state on the age-since-creation clock
        (:mod:`forecast.fit.kinds`); ``"auto"``: deal-level for a one-row-per-deal
        table (``log.source.shape == "deals"``), stages otherwise. The model says
        which it is and why (``model_kind``, ``model_description``).
    half_life : "auto", float or None, default "auto"
        Recency weighting of every estimator: an observation made ``a`` days before
        ``as_of`` counts ``2^(−a / half_life)`` (``docs/model.md``, "Recency
        weighting"). None: every observation counts fully. ``"auto"`` chooses among
        :data:`~forecast.fit.recency.DEFAULT_HALF_LIFE_GRID` (None included) by a
        rolling-origin backtest of this history (:func:`choose_half_life`; no
        weighting when the history is too short to backtest). The choice and its
        scores are kept in :attr:`PipelineModel.recency`.
    recorded_from : date-like, optional
        When the recording of the history began. Deals created before it (by their
        ``created_at``) — or, when given, first seen at it — were already in progress:
        they are not counted as new deals, and the stage time before their first
        record is unknown (``docs/model.md``, "Logs that start mid-stream"). Default:
        the first event of the log (the first export of a snapshot history).

    covariates : sequence of str, default ("amount",)
        Deal covariates the exit model considers (``docs/model.md``, "Deal
        covariates"); each is kept only where it lowers Akaike's criterion, so a
        history without such effects gets the model without covariates. Built in:
        ``"amount"`` (log₂ amount centred within the segment; the default) and the
        close-date covariates ``"days_to_close"`` (the rep's close date relative to
        the stage entry, months) and ``"pushes"`` (close-date pushes so far), which
        are considered only when named: where close dates track the true timing the
        selection keeps them and their proportional effects forecast worse than the
        model without them (measured on the synthetic generator). Add the log's own
        columns by name: categorical ones read as ``segment_columns`` and numeric
        ones read as ``numeric_columns`` (:func:`forecast.read_deal_log`), e.g.
        ``covariates=[*forecast.DEFAULT_COVARIATES, "LeadSource"]`` or, with the
        close dates, ``[*forecast.DEFAULT_COVARIATES,
        *forecast.CLOSE_DATE_COVARIATES]``. ``()``
        switches covariates off (exactly the model without them).
    trend : bool, default False
        Fit a calendar trend of every stage's pace and win odds in the visits' stage
        entry dates and move the exit curves to the market at ``as_of``
        (``docs/model.md``, "Calendar trend"; :mod:`forecast.fit.trend`). For markets
        that keep drifting; the slopes are in ``options["trend_fit"]``.

    Returns
    -------
    PipelineModel
    """
    caller = "fit"
    n_draws = check_int(n_draws, "n_draws", caller, minimum=0)
    seed = check_seed(seed, caller)
    half_life = check_half_life(half_life, caller)
    if isinstance(tail_families, str):
        raise ParameterError(
            f"The `tail_families` parameter of `{caller}` must be a list of family names "
            f"(e.g. ['weibull']). Got {tail_families!r}."
        )
    options = FitOptions(
        tail_families=tuple(tail_families),
        quarter_end_window_days=check_int(
            quarter_end_window_days, "quarter_end_window_days", caller, minimum=1
        ),
        arrivals_lookback_quarters=check_int(
            arrivals_lookback_quarters, "arrivals_lookback_quarters", caller, minimum=1
        ),
        shrink=check_bool(shrink, "shrink", caller),
    )
    kind, description = choose_model_kind(log, model_kind, caller)
    fitted_log = deal_level_view(log) if kind == "deal_level" else log
    names, numeric = check_covariates(covariates, fitted_log, caller)
    data = FitData.from_log(
        fitted_log,
        as_of=as_of,
        segment_by=segment_by,
        calendar=calendar,
        recorded_from=recorded_from,
    )
    if half_life == "auto":
        choice = choose_half_life(
            fitted_log, data=data, options=options, seed=seed, recorded_from=recorded_from
        )
    else:
        choice = HalfLifeChoice(half_life, requested=half_life)  # type: ignore[arg-type]
    data = data.with_half_life(choice.half_life)
    options = dataclasses.replace(options, covariates=names)
    if names:
        data = data.with_covariate_design(build_design(data, names, numeric))
    point = fit_components(data, options)
    refit = point.covariates is not None and point.covariates.active and n_draws > 0
    if data.covariate_design is not None and not refit:
        data.covariate_design.release_rows()  # the selection's Cox rows: no draw refits them
    draws = parameter_draws(data, point, options, n_draws, seed) if n_draws > 0 else None
    if point.covariates is not None and n_draws > 0:
        draw_beta = covariate_draws(data, point, n_draws, seed)
        if data.covariate_design is not None:
            data.covariate_design.release_rows()
        if draw_beta is not None:
            point = dataclasses.replace(
                point, covariates=dataclasses.replace(point.covariates, draw_beta=draw_beta)
            )
    trend_fit = None
    if check_bool(trend, "trend", caller):
        # after the draws: their factors are relative to the point curves
        trend_fit = fit_trend(data)
        point = with_trend(point, trend_fit, data)
    return assemble_model(
        data,
        point,
        draws,
        options={
            "segment_by": list(data.segment_by),
            "n_draws": n_draws,
            "seed": seed,
            "tail_families": list(options.tail_families),
            "quarter_end_window_days": options.quarter_end_window_days,
            "arrivals_lookback_quarters": options.arrivals_lookback_quarters,
            "shrink": options.shrink,
            "model_kind": model_kind,
            "half_life": half_life,
            "recorded_from": None if recorded_from is None else data.recorded_from.isoformat(),  # type: ignore[union-attr]
            **({"covariates": list(names)} if names else {}),
            **(
                {"trend": True, "trend_fit": trend_fit.to_dict(data.stages.open)}  # type: ignore[union-attr]
                if trend_fit is not None
                else {}
            ),
        },
        recency=choice,
        model_kind=kind,
        model_description=description,
        fingerprint=log.as_of(data.as_of).fingerprint if kind == "deal_level" else None,
    )


def with_trend(point: PointFit, trend_fit: TrendFit, data: FitData) -> PointFit:
    """``point`` with its exit curves (and covariate baselines) moved to the market at
    the as-of instant by ``trend_fit`` (:func:`~forecast.fit.trend.apply_trend`)."""
    C, won = int(data.n_codes), data.stages.WON  # type: ignore[arg-type, union-attr]
    exits = dataclasses.replace(
        point.exits,
        curves=apply_trend(point.exits.curves, trend_fit, C, won),
        pooled=apply_trend(point.exits.pooled, trend_fit, C, won),
    )
    cov = point.covariates
    if cov is not None and cov.baseline:
        cov = dataclasses.replace(
            cov,
            baseline=apply_trend(cov.baseline, trend_fit, C, won),
            pooled_baseline=apply_trend(cov.pooled_baseline, trend_fit, C, won),
        )
    return dataclasses.replace(point, exits=exits, covariates=cov)


def assemble_model(
    data: FitData,
    point: PointFit,
    draws: ParameterDraws | None,
    *,
    options: dict[str, Any],
    recency: HalfLifeChoice | None = None,
    model_kind: str = "stages",
    model_description: str = "",
    fingerprint: str | None = None,
) -> PipelineModel:
    """The :class:`PipelineModel` of a point fit (and its draws) on ``data`` (built from a log).

    ``fingerprint`` is the data fingerprint of the log the user gave (default: that of
    ``data.cut``, which is it for the stage model; the deal-level model is fitted on
    a view of it).
    """
    assert data.stages is not None and data.cut is not None  # built from a log
    exits = point.exits
    diagnostics = tail_diagnostics(
        [
            *(
                (None, k, c)
                for k, c in exits.pooled.items()
                if len(data.segments) > 1 and k not in exits.borrowed  # a source's tail
            ),
            *((g, k, c) for (g, k), c in exits.raw.items() if c is not exits.pooled[k]),
        ],
        data.stages.open,
    )
    if model_kind == "deal_level" and (left_out := closed_deals_left_out(data.cut, data.as_of)):
        diagnostics = (
            Diagnostic("data", None, None, "closed_deals_left_out", left_out),
            *diagnostics,
        )
    return PipelineModel(
        stages=data.stages,
        segment_by=data.segment_by,
        segments=data.segments,
        as_of=data.as_of,
        calendar=data.calendar,
        curves=point.exits.curves,
        pooled_curves=point.exits.pooled,
        shrinkage=point.exits.shrinkage,
        amounts=point.amounts,
        arrivals=point.arrivals,
        quarter_end=point.quarter_end,
        shocks=point.shocks,
        draws=draws,
        data_fingerprint=data.cut.fingerprint if fingerprint is None else fingerprint,
        version=__version__,
        options=options,
        model_kind=model_kind,
        model_description=model_description,
        diagnostics=(
            *(
                exits.borrowed[k].diagnostic(data.stages.open, data.as_of)
                for k in sorted(exits.borrowed)
            ),
            *diagnostics,
        ),
        borrowed={
            data.stages.open[k]: info.to_dict(data.stages.open)
            for k, info in sorted(exits.borrowed.items())
        },
        covariates=point.covariates,
        recency=recency,
    )


#: Deals above which :func:`choose_half_life` scores a systematic sample of the history
#: (every ``k``-th deal, ``k = ceil(n_deals / BACKTEST_MAX_DEALS)``).
BACKTEST_MAX_DEALS = 50_000

#: Tail families of the fits :func:`choose_half_life` scores.
SCORING_TAIL_FAMILIES: tuple[str, ...] = ("exponential",)


def scoring_options(options: FitOptions) -> FitOptions:
    """The options of the fits :func:`choose_half_life` scores: ``options`` with
    exponential tails (:data:`SCORING_TAIL_FAMILIES`) and the late exits' destination
    mix beyond the longest stay (no destination mixture): the candidates differ in the
    body of the curves, and the tail barely moves one quarter's forecast (the tail
    families cost 4×, the mixture's EM about a quarter of the backtest on a
    1M-event history)."""
    return dataclasses.replace(options, tail_families=SCORING_TAIL_FAMILIES, tail_mixture=False)


def choose_half_life(
    log: DealLog,
    *,
    data: FitData,
    options: FitOptions,
    seed: int = 0,
    recorded_from: object | None = None,
    grid: Sequence[float | None] = DEFAULT_HALF_LIFE_GRID,
    n_origins: int = 4,
    n_paths: int = 400,
    min_history_quarters: int = 4,
    max_deals: int | None = BACKTEST_MAX_DEALS,
) -> HalfLifeChoice:
    """Choose the recency half-life by a rolling-origin backtest of the history itself.

    At each of the last ``n_origins`` fiscal quarter starts whose quarter ended by
    ``data.as_of`` (with at least ``min_history_quarters`` quarters of history before
    them), the log is cut there once (one :class:`FitData` per origin, shared by the
    candidates: only the weights change), every candidate of ``grid`` is fitted
    without parameter draws, and the quarter that followed is simulated with
    ``n_paths`` paths (the same random numbers for every candidate; the open pipeline
    and the views of the origin's cut are taken once for all candidates) and scored
    by its CRPS against what was booked. :func:`~forecast.fit.recency.select_half_life`
    picks the least weighting within one standard error of the best mean. The scored
    fits use exponential tails (:data:`SCORING_TAIL_FAMILIES`) and split the mass
    left beyond the longest observed stay by the late exits' mix (no destination
    mixture, ``FitOptions.tail_mixture``): the candidates differ in the body of the
    curves, and the tail barely moves one quarter's forecast.

    A history of more than ``max_deals`` deals is backtested on a systematic sample of
    them: every ``k``-th deal in sorted deal-id order, ``k = ceil(n_deals /
    max_deals)`` (:attr:`HalfLifeChoice.deal_step`), each with its whole history, and
    scored against what those deals booked. The scores are then those of a history
    ``k`` times smaller (noisier: on a 220,910-deal history, five disjoint samples of
    every 5th deal chose 730 days three times and no weighting twice, where every deal
    chose no weighting, with 365 days best by mean CRPS).

    Cost: ``n_origins`` cuts of the log and ``n_origins × len(grid)`` component fits
    and short simulations on at most ``max_deals`` deals. On a 1,050,332-event
    history (220,910 deals) that was about 3 CPU seconds, against 9 on every deal;
    ``benchmarks/bench_fit.py`` measures it against the fit with 32 draws in one run.
    The choice is deterministic for a seed.

    Parameters
    ----------
    log : DealLog
        The history (only what ``data.as_of`` knows is used).
    data : FitData
        The fit input at the as-of instant (for the segments, calendar and cut).
    options : FitOptions
    seed : int
        Seed of the scored simulations.
    recorded_from : date-like, optional
        As :func:`fit`.
    grid : sequence of float or None
        Candidate half-lives (days), least weighting first; None is no weighting.
    n_origins, n_paths, min_history_quarters : int
    max_deals : int or None
        Deals above which the backtest scores a sample (None: every deal).

    Returns
    -------
    HalfLifeChoice
        No weighting, with a ``note``, when no origin qualifies or no candidate
        could be fitted at any origin.
    """
    candidates = tuple(None if h is None else float(h) for h in grid)
    if None not in candidates:
        candidates = (None, *candidates)
    calendar = data.calendar
    cut = data.cut if data.cut is not None else log.as_of(data.as_of)
    # the origins' cuts and views are cached on a private copy of the log, not on the
    # user's log: it would keep a copy of the events per origin for its lifetime and
    # carry them wherever it is pickled (e.g. sent to a Dask worker)
    # a history of more than `max_deals` deals is scored on every `step`-th deal (sorted
    # ids): the fits and simulations of the backtest cost in proportion to the deals
    events, step, kept = cut.events, 1, None
    if max_deals is not None:
        max_deals = check_int(max_deals, "max_deals", "choose_half_life", minimum=1)
        step = max(1, math.ceil(events["deal_id"].n_unique() / max_deals))
        if step > 1:
            ids = events["deal_id"].unique().sort()
            kept = ids.gather(np.arange(0, ids.len(), step))
            events = events.filter(pl.col("deal_id").is_in(kept.implode()))
    cut = DealLog(
        events, cut.stages, cut.segment_columns, cut.report, cut=cut.cut, source=cut.source
    )
    start = data.history_start if data.history_start is not None else cut.first_timestamp
    first = calendar.quarter_of(start)
    if start > first.start:
        first = calendar.shift(first, 1)
    earliest = calendar.shift(first, min_history_quarters).start
    origins: list[dt.datetime] = []
    q = calendar.quarter_of(data.as_of)
    while len(origins) < n_origins:
        q = calendar.shift(q, -1)
        if q.start < earliest:
            break
        if q.end <= data.as_of:
            origins.append(q.start)
    origins.reverse()

    def fallback(note: str) -> HalfLifeChoice:
        return HalfLifeChoice(
            None, "auto", candidates, (), (), (), None, n_paths, seed, note, deal_step=step
        )

    if not origins:
        return fallback(
            f"no weighting: fewer than {min_history_quarters} full quarters of history "
            "before the last complete quarter, nothing to backtest"
        )
    scores: list[list[float]] = [[] for _ in candidates]
    used: list[dt.datetime] = []
    booked: list[float] = []
    no_draws = {"n_draws": 0, "seed": seed}
    scoring = scoring_options(options)
    for i, o in enumerate(origins):
        quarter = calendar.quarter_of(o)
        realised = _booked(data, cut, quarter.start, quarter.end, kept)
        try:
            data_o = FitData.from_log(
                cut,
                as_of=o,
                segment_by=data.segment_by,
                calendar=calendar,
                recorded_from=recorded_from,
            )
            # the log cut at the origin (cached by the cut above): its views are shared
            # by every candidate's simulation, the open pipeline is taken once
            log_o = cut.as_of(o)
            pipe = log_o.pipeline(o)
            shared: dict[Any, Any] = {}  # what every candidate's simulation reads of log_o
            row = []
            for h in candidates:
                d = data_o.with_half_life(h)
                # no fingerprint: a scored model is never saved or compared
                model = assemble_model(
                    d, fit_components(d, scoring), None, options=no_draws, fingerprint=""
                )
                total = simulate_quarter_totals(
                    model, log_o, n_paths, seed + i, pipe=pipe, shared=shared
                )
                row.append(float(crps_samples(total, realised)))
        except ModelError:
            continue  # e.g. a stage not yet visited at this origin
        for j, v in enumerate(row):
            scores[j].append(v)
        used.append(o)
        booked.append(realised)
    if not used:
        return fallback("no weighting: the history could not be fitted at any backtest origin")
    crps = np.asarray(scores)
    index, _, _ = select_half_life(candidates, crps)
    return HalfLifeChoice(
        candidates[index],
        "auto",
        candidates,
        tuple(used),
        tuple(tuple(r) for r in crps.tolist()),
        tuple(booked),
        index,
        n_paths,
        seed,
        deal_step=step,
    )


def _booked(
    data: FitData,
    cut: DealLog,
    start: dt.datetime,
    end: dt.datetime,
    deals: pl.Series | None = None,
) -> float:
    """Won amount (currency) of ``cut`` booked in ``[start, end)`` (``end`` ≤ ``data.as_of``).

    Read from the fit data's bookings (every win up to ``data.as_of``; only those of
    ``deals`` when ``cut`` holds only these), which :meth:`DealLog.booked_amount` would
    rebuild from the events.
    """
    b = data.bookings
    if b is None or "won_at" not in b.columns or "deal_id" not in b.columns:
        return cut.booked_amount(start, end)
    won = b.filter((pl.col("won_at") >= start) & (pl.col("won_at") < end))
    if deals is not None:
        won = won.filter(pl.col("deal_id").cast(pl.Utf8).is_in(deals.cast(pl.Utf8).implode()))
    return float(won["amount"].fill_null(0.0).sum())


#: Parameter draws whose deal weights are held in memory at once (a block of draws is
#: estimated in one pass over the data; the block bounds the memory to
#: ``DRAW_BLOCK × n_deals`` weights).
DRAW_BLOCK = 16


def parameter_draws(
    data: FitData,
    point: PointFit,
    options: FitOptions,
    n_draws: int,
    seed: int,
    threads: int | None = None,
) -> ParameterDraws:
    """Bayesian bootstrap over deals: refit on Dirichlet-weighted deals, keep the ratios to the point fit.

    Draw ``b`` weights the deals by ``bootstrap_weights(data, seed, b)``. Per
    (segment, stage) it keeps the ratio of the draw's eventual destination shares
    and median sojourn to the point fit's (mixed like the curves, by the
    credibility of the segment; a stage whose curves were borrowed takes its
    source's ratios times a deliberately wide random factor,
    :func:`forecast.fit.borrowing.borrowed_draw`), per segment the ratio of the
    expected arrivals over the next four quarters, and the refitted pull-in and shock sigma
    (``docs/model.md``, "Parameter uncertainty").

    Nothing is validated, cut, labelled or sorted per draw: each estimator lays its
    data out once (:class:`~forecast.fit.exits.ExitDrawLayout`,
    :class:`~forecast.fit.arrivals.ArrivalLayout`,
    :class:`~forecast.fit.calendar_effects.QuarterEndLayout`,
    :class:`~forecast.fit.shocks.ShockLayout`) and then estimates a block of
    :data:`DRAW_BLOCK` draws at once from their weights (compiled sweeps over the
    sorted spells, split over threads). Each draw's numbers equal those of refitting
    the components on ``data.with_weights(...)`` up to rounding.

    Parameters
    ----------
    data : FitData
        The point fit's data (unit deal weights; its half-life is kept by every draw).
    point : PointFit
        The point fit on ``data``.
    options : FitOptions
    n_draws : int
        ``B`` ≥ 1.
    seed : int
    threads : int, optional
        Threads for the compiled sweeps (default: Numba's thread count).

    Returns
    -------
    ParameterDraws
    """
    segments = data.segments
    t, calendar = data.as_of, data.calendar
    G = len(segments)
    window_days = options.quarter_end_window_days
    exits = ExitDrawLayout.from_fit(data, point.exits)
    # the point fit's layouts (fit_components), or the same built here
    arrivals = point.arrival_layout or ArrivalLayout.from_data(
        data, lookback_quarters=options.arrivals_lookback_quarters
    )
    quarter_end = point.quarter_end_layout or QuarterEndLayout.from_data(
        data, window_days=window_days
    )
    shocks = point.shock_layout or ShockLayout.from_data(data)
    qb = calendar.quarters(t, 1)[0]
    window = (qb.start, calendar.shift(qb, 4).end)
    base_counts = point.arrivals.expected_counts([window], t)[:, 0]
    base = dict(zip(point.arrivals.segments, base_counts, strict=True))
    n_open, n_codes = int(data.n_open or 0), int(data.n_codes or 0)
    time_factor = np.ones((n_draws, G, n_open))
    dest_mult = np.ones((n_draws, G, n_open, n_codes))
    arrival_mult = np.ones((n_draws, G))
    pull_in = np.empty(n_draws)
    sigma = np.empty(n_draws)
    for lo in range(0, n_draws, DRAW_BLOCK):
        hi = min(n_draws, lo + DRAW_BLOCK)
        weights = bootstrap_weight_block(data, seed, range(lo, hi), threads=threads)

        def borrow(m_pool: np.ndarray, tf_pool: np.ndarray, lo: int = lo) -> None:
            # a stage whose curves were borrowed: its source's ratios, widened
            for i in range(m_pool.shape[0]):
                for k, info in point.exits.borrowed.items():
                    source = (m_pool[i, info.source], tf_pool[i, info.source])
                    draw = borrowed_draw(source, info, n_open, n_codes, seed, lo + i)
                    m_pool[i, k], tf_pool[i, k] = draw

        dest_mult[lo:hi], time_factor[lo:hi] = exits.ratios(
            weights,
            threads=threads,
            adjust_pooled=borrow,
            tail_draws=exits.tail_share_draws(seed, range(lo, hi)),
        )
        counts = arrivals.expected_in_window(weights, window)  # (block, G_arr)
        for i, g in enumerate(arrivals.segments):
            if g in segments and base.get(g, 0.0) > 0:
                arrival_mult[lo:hi, segments.index(g)] = counts[:, i] / base[g]
        pull_in[lo:hi] = quarter_end.pull_in(weights)
        sigma[lo:hi] = shocks.sigmas(weights, threads=threads, seed=seed, draws=range(lo, hi))
    return ParameterDraws(time_factor, dest_mult, arrival_mult, pull_in, sigma, seed)
