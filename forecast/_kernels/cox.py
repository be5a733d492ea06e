"""Cox partial likelihood on counting-process rows: Efron ties, case weights, strata.

Rows are ``(start, stop]`` intervals on the time-in-stage clock (days) with a
covariate vector ``x`` that holds over the interval, a case weight ``w`` and an
event flag at ``stop``. Row ``i`` is at risk at ``t`` when ``start_i < t <= stop_i``.
Strata are contiguous row ranges ``[offsets[s], offsets[s + 1])``; each stratum has
its own risk sets (its own baseline hazard), the coefficients are shared.

Ties use Efron's approximation with weights as in lifelines'
``CoxPHFitter``/``CoxTimeVaryingFitter``: at a time with ``c`` tied events (rows),
tie sums ``T0 = Σ w φ``, ``T1 = Σ w φ x``, ``T2 = Σ w φ x xᵀ`` over the tied rows and
risk sums ``S0, S1, S2`` over the risk set (``φ = exp(xᵀβ)``), the contribution is

    ℓ += Σ_tied w xᵀβ − ā Σ_{l<c} log(S0 − (l/c) T0),   ā = Σ_tied w / c,

with the matching gradient and Hessian. Risk sums are kept as running sums over
the rows sorted by ``stop`` (added) and by ``start`` (removed), so one evaluation
is ``O(n d²)`` for ``n`` rows and ``d`` covariates. ``docs/model.md`` ("Deal
covariates") gives the model.
"""

from __future__ import annotations

import numpy as np

from forecast._kernels._options import jit

__all__ = ["cox_efron", "cox_efron_draws", "risk_sums_at_events"]


@jit
def cox_efron(start, stop, event, weight, x, beta, offsets, order_stop, order_start, grad, hess):
    """Efron log partial likelihood, its gradient and Hessian at ``beta``.

    Parameters
    ----------
    start, stop : ndarray of float64, shape (n,)
        Row intervals ``(start, stop]`` in days, ``start < stop``.
    event : ndarray of int64, shape (n,)
        1 when the row ends with an event of the modelled cause, else 0.
    weight : ndarray of float64, shape (n,)
        Case weights ≥ 0.
    x : ndarray of float64, shape (n, d)
        Covariates.
    beta : ndarray of float64, shape (d,)
    offsets : ndarray of int64, shape (S + 1,)
        Stratum ``s`` is rows ``offsets[s] .. offsets[s+1]-1``.
    order_stop, order_start : ndarray of int64, shape (n,)
        Within each stratum's range, the row indices sorted by ``stop`` and by
        ``start`` descending (global indices).
    grad : ndarray of float64, shape (d,)
        Output gradient.
    hess : ndarray of float64, shape (d, d)
        Output Hessian (negative definite at a maximum).

    Returns
    -------
    float
        The log partial likelihood.
    """
    n, d = x.shape
    for a in range(d):
        grad[a] = 0.0
        for b in range(d):
            hess[a, b] = 0.0
    eta = np.empty(n)
    for i in range(n):
        acc = 0.0
        for a in range(d):
            acc += x[i, a] * beta[a]
        eta[i] = acc
    ll = 0.0
    s1 = np.zeros(d)
    s2 = np.zeros((d, d))
    t1 = np.zeros(d)
    t2 = np.zeros((d, d))
    xw = np.zeros(d)
    num = np.zeros(d)
    for s in range(offsets.shape[0] - 1):
        lo = offsets[s]
        hi = offsets[s + 1]
        s0 = 0.0
        for a in range(d):
            s1[a] = 0.0
            for b in range(d):
                s2[a, b] = 0.0
        q = lo  # pointer into order_start (removals)
        p = lo
        while p < hi:
            t = stop[order_stop[p]]
            # add every row with stop == t (rows with a later stop are in already)
            p_end = p
            while p_end < hi and stop[order_stop[p_end]] == t:
                i = order_stop[p_end]
                wp = weight[i] * np.exp(eta[i])
                s0 += wp
                for a in range(d):
                    s1[a] += wp * x[i, a]
                    for b in range(d):
                        s2[a, b] += wp * x[i, a] * x[i, b]
                p_end += 1
            # remove every row with start >= t (not at risk at t)
            while q < hi and start[order_start[q]] >= t:
                i = order_start[q]
                wp = weight[i] * np.exp(eta[i])
                s0 -= wp
                for a in range(d):
                    s1[a] -= wp * x[i, a]
                    for b in range(d):
                        s2[a, b] -= wp * x[i, a] * x[i, b]
                q += 1
            # tied events at t
            c = 0
            wsum = 0.0
            tie0 = 0.0
            for a in range(d):
                t1[a] = 0.0
                xw[a] = 0.0
                for b in range(d):
                    t2[a, b] = 0.0
            for r in range(p, p_end):
                i = order_stop[r]
                if event[i] == 1:
                    c += 1
                    wsum += weight[i]
                    wp = weight[i] * np.exp(eta[i])
                    tie0 += wp
                    ll += weight[i] * eta[i]
                    for a in range(d):
                        xw[a] += weight[i] * x[i, a]
                        t1[a] += wp * x[i, a]
                        for b in range(d):
                            t2[a, b] += wp * x[i, a] * x[i, b]
            if c > 0:
                avg = wsum / c
                for a in range(d):
                    grad[a] += xw[a]
                for tie in range(c):
                    f = tie / c
                    den = s0 - f * tie0
                    if not den > 0.0:
                        continue
                    ll -= avg * np.log(den)
                    for a in range(d):
                        num[a] = (s1[a] - f * t1[a]) / den
                        grad[a] -= avg * num[a]
                    for a in range(d):
                        for b in range(d):
                            hess[a, b] += avg * (num[a] * num[b] - (s2[a, b] - f * t2[a, b]) / den)
            p = p_end
    return ll


@jit
def risk_sums_at_events(start, stop, event, weight, eta, offsets, order_stop, order_start, out):
    """Breslow risk sums ``Σ_{at risk} w exp(η)`` at the stop time of every event row.

    Arguments as in :func:`cox_efron`, with ``eta`` (n,) the linear predictor of each
    row instead of ``x`` and ``beta``; ``event`` may flag events of several causes
    (any value ≠ 0). ``out`` (n,) receives, for each event row, the risk sum of its
    stratum at its stop time (0 for the other rows).
    """
    for i in range(out.shape[0]):
        out[i] = 0.0
    for s in range(offsets.shape[0] - 1):
        lo = offsets[s]
        hi = offsets[s + 1]
        s0 = 0.0
        q = lo
        p = lo
        while p < hi:
            t = stop[order_stop[p]]
            p_end = p
            while p_end < hi and stop[order_stop[p_end]] == t:
                i = order_stop[p_end]
                s0 += weight[i] * np.exp(eta[i])
                p_end += 1
            while q < hi and start[order_start[q]] >= t:
                i = order_start[q]
                s0 -= weight[i] * np.exp(eta[i])
                q += 1
            for r in range(p, p_end):
                i = order_stop[r]
                if event[i] != 0:
                    out[i] = s0
            p = p_end
    return 0


@jit
def cox_efron_draws(
    start, stop, event, weight, x, beta, draws, offsets, order_stop, order_start, ll, grad, hess
):
    """:func:`cox_efron` of several weightings of the same rows in one sweep.

    Column ``b`` of ``weight`` holds the case weights of draw ``b``, ``beta[b]`` its
    coefficients; the draws listed in ``draws`` are evaluated and their outputs
    written. Each draw's numbers are computed in the same order as :func:`cox_efron`
    computes them (same bits); the rows, their order and ``x`` are read once for all
    the draws, and each row's ``w exp(xᵀβ)`` is computed once per draw (a scratch
    array of ``n × m`` floats).

    Parameters
    ----------
    start, stop, event, x, offsets, order_stop, order_start
        As in :func:`cox_efron`.
    weight : ndarray of float64, shape (n, B)
        Case weights ≥ 0 of each row (row-major: a row's draws are adjacent).
    beta : ndarray of float64, shape (B, d)
    draws : ndarray of int64, shape (m,)
        The draws to evaluate (distinct, in ``0 .. B-1``).
    ll : ndarray of float64, shape (B,)
        Output log partial likelihood of each evaluated draw.
    grad : ndarray of float64, shape (B, d)
        Output gradients.
    hess : ndarray of float64, shape (B, d, d)
        Output Hessians.

    Returns
    -------
    int
        0.
    """
    n, d = x.shape
    m = draws.shape[0]
    # running sums with the draw index last: the per-row updates are elementwise loops
    # over the draws (each draw's sums see the same operations in the same order)
    s0 = np.zeros(m)
    s1 = np.zeros((d, m))
    s2 = np.zeros((d, d, m))
    wsum = np.zeros(m)
    tie0 = np.zeros(m)
    t1 = np.zeros((d, m))
    t2 = np.zeros((d, d, m))
    xw = np.zeros((d, m))
    lls = np.zeros(m)
    gs = np.zeros((d, m))
    hs = np.zeros((d, d, m))
    num = np.zeros(d)
    bt = np.empty((d, m))
    for j in range(m):
        for a in range(d):
            bt[a, j] = beta[draws[j], a]
    # w exp(xᵀβ) and xᵀβ of every row and draw, computed once (as cox_efron computes them)
    wp_all = np.empty((n, m))
    eta = np.empty(m)
    for i in range(n):
        for j in range(m):
            eta[j] = 0.0
        for a in range(d):
            xa = x[i, a]
            for j in range(m):
                eta[j] += xa * bt[a, j]
        for j in range(m):
            wp_all[i, j] = weight[i, draws[j]] * np.exp(eta[j])
    for s in range(offsets.shape[0] - 1):
        lo = offsets[s]
        hi = offsets[s + 1]
        s0[:] = 0.0
        s1[:] = 0.0
        s2[:] = 0.0
        q = lo
        p = lo
        while p < hi:
            t = stop[order_stop[p]]
            p_end = p
            while p_end < hi and stop[order_stop[p_end]] == t:
                i = order_stop[p_end]
                for j in range(m):
                    s0[j] += wp_all[i, j]
                for a in range(d):
                    xa = x[i, a]
                    for j in range(m):
                        s1[a, j] += wp_all[i, j] * xa
                    for c2 in range(d):
                        xc = x[i, c2]
                        for j in range(m):
                            s2[a, c2, j] += wp_all[i, j] * xa * xc
                p_end += 1
            while q < hi and start[order_start[q]] >= t:
                i = order_start[q]
                for j in range(m):
                    s0[j] -= wp_all[i, j]
                for a in range(d):
                    xa = x[i, a]
                    for j in range(m):
                        s1[a, j] -= wp_all[i, j] * xa
                    for c2 in range(d):
                        xc = x[i, c2]
                        for j in range(m):
                            s2[a, c2, j] -= wp_all[i, j] * xa * xc
                q += 1
            # tied events at t (the event flags are the same for every draw)
            c = 0
            for r in range(p, p_end):
                if event[order_stop[r]] == 1:
                    c += 1
            if c > 0:
                wsum[:] = 0.0
                tie0[:] = 0.0
                t1[:] = 0.0
                xw[:] = 0.0
                t2[:] = 0.0
                for r in range(p, p_end):
                    i = order_stop[r]
                    if event[i] != 1:
                        continue
                    for j in range(m):
                        eta[j] = 0.0
                    for a in range(d):
                        xa = x[i, a]
                        for j in range(m):
                            eta[j] += xa * bt[a, j]
                    for j in range(m):
                        w = weight[i, draws[j]]
                        wsum[j] += w
                        tie0[j] += wp_all[i, j]
                        lls[j] += w * eta[j]
                    for a in range(d):
                        xa = x[i, a]
                        for j in range(m):
                            xw[a, j] += weight[i, draws[j]] * xa
                            t1[a, j] += wp_all[i, j] * xa
                        for c2 in range(d):
                            xc = x[i, c2]
                            for j in range(m):
                                t2[a, c2, j] += wp_all[i, j] * xa * xc
                for j in range(m):
                    avg = wsum[j] / c
                    for a in range(d):
                        gs[a, j] += xw[a, j]
                    for tie in range(c):
                        f = tie / c
                        den = s0[j] - f * tie0[j]
                        if not den > 0.0:
                            continue
                        lls[j] -= avg * np.log(den)
                        for a in range(d):
                            num[a] = (s1[a, j] - f * t1[a, j]) / den
                            gs[a, j] -= avg * num[a]
                        for a in range(d):
                            for c2 in range(d):
                                hs[a, c2, j] += avg * (
                                    num[a] * num[c2] - (s2[a, c2, j] - f * t2[a, c2, j]) / den
                                )
            p = p_end
    for j in range(m):
        bj = draws[j]
        ll[bj] = lls[j]
        for a in range(d):
            grad[bj, a] = gs[a, j]
            for c2 in range(d):
                hess[bj, a, c2] = hs[a, c2, j]
    return 0
