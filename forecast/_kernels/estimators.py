"""Compiled estimators for the parameter draws of a fit (Bayesian bootstrap).

A parameter draw re-weights deals that are already validated, labelled and sorted
(:class:`forecast.fit.data.FitData`), so each of its estimators is one pass over
arrays laid out once per fit. These kernels compute them for a block of draws at
once; they never allocate per draw beyond small scratch arrays and never raise.

- :func:`aalen_johansen_summaries` — per draw and stratum, the eventual destination
  shares and the median sojourn of the weighted Aalen–Johansen fit (the two numbers
  a draw keeps of the exit curves, ``docs/model.md`` sections 2 and 11);
- :func:`exit_cell_sums` and :func:`logistic_shifts` — per draw and quarter, the
  shift of the win log-odds of the terminal exits against their baselines
  (``docs/model.md`` section 10), from weights aggregated over (quarter, baseline
  stratum) cells.

Callers split the work over threads (the kernels release the GIL): the strata of
:func:`aalen_johansen_summaries`, the draws of :func:`logistic_shifts`.
"""

from __future__ import annotations

import math

import numpy as np

from forecast._kernels._options import jit

__all__ = ["aalen_johansen_summaries", "exit_cell_sums", "logistic_shifts"]


#: Spell rows whose weights :func:`aalen_johansen_summaries` gathers at once (at least).
_CHUNK = 2048

#: Weights (rows × draws) that :func:`aalen_johansen_summaries` gathers at once (at most,
#: beyond ``_CHUNK`` rows): two buffers of this many float64 per call (8 MiB each).
_GATHER = 1 << 20


@jit
def aalen_johansen_summaries(
    weights_t, deal, row_weight, duration, destination, offsets, tail_shares, strata, shares, median
):
    """Eventual destination shares and median sojourn of weighted AJ fits, per draw and stratum.

    For stratum ``s`` the spells are rows ``offsets[s] .. offsets[s + 1] - 1``, sorted
    by duration. A row weighs its deal's weight in the draw times its own
    ``row_weight`` (the recency of the spell; 1 without one). With these weights, at each distinct exit time ``t_i``
    (at-risk weight ``Y_i`` = weight of the spells with duration ``>= t_i``, exit
    weights ``d_ij``): ``S(t_i) = Π (1 − Σ_j d_kj / Y_k)``,
    ``F_j(t_i) = Σ S(t_{k−1}) d_kj / Y_k`` — the operations of
    ``forecast.fit.competing_risks.aalen_johansen`` in the same order, so the results
    are the same to the bit. Times whose exits all have zero weight are skipped.

    All draws are swept together (a spell's weights for every draw are one row of
    ``weights_t``), in chunks of rows: the at-risk weights are sums from the end of
    the stratum, so a first pass keeps them at the chunk boundaries after the first
    chunk, and each chunk then gathers its rows' weights into a buffer and sums them
    from its end. A chunk is as many rows as ``_GATHER`` weights (at least ``_CHUNK``
    rows), so a stratum of up to that many rows is read once; the sums are the same
    whatever the chunk size (each adds the rows one by one from the stratum's end).

    Parameters
    ----------
    weights_t : ndarray of float64, shape (n_deals, B)
        Deal weights of each draw (deal-major).
    deal, destination : ndarray of int64, shape (n,)
        Deal index and destination code (``-1`` censored) of each spell row.
    row_weight : ndarray of float64, shape (n,)
        Factor of each row's weight (the same for every draw).
    duration : ndarray of float64, shape (n,)
        Days in the stage, non-decreasing within each stratum.
    offsets : ndarray of int64, shape (S + 1,)
    tail_shares : ndarray of float64, shape (S, C)
        Destination mix given to the mass still in the stage after the last exit.
    strata : ndarray of int64, shape (m,)
        The strata to compute (callers split the strata over threads).
    shares : ndarray of float64, shape (B, S, C)
        Output: ``F_j(last exit) + S(last exit) tail_shares[s, j]``; the tail shares
        alone when the stratum has no exit of positive weight.
    median : ndarray of float64, shape (B, S)
        Output: the first exit time with ``S <= 1/2`` (days), NaN if none.
    """
    n_draws = weights_t.shape[1]
    n_codes = tail_shares.shape[1]
    longest = 0
    for s in strata:
        longest = max(longest, offsets[s + 1] - offsets[s])
    chunk = max(_CHUNK, min(longest, _GATHER // max(n_draws, 1)))
    n_chunks_max = (longest + chunk - 1) // chunk
    boundary = np.empty((n_chunks_max + 1, n_draws))
    gathered = np.empty((chunk, n_draws))
    suffix = np.empty((chunk + 1, n_draws))
    acc = np.empty(n_draws)
    # per-draw state; the loops over draws have no branches, so they vectorise
    cif = np.empty((n_codes, n_draws))
    exits = np.empty((n_codes, n_draws))
    all_exits = np.empty(n_draws)
    step = np.empty(n_draws)
    surv = np.empty(n_draws)
    med = np.empty(n_draws)
    any_exit = np.empty(n_draws)
    touched = np.zeros(n_codes, dtype=np.bool_)
    touched_list = np.empty(n_codes, dtype=np.int64)
    for s in strata:
        lo = offsets[s]
        n = offsets[s + 1] - lo
        n_chunks = (n + chunk - 1) // chunk
        # weight of the rows from each chunk start on, summed from the end (the
        # reversed cumulative sum of the Python estimator); the first chunk's is
        # never read, so its rows are gathered only by the sweep below
        acc[:] = 0.0
        boundary[n_chunks, :] = 0.0
        # rows copied element by element: assigning an array to a slice compiles a
        # shape check whose error message (string formatting) doubles the first call
        for c in range(n_chunks - 1, 0, -1):
            for i in range(min(n, (c + 1) * chunk) - 1, c * chunk - 1, -1):
                row = weights_t[deal[lo + i]]
                f = row_weight[lo + i]
                for b in range(n_draws):
                    acc[b] += row[b] * f
            for b in range(n_draws):
                boundary[c, b] = acc[b]
        cif[:] = 0.0
        surv[:] = 1.0
        med[:] = np.nan
        any_exit[:] = 0.0
        i = 0
        while i < n:
            # gather the rows up to the next chunk boundary (a tie group that runs past
            # it reads its further rows directly, and the next chunk starts after it)
            c0 = i
            k = c0 // chunk
            c1 = min(n, (k + 1) * chunk)
            for r in range(c0, c1):
                row = weights_t[deal[lo + r]]
                f = row_weight[lo + r]
                for b in range(n_draws):
                    gathered[r - c0, b] = row[b] * f
            for b in range(n_draws):
                suffix[c1 - c0, b] = boundary[k + 1, b]
            for r in range(c1 - 1, c0 - 1, -1):
                for b in range(n_draws):
                    suffix[r - c0, b] = suffix[r - c0 + 1, b] + gathered[r - c0, b]
            while i < c1:
                t = duration[lo + i]
                # the exits at this time, per destination (cif of the others gains 0)
                n_touched = 0
                end = i
                while end < n and duration[lo + end] == t:
                    j = destination[lo + end]
                    if j >= 0:
                        if n_touched == 0:
                            all_exits[:] = 0.0
                        if not touched[j]:
                            touched[j] = True
                            touched_list[n_touched] = j
                            n_touched += 1
                            exits[j, :] = 0.0
                        if end < c1:
                            row = gathered[end - c0]
                            f = 1.0
                        else:
                            row = weights_t[deal[lo + end]]
                            f = row_weight[lo + end]
                        for b in range(n_draws):
                            w = row[b] * f
                            if w > 0.0:
                                exits[j, b] += w
                                all_exits[b] += w
                    end += 1
                if n_touched:
                    # a draw whose exits here all weigh 0 is left unchanged
                    for b in range(n_draws):
                        positive = all_exits[b] > 0.0
                        at_risk = suffix[i - c0, b] if positive else 1.0
                        hazard = min(all_exits[b] / at_risk, 1.0)
                        step[b] = surv[b] / at_risk
                        surv[b] = surv[b] * (1.0 - hazard)
                        any_exit[b] = 1.0 if positive else any_exit[b]
                        med[b] = t if (surv[b] <= 0.5 and med[b] != med[b]) else med[b]
                    for m in range(n_touched):
                        j = touched_list[m]
                        touched[j] = False
                        for b in range(n_draws):
                            cif[j, b] += exits[j, b] * step[b]
                i = end
        for b in range(n_draws):
            for j in range(n_codes):
                if any_exit[b] > 0.0:
                    shares[b, s, j] = cif[j, b] + surv[b] * tail_shares[s, j]
                else:
                    shares[b, s, j] = tail_shares[s, j]
            median[b, s] = med[b]


@jit
def _expit(x):
    return 0.5 * (1.0 + math.tanh(0.5 * x))


@jit
def _shift_score(z, cell_weight, cell_offset, lo, hi, target, o_bar):
    """Score ``target − Σ_c A_c expit(o_c + z) − expit(ō + z)`` and minus its derivative."""
    score = target
    slope = 0.0
    for c in range(lo, hi):
        p = _expit(cell_offset[c] + z)
        score -= cell_weight[c] * p
        slope += cell_weight[c] * p * (1.0 - p)
    p_bar = _expit(o_bar + z)
    score -= p_bar
    slope += p_bar * (1.0 - p_bar)
    return score, slope


@jit
def logistic_shifts(cell_weight, cell_won, cell_offset, offsets, b0, b1, shift, variance):
    """Per draw and quarter, the win log-odds shift ``y_q`` and its sampling variance ``v_q``.

    Quarter ``q`` holds the cells ``offsets[q] .. offsets[q + 1] - 1``; a cell is the
    terminal exits of one baseline stratum in the quarter, with total weight ``A_c``,
    won weight and baseline log-odds ``o_c``. ``y_q`` solves
    ``Σ_c W_c + ½ − Σ_c A_c expit(o_c + y) − expit(ō + y) = 0`` (``ō`` the weighted
    mean offset of the quarter; strictly decreasing in ``y``, solved by Newton steps
    kept inside a bracket, to 1e-13), and
    ``v_q = 1 / (Σ_c A_c p_c (1 − p_c) + p̄ (1 − p̄))`` at the root.

    Parameters
    ----------
    cell_weight, cell_won : ndarray of float64, shape (B, n_cells)
        Total and won weight of each cell, per draw.
    cell_offset : ndarray of float64, shape (B, n_cells)
        Baseline log-odds of each cell's stratum, per draw.
    offsets : ndarray of int64, shape (Q + 1,)
    b0, b1 : int64
        Draws to compute.
    shift, variance : ndarray of float64, shape (B, Q)
        Outputs.
    """
    n_q = offsets.shape[0] - 1
    for b in range(b0, b1):
        cw = cell_weight[b]
        co = cell_offset[b]
        for q in range(n_q):
            lo = offsets[q]
            hi = offsets[q + 1]
            total = 0.0
            won = 0.0
            wo = 0.0
            for c in range(lo, hi):
                total += cw[c]
                won += cell_won[b, c]
                wo += cw[c] * co[c]
            o_bar = wo / total if total > 0.0 else 0.0
            target = won + 0.5
            # bracket the root: the score falls from target > 0 to target - total - 1 < 0
            a = -1.0
            while _shift_score(a, cw, co, lo, hi, target, o_bar)[0] < 0.0:
                a *= 2.0
            c_hi = 1.0
            while _shift_score(c_hi, cw, co, lo, hi, target, o_bar)[0] > 0.0:
                c_hi *= 2.0
            z = 0.5 * (a + c_hi)
            for _ in range(200):
                f, slope = _shift_score(z, cw, co, lo, hi, target, o_bar)
                if f > 0.0:
                    a = z
                elif f < 0.0:
                    c_hi = z
                else:
                    break
                step = f / slope if slope > 0.0 else 0.0
                nz = z + step
                if not (a < nz < c_hi) or slope <= 0.0:
                    nz = 0.5 * (a + c_hi)
                if abs(nz - z) <= 1e-13 or c_hi - a <= 1e-13:
                    z = nz
                    break
                z = nz
            _, slope = _shift_score(z, cw, co, lo, hi, target, o_bar)
            shift[b, q] = z
            variance[b, q] = 1.0 / slope


@jit
def exit_cell_sums(weights_t, deal, won, stratum, cell, stratum_sums, cell_sums):
    """Weighted and won-weighted sums of the terminal exits per baseline stratum and per cell.

    Parameters
    ----------
    weights_t : ndarray of float64, shape (n_deals, B)
        Deal weights of each draw (deal-major).
    deal : ndarray of int64, shape (n,)
    won : ndarray of float64, shape (n,)
        1 for a win, 0 otherwise.
    stratum : ndarray of int64, shape (n,)
    cell : ndarray of int64, shape (n,)
        ``-1`` for an exit outside every cell.
    stratum_sums : ndarray of float64, shape (2, B, n_strata)
        Output: ``[0]`` the won weight, ``[1]`` the weight of each stratum (zeroed here).
    cell_sums : ndarray of float64, shape (2, B, n_cells)
        Output: the same per cell.
    """
    stratum_sums[:] = 0.0
    cell_sums[:] = 0.0
    n_draws = weights_t.shape[1]
    for i in range(deal.shape[0]):
        row = weights_t[deal[i]]
        s = stratum[i]
        c = cell[i]
        y = won[i]
        for b in range(n_draws):
            w = row[b]
            stratum_sums[0, b, s] += w * y
            stratum_sums[1, b, s] += w
        if c >= 0:
            for b in range(n_draws):
                w = row[b]
                cell_sums[0, b, c] += w * y
                cell_sums[1, b, c] += w
