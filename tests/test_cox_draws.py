"""The parameter draws' Cox refits, all draws at once, against the one-draw reference.

The reference is :func:`forecast.fit.cox.fit_cox` (checked against lifelines in
``test_covariates.py``) run once per weighting; the batched path must give the same
bits: the same Newton steps on the same likelihood values.
"""

from __future__ import annotations

import numpy as np
import pytest

from forecast._kernels.cox import cox_efron, cox_efron_draws
from forecast.errors import ParameterError
from forecast.fit import fitting
from forecast.fit.bootstrap import bootstrap_weights
from forecast.fit.covariates import build_design, fit_covariate_coefficients
from forecast.fit.cox import CoxRows, fit_cox, fit_cox_draws
from forecast.fit.data import FitData
from forecast.fit.fitting import FitOptions, covariate_draws, fit_components


def toy_rows(seed: int, n: int = 400, d: int = 2):
    """Delayed entries, three strata, many tied stop times (whole days), two covariates."""
    rng = np.random.default_rng(seed)
    start = np.where(rng.random(n) < 0.6, -1.0, rng.integers(0, 20, n).astype(float))
    x = rng.normal(size=(n, d))
    stop = np.maximum(start, 0.0) + np.round(rng.exponential(15 * np.exp(-0.5 * x[:, 0]))) + 1
    rows = CoxRows.build(start, stop, rng.integers(0, 3, n), x)
    event = rows.take((rng.random(n) < 0.5).astype(np.int64))
    return rows, event


def test_toy_rows_have_ties_and_several_strata():
    rows, event = toy_rows(1)
    stops = rows.stop[event == 1]
    assert np.unique(stops).size < stops.size / 2  # heavily tied
    assert rows.offsets.size - 1 == 3


@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_equals_the_one_draw_kernel_for_each_listed_draw(threads):
    rows, event = toy_rows(2)
    rng = np.random.default_rng(3)
    B, d = 7, rows.d
    weights = rng.exponential(size=(rows.n, B))
    weights[rng.random(rows.n) < 0.1, 2] = 0.0  # zero weights (a deal not drawn)
    beta = rng.normal(scale=0.5, size=(B, d))
    draws = np.array([5, 0, 2, 3], dtype=np.int64)  # a subset, out of order
    ll = np.full(B, np.nan)
    grad = np.full((B, d), np.nan)
    hess = np.full((B, d, d), np.nan)
    cox_efron_draws(
        rows.start, rows.stop, event, weights, rows.x, beta, draws, rows.offsets,
        rows.order_stop, rows.order_start, ll, grad, hess,
    )  # fmt: skip
    for b in range(B):
        if b not in draws:  # not evaluated: left untouched
            assert np.isnan(ll[b]) and np.isnan(grad[b]).all() and np.isnan(hess[b]).all()
            continue
        g, h = np.zeros(d), np.zeros((d, d))
        ref = cox_efron(
            rows.start, rows.stop, event, np.ascontiguousarray(weights[:, b]), rows.x,
            beta[b], rows.offsets, rows.order_stop, rows.order_start, g, h,
        )  # fmt: skip
        assert ll[b] == ref
        np.testing.assert_array_equal(grad[b], g)
        np.testing.assert_array_equal(hess[b], h)


@pytest.mark.parametrize(("max_iter", "penalty"), [(4, 1.0), (50, 0.0), (50, 1.0)])
def test_batched_fits_equal_fit_cox_per_draw(max_iter, penalty):
    rows, event = toy_rows(4)
    rng = np.random.default_rng(5)
    B = 9
    weights = rng.exponential(size=(rows.n, B))
    start = rng.normal(scale=0.3, size=(B, rows.d))
    start[0] = [4.0, -4.0]  # far from the optimum: the first steps are halved
    out = fit_cox_draws(rows, event, weights, start, penalty=penalty, max_iter=max_iter, threads=2)
    for b in range(B):
        ref = fit_cox(
            rows, event, weights[:, b], penalty=penalty, beta0=start[b], max_iter=max_iter
        )
        np.testing.assert_array_equal(out[b], ref.beta)
    # the draws moved from their starting points, and differ from one another
    assert np.all(np.abs(out - start).max(axis=1) > 1e-6)
    assert np.unique(out[:, 0]).size == B


def test_a_shared_starting_point_and_one_thread_give_the_same_bits():
    rows, event = toy_rows(6)
    weights = np.random.default_rng(7).exponential(size=(rows.n, 5))
    beta0 = np.array([0.1, -0.2])
    one = fit_cox_draws(rows, event, weights, beta0, penalty=1.0, max_iter=4, threads=1)
    two = fit_cox_draws(rows, event, weights, np.tile(beta0, (5, 1)), penalty=1.0, max_iter=4)
    np.testing.assert_array_equal(one, two)


def test_weights_of_another_shape_are_refused():
    rows, event = toy_rows(8)
    with pytest.raises(ParameterError, match=r"`weights` of shape \(400, B\).*\(399, 3\)"):
        fit_cox_draws(rows, event, np.ones((rows.n - 1, 3)), np.zeros(rows.d))


@pytest.mark.parametrize(("half_life", "cells"), [(None, None), (180.0, None), (None, 5000)])
def test_covariate_draws_equal_refits_on_reweighted_data(sample_log, monkeypatch, half_life, cells):
    data = FitData.from_log(sample_log).with_half_life(half_life)
    data = data.with_covariate_design(build_design(data, ("amount",), ()))
    point = fit_components(data, FitOptions(covariates=("amount",)))
    assert point.covariates is not None and point.covariates.kept == ("amount",)
    monkeypatch.setattr(fitting, "DRAW_BLOCK", 2)  # several blocks, the last one short
    if cells is not None:  # fewer draws per sweep on the larger stages
        sizes = [data.covariate_design.stage_rows(k)[0].size for k in range(int(data.n_open))]
        assert min(sizes) <= cells < 2 * max(sizes)
        monkeypatch.setattr(fitting, "COX_DRAW_CELLS", cells)
    seed, n_draws = 3, 3
    batched = covariate_draws(data, point, n_draws, seed)
    assert batched.shape == (n_draws, *point.covariates.beta.shape)
    for b in range(n_draws):
        ref = fit_covariate_coefficients(
            data.with_weights(bootstrap_weights(data, seed, b)),
            data.covariate_design,
            point.covariates.kept,
            start=point.coefficients,
            max_iter=4,
        )
        np.testing.assert_array_equal(batched[b], ref.beta)
    assert not np.array_equal(batched[0], batched[1])
