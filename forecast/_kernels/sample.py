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

How it runs (none of it changes a draw or an operation per deal): step 2 goes by
blocks of deals, first the block's uniforms (the generator is a serial chain), then the
categorical for all of them in one loop over the deals that runs in SIMD lanes
(:func:`_tilted_words`, on ``p_win`` transposed to (B, H, N)), which stores each
deal's quarter and one bit per deal "wins". Step 3 visits the set bits in order, with
unsigned indices and the QE decision as integer arithmetic (:func:`_below`), so its
loop has no unpredictable branch.

A won amount is rounded to cents (int64) before any sum, so every sum is exact and
order-independent: per-path totals, and per-deal sums accumulated per block of paths
and reduced in block order.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import literally, prange, types
from numba.extending import intrinsic

from forecast._kernels._options import jit, jit_parallel
from forecast._kernels.rng import (
    gamma,
    next_u64,
    normal,
    path_state,
    poisson,
    split_u64,
    uniform,
)

__all__ = ["sample_chunk"]

#: Deals per block of phase 1: uniforms drawn, then tilted together (a multiple of 64;
#: any value gives the same samples).
_DEAL_BLOCK = 256
#: Horizons up to this many quarters take a phase-1 loop unrolled over a fixed number of
#: terms (4, 6 or 8); longer ones the same loop with a run-time count.
_MAX_TERMS = 8
_U1 = np.uint64(1)
_U6 = np.uint64(6)
_U63 = np.uint64(63)
_TWO_POW_32 = 4294967296.0


@intrinsic
def _trailing_zeros(typingctx, x):
    """Number of trailing zero bits of a uint64 (LLVM ``cttz``)."""

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@jit
def _below(hi, p):
    """``hi * 2**-32 < p`` as uint64 0 or 1, without a branch (``hi < 2**32``, ``0 <= p <= 1``).

    Exact: scaling by 2**32 is exact, an integer is below ``x`` iff it is below
    ``ceil(x)``, and the unsigned difference has its top bit set iff it is negative.
    (A float comparison here compiles to an unpredictable branch.)
    """
    return (hi - np.uint64(math.ceil(p * _TWO_POW_32))) >> _U63


@jit
def _pick(offsets, values, row, g, u):
    """Sample ``floor(u * count)`` of CSR row ``(row, g)`` (every row is non-empty)."""
    lo = offsets[row, g]
    count = offsets[row, g + _U1] - lo
    i = np.int64(u * count)
    return values[np.uint64(lo + min(i, count - 1))]


@jit
def _to_cents(x):
    return np.int64(x * 100.0 + 0.5)  # x >= 0: round half up to whole cents


@jit
def _tilted_words(n_terms, pwt, pn, m, n0, nb, u_blk, q_all, words):
    """Phase 1 for deals ``n0 .. n0 + nb - 1``: each deal's outcome from its uniform.

    Per deal, as a scalar loop would: ``acc += pwt[r, n] * m[r]`` for ``r = 0 ..``,
    ``target = u * (acc + pn[n])``, ``q`` = number of cumulative weights ``<= target``.
    The cumulative weights are computed twice (same operations, same values) so that
    they stay in registers, and the loop over deals runs in SIMD lanes. Terms
    ``r >= H`` use the last row with ``m[r] = 0``: they add a zero (the weight keeps
    its bits) and can only raise a ``q`` that is already ``H`` (no win).

    Parameters
    ----------
    n_terms : int64
        Number of terms, ``>= H``; a constant at the call site makes a specialised
        compilation with the loops over terms unrolled.
    pwt : ndarray of float64, shape (H, N)
        ``p_win`` of the path's draw, deal-minor.
    pn : ndarray of float64, shape (N,)
        ``p_none`` of the path's draw.
    m : ndarray of float64, shape (>= n_terms,)
        The path's shock multipliers, 0 beyond ``H``.
    n0, nb : int64
        First deal (a multiple of 64) and number of deals.
    u_blk : ndarray of float64, shape (>= nb,)
        The deals' uniforms.
    q_all : ndarray of int64, shape (N,)
        Output: the winning quarter of each winning deal (``>= H`` for the others).
    words : ndarray of uint64, shape (ceil(N / 64),)
        Output: bit ``k`` of word ``w`` is set iff deal ``64 w + k`` wins.
    """
    n_q = pwt.shape[0]
    last = n_q - 1
    for wd in range((nb + 63) // 64):
        k0 = wd * 64
        n_first = np.uint64(n0 + k0)  # unsigned indices: contiguous SIMD loads
        bits = np.uint64(0)
        for k in range(min(64, nb - k0)):
            n = n_first + np.uint64(k)
            acc = 0.0
            for r in range(n_terms):
                acc += pwt[min(r, last), n] * m[r]
            target = u_blk[k0 + k] * (acc + pn[n])
            acc = 0.0
            q = 0
            for r in range(n_terms):
                acc += pwt[min(r, last), n] * m[r]
                q += target >= acc
            q_all[n] = q
            bits |= np.uint64(q < n_q) << np.uint64(k)
        words[(n0 + k0) >> 6] = bits


@jit
def _tilted_fixed(n_terms, pwt, pn, m, n0, nb, u_blk, q_all, words):
    """:func:`_tilted_words` compiled for the literal ``n_terms``."""
    _tilted_words(literally(n_terms), pwt, pn, m, n0, nb, u_blk, q_all, words)


@jit
def _tilted_block(pwt, pn, m, n0, nb, u_blk, q_all, words):
    """:func:`_tilted_words` with ``n_terms`` H rounded up to 4, 6 or 8, or H beyond 8."""
    n_q = pwt.shape[0]
    if n_q <= 4:
        _tilted_fixed(4, pwt, pn, m, n0, nb, u_blk, q_all, words)
    elif n_q <= 6:
        _tilted_fixed(6, pwt, pn, m, n0, nb, u_blk, q_all, words)
    elif n_q <= _MAX_TERMS:
        _tilted_fixed(8, pwt, pn, m, n0, nb, u_blk, q_all, words)
    else:
        _tilted_words(n_q, pwt, pn, m, n0, nb, u_blk, q_all, words)


@jit_parallel
def sample_chunk(
    p_win_t,
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
    p_win_t : ndarray of float64, shape (B, H, N)
        P(win in quarter q) per draw and deal (pull-in applied), deal-minor.
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
    n_draws = p_win_t.shape[0]
    n_q = p_win_t.shape[1]
    n_deals = p_win_t.shape[2]
    n_seg = new_counts.shape[1]
    n_paths = path_stop - path_start
    for blk in prange(n_blocks):
        lo = path_start + (blk * n_paths) // n_blocks
        hi = path_start + ((blk + 1) * n_paths) // n_blocks
        m = np.zeros(max(n_q, _MAX_TERMS))  # 0 beyond H: see _tilted_words
        cum = np.empty(n_q)
        u_blk = np.empty(_DEAL_BLOCK)
        q_all = np.empty(n_deals, dtype=np.int64)
        words = np.empty((n_deals + 63) // 64, dtype=np.uint64)
        cents = np.zeros((n_q, n_seg, 2), dtype=np.int64)
        wins_acc = block_wins[blk].reshape(-1)  # [n * H + q]
        cents_acc = block_cents[blk].reshape(-1)
        ratio_flat = ratio_offsets.reshape(-1)  # [row * (G + 1) + g]
        nqu = np.uint64(n_q)
        rstride = np.uint64(n_seg + 1)
        for p in range(lo, hi):
            state = path_state(seed, p)
            b = p % n_draws
            s = shock_sigma[b]
            for q in range(n_q):
                z, state = normal(state)
                m[q] = math.exp(-0.5 * s * s + s * z)
            cents[:] = 0
            pwt = p_win_t[b]
            pn = p_none[b]
            pq = p_qe[b].reshape(-1)  # [n * H + q]
            # Phase 1, per block of deals: the block's uniforms (a serial chain), then
            # the tilted categorical with a loop over the deals (SIMD): q = number of
            # cumulative tilted weights <= u * Z, i.e. the first q whose cumulative
            # weight exceeds u * Z; q >= H means no win.
            for n0 in range(0, n_deals, _DEAL_BLOCK):
                nb = min(_DEAL_BLOCK, n_deals - n0)
                for k in range(nb):
                    u, state = uniform(state)
                    u_blk[k] = u
                _tilted_block(pwt, pn, m, n0, nb, u_blk, q_all, words)
            # Phase 2: per winner (increasing n: the set bits of the words), a QE uniform
            # and a ratio uniform; unsigned indices (no wraparound code), the QE row
            # without a branch, and _pick written out on the flat CSR offsets.
            for wd in range(words.shape[0]):
                w = words[wd]
                base = np.uint64(wd) << _U6
                while w != 0:
                    n = base + _trailing_zeros(w)
                    w &= w - _U1
                    q = np.uint64(q_all[n])
                    nq = n * nqu + q
                    g = np.uint64(deal_segment[n])
                    x, state = next_u64(state)
                    hi_bits, u2 = split_u64(x)
                    row = _below(hi_bits, pq[nq]) * rstride + g
                    lo_r = ratio_flat[row]
                    count = ratio_flat[row + _U1] - lo_r
                    i = np.int64(u2 * count)
                    ratio = ratio_values[np.uint64(lo_r + min(i, count - 1))]
                    c = _to_cents(deal_amount[n] * ratio)
                    cents[q, g, 0] += c
                    wins_acc[nq] += 1
                    cents_acc[nq] += c
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
                        won = 0  # exact integer sum: kept in a register
                        for _ in range(k):
                            x, state = next_u64(state)
                            hi_bits, u2 = split_u64(x)
                            u3, state = uniform(state)
                            in_qe = _below(hi_bits, p_qe_new)
                            amount = _pick(new_amount_offsets, new_amount_values, 0, g, u2)
                            ratio = _pick(ratio_offsets, ratio_values, in_qe, g, u3)
                            won += _to_cents(amount * ratio)
                        cents[q, g, 1] += won
            row = p - path_start
            for q in range(n_q):
                for g in range(n_seg):
                    totals[row, q, g, 0] = cents[q, g, 0] / 100.0
                    totals[row, q, g, 1] = cents[q, g, 1] / 100.0
    return 0
