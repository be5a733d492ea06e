"""The path-sampling kernel: one tilted categorical draw per deal and path.

Per path ``p`` (parameter draw ``b = p % B``), with its own stream
:func:`forecast._kernels.rng.path_state` ``(seed, p)``, draws happen in this fixed order:

1. shocks: for ``q = 0 .. H-1``, ``z_q`` standard normal (Box–Muller),
   ``m[q] = exp(-s²/2 + s z_q)`` with ``s = shock_sigma[b]``;
2. today's pipeline, deals ``n = 0 .. N-1``: one uniform ``u`` each picks the outcome
   from the tilted categorical ``P'(q) ∝ p_win[b, n, q] m[q]`` (``q < H``) and
   ``P'(none) ∝ p_none[b, n]``;
3. then, for each winning deal in increasing ``n``: a uniform decides the QE window
   (``< p_qe[b, n, q]``) and a uniform picks the won/pipeline amount ratio among the
   segment's (normal or quarter-end) samples, both from the two 32-bit halves of one
   64-bit output (two passes keep the first one free of unpredictable branches);
4. new deals, segments ``g = 0 .. G-1``, creation quarters ``c = 0 .. H-1``: if
   ``new_shape[g]`` is finite and > 0, a Gamma(shape)/shape multiplier ``x`` of the
   mean ``lam = new_counts[b, g, c]``; then, for ``q = 0 .. H-1``, the number of those
   deals that win in ``q`` as Poisson(``x lam P'(q)``) with the tilted
   ``P'(q) ∝ new_pmf[b, g, c, q] m[q]`` (none ∝ ``new_none[b, g, c]``) — Poisson
   splitting, exact for (mixed) Poisson counts, so new deals that do not win cost
   nothing — and per win one 64-bit output split into the QE uniform and the
   amount-sample uniform, then a uniform for the ratio sample.

A CSR sample is ``values[lo + floor(u * count)]`` of its row.

A won amount is rounded to cents (int64) before any sum, so every sum is exact and
order-independent: per-path totals, and per-deal sums accumulated per block of paths
and reduced in block order.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from forecast._kernels._options import jit, jit_parallel
from forecast._kernels.rng import gamma, normal, path_state, poisson, uniform, uniform_pair

__all__ = ["sample_chunk"]


@jit
def _pick(offsets, values, row, g, u):
    """Sample ``floor(u * count)`` of CSR row ``(row, g)`` (every row is non-empty)."""
    lo = offsets[row, g]
    count = offsets[row, g + 1] - lo
    i = np.int64(u * count)
    return values[lo + min(i, count - 1)]


@jit
def _to_cents(x):
    return np.int64(x * 100.0 + 0.5)  # x >= 0: round half up to whole cents


@jit_parallel
def sample_chunk(
    p_win,
    p_none,
    p_qe,
    deal_amount,
    deal_segment,
    ratio_offsets,
    ratio_values,
    new_counts,
    new_shape,
    new_pmf,
    new_none,
    new_qe,
    new_amount_offsets,
    new_amount_values,
    shock_sigma,
    seed,
    path_start,
    path_stop,
    n_blocks,
    totals,
    block_wins,
    block_cents,
):
    """Simulate paths ``path_start .. path_stop - 1``; write totals and per-block deal sums.

    Parameters
    ----------
    p_win : ndarray of float64, shape (B, N, H)
        P(win in quarter q) per draw and deal (pull-in applied).
    p_none : ndarray of float64, shape (B, N)
        P(no win within the horizon) = ``1 - p_win.sum(-1)``, clipped at 0.
    p_qe : ndarray of float64, shape (B, N, H)
        P(win in the quarter-end window | win in q).
    deal_amount : ndarray of float64, shape (N,)
        Pipeline amount of each deal, currency.
    deal_segment : ndarray of int64, shape (N,)
        Segment code ``0 .. G-1``.
    ratio_offsets : ndarray of int64, shape (2, G + 1)
        CSR offsets into ``ratio_values`` of the won/pipeline amount ratios per segment,
        row 0 outside and row 1 inside the quarter-end window. Every (row, segment)
        is non-empty (the wrapper puts a single 1.0 where there are no samples).
    ratio_values : ndarray of float64, shape (R,)
    new_counts : ndarray of float64, shape (B, G, H)
        Expected number of new deals created in each horizon quarter.
    new_shape : ndarray of float64, shape (G,)
        Gamma-Poisson shape of the count (variance ``mu + mu²/shape``); inf or 0 means Poisson.
    new_pmf : ndarray of float64, shape (B, G, H, H)
        ``[b, g, c, q]`` = P(win in q | created in c).
    new_none : ndarray of float64, shape (B, G, H)
        P(no win within the horizon | created in c).
    new_qe : ndarray of float64, shape (B, G, H, H)
        P(QE window | created in c, win in q).
    new_amount_offsets : ndarray of int64, shape (1, G + 1)
        CSR offsets of new-deal pipeline amounts per segment (non-empty rows).
    new_amount_values : ndarray of float64
        Currency (the ratio applies on top).
    shock_sigma : ndarray of float64, shape (B,)
        Standard deviation of the log shock per quarter.
    seed : int64
        Run seed.
    path_start, path_stop : int64
        Global path range.
    n_blocks : int64
        Number of blocks the range is split into (one prange iteration each); any
        value gives the same samples.
    totals : ndarray of float64, shape (path_stop - path_start, H, G, 2)
        Output: won amount per path, quarter, segment, source (0 pipeline, 1 new).
    block_wins, block_cents : ndarray of int64, shape (>= n_blocks, N, H)
        Per-block counts of wins and won cents per deal, added to (not overwritten).

    Returns
    -------
    status : int64
        0.
    """
    n_draws = p_win.shape[0]
    n_deals = p_win.shape[1]
    n_q = p_win.shape[2]
    n_seg = new_counts.shape[1]
    n_paths = path_stop - path_start
    for blk in prange(n_blocks):
        lo = path_start + (blk * n_paths) // n_blocks
        hi = path_start + ((blk + 1) * n_paths) // n_blocks
        m = np.empty(n_q)
        cum = np.empty(n_q)
        cents = np.zeros((n_q, n_seg, 2), dtype=np.int64)
        winner = np.empty(n_deals, dtype=np.int64)
        win_q = np.empty(n_deals, dtype=np.int64)
        wins_acc = block_wins[blk]
        cents_acc = block_cents[blk]
        for p in range(lo, hi):
            state = path_state(seed, p)
            b = p % n_draws
            s = shock_sigma[b]
            for q in range(n_q):
                z, state = normal(state)
                m[q] = math.exp(-0.5 * s * s + s * z)
            cents[:] = 0
            pw = p_win[b]
            pn = p_none[b]
            pq = p_qe[b]
            # Phase 1: one uniform per deal; branch-free compaction of the winners.
            n_won = 0
            for n in range(n_deals):
                u, state = uniform(state)
                # Branch-free: q = number of cumulative tilted weights <= u * Z, i.e. the
                # first q whose cumulative weight exceeds u * Z; q = H means no win.
                # (Inline indexing: a row view per deal costs a lot here.)
                acc = 0.0
                for r in range(n_q):
                    acc += pw[n, r] * m[r]
                    cum[r] = acc
                target = u * (acc + pn[n])
                q = 0
                for r in range(n_q):
                    q += target >= cum[r]
                winner[n_won] = n
                win_q[n_won] = q
                n_won += q < n_q
            # Phase 2: per winner (increasing n), a QE uniform and a ratio uniform.
            for i in range(n_won):
                n = winner[i]
                q = win_q[i]
                g = deal_segment[n]
                u, u2, state = uniform_pair(state)
                in_qe = np.int64(u < pq[n, q])
                c = _to_cents(deal_amount[n] * _pick(ratio_offsets, ratio_values, in_qe, g, u2))
                cents[q, g, 0] += c
                wins_acc[n, q] += 1
                cents_acc[n, q] += c
            # New deals.
            for g in range(n_seg):
                shape = new_shape[g]
                for cq in range(n_q):
                    lam = new_counts[b, g, cq]
                    if not lam > 0.0:
                        continue
                    if shape > 0.0 and shape < np.inf:
                        x, state = gamma(state, shape)
                        lam = lam * x / shape
                    # Poisson splitting: given the multiplier, the new deals of (g, cq)
                    # winning in quarter q are Poisson(lam * P'(q)), independently.
                    acc = 0.0
                    for q in range(n_q):
                        cum[q] = new_pmf[b, g, cq, q] * m[q]
                        acc += cum[q]
                    z_norm = acc + new_none[b, g, cq]
                    if not z_norm > 0.0:
                        continue
                    for q in range(n_q):
                        k, state = poisson(state, lam * cum[q] / z_norm)
                        p_qe_new = new_qe[b, g, cq, q]
                        for _ in range(k):
                            u, u2, state = uniform_pair(state)
                            u3, state = uniform(state)
                            in_qe = np.int64(u < p_qe_new)
                            amount = _pick(new_amount_offsets, new_amount_values, 0, g, u2)
                            ratio = _pick(ratio_offsets, ratio_values, in_qe, g, u3)
                            cents[q, g, 1] += _to_cents(amount * ratio)
            row = p - path_start
            for q in range(n_q):
                for g in range(n_seg):
                    totals[row, q, g, 0] = cents[q, g, 0] / 100.0
                    totals[row, q, g, 1] = cents[q, g, 1] / 100.0
    return 0
