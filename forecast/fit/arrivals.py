"""New-deal arrivals: how many deals are created per fiscal quarter, and where they enter.

Summary in ``docs/model.md``, section 8.

Per segment, the (weighted) number of deals created in each fiscal quarter of the
last ``lookback_quarters`` full quarters plus the current partial one is modelled
as Poisson with a log-linear rate

    log E[n_q] = log e_q + level + trend · t_q + season[fiscal quarter of q]

where ``e_q`` is the exposure (the observed fraction of quarter ``q``, in
quarters: 1 for a full quarter, less for the current one and for a quarter cut by
the start of the history), ``t_q`` is the quarter's midpoint minus ``as_of`` in
years (so ``level`` is the log rate per quarter *now*, for an average fiscal
quarter) and ``season`` uses sum-to-zero (effects) coding over the four fiscal
quarters. Seasonality is dropped with fewer than 8 full quarters (exposure ≥ 0.9)
and the trend with fewer than 4; a term is also dropped when the fit does not converge or a
coefficient diverges (e.g. a fiscal quarter without any creation). The GLM is
fitted by iteratively reweighted least squares.

**Over-dispersion.** The simulator multiplies each future quarter's rate by an
independent ``Gamma(shape, 1/shape)`` factor, so ``Var n_q = mu + mu² / shape``
(negative binomial, NB2). ``alpha = 1 / shape`` is the moment estimate of
Cameron & Trivedi: the root of ``Σ (n_q - mu_q)² / (mu_q (1 + alpha mu_q)) = N - p``
(Pearson χ² equal to its degrees of freedom); ``alpha = 0`` (``shape = inf``,
plain Poisson) when the Poisson Pearson χ² is already ≤ ``N - p``. The
coefficient covariance is the quasi-Poisson one, ``phi (XᵀWX)⁻¹`` with
``phi = max(1, χ² / (N - p))``.

**Entry stages.** The mix over open stages of the first stage of deals created
since the start of the fiscal quarter ``mix_quarters`` quarters ago (pooled when
a segment has fewer than ``min_segment_mix`` such deals).

**Recency and logs that start mid-stream.** With a half-life
(:meth:`FitData.with_half_life`) each quarter's count enters the likelihood with the
recency weight ``ω_q`` of its midpoint, ``Σ ω_q (n_q log μ_q − μ_q)`` (a weighted
level and trend), and the Pearson terms of the dispersion too, with ``N`` replaced
by the effective number of quarters ``(Σ ω)² / Σ ω²``; the entry mix weighs each
deal by the recency of its creation. Deals already in progress when the log
started (:func:`forecast.fit.data.mid_stream_deals`) are not arrivals: they are not
counted, and the exposure starts at the recording start (``data.history_start``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from forecast._solvers import find_root
from forecast._validation import as_datetime, check_int, check_seed, float_or_none, to_datetime64
from forecast.calendar import DAYS_PER_YEAR, FiscalCalendar, FiscalQuarter
from forecast.errors import ModelError, ParameterError
from forecast.fit.data import FitData
from forecast.segments import SEGMENT_COLUMN

__all__ = ["ArrivalModel", "SegmentArrivals", "fit_arrivals", "poisson_glm"]

#: Exposures below this fraction of a quarter are left out (too noisy to inform the rate).
MIN_EXPOSURE = 0.05
#: Quarters observed at least this much count as "full" when deciding which terms to fit.
FULL_QUARTER_EXPOSURE = 0.9
#: A non-level coefficient beyond this (log scale) means the term diverged; it is dropped.
MAX_ABS_COEFFICIENT = 10.0


def poisson_glm(
    y: np.ndarray,
    X: np.ndarray,
    offset: np.ndarray,
    max_iter: int = 100,
    tol: float = 1e-10,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Poisson log-linear GLM by iteratively reweighted least squares.

    With prior ``weights`` ``ω`` the log-likelihood is ``Σ ω (y log μ − μ)``
    (a weighted likelihood: each quarter's count counts ``ω`` times).

    Parameters
    ----------
    y : ndarray, shape (n,)
        Non-negative counts (may be non-integer, e.g. bootstrap-weighted).
    X : ndarray, shape (n, p)
        Design matrix; column 0 must be the intercept.
    offset : ndarray, shape (n,)
        Log exposure.
    max_iter, tol
        Iteration limit and convergence tolerance on the relative deviance change.
    weights : ndarray, shape (n,), optional
        Prior weights ``ω ≥ 0`` of the observations (default 1).

    Returns
    -------
    beta : ndarray, shape (p,)
    information : ndarray, shape (p, p)
        Fisher information ``XᵀWX`` at ``beta`` (``W = diag(ω mu)``).
    converged : bool
    """
    y = np.asarray(y, dtype=np.float64)
    om = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    beta = np.zeros(X.shape[1])
    beta[0] = math.log((om * y).sum() / (om * np.exp(offset)).sum())
    dev_old = math.inf
    converged = False
    for _ in range(max_iter):
        eta = X @ beta + offset
        mu = np.exp(eta)
        z = eta - offset + (y - mu) / mu
        info = X.T @ ((om * mu)[:, None] * X)
        try:
            beta = np.linalg.solve(info, X.T @ (om * mu * z))
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(beta)):
            break
        mu = np.exp(X @ beta + offset)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = 2.0 * float(np.sum(om * (np.where(y > 0, y * np.log(y / mu), 0.0) - (y - mu))))
        if abs(dev - dev_old) <= tol * (abs(dev) + 1.0):
            converged = True
            break
        dev_old = dev
    mu = np.exp(X @ beta + offset)
    return beta, X.T @ ((om * mu)[:, None] * X), converged and bool(np.all(np.isfinite(mu)))


#: Upper end of the search for the NB2 ``alpha`` (the estimate is capped there).
_MAX_ALPHA = 1e12


def _nb_alpha(y: np.ndarray, mu: np.ndarray, df: float, weights: np.ndarray | None = None) -> float:
    """NB2 moment estimate of ``alpha = 1/shape``: Pearson χ²(alpha) = df (0 if not over-dispersed).

    ``weights`` (prior weights of the quarters, default 1) weigh each Pearson term."""
    om = np.ones_like(y) if weights is None else weights

    def excess(a: float) -> float:
        return float(np.sum(om * (y - mu) ** 2 / (mu * (1.0 + a * mu)))) - df

    if df <= 0 or excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0 and hi < _MAX_ALPHA:
        hi *= 4.0
    if excess(hi) > 0:  # a quarter with arrivals where the fit expects almost none
        return hi  # at least this over-dispersed: the bracket's end
    return find_root(excess, 0.0, hi, xtol=1e-12, rtol=1e-10)


@dataclass(frozen=True, eq=False)
class SegmentArrivals:
    """Arrival fit of one segment.

    Attributes
    ----------
    terms : tuple of str
        Model terms in coefficient order: ``"level"``, optionally ``"trend_per_year"``,
        then ``"season_q1" .. "season_q3"`` (effects coding; q4 = -(q1 + q2 + q3)).
    coefficients : ndarray, shape (p,)
        Log-scale coefficients (``level``: log deals per quarter at ``as_of``).
        Empty when the segment had no creation (``zero_rate``).
    covariance : ndarray, shape (p, p)
        Quasi-Poisson covariance of the coefficients.
    pearson_dispersion : float
        ``χ² / (N - p)`` of the Poisson fit; 1 when ``N ≤ p`` (not estimable).
    shape : float
        Gamma-Poisson shape per quarter; ``inf`` = not over-dispersed (or not estimable).
    n_quarters, n_full_quarters : int
        Quarters in the fit, and how many of them observed for ≥ 90% of their length.
    df_residual : int
        ``N - p``.
    zero_rate : bool
        No deal was created in the segment in the lookback: the rate is 0.
    converged : bool
    note : str
        Why terms were dropped, if any.
    """

    terms: tuple[str, ...]
    coefficients: np.ndarray
    covariance: np.ndarray
    pearson_dispersion: float
    shape: float
    n_quarters: int
    n_full_quarters: int
    df_residual: int
    zero_rate: bool = False
    converged: bool = True
    note: str = ""

    @property
    def alpha(self) -> float:
        """NB2 over-dispersion ``1 / shape`` (0 for Poisson)."""
        return 0.0 if math.isinf(self.shape) else 1.0 / self.shape

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (``shape`` is ``None`` when infinite)."""
        return {
            "terms": list(self.terms),
            "coefficients": self.coefficients.tolist(),
            "covariance": self.covariance.tolist(),
            "pearson_dispersion": self.pearson_dispersion,
            "shape": float_or_none(self.shape),
            "n_quarters": self.n_quarters,
            "n_full_quarters": self.n_full_quarters,
            "df_residual": self.df_residual,
            "zero_rate": self.zero_rate,
            "converged": self.converged,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentArrivals:
        """Inverse of :meth:`to_dict`."""
        p = len(d["terms"]) if d["coefficients"] else 0
        return cls(
            terms=tuple(d["terms"]),
            coefficients=np.asarray(d["coefficients"], dtype=np.float64).reshape(p),
            covariance=np.asarray(d["covariance"], dtype=np.float64).reshape(p, p),
            pearson_dispersion=float(d["pearson_dispersion"]),
            shape=math.inf if d["shape"] is None else float(d["shape"]),
            n_quarters=int(d["n_quarters"]),
            n_full_quarters=int(d["n_full_quarters"]),
            df_residual=int(d["df_residual"]),
            zero_rate=bool(d["zero_rate"]),
            converged=bool(d["converged"]),
            note=str(d.get("note", "")),
        )


def _window_pieces(
    calendar: FiscalCalendar, as_of: dt.datetime, a: dt.datetime, b: dt.datetime
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """The fiscal-quarter pieces of the window ``[a, b)``: per piece, its fraction of the
    quarter, the quarter's midpoint in years from ``as_of`` (1,) and its fiscal quarter (1,)."""
    out = []
    if b <= a:
        return out
    q = calendar.quarter_of(a)
    while q.start < b:
        lo, hi = max(a, q.start), min(b, q.end)
        if hi > lo:
            mid = q.start + (q.end - q.start) / 2
            t_years = np.array([(mid - as_of).total_seconds() / 86400.0 / DAYS_PER_YEAR])
            out.append(((hi - lo) / (q.end - q.start), t_years, np.array([q.quarter])))
        q = calendar.shift(q, 1)
    return out


def _design(terms: Sequence[str], t_years: np.ndarray, fiscal_q: np.ndarray) -> np.ndarray:
    cols = []
    for term in terms:
        if term == "level":
            cols.append(np.ones_like(t_years))
        elif term == "trend_per_year":
            cols.append(t_years)
        else:  # season_qj, effects coding against fiscal Q4
            j = int(term[-1])
            cols.append((fiscal_q == j).astype(np.float64) - (fiscal_q == 4).astype(np.float64))
    return np.column_stack(cols)


@dataclass(frozen=True, eq=False)
class ArrivalModel:
    """Fitted new-deal arrival model (see the module docstring).

    Attributes
    ----------
    segments : tuple of str
        Segment labels, in the row order of :meth:`expected_counts`.
    as_of : datetime
        The cut of the fit (trend time is measured from it).
    calendar : FiscalCalendar
    fits : dict str -> SegmentArrivals
        Per segment label.
    entry_mix : ndarray, shape (G, K)
        Per segment, probability that a new deal enters open stage ``k``.
    n_open_stages : int
        ``K``.
    history : tuple of dict
        Per segment and quarter: ``segment, quarter, exposure, count, fitted``.
    lookback_quarters : int
    entry_mix_source : tuple of str
        Per segment, ``"own"`` or ``"pooled"``.
    """

    segments: tuple[str, ...]
    as_of: dt.datetime
    calendar: FiscalCalendar
    fits: dict[str, SegmentArrivals]
    entry_mix: np.ndarray
    n_open_stages: int
    history: tuple[dict[str, Any], ...]
    lookback_quarters: int
    entry_mix_source: tuple[str, ...] = field(default=())

    def _fit(self, segment: str) -> SegmentArrivals:
        if segment not in self.fits:
            raise ParameterError(
                f"Unknown `segment` {segment!r} for the arrival model. Known segments: "
                f"{list(self.segments)}."
            )
        return self.fits[segment]

    def expected_counts(
        self,
        quarter_bounds: Sequence[tuple[object, object]],
        as_of: object | None = None,
        *,
        coefficients: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Expected number of deals created after ``as_of`` in each window, per segment.

        Parameters
        ----------
        quarter_bounds : sequence of (start, end)
            Half-open windows ``[start, end)`` (date-likes, naive UTC), typically
            fiscal quarters; a window may span several quarters. The part of a
            window before ``as_of`` is excluded.
        as_of : date-like, optional
            Default: the model's ``as_of``.
        coefficients : dict str -> ndarray (p,), optional
            Coefficients to use instead of the fitted ones for some segments
            (e.g. a draw from :meth:`draw_coefficients`).

        Returns
        -------
        ndarray, shape (G, len(quarter_bounds))
            Expected counts (deals); within each fiscal quarter the rate is
            constant in time, so a piece of a quarter gets its share by days.
        """
        t0 = self.as_of if as_of is None else as_datetime(as_of, "as_of", "expected_counts")
        out = np.zeros((len(self.segments), len(quarter_bounds)))
        for w, bounds in enumerate(quarter_bounds):
            try:
                a, b = bounds
            except (TypeError, ValueError):
                raise ParameterError(
                    "Each entry of `quarter_bounds` of `expected_counts` must be a (start, end) "
                    f"pair. Got {bounds!r} at position {w}."
                ) from None
            a = max(as_datetime(a, "quarter_bounds", "expected_counts"), t0)
            b = as_datetime(b, "quarter_bounds", "expected_counts")
            for frac, t_mid, fq in _window_pieces(self.calendar, self.as_of, a, b):
                for g, seg in enumerate(self.segments):
                    f = self.fits[seg]
                    if f.zero_rate:
                        continue
                    beta = f.coefficients if coefficients is None else coefficients.get(seg)
                    beta = f.coefficients if beta is None else beta
                    x = _design(f.terms, t_mid, fq)[0]
                    out[g, w] += frac * math.exp(float(x @ beta))
        return out

    def coefficient_covariance(self, segment: str) -> np.ndarray:
        """Covariance ``(p, p)`` of the log-scale coefficients of ``segment`` (see ``terms``)."""
        return self._fit(segment).covariance.copy()

    def draw_coefficients(self, n_draws: int, seed: int) -> dict[str, np.ndarray]:
        """Normal draws of the coefficients from their covariance, per segment.

        Returns
        -------
        dict str -> ndarray, shape (n_draws, p)
            Empty ``(n_draws, 0)`` arrays for zero-rate segments.
        """
        n = check_int(n_draws, "n_draws", "draw_coefficients", minimum=1)
        rng = np.random.default_rng(check_seed(seed, "draw_coefficients"))
        out = {}
        for seg in self.segments:
            f = self.fits[seg]
            p = f.coefficients.size
            out[seg] = (
                rng.multivariate_normal(f.coefficients, f.covariance, size=n, method="eigh")
                if p
                else np.zeros((n, 0))
            )
        return out

    def shapes(self) -> np.ndarray:
        """Gamma-Poisson shape per segment, ``(G,)`` (``inf`` = Poisson)."""
        return np.array([self.fits[s].shape for s in self.segments], dtype=np.float64)

    def summary(self) -> pl.DataFrame:
        """Per segment: quarters used, terms, rate now (deals per quarter), trend
        (relative change per year), seasonal factors, dispersion, shape, entry mix."""
        rows = []
        for g, seg in enumerate(self.segments):
            f = self.fits[seg]
            coef = dict(zip(f.terms, f.coefficients.tolist(), strict=False))
            season = [coef.get(f"season_q{j}", 0.0) for j in (1, 2, 3)]
            season.append(-sum(season))
            row: dict[str, Any] = {
                "segment": seg,
                "n_quarters": f.n_quarters,
                "n_full_quarters": f.n_full_quarters,
                "terms": ",".join(f.terms),
                "rate_per_quarter_now": 0.0 if f.zero_rate else math.exp(coef["level"]),
                "trend_per_year": (
                    math.expm1(coef["trend_per_year"]) if "trend_per_year" in coef else None
                ),
                **{
                    f"season_factor_q{j + 1}": (math.exp(s) if "season_q1" in coef else None)
                    for j, s in enumerate(season)
                },
                "pearson_dispersion": f.pearson_dispersion,
                "gamma_shape": float_or_none(f.shape),
                "df_residual": f.df_residual,
                "entry_mix_source": self.entry_mix_source[g] if self.entry_mix_source else "",
                "note": f.note,
            }
            for k in range(self.n_open_stages):
                row[f"entry_share_stage_{k}"] = float(self.entry_mix[g, k])
            rows.append(row)
        return pl.DataFrame(rows, infer_schema_length=None)

    def history_table(self) -> pl.DataFrame:
        """Per segment and quarter: ``segment, quarter, exposure, count, fitted``."""
        schema = {
            "segment": pl.Utf8,
            "quarter": pl.Utf8,
            "exposure": pl.Float64,
            "count": pl.Float64,
            "fitted": pl.Float64,
        }
        return pl.DataFrame(list(self.history), schema=schema)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "segments": list(self.segments),
            "as_of": self.as_of.isoformat(),
            "calendar": self.calendar.to_dict(),
            "fits": {k: v.to_dict() for k, v in self.fits.items()},
            "entry_mix": self.entry_mix.tolist(),
            "n_open_stages": self.n_open_stages,
            "history": [dict(h) for h in self.history],
            "lookback_quarters": self.lookback_quarters,
            "entry_mix_source": list(self.entry_mix_source),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArrivalModel:
        """Inverse of :meth:`to_dict`."""
        g, k = len(d["segments"]), int(d["n_open_stages"])
        return cls(
            segments=tuple(d["segments"]),
            as_of=as_datetime(d["as_of"], "as_of", "ArrivalModel.from_dict"),
            calendar=FiscalCalendar.from_dict(d["calendar"]),
            fits={s: SegmentArrivals.from_dict(v) for s, v in d["fits"].items()},
            entry_mix=np.asarray(d["entry_mix"], dtype=np.float64).reshape(g, k),
            n_open_stages=k,
            history=tuple(dict(h) for h in d["history"]),
            lookback_quarters=int(d["lookback_quarters"]),
            entry_mix_source=tuple(d.get("entry_mix_source", ())),
        )


def _fit_terms(
    y: np.ndarray,
    exposure: np.ndarray,
    t_years: np.ndarray,
    fiscal_q: np.ndarray,
    min_trend: int,
    min_season: int,
    weights: np.ndarray | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray, bool, list[str]]:
    """The Poisson GLM of one segment's counts: terms kept, coefficients, information,
    convergence, and notes on dropped terms (``y.sum() > 0``); ``weights`` are the
    quarters' prior weights (:func:`_quarter_weights`, default 1)."""
    n = y.size
    n_full = int(np.sum(exposure >= FULL_QUARTER_EXPOSURE))
    terms = ["level"]
    notes = []
    if n_full >= min_trend:
        terms.append("trend_per_year")
    else:
        notes.append(f"no trend ({n_full} full quarters < {min_trend})")
    if n_full >= min_season:
        terms += ["season_q1", "season_q2", "season_q3"]
    elif "trend_per_year" in terms:
        notes.append(f"no seasonality ({n_full} full quarters < {min_season})")
    offset = np.log(exposure)
    while True:
        X = _design(terms, t_years, fiscal_q)
        beta, info, ok = poisson_glm(y, X, offset, weights=weights)
        diverged = (not ok) or np.any(np.abs(beta[1:]) > MAX_ABS_COEFFICIENT) or X.shape[1] > n
        if not diverged or len(terms) == 1:
            break
        dropped = "seasonality" if terms[-1].startswith("season") else "trend"
        notes.append(f"{dropped} dropped (fit diverged or too few quarters)")
        terms = terms[:-3] if dropped == "seasonality" else terms[:-1]
    return terms, beta, info, ok, notes


def _quarter_weights(weights: np.ndarray | None, n: int) -> tuple[np.ndarray, float]:
    """Prior weights of ``n`` quarters (recency, default 1) scaled to sum to their
    effective number ``(Σ ω)² / Σ ω²``, and that number (``n`` without weights)."""
    om = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    n_eff = float(om.sum() ** 2 / (om * om).sum()) if om.sum() > 0 else 0.0
    om = om * (n_eff / om.sum()) if om.sum() > 0 else om
    return om, n_eff


def _fit_segment(
    y: np.ndarray,
    exposure: np.ndarray,
    t_years: np.ndarray,
    fiscal_q: np.ndarray,
    min_trend: int,
    min_season: int,
    weights: np.ndarray | None = None,
) -> tuple[SegmentArrivals, np.ndarray]:
    n = y.size
    om, n_eff = _quarter_weights(weights, n)
    n_full = int(np.sum(exposure >= FULL_QUARTER_EXPOSURE))
    if y.sum() <= 0:
        empty = SegmentArrivals(
            (),
            np.zeros(0),
            np.zeros((0, 0)),
            1.0,
            math.inf,
            n,
            n_full,
            n,
            zero_rate=True,
            note="no deal created in the lookback: rate 0",
        )
        return empty, np.zeros(n)
    terms, beta, info, ok, notes = _fit_terms(
        y, exposure, t_years, fiscal_q, min_trend, min_season, om
    )
    offset = np.log(exposure)
    X = _design(terms, t_years, fiscal_q)
    mu = np.exp(X @ beta + offset)
    p = len(terms)
    df = n_eff - p  # n - p without recency weights
    chi2 = float(np.sum(om * (y - mu) ** 2 / mu))
    phi = chi2 / df if df > 0 else 1.0
    if df <= 0:
        notes.append("over-dispersion not estimable (no residual degrees of freedom)")
    alpha = _nb_alpha(y, mu, df, om)
    try:
        cov = np.linalg.inv(info) * max(phi, 1.0)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(info) * max(phi, 1.0)
    fit = SegmentArrivals(
        tuple(terms),
        beta,
        cov,
        float(phi),
        math.inf if alpha <= 0 else 1.0 / alpha,
        n,
        n_full,
        math.floor(df + 1e-9),
        converged=bool(ok),
        note="; ".join(notes),
    )
    return fit, mu


def fit_arrivals(
    data: FitData,
    *,
    lookback_quarters: int = 12,
    mix_quarters: int = 4,
    min_full_quarters_trend: int = 4,
    min_full_quarters_season: int = 8,
    min_segment_mix: int = 20,
    layout: ArrivalLayout | None = None,
) -> ArrivalModel:
    """Fit per-segment new-deal arrival rates and entry-stage mixes.

    Parameters
    ----------
    data : FitData
        Reads the outcomes (``deal_id, created_at, first_stage_code``) with their
        segment labels and deal weights; ``data.n_open`` (default: ``1 +
        max(first_stage_code)``; codes ≥ K are left out of the mix) and
        ``data.history_start`` (exposure of earlier quarters is 0; default: the
        earliest ``created_at``).
    lookback_quarters : int, default 12
        Full fiscal quarters before the current one that enter the fit.
    mix_quarters : int, default 4
        Full quarters (before the current one) of creations for the entry-stage mix.
    min_full_quarters_trend, min_full_quarters_season : int, default 4 and 8
        Full quarters needed to fit a trend / fiscal-quarter seasonality.
    min_segment_mix : int, default 20
        Fewer recent deals in a segment: it uses the pooled entry mix.
    layout : ArrivalLayout, optional
        The creations of ``data`` already laid out by :meth:`ArrivalLayout.from_data`
        with these options (the fit's parameter draws reuse it); built here by default.

    Returns
    -------
    ArrivalModel

    Raises
    ------
    ModelError
        No deal was created before ``as_of``, or none entered an open stage.
    """
    if layout is None:
        layout = ArrivalLayout.from_data(
            data,
            lookback_quarters=lookback_quarters,
            mix_quarters=mix_quarters,
            min_full_quarters_trend=min_full_quarters_trend,
            min_full_quarters_season=min_full_quarters_season,
            min_segment_mix=min_segment_mix,
        )
    caller = "fit_arrivals"
    t, calendar = data.as_of, data.calendar
    segments, quarters, exp_arr = layout.segments, layout.quarters, layout.exposure
    t_years, fiscal_q = layout.t_years, layout.fiscal_q
    min_trend, min_season, min_mix = layout.min_trend, layout.min_season, layout.min_mix
    lookback, k_open = layout.lookback_quarters, layout.n_open
    counts = layout.counts(data.weights[None, :])[0]  # (G, Q)
    # the entry mix weighs each deal by the recency of its creation
    w = data.weights[layout.deal] * layout.recency
    seg_index, codes, created = layout.segment_index, layout.first_stage, layout.created
    current = calendar.quarter_of(t)
    mixq = layout.mix_quarters

    fits: dict[str, SegmentArrivals] = {}
    history: list[dict[str, Any]] = []
    for g, seg in enumerate(segments):
        y = counts[g]
        fit, mu = _fit_segment(
            y, exp_arr, t_years, fiscal_q, min_trend, min_season, layout.quarter_weight
        )
        fits[seg] = fit
        for i, q in enumerate(quarters):
            history.append(
                {
                    "segment": seg,
                    "quarter": q.label,
                    "exposure": float(exp_arr[i]),
                    "count": float(y[i]),
                    "fitted": float(mu[i]),
                }
            )

    # -- entry-stage mix --------------------------------------------------------------------------
    mix_start = calendar.shift(current, -mixq).start
    open_entry = (codes >= 0) & (codes < k_open)
    recent = open_entry & (created >= np.datetime64(mix_start, "us"))
    if w[recent].sum() <= 0:
        recent = open_entry
    if w[recent].sum() <= 0:
        raise ModelError(
            f"`{caller}`: no deal created on or before {t:%Y-%m-%d} entered an open stage "
            f"(codes 0..{k_open - 1}); the entry-stage mix cannot be estimated."
        )
    pooled_mix = np.bincount(codes[recent], weights=w[recent], minlength=k_open)[:k_open]
    pooled_mix = pooled_mix / pooled_mix.sum()
    mix = np.empty((len(segments), k_open))
    source = []
    for g in range(len(segments)):
        sel = recent & (seg_index == g)
        if sel.sum() >= min_mix and w[sel].sum() > 0:
            m = np.bincount(codes[sel], weights=w[sel], minlength=k_open)[:k_open]
            mix[g] = m / m.sum()
            source.append("own")
        else:
            mix[g] = pooled_mix
            source.append("pooled")
    return ArrivalModel(
        segments=segments,
        as_of=t,
        calendar=calendar,
        fits=fits,
        entry_mix=mix,
        n_open_stages=k_open,
        history=tuple(history),
        lookback_quarters=lookback,
        entry_mix_source=tuple(source),
    )


@dataclass(frozen=True, eq=False)
class ArrivalLayout:
    """The deals' creations laid out once by segment and lookback quarter, for any deal weights.

    Built by :meth:`from_data` (the checks and the quarter grid of :func:`fit_arrivals`);
    :meth:`counts` gives the weighted creations per segment and quarter of a block of
    weight vectors, and :meth:`expected_in_window` the fitted expectation of each.

    Attributes
    ----------
    segments : tuple of str
    quarters : list of FiscalQuarter
        The lookback quarters with enough exposure.
    exposure, t_years : ndarray of float64, shape (Q,)
    fiscal_q : ndarray of int64, shape (Q,)
    deal : ndarray of int64, shape (n,)
        Deal index of each deal created by the as-of instant (outcomes rows).
    segment_index, quarter_index : ndarray of int64, shape (n,)
        Its segment (into ``segments``) and lookback quarter (``-1``: outside).
    first_stage : ndarray of int64, shape (n,)
    created : ndarray of datetime64[us], shape (n,)
    recency : ndarray of float64, shape (n,)
        Recency weight of each deal by its creation (for the entry mix; all 1 without
        a half-life, :meth:`FitData.recency`).
    quarter_weight : ndarray of float64, shape (Q,)
        Recency weight of each lookback quarter by its midpoint (the prior weight of
        its count in the Poisson fit).

    Deals in progress when the log started are not arrivals and are left out.
    """

    segments: tuple[str, ...]
    quarters: list[FiscalQuarter]
    exposure: np.ndarray
    t_years: np.ndarray
    fiscal_q: np.ndarray
    deal: np.ndarray
    segment_index: np.ndarray
    quarter_index: np.ndarray
    first_stage: np.ndarray
    created: np.ndarray
    recency: np.ndarray
    quarter_weight: np.ndarray
    n_open: int
    as_of: dt.datetime
    calendar: FiscalCalendar
    lookback_quarters: int
    mix_quarters: int
    min_trend: int
    min_season: int
    min_mix: int

    @classmethod
    def from_data(
        cls,
        data: FitData,
        *,
        lookback_quarters: int = 12,
        mix_quarters: int = 4,
        min_full_quarters_trend: int = 4,
        min_full_quarters_season: int = 8,
        min_segment_mix: int = 20,
    ) -> ArrivalLayout:
        """Check the arguments and lay out the creations of ``data`` (see :func:`fit_arrivals`)."""
        caller = "fit_arrivals"
        t, calendar = data.as_of, data.calendar
        lookback = check_int(lookback_quarters, "lookback_quarters", caller, minimum=1)
        mixq = check_int(mix_quarters, "mix_quarters", caller, minimum=0)
        min_trend = check_int(min_full_quarters_trend, "min_full_quarters_trend", caller, minimum=1)
        min_season = check_int(
            min_full_quarters_season, "min_full_quarters_season", caller, minimum=1
        )
        min_mix = check_int(min_segment_mix, "min_segment_mix", caller, minimum=1)
        oc = data.frame("outcomes", caller, ["deal_id", "created_at", "first_stage_code"])
        # deals in progress when the log started are not arrivals (their creation and
        # first stage were not recorded)
        oc = oc.with_row_index("_row").filter(
            pl.col("created_at").is_not_null()
            & (pl.col("created_at") <= t)
            & ~pl.Series(data.row_in_progress("outcomes"))
        )
        if oc.height == 0:
            raise ModelError(
                f"`{caller}`: no deal was created on or before {t:%Y-%m-%d}; arrival rates cannot be "
                "estimated."
            )
        if data.n_open is None:
            k_open = int(oc["first_stage_code"].max()) + 1  # type: ignore[arg-type]
        else:
            k_open = data.n_open
        start = oc["created_at"].min() if data.history_start is None else data.history_start
        segments = tuple(sorted(oc[SEGMENT_COLUMN].unique().to_list()))

        # -- quarters of the lookback with their exposure -------------------------------------------
        current = calendar.quarter_of(t)
        quarters, exposure = [], []
        for i in range(-lookback, 1):
            q = calendar.shift(current, i)
            lo, hi = max(q.start, start), min(q.end, t)  # type: ignore[type-var]
            e = max((hi - lo) / (q.end - q.start), 0.0)
            if e >= MIN_EXPOSURE:
                quarters.append(q)
                exposure.append(min(e, 1.0))
        if not quarters:
            raise ModelError(
                f"`{caller}`: the history ({start:%Y-%m-%d} .. {t:%Y-%m-%d}) covers less than "
                f"{MIN_EXPOSURE:.0%} of a fiscal quarter; arrival rates cannot be estimated."
            )
        exp_arr = np.asarray(exposure)
        mids = [q.start + (q.end - q.start) / 2 for q in quarters]
        t_years = np.array([(m - t).total_seconds() / 86400.0 / DAYS_PER_YEAR for m in mids])
        fiscal_q = np.array([q.quarter for q in quarters])
        edges = np.array(
            [np.datetime64(q.start, "us") for q in quarters]
            + [np.datetime64(quarters[-1].end, "us")]
        )

        created = to_datetime64(oc["created_at"])
        q_index = np.searchsorted(edges, created, side="right") - 1
        # the listed quarters are consecutive (only the first and the current one can be
        # left out for low exposure), so creations outside them get -1 or len(quarters)
        q_index = np.where((q_index >= 0) & (q_index < len(quarters)), q_index, -1)
        lookup = {g: i for i, g in enumerate(segments)}
        seg_index = oc[SEGMENT_COLUMN].replace_strict(lookup, return_dtype=pl.Int64).to_numpy()
        return cls(
            segments=segments,
            quarters=quarters,
            exposure=exp_arr,
            t_years=t_years,
            fiscal_q=fiscal_q,
            deal=data.deal_index("outcomes")[oc["_row"].to_numpy()],
            segment_index=np.ascontiguousarray(seg_index, dtype=np.int64),
            quarter_index=q_index.astype(np.int64),
            first_stage=oc["first_stage_code"].to_numpy(),
            created=created,
            recency=data.recency(oc["created_at"]),
            quarter_weight=data.recency(np.array([np.datetime64(m, "us") for m in mids])),
            n_open=k_open,
            as_of=t,
            calendar=calendar,
            lookback_quarters=lookback,
            mix_quarters=mixq,
            min_trend=min_trend,
            min_season=min_season,
            min_mix=min_mix,
        )

    def counts(self, weights: np.ndarray) -> np.ndarray:
        """Weighted creations per segment and lookback quarter, shape (B, G, Q).

        Parameters
        ----------
        weights : ndarray of float64, shape (B, n_deals)
            Deal weights (one row per draw).
        """
        n_q, n_seg = len(self.quarters), len(self.segments)
        out = np.zeros((weights.shape[0], n_seg, n_q))
        # creations grouped by (segment, quarter) cell, in their order within a cell; each
        # cell's weights are summed in that order for all draws at once (a cumulative sum
        # adds them one by one from 0, as ``np.bincount`` of one draw does: the same bits)
        inside = np.flatnonzero(self.quarter_index >= 0)
        cell = self.segment_index[inside] * n_q + self.quarter_index[inside]
        by_cell = np.argsort(cell, kind="stable")
        bounds = np.searchsorted(cell[by_cell], np.arange(n_seg * n_q + 1))
        # (n, B): for the deal-major weights of a block, each deal's draws are one row
        rows = np.asarray(weights).T[self.deal[inside[by_cell]]]
        for c in np.flatnonzero(bounds[1:] > bounds[:-1]):
            g, q = divmod(int(c), n_q)
            out[:, g, q] = np.cumsum(rows[bounds[c] : bounds[c + 1]], axis=0)[-1]
        return out

    def expected_in_window(
        self, weights: np.ndarray, window: tuple[dt.datetime, dt.datetime]
    ) -> np.ndarray:
        """Expected creations in ``window`` (after the as-of instant) of the arrival fit of
        each weight vector, per segment: shape (B, G).

        The same Poisson GLM as :func:`fit_arrivals` (terms dropped alike), without its
        over-dispersion and covariance, which a draw does not keep.
        """
        counts = self.counts(weights)
        om, _ = _quarter_weights(self.quarter_weight, len(self.quarters))
        out = np.zeros(counts.shape[:2])
        start, end = window
        pieces = _window_pieces(self.calendar, self.as_of, max(start, self.as_of), end)
        for b in range(counts.shape[0]):
            for g in range(counts.shape[1]):
                y = counts[b, g]
                if y.sum() <= 0:
                    continue
                terms, beta, *_ = _fit_terms(
                    y,
                    self.exposure,
                    self.t_years,
                    self.fiscal_q,
                    self.min_trend,
                    self.min_season,
                    om,
                )
                for frac, t_mid, fq in pieces:
                    x = _design(terms, t_mid, fq)[0]
                    out[b, g] += frac * math.exp(float(x @ beta))
        return out
