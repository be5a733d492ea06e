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
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special

from forecast.calendar import DAYS_PER_YEAR
from forecast.fit.competing_risks import ExitCurves
from forecast.fit.data import FitData

__all__ = ["StageTrend", "TrendFit", "apply_trend", "fit_stage_trend", "fit_trend"]

#: Observed exits below which a stage's slopes are not estimated (kept at 0).
MIN_TREND_EXITS = 30
#: Observed wins below which the win-odds slope of a stage is not estimated.
MIN_TREND_WINS = 10
#: Largest slope magnitude accepted per year (log scale); beyond it the fit is unstable.
MAX_SLOPE_PER_YEAR = 3.0


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
        Standard errors of the slopes (inverse observed information, weights read as
        case counts); nan when not estimated.
    """

    pace_per_year: float = 0.0
    win_log_odds_per_year: float = 0.0
    reference_years: float = 0.0
    n_exits: float = 0.0
    pace_se: float = math.nan
    win_log_odds_se: float = math.nan

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


def fit_stage_trend(
    years: np.ndarray,
    durations: np.ndarray,
    destinations: np.ndarray,
    weights: np.ndarray,
    entries: np.ndarray | None,
    won: int,
    standard_errors: bool = False,
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
        Also compute the slopes' standard errors (a finite-difference Hessian: a few
        hundred likelihood evaluations).

    Returns
    -------
    StageTrend
        Slopes 0 when the stage has fewer than :data:`MIN_TREND_EXITS` weighted exits
        or the optimiser fails; a win-odds slope 0 with fewer than
        :data:`MIN_TREND_WINS` wins.
    """
    keep = weights > 0
    x, t, d, w = years[keep], durations[keep], destinations[keep], weights[keep]
    e = None if entries is None else entries[keep]
    seen = d >= 0
    n_exits = float(w[seen].sum())
    if n_exits < MIN_TREND_EXITS or x.size == 0:
        return StageTrend(n_exits=n_exits)
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

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        eta = np.r_[0.0, p[: J - 1]]
        return eta, p[J - 1 : 2 * J - 1], np.exp(p[2 * J - 1 : 3 * J - 1]), p[-2], p[-1]

    def nll(p: np.ndarray) -> float:
        eta, mu, sig, a, b = unpack(p)
        logit = eta[None, :] + (b if fit_b else 0.0) * xc[:, None] * is_won[None, :]  # (n, J)
        logpi = logit - special.logsumexp(logit, axis=1, keepdims=True)
        z = (logt[:, None] - mu[None, :] - a * xc[:, None]) / sig[None, :]
        ll = np.empty(x.size)
        zs = z[seen, col[seen]]
        ll[seen] = (
            logpi[seen, col[seen]]
            - 0.5 * zs**2
            - math.log(math.sqrt(2 * math.pi))
            - np.log(sig[col[seen]])
        )
        cz = z[~seen]
        ll[~seen] = special.logsumexp(logpi[~seen] + special.log_ndtr(-cz), axis=1)
        if loge is not None:
            trunc = np.isfinite(loge)
            if np.any(trunc):
                ze = (loge[trunc, None] - mu[None, :] - a * xc[trunc, None]) / sig[None, :]
                ll[trunc] -= special.logsumexp(logpi[trunc] + special.log_ndtr(-ze), axis=1)
        return -float(np.dot(w, ll)) / float(w.sum())

    from scipy.optimize import minimize  # deferred: the trend is opt-in (tests/test_imports.py)

    res = minimize(nll, p0, method="L-BFGS-B")
    if not np.all(np.isfinite(res.x)):
        return StageTrend(reference_years=x_ref, n_exits=n_exits)
    a, b = float(res.x[-2]), float(res.x[-1]) if fit_b else 0.0
    if abs(a) > MAX_SLOPE_PER_YEAR or abs(b) > MAX_SLOPE_PER_YEAR:
        return StageTrend(reference_years=x_ref, n_exits=n_exits)
    if not standard_errors:
        return StageTrend(a, b, x_ref, n_exits)
    free = np.arange(res.x.size) if fit_b else np.arange(res.x.size - 1)
    cov = _inverse_information(nll, res.x, free) / float(w.sum())
    se = (
        np.sqrt(np.clip(np.diag(cov), 0.0, None)) if cov is not None else np.full(free.size, np.nan)
    )
    return StageTrend(
        a,
        b,
        x_ref,
        n_exits,
        float(se[-1] if not fit_b else se[-2]),
        float(se[-1]) if fit_b else math.nan,
    )


def _inverse_information(f, p: np.ndarray, free: np.ndarray, h: float = 1e-4) -> np.ndarray | None:
    """Inverse of the central-difference Hessian of ``f`` at ``p`` over the ``free`` entries."""
    n = free.size
    hess = np.empty((n, n))

    def at(i: int, di: float, j: int, dj: float) -> float:
        q = p.copy()
        q[free[i]] += di
        q[free[j]] += dj
        return f(q)

    for i in range(n):
        for j in range(i, n):
            v = (at(i, h, j, h) - at(i, h, j, -h) - at(i, -h, j, h) + at(i, -h, j, -h)) / (
                4 * h * h
            )
            hess[i, j] = hess[j, i] = v
    try:
        return np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return None


def fit_trend(data: FitData, standard_errors: bool = False) -> TrendFit:
    """The :class:`StageTrend` of every open stage of ``data`` (segments pooled;
    ``standard_errors``: see :func:`fit_stage_trend`)."""
    a = data.spell_arrays
    assert a is not None and a.days_before_as_of is not None and data.stages is not None
    won = data.stages.WON
    out: dict[int, StageTrend] = {}
    for k in range(int(data.n_open or 0)):
        rows = a.stage_order[a.stage_offsets[k] : a.stage_offsets[k + 1]]
        cs = data.stratum_spells(k)
        years = -a.days_before_as_of[rows] / DAYS_PER_YEAR
        out[k] = fit_stage_trend(
            years, cs.durations, cs.destinations, cs.weights, cs.entries, won, standard_errors
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
