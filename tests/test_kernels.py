"""Tests of the Numba kernels: generator, exact outcome kernels, sampling kernel.

References: closed forms (geometric sojourns; absorbing Markov chain B = (I - Q)^-1 R),
an independent forward-propagation computation of the win-time distribution written
here in NumPy, scipy distributions for the generator, and a Python replay of the
documented per-path draw order.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import warnings

import numba
import numpy as np
import pytest
from scipy import stats

from forecast._kernels import (
    ModelArrays,
    outcome_probabilities,
    sample_paths,
    sampling_inputs,
    simulate_arrays,
)
from forecast._kernels import rng as krng
from forecast._kernels.arrays import PROB_TOL, _check_outcomes
from forecast._kernels.lanes import LANES, pipeline_outcomes
from forecast._kernels.outcomes import fresh_win_density
from forecast._kernels.sample import _below, _sample_index
from forecast._oracle import random_model_arrays
from forecast.errors import ParameterError


# --------------------------------------------------------------------------- helpers
@numba.njit
def _draws(seed, path, kinds, out):
    """Replay helper: kinds 0 = uniform, 1 = normal, 2 = uniform_pair (two values)."""
    state = krng.path_state(seed, path)
    i = 0
    for kind in kinds:
        if kind == 0:
            out[i], state = krng.uniform(state)
            i += 1
        elif kind == 1:
            out[i], state = krng.normal(state)
            i += 1
        else:
            a, b, state = krng.uniform_pair(state)
            out[i] = a
            out[i + 1] = b
            i += 2


@numba.njit
def _gammas(seed, shape, n):
    state = krng.path_state(seed, 0)
    out = np.empty(n)
    for i in range(n):
        out[i], state = krng.gamma(state, shape)
    return out


@numba.njit
def _poissons(seed, lam, n):
    state = krng.path_state(seed, 0)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i], state = krng.poisson(state, lam)
    return out


def _geometric_dens(win_share, r, n_bins, n_open=1):
    """One open stage, geometric sojourn P(T in bin l) = (1 - r) r**l, split won/lost."""
    lag = np.arange(n_bins)
    dens = np.zeros((n_open, n_open + 3, n_bins))
    dens[0, n_open] = win_share * (1 - r) * r**lag
    dens[0, n_open + 1] = (1 - win_share) * (1 - r) * r**lag
    return dens


def _forward_win_pmf(dens, stage, age, n_days):
    """Independent reference: P(raw win in day bin t), t < n_days, by forward propagation.

    Mass entering open stage j at bin t is pushed through its exit densities; a move in
    sojourn bin l lands half at bin t + l and half at t + l + 1 (the kernels' midpoint
    rule); same-day landings are iterated to convergence (a Neumann series) instead of
    solving (I - H0) as the kernel does.
    """
    n_open = dens.shape[0]
    won = n_open
    surv = 1.0 - dens[stage, :, :age].sum()
    first = dens[stage, :, age : age + n_days] / surv
    win = first[won].copy()
    entry = np.zeros((n_open, n_days + 1))
    entry[:, :n_days] += 0.5 * first[:n_open]
    entry[:, 1:] += 0.5 * first[:n_open]
    for t in range(n_days):
        delta = entry[:, t].copy()
        while delta.sum() > 1e-300:
            span = n_days - t
            for j in range(n_open):
                if delta[j] == 0.0:
                    continue
                win[t:] += delta[j] * dens[j, won, :span]
                entry[:, t + 1 : n_days] += 0.5 * delta[j] * dens[j, :n_open, 1:span]
                entry[:, t + 1 : n_days + 1] += 0.5 * delta[j] * dens[j, :n_open, :span]
            delta = delta @ (0.5 * dens[:, :n_open, 0])
    return win


def _quarters_from_pmf(raw, qb, window, pull_in):
    """Reference pull-in by moving mass bin by bin: (p_win (H,), p_qe (H,))."""
    n_q = len(qb) - 1
    raw = raw.copy()
    for q in range(1, n_q + 1):
        lo = qb[q]
        moved = pull_in * raw[lo : lo + window].sum()
        raw[lo : lo + window] *= 1 - pull_in
        raw[qb[q] - 1] += moved  # last day of quarter q - 1
    p_win = np.array([raw[qb[q] : qb[q + 1]].sum() for q in range(n_q)])
    late = np.array([raw[max(qb[q + 1] - window, qb[q]) : qb[q + 1]].sum() for q in range(n_q)])
    p_qe = np.divide(late, p_win, out=np.zeros(n_q), where=p_win > 0)
    return p_win, p_qe


def _chain_dens(rng, n_open, n_bins, same_day=0.02):
    """Open stages with geometric sojourns, backward moves and some same-day moves."""
    n_codes = n_open + 3
    lag = np.arange(n_bins)
    dens = np.zeros((n_open, n_codes, n_bins))
    for k in range(n_open):
        share = rng.dirichlet(np.ones(n_codes))
        share[k] = 0.0
        share /= share.sum()
        r = 1.0 - 1.0 / rng.uniform(5, 40)
        for j in range(n_codes):
            dens[k, j] = share[j] * (1 - r) * r**lag
        for j in range(n_open):
            if j != k:  # turn a fraction of the moves into same-day moves (mass kept)
                total = dens[k, j].sum()
                dens[k, j] *= 1 - same_day
                dens[k, j, 0] += same_day * total
    return dens


def _one_segment_arrays(dens, qb, ages, stages, window, pull_in, **kw):
    return ModelArrays(
        dens=dens[None, None],
        qb=np.asarray(qb),
        qe_window=window,
        pull_in=pull_in,
        deal_segment=np.zeros(len(ages), dtype=np.int64),
        deal_stage=stages,
        deal_age=ages,
        deal_amount=np.full(len(ages), 100.0),
        **kw,
    )


# --------------------------------------------------------------------------- generator
def test_uniform_normal_and_pair_follow_their_distributions():
    n = 20_000
    out = np.empty(n)
    _draws(11, 3, np.zeros(n, dtype=np.int64), out)
    # Fixed seed: the KS p-value is a deterministic number; a broken generator gives ~0.
    assert stats.kstest(out, "uniform").pvalue > 1e-3
    assert out.min() >= 0.0 and out.max() < 1.0
    _draws(11, 4, np.ones(n, dtype=np.int64), out)
    assert stats.kstest(out, "norm").pvalue > 1e-3
    _draws(11, 5, np.full(n // 2, 2, dtype=np.int64), out)
    assert stats.kstest(out[0::2], "uniform").pvalue > 1e-3
    assert stats.kstest(out[1::2], "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(out[0::2], out[1::2])[0, 1]) < 4 / np.sqrt(n / 2)  # 4 SE of r


def test_streams_depend_on_seed_and_path_only():
    a, b, c, d = (np.empty(100) for _ in range(4))
    kinds = np.zeros(100, dtype=np.int64)
    _draws(5, 7, kinds, a)
    _draws(5, 7, kinds, b)
    _draws(5, 8, kinds, c)
    _draws(6, 7, kinds, d)
    assert np.array_equal(a, b)
    assert not np.any(a == c) and not np.any(a == d)
    # Neighbouring paths' streams are uncorrelated (4 standard errors of r).
    assert abs(np.corrcoef(a, c)[0, 1]) < 4 / np.sqrt(100)


@pytest.mark.parametrize("shape", [0.4, 1.0, 3.5, 40.0])
def test_gamma_matches_scipy(shape):
    x = _gammas(3, shape, 20_000)
    assert stats.kstest(x, stats.gamma(shape).cdf).pvalue > 1e-3


@pytest.mark.parametrize("lam", [0.3, 4.0, 10.0, 75.0, 2000.0])
def test_poisson_matches_scipy(lam):
    n = 20_000
    k = _poissons(9, lam, n)
    # Mean within 4 SE (sd sqrt(lam / n)); variance within 4 SE (sd ≈ lam sqrt(2/n) + kurtosis).
    assert abs(k.mean() - lam) < 4 * np.sqrt(lam / n)
    assert abs(k.var() - lam) < 4 * lam * np.sqrt((2 + 1 / lam) / n)
    # Chi-square on the central support (expected count >= 20 per cell).
    support = np.arange(k.max() + 1)
    expected = n * stats.poisson(lam).pmf(support)
    keep = expected >= 20
    observed = np.bincount(k, minlength=support.size)[keep]
    exp_k = expected[keep]
    chi2 = ((observed - exp_k) ** 2 / exp_k).sum()
    assert stats.chi2(keep.sum()).sf(chi2) > 1e-3


def test_invalid_generator_parameters_do_not_raise():
    assert np.isnan(_gammas(1, 0.0, 1)[0])
    assert _poissons(1, -1.0, 1)[0] == 0
    assert _poissons(1, np.nan, 1)[0] == 0


# --------------------------------------------------------------------------- lanes
@numba.njit
def _outcomes_lanes(states, p_win_t, p_none, shocks, outcome, wins):
    pipeline_outcomes(states, p_win_t, p_none, shocks, outcome, wins)


@numba.njit
def _outcomes_scalar(state, p_win_t, p_none, m, outcome):
    """The plain reading of step 2 for one path: a uniform, then the tilted categorical."""
    n_q, n_deals = p_win_t.shape
    for n in range(n_deals):
        u, state = krng.uniform(state)
        acc = 0.0
        for r in range(n_q):
            acc += p_win_t[r, n] * m[r]
        target = u * (acc + p_none[n])
        acc = 0.0
        q = 0
        for r in range(n_q):
            acc += p_win_t[r, n] * m[r]
            if target >= acc:
                q += 1
        outcome[n] = q
    return state


def _lane_inputs(rng, n_deals, n_q):
    p = rng.dirichlet(np.ones(n_q + 1), n_deals) * rng.uniform(0.0, 1.0, (n_deals, 1))
    p_win = p[:, :n_q]
    if n_deals >= 8:  # edge rows: p_none = 0, certain win, never, tiny, one quarter only
        p_win[:8] = 0.0
        p_win[0, :] = 1.0 / n_q
        p_win[1, -1] = 1.0
        p_win[3, 0] = 1e-310
        p_win[4, n_q // 2] = 0.5
        p_win[5] = np.nextafter(1.0 / n_q, 0.0)
    p_none = np.clip(1.0 - p_win.sum(axis=1), 0.0, None)
    shocks = np.exp(rng.normal(-0.5, 1.5, (n_q, LANES)))
    shocks[:, 1] = 1.0
    return np.ascontiguousarray(p_win.T), p_none, shocks


@pytest.mark.parametrize(("n_deals", "n_q"), [(1, 1), (63, 2), (64, 5), (300, 4), (129, 12)])
def test_pipeline_outcomes_lanes_equal_the_scalar_reading(n_deals, n_q):
    rng = np.random.default_rng(n_deals + n_q)
    p_win_t, p_none, shocks = _lane_inputs(rng, n_deals, n_q)
    states = np.empty((4, LANES), dtype=np.uint64)
    for lane in range(LANES):
        states[:, lane] = krng.path_state(17, lane)
    start = states.copy()
    outcome = np.empty((n_deals, LANES), dtype=np.int32)
    wins = np.empty(((n_deals + 63) // 64, LANES), dtype=np.uint64)
    _outcomes_lanes(states, p_win_t, p_none, shocks, outcome, wins)
    for lane in range(LANES):
        expected = np.empty(n_deals, dtype=np.int64)
        end = _outcomes_scalar(tuple(start[:, lane]), p_win_t, p_none, shocks[:, lane], expected)
        assert np.array_equal(outcome[:, lane], expected)
        assert tuple(states[:, lane]) == end  # advanced by exactly one output per deal
        won = np.zeros(wins.shape[0] * 64, dtype=bool)
        won[:n_deals] = expected < n_q
        bits = (won.reshape(-1, 64) * (2 ** np.arange(64, dtype=np.uint64))).sum(axis=1)
        assert np.array_equal(wins[:, lane], bits.astype(np.uint64))
    if n_deals > 1:
        assert np.any(outcome < n_q) and np.any(outcome == n_q)


@numba.njit
def _below_many(bits, p):
    out = np.empty(bits.shape[0], dtype=np.uint64)
    for i in range(bits.shape[0]):
        out[i] = _below(bits[i], p[i])
    return out


def test_below_is_the_exact_comparison_of_the_uniform():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 5000, dtype=np.uint64)
    at = bits.astype(np.float64) * 2.0**-32  # p exactly at, just above and just below u
    p = np.concatenate([rng.random(5000), at, np.nextafter(at, 2.0), np.nextafter(at, -1.0)])
    bits = np.tile(bits, 4)
    edges = np.array([0, 0, 1, 2**32 - 1, 2**32 - 1, 2**32 - 1], dtype=np.uint64)
    p_edges = np.array([0.0, 1.0, 0.0, 1.0, 1.0 - 2.0**-32, 5e-324])
    bits, p = np.concatenate([bits, edges]), np.concatenate([p, p_edges])
    expected = (bits.astype(np.float64) * 2.0**-32 < p).astype(np.uint64)
    assert np.array_equal(_below_many(bits, p), expected)
    assert 0 < expected.sum() < expected.size


@numba.njit
def _index_many(bits, count):
    out = np.empty(bits.shape[0], dtype=np.int64)
    for i in range(bits.shape[0]):
        out[i] = np.int64(_sample_index(bits[i], count[i]))
    return out


def test_sample_index_equals_the_float_formula():
    rng = np.random.default_rng(5)
    bits = np.concatenate(
        [rng.integers(0, 2**32, 20_000, dtype=np.uint64), np.array([0, 1, 2**31, 2**32 - 1])]
    ).astype(np.uint64)
    counts = [1, 2, 3, 7, 50, 999, 2**21 - 1, 2**21, 2**21 + 1, 2**30 + 3, 2**32 - 1]
    for count in counts:
        c = np.full(bits.shape, count, dtype=np.uint64)
        u = bits.astype(np.float64) * 2.0**-32  # the kernel's reading: floor(u * count)
        expected = np.minimum((u * float(count)).astype(np.int64), count - 1)
        assert np.array_equal(_index_many(bits, c), expected), count


# --------------------------------------------------------------------------- outcomes
def test_fresh_win_density_geometric_closed_form():
    r, w = 0.95, 0.4
    dens = _geometric_dens(w, r, 300)
    out = np.empty((1, 300))
    assert fresh_win_density(dens, 300, out) == 0
    # One stage: W[0, d] = w (1 - r) r**d exactly (closed form).
    np.testing.assert_allclose(out[0], w * (1 - r) * r ** np.arange(300), rtol=1e-12, atol=0)


def test_fresh_win_density_absorbing_chain_closed_form():
    """Total win mass equals B = (I - Q)^-1 R of the embedded chain (backward moves)."""
    rng = np.random.default_rng(4)
    n_open, n_bins = 4, 2500
    dens = _chain_dens(rng, n_open, n_bins)
    out = np.empty((n_open, n_bins))
    assert fresh_win_density(dens, n_bins, out) == 0
    moves = dens.sum(axis=2)
    q_mat, r_vec = moves[:, :n_open], moves[:, n_open]
    absorb = np.linalg.solve(np.eye(n_open) - q_mat, r_vec)
    # Mass not absorbed after 2500 days is < 1e-12 (sojourn means <= 40 days, the
    # chain leaves the open stages with probability >= 1/4 per visit).
    np.testing.assert_allclose(out.sum(axis=1), absorb, rtol=0, atol=1e-9)


def test_fresh_win_density_same_day_loop_closed_form():
    """Same-day moves 0 -> 1 -> 0 with a same-day win: midpoint landing, closed form.

    From stage 0 a deal wins in its entry bin (1/2) or moves to stage 1 (1/2), which
    sends it straight back; each move lands in the same or the next day bin with
    probability 1/2. So the win day is a sum of N Binomial(2, 1/2) round-trip delays
    with P(N = n) = 2**-(n + 1): generating function ``(1/2) / (1 - ((1 + z) / 2)**2 / 2)``.
    """
    n_days = 60
    dens = np.zeros((2, 5, 10))
    dens[0, 1, 0] = 0.5
    dens[0, 2, 0] = 0.5  # won
    dens[1, 0, 0] = 1.0
    out = np.empty((2, n_days))
    assert fresh_win_density(dens, n_days, out) == 0
    # Power series of the generating function, by its recursion on coefficients:
    # g(z) (1 - (1 + 2z + z^2) / 8) = 1/2.
    g = np.zeros(n_days)
    for d in range(n_days):
        rhs = 0.5 if d == 0 else 0.0
        if d >= 1:
            rhs += 2 * g[d - 1] / 8
        if d >= 2:
            rhs += g[d - 2] / 8
        g[d] = rhs / (1 - 1 / 8)
    np.testing.assert_allclose(out[0], g, rtol=1e-12, atol=1e-300)
    assert out[0].sum() == pytest.approx(1.0, abs=1e-6)


def test_fresh_win_density_reports_singular_system_for_invalid_densities():
    # Rows summing to 2 (not sub-densities) make I - H0 singular: reported, not raised.
    dens = np.zeros((2, 5, 10))
    dens[0, 1, 0] = 2.0
    dens[1, 0, 0] = 2.0
    assert fresh_win_density(dens, 10, np.empty((2, 10))) == 1


def test_deal_probs_geometric_closed_form_with_pull_in():
    r, w, window, pull = 0.97, 0.35, 7, 0.4
    qb = np.array([0, 40, 131, 223])
    dens = _geometric_dens(w, r, 400)
    arrays = _one_segment_arrays(dens, qb, [0, 13, 90], [0, 0, 0], window, pull)
    out = outcome_probabilities(arrays)

    def raw(x0, x1):  # P(raw win bin in [x0, x1)) = w (r**x0 - r**x1): memoryless, any age
        return w * (r**x0 - r**x1)

    expected, expected_qe = [], []
    for q in range(3):
        p = raw(qb[q], qb[q + 1]) + pull * raw(qb[q + 1], qb[q + 1] + window)
        if q >= 1:
            p -= pull * raw(qb[q], qb[q] + window)
        late = raw(qb[q + 1] - window, qb[q + 1]) + pull * raw(qb[q + 1], qb[q + 1] + window)
        expected.append(p)
        expected_qe.append(late / p)
    for n in range(3):
        np.testing.assert_allclose(out.p_win[0, n], expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.p_qe[0, n], expected_qe, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deal_probs_match_forward_propagation(seed):
    rng = np.random.default_rng(seed)
    n_open = 3
    qb = np.array([0, 25, 116, 208])
    window, pull = 6, 0.3
    n_days = qb[-1] + window
    ages = np.array([0, 3, 17, 40, 60, 3])
    stages = np.array([0, 1, 2, 0, 1, 1])
    dens = _chain_dens(rng, n_open, ages.max() + n_days)
    # The reference conditions with 1 - sum_{l < a} f, which loses relative accuracy
    # ~1e-16 / S(a); keep S(a) > 1e-6 so that it is accurate to 1e-10.
    surv = 1.0 - np.cumsum(dens.sum(axis=1), axis=1)
    assert all(surv[k, a - 1] > 1e-6 for k, a in zip(stages, ages) if a > 0)
    out = outcome_probabilities(_one_segment_arrays(dens, qb, ages, stages, window, pull))
    for n in range(len(ages)):
        ref = _forward_win_pmf(dens, stages[n], ages[n], n_days)
        p_ref, qe_ref = _quarters_from_pmf(ref, qb, window, pull)
        np.testing.assert_allclose(out.p_win[0, n], p_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.p_qe[0, n], qe_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_new_deal_probs_match_averaged_forward_propagation():
    rng = np.random.default_rng(8)
    n_open = 3
    qb = np.array([0, 30, 121, 213])
    window, pull = 5, 0.25
    n_days = qb[-1] + window
    dens = _chain_dens(rng, n_open, n_days + 5)
    mix = np.array([0.6, 0.3, 0.1])
    arrays = _one_segment_arrays(
        dens, qb, [0], [0], window, pull, new_counts=np.ones((1, 1, 3)), new_entry_mix=mix
    )
    out = outcome_probabilities(arrays)
    fresh = sum(mix[k] * _forward_win_pmf(dens, k, 0, n_days) for k in range(n_open))
    for c in range(3):
        days = range(qb[c], qb[c + 1])
        raw = np.zeros(n_days)
        for s in days:  # created uniformly within day s: half a bin later on average
            raw[s:] += 0.5 * fresh[: n_days - s] / len(days)
            raw[s + 1 :] += 0.5 * fresh[: n_days - s - 1] / len(days)
        p_ref, qe_ref = _quarters_from_pmf(raw, qb, window, pull)
        np.testing.assert_allclose(out.new_pmf[0, 0, c], p_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.new_qe[0, 0, c], qe_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_probability_rows_are_valid(seed):
    arrays = random_model_arrays(np.random.default_rng(seed), n_deals=80, max_age=300)
    out = outcome_probabilities(arrays)
    for p in (out.p_win, out.p_qe, out.new_pmf, out.new_qe):
        assert np.all(p >= 0) and np.all(p <= 1)
    assert np.all(out.p_win.sum(-1) <= 1 + 1e-12)
    assert np.all(out.new_pmf.sum(-1) <= 1 + 1e-12)
    # A deal created in quarter c cannot win before c - 1; in c - 1 only by the pull-in
    # of a win in the first days of c (the model moves wins regardless of creation).
    pull = arrays.pull_in
    for c in range(1, out.new_pmf.shape[2]):
        assert np.all(out.new_pmf[:, :, c, : c - 1] == 0)
        assert np.all(out.new_pmf[:, :, c, c - 1] <= pull + 1e-15)
        assert np.all(out.new_qe[:, :, c, c - 1][out.new_pmf[:, :, c, c - 1] > 0] == 1.0)


def test_deals_sharing_stage_and_age_share_results():
    arrays = random_model_arrays(np.random.default_rng(3), n_deals=40)
    out = outcome_probabilities(arrays)
    seg, st, age = arrays.deal_segment, arrays.deal_stage, arrays.deal_age
    arrays2 = ModelArrays(
        dens=arrays.dens,
        qb=arrays.qb,
        qe_window=arrays.qe_window,
        pull_in=arrays.pull_in,
        deal_segment=np.r_[seg, seg[:5]],
        deal_stage=np.r_[st, st[:5]],
        deal_age=np.r_[age, age[:5]],
        deal_amount=np.r_[arrays.deal_amount, arrays.deal_amount[:5]],
    )
    out2 = outcome_probabilities(arrays2)
    assert np.array_equal(out2.p_win[:, :40], out.p_win)
    assert np.array_equal(out2.p_win[:, 40:], out.p_win[:, :5])


# --------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def model():
    arrays = random_model_arrays(np.random.default_rng(21), n_deals=60, n_draws=3)
    return arrays, outcome_probabilities(arrays)


def test_samples_identical_for_threads_and_chunks(model):
    arrays, outcomes = model
    if numba.config.NUMBA_NUM_THREADS < 2:  # pragma: no cover
        pytest.skip("needs 2 Numba threads")
    base = simulate_arrays(arrays, n_paths=301, seed=42, outcomes=outcomes, threads=1)
    runs = [
        simulate_arrays(arrays, n_paths=301, seed=42, outcomes=outcomes, threads=2),
        simulate_arrays(arrays, n_paths=301, seed=42, outcomes=outcomes, threads=2, chunk_size=7),
        simulate_arrays(arrays, n_paths=301, seed=42, outcomes=outcomes, threads=1, chunk_size=100),
    ]
    for run in runs:
        assert np.array_equal(run.totals, base.totals)
        assert np.array_equal(run.deal_wins, base.deal_wins)
        assert np.array_equal(run.deal_won_cents, base.deal_won_cents)
    # Shards [0, 100) + [100, 301) concatenate to the whole run; deal sums add up.
    a = simulate_arrays(arrays, n_paths=100, seed=42, outcomes=outcomes, threads=2)
    b = simulate_arrays(arrays, n_paths=201, path_start=100, seed=42, outcomes=outcomes)
    assert np.array_equal(np.concatenate([a.totals, b.totals]), base.totals)
    assert np.array_equal(a.deal_wins + b.deal_wins, base.deal_wins)
    assert np.array_equal(a.deal_won_cents + b.deal_won_cents, base.deal_won_cents)
    other = simulate_arrays(arrays, n_paths=301, seed=43, outcomes=outcomes)
    assert not np.array_equal(other.totals, base.totals)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_samples_with_threads(model):
    """The sampler's thread pool does not survive a fork; the child starts its own."""
    arrays, outcomes = model
    base = simulate_arrays(arrays, n_paths=120, seed=8, outcomes=outcomes, threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        child = simulate_arrays(arrays, n_paths=120, seed=8, outcomes=outcomes, threads=2)
        os._exit(0 if np.array_equal(child.totals, base.totals) else 3)
    deadline = time.monotonic() + 120.0  # a child waiting on a dead pool would hang
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish sampling")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_pipeline_totals_conserve_deal_cents(model):
    arrays, outcomes = model
    out = simulate_arrays(arrays, n_paths=200, seed=1, outcomes=outcomes)
    # Totals are exact sums of cents: per quarter, paths' pipeline totals == deals' cents.
    per_q = np.rint(out.totals[..., 0].sum(axis=2) * 100).astype(np.int64).sum(axis=0)
    assert np.array_equal(per_q, out.deal_won_cents.sum(axis=0))
    assert out.deal_wins.sum() > 0 and out.totals[..., 1].sum() > 0


@numba.njit
def _replay_untilted(seed, n_paths, p_win, p_qe, amount, segment, r_off, r_val, n_q):
    """Documented draw order with sigma = 0 and NO tilt arithmetic (plain cumsum)."""
    n_deals = p_win.shape[1]
    wins = np.zeros((n_deals, n_q), dtype=np.int64)
    cents = np.zeros((n_deals, n_q), dtype=np.int64)
    for p in range(n_paths):
        b = p % p_win.shape[0]
        state = krng.path_state(seed, p)
        for _ in range(n_q):
            _z, state = krng.normal(state)
        outcome = np.full(n_deals, -1)
        for n in range(n_deals):
            u, state = krng.uniform(state)
            acc = 0.0
            for q in range(n_q):
                acc += p_win[b, n, q]
                if u < acc:
                    outcome[n] = q
                    break
        for n in range(n_deals):
            q = outcome[n]
            if q < 0:
                continue
            u, u2, state = krng.uniform_pair(state)
            row = 1 if u < p_qe[b, n, q] else 0
            g = segment[n]
            lo = r_off[row, g]
            cnt = r_off[row, g + 1] - lo
            ratio = r_val[lo + min(int(u2 * cnt), cnt - 1)]
            wins[n, q] += 1
            cents[n, q] += np.int64(amount[n] * ratio * 100.0 + 0.5)
    return wins, cents


def test_zero_sigma_equals_no_tilt_replay(model):
    arrays, outcomes = model
    n_q = outcomes.p_win.shape[2]
    inputs = dataclasses.replace(
        sampling_inputs(arrays, outcomes),
        shock_sigma=np.zeros(arrays.shock_sigma.shape),
        new_counts=np.zeros(arrays.new_counts.shape),
    )
    out = sample_paths(inputs, seed=5, n_paths=150)
    r_off = np.stack([arrays.ratio_offsets, arrays.ratio_qe_offsets + arrays.ratio_values.size])
    r_val = np.concatenate([arrays.ratio_values, arrays.ratio_qe_values])
    wins, cents = _replay_untilted(
        5,
        150,
        outcomes.p_win,
        outcomes.p_qe,
        arrays.deal_amount,
        arrays.deal_segment,
        r_off,
        r_val,
        n_q,
    )
    assert np.array_equal(out.deal_wins, wins)
    assert np.array_equal(out.deal_won_cents, cents)


def test_win_frequencies_match_p_win_without_shocks(model):
    arrays, outcomes = model
    inputs = dataclasses.replace(
        sampling_inputs(arrays, outcomes), shock_sigma=np.zeros(arrays.shock_sigma.shape)
    )
    n_paths = 6000
    out = sample_paths(inputs, seed=9, n_paths=n_paths)
    expected = outcomes.p_win.mean(axis=0)  # draws used equally often (6000 % 3 == 0)
    freq = out.deal_wins / n_paths
    # Binomial SE with p averaged over draws is an upper bound on the mixture SE;
    # 5 SE over 60 × 3 cells keeps the family-wise false-alarm rate below 1e-4.
    se = np.sqrt(expected * (1 - expected) / n_paths) + 1e-12
    assert np.all(np.abs(freq - expected) < 5 * se + 1e-9)


def test_new_deal_win_counts_match_poisson_thinning(model):
    arrays, outcomes = model
    inputs = dataclasses.replace(
        sampling_inputs(arrays, outcomes),
        shock_sigma=np.zeros(arrays.shock_sigma.shape),
        new_shape=np.full(arrays.new_shape.shape, np.inf),
        new_amount_offsets=np.zeros_like(arrays.new_amount_offsets),  # empty: amount 1
        new_amount_values=np.zeros(0),
        ratio_offsets=np.zeros_like(arrays.ratio_offsets),  # empty: ratio 1
        ratio_values=np.zeros(0),
        ratio_qe_offsets=np.zeros_like(arrays.ratio_qe_offsets),
        ratio_qe_values=np.zeros(0),
    )
    n_paths = 3000
    out = sample_paths(inputs, seed=4, n_paths=n_paths)
    wins = out.totals[..., 1]  # (P, H, G): counts of won new deals (amount 1, ratio 1)
    draw = np.arange(n_paths) % outcomes.new_pmf.shape[0]
    mean = np.einsum("bgc,bgcq->bqg", arrays.new_counts, outcomes.new_pmf)[draw].mean(axis=0)
    # Poisson counts: SE of the mean <= sqrt(max mean / n); 4.5 SE over H × G cells.
    assert np.all(np.abs(wins.mean(axis=0) - mean) < 4.5 * np.sqrt(mean.max() / n_paths))


def test_progress_and_interrupt_between_chunks(model):
    arrays, outcomes = model
    seen = []

    def progress(n):
        seen.append(n)

    simulate_arrays(arrays, n_paths=50, seed=3, outcomes=outcomes, chunk_size=20, progress=progress)
    assert seen == [20, 20, 10]

    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_arrays(arrays, n_paths=50, seed=3, outcomes=outcomes, chunk_size=20, progress=stop)
    part = simulate_arrays(
        arrays,
        n_paths=50,
        seed=3,
        outcomes=outcomes,
        chunk_size=20,
        progress=stop,
        partial_on_interrupt=True,
    )
    full = simulate_arrays(arrays, n_paths=20, seed=3, outcomes=outcomes)
    assert part.interrupted and part.n_paths == 20
    assert np.array_equal(part.totals, full.totals)
    assert np.array_equal(part.deal_wins, full.deal_wins)


# --------------------------------------------------------------------------- validation
def test_validation_names_the_parameter(model):
    arrays, outcomes = model
    inputs = sampling_inputs(arrays, outcomes)
    with pytest.raises(ParameterError, match="`seed`"):
        sample_paths(inputs, seed=-1, n_paths=10)
    with pytest.raises(ParameterError, match="`n_paths`"):
        sample_paths(inputs, seed=1, n_paths=0)
    with pytest.raises(ParameterError, match="`n_paths`"):
        sample_paths(inputs, seed=1, n_paths=True)
    with pytest.raises(ParameterError, match="`p_win`"):
        dataclasses.replace(inputs, p_win=outcomes.p_win * 3)
    with pytest.raises(ParameterError, match="`p_win`"):
        sampling_inputs(arrays, dataclasses.replace(outcomes, p_win=outcomes.p_win * 3))
    with pytest.raises(ParameterError, match="`shock_sigma`"):
        dataclasses.replace(inputs, shock_sigma=-inputs.shock_sigma - 1)
    with pytest.raises(ParameterError, match="`inputs`"):
        sample_paths(vars(inputs), seed=1, n_paths=10)
    with pytest.raises(ParameterError, match="`threads`"):
        sample_paths(inputs, seed=1, n_paths=10, threads=10_000)
    # numpy integers are run settings like any other int
    a = sample_paths(inputs, seed=np.uint64(3), n_paths=np.int32(20), chunk_size=np.int64(7))
    b = sample_paths(inputs, seed=3, n_paths=20)
    assert np.array_equal(a.totals, b.totals)
    dens = arrays.dens
    base = {
        "qb": arrays.qb,
        "deal_segment": arrays.deal_segment,
        "deal_stage": arrays.deal_stage,
        "deal_age": arrays.deal_age,
        "deal_amount": arrays.deal_amount,
    }
    with pytest.raises(ParameterError, match="L >= max"):
        ModelArrays(dens=dens[..., :50], **base)
    with pytest.raises(ParameterError, match="C = K \\+ 3"):
        ModelArrays(dens=dens[:, :, :, :-1], **base)
    with pytest.raises(ParameterError, match="`qb`"):
        ModelArrays(dens=dens, **dict(base, qb=[0, 5, 5]))
    with pytest.raises(ParameterError, match="`qe_window`"):
        ModelArrays(dens=dens, qe_window=60, **base)
    with pytest.raises(ParameterError, match="`deal_stage`"):
        ModelArrays(dens=dens, **dict(base, deal_stage=base["deal_stage"] + 10))
    with pytest.raises(ParameterError, match="`new_entry_mix`"):
        ModelArrays(dens=dens, new_entry_mix=np.ones(dens.shape[2]), **base)


def test_outcome_checks_allow_rounding_above_one_and_nothing_more() -> None:
    # a mixture of exact probabilities can land one ulp above 1; it is accepted, while
    # anything beyond the tolerance of the row sums is refused
    pmf = np.zeros((1, 1, 2, 2))
    qe = np.zeros((1, 1, 2, 2))
    rounded = np.array([[[np.nextafter(1.0, 2.0), 0.0]]])
    p_win, _, _, _ = _check_outcomes(rounded, np.zeros_like(rounded), pmf, qe, 1)
    assert p_win[0, 0, 0] > 1.0
    too_big = np.array([[[1.0 + 10 * PROB_TOL, 0.0]]])
    with pytest.raises(ParameterError, match="p_win"):
        _check_outcomes(too_big, np.zeros_like(too_big), pmf, qe, 1)
