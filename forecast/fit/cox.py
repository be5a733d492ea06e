"""Stratified Cox regression on counting-process rows (Efron ties, case weights, ridge).

The estimator behind the deal covariates (:mod:`forecast.fit.covariates`): for one
cause (one destination group of one open stage), maximise the penalised log partial
likelihood

    ℓ_λ(β) = ℓ(β) − (λ / 2) Σ_a β_a²,

``ℓ`` the Efron partial likelihood of :func:`forecast._kernels.cox.cox_efron`
(weighted, stratified, on ``(start, stop]`` rows), by Newton–Raphson with step
halving. Standard errors come from the inverse of the penalised information
``−∇²ℓ_λ(β̂)`` (what lifelines reports). The Breslow baseline hazard at ``x = 0`` follows from
:func:`breslow_increments`. ``docs/model.md`` ("Deal covariates") gives the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecast._kernels import over_threads
from forecast._kernels.cox import cox_efron, cox_efron_draws, risk_sums_at_events
from forecast.errors import ParameterError

__all__ = [
    "CoxResult",
    "CoxRows",
    "breslow_increments",
    "cox_loglik",
    "fit_cox",
    "fit_cox_draws",
]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class CoxRows:
    """Counting-process rows grouped by stratum, with the sort orders the kernel reads.

    Build with :meth:`build`. Rows keep the caller's order inside :attr:`index`:
    row ``r`` here is row ``index[r]`` of the arrays given to :meth:`build`.

    Attributes
    ----------
    start, stop : ndarray of float64, shape (n,)
        ``(start, stop]`` in days.
    x : ndarray of float64, shape (n, d)
    offsets : ndarray of int64, shape (S + 1,)
        Rows of stratum ``s``: ``offsets[s] .. offsets[s + 1] - 1``.
    order_stop, order_start : ndarray of int64, shape (n,)
        Per stratum, rows by ``stop`` / ``start`` descending.
    index : ndarray of int64, shape (n,)
        Position of each row in the caller's arrays.
    """

    start: np.ndarray
    stop: np.ndarray
    x: np.ndarray
    offsets: np.ndarray
    order_stop: np.ndarray
    order_start: np.ndarray
    index: np.ndarray

    @classmethod
    def build(
        cls, start: np.ndarray, stop: np.ndarray, stratum: np.ndarray, x: np.ndarray
    ) -> CoxRows:
        """Group rows by stratum (stable) and sort each stratum by stop and by start.

        Parameters
        ----------
        start, stop : array_like of float, shape (n,)
            Days, ``start < stop``.
        stratum : array_like of int, shape (n,)
            Stratum code ``>= 0`` of each row.
        x : array_like of float, shape (n, d)
            Finite covariates.
        """
        start = np.asarray(start, dtype=np.float64)
        stop = np.asarray(stop, dtype=np.float64)
        stratum = np.asarray(stratum, dtype=np.int64)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != start.shape[0]:
            raise ParameterError(
                f"The covariates `x` must have shape (n, d) with n = {start.shape[0]} rows. "
                f"Got {x.shape}."
            )
        bad = ~(np.isfinite(start) & np.isfinite(stop) & (stop > start))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ParameterError(
                f"Every row must have finite days start < stop. Got ({start[i]!r}, "
                f"{stop[i]!r}] at row {i}."
            )
        if not np.all(np.isfinite(x)):
            i = int(np.argwhere(~np.isfinite(x))[0, 0])
            raise ParameterError(f"The covariates must be finite. Got {x[i].tolist()} at row {i}.")
        if stratum.size and stratum.min() < 0:
            raise ParameterError("Stratum codes must be >= 0.")
        index = np.argsort(stratum, kind="stable").astype(np.int64)
        st = stratum[index]
        n_strata = int(st.max()) + 1 if st.size else 0
        offsets = np.zeros(n_strata + 1, dtype=np.int64)
        np.cumsum(np.bincount(st, minlength=n_strata), out=offsets[1:])
        s_start, s_stop = start[index], stop[index]
        order_stop = np.lexsort((-s_stop, st)).astype(np.int64)
        order_start = np.lexsort((-s_start, st)).astype(np.int64)
        return cls(
            _readonly(s_start),
            _readonly(s_stop),
            _readonly(x[index]),
            _readonly(offsets),
            _readonly(order_stop),
            _readonly(order_start),
            _readonly(index),
        )

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.start.size)

    @property
    def d(self) -> int:
        """Number of covariates."""
        return int(self.x.shape[1])

    def take(self, values: np.ndarray) -> np.ndarray:
        """Per-row values given in the caller's order, in this object's row order."""
        return np.ascontiguousarray(np.asarray(values)[self.index])


@dataclass(frozen=True, eq=False)
class CoxResult:
    """A fitted (penalised) Cox model of one cause.

    Attributes
    ----------
    beta : ndarray of float64, shape (d,)
        Log hazard ratios per unit of each covariate.
    covariance : ndarray of float64, shape (d, d)
        Inverse penalised information.
    loglik : float
        Unpenalised log partial likelihood at ``beta``.
    n_events : float
        Weighted number of events.
    converged : bool
    n_iter : int
    """

    beta: np.ndarray
    covariance: np.ndarray
    loglik: float
    n_events: float
    converged: bool
    n_iter: int

    @property
    def se(self) -> np.ndarray:
        """Standard errors, shape (d,)."""
        return np.sqrt(np.maximum(np.diag(self.covariance), 0.0))


def _evaluate(rows: CoxRows, event: np.ndarray, weight: np.ndarray, beta: np.ndarray):
    d = rows.d
    grad = np.zeros(d)
    hess = np.zeros((d, d))
    ll = cox_efron(
        rows.start, rows.stop, event, weight, rows.x, beta, rows.offsets,
        rows.order_stop, rows.order_start, grad, hess,
    )  # fmt: skip
    return float(ll), grad, hess


def _newton(d: int, lam: np.ndarray, beta: np.ndarray, max_iter: int, tol: float):
    """Newton–Raphson with step halving on the ridge-penalised likelihood, as a generator.

    Yields each ``β`` to evaluate and receives ``(ℓ, ∇ℓ, ∇²ℓ)`` there (unpenalised);
    returns ``(β̂, ∇²ℓ_λ(β̂), ℓ(β̂), converged, n_iter)``. One rule for
    :func:`fit_cox` (one weighting) and :func:`fit_cox_draws` (many, evaluated
    together), so both take the same steps.
    """

    lam_diag = np.diag(lam)

    def penalised(b: np.ndarray, ll: float, g: np.ndarray, h: np.ndarray):
        return ll - 0.5 * float((lam * b * b).sum()), g - lam * b, h - lam_diag, ll

    obj, g, h, ll = penalised(beta, *(yield beta))
    converged = d == 0
    n_iter = 0
    for step_no in range(1, max_iter + 1):
        n_iter = step_no
        if d == 0:
            break
        try:
            step = np.linalg.solve(-h, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(-h, g, rcond=None)[0]
        decrement = 0.5 * float(g @ step)
        if not np.isfinite(decrement):
            break
        if decrement < tol:
            converged = True
            break
        scale = 1.0
        while scale > 1e-6:
            cand = beta + scale * step
            c_obj, c_g, c_h, c_ll = penalised(cand, *(yield cand))
            if np.isfinite(c_obj) and c_obj >= obj - 1e-12:
                break
            scale *= 0.5
        else:
            break
        beta, obj, g, h, ll = cand, c_obj, c_g, c_h, c_ll
    return beta, h, ll, converged, n_iter


def cox_loglik(rows: CoxRows, event: np.ndarray, weight: np.ndarray, beta: np.ndarray) -> float:
    """Unpenalised Efron log partial likelihood at ``beta`` (``event``, ``weight`` in row order)."""
    return _evaluate(
        rows,
        np.ascontiguousarray(event, dtype=np.int64),
        np.ascontiguousarray(weight, dtype=np.float64),
        np.ascontiguousarray(beta, dtype=np.float64),
    )[0]


def fit_cox(
    rows: CoxRows,
    event: np.ndarray,
    weight: np.ndarray,
    *,
    penalty: float | np.ndarray = 0.0,
    beta0: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> CoxResult:
    """Maximise the ridge-penalised Efron partial likelihood by Newton–Raphson.

    Parameters
    ----------
    rows : CoxRows
    event : array_like of int, shape (n,)
        1 for an event of the modelled cause at the row's stop, else 0; in the
        order of ``rows`` (use :meth:`CoxRows.take`).
    weight : array_like of float, shape (n,)
        Case weights ≥ 0, in row order.
    penalty : float or array_like, shape (d,)
        Ridge penalty ``λ`` (per coefficient): the objective is
        ``ℓ(β) − Σ λ_a β_a² / 2``.
    beta0 : array_like, shape (d,), optional
        Starting point (default 0).
    max_iter : int
    tol : float
        Stop when the Newton decrement ``gᵀ H⁻¹ g / 2`` is below ``tol``.

    Returns
    -------
    CoxResult
    """
    event = np.ascontiguousarray(event, dtype=np.int64)
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    d = rows.d
    lam = np.broadcast_to(np.asarray(penalty, dtype=np.float64), (d,)).copy()
    beta = np.zeros(d) if beta0 is None else np.array(beta0, dtype=np.float64)
    n_events = float(weight[event == 1].sum())
    steps = _newton(d, lam, beta, max_iter, tol)
    candidate = next(steps)
    try:
        while True:
            candidate = steps.send(_evaluate(rows, event, weight, candidate))
    except StopIteration as done:
        beta, h, ll, converged, n_iter = done.value
    info = -h
    try:
        inv = np.linalg.inv(info) if d else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(info)
    cov = inv
    return CoxResult(
        beta=_readonly(beta),
        covariance=_readonly(np.asarray(cov, dtype=np.float64)),
        loglik=float(ll),
        n_events=n_events,
        converged=bool(converged),
        n_iter=int(n_iter),
    )


def fit_cox_draws(
    rows: CoxRows,
    event: np.ndarray,
    weights: np.ndarray,
    beta0: np.ndarray,
    *,
    penalty: float | np.ndarray = 0.0,
    max_iter: int = 50,
    tol: float = 1e-9,
    threads: int | None = None,
) -> np.ndarray:
    """Coefficients of :func:`fit_cox` for many weightings of the same rows at once.

    Draw ``b``'s coefficients equal ``fit_cox(rows, event, weights[:, b],
    penalty=penalty, beta0=beta0[b], max_iter=max_iter, tol=tol).beta`` bit for bit:
    each draw takes the same Newton steps, and every round evaluates the likelihood
    of all the draws still iterating in one compiled sweep over the sorted rows
    (:func:`~forecast._kernels.cox.cox_efron_draws`), the draws split over threads.

    Parameters
    ----------
    rows : CoxRows
    event : array_like of int, shape (n,)
        As in :func:`fit_cox` (row order).
    weights : ndarray of float, shape (n, B)
        Case weights ≥ 0 of each row (row order) for each of ``B`` draws.
    beta0 : array_like, shape (B, d) or (d,)
        Starting point of each draw (or of all).
    penalty, max_iter, tol
        As in :func:`fit_cox`.
    threads : int, optional
        Threads over the draws (default: Numba's thread count).

    Returns
    -------
    ndarray of float64, shape (B, d)
    """
    event = np.ascontiguousarray(event, dtype=np.int64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] != rows.n or event.shape != (rows.n,):
        raise ParameterError(
            f"`fit_cox_draws` needs `event` of shape ({rows.n},) and `weights` of shape "
            f"({rows.n}, B), one row per Cox row. Got {event.shape} and {weights.shape}."
        )
    n_draws, d = weights.shape[1], rows.d
    lam = np.broadcast_to(np.asarray(penalty, dtype=np.float64), (d,)).copy()
    start = np.broadcast_to(np.asarray(beta0, dtype=np.float64), (n_draws, d))
    steps = [_newton(d, lam, np.array(start[b]), max_iter, tol) for b in range(n_draws)]
    pending = {b: next(s) for b, s in enumerate(steps)}
    out = np.empty((n_draws, d))
    beta = np.zeros((n_draws, d))
    ll = np.zeros(n_draws)
    grad = np.zeros((n_draws, d))
    hess = np.zeros((n_draws, d, d))
    while pending:
        draws = np.fromiter(pending, dtype=np.int64, count=len(pending))
        for b, candidate in pending.items():
            beta[b] = candidate

        def run(lo: int, hi: int, draws: np.ndarray = draws) -> None:
            cox_efron_draws(
                rows.start, rows.stop, event, weights, rows.x, beta, draws[lo:hi],
                rows.offsets, rows.order_stop, rows.order_start, ll, grad, hess,
            )  # fmt: skip

        over_threads(run, draws.size, threads)
        following = {}
        for b in pending:
            try:
                following[b] = steps[b].send((float(ll[b]), grad[b].copy(), hess[b].copy()))
            except StopIteration as done:
                out[b] = done.value[0]
        pending = following
    return out


def breslow_increments(
    rows: CoxRows, event: np.ndarray, weight: np.ndarray, eta: np.ndarray
) -> np.ndarray:
    """Each event row's Breslow increment ``w_i / Σ_{at risk} w exp(η)``, shape (n,), row order.

    For one cause: ``event`` flags the rows ending in an event of that cause,
    ``eta`` (n,) is every row's linear predictor ``xᵀβ`` for it. Summed per
    (stratum, time) the increments are the cause's baseline cumulative hazard
    increments at ``x = 0``; with ``η = 0`` they are the Nelson–Aalen increments
    ``d / Y``. Rows without an event get 0.
    """
    event = np.ascontiguousarray(event, dtype=np.int64)
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    eta = np.ascontiguousarray(eta, dtype=np.float64)
    s0 = np.zeros(rows.n)
    risk_sums_at_events(
        rows.start, rows.stop, event, weight, eta, rows.offsets, rows.order_stop,
        rows.order_start, s0,
    )  # fmt: skip
    out = np.zeros(rows.n)
    ok = (event != 0) & (s0 > 0)
    out[ok] = weight[ok] / s0[ok]
    return out
