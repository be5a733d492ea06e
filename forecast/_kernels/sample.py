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
   64-bit output;
4. new deals, segments ``g = 0 .. G-1``, creation quarters ``c = 0 .. H-1``: if
   ``new_shape[g]`` is finite and > 0, a Gamma(shape)/shape multiplier ``x`` of the
   mean ``lam = new_counts[b, g, c]``; then, for ``q = 0 .. H-1``, the number of those
   deals that win in ``q`` as Poisson(``x lam P'(q)``) with the tilted
   ``P'(q) ∝ new_pmf[b, g, c, q] m[q]`` (none ∝ ``new_none[b, g, c]``) — Poisson
   splitting, exact for (mixed) Poisson counts, so new deals that do not win cost
   nothing — and per win one 64-bit output split into the QE uniform and the
   amount-sample uniform, then a uniform for the ratio sample.

A CSR sample is ``values[lo + floor(u * count)]`` of its row.

How it runs (none of it changes a draw or an operation per path): a chunk's path
range is split into blocks that run on a pool of threads (the kernel releases the GIL;
no Numba ``parallel=True``, which costs seconds of compilation). In a block, paths of
the same parameter draw go in groups of :data:`~forecast._kernels.lanes.LANES`, one per
SIMD lane, through step 2 (:func:`forecast._kernels.lanes.pipeline_outcomes`: the
generators and the categoricals of the group run side by side, and each deal's
probabilities are read once for the group); then step 3 for the group, the paths taking
turns per word of 64 deals (the deals' data is read once for the group), and step 4
path by path. Step 3 visits the set bits of the winners' words in order, with the QE
decision and the sample index as branch-free integer or float arithmetic that gives
the bits of the plain reading (:func:`_below`, :func:`_sample_index`). One compiled
kernel serves every horizon (nothing is specialised per number of quarters).

A won amount is rounded to cents (int64) before any sum, so every sum is exact and
order-independent: per-path totals, and per-deal sums accumulated per block of paths
and reduced in block order.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from forecast._kernels._options import jit
from forecast._kernels.lanes import LANES, pipeline_outcomes
from forecast._kernels.rng import (
    gamma,
    halves_u64,
    next_u64,
    normal,
    path_state,
    poisson,
    uniform,
)

__all__ = ["sample_chunk"]

_U1 = np.uint64(1)
_U6 = np.uint64(6)
_U32 = np.uint64(32)
_U63 = np.uint64(63)
_TWO_POW_M32 = 1.0 / 4294967296.0
#: Largest sample count for which ``floor(u * count)`` with a 32-bit uniform ``u`` is
#: computed in integers: ``lo * count < 2**53``, so the float product is exact.
_EXACT_COUNT = np.uint64(2**21)


@intrinsic
def _trailing_zeros(typingctx, x):
    """Number of trailing zero bits of a uint64 (LLVM ``cttz``)."""

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float64 as a uint64 (a bit cast)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@jit
def _below(bits, p):
    """``bits * 2**-32 < p`` as uint64 0 or 1 (``bits < 2**32``, ``0 <= p <= 1``).

    ``bits * 2**-32`` is exact, so this is the comparison of the uniform itself, taken
    as the sign bit of the difference: a difference of two floats is zero only if they
    are equal, and never changes sign in rounding. (A float comparison here compiles to
    an unpredictable branch.)
    """
    return _float_bits(float(np.int64(bits)) * _TWO_POW_M32 - p) >> _U63


@jit
def _sample_index(bits, count):
    """``min(floor(u * count), count - 1)`` in float64 for ``u = bits * 2**-32``, as uint64.

    For ``count <= 2**21`` the float product ``bits * count * 2**-32`` is exact (below
    2**53), so its floor is the integer ``(bits * count) >> 32``, always ``< count``.
    """
    if count <= _EXACT_COUNT:
        return (bits * count) >> _U32
    u = float(np.int64(bits)) * _TWO_POW_M32
    return np.uint64(min(np.int64(u * float(np.int64(count))), np.int64(count) - 1))


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
def _pipeline_wins(
    n_lanes,
    wins,
    outcome,
    p_qe,
    deal_amount,
    deal_segment,
    ratio_offsets,
    ratio_values,
    states,
    cents,
    wins_acc,
    cents_acc,
):
    """Step 3 for the paths on lanes ``0 .. n_lanes - 1``: amounts of their winning deals.

    Each path visits its winners in increasing ``n``; the paths take turns per word of
    64 deals, so that the deals' data is read once for the group.

    Parameters
    ----------
    n_lanes : int64
        Number of paths in the group.
    wins : ndarray of uint64, shape (ceil(N / 64), LANES)
        Winner bits (from :func:`~forecast._kernels.lanes.pipeline_outcomes`).
    outcome : ndarray of int32, shape (N, LANES)
        Winning quarter of each winner.
    p_qe : ndarray of float64, shape (N * H,)
        The draw's P(QE window | win in q), flat ``[n * H + q]``.
    deal_amount, deal_segment : ndarray, shape (N,)
    ratio_offsets : ndarray of int64, shape (2 * (G + 1),)
        CSR offsets of the ratio samples, flat: row ``in_qe * (G + 1) + g``.
    ratio_values : ndarray of float64
    states : ndarray of uint64, shape (4, LANES)
        The paths' generator states after step 2; advanced.
    cents : ndarray of int64, shape (LANES, H, G, 2)
        The paths' won cents; ``[lane, q, g, 0]`` is added to.
    wins_acc, cents_acc : ndarray of int64, shape (N * H,)
        The block's per-deal sums, added to.
    """
    n_q = np.uint64(cents.shape[1])
    stride = np.uint64(cents.shape[2] + 1)
    for wd in range(wins.shape[0]):
        base = np.uint64(wd) << _U6
        for lane in range(n_lanes):
            w = wins[wd, lane]
            if w == 0:
                continue
            state = (states[0, lane], states[1, lane], states[2, lane], states[3, lane])
            while w != 0:
                n = base + _trailing_zeros(w)
                w &= w - _U1
                q = np.uint64(outcome[n, lane])
                nq = n * n_q + q
                g = np.uint64(deal_segment[n])
                x, state = next_u64(state)
                hi_bits, lo_bits = halves_u64(x)
                row = _below(hi_bits, p_qe[nq]) * stride + g
                first = ratio_offsets[row]
                size = np.uint64(ratio_offsets[row + _U1] - first)
                ratio = ratio_values[np.uint64(first) + _sample_index(lo_bits, size)]
                c = _to_cents(deal_amount[n] * ratio)
                cents[lane, q, g, 0] += c
                wins_acc[nq] += 1
                cents_acc[nq] += c
            for word in range(4):
                states[word, lane] = state[word]


@jit
def _new_deal_wins(
    b,
    m,
    new_counts,
    new_shape,
    new_pmf,
    new_none,
    new_qe,
    new_amount_offsets,
    new_amount_values,
    ratio_offsets,
    ratio_values,
    state,
    cum,
    cents,
):
    """Step 4 for one path: won cents of new deals into ``cents[q, g, 1]``; returns the state."""
    n_q = cents.shape[0]
    for g in range(cents.shape[1]):
        shape = new_shape[g]
        for cq in range(n_q):
            lam = new_counts[b, g, cq]
            if not lam > 0.0:
                continue
            if shape > 0.0 and shape < np.inf:
                x, state = gamma(state, shape)
                lam = lam * x / shape
            # Poisson splitting: given the multiplier, the new deals of (g, cq) winning in
            # quarter q are Poisson(lam * P'(q)), independently.
            acc = 0.0
            for q in range(n_q):
                cum[q] = new_pmf[b, g, cq, q] * m[q]
                acc += cum[q]
            z_norm = acc + new_none[b, g, cq]
            if not z_norm > 0.0:
                continue
            first = np.uint64(new_amount_offsets[0, g])
            size = np.uint64(new_amount_offsets[0, g + 1]) - first
            for q in range(n_q):
                k, state = poisson(state, lam * cum[q] / z_norm)
                p_qe_new = new_qe[b, g, cq, q]
                won = 0  # exact integer sum: kept in a register
                for _ in range(k):
                    x, state = next_u64(state)
                    hi_bits, lo_bits = halves_u64(x)
                    u3, state = uniform(state)
                    in_qe = _below(hi_bits, p_qe_new)
                    amount = new_amount_values[first + _sample_index(lo_bits, size)]
                    ratio = _pick(ratio_offsets, ratio_values, in_qe, g, u3)
                    won += _to_cents(amount * ratio)
                cents[q, g, 1] += won
    return state


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
        Number of blocks the range is split into, run on as many threads (one block
        runs in the calling thread); any value gives the same samples.
    totals : ndarray of float64, shape (path_stop - path_start, H, G, 2)
        Output: won amount per path, quarter, segment, source (0 pipeline, 1 new).
    block_wins, block_cents : ndarray of int64, shape (>= n_blocks, N, H)
        Per-block counts of wins and won cents per deal, added to (not overwritten).

    Returns
    -------
    status : int64
        0.
    """
    blocks = (
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
    )
    outputs = (totals, block_wins, block_cents)
    if n_blocks <= 1:
        _sample_block(*blocks, 0, *outputs)
        return 0
    futures = [_pool().submit(_sample_block, *blocks, blk, *outputs) for blk in range(n_blocks)]
    try:
        for future in futures:
            future.result()
    except BaseException:  # Ctrl-C while waiting: let the running blocks finish first
        concurrent.futures.wait(futures)
        raise
    return 0


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool when needed."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that run blocks (as many as Numba may use; the kernel releases the GIL)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=numba.config.NUMBA_NUM_THREADS, thread_name_prefix="forecast-sample"
            )
    return _POOL


@jit
def _sample_block(
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
    blk,
    totals,
    block_wins,
    block_cents,
):
    """Block ``blk`` of :func:`sample_chunk`: its share of the paths, and its row of the deal sums."""
    n_draws = p_win_t.shape[0]
    n_q = p_win_t.shape[1]
    n_deals = p_win_t.shape[2]
    n_seg = new_counts.shape[1]
    n_paths = path_stop - path_start
    ratio_flat = ratio_offsets.reshape(-1)  # [in_qe * (G + 1) + g]
    lo = path_start + (blk * n_paths) // n_blocks
    hi = path_start + ((blk + 1) * n_paths) // n_blocks
    # Shapes as plain int64 (no literals): fewer variants of np.empty to compile.
    lanes = np.int64(LANES)
    states = np.empty((np.int64(4), lanes), dtype=np.uint64)
    shocks = np.empty((n_q, lanes))
    outcome = np.empty((n_deals, lanes), dtype=np.int32)
    wins = np.empty(((n_deals + 63) // 64, lanes), dtype=np.uint64)
    scratch = np.empty((np.int64(2), n_q))
    m = scratch[0]  # the path's shock multipliers
    cum = scratch[1]
    cents = np.empty((lanes, n_q, n_seg, np.int64(2)), dtype=np.int64)  # zeroed per group
    wins_acc = block_wins[blk].reshape(-1)  # [n * H + q]
    cents_acc = block_cents[blk].reshape(-1)
    # Paths of draw b in [lo, hi): first, first + B, ...; LANES of them at a time.
    for b in range(n_draws):
        s = shock_sigma[b]
        first = lo + (b - lo) % n_draws
        for p0 in range(first, hi, LANES * n_draws):
            n_lanes = min(LANES, (hi - 1 - p0) // n_draws + 1)
            for lane in range(LANES):  # spare lanes repeat the group's last path
                state = path_state(seed, p0 + min(lane, n_lanes - 1) * n_draws)
                for q in range(n_q):
                    z, state = normal(state)
                    shocks[q, lane] = math.exp(-0.5 * s * s + s * z)
                for word in range(4):
                    states[word, lane] = state[word]
            pipeline_outcomes(states, p_win_t[b], p_none[b], shocks, outcome, wins)
            cents[:] = 0
            _pipeline_wins(
                n_lanes,
                wins,
                outcome,
                p_qe[b].reshape(-1),
                deal_amount,
                deal_segment,
                ratio_flat,
                ratio_values,
                states,
                cents,
                wins_acc,
                cents_acc,
            )
            for lane in range(n_lanes):
                state = (states[0, lane], states[1, lane], states[2, lane], states[3, lane])
                for q in range(n_q):
                    m[q] = shocks[q, lane]
                path_cents = cents[lane]
                _new_deal_wins(
                    b,
                    m,
                    new_counts,
                    new_shape,
                    new_pmf,
                    new_none,
                    new_qe,
                    new_amount_offsets,
                    new_amount_values,
                    ratio_offsets,
                    ratio_values,
                    state,
                    cum,
                    path_cents,
                )
                row = p0 + lane * n_draws - path_start
                for q in range(n_q):
                    for g in range(n_seg):
                        totals[row, q, g, 0] = path_cents[q, g, 0] / 100.0
                        totals[row, q, g, 1] = path_cents[q, g, 1] / 100.0
    return 0
