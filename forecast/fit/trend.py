"""Calendar trend of the exit curves: a market whose pace and win odds drift.

Opt-in (``fit(..., trend=True)``; ``docs/model.md``, "Calendar trend"). Per open
stage (all segments pooled) a parametric competing-risks model of the stage's
visits is fitted by maximum likelihood with one covariate, the visit's stage entry
``x`` in years relative to the as-of instant (negative in the past):

- destination ``j`` with probability ``π_j(x) ∝ π_j exp(b x [j = won])`` (the odds of
  winning against every other destination change by ``e^b`` per year);
- the stay given ``j`` log-normal, ``log T = μ_j + a x + σ_j ε`` (every stay is
  ``e^a`` times longer per year: the pace).

Censored visits count by their survival ``Σ_j π_j(x) S_j(T | x)``, delayed entries by
the survival up to their entry (left truncation), every visit by its fit weight
(deal weight times recency weight). The log-normal body is only the vehicle of the
two slopes; the curves themselves stay the nonparametric ones of
:mod:`forecast.fit.exits`.

The fitted curves describe, to first order, the market of the visits they were
learned from: the weighted mean entry ``x̄`` of the stage's observed exits. At the
as-of instant (``x = 0``) the curves are moved by
``ExitCurves.scaled(exp(−a x̄), m)`` with ``m_won = exp(−b x̄)`` and 1 elsewhere,
the mechanism of the parameter draws.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import special

from forecast.calendar import DAYS_PER_YEAR
from forecast.fit.competing_risks import ExitCurves
from forecast.fit.data import FitData

__all__ = [
    "COHORT_DAYS",
    "MAX_COHORTS",
    "StageTrend",
    "TrendFit",
    "apply_trend",
    "cohort_factors",
    "fit_stage_trend",
    "fit_trend",
    "shrunk_slope",
]

#: Observed exits below which a stage's slopes are not estimated (kept at 0).
MIN_TREND_EXITS = 30
#: Observed wins below which the win-odds slope of a stage is not estimated.
MIN_TREND_WINS = 10
#: Largest slope magnitude accepted per year (log scale); beyond it the fit is unstable.
MAX_SLOPE_PER_YEAR = 3.0
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
#: Width of an open deals' entry-date cohort, days of age in the current stage.
COHORT_DAYS = 91
#: Most entry-date cohorts per stage; older deals share the last one.
MAX_COHORTS = 8


@dataclass(frozen=True)
class StageTrend:
    """The calendar trend of one open stage.

    Attributes
    ----------
    pace_per_year : float
        ``a``: log of the factor on every stay per year of stage entry (0.18: stays
        20 % longer for visits entered a year later).
    win_log_odds_per_year : float
        ``b``: change of the log-odds of winning against every other destination per
        year of stage entry.
    reference_years : float
        ``x̄``: weighted mean stage entry of the observed exits, years relative to the
        as-of instant (≤ 0), the market the nonparametric curves describe.
    n_exits : float
        Weighted observed exits the slopes were estimated from.
    pace_se, win_log_odds_se : float
        Standard errors of the slope estimates (inverse observed information, weights
        read as case counts); nan when not estimated.
    pace_estimate, win_log_odds_estimate : float
        The maximum-likelihood slopes when the slopes above are shrunk
        (:func:`shrunk_slope`); nan otherwise.
    """

    pace_per_year: float = 0.0
    win_log_odds_per_year: float = 0.0
    reference_years: float = 0.0
    n_exits: float = 0.0
    pace_se: float = math.nan
    win_log_odds_se: float = math.nan
    pace_estimate: float = math.nan
    win_log_odds_estimate: float = math.nan

    def factors(self, at_years: float, n_codes: int, won: int) -> tuple[float, np.ndarray]:
        """``(time_factor, destination_multipliers (C,))`` moving the curves to ``at_years``."""
        dx = at_years - self.reference_years
        m = np.ones(n_codes)
        m[won] = math.exp(self.win_log_odds_per_year * dx)
        return math.exp(self.pace_per_year * dx), m

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready fields (a standard error not computed is None)."""
        return {k: None if math.isnan(v) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class TrendFit:
    """Per open stage code, its :class:`StageTrend`."""

    stages: dict[int, StageTrend]

    def to_dict(self, stage_names: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
        """JSON-ready: stage name -> fields."""
        return {stage_names[k]: t.to_dict() for k, t in sorted(self.stages.items())}


class _Likelihood(NamedTuple):
    """One stage's trend likelihood (:func:`stage_likelihood`)."""

    nll: Callable[[np.ndarray], tuple[float, np.ndarray]] | None
    start: np.ndarray
    reference_years: float
    n_exits: float
    fit_win_slope: bool
    total_weight: float


def stage_likelihood(
    years: np.ndarray,
    durations: np.ndarray,
    destinations: np.ndarray,
    weights: np.ndarray,
    entries: np.ndarray | None,
    won: int,
) -> _Likelihood:
    """The weighted mean negative log-likelihood of the trend model of one stage, with
    its analytic gradient, and the optimiser's start (arguments as
    :func:`fit_stage_trend`; ``nll`` None below :data:`MIN_TREND_EXITS` exits).

    Parameters ``p``: the log-odds of destinations 1.. against the first (observed
    codes in increasing order), the log-normal ``μ_j`` and ``log σ_j``, then ``a`` and
    ``b`` (the gradient's last entry is 0 when the win-odds slope is not fitted).
    """
    keep = weights > 0
    x, t, d, w = years[keep], durations[keep], destinations[keep], weights[keep]
    e = None if entries is None else entries[keep]
    seen = d >= 0
    n_exits = float(w[seen].sum())
    if n_exits < MIN_TREND_EXITS or x.size == 0:
        return _Likelihood(None, np.empty(0), 0.0, n_exits, False, 0.0)
    x_ref = float(np.average(x[seen], weights=w[seen]))
    codes = np.unique(d[seen])
    J = codes.size
    col = np.searchsorted(codes, np.where(seen, d, codes[0]))
    won_col = int(np.searchsorted(codes, won)) if won in codes else -1
    fit_b = won_col >= 0 and float(w[seen & (d == won)].sum()) >= MIN_TREND_WINS
    logt = np.log(np.maximum(t, 0.5))
    loge = None if e is None else np.where(e > 0, np.log(np.maximum(e, 0.5)), -np.inf)
    xc = x - x_ref  # centred: the slopes barely move the intercepts
    is_won = np.zeros(J)
    if won_col >= 0:
        is_won[won_col] = 1.0
    # start: shares and log-normal moments of each destination's observed stays
    share0 = np.array([w[seen & (col == c)].sum() for c in range(J)]) / n_exits
    mu0 = np.array(
        [np.average(logt[seen & (col == c)], weights=w[seen & (col == c)]) for c in range(J)]
    )
    sd0 = np.array(
        [
            math.sqrt(
                max(
                    np.average(
                        (logt[seen & (col == c)] - mu0[c]) ** 2, weights=w[seen & (col == c)]
                    ),
                    0.01,
                )
            )
            for c in range(J)
        ]
    )
    p0 = np.r_[np.log(share0[1:] / share0[0]), mu0, np.log(sd0), 0.0, 0.0]

    W = float(w.sum())
    b_on = 1.0 if fit_b else 0.0
    wo = w[seen]
    xo, lo, co = xc[seen], logt[seen], col[seen]
    xs, ls, ws = xc[~seen], logt[~seen], w[~seen]
    trunc = np.zeros(x.size, dtype=bool) if loge is None else np.isfinite(loge)
    xt, lt, wt = xc[trunc], (loge[trunc] if loge is not None else xc[trunc]), w[trunc]
    n_par = p0.size

    def nll(p: np.ndarray) -> tuple[float, np.ndarray]:
        """Weighted mean negative log-likelihood and its gradient."""
        eta = np.r_[0.0, p[: J - 1]]
        mu, sig = p[J - 1 : 2 * J - 1], np.exp(p[2 * J - 1 : 3 * J - 1])
        a, b = p[-2], p[-1] * b_on
        g_logit = np.zeros(J)  # d ll / d eta_j, summed
        g_b = 0.0
        g_mu, g_ls, g_a = np.zeros(J), np.zeros(J), 0.0
        total = 0.0
        # observed exits: log π_c(x) + log-normal density of the stay
        logit = eta[None, :] + b * xo[:, None] * is_won[None, :]
        lse = special.logsumexp(logit, axis=1)
        pi = np.exp(logit - lse[:, None])
        rows = np.arange(xo.size)
        z = (lo - mu[co] - a * xo) / sig[co]
        total += float(
            np.dot(wo, logit[rows, co] - lse - 0.5 * z**2 - _LOG_SQRT_2PI - np.log(sig[co]))
        )
        d_logit = -pi * wo[:, None]
        d_logit[rows, co] += wo
        g_logit += d_logit.sum(axis=0)
        g_b += float(np.dot(d_logit @ is_won, xo))
        wz = wo * z
        g_mu += np.bincount(co, weights=wz / sig[co], minlength=J)
        g_a += float(np.dot(wz / sig[co], xo))
        g_ls += np.bincount(co, weights=wo * (z**2 - 1.0), minlength=J)
        # censored visits (+1) and delayed entries (−1): log Σ_j π_j(x) S_j(t | x)
        for sign, xx, ll_t, ww in ((1.0, xs, ls, ws), (-1.0, xt, lt, wt)):
            if xx.size == 0:
                continue
            logit = eta[None, :] + b * xx[:, None] * is_won[None, :]
            lse = special.logsumexp(logit, axis=1, keepdims=True)
            logpi = logit - lse
            z = (ll_t[:, None] - mu[None, :] - a * xx[:, None]) / sig[None, :]
            log_s = special.log_ndtr(-z)
            terms = logpi + log_s
            ll = special.logsumexp(terms, axis=1, keepdims=True)
            total += sign * float(np.dot(ww, ll[:, 0]))
            q = np.exp(terms - ll)  # posterior of the destination given survival
            sw = sign * ww[:, None]
            d_logit = sw * (q - np.exp(logpi))
            g_logit += d_logit.sum(axis=0)
            g_b += float(np.dot(d_logit @ is_won, xx))
            # d log S / d z = −φ(z) / Φ(−z), the inverse Mills ratio, in logs
            mills = np.exp(-0.5 * z**2 - _LOG_SQRT_2PI - log_s)
            qm = sw * q * mills  # d ll / d z = −qm
            g_mu += (qm / sig[None, :]).sum(axis=0)
            g_a += float(np.dot((qm / sig[None, :]).sum(axis=1), xx))
            g_ls += (qm * z).sum(axis=0)
        grad = np.empty(n_par)
        grad[: J - 1] = g_logit[1:]
        grad[J - 1 : 2 * J - 1] = g_mu
        grad[2 * J - 1 : 3 * J - 1] = g_ls
        grad[-2] = g_a
        grad[-1] = g_b * b_on
        return -total / W, -grad / W

    return _Likelihood(nll, p0, x_ref, n_exits, fit_b, W)


def fit_stage_trend(
    years: np.ndarray,
    durations: np.ndarray,
    destinations: np.ndarray,
    weights: np.ndarray,
    entries: np.ndarray | None,
    won: int,
    standard_errors: bool = False,
    shrink: bool = False,
) -> StageTrend:
    """Maximum-likelihood slopes of one stage's visits (see the module docstring).

    Parameters
    ----------
    years : ndarray of float, shape (n,)
        Stage entry of each visit, years relative to the as-of instant.
    durations : ndarray of float, shape (n,)
        Days in the stage (to the exit, or to the as-of instant when censored).
    destinations : ndarray of int, shape (n,)
        Destination code, ``-1`` when censored.
    weights : ndarray of float, shape (n,)
        Fit weights (≥ 0).
    entries : ndarray of float, shape (n,), or None
        Delayed entry, days on the sojourn clock (None: 0).
    won : int
        Code of the won stage.
    standard_errors : bool, default False
        Also compute the slopes' standard errors (the Hessian from central differences
        of the analytic gradient: two gradient evaluations per parameter).
    shrink : bool, default False
        Shrink each slope towards 0 by its standard error (:func:`shrunk_slope`;
        computes the standard errors); the estimates are kept in ``pace_estimate``
        and ``win_log_odds_estimate``.

    Returns
    -------
    StageTrend
        Slopes 0 when the stage has fewer than :data:`MIN_TREND_EXITS` weighted exits
        or the optimiser fails; a win-odds slope 0 with fewer than
        :data:`MIN_TREND_WINS` wins.
    """
    lik = stage_likelihood(years, durations, destinations, weights, entries, won)
    if lik.nll is None:
        return StageTrend(n_exits=lik.n_exits)
    nll, p0, x_ref, n_exits, fit_b, W = lik
    from scipy.optimize import minimize  # deferred: the trend is opt-in (tests/test_imports.py)

    res = minimize(nll, p0, method="L-BFGS-B", jac=True)
    if not np.all(np.isfinite(res.x)):
        return StageTrend(reference_years=x_ref, n_exits=n_exits)
    a, b = float(res.x[-2]), float(res.x[-1]) if fit_b else 0.0
    if abs(a) > MAX_SLOPE_PER_YEAR or abs(b) > MAX_SLOPE_PER_YEAR:
        return StageTrend(reference_years=x_ref, n_exits=n_exits)
    if not (standard_errors or shrink):
        return StageTrend(a, b, x_ref, n_exits)
    free = np.arange(res.x.size) if fit_b else np.arange(res.x.size - 1)
    cov = _inverse_information(lambda p: nll(p)[1], res.x, free)
    se = (
        np.sqrt(np.clip(np.diag(cov) / W, 0.0, None))
        if cov is not None
        else np.full(free.size, np.nan)
    )
    se_a, se_b = float(se[-1] if not fit_b else se[-2]), float(se[-1]) if fit_b else math.nan
    if not shrink:
        return StageTrend(a, b, x_ref, n_exits, se_a, se_b)
    return StageTrend(
        shrunk_slope(a, se_a), shrunk_slope(b, se_b), x_ref, n_exits, se_a, se_b, a, b
    )


def shrunk_slope(estimate: float, se: float) -> float:
    """``estimate · max(0, 1 − (se / estimate)²)``: the slope that minimises the
    expected squared error of ``s · estimate`` for a true slope ``s_true``,
    ``s = s_true² / (s_true² + se²)``, with ``s_true²`` estimated by
    ``estimate² − se²`` (0 when the slope is within one standard error of 0, nearly
    the estimate when it is many standard errors away). 0 without a standard error."""
    if not (math.isfinite(se) and se > 0) or estimate == 0.0:
        return 0.0
    return estimate * max(0.0, 1.0 - (se / estimate) ** 2)


def _inverse_information(
    grad, p: np.ndarray, free: np.ndarray, h: float = 1e-5
) -> np.ndarray | None:
    """Inverse of the Hessian of a function at ``p`` over the ``free`` entries, from
    central differences of its gradient ``grad`` (symmetrised)."""
    n = free.size
    hess = np.empty((n, n))
    for i in range(n):
        up, down = p.copy(), p.copy()
        up[free[i]] += h
        down[free[i]] -= h
        hess[i] = (grad(up)[free] - grad(down)[free]) / (2 * h)
    hess = 0.5 * (hess + hess.T)
    try:
        return np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return None


def fit_trend(data: FitData, standard_errors: bool = False, shrink: bool = True) -> TrendFit:
    """The :class:`StageTrend` of every open stage of ``data`` (segments pooled;
    ``standard_errors``, ``shrink``: see :func:`fit_stage_trend`)."""
    a = data.spell_arrays
    assert a is not None and a.days_before_as_of is not None and data.stages is not None
    won = data.stages.WON
    out: dict[int, StageTrend] = {}
    for k in range(int(data.n_open or 0)):
        rows = a.stage_order[a.stage_offsets[k] : a.stage_offsets[k + 1]]
        cs = data.stratum_spells(k)
        years = -a.days_before_as_of[rows] / DAYS_PER_YEAR
        out[k] = fit_stage_trend(
            years,
            cs.durations,
            cs.destinations,
            cs.weights,
            cs.entries,
            won,
            standard_errors,
            shrink,
        )
    return TrendFit(out)


def apply_trend(
    curves: Mapping[tuple[str, int], ExitCurves] | Mapping[int, ExitCurves],
    trend: TrendFit,
    n_codes: int,
    won: int,
    at_years: float = 0.0,
) -> dict:
    """``curves`` (keyed by stage code, or by (segment, stage code)) moved to ``at_years``."""
    out = {}
    for key, c in curves.items():
        k = key[1] if isinstance(key, tuple) else key
        st = trend.stages.get(k)
        if st is None or (st.pace_per_year == 0.0 and st.win_log_odds_per_year == 0.0):
            out[key] = c
            continue
        f, m = st.factors(at_years, n_codes, won)
        out[key] = c.scaled(f, m)
    return out


def cohort_factors(
    slopes: Mapping[str, Mapping[str, float | None]],
    open_stages: tuple[str, ...],
    n_codes: int,
    won: int,
    n_cohorts: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Factors moving the as-of curves back to the entry date of each age cohort.

    An open deal aged ``a`` days in its stage entered it at ``x = −a / 365.25``
    years; the deals of cohort ``c`` (ages ``c·COHORT_DAYS`` to
    ``(c + 1)·COHORT_DAYS − 1`` days, the last cohort every older age) are read at
    the cohort's middle, ``x_c = −(c + ½)·COHORT_DAYS / 365.25``, with the time factor
    ``e^{a x_c}`` and the won multiplier ``e^{b x_c}`` relative to the curves at the
    as-of instant (which the fit already moved there).

    Parameters
    ----------
    slopes : mapping
        ``model.options["trend_fit"]``: stage name -> :meth:`StageTrend.to_dict`.
    open_stages : tuple of str
        Names of the open stage codes ``0 .. K − 1``.
    n_codes : int
        Number of stage codes ``C``.
    won : int
        Code of the won stage.
    n_cohorts : int
        Number of cohorts (≥ 1).

    Returns
    -------
    (time_factors (n_cohorts, K), multipliers (n_cohorts, K, C)) or None
        None when no stage has a slope.
    """
    k_open = len(open_stages)
    a = np.zeros(k_open)
    b = np.zeros(k_open)
    for k, name in enumerate(open_stages):
        st = slopes.get(name) or {}
        a[k] = st.get("pace_per_year") or 0.0
        b[k] = st.get("win_log_odds_per_year") or 0.0
    if not (np.any(a != 0.0) or np.any(b != 0.0)):
        return None
    x = -(np.arange(n_cohorts) + 0.5) * COHORT_DAYS / DAYS_PER_YEAR  # (n_cohorts,)
    f = np.exp(x[:, None] * a[None, :])
    m = np.ones((n_cohorts, k_open, n_codes))
    m[:, :, won] = np.exp(x[:, None] * b[None, :])
    return f, m
