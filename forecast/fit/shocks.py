"""Shared shocks: between-quarter variation of win odds beyond binomial noise.

For each complete past fiscal quarter ``q``, take the spells that ended in a
terminal outcome (won, lost or no decision) during ``q``. The quarter's shift of
the win log-odds is estimated *at the deal level*: each terminal spell ``i`` gets
a baseline log-odds ``o_i``, the pooled (all quarters) won share of its stratum —
open stage × segment × sojourn-duration bin (``n_duration_bins`` quantile bins per
stage), with a ½ pseudo-count — and ``y_q`` solves the one-parameter logistic
score equation

    Σ_i w_i (won_i - expit(o_i + y_q)) + (½ - expit(ō_q + y_q)) = 0,
    v_q = 1 / (Σ_i w_i p_i (1 - p_i) + p̄ (1 - p̄))

(the last term, a half-won pseudo-observation at the quarter's mean offset,
keeps ``y_q`` finite when a quarter has no or only wins). Why not simply the
logit of the quarter's won share: exits whose baseline is ≈ 0 (e.g. zombie deals
lost after a very long sojourn) cannot respond to a shock, so the aggregate
share moves far less than each deal's odds — on the synthetic generator the
aggregate logit reads about half of the true ``sigma``. With
``baseline="none"`` (all ``o_i = 0``) ``y_q`` is exactly the Haldane–Anscombe
empirical logit ``log((W_q + ½) / (L_q + ½))`` with ``v_q = 1/(W_q + ½) + 1/(L_q + ½)``.

Model: ``y_q = x_qᵀ b + u_q + e_q`` with the shock ``u_q ~ N(0, sigma²)`` and the
sampling error ``e_q ~ N(0, v_q)``; ``x_q = (1, t_q)`` (``t_q`` the quarter's
midpoint in years) when ``detrend`` and at least ``min_quarters_trend`` quarters
are available, else ``x_q = 1``. The linear term keeps a drifting win rate (a
market slowly getting better or worse) from being read as quarter-to-quarter
shocks. ``sigma²`` is estimated by restricted maximum likelihood (REML, the
random-effects meta-regression estimator; boundary 0 allowed), with a 95%
profile-likelihood interval (REML log-likelihood within χ²₁(0.95)/2 = 1.92 of
its maximum). The method-of-moments value — variance of the residual shifts
minus the mean of ``v_q``, floored at 0 — is reported beside it.

Meaning for the simulator (``docs/model.md``, "Shared shocks"; ``docs/internals.md`` §5): per path and quarter,
``z_q ~ N(-sigma²/2, sigma²)`` and each deal's odds of winning in that quarter are
multiplied by ``exp(z_q)``; ``sigma`` is the standard deviation of that log-odds shift.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from forecast._kernels import quarter_logistic_shifts
from forecast._kernels.estimators import exit_cell_sums
from forecast._solvers import find_root, minimize_bounded
from forecast._validation import check_bool, check_int, float_or_none, to_datetime64
from forecast.calendar import DAYS_PER_YEAR
from forecast.errors import ParameterError
from forecast.fit.calendar_effects import month_index_to_datetime, quarter_start_month_index
from forecast.fit.data import FitData
from forecast.segments import SEGMENT_COLUMN

__all__ = [
    "SHOCK_SIGMA_PRIOR_SCALE",
    "ShockLayout",
    "ShockModel",
    "fit_shocks",
    "prior_sigma_draws",
    "reml_shock_variance",
]

#: Scale of the half-normal prior of the shock sigma (log-odds) that the parameter
#: draws take when too few quarters are seen to estimate it: root mean square 0.3
#: (win odds moving by a factor of about 1.35 from one quarter to the next). It is
#: also the synthetic generator's true sigma, so the young-history checks on the
#: generator do not test the prior's scale (docs/model.md, "Shared shocks").
SHOCK_SIGMA_PRIOR_SCALE = 0.3
#: Half the 95% quantile of χ² with 1 degree of freedom (profile-likelihood interval).
_HALF_CHI2_95 = 0.5 * 3.841458820694124


def prior_sigma_draws(seed: int, draws: Sequence[int]) -> np.ndarray:
    """Shock sigmas of parameter draws ``draws`` from the prior, shape ``(len(draws),)``.

    Half-normal with scale :data:`SHOCK_SIGMA_PRIOR_SCALE`, draw ``b`` from a stream
    seeded by ``(seed, b)``: what the parameter draws use when the history has too
    few complete quarters to estimate the sigma (``docs/model.md``, "Shared shocks").
    """
    return np.array(
        [
            SHOCK_SIGMA_PRIOR_SCALE
            * abs(np.random.default_rng([int(seed), int(b), 0x5C0C]).standard_normal())
            for b in draws
        ]
    )


def _expit(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _baseline_strata(
    term: pl.DataFrame, n_bins: int, segment: np.ndarray | None = None
) -> np.ndarray:
    """Baseline stratum of each terminal spell: stage × segment × duration quantile bin
    (bins from the unweighted durations of each stage), numbered in that order.
    ``segment``: the rows' segment indices in sorted-label order, if known."""
    stage = term["stage_code"].to_numpy().astype(np.int64)
    dur = term["duration_days"].to_numpy().astype(np.float64)
    bins = np.zeros(stage.size, dtype=np.int64)
    for k in np.unique(stage):
        sel = stage == k
        edges = np.unique(np.quantile(dur[sel], np.linspace(0, 1, n_bins + 1)[1:-1]))
        bins[sel] = np.searchsorted(edges, dur[sel], side="right")
    if segment is None:
        _, segment = np.unique(term[SEGMENT_COLUMN].to_numpy(), return_inverse=True)
    seg = np.asarray(segment).ravel().astype(np.int64)
    key = (stage * (int(seg.max(initial=0)) + 1) + seg) * n_bins + bins
    _, stratum = np.unique(key, return_inverse=True)
    return stratum.ravel().astype(np.int64)


def _reml_loglik(
    tau2: float, y: np.ndarray, v: np.ndarray, X: np.ndarray, om: np.ndarray | None = None
) -> float:
    om = np.ones_like(y) if om is None else om
    w = om / (v + tau2)
    xtwx = X.T @ (w[:, None] * X)
    b = np.linalg.solve(xtwx, X.T @ (w * y))
    r = y - X @ b
    _, logdet = np.linalg.slogdet(xtwx)
    return -0.5 * float(np.sum(om * np.log(v + tau2)) + logdet + np.sum(w * r * r))


def _reml_nll_grid(
    s: np.ndarray, y: np.ndarray, v: np.ndarray, X: np.ndarray, om: np.ndarray | None = None
) -> np.ndarray:
    """Minus the restricted log-likelihood at each ``sigma`` of ``s``, shape ``s.shape``
    (each period's term counted ``om`` times, default 1)."""
    om = np.ones_like(y) if om is None else om
    w = om[None, :] / (v[None, :] + (s * s)[:, None])  # (m, n)
    xtwx = np.einsum("mn,ni,nj->mij", w, X, X)
    xtwy = np.einsum("mn,ni,n->mi", w, X, y)
    b = np.linalg.solve(xtwx, xtwy[:, :, None])[:, :, 0]
    r = y[None, :] - b @ X.T
    _, logdet = np.linalg.slogdet(xtwx)
    return 0.5 * (
        (om[None, :] * np.log(v[None, :] + (s * s)[:, None])).sum(axis=1)
        + logdet
        + (w * r * r).sum(axis=1)
    )


def _reml_sigma(
    y: np.ndarray, v: np.ndarray, X: np.ndarray, om: np.ndarray | None = None
) -> tuple[float, float]:
    """REML ``sigma`` (≥ 0) and the minimised ``-loglik``: a grid of 201 values, then a
    bounded scalar search around the best one (periods weighted by ``om``, default 1)."""
    spread = float(np.var(y)) if y.size > 1 else 0.0
    s_max = math.sqrt(max(4.0 * spread, 1e-6)) + 1.0

    def nll(s: float) -> float:
        return -_reml_loglik(s * s, y, v, X, om)

    grid = np.linspace(0.0, s_max, 201)
    vals = _reml_nll_grid(grid, y, v, X, om)
    i = int(np.argmin(vals))
    if i == 0:
        s_hat, best = 0.0, nll(0.0)
        # the optimum may still be interior but below the first grid step
        x, fx = minimize_bounded(nll, 0.0, float(grid[1]), xatol=1e-9)
        if fx < best:
            s_hat, best = x, fx
        return s_hat, best
    lo, hi = grid[i - 1], grid[min(i + 1, grid.size - 1)]
    x, fx = minimize_bounded(nll, float(lo), float(hi), xatol=1e-9)
    at_grid = nll(float(grid[i]))
    if fx <= at_grid:
        return x, fx
    return float(grid[i]), at_grid


def reml_shock_variance(
    y: np.ndarray, v: np.ndarray, X: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float, float, float]:
    """REML estimate of the between-period variance ``sigma²`` of ``y = X b + u + e``.

    With prior ``weights`` ``ω`` (recency of the periods) each period's term of the
    restricted log-likelihood counts ``ω`` times (a weighted likelihood).

    Parameters
    ----------
    y : ndarray, shape (n,)
        Per-period estimates (here: empirical logits).
    v : ndarray, shape (n,)
        Their known sampling variances (> 0).
    X : ndarray, shape (n, p)
        Fixed-effect design (``n > p``).
    weights : ndarray, shape (n,), optional
        Prior weights ``ω > 0`` of the periods (default 1).

    Returns
    -------
    sigma, ci_low, ci_high : float
        Estimate of ``sigma`` (≥ 0) and its 95% profile-likelihood interval.
    loglik : float
        Maximised restricted log-likelihood.
    """
    y, v = np.asarray(y, dtype=np.float64), np.asarray(v, dtype=np.float64)
    om = None if weights is None else np.asarray(weights, dtype=np.float64)
    s_hat, best = _reml_sigma(y, v, X, om)
    target = best + _HALF_CHI2_95

    def gap(s: float) -> float:
        return -_reml_loglik(s * s, y, v, X, om) - target

    ci_low = 0.0 if gap(0.0) <= 0 else find_root(gap, 0.0, s_hat) if s_hat > 0 else 0.0
    hi = max(s_hat, 1e-3) * 2.0
    while gap(hi) < 0 and hi < 1e3:
        hi *= 2.0
    ci_high = find_root(gap, s_hat, hi) if gap(hi) > 0 else float(hi)
    return s_hat, ci_low, ci_high, -best


@dataclass(frozen=True, eq=False)
class ShockModel:
    """Fitted between-quarter shock on win log-odds (see the module docstring).

    Attributes
    ----------
    sigma : float
        REML estimate of the shock standard deviation (log-odds scale); 0 when
        not estimable (see ``note``).
    ci_low, ci_high : float
        95% profile-likelihood interval of ``sigma`` (``0, inf`` when not estimable).
    standard_error : float
        ``(ci_high - ci_low) / 3.92``, a normal-equivalent standard error of ``sigma``.
    sigma_moments : float
        Method-of-moments estimate (residual variance of the logits minus mean
        binomial variance, floored at 0), for comparison.
    detrended : bool
        Whether a linear trend in the win log-odds was removed.
    trend_per_year : float
        Fitted trend of the log-odds per year (0 when not detrended).
    n_quarters : int
        Quarters used.
    quarters : tuple of dict
        Per quarter: ``quarter, n_closed, n_won, won_share, log_odds_shift,
        sampling_variance, residual`` (``log_odds_shift`` is ``y_q``, residual after
        the fixed effects).
    note : str
        Empty, or why ``sigma`` is a fallback or the trend was not removed.
    """

    sigma: float
    ci_low: float
    ci_high: float
    standard_error: float
    sigma_moments: float
    detrended: bool
    trend_per_year: float
    n_quarters: int
    quarters: tuple[dict[str, Any], ...] = ()
    note: str = ""

    @property
    def estimated(self) -> bool:
        """Whether ``sigma`` was estimated (else it is the fallback 0)."""
        return math.isfinite(self.ci_high)

    def summary(self) -> pl.DataFrame:
        """One row: ``sigma, ci_low, ci_high, standard_error, sigma_moments, detrended,
        trend_per_year, n_quarters, note``."""
        row = {k: v for k, v in self.to_dict().items() if k != "quarters"}
        return pl.DataFrame(
            [row], schema_overrides={"ci_high": pl.Float64, "standard_error": pl.Float64}
        )

    def quarter_table(self) -> pl.DataFrame:
        """Per quarter: ``quarter, n_closed, n_won, won_share, log_odds_shift, sampling_variance, residual``."""
        schema = {
            "quarter": pl.Utf8,
            "n_closed": pl.Float64,
            "n_won": pl.Float64,
            "won_share": pl.Float64,
            "log_odds_shift": pl.Float64,
            "sampling_variance": pl.Float64,
            "residual": pl.Float64,
        }
        return pl.DataFrame(list(self.quarters), schema=schema)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (infinite values as ``None``)."""
        return {
            "sigma": self.sigma,
            "ci_low": self.ci_low,
            "ci_high": float_or_none(self.ci_high),
            "standard_error": float_or_none(self.standard_error),
            "sigma_moments": self.sigma_moments,
            "detrended": self.detrended,
            "trend_per_year": self.trend_per_year,
            "n_quarters": self.n_quarters,
            "quarters": [dict(q) for q in self.quarters],
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShockModel:
        """Inverse of :meth:`to_dict`."""

        def inf_if_none(x: Any) -> float:
            return math.inf if x is None else float(x)

        return cls(
            sigma=float(d["sigma"]),
            ci_low=float(d["ci_low"]),
            ci_high=inf_if_none(d["ci_high"]),
            standard_error=inf_if_none(d["standard_error"]),
            sigma_moments=float(d["sigma_moments"]),
            detrended=bool(d["detrended"]),
            trend_per_year=float(d["trend_per_year"]),
            n_quarters=int(d["n_quarters"]),
            quarters=tuple(dict(q) for q in d.get("quarters", [])),
            note=str(d.get("note", "")),
        )


def fit_shocks(
    data: FitData,
    *,
    baseline: Literal["stratified", "none"] = "stratified",
    n_duration_bins: int = 10,
    detrend: bool = True,
    min_closed_per_quarter: int = 10,
    min_quarters: int = 3,
    min_quarters_trend: int = 6,
    layout: ShockLayout | None = None,
) -> ShockModel:
    """Estimate the between-quarter shock ``sigma`` on win log-odds.

    Parameters
    ----------
    data : FitData
        Reads the spells (``stage_code, destination_code, exited_at, censored``,
        and ``duration_days`` for the stratified baseline) with their segment
        labels, which enter the baseline strata, and deal weights; ``data.n_open``
        (won is code ``K``; lost and no decision ``K + 1``, ``K + 2``; default:
        ``1 + max(stage_code)``, right whenever the last open stage has been
        visited) and ``data.history_start`` (quarters starting before it are left
        out; default: the earliest ``entered_at`` if the column is present, else no
        limit). Only fiscal quarters that ended by ``data.as_of`` are used.
    baseline : {"stratified", "none"}, default "stratified"
        Deal-level baseline log-odds per stage × segment × duration bin, or none
        (the quarter's aggregate empirical logit; see the module docstring).
    n_duration_bins : int, default 10
        Quantile bins of the sojourn duration (days) per stage for the baseline.
    detrend : bool, default True
        Remove a linear trend of the log-odds over time (see the module docstring).
    min_closed_per_quarter : int, default 10
        Quarters with fewer terminal exits (unweighted count) are left out.
    min_quarters : int, default 3
        Fewer usable quarters: ``sigma`` falls back to 0 with a ``note`` (not an error,
        so that short histories can still be fitted; check :attr:`ShockModel.estimated`).
    min_quarters_trend : int, default 6
        Quarters needed to also fit the trend.
    layout : ShockLayout, optional
        The exits of ``data`` already laid out by :meth:`ShockLayout.from_data` with
        these options (the fit's parameter draws reuse it); built here by default.

    Returns
    -------
    ShockModel
    """
    if layout is None:
        layout = ShockLayout.from_data(
            data,
            baseline=baseline,
            n_duration_bins=n_duration_bins,
            detrend=detrend,
            min_closed_per_quarter=min_closed_per_quarter,
            min_quarters=min_quarters,
            min_quarters_trend=min_quarters_trend,
        )
    if layout.fallback is not None:
        return layout.fallback
    y, v, wq, nq = (a[0] for a in layout.shifts(data.weights[None, :]))
    X, n = layout.design, layout.n_quarters
    lq = nq - wq
    om = layout.quarter_weight
    sigma, ci_low, ci_high, _ = reml_shock_variance(y, v, X, om)
    # method of moments on OLS residuals (unbiased residual variance)
    b_ols, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid_ols = y - X @ b_ols
    s2_mom = float(resid_ols @ resid_ols) / (n - X.shape[1]) - float(v.mean())
    # fixed effects at the REML estimate, for the per-quarter residuals
    wts = om / (v + sigma * sigma)
    b = np.linalg.solve(X.T @ (wts[:, None] * X), X.T @ (wts * y))
    resid = y - X @ b
    rows = tuple(
        {
            "quarter": layout.labels[i],
            "n_closed": float(wq[i] + lq[i]),
            "n_won": float(wq[i]),
            "won_share": float(wq[i] / (wq[i] + lq[i])) if wq[i] + lq[i] > 0 else 0.0,
            "log_odds_shift": float(y[i]),
            "sampling_variance": float(v[i]),
            "residual": float(resid[i]),
        }
        for i in range(n)
    )
    use_trend = X.shape[1] > 1
    return ShockModel(
        sigma=float(sigma),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        standard_error=float((ci_high - ci_low) / (2 * 1.959963984540054)),
        sigma_moments=math.sqrt(max(s2_mom, 0.0)),
        detrended=use_trend,
        trend_per_year=float(b[1]) if use_trend else 0.0,
        n_quarters=n,
        quarters=rows,
        note=layout.note,
    )


@dataclass(frozen=True, eq=False)
class ShockLayout:
    """The terminal exits of complete quarters, laid out once for any deal weights.

    Built by :meth:`from_data` (the checks, the quarter and baseline-stratum
    assignment of :func:`fit_shocks`, none of which depends on the weights). The
    exits of one quarter in one baseline stratum form a *cell*; :meth:`shifts` gives
    each quarter's log-odds shift of a block of weight vectors from the cells'
    weights, and :meth:`sigmas` the REML shock sigma of each.

    Attributes
    ----------
    deal : ndarray of int64, shape (n,)
        Deal index of each terminal exit of a complete quarter after the history start.
    won : ndarray of float64, shape (n,)
        1 for a win.
    stratum : ndarray of int64, shape (n,)
        Baseline stratum (stage × segment × duration bin; all 0 without a baseline).
    n_strata : int
    stratified : bool
        Whether the baseline log-odds are estimated (else 0).
    cell : ndarray of int64, shape (n,)
        Cell of each exit, ``-1`` in a quarter with too few exits.
    cell_stratum : ndarray of int64, shape (n_cells,)
    cell_offsets : ndarray of int64, shape (Q + 1,)
        Cells of quarter ``q``: ``cell_offsets[q] .. cell_offsets[q + 1] - 1``.
    design : ndarray of float64, shape (Q, p)
        Fixed effects of the quarters (intercept, and the trend when fitted).
    quarter_weight : ndarray of float64, shape (Q,)
        Prior weight of each quarter in the REML fit: the recency of its midpoint
        (:meth:`FitData.recency`), scaled to sum to the effective number of quarters
        (all 1 without a half-life).
    labels : tuple of str
        Quarter labels.
    note : str
    fallback : ShockModel or None
        The model when too few quarters qualify (``sigma`` 0 whatever the weights).
    """

    deal: np.ndarray
    won: np.ndarray
    stratum: np.ndarray
    n_strata: int
    stratified: bool
    cell: np.ndarray
    cell_stratum: np.ndarray
    cell_offsets: np.ndarray
    design: np.ndarray
    quarter_weight: np.ndarray
    labels: tuple[str, ...]
    note: str
    fallback: ShockModel | None

    @property
    def n_quarters(self) -> int:
        """Quarters used, ``Q``."""
        return int(self.cell_offsets.size - 1)

    @classmethod
    def from_data(
        cls,
        data: FitData,
        *,
        baseline: Literal["stratified", "none"] = "stratified",
        n_duration_bins: int = 10,
        detrend: bool = True,
        min_closed_per_quarter: int = 10,
        min_quarters: int = 3,
        min_quarters_trend: int = 6,
    ) -> ShockLayout:
        """Check the arguments and lay out the exits of ``data`` (see :func:`fit_shocks`)."""
        caller = "fit_shocks"
        t, calendar = data.as_of, data.calendar
        min_closed = check_int(min_closed_per_quarter, "min_closed_per_quarter", caller, minimum=1)
        min_q = check_int(min_quarters, "min_quarters", caller, minimum=2)
        min_q_trend = check_int(min_quarters_trend, "min_quarters_trend", caller, minimum=3)
        detrend = check_bool(detrend, "detrend", caller)
        if baseline not in ("stratified", "none"):
            raise ParameterError(
                f"The `baseline` parameter of `{caller}` must be 'stratified' or 'none'. "
                f"Got {baseline!r}."
            )
        n_bins = check_int(n_duration_bins, "n_duration_bins", caller, minimum=1)
        needed = ["stage_code", "destination_code", "exited_at", "censored"]
        if baseline == "stratified":
            needed.append("duration_days")
        sp = data.frame("spells", caller, needed)
        if data.n_open is None:
            if sp.height == 0:
                k_open = 0
            else:
                k_open = int(sp["stage_code"].max()) + 1  # type: ignore[arg-type]
        else:
            k_open = data.n_open
        if data.history_start is not None:
            start: dt.datetime | None = data.history_start
        elif "entered_at" in sp.columns and sp.height:
            start = sp["entered_at"].min()  # type: ignore[assignment]
        else:
            start = None

        term = sp.with_row_index("_row").filter(
            ~pl.col("censored")
            & pl.col("exited_at").is_not_null()
            & (pl.col("exited_at") <= t)
            & (pl.col("destination_code") >= k_open)
        )
        times = to_datetime64(term["exited_at"])
        qm = quarter_start_month_index(times, calendar)
        q_end = month_index_to_datetime(qm + 3)
        keep = q_end <= np.datetime64(t, "us")
        if start is not None:
            keep &= month_index_to_datetime(qm) >= np.datetime64(start, "us")
        term = term.filter(pl.Series(keep))
        won = (term["destination_code"].to_numpy() == k_open).astype(np.float64)
        deal = data.deal_index("spells")[term["_row"].to_numpy()]
        qm = qm[keep]
        stratified = baseline == "stratified"
        if stratified and term.height:
            rows = term["_row"].to_numpy()
            known = data.spell_arrays
            stratum = _baseline_strata(term, n_bins, None if known is None else known.segment[rows])
        else:
            stratum = np.zeros(term.height, dtype=np.int64)
        n_strata = int(stratum.max(initial=-1)) + 1
        months, quarter, n_raw = np.unique(qm, return_inverse=True, return_counts=True)
        quarter = quarter.ravel()
        used = n_raw >= min_closed
        n = int(used.sum())
        if n < min_q:
            fallback = ShockModel(
                0.0, 0.0, math.inf, math.inf, 0.0, False, 0.0, n,
                note=(
                    f"only {n} complete fiscal quarters with ≥ {min_closed} closed spells "
                    f"(need {min_q}); shock sigma not estimable, set to 0"
                ),
            )  # fmt: skip
        else:
            fallback = None
        # quarters in time order, renumbered over the used ones; cells sorted by (quarter, stratum)
        renumber = np.cumsum(used) - 1
        q_used = np.where(used[quarter], renumber[quarter], -1)
        inside = q_used >= 0
        key = q_used * max(n_strata, 1) + stratum
        cell_keys, cell_inside = np.unique(key[inside], return_inverse=True)
        cell = np.full(term.height, -1, dtype=np.int64)
        cell[inside] = cell_inside.ravel()
        cell_quarter = cell_keys // max(n_strata, 1)
        cell_offsets = np.searchsorted(cell_quarter, np.arange(n + 1)).astype(np.int64)
        month_used = months[used]
        starts = month_index_to_datetime(month_used)
        mids = starts + (month_index_to_datetime(month_used + 3) - starts) / 2
        t_years = (mids - np.datetime64(t, "us")).astype(np.float64) / (86_400e6 * DAYS_PER_YEAR)
        note = ""
        use_trend = bool(detrend) and n >= min_q_trend
        if detrend and not use_trend:
            note = f"trend not removed ({n} quarters < {min_q_trend})"
        design = np.column_stack([np.ones(n), t_years]) if use_trend else np.ones((n, 1))
        labels = tuple(calendar.quarter_of(s.astype(dt.datetime)).label for s in starts)
        # recency: each quarter weighs the recency of its midpoint, scaled to sum to the
        # effective number of quarters (all 1 without a half-life)
        om = data.recency(mids)
        if om.size:
            om = om * (om.sum() / (om * om).sum())
        return cls(
            deal=np.ascontiguousarray(deal, dtype=np.int64),
            won=won,
            stratum=np.ascontiguousarray(stratum, dtype=np.int64),
            n_strata=n_strata,
            stratified=stratified,
            cell=cell,
            cell_stratum=np.ascontiguousarray(cell_keys % max(n_strata, 1), dtype=np.int64),
            cell_offsets=cell_offsets,
            design=design,
            quarter_weight=om,
            labels=labels,
            note=note,
            fallback=fallback,
        )

    def shifts(
        self, weights: np.ndarray, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per weight vector and quarter: the log-odds shift ``y_q``, its sampling variance
        ``v_q``, the won weight and the closed weight; each of shape (B, Q).

        Parameters
        ----------
        weights : ndarray of float64, shape (B, n_deals)
        threads : int, optional
        """
        n_draws, n_cells = weights.shape[0], self.cell_stratum.size
        n_strata = max(self.n_strata, 1)
        stratum_sums = np.empty((2, n_draws, n_strata))
        cell_sums = np.empty((2, n_draws, n_cells))
        weights_t = np.array(weights.T, dtype=np.float64, order="C")  # writable: one signature
        exit_cell_sums(
            weights_t, self.deal, self.won, self.stratum, self.cell, stratum_sums, cell_sums
        )
        offsets = np.zeros((n_draws, n_strata))
        if self.stratified:
            p = (stratum_sums[0] + 0.5) / (stratum_sums[1] + 1.0)
            offsets = np.log(p / (1.0 - p))
        cell_won, cell_weight = cell_sums[0], cell_sums[1]
        cell_offset = offsets[:, self.cell_stratum]
        y, v = quarter_logistic_shifts(
            cell_weight, cell_won, cell_offset, self.cell_offsets, threads=threads
        )
        starts = self.cell_offsets[:-1]
        if n_cells:
            won_q = np.add.reduceat(cell_won, starts, axis=1)
            closed_q = np.add.reduceat(cell_weight, starts, axis=1)
        else:
            won_q = closed_q = np.zeros((n_draws, 0))
        return y, v, won_q, closed_q

    def sigmas(
        self,
        weights: np.ndarray,
        threads: int | None = None,
        *,
        seed: int | None = None,
        draws: Sequence[int] | None = None,
    ) -> np.ndarray:
        """The REML shock sigma of :func:`fit_shocks` for each weight vector, shape (B,).

        When too few quarters qualify, the sigma is not estimable: with ``seed`` and
        ``draws`` (the draw indices of the rows of ``weights``) each draw then takes
        its sigma from the prior (:func:`prior_sigma_draws`), so that the forecast's
        intervals carry shocks of a typical size rather than none; without them, the
        fallback's 0.
        """
        if self.fallback is not None:
            if seed is not None and draws is not None:
                return prior_sigma_draws(seed, draws)
            return np.full(weights.shape[0], float(self.fallback.sigma))
        y, v, _, _ = self.shifts(weights, threads=threads)
        om = self.quarter_weight
        return np.array([_reml_sigma(y[b], v[b], self.design, om)[0] for b in range(y.shape[0])])
