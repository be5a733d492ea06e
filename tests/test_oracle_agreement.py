"""The Numba engine and the NumPy walking oracle agree in distribution.

The two simulate the same model by different algorithms (exact outcome distributions
+ one tilted categorical per deal, versus walking every deal through the stages with
rejection sampling of the tilt) and different random streams, so they are compared
statistically with tolerances from the Monte Carlo error:

- means per quarter and source: |difference| < 4 standard errors, SE² = var_k / n_k +
  var_o / n_o (independent samples);
- quantiles P10 / P50 / P90: the oracle's empirical CDF at the engine's quantile
  must be within p ± 4 sd, sd = sqrt(p (1 - p) (1 / n_k + 1 / n_o)) (the CDF value
  at an empirical p-quantile has sd sqrt(p (1 - p) / n), and the ECDF it is read
  from adds its own); ties (e.g. an atom at 0) are allowed for by checking
  P(X < q) <= p + tol and P(X <= q) >= p - tol.

With about 60 such checks at 4 sd each, a correct engine fails with probability < 1%
on a fresh seed; the seeds here are fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest

from forecast._kernels import ModelArrays, outcome_probabilities, simulate_arrays
from forecast._oracle import random_model_arrays, simulate_oracle

N_KERNEL = 20_000
N_ORACLE = 8_000
LEVELS = (0.1, 0.5, 0.9)


def _assert_agree(kernel: np.ndarray, oracle: np.ndarray, label: str) -> None:
    """``kernel`` (n_k, H) and ``oracle`` (n_o, H) samples of per-quarter totals."""
    n_k, n_o = kernel.shape[0], oracle.shape[0]
    for q in range(kernel.shape[1]):
        k, o = kernel[:, q], oracle[:, q]
        se = np.sqrt(k.var() / n_k + o.var() / n_o)
        assert abs(k.mean() - o.mean()) <= 4 * se + 1e-9, (label, q, k.mean(), o.mean(), se)
        o_sorted = np.sort(o)
        for p in LEVELS:
            x = np.quantile(k, p)
            tol = 4 * np.sqrt(p * (1 - p) * (1 / n_k + 1 / n_o))
            below = np.searchsorted(o_sorted, x, side="left") / n_o
            at_or_below = np.searchsorted(o_sorted, x, side="right") / n_o
            assert below <= p + tol and at_or_below >= p - tol, (label, q, p, below, at_or_below)


def _compare(arrays: ModelArrays, seed: int) -> None:
    kernel = simulate_arrays(arrays, n_paths=N_KERNEL, seed=seed)
    oracle = simulate_oracle(arrays, n_paths=N_ORACLE, seed=seed + 1000)
    for source, name in ((0, "pipeline"), (1, "new deals")):
        _assert_agree(kernel.totals[..., source].sum(-1), oracle.totals[..., source].sum(-1), name)
    # Per segment, pipeline only (segments are independent given the shocks).
    for g in range(kernel.totals.shape[2]):
        _assert_agree(kernel.totals[:, :, g, 0], oracle.totals[:, :, g, 0], f"segment {g}")


@pytest.mark.slow
def test_random_model_with_everything():
    """Backward moves, pull-in, shocks, two parameter draws, NegBin new deals."""
    arrays = random_model_arrays(np.random.default_rng(1), n_deals=30, n_segments=2, n_draws=2)
    _compare(arrays, seed=11)


@pytest.mark.slow
def test_strong_shocks_and_poisson_arrivals():
    arrays = random_model_arrays(
        np.random.default_rng(2),
        n_deals=25,
        n_segments=1,
        n_draws=1,
        n_stages=4,
        shock_sigma=0.8,
        new_shape=np.inf,
        pull_in=0.6,
        qe_window=10,
        quarter_days=(20, 91, 91, 92),
    )
    _compare(arrays, seed=12)


@pytest.mark.slow
def test_new_deals_only():
    base = random_model_arrays(np.random.default_rng(3), n_deals=1, n_segments=2, n_draws=3)
    arrays = ModelArrays(
        dens=base.dens,
        qb=base.qb,
        qe_window=base.qe_window,
        pull_in=base.pull_in,
        deal_segment=np.zeros(0, dtype=np.int64),
        deal_stage=np.zeros(0, dtype=np.int64),
        deal_age=np.zeros(0, dtype=np.int64),
        deal_amount=np.zeros(0),
        ratio=(base.ratio_offsets, base.ratio_values),
        ratio_qe=(base.ratio_qe_offsets, base.ratio_qe_values),
        new_counts=base.new_counts * 3,
        new_shape=np.array([1.5, 0.0]),  # NegBin and Poisson
        new_entry_mix=base.new_entry_mix,
        new_amount=(base.new_amount_offsets, base.new_amount_values),
        shock_sigma=np.array([0.0, 0.3, 0.5]),
    )
    kernel = simulate_arrays(arrays, n_paths=N_KERNEL, seed=5)
    oracle = simulate_oracle(arrays, n_paths=N_ORACLE, seed=6)
    assert kernel.totals[..., 0].sum() == 0 and oracle.totals[..., 0].sum() == 0
    for g in range(2):
        _assert_agree(kernel.totals[:, :, g, 1], oracle.totals[:, :, g, 1], f"new, segment {g}")


def test_geometric_closed_form_for_engine_and_oracle():
    """One stage, geometric sojourn: P(win in quarter) is w (r**qb[q] - r**qb[q+1])."""
    r, w = 0.98, 0.45
    qb = np.array([0, 50, 141, 233])
    n_bins = 400 + int(qb[-1])
    lag = np.arange(n_bins)
    dens = np.zeros((1, 1, 1, 4, n_bins))
    dens[0, 0, 0, 1] = w * (1 - r) * r**lag
    dens[0, 0, 0, 2] = (1 - w) * (1 - r) * r**lag
    ages = np.array([0, 30, 200, 400])
    arrays = ModelArrays(
        dens=dens,
        qb=qb,
        deal_segment=np.zeros(4, dtype=np.int64),
        deal_stage=np.zeros(4, dtype=np.int64),
        deal_age=ages,
        deal_amount=np.array([100.0, 200.0, 300.0, 400.0]),
    )
    exact = w * (r ** qb[:-1] - r ** qb[1:])  # memoryless: the same for every age
    p_win = outcome_probabilities(arrays).p_win[0]
    np.testing.assert_allclose(p_win, np.broadcast_to(exact, p_win.shape), rtol=1e-9, atol=0)
    n_paths = 10_000
    for out in (
        simulate_arrays(arrays, n_paths=n_paths, seed=1),
        simulate_oracle(arrays, n_paths=n_paths, seed=2),
    ):
        freq = out.deal_wins / n_paths
        se = np.sqrt(exact * (1 - exact) / n_paths)
        # 4.5 binomial SE over 12 cells (family-wise false alarm < 1e-4).
        assert np.all(np.abs(freq - exact) < 4.5 * se), freq
        # Won amounts are the pipeline amounts (no ratio samples: ratio 1).
        assert np.array_equal(
            out.deal_won_cents, out.deal_wins * (np.arange(1, 5) * 10_000)[:, None]
        )


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_engine_deal_frequencies_match_oracle(sigma):
    """Per-deal win frequencies (the per-deal output) agree, with and without shocks."""
    arrays = random_model_arrays(
        np.random.default_rng(4), n_deals=12, n_draws=1, shock_sigma=sigma, new_per_quarter=0.0
    )
    n_k, n_o = 20_000, 10_000
    fk = simulate_arrays(arrays, n_paths=n_k, seed=3).deal_wins / n_k
    fo = simulate_oracle(arrays, n_paths=n_o, seed=4).deal_wins / n_o
    p = (fk * n_k + fo * n_o) / (n_k + n_o)
    se = np.sqrt(p * (1 - p) * (1 / n_k + 1 / n_o)) + 1e-12
    # 4.5 SE of a difference of proportions over 36 cells (family-wise < 3e-4).
    assert np.all(np.abs(fk - fo) < 4.5 * se)
