"""Parametric tails for sojourn times, fitted by censored maximum likelihood.

Beyond the last observed sojourn of a stage the empirical (Aalen–Johansen)
curve says nothing, so :mod:`forecast.fit.competing_risks` continues it with a
parametric survival function fitted here. Three scale families with location 0
are available (parameter names follow :mod:`scipy.stats`):

========== ================================== =========================
family     survival S(t)                       parameters
========== ================================== =========================
exponential ``exp(-t / scale)``                ``scale``
weibull    ``exp(-(t / scale) ** shape)``      ``shape``, ``scale``
lognormal  ``1 - Φ(log(t / scale) / sigma)``   ``sigma``, ``scale``
========== ================================== =========================

The family with the smallest AIC is chosen; every candidate's fit is kept in
:attr:`TailFit.candidates` so the choice can be inspected.

**What the tail is fitted on.** By default only the spells still in the stage
after a threshold ``u`` enter, and the likelihood is conditional on ``T > u``
(left truncation at ``u``)::

    log L = Σ_events w log f(t) + Σ_censored w log S(t) − Σ_all w log S(u)

The tail is only ever used far out (beyond the last observed duration), where
the hazard of a pipeline stage is typically much lower than in its body (fast
advances early, slow losses late). A fit on all data would be dominated by the
body and extrapolate its hazard; the truncated fit describes the late hazard
only. When fewer than ``min_events`` exits lie beyond ``u`` the fit falls back
to all data (``u = 0``, :attr:`TailFit.truncated` is ``False``), trading bias
for a fit that exists. Both the requested and the used threshold are recorded.

**How each family is fitted.** The exponential in closed form; the Weibull by a
bounded scalar search of its profile likelihood over the shape; the log-normal by
damped Newton steps inside a box (:func:`_newton_box`, analytic gradient and Hessian),
started from the moments of the exits' log durations and, if that does not converge,
from those of all spells. Nothing in a fit depends on process-wide state (warning
filters, optimiser caches), so fits running side by side on threads give the same
numbers and never warn. How each family's fit ended is its
:attr:`TailCandidate.code`; a bound reached or a failed convergence is reported there
(and in the model's diagnostics), never as a warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import special

from forecast._solvers import minimize_bounded
from forecast.errors import ParameterError

__all__ = [
    "CANDIDATE_CODES",
    "TAIL_FAMILIES",
    "TailCandidate",
    "TailFamily",
    "TailFit",
    "fit_tail",
]

TailFamily = Literal["exponential", "weibull", "lognormal"]

#: Families :func:`fit_tail` knows, with their parameter names in order.
TAIL_FAMILIES: dict[str, tuple[str, ...]] = {
    "exponential": ("scale",),
    "weibull": ("shape", "scale"),
    "lognormal": ("sigma", "scale"),
}

#: Outcome codes of one family's fit (:attr:`TailCandidate.code`).
CANDIDATE_CODES: tuple[str, ...] = (
    "ok",
    "no_exits",
    "too_few_exits",
    "at_bound",
    "not_converged",
    "fit_failed",
    "fallback",
)

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# Bounds of the Weibull shape search (log scale). Shapes outside are not credible
# for sojourn times and make the profile likelihood numerically flat.
_LOG_SHAPE_BOUNDS = (math.log(0.02), math.log(50.0))
# Bounds of the log-normal search: sigma in [0.02, 50] (about as wide as the Weibull
# shape range, since sigma ~ 1.28 / shape); log scale within 30 of the log durations.
_LOG_SIGMA_BOUNDS = (math.log(0.02), math.log(50.0))
_MU_MARGIN = 30.0
# Newton iterations of the log-normal fit and its stopping rule: the largest projected
# gradient component of the mean negative log-likelihood (unitless).
_NEWTON_MAX_ITER = 200
_NEWTON_GTOL = 1e-9
# Relative rounding error of the mean negative log-likelihood (a few ulps).
_F_ROUNDING = 16 * np.finfo(np.float64).eps
# A fit whose optimiser stalled counts as converged if its gradient is this small.
_STALL_GTOL = 1e-6


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    fams = tuple(families)
    if not fams:
        raise ParameterError(
            f"The `families` parameter of `fit_tail` must name at least one of "
            f"{sorted(TAIL_FAMILIES)}. Got an empty sequence."
        )
    bad = [f for f in fams if f not in TAIL_FAMILIES]
    if bad:
        raise ParameterError(
            f"The `families` parameter of `fit_tail` must contain only "
            f"{sorted(TAIL_FAMILIES)}. Got {bad!r}."
        )
    return tuple(dict.fromkeys(fams))


def _log_sf(family: str, params: Mapping[str, float], t: np.ndarray) -> np.ndarray:
    """log S(t) of a family (t ≥ 0, days); ``family == "none"`` gives 0."""
    t = np.asarray(t, dtype=np.float64)
    if family == "none":
        return np.zeros_like(t)
    scale = params["scale"]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if family == "exponential":
            out = -t / scale
        elif family == "weibull":
            out = -((t / scale) ** params["shape"])
        elif family == "lognormal":
            z = np.log(t / scale) / params["sigma"]
            out = special.log_ndtr(-z)
        else:  # pragma: no cover - guarded by constructors
            raise ParameterError(f"Unknown tail family {family!r}.")
    return np.where(t <= 0, 0.0, out)


@dataclass(frozen=True)
class TailCandidate:
    """The censored maximum-likelihood fit of one family.

    Attributes
    ----------
    family : str
    params : dict str -> float or None
        Fitted parameters (days for ``scale``); ``None`` if the fit failed.
    log_likelihood : float or None
        Maximised (weighted, truncation-conditional) log-likelihood.
    aic : float or None
        ``2 * n_params - 2 * log_likelihood``.
    n_params : int
    message : str
        ``"ok"``, or why the family was not fitted or did not converge.
    code : str
        The outcome as one word of :data:`CANDIDATE_CODES`: ``"ok"``; ``"no_exits"``
        or ``"too_few_exits"`` (not fitted); ``"at_bound"`` (a parameter ended on
        the edge of its search range); ``"not_converged"`` (the optimiser stopped
        short of an optimum; the parameters are its last point); ``"fit_failed"``
        (no finite fit); ``"fallback"`` (the exponential fitted because no
        requested family could be).
    """

    family: str
    params: dict[str, float] | None
    log_likelihood: float | None
    aic: float | None
    n_params: int
    message: str = "ok"
    code: str = "ok"

    def __post_init__(self) -> None:
        if self.code not in CANDIDATE_CODES:
            raise ParameterError(
                f"The `code` of a TailCandidate must be one of {list(CANDIDATE_CODES)}. "
                f"Got {self.code!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (no NaN or infinity)."""
        return {
            "family": self.family,
            "params": None if self.params is None else dict(self.params),
            "log_likelihood": self.log_likelihood,
            "aic": self.aic,
            "n_params": self.n_params,
            "message": self.message,
            "code": self.code,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TailCandidate:
        """Inverse of :meth:`to_dict`."""
        params = d["params"]
        return cls(
            family=str(d["family"]),
            params=None if params is None else {str(k): float(v) for k, v in params.items()},
            log_likelihood=None if d["log_likelihood"] is None else float(d["log_likelihood"]),
            aic=None if d["aic"] is None else float(d["aic"]),
            n_params=int(d["n_params"]),
            message=str(d["message"]),
            code=str(d.get("code", "ok" if params is not None else "fit_failed")),
        )


@dataclass(frozen=True)
class TailFit:
    """A parametric sojourn-time tail chosen by AIC among censored ML fits.

    Attributes
    ----------
    family : str
        Chosen family (``"exponential"``, ``"weibull"``, ``"lognormal"``), or
        ``"none"`` when no exit was observed (then ``S(t) = 1``: nobody leaves).
    params : dict str -> float
        Parameters of the chosen family (``scale`` in days).
    log_likelihood, aic : float
        Of the chosen family (``nan`` for ``"none"``).
    candidates : tuple of TailCandidate
        Every family tried, fitted or not, with its log-likelihood and AIC.
    threshold : float
        Days. The likelihood is conditional on ``T > threshold`` and only spells
        longer than it enter; 0 means all spells (no truncation).
    requested_threshold : float
        Days. The threshold asked for, before any fall-back to all data.
    n_used : int
        Spells that entered the fit (unweighted count).
    events_used : int
        Exits among them (unweighted count).
    duration_floor : float
        Days. Durations below it were raised to it (log-likelihoods need t > 0).
    """

    family: str
    params: dict[str, float]
    log_likelihood: float
    aic: float
    candidates: tuple[TailCandidate, ...] = ()
    threshold: float = 0.0
    requested_threshold: float = 0.0
    n_used: int = 0
    events_used: int = 0
    duration_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.family != "none":
            if self.family not in TAIL_FAMILIES:
                raise ParameterError(
                    f"The `family` of a TailFit must be one of {[*sorted(TAIL_FAMILIES), 'none']}. "
                    f"Got {self.family!r}."
                )
            for name in TAIL_FAMILIES[self.family]:
                value = self.params.get(name)
                if value is None or not math.isfinite(value) or value <= 0:
                    raise ParameterError(
                        f"The {self.family} tail needs parameter `{name}` finite and > 0. "
                        f"Got {value!r}."
                    )

    @classmethod
    def none(cls, *, candidates: tuple[TailCandidate, ...] = (), **info: Any) -> TailFit:
        """The degenerate tail of a sample without exits: ``S(t) = 1`` for all t."""
        return cls("none", {}, float("nan"), float("nan"), candidates, **info)

    def log_survival(self, t: Any) -> np.ndarray:
        """log S(t) of the chosen family.

        Parameters
        ----------
        t : array_like of float
            Days ≥ 0, any shape.

        Returns
        -------
        numpy.ndarray of float64, same shape as ``t``
        """
        return _log_sf(self.family, self.params, np.asarray(t, dtype=np.float64))

    def survival(self, t: Any) -> np.ndarray:
        """S(t) = P(T > t) of the chosen family (unconditional, from t = 0).

        Parameters
        ----------
        t : array_like of float
            Days ≥ 0, any shape.

        Returns
        -------
        numpy.ndarray of float64, same shape as ``t``

        Examples
        --------
        >>> tf = TailFit("exponential", {"scale": 10.0}, -1.0, 4.0)
        >>> float(tf.survival(10.0).round(6))
        0.367879
        """
        return np.exp(self.log_survival(t))

    def rescaled(self, factor: float) -> TailFit:
        """The tail of ``factor * T``: every ``scale`` and threshold times ``factor``.

        Parameters
        ----------
        factor : float
            Positive time factor (1.1 = a 10% slower clock).
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ParameterError(
                f"The `factor` of `TailFit.rescaled` must be finite and > 0. Got {factor!r}."
            )
        params = dict(self.params)
        if "scale" in params:
            params["scale"] *= factor
        return TailFit(
            self.family,
            params,
            self.log_likelihood,
            self.aic,
            self.candidates,
            self.threshold * factor,
            self.requested_threshold * factor,
            self.n_used,
            self.events_used,
            self.duration_floor * factor,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN stored as ``None``)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "family": self.family,
            "params": dict(self.params),
            "log_likelihood": num(self.log_likelihood),
            "aic": num(self.aic),
            "candidates": [c.to_dict() for c in self.candidates],
            "threshold": self.threshold,
            "requested_threshold": self.requested_threshold,
            "n_used": self.n_used,
            "events_used": self.events_used,
            "duration_floor": self.duration_floor,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TailFit:
        """Inverse of :meth:`to_dict`."""

        def num(x: float | None) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            family=str(d["family"]),
            params={str(k): float(v) for k, v in d["params"].items()},
            log_likelihood=num(d["log_likelihood"]),
            aic=num(d["aic"]),
            candidates=tuple(TailCandidate.from_dict(c) for c in d["candidates"]),
            threshold=float(d["threshold"]),
            requested_threshold=float(d["requested_threshold"]),
            n_used=int(d["n_used"]),
            events_used=int(d["events_used"]),
            duration_floor=float(d["duration_floor"]),
        )

    def __str__(self) -> str:
        head = (
            f"TailFit: {self.family} {self.params} "
            f"({'conditional on T > ' + format(self.threshold, 'g') + ' days' if self.truncated else 'all spells'}, "
            f"{self.n_used} spells, {self.events_used} exits)"
        )
        rows = [
            f"  {c.family:<12} AIC={'n/a' if c.aic is None else format(c.aic, '.3f'):>12}  {c.message}"
            for c in self.candidates
        ]
        return "\n".join([head, *rows])

    @property
    def truncated(self) -> bool:
        """Whether the fit is conditional on ``T > threshold`` (threshold > 0)."""
        return self.threshold > 0


# --------------------------------------------------------------------------------------------
# Per-family censored, left-truncated maximum likelihood on prepared arrays.
# t: durations (days, > 0), d: 1.0 for exits, 0.0 for censored, w: weights, u: truncation point.
# --------------------------------------------------------------------------------------------


def _fit_exponential(t, d, w, u):
    events = float(np.dot(w, d))
    exposure = float(np.dot(w, t - u))  # u: truncation point of each spell (or one for all)
    scale = exposure / events
    ll = -events * math.log(scale) - exposure / scale
    return {"scale": scale}, ll, "ok", "ok"


def _fit_weibull(t, d, w, u):
    events = float(np.dot(w, d))
    log_t = np.log(t)
    sum_dlogt = float(np.dot(w * d, log_t))
    log_tmax = float(log_t.max())
    rel = log_t - log_tmax  # ≤ 0, so exp(c * rel) never overflows
    uu = np.broadcast_to(np.asarray(u, dtype=np.float64), t.shape)
    with np.errstate(divide="ignore"):  # not truncated (u = 0): -inf, a factor of 1 below
        rel_u = np.where(uu > 0, np.log(np.maximum(uu, 1e-300)) - log_tmax, -np.inf)

    def log_a(c: float) -> float:
        # log Σ w (t^c - u^c), relative to t_max^c; t^c - u^c = t^c (1 - (u/t)^c) with
        # expm1, so that spells just beyond u keep their (small, positive) share.
        with np.errstate(under="ignore"):  # short spells at a large shape weigh 0
            inner = float(np.dot(w, np.exp(c * rel) * -np.expm1(c * (rel_u - rel))))
        return c * log_tmax + math.log(inner)

    def neg_profile(log_c: float) -> float:
        c = math.exp(log_c)
        la = log_a(c)
        # λ^c = A / E  ⇒  log L = E log c − E log(A/E) + (c − 1) Σ d log t − E
        return -(
            events * math.log(c) - events * (la - math.log(events)) + (c - 1) * sum_dlogt - events
        )

    log_c, neg_loglik = minimize_bounded(neg_profile, *_LOG_SHAPE_BOUNDS, xatol=1e-11)
    c = math.exp(log_c)
    code, message = "ok", "ok"
    if min(abs(log_c - b) for b in _LOG_SHAPE_BOUNDS) < 1e-6:
        code, message = "at_bound", f"shape at the search bound {c:.3g}"
    scale = math.exp((log_a(c) - math.log(events)) / c)
    return {"shape": c, "scale": scale}, -neg_loglik, code, message


def _lognormal_data(
    log_t: np.ndarray, d: np.ndarray, w: np.ndarray
) -> tuple[tuple[float, float, float], np.ndarray, np.ndarray]:
    """What :func:`_lognormal_mean_nll` reads: the exits' weighted moments of ``log t``
    ``(S0, m, C2)``, and the censored spells' ``log t`` and weights."""
    ev = d > 0
    s0 = float(w[ev].sum())
    m = float(np.dot(w[ev], log_t[ev])) / s0 if s0 > 0 else 0.0
    exits = (s0, m, float(np.dot(w[ev], (log_t[ev] - m) ** 2)))
    return exits, log_t[~ev], w[~ev]


def _lognormal_mean_nll(
    theta: np.ndarray,
    exits: tuple[float, float, float],
    log_t: np.ndarray,
    w: np.ndarray,
    log_u: float | tuple[np.ndarray, np.ndarray] | None,
    wsum: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean (per unit weight) negative log-likelihood, gradient and Hessian in (mu, log sigma).

    ``log L = Σ w d (log φ(z) − log σ − log t) + Σ w (1 − d) log Φ(−z) − Σ w log Φ(−z_u)``
    (the last sum over the spells truncated at ``u > 0``; ``log_u`` is one ``log u``
    for every spell, or the ``(log u, w)`` arrays of the truncated spells)
    with ``z = (log t − mu) / sigma``; every term is analytic. With the hazard of the
    standard normal ``λ(z) = φ(z) / Φ(−z)`` (``λ' = λ (λ − z)``), per exit
    ``∂/∂mu = z / σ``, ``∂/∂s = z² − 1`` (``s = log σ``), and per censored spell
    ``∂/∂mu = λ / σ``, ``∂/∂s = λ z``; second derivatives follow by the chain rule.
    The constant ``Σ w d log t`` is left out of the value. The exits enter through
    their weighted moments ``exits = (S0, m, C2)`` (``S0 = Σ w``, ``m`` the weighted
    mean of ``log t``, ``C2 = Σ w (log t − m)²``, so ``Σ w z² = (C2 + S0 (m − mu)²) / σ²``),
    and ``log_t``, ``w`` are the censored spells only: an evaluation costs O(censored
    spells).
    """
    mu, log_sigma = float(theta[0]), float(theta[1])
    sigma = math.exp(log_sigma)
    # exits: closed forms in their weighted moments of log t
    s0, m, c2 = exits
    dm = m - mu
    sq = (c2 + s0 * dm * dm) / sigma**2  # Σ w_exit z²
    ll = -0.5 * sq - s0 * (_LOG_SQRT_2PI + log_sigma)
    g_mu = s0 * dm / sigma**2
    g_s = sq - s0
    h_mm = -s0 / sigma**2
    h_ms = -2.0 * s0 * dm / sigma**2
    h_ss = -2.0 * sq
    if log_t.size:  # censored spells
        z = (log_t - mu) / sigma
        log_sf = special.log_ndtr(-z)
        with np.errstate(under="ignore"):  # far below the scale φ(z) / Φ(−z) is 0
            lam = np.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_sf)  # φ(z) / Φ(−z), ≥ 0
        dl = lam * (lam - z)  # λ'(z)
        ll += float(np.dot(w, log_sf))
        g_mu += float(np.dot(w, lam)) / sigma
        g_s += float(np.dot(w, lam * z))
        h_mm -= float(np.sum(w * dl)) / sigma**2
        h_ms -= float(np.dot(w, z * dl + lam)) / sigma
        h_ss -= float(np.dot(w, z * z * dl + z * lam))
    if log_u is not None:  # − Σ w log Φ(−z_u) over the truncated spells
        if isinstance(log_u, tuple):
            log_uu, wu = log_u
        else:  # one truncation point for every spell
            log_uu, wu = np.array([float(log_u)]), np.array([wsum])
        zu = (log_uu - mu) / sigma
        lsu = special.log_ndtr(-zu)
        with np.errstate(under="ignore"):
            lu = np.exp(-0.5 * zu * zu - _LOG_SQRT_2PI - lsu)
        dlu = lu * (lu - zu)
        ll -= float(np.dot(wu, lsu))
        g_mu -= float(np.dot(wu, lu)) / sigma
        g_s -= float(np.dot(wu, lu * zu))
        h_mm += float(np.dot(wu, dlu)) / sigma**2
        h_ms += float(np.dot(wu, zu * dlu + lu)) / sigma
        h_ss += float(np.dot(wu, zu * zu * dlu + zu * lu))
    grad = np.array([g_mu, g_s])
    hess = np.array([[h_mm, h_ms], [h_ms, h_ss]])
    return -ll / wsum, -grad / wsum, -hess / wsum


def _newton_box(
    fun: Any, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, float, float, str]:
    """Minimise a smooth function of a few variables inside a box by damped Newton steps.

    Each step solves ``(H + λ D) p = −g`` on the free variables (those not held at a
    bound by their gradient; ``D`` the diagonal of ``|H|``, floored), projects it into
    the box and is kept only if it lowers the function (Armijo); ``λ`` shrinks after a
    kept step and grows after a rejected one (Levenberg–Marquardt), so far from the
    optimum the step turns toward steepest descent and close to it toward Newton's
    (quadratic convergence). Plain NumPy: the result depends on the inputs only.

    Returns
    -------
    x : ndarray
        The last accepted point.
    f : float
        The function there.
    grad_norm : float
        Largest projected gradient component there.
    status : str
        ``"ok"`` (converged), ``"stalled"`` (no step lowers the function any more) or
        ``"max_iter"``.
    """
    x = np.clip(np.asarray(x0, dtype=np.float64), lower, upper)
    f, g, h = fun(x)
    damping = 0.0
    for _ in range(_NEWTON_MAX_ITER):
        held = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
        free = ~held
        pg = np.where(free, g, 0.0)
        grad_norm = float(np.max(np.abs(pg)))
        if grad_norm <= _NEWTON_GTOL:
            return x, f, grad_norm, "ok"
        while True:
            step = np.zeros_like(x)
            hf = h[np.ix_(free, free)]
            scale = np.maximum(np.abs(np.diag(hf)), 1e-12)
            a = hf + damping * np.diag(scale)
            if _positive_definite(a):
                step[free] = np.linalg.solve(a, -g[free])
                x_new = np.clip(x + step, lower, upper)
                moved = x_new - x
                if np.any(moved != 0):
                    f_new, g_new, h_new = fun(x_new)
                    # Armijo, or (within rounding of f) a smaller gradient: close to the
                    # optimum the decrease of f falls below its rounding error.
                    if math.isfinite(f_new) and (
                        f_new <= f + 1e-4 * float(np.dot(g, moved))
                        or (
                            f_new <= f + _F_ROUNDING * (1.0 + abs(f))
                            and np.max(np.abs(g_new)) < np.max(np.abs(g))
                        )
                    ):
                        x, f, g, h = x_new, f_new, g_new, h_new
                        damping = 0.0 if damping <= 1e-6 else damping / 10.0
                        break
            damping = max(damping * 10.0, 1e-6)
            if damping > 1e12:
                return x, f, grad_norm, "stalled"
    held = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
    grad_norm = float(np.max(np.abs(np.where(held, 0.0, g))))
    return x, f, grad_norm, "ok" if grad_norm <= _NEWTON_GTOL else "max_iter"


def _positive_definite(a: np.ndarray) -> bool:
    """Whether a small symmetric matrix is (numerically) positive definite."""
    if not np.all(np.isfinite(a)):
        return False
    return bool(np.all(np.linalg.eigvalsh(a) > 0))


def _log_moments(log_t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Start of the log-normal search: weighted mean and log sd of log durations."""
    mu = float(np.average(log_t, weights=w))
    sd = float(np.sqrt(np.average((log_t - mu) ** 2, weights=w)))
    return np.array([mu, math.log(sd if sd > 1e-3 else 1.0)])


def _fit_lognormal(t, d, w, u):
    wsum = float(w.sum())
    log_t = np.log(t)
    uu = np.broadcast_to(np.asarray(u, dtype=np.float64), t.shape)
    trunc = uu > 0
    log_u = (np.log(uu[trunc]), w[trunc]) if np.any(trunc) else None
    const = float(np.dot(w * d, log_t))  # Σ w d log t, left out of the optimised value
    lower = np.array([float(log_t.min()) - _MU_MARGIN, _LOG_SIGMA_BOUNDS[0]])
    upper = np.array([float(log_t.max()) + _MU_MARGIN, _LOG_SIGMA_BOUNDS[1]])

    prepared = _lognormal_data(log_t, d, w)

    def fun(theta):
        return _lognormal_mean_nll(theta, *prepared, log_u, wsum)

    ev = d > 0
    # Start from the moments of the exits' log durations (censoring ignored); if that
    # does not converge, from the moments of all spells; keep the better end point.
    best = None
    for x0 in (_log_moments(log_t[ev], w[ev]), _log_moments(log_t, w)):
        x, f, grad_norm, status = _newton_box(fun, x0, lower, upper)
        if best is None or f < best[1]:
            best = (x, f, grad_norm, status)
        if grad_norm <= _STALL_GTOL:
            break
    x, f, grad_norm, status = best
    mu, log_sigma = float(x[0]), float(x[1])
    params = {"sigma": math.exp(log_sigma), "scale": math.exp(mu)}
    ll = -f * wsum - const
    if grad_norm > _STALL_GTOL:
        return (
            params,
            ll,
            "not_converged",
            (f"optimiser did not converge ({status}, largest gradient {grad_norm:.2g})"),
        )
    for name, v, lo, hi in (
        ("scale", mu, lower[0], upper[0]),
        ("sigma", log_sigma, *_LOG_SIGMA_BOUNDS),
    ):
        if min(abs(v - lo), abs(v - hi)) < 1e-6:
            return params, ll, "at_bound", f"{name} at the search bound {math.exp(v):.3g}"
    return params, ll, "ok", "ok"


_FITTERS = {"exponential": _fit_exponential, "weibull": _fit_weibull, "lognormal": _fit_lognormal}


def fit_tail(
    durations: Any,
    observed: Any,
    families: Sequence[str] = ("exponential", "weibull", "lognormal"),
    weights: Any = None,
    *,
    threshold: float = 0.0,
    min_events: int = 20,
    duration_floor: float = 1.0 / 24.0,
    entries: Any = None,
) -> TailFit:
    """Fit sojourn-time tails by censored maximum likelihood and pick one by AIC.

    Parameters
    ----------
    durations : array_like of float, shape (n,)
        Sojourn times in days (≥ 0), exits and right-censored spells together.
    observed : array_like of bool, shape (n,)
        ``True`` where the spell ended with an exit, ``False`` where censored.
    families : sequence of str, default all three
        Candidates among ``"exponential"``, ``"weibull"``, ``"lognormal"``.
    weights : array_like of float, shape (n,), optional
        Non-negative case weights (default 1); integer weights act like repeated rows.
    threshold : float, default 0
        Days. Fit only spells longer than this, conditional on ``T > threshold``
        (see the module docstring for why). 0 fits all spells.
    min_events : int, default 20
        If fewer exits lie beyond ``threshold``, fall back to all spells.
    duration_floor : float, default 1/24
        Days. Durations below it (e.g. same-instant stage skips) are raised to it,
        since the Weibull and log-normal densities need t > 0.
    entries : array_like of float, shape (n,), optional
        Delayed entry of each spell (days, ``≤ duration``; default 0): a spell first
        observed at ``e`` enters conditional on ``T > max(threshold, e)``.

    Returns
    -------
    TailFit
        The family with the smallest AIC, with all candidates reported. A sample
        without exits gives the degenerate ``"none"`` tail (``S = 1``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = rng.exponential(30.0, 400)
    >>> fit = fit_tail(np.minimum(t, 60.0), t < 60.0, families=["exponential"])
    >>> fit.family, 25 < fit.params["scale"] < 35
    ('exponential', True)
    """
    fams = _check_families(families)
    t = np.asarray(durations, dtype=np.float64)
    if t.ndim != 1:
        raise ParameterError(f"`durations` must be 1-D. Got shape {t.shape}.")
    obs = np.asarray(observed)
    if obs.shape != t.shape:
        raise ParameterError(
            f"`observed` must have the shape of `durations` {t.shape}. Got {obs.shape}."
        )
    obs = obs.astype(bool)
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise ParameterError(
            f"`durations` must be finite days ≥ 0. Got {float(t[bad[0]])!r} at index {int(bad[0])}."
        )
    if weights is None:
        w = np.ones_like(t)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != t.shape:
            raise ParameterError(
                f"`weights` must have the shape of `durations` {t.shape}. Got {w.shape}."
            )
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ParameterError(
                f"`weights` must be finite and ≥ 0. Got {float(w[bad[0]])!r} at index {int(bad[0])}."
            )
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ParameterError(
            f"The `threshold` of `fit_tail` must be finite days ≥ 0. Got {threshold!r}."
        )
    if not (math.isfinite(duration_floor) and duration_floor > 0):
        raise ParameterError(f"`duration_floor` must be finite days > 0. Got {duration_floor!r}.")
    if min_events < 1:
        raise ParameterError(f"`min_events` must be ≥ 1. Got {min_events!r}.")

    if entries is None:
        e = np.zeros_like(t)
    else:
        e = np.asarray(entries, dtype=np.float64)
        if e.shape != t.shape or not np.all(np.isfinite(e) & (e >= 0) & (e <= t)):
            raise ParameterError(
                f"`entries` must be finite days in [0, duration], shape {t.shape}."
            )
    keep_pos = w > 0
    u = float(threshold)
    beyond = keep_pos & (t > u)
    if u > 0 and int(np.count_nonzero(beyond & obs)) < min_events:
        u = 0.0
    use = keep_pos & (t > u) if u > 0 else keep_pos
    tu, du, wu = np.maximum(t[use], duration_floor), obs[use].astype(np.float64), w[use]
    # truncation point of each spell: the threshold, or its later delayed entry
    trunc = np.minimum(np.maximum(u, e[use]), tu)
    u_fit: float | np.ndarray = trunc if np.any(trunc != u) else u
    info = {
        "threshold": u,
        "requested_threshold": float(threshold),
        "n_used": int(tu.size),
        "events_used": int(np.count_nonzero(du)),
        "duration_floor": float(duration_floor),
    }
    if info["events_used"] == 0:
        cands = tuple(
            TailCandidate(f, None, None, None, len(TAIL_FAMILIES[f]), "no exits to fit", "no_exits")
            for f in fams
        )
        return TailFit.none(candidates=cands, **info)

    n_distinct = np.unique(tu[du > 0]).size
    candidates: list[TailCandidate] = []
    for fam in fams:
        k = len(TAIL_FAMILIES[fam])
        if k > 1 and n_distinct < 3:
            candidates.append(
                TailCandidate(
                    fam,
                    None,
                    None,
                    None,
                    k,
                    f"needs ≥ 3 distinct exit times, got {n_distinct}",
                    "too_few_exits",
                )
            )
            continue
        params, ll, code, message = _FITTERS[fam](tu, du, wu, u_fit)
        if not all(math.isfinite(v) and v > 0 for v in params.values()) or not math.isfinite(ll):
            candidates.append(
                TailCandidate(fam, None, None, None, k, f"fit failed: {params}", "fit_failed")
            )
            continue
        candidates.append(TailCandidate(fam, params, ll, 2 * k - 2 * ll, k, message, code))
    fitted = [c for c in candidates if c.aic is not None]
    if not fitted:  # too few distinct exits for the requested two-parameter families
        params, ll, _, _ = _fit_exponential(tu, du, wu, u_fit)
        fitted = [
            TailCandidate(
                "exponential",
                params,
                ll,
                2 - 2 * ll,
                1,
                "fallback: no requested family fitted",
                "fallback",
            )
        ]
        candidates.extend(fitted)
    best = min(fitted, key=lambda c: c.aic)
    assert best.params is not None and best.log_likelihood is not None and best.aic is not None
    return TailFit(
        best.family, dict(best.params), best.log_likelihood, best.aic, tuple(candidates), **info
    )
