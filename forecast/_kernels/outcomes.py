"""Exact per-deal outcome distributions over horizon quarters (no sampling).

With the sojourn clock reset at every stage entry, what happens after a deal's
first exit does not depend on the deal. So, per (draw, segment):

1. :func:`fresh_win_density` solves the renewal equations once on the day grid:
   ``W[k, d]`` = P(win in day bin ``d`` after a fresh entry into open stage ``k`` at
   bin 0);
2. :func:`deal_quarter_probs` conditions each deal's first exit on its age in stage
   and combines it with the cumulative sums of ``W`` at the few day bins where
   quarters and quarter-end windows start or end;
3. :func:`new_deal_quarter_probs` does the same for deals created uniformly within
   each horizon quarter.

Discretisation (shared with the NumPy oracle): day bins of one day, as-of at the
start of bin 0, ``dens[k, j, l] = P(l < T <= l + 1, J = j)``. A fresh entry at day
bin ``t`` that is won in sojourn bin ``l`` is won in day bin ``t + l``; one that
moves in sojourn bin ``l`` enters its next stage at day bin ``t + l`` or ``t + l + 1``
with probability 1/2 each (the midpoint rule: an entry anywhere in its day plus a
sojourn anywhere in its bin ends, on average, a whole bin later than the two left
ends). A deal aged ``a`` days in stage (rounded to the nearest day) that exits in
sojourn bin ``l >= a`` does so at day bin ``l - a``, and a new deal is created at an
instant uniform within its quarter. Always moving at ``t + l`` instead made every
transition half a day early: on the synthetic generator, the grid then put 3–4 %
too many wins into the quarter of creation and too few into the next one.

Quarter-end pull-in: a raw win in the first ``window`` day bins of quarter ``q >= 1``
(quarters ``1 .. H``, where quarter ``H`` is the one just after the horizon) moves,
with probability ``pull_in``, into the last ``window`` day bins of quarter ``q - 1``.
Quarter 0 is the current quarter; its predecessor is closed, so nothing moves out
of it. The quarter-end (QE) window of quarter ``q`` is its last ``window`` day bins
(all of quarter 0 if it has fewer left). Callers guarantee that quarters ``1 .. H-1``
are at least ``2 * window`` days long, so the early and late windows of a quarter
do not overlap.

All kernels write into preallocated outputs and return a status code (0 = success).
"""

from __future__ import annotations

import numpy as np

from forecast._kernels._options import jit, jit_inline
from forecast._kernels.tilt import tilt_pieces

__all__ = [
    "STATUS_OK",
    "STATUS_SINGULAR",
    "deal_quarter_probs",
    "deal_quarter_probs_tilted",
    "fresh_win_density",
    "new_deal_quarter_probs",
    "outcome_block",
]

STATUS_OK = 0
#: The system ``(I - H0) W = ...`` of same-day moves between open stages is singular;
#: impossible for valid sub-densities (rows summing to at most 1).
STATUS_SINGULAR = 1


@jit_inline
def _invert(a, out):
    """Gauss–Jordan inverse with partial pivoting of a small (K, K) matrix; status code."""
    n = a.shape[0]
    m = a.copy()
    for i in range(n):
        for j in range(n):
            out[i, j] = 1.0 if i == j else 0.0
    for col in range(n):
        piv = col
        best = abs(m[col, col])
        for r in range(col + 1, n):
            if abs(m[r, col]) > best:
                best = abs(m[r, col])
                piv = r
        if not best > 1e-12:
            return STATUS_SINGULAR
        if piv != col:
            for j in range(n):
                tmp = m[col, j]
                m[col, j] = m[piv, j]
                m[piv, j] = tmp
                tmp = out[col, j]
                out[col, j] = out[piv, j]
                out[piv, j] = tmp
        inv_p = 1.0 / m[col, col]
        for j in range(n):
            m[col, j] *= inv_p
            out[col, j] *= inv_p
        for r in range(n):
            if r != col:
                f = m[r, col]
                if f != 0.0:
                    for j in range(n):
                        m[r, j] -= f * m[col, j]
                        out[r, j] -= f * out[col, j]
    return STATUS_OK


@jit_inline
def _move_kernel(dens):
    """Day-bin lag of the next entry after a move: ``h[k, j, m]``, shape (K, K, L + 1).

    A move in sojourn bin ``l`` (``l < T <= l + 1``) from an entry anywhere in its day
    bin lands, to second order, half in bin ``+l`` and half in bin ``+l + 1``:
    ``h[k, j, m] = (dens[k, j, m] + dens[k, j, m - 1]) / 2`` (midpoint rule).
    """
    n_open = dens.shape[0]
    n_bins = dens.shape[2]
    h = np.zeros((n_open, n_open, n_bins + 1))
    for k in range(n_open):
        for j in range(n_open):
            for lag in range(n_bins):
                half = 0.5 * dens[k, j, lag]
                h[k, j, lag] += half
                h[k, j, lag + 1] += half
    return h


@jit
def fresh_win_density(dens, n_days, out):
    """Win-time density after a fresh entry into each open stage, by renewal.

    Solves, for ``d = 0 .. n_days - 1``::

        W[k, d] = dens[k, K, d] + sum_{j < K} sum_{m = 0..d} h[k, j, m] * W[j, d - m]

    with ``h`` the move kernel of :func:`_move_kernel` (each move lands half in the
    sojourn bin and half in the next one). The ``m = 0`` term makes each day
    implicit: ``(I - H0) W[:, d] = rhs`` with ``H0[k, j] = dens[k, j, 0] / 2``,
    which is strictly diagonally dominant (rows of ``dens`` sum to at most 1), so
    same-day loops between open stages are always solvable. Moves backwards (to
    earlier stages) are allowed.

    Parameters
    ----------
    dens : ndarray of float64, shape (K, C, L)
        Exit sub-densities of one (draw, segment); ``C = K + 3``, destination ``K`` is
        won. Bins ``>= L`` are taken as zero.
    n_days : int64
        Number of day bins to compute.
    out : ndarray of float64, shape (K, n_days)
        Receives ``W``.

    Returns
    -------
    status : int64
        :data:`STATUS_OK`, or :data:`STATUS_SINGULAR` if ``dens`` is not a valid
        sub-density (rows summing to more than 1 can make ``I - H0`` singular).
    """
    n_open = dens.shape[0]
    n_bins = dens.shape[2]
    won = n_open
    h = _move_kernel(dens)
    a = np.empty((n_open, n_open))
    for k in range(n_open):
        for j in range(n_open):
            a[k, j] = (1.0 if k == j else 0.0) - h[k, j, 0]
    a_inv = np.empty((n_open, n_open))
    status = _invert(a, a_inv)
    if status != STATUS_OK:
        return status
    # h with the stage of origin innermost: each day's K sums advance together (the
    # additions of each sum keep their order: over j, then over the lag)
    h_t = np.empty((n_open, n_bins + 1, n_open))
    for k in range(n_open):
        for j in range(n_open):
            for lag in range(n_bins + 1):
                h_t[j, lag, k] = h[k, j, lag]
    rhs = np.empty(n_open)
    for d in range(n_days):
        for k in range(n_open):
            rhs[k] = dens[k, won, d] if d < n_bins else 0.0
        l_max = min(d, n_bins)
        for j in range(n_open):
            for lag in range(1, l_max + 1):
                w = out[j, d - lag]
                for k in range(n_open):
                    rhs[k] += h_t[j, lag, k] * w
        for k in range(n_open):
            acc = 0.0
            for j in range(n_open):
                acc += a_inv[k, j] * rhs[j]
            out[k, d] = acc if acc > 0.0 else 0.0
    return STATUS_OK


@jit_inline
def _breakpoints(qb, window):
    """Day bins at which the raw win-time CDF is needed, shape (3H + 1,).

    Layout: ``[qb[0..H]``, ``qb[q] + window`` for ``q = 1..H``,
    ``max(qb[q+1] - window, qb[q])`` for ``q = 0..H-1]``.
    """
    n_q = qb.shape[0] - 1
    x = np.empty(3 * n_q + 1, dtype=np.int64)
    for i in range(n_q + 1):
        x[i] = qb[i]
    for q in range(1, n_q + 1):
        x[n_q + q] = qb[q] + window
    for q in range(n_q):
        x[2 * n_q + 1 + q] = max(qb[q + 1] - window, qb[q])
    return x


@jit_inline
def _quarters_from_cdf(cdf, n_q, pull_in, p_win_row, p_qe_row):
    """Apply the pull-in to raw-CDF values at :func:`_breakpoints`; write (H,) rows."""
    for q in range(n_q):
        raw = cdf[q + 1] - cdf[q]
        early_next = cdf[n_q + q + 1] - cdf[q + 1]  # first `window` bins of q + 1
        late = cdf[q + 1] - cdf[2 * n_q + 1 + q]  # last `window` bins of q
        p = raw + pull_in * early_next
        if q >= 1:
            p -= pull_in * (cdf[n_q + q] - cdf[q])  # pulled out of q into q - 1
        qe = late + pull_in * early_next
        if p > 0.0:
            p_win_row[q] = p
            r = qe / p
            p_qe_row[q] = 1.0 if r > 1.0 else (r if r > 0.0 else 0.0)
        else:
            p_win_row[q] = 0.0
            p_qe_row[q] = 0.0


@jit_inline
def _fresh_cumsum(fresh):
    """``CW[k, m] = sum_{t < m} W[k, t]``, shape (K, n_days + 1)."""
    n_open, n_days = fresh.shape
    cw = np.zeros((n_open, n_days + 1))
    for k in range(n_open):
        acc = 0.0
        for t in range(n_days):
            acc += fresh[k, t]
            cw[k, t + 1] = acc
    return cw


@jit
def deal_quarter_probs(first, fresh, curve, age, qb, window, pull_in, p_win, p_qe):
    """Per-deal P(win in each horizon quarter) and P(QE window | win in quarter).

    For a deal whose current stage has exit sub-densities ``f = first[curve]``, aged
    ``a`` days in stage, the raw win-time CDF is::

        F(x) = [ sum_{e < x} f[K, a + e]
                 + sum_{j < K} sum_{e < x} f[j, a + e]
                       * (CW[j, x - e] + CW[j, x - e - 1]) / 2 ] / S(a)

    with ``S(a) = P(T > a)`` (the mass of bins ``>= a`` plus the mass beyond ``L``) and
    ``CW`` the cumulative sum of :func:`fresh_win_density` (``CW[j, 0] = 0``; the
    average is the midpoint rule for where a move lands). It is evaluated only at
    the ``3H + 1`` breakpoints, so the work per deal is O(n_days × K × H).

    The first exit is read from a table of curves rather than from the segment's
    stages directly, so that a deal's own exit curve for its current stage (e.g. from
    its covariates) takes part like the segment's: only the later stages, entered
    fresh, must be the segment's (``fresh``).

    Parameters
    ----------
    first : ndarray of float64, shape (n_curves, C, L)
        Exit sub-densities of the deals' current stages; the segment's own stages
        (``dens`` of one draw and segment, ``(K, C, L)``) with ``curve = stage``.
    fresh : ndarray of float64, shape (K, n_days)
        :func:`fresh_win_density` of the segment with ``n_days = qb[H] + window``.
    curve : ndarray of int64, shape (M,)
        Row of ``first`` of each deal, ``0 <= curve < n_curves``.
    age : ndarray of int64, shape (M,)
        Days in stage at the as-of instant, rounded to the nearest day;
        ``age + n_days <= L``.
    qb : ndarray of int64, shape (H + 1,)
        Quarter boundaries in day bins, ``qb[0] = 0``.
    window : int64
        Quarter-end window, days.
    pull_in : float64
        Probability that a win in the first ``window`` days of a quarter moves into the
        last ``window`` days of the previous one.
    p_win, p_qe : ndarray of float64, shape (M, H)
        Outputs: P(win in quarter q) after pull-in; P(win in the QE window of q | win in q).

    Returns
    -------
    status : int64
        :data:`STATUS_OK`.
    """
    n_open = fresh.shape[0]
    n_curves = first.shape[0]
    n_bins = first.shape[2]
    won = n_open
    n_q = qb.shape[0] - 1
    cw = _fresh_cumsum(fresh)
    xs = _breakpoints(qb, window)
    n_x = xs.shape[0]
    # Survival S(a) as suffix sums plus the mass beyond L (no cancellation for old deals).
    surv = np.zeros((n_curves, n_bins + 1))
    for k in range(n_curves):
        acc = 0.0
        for lag in range(n_bins - 1, -1, -1):
            for j in range(first.shape[1]):
                acc += first[k, j, lag]
            surv[k, lag] = acc
        beyond = 1.0 - acc
        if beyond < 0.0:
            beyond = 0.0
        for lag in range(n_bins + 1):
            surv[k, lag] += beyond
    # the breakpoints in increasing order: at sojourn bin e the sums of the breakpoints
    # beyond e advance together (each sum keeps the order of its additions)
    # (insertion sort of the 3H + 1 breakpoints: tied breakpoints get equal sums, so any
    # order sorting them gives the same bits; np.argsort would compile a whole quicksort)
    order = np.empty(n_x, dtype=np.int64)
    xs_sorted = np.empty(n_x, dtype=np.int64)
    for ix in range(n_x):
        v = xs[ix]
        pos = ix
        while pos > 0 and xs_sorted[pos - 1] > v:
            xs_sorted[pos] = xs_sorted[pos - 1]
            order[pos] = order[pos - 1]
            pos -= 1
        xs_sorted[pos] = v
        order[pos] = ix
    x_max = xs_sorted[n_x - 1]
    # s[j, m] = CW[j, m] + CW[j, m - 1]: where a move in bin e lands, before the factor 1/2
    s_cw = np.zeros((n_open, x_max + 1))
    for j in range(n_open):
        for m in range(1, min(x_max, cw.shape[1] - 1) + 1):
            s_cw[j, m] = cw[j, m] + cw[j, m - 1]
    acc = np.empty(n_x)
    cdf = np.empty(n_x)
    for i in range(curve.shape[0]):
        k = curve[i]
        a = age[i]
        s_a = surv[k, a]
        if not s_a > 1e-300:
            for q in range(n_q):
                p_win[i, q] = 0.0
                p_qe[i, q] = 0.0
            continue
        acc[:] = 0.0
        first_active = 0
        for e in range(x_max):
            while xs_sorted[first_active] <= e:
                first_active += 1
            v = first[k, won, a + e]
            for ix in range(first_active, n_x):
                acc[ix] += v
        for j in range(n_open):
            first_active = 0
            for e in range(x_max):
                while xs_sorted[first_active] <= e:
                    first_active += 1
                f = first[k, j, a + e] * 0.5
                for ix in range(first_active, n_x):
                    acc[ix] += f * s_cw[j, xs_sorted[ix] - e]
        for ix in range(n_x):
            cdf[order[ix]] = acc[ix] / s_a
        _quarters_from_cdf(cdf, n_q, pull_in, p_win[i], p_qe[i])
    return STATUS_OK


def outcome_block(
    dens,
    n_days,
    qb,
    window,
    pull_in,
    entry_mix,
    group_offsets,
    group_stage,
    group_age,
    b0,
    b1,
    fresh,
    p_win,
    p_qe,
    new_pmf,
    new_qe,
):
    """Outcome probabilities of every (draw, segment) with draws ``b0 <= b < b1``.

    Per draw and segment: :func:`fresh_win_density`, then :func:`deal_quarter_probs`
    for the segment's distinct (stage, age) groups and :func:`new_deal_quarter_probs`.

    A plain Python loop over the three kernels (each releases the GIL): a compiled
    loop would compile all three a second time inside itself, for a loop of B × G
    iterations whose every step is long.

    Parameters
    ----------
    dens : ndarray of float64, shape (B, G, K, C, L)
    n_days : int64
    qb : ndarray of int64, shape (H + 1,)
    window : ndarray of int64, shape (G,)
    pull_in : ndarray of float64, shape (B, G)
    entry_mix : ndarray of float64, shape (B, G, K)
    group_offsets : ndarray of int64, shape (G + 1,)
        Segment ``g`` has the groups ``group_offsets[g] .. group_offsets[g + 1] - 1``.
    group_stage, group_age : ndarray of int64, shape (U,)
        Stage and age of each group.
    b0, b1 : int
    fresh : ndarray of float64, shape (B, K, n_days)
        Scratch for the win-time densities (each draw its own).
    p_win, p_qe : ndarray of float64, shape (B, U, H)
        Outputs per group.
    new_pmf, new_qe : ndarray of float64, shape (B, G, H, H)
        Outputs for new deals.

    Returns
    -------
    status : int
        :data:`STATUS_OK`, or ``1 + b * G + g`` of the first (draw, segment) whose
        renewal system is singular.
    """
    n_seg = dens.shape[1]
    for b in range(int(b0), int(b1)):
        for g in range(n_seg):
            status = fresh_win_density(dens[b, g], n_days, fresh[b])
            if status != STATUS_OK:
                return 1 + b * n_seg + g
            lo = int(group_offsets[g])
            hi = int(group_offsets[g + 1])
            if hi > lo:
                deal_quarter_probs(
                    dens[b, g],
                    fresh[b],
                    group_stage[lo:hi],
                    group_age[lo:hi],
                    qb,
                    window[g],
                    pull_in[b, g],
                    p_win[b, lo:hi],
                    p_qe[b, lo:hi],
                )
            new_deal_quarter_probs(
                fresh[b], entry_mix[b, g], qb, window[g], pull_in[b, g], new_pmf[b, g], new_qe[b, g]
            )
    return STATUS_OK


@jit
def new_deal_quarter_probs(fresh, entry_mix, qb, window, pull_in, pmf, p_qe):
    """Win-quarter distribution of a deal created uniformly within each horizon quarter.

    A deal created in quarter ``c`` is created at an instant uniform on
    ``[qb[c], qb[c+1])`` days (from day 0 for the current quarter) and enters open
    stage ``k`` with probability ``entry_mix[k]``.

    Parameters
    ----------
    fresh : ndarray of float64, shape (K, n_days)
        :func:`fresh_win_density` with ``n_days = qb[H] + window``.
    entry_mix : ndarray of float64, shape (K,)
        Entry-stage probabilities (sum 1).
    qb : ndarray of int64, shape (H + 1,)
    window : int64
        Quarter-end window, days.
    pull_in : float64
        Pull-in probability.
    pmf : ndarray of float64, shape (H, H)
        Output ``pmf[c, q]`` = P(win in quarter q | created in quarter c); rows sum to
        P(win within the horizon) <= 1.
    p_qe : ndarray of float64, shape (H, H)
        Output P(win in the QE window of q | created in c, win in q).

    Returns
    -------
    status : int64
        :data:`STATUS_OK`.
    """
    n_open, n_days = fresh.shape
    n_q = qb.shape[0] - 1
    # Mixture CDF CWm[m] = P(fresh win bin < m), then its cumulative sum CCW.
    cwm = np.zeros(n_days + 1)
    acc = 0.0
    for t in range(n_days):
        for k in range(n_open):
            acc += entry_mix[k] * fresh[k, t]
        cwm[t + 1] = acc
    ccw = np.zeros(n_days + 2)
    acc = 0.0
    for m in range(n_days + 1):
        acc += cwm[m]
        ccw[m + 1] = acc
    xs = _breakpoints(qb, window)
    cdf = np.empty(xs.shape[0])
    for c in range(n_q):
        s0 = qb[c]
        s1 = qb[c + 1]
        n_s = s1 - s0
        for ix in range(xs.shape[0]):
            # Creation at s + U (U uniform in the day): P(win bin < x) is the midpoint
            # average of the creation at bins s and s + 1, so
            # cdf(x) = (A(x) + A(x - 1)) / 2 with A(y) = (1/n_s) sum_{s0 <= s < s1} CWm[y - s]
            #        = (CCW[y - s0 + 1] - CCW[y - s1 + 1]) / n_s.
            x = xs[ix]
            total = 0.0
            for y in range(x - 1, x + 1):
                hi = min(max(y - s0 + 1, 0), n_days + 1)
                lo = min(max(y - s1 + 1, 0), n_days + 1)
                total += ccw[hi] - ccw[lo]
            cdf[ix] = 0.5 * total / n_s if n_s > 0 else 0.0
        _quarters_from_cdf(cdf, n_q, pull_in, pmf[c], p_qe[c])
    return STATUS_OK


@jit
def deal_quarter_probs_tilted(
    hazards, cw_profiles, stage, age, ratios, starts, profile, qb, window, pull_in, p_win, p_qe
):
    """Per-deal quarter probabilities when each deal has its own exit hazards.

    Deal ``i`` in open stage ``k`` aged ``a`` days has, in its current stage, the
    baseline's discrete cause-specific hazards ``hazards[k]`` times its hazard ratios,
    which change over time as its covariates are expected to change
    (``ratios[i, p]`` from ``starts[i, p]`` days after the as-of instant,
    :func:`forecast._kernels.tilt.tilt_pieces`), from bin ``a`` on (so its first exit
    is conditioned on its age); after a move it enters the next stage fresh with the
    win-time distribution of its covariate profile ``profile[i]``
    (``cw_profiles[profile[i]]``, cumulative sums of :func:`fresh_win_density` of the
    profile's tilted densities). The raw win-time CDF at the breakpoints is

        F(x) = sum_{e < x} f[K, e] + sum_{j < K} sum_{e < x} f[j, e] (CW[j, x - e] + CW[j, x - e - 1]) / 2

    with ``f`` the deal's tilted first-exit sub-densities; then the pull-in as in
    :func:`deal_quarter_probs`.

    Parameters
    ----------
    hazards : ndarray of float64, shape (K, C, L)
        :func:`forecast._kernels.tilt.baseline_hazards` of each stage's baseline
        sub-densities (one draw and segment).
    cw_profiles : ndarray of float64, shape (P, K, n_days + 1)
        Per covariate profile, the cumulative fresh-entry win-time distribution.
    stage, age : ndarray of int64, shape (M,)
        Open stage and whole days in stage; ``age + n_days <= L``.
    ratios : ndarray of float64, shape (M, Q, C)
        Each deal's hazard ratios in its current stage, per piece of time.
    starts : ndarray of float64, shape (M, Q)
        Days after the as-of instant at which each piece starts (``starts[:, 0] = 0``).
    profile : ndarray of int64, shape (M,)
        Each deal's profile for the stages after its next move.
    qb, window, pull_in, p_win, p_qe
        As in :func:`deal_quarter_probs`.

    Returns
    -------
    status : int64
        :data:`STATUS_OK`.
    """
    n_open = hazards.shape[0]
    n_codes = hazards.shape[1]
    won = n_open
    n_q = qb.shape[0] - 1
    n_days = cw_profiles.shape[2] - 1
    xs = _breakpoints(qb, window)
    n_x = xs.shape[0]
    for i in range(stage.shape[0]):
        k = stage[i]
        p = profile[i]
        f = np.empty((n_codes, n_days))
        tilt_pieces(hazards[k], ratios[i], starts[i], age[i], f)
        cdf = np.empty(n_x)
        for ix in range(n_x):
            x = xs[ix]
            if x > n_days:
                x = n_days
            acc = 0.0
            for e in range(x):
                acc += f[won, e]
            for j in range(n_open):
                for e in range(x):
                    acc += f[j, e] * 0.5 * (cw_profiles[p, j, x - e] + cw_profiles[p, j, x - e - 1])
            cdf[ix] = acc
        _quarters_from_cdf(cdf, n_q, pull_in, p_win[i], p_qe[i])
    return STATUS_OK
