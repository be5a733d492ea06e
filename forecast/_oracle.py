"""Vectorised NumPy reference simulator of the pipeline model (the correctness oracle).

It simulates the same model as :mod:`forecast._kernels` by a different algorithm and
a different random stream (``numpy.random.Generator``), so the two agree in
distribution only. Where the kernels compute each deal's outcome distribution
exactly and draw one tilted categorical per deal and path, the oracle **walks**:

1. every (path, deal) item samples its first exit (day bin and destination) from the
   exit sub-densities conditioned on its age in stage, ``T > age``;
2. items that move to an open stage keep walking from a fresh entry (clock reset)
   until they are won, lost, no-decision, or past the last needed day bin;
3. the quarter-end pull-in moves a win in the first ``qe_window`` days of quarter
   ``q >= 1`` to the last day of quarter ``q - 1`` with probability ``pull_in``;
4. the shared shock tilt ``P'(q) ∝ P(q) m[q]`` is applied by exact rejection: an
   item's walked outcome ``q`` (``H`` = no win in the horizon, weight 1) is accepted
   with probability ``m[q] / max(1, max_r m[r])``, otherwise the item is walked
   again from the start;
5. new deals: counts by gamma-Poisson, creation day uniform in the quarter, entry
   stage from the mix, then the same walk.

Discretisation (identical to the kernels, :mod:`forecast._kernels.outcomes`): an
entry at day bin ``t`` with age ``a`` that exits in sojourn bin ``l`` is won at day bin
``t + l - a``, or enters its next stage at ``t + l - a`` or ``t + l - a + 1`` with
probability 1/2 each; a new deal is created at a day bin uniform in its quarter,
plus one with probability 1/2.

Memory is O(chunk items); it is meant for small tests and as the benchmark baseline.
"""

from __future__ import annotations

import numpy as np

from forecast._kernels import ModelArrays, PathSamples
from forecast._validation import check_int, check_seed

__all__ = ["random_model_arrays", "simulate_oracle"]


class _Walker:
    """Precomputed cumulative exit masses for sampling walks on the day grid."""

    def __init__(self, arrays: ModelArrays) -> None:
        dens = arrays.dens
        n_draws, n_seg, n_open, n_codes, n_bins = dens.shape
        self.n_seg = n_seg
        self.n_open = n_open
        self.n_days = arrays.n_days
        rows = dens.reshape(n_draws * n_seg * n_open, n_codes, n_bins)
        self.rows = rows
        mass = rows.sum(axis=1)  # (R, L)
        self.cum = np.zeros((rows.shape[0], n_bins + 1))
        np.cumsum(mass, axis=1, out=self.cum[:, 1:])
        self.total = self.cum[:, -1].copy()
        self.beyond = np.clip(1.0 - self.total, 0.0, None)

    def row(self, b: np.ndarray, g: np.ndarray, k: np.ndarray) -> np.ndarray:
        return (b * self.n_seg + g) * self.n_open + k

    def first_exit(
        self, rng: np.random.Generator, row: np.ndarray, age: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sojourn bin ``l >= age`` (or -1: no exit within L) and destination code."""
        u = rng.random(row.shape[0])
        lag = np.full(row.shape[0], -1, dtype=np.int64)
        dest = np.full(row.shape[0], -1, dtype=np.int64)
        order = np.argsort(row, kind="stable")
        uniq, starts = np.unique(row[order], return_index=True)
        bounds = np.append(starts, order.shape[0])
        for i, r in enumerate(uniq):
            sel = order[bounds[i] : bounds[i + 1]]
            c = self.cum[r]
            base = c[age[sel]]
            surv = self.total[r] - base + self.beyond[r]
            target = base + u[sel] * surv
            inside = target < self.total[r]
            found = np.searchsorted(c, target[inside], side="right") - 1
            lag[sel[inside]] = np.maximum(found, age[sel[inside]])
        has = lag >= 0
        if has.any():
            idx = np.flatnonzero(has)
            probs = self.rows[row[idx], :, lag[idx]]  # (M, C)
            cum = np.cumsum(probs, axis=1)
            pick = rng.random(idx.shape[0]) * cum[:, -1]
            d = (cum <= pick[:, None]).sum(axis=1)
            dest[idx] = np.minimum(d, probs.shape[1] - 1)
        return lag, dest

    def walk(
        self,
        rng: np.random.Generator,
        b: np.ndarray,
        g: np.ndarray,
        k: np.ndarray,
        age: np.ndarray,
        t: np.ndarray,
    ) -> np.ndarray:
        """Raw win day bin of each item, or -1 if no win before ``n_days``."""
        win = np.full(b.shape[0], -1, dtype=np.int64)
        active = np.arange(b.shape[0])
        k = k.copy()
        age = age.copy()
        t = t.copy()
        while active.size:
            lag, dest = self.first_exit(rng, self.row(b[active], g[active], k[active]), age[active])
            t_exit = t[active] + lag - age[active]
            alive = (lag >= 0) & (t_exit < self.n_days)
            won = alive & (dest == self.n_open)
            win[active[won]] = t_exit[won]
            moving = alive & (dest < self.n_open)
            nxt = active[moving]
            k[nxt] = dest[moving]
            age[nxt] = 0
            # Midpoint rule: the next entry is in the exit's day bin or the one after.
            t[nxt] = t_exit[moving] + (rng.random(nxt.shape[0]) < 0.5)
            active = nxt
        return win


def _pick(
    rng: np.random.Generator, offsets: np.ndarray, values: np.ndarray, g: np.ndarray
) -> np.ndarray:
    """One CSR sample per item from its segment; 1.0 where the segment has none."""
    lo = offsets[g]
    count = offsets[g + 1] - lo
    out = np.ones(g.shape[0])
    has = count > 0
    idx = lo[has] + np.minimum(
        (rng.random(int(has.sum())) * count[has]).astype(np.int64), count[has] - 1
    )
    out[has] = values[idx]
    return out


def _outcomes(
    rng: np.random.Generator,
    walker: _Walker,
    arrays: ModelArrays,
    tilt: np.ndarray,
    path: np.ndarray,
    b: np.ndarray,
    g: np.ndarray,
    k: np.ndarray,
    age: np.ndarray,
    t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Accepted quarter (``H`` = none) and QE flag of each item, walking until accepted."""
    qb = arrays.qb
    n_q = qb.shape[0] - 1
    quarter = np.full(b.shape[0], n_q, dtype=np.int64)
    in_qe = np.zeros(b.shape[0], dtype=bool)
    pending = np.arange(b.shape[0])
    bound = np.maximum(1.0, tilt.max(axis=1))  # (P_chunk,)
    while pending.size:
        pb, pg = b[pending], g[pending]
        win = walker.walk(rng, pb, pg, k[pending], age[pending], t[pending])
        window = arrays.qe_window[pg]
        q = np.searchsorted(qb, win, side="right") - 1
        q[win < 0] = n_q
        early = (win >= 0) & (q >= 1) & (win < qb[np.minimum(q, n_q)] + window)
        pulled = early & (rng.random(pending.size) < arrays.pull_in[pb, pg])
        q[pulled] -= 1
        win[pulled] = qb[q[pulled] + 1] - 1
        inside = q < n_q
        qe = np.zeros(pending.size, dtype=bool)
        qi = q[inside]
        qe[inside] = win[inside] >= np.maximum(qb[qi + 1] - window[inside], qb[qi])
        weight = tilt[path[pending], q] / bound[path[pending]]
        accept = rng.random(pending.size) < weight
        done = pending[accept]
        quarter[done] = q[accept]
        in_qe[done] = qe[accept]
        pending = pending[~accept]
    return quarter, in_qe


def _settle(
    rng: np.random.Generator,
    walker: _Walker,
    arrays: ModelArrays,
    tilt: np.ndarray,
    cents_chunk: np.ndarray,
    path: np.ndarray,
    b: np.ndarray,
    g: np.ndarray,
    k: np.ndarray,
    age: np.ndarray,
    t: np.ndarray,
    amount: np.ndarray,
    source: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes and won cents of items; adds the cents into ``cents_chunk[path, q, g, source]``."""
    n_q = arrays.qb.shape[0] - 1
    q, qe = _outcomes(rng, walker, arrays, tilt, path, b, g, k, age, t)
    won = q < n_q
    ratio = np.where(
        qe[won],
        _pick(rng, arrays.ratio_qe_offsets, arrays.ratio_qe_values, g[won]),
        _pick(rng, arrays.ratio_offsets, arrays.ratio_values, g[won]),
    )
    cents = np.floor(amount[won] * ratio * 100.0 + 0.5).astype(np.int64)  # as the kernel
    np.add.at(cents_chunk, (path[won], q[won], g[won], source), cents)
    return won, q, cents


def simulate_oracle(
    arrays: ModelArrays, *, n_paths: int, seed: int, max_items: int = 500_000
) -> PathSamples:
    """Simulate ``n_paths`` paths by walking every deal (slow reference).

    Parameters
    ----------
    arrays : ModelArrays
        The model and today's pipeline.
    n_paths : int
        Number of paths, >= 1. Path ``p`` uses parameter draw ``p % B``.
    seed : int
        Seed of ``numpy.random.default_rng`` (a different stream from the kernels).
    max_items : int, default 500_000
        Upper bound on (path, deal) items walked at once (memory).

    Returns
    -------
    PathSamples
        Same layout as :func:`forecast._kernels.sample_paths`.
    """
    n_paths = check_int(n_paths, "n_paths", "simulate_oracle", minimum=1)
    seed = check_seed(seed, "simulate_oracle")
    rng = np.random.default_rng(seed)
    sizes = arrays.shape
    n_draws, n_seg, n_open, n_deals, n_q = (sizes[x] for x in ("B", "G", "K", "N", "H"))
    qb = arrays.qb
    walker = _Walker(arrays)
    totals = np.zeros((n_paths, n_q, n_seg, 2))
    deal_wins = np.zeros((n_deals, n_q), dtype=np.int64)
    deal_cents = np.zeros((n_deals, n_q), dtype=np.int64)
    chunk = max(1, max_items // max(n_deals, 1))
    mix_cum = np.cumsum(arrays.new_entry_mix, axis=-1)
    for p0 in range(0, n_paths, chunk):
        p1 = min(n_paths, p0 + chunk)
        n_p = p1 - p0
        draw = np.arange(p0, p1) % n_draws
        sigma = arrays.shock_sigma[draw][:, None]
        tilt = np.ones((n_p, n_q + 1))
        tilt[:, :n_q] = np.exp(-0.5 * sigma**2 + sigma * rng.standard_normal((n_p, n_q)))
        cents_chunk = np.zeros((n_p, n_q, n_seg, 2), dtype=np.int64)

        # Today's pipeline: every (path, deal) pair.
        if n_deals:
            path = np.repeat(np.arange(n_p), n_deals)
            deal = np.tile(np.arange(n_deals), n_p)
            g = arrays.deal_segment[deal]
            won, q, cents = _settle(
                rng,
                walker,
                arrays,
                tilt,
                cents_chunk,
                path,
                draw[path],
                g,
                arrays.deal_stage[deal],
                arrays.deal_age[deal],
                np.zeros(path.shape[0], dtype=np.int64),
                arrays.deal_amount[deal],
                0,
            )
            np.add.at(deal_wins, (deal[won], q[won]), 1)
            np.add.at(deal_cents, (deal[won], q[won]), cents)
        # New deals.
        lam = arrays.new_counts[draw]  # (n_p, G, H)
        shape = arrays.new_shape
        finite = (shape > 0) & np.isfinite(shape)
        if finite.any():
            mult = np.ones_like(lam)
            sh = np.broadcast_to(shape[None, :, None], lam.shape)
            sel = np.broadcast_to(finite[None, :, None], lam.shape) & (lam > 0)
            mult[sel] = rng.gamma(sh[sel], 1.0 / sh[sel])
            lam = lam * mult
        counts = rng.poisson(lam)
        if counts.sum():
            pi, gi, ci = np.nonzero(counts)
            rep = counts[pi, gi, ci]
            path = np.repeat(pi, rep)
            g = np.repeat(gi, rep)
            c = np.repeat(ci, rep)
            b = draw[path]
            t = rng.integers(qb[c], qb[c + 1]) + (rng.random(path.shape[0]) < 0.5)
            k = (mix_cum[b, g] <= (rng.random(path.shape[0]) * mix_cum[b, g, -1])[:, None]).sum(
                axis=1
            )
            k = np.minimum(k, n_open - 1)
            amount = _pick(rng, arrays.new_amount_offsets, arrays.new_amount_values, g)
            _settle(
                rng,
                walker,
                arrays,
                tilt,
                cents_chunk,
                path,
                b,
                g,
                k,
                np.zeros_like(t),
                t,
                amount,
                1,
            )
        totals[p0:p1] = cents_chunk / 100.0
    return PathSamples(totals=totals, deal_wins=deal_wins, deal_won_cents=deal_cents)


def random_model_arrays(
    rng: np.random.Generator,
    *,
    n_deals: int = 50,
    n_stages: int = 3,
    n_segments: int = 2,
    n_draws: int = 2,
    quarter_days: tuple[int, ...] = (40, 91, 92),
    qe_window: int = 7,
    pull_in: float = 0.3,
    max_age: int = 150,
    new_per_quarter: float = 5.0,
    new_shape: float = 4.0,
    shock_sigma: float = 0.3,
) -> ModelArrays:
    """A random but plausible model and pipeline, for tests and benchmarks.

    Exit destinations are Dirichlet draws over the other open stages and the three
    terminal codes (backward moves included); each destination has a geometric
    sojourn (mean 5–60 days), so ``dens`` has no support gaps and some mass beyond
    ``L``. Amount ratios and new-deal amounts are log-normal samples.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_deals, n_stages, n_segments, n_draws : int
        N, K, G, B.
    quarter_days : tuple of int
        Length of each horizon quarter, days (the first is the rest of the current one).
    qe_window : int
        Quarter-end window, days.
    pull_in, max_age, new_per_quarter, new_shape, shock_sigma
        Pull-in probability; oldest deal age, days; expected new deals per segment
        and quarter; their gamma-Poisson shape; shock log-sd.

    Returns
    -------
    ModelArrays
    """
    qb = np.concatenate([[0], np.cumsum(quarter_days)]).astype(np.int64)
    n_bins = max_age + int(qb[-1]) + qe_window + 5
    n_codes = n_stages + 3
    lag = np.arange(n_bins)
    dens = np.zeros((n_draws, n_segments, n_stages, n_codes, n_bins))
    for b in range(n_draws):
        for g in range(n_segments):
            for k in range(n_stages):
                share = rng.dirichlet(np.ones(n_codes))
                share[k] = 0.0
                share[n_stages] *= 1.5  # a little more winning
                share /= share.sum()
                for j in range(n_codes):
                    r = 1.0 - 1.0 / rng.uniform(5.0, 60.0)
                    dens[b, g, k, j] = share[j] * (1.0 - r) * r**lag
    n_q = len(quarter_days)

    def csr(size: int, mean: float, sd: float) -> tuple[np.ndarray, np.ndarray]:
        lengths = rng.integers(1, size, n_segments)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return offsets, rng.lognormal(np.log(mean), sd, offsets[-1])

    return ModelArrays(
        dens=dens,
        qb=qb,
        qe_window=qe_window,
        pull_in=pull_in,
        deal_segment=rng.integers(0, n_segments, n_deals),
        deal_stage=rng.integers(0, n_stages, n_deals),
        deal_age=rng.integers(0, max_age + 1, n_deals),
        deal_amount=np.round(rng.lognormal(np.log(20_000.0), 1.0, n_deals), 2),
        ratio=csr(50, 0.95, 0.1),
        ratio_qe=csr(50, 0.85, 0.1),
        new_counts=np.full((n_draws, n_segments, n_q), new_per_quarter)
        * rng.uniform(0.5, 1.5, (n_draws, n_segments, 1)),
        new_shape=np.full(n_segments, new_shape),
        new_entry_mix=rng.dirichlet(np.ones(n_stages), (n_draws, n_segments)),
        new_amount=csr(50, 15_000.0, 0.8),
        shock_sigma=np.full(n_draws, shock_sigma),
    )
