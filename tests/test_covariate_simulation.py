"""Deal covariates in simulation: per-deal curves, paths, profiles, and the end-to-end model.

References: the population outcome kernel on densities tilted by hand (with every
deal its own profile the covariate kernel must equal it), zero coefficients (the
baseline back), and hand-worked covariate paths.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

import forecast
from forecast._kernels import (
    CovariateArrays,
    ModelArrays,
    outcome_probabilities,
    tilted_outcome_probabilities,
)
from forecast._oracle import random_model_arrays
from forecast.deal_covariates import (
    covariate_paths,
    entry_close_at,
    entry_values,
    expected_entry_days,
    group_profiles,
    later_entries,
    own_entry_close,
)
from forecast.errors import ParameterError
from forecast.fit.competing_risks import CensoredSpells, fit_exit_curves
from forecast.fit.covariates import CLOSE_CLIP, DAYS_PER_MONTH, PUSH_CAP, tilt_density

GROUP_OF = np.array([0, 0, 0, 1, 2, 3])  # K = 3 open stages, then won, lost, no decision


def small_case(seed: int = 11, n_deals: int = 6) -> ModelArrays:
    return random_model_arrays(
        np.random.default_rng(seed),
        n_deals=n_deals,
        n_stages=3,
        n_segments=2,
        n_draws=2,
        quarter_days=(40, 91, 92),
        max_age=60,
        new_per_quarter=3.0,
    )


def one_piece(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Constant paths: values (..., Q, d) and starts (..., Q) with Q = 2 (one used piece)."""
    xs = np.stack([x, x], axis=-2)
    starts = np.zeros(xs.shape[:-1])
    starts[..., 1] = np.inf
    return xs, starts


def test_each_deal_its_own_profile_equals_the_kernel_on_tilted_densities():
    arrays = small_case()
    sizes = arrays.shape
    n, d = sizes["N"], 2
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d))
    betas = rng.normal(scale=0.4, size=(sizes["B"], sizes["K"], 4, d))
    # every deal is its own profile in its segment; the new deals one profile of x = 0
    seg = np.asarray(arrays.deal_segment)
    n_prof = max(np.bincount(seg, minlength=sizes["G"]))
    prof_x = np.zeros((sizes["G"], n_prof, sizes["K"], d))
    profile = np.zeros(n, dtype=np.int64)
    for g in range(sizes["G"]):
        for p, i in enumerate(np.flatnonzero(seg == g)):
            prof_x[g, p] = x[i]
            profile[i] = p
    deal_x, deal_s = one_piece(x)
    px, ps = one_piece(prof_x)
    nx, ns = one_piece(np.zeros((sizes["G"], 1, sizes["K"], d)))
    cov = CovariateArrays(
        base_dens=arrays.dens, betas=betas, deal_x=deal_x, deal_starts=deal_s,
        deal_profile=profile, profile_x=px, profile_starts=ps, new_x=nx, new_starts=ns,
        new_weights=np.ones((sizes["G"], 1)),
    )  # fmt: skip
    got = tilted_outcome_probabilities(arrays, cov)
    for i in range(n):
        dens = np.array(arrays.dens, copy=True)
        for b in range(sizes["B"]):
            r = np.exp(betas[b] @ x[i])[:, GROUP_OF]  # (K, C)
            for k in range(sizes["K"]):
                dens[b, seg[i], k] = tilt_density(arrays.dens[b, seg[i], k], r[k])
        one = dataclasses.replace(
            arrays,
            dens=dens,
            deal_segment=seg[i : i + 1],
            deal_stage=np.asarray(arrays.deal_stage)[i : i + 1],
            deal_age=np.asarray(arrays.deal_age)[i : i + 1],
            deal_amount=np.asarray(arrays.deal_amount)[i : i + 1],
        )
        want = outcome_probabilities(one)
        np.testing.assert_allclose(got.p_win[:, i], want.p_win[:, 0], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got.p_qe[:, i], want.p_qe[:, 0], rtol=1e-10, atol=1e-14)
    base = outcome_probabilities(arrays)  # new deals: x = 0 is the baseline
    np.testing.assert_allclose(got.new_pmf, base.new_pmf, rtol=1e-12, atol=1e-15)


def test_zero_coefficients_give_the_baseline_back():
    arrays = small_case(seed=5)
    sizes = arrays.shape
    n, d = sizes["N"], 3
    x = np.random.default_rng(1).normal(size=(n, d))
    deal_x, deal_s = one_piece(x)
    px, ps = one_piece(np.zeros((sizes["G"], 1, sizes["K"], d)))
    cov = CovariateArrays(
        base_dens=arrays.dens, betas=np.zeros((sizes["B"], sizes["K"], 4, d)), deal_x=deal_x,
        deal_starts=deal_s, deal_profile=np.zeros(n, np.int64), profile_x=px,
        profile_starts=ps, new_x=px, new_starts=ps, new_weights=np.ones((sizes["G"], 1)),
    )  # fmt: skip
    got = tilted_outcome_probabilities(arrays, cov)
    want = outcome_probabilities(arrays)
    for name in ("p_win", "p_qe", "new_pmf", "new_qe"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-11, atol=1e-14)


def test_covariate_arrays_are_checked():
    arrays = small_case()
    sizes = arrays.shape
    d = 1
    deal_x, deal_s = one_piece(np.zeros((sizes["N"], d)))
    px, ps = one_piece(np.zeros((sizes["G"], 1, sizes["K"], d)))
    good = {
        "base_dens": arrays.dens, "betas": np.zeros((sizes["B"], sizes["K"], 4, d)),
        "deal_x": deal_x, "deal_starts": deal_s, "deal_profile": np.zeros(sizes["N"], np.int64),
        "profile_x": px, "profile_starts": ps, "new_x": px, "new_starts": ps,
        "new_weights": np.ones((sizes["G"], 1)),
    }  # fmt: skip
    CovariateArrays(**good)
    with pytest.raises(ParameterError, match="new_weights"):
        CovariateArrays(**{**good, "new_weights": np.full((sizes["G"], 1), 0.5)})
    bad_starts = deal_s.copy()
    bad_starts[0, 0] = 1.0
    with pytest.raises(ParameterError, match="start at 0"):
        CovariateArrays(**{**good, "deal_starts": bad_starts})
    with pytest.raises(ParameterError, match="deal_profile"):
        CovariateArrays(**{**good, "deal_profile": np.full(sizes["N"], 3)})


@pytest.fixture(scope="module")
def close_date_model(sample_log, sample_fit_arguments):
    """The sample's fit offered the close-date covariates too (it keeps both)."""
    names = (*forecast.DEFAULT_COVARIATES, *forecast.CLOSE_DATE_COVARIATES)
    return forecast.fit(sample_log, **{**sample_fit_arguments, "n_draws": 0}, covariates=names)


def test_paths_push_the_close_date_when_it_passes(close_date_model):
    cov = close_date_model.covariates
    assert {"pushes", "days_to_close"} <= set(cov.kept)
    ip = cov.columns.index("pushes")
    idc = cov.columns.index("days_to_close")
    x0 = np.zeros((2, len(cov.columns)))
    x0[:, ip] = [1.0, 4.0]
    x0[:, idc] = [0.5, 0.5]
    close = np.array([10.0, -3.0])  # close date in 10 days; passed 3 days ago
    age = np.array([5.0, 20.0])
    stage = np.array([0, 2])
    x, starts = covariate_paths(cov, x0, close, age, 30.0, stage, n_pieces=4)
    np.testing.assert_allclose(starts[0], [0.0, 10.0, 40.0, 70.0])
    np.testing.assert_allclose(starts[1], [0.0, 0.0, 30.0, 60.0])
    np.testing.assert_allclose(x[0, :, ip], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(x[1, :, ip], [4.0, 5.0, 5.0, 5.0])  # capped at 5 pushes
    # after a push the close date is 30 days out: (age + push time + 30) / 30 months,
    # centred on the stage's median at entry
    spec = next(s for s in cov.specs if s.name == "days_to_close")
    assert spec.centered
    center = min(max(spec.fill[0], -6.0), 12.0)
    months = (5.0 + np.array([10.0, 40.0, 70.0]) + 30.0) / 30.0
    np.testing.assert_allclose(x[0, 1:, idc], months - center)
    # no close date: the values stay
    x, starts = covariate_paths(
        cov, x0[:1], np.array([np.nan]), age[:1], 30.0, stage[:1], n_pieces=4
    )
    assert np.all(np.isinf(starts[0, 1:])) and np.all(x[0] == x0[0])


def test_future_entries_take_the_spread_of_close_dates_at_entry(close_date_model):
    cov = close_date_model.covariates
    quantiles = cov.entry_close_days  # (G, K, Q), days
    n_levels = quantiles.shape[2]
    assert n_levels > 1 and np.all(np.diff(quantiles, axis=2) >= 0)
    n = 64 * n_levels
    close = entry_close_at(cov, n, 0)
    assert close.shape == (n, quantiles.shape[1])
    # every level taken about equally often (low-discrepancy), the same one in every stage
    level = np.array([np.searchsorted(quantiles[0, 0], v) for v in close[:, 0]])
    strictly = np.all(np.diff(quantiles[0, 0]) > 0)
    if strictly:
        counts = np.bincount(level, minlength=n_levels)
        assert counts.min() >= 60 and counts.max() <= 68
        for k in range(quantiles.shape[1]):
            np.testing.assert_array_equal(close[:, k], quantiles[0, k][level])
    np.testing.assert_allclose(close.mean(axis=0), quantiles[0].mean(axis=1), rtol=0.02)
    # the design column of the close date at a future entry is that value, in months
    idc = cov.columns.index("days_to_close")
    x = np.zeros((n, len(cov.columns)))
    at_entry = entry_values(cov, x, None, 0)
    spec = next(s for s in cov.specs if s.name == "days_to_close")
    center = np.clip(np.asarray(spec.fill), *CLOSE_CLIP)
    np.testing.assert_allclose(
        at_entry[:, :, idc], np.clip(close / DAYS_PER_MONTH, *CLOSE_CLIP) - center
    )


def test_expected_entry_days_on_a_hand_worked_chain():
    """Stage 0 moves to stage 1 after 10 or 20 days (half each), stage 1 to stage 2 or
    won after 6 days, stage 2 wins or loses after 4. An exit at day ``T`` falls in the
    day bin ``(T − 1, T]``, counted at its middle ``T − 0.5``."""
    codes = 6  # open 0, 1, 2; won 3, lost 4, no decision 5
    curves = [
        fit_exit_curves(CensoredSpells([10.0, 20.0], [1, 1], codes)),
        fit_exit_curves(CensoredSpells([6.0, 6.0], [2, 3], codes)),
        fit_exit_curves(CensoredSpells([4.0, 4.0], [3, 4], codes)),
    ]
    got = expected_entry_days(curves, np.array([0, 0, 1]), np.array([0.0, 12.0, 0.0]))
    # from stage 0 at age 0: stage 1 after 14.5 days, stage 2 another 5.5 later
    np.testing.assert_allclose(got[0, 1:], [14.5, 20.0], atol=1e-9)
    # at age 12 only the exit at day 20 is left: 19.5 − 12 days, then 5.5
    np.testing.assert_allclose(got[1, 1:], [7.5, 13.0], atol=1e-9)
    np.testing.assert_allclose(got[2, 2], 5.5, atol=1e-9)
    # stages behind the deal are never reached again
    assert np.isnan(got[0, 0]) and np.isnan(got[1, 0]) and np.isnan(got[2, :2]).all()


def test_own_close_date_at_a_later_entry_follows_the_push_rule():
    # close date in 10 days, pushed when it passes to 30 days later, and so on
    close_at, added = own_entry_close(np.array([10.0]), np.array([[5.0, 10.0, 45.0]]), 30.0)
    np.testing.assert_allclose(close_at[0], [5.0, 30.0, 25.0])  # 10 − 5; 40 − 10; 70 − 45
    np.testing.assert_allclose(added[0], [0.0, 1.0, 2.0])
    # passed 5 days ago: pushed now (to 30 days out); with a delay of 2 days the push
    # comes after it, and an entry before the push finds the deal overdue
    close_at, added = own_entry_close(np.array([-5.0]), np.array([[1.0]]), 30.0)
    np.testing.assert_allclose([close_at[0, 0], added[0, 0]], [29.0, 1.0])
    close_at, added = own_entry_close(np.array([-1.0]), np.array([[0.5, 1.5]]), 30.0, 2.0)
    np.testing.assert_allclose(close_at[0], [-1.5, 29.5])  # first push at 1 day
    np.testing.assert_allclose(added[0], [0.0, 1.0])
    # unknown close date or unreachable stage: NaN, no pushes
    close_at, added = own_entry_close(np.array([np.nan, 5.0]), np.array([[3.0], [np.nan]]), 30.0)
    assert np.isnan(close_at).all() and np.all(added == 0.0)


def test_open_deals_carry_their_own_close_date_into_later_stages(close_date_model):
    """An open deal in the first stage with a close date 300 days out enters every
    later stage with a far close date (its own, minus the expected time to get
    there), not one drawn from the stage's spread; a deal without a close date keeps
    the draws and the typical pushes."""
    model = close_date_model
    cov = model.covariates
    idc, ip = cov.columns.index("days_to_close"), cov.columns.index("pushes")
    label = model.segments[0]
    n_open = cov.beta.shape[0]
    curves = [cov.baseline[(label, k)] for k in range(n_open)]
    interval = cov.push_interval.get(label, cov.push_interval["*"])
    x = np.zeros((2, len(cov.columns)))
    x[:, ip] = 1.0
    stage, age = np.array([0, 0]), np.array([3.0, 3.0])
    close = np.array([300.0, np.nan])
    at_entry, close_at = later_entries(cov, 0, curves, x, stage, close, age, interval)
    when = expected_entry_days(curves, stage, age)[0]
    later = np.flatnonzero(np.isfinite(when))
    assert later.size >= 2 and np.all(when[later] < 300.0)
    np.testing.assert_allclose(close_at[0, later], 300.0 - when[later])
    spec = next(s for s in cov.specs if s.name == "days_to_close")
    np.testing.assert_allclose(
        at_entry[0, later, idc], spec.close_months(300.0 - when[later], later)
    )
    # far beyond the stage's spread at entry: above its top quantile wherever that is
    # below the carried date
    top = cov.entry_close_days[0, later, -1]
    assert np.all((close_at[0, later] > top) | (top >= 300.0 - when[later]))
    assert np.all(at_entry[0, later, ip] == 1.0)  # no push before the close date passes
    # without a close date: today's rule (the spread at entry and the typical pushes)
    np.testing.assert_array_equal(at_entry[1], entry_values(cov, x, stage, 0)[1])
    np.testing.assert_array_equal(close_at[1], entry_close_at(cov, 2, 0)[1])
    # a close date that passes before the entry is pushed there, one more push each time
    at_entry, close_at = later_entries(
        cov, 0, curves, x, stage, np.array([1.0, 1.0]), age, interval
    )
    pushed = later[when[later] >= 1.0]
    assert pushed.size and np.all(at_entry[:, pushed, ip] >= 2.0)
    assert np.all(at_entry[:, pushed, ip] <= PUSH_CAP)
    assert np.all((close_at[:, pushed] > 0.0) & (close_at[:, pushed] <= interval + 1e-9))


def test_profiles_are_exact_for_few_values_and_deterministic():
    rng = np.random.default_rng(0)
    few = rng.integers(0, 3, size=(50, 2)).astype(float)
    labels = group_profiles(few, 16)
    for p in np.unique(labels):
        assert len({tuple(r) for r in few[labels == p]}) == 1
    many = rng.normal(size=(400, 3))
    a, b = group_profiles(many, 8), group_profiles(many.copy(), 8)
    assert np.array_equal(a, b) and len(np.unique(a)) <= 8


# -- end to end ----------------------------------------------------------------------------------


def test_a_model_that_keeps_nothing_simulates_as_without_covariates(sample_log):
    kw = {"as_of": "2024-07-01", "segment_by": ["segment"], "n_draws": 2, "seed": 1}
    with_region = forecast.fit(sample_log, covariates=["region"], **kw)  # region: no effect
    assert with_region.covariates.kept == ()
    without = forecast.fit(sample_log, covariates=(), **kw)
    a = with_region.simulate(sample_log, n_paths=300, horizon=2, seed=4)
    b = without.simulate(sample_log, n_paths=300, horizon=2, seed=4)
    assert np.array_equal(a.totals, b.totals)
    assert np.array_equal(a.deal_wins, b.deal_wins)


@pytest.fixture(scope="module")
def size_world():
    from forecast.datasets import SYNTHETIC_STAGES, generate_crm

    crm = generate_crm(seed=21, end="2024-10-01", size_effect=True, scale=0.6)
    log = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    model = forecast.fit(log, segment_by=["segment"], n_draws=0, covariates=["amount"])
    return log, model


def test_bigger_deals_get_lower_win_probabilities(size_world):
    log, model = size_world
    assert model.covariates.kept == ("amount",)
    fc = model.simulate(log, n_paths=2000, horizon=2, seed=3)
    deals = fc.deals()
    pipe = log.pipeline(model.as_of).select("deal_id", "stage", "segment", "amount")
    table = deals.join(pipe, on="deal_id")
    # within a (segment, stage), the deal's own exact win probability falls with its amount
    p_win = dict(zip(fc.deal_ids.tolist(), fc.deal_wins.sum(axis=1) / fc.n_paths))
    rho = []
    for (_, _), grp in table.unique("deal_id").group_by(["segment", "stage"]):
        if grp.height >= 15:
            p = np.array([p_win[i] for i in grp["deal_id"]])
            a = np.log(grp["amount"].to_numpy())
            rho.append(np.corrcoef(a, p)[0, 1])
    assert len(rho) >= 3 and np.mean(rho) < -0.3, rho
    # unit vs value: the value win rate falls below the unit win rate
    metrics = forecast.compute_metrics(model, log, coverage=False)
    row = metrics.win_rates.filter((pl.col("segment") == "all") & (pl.col("period") == "all"))
    assert row["value_win_rate_censoring_aware"][0] < row["unit_win_rate_censoring_aware"][0]


def test_effects_read_for_a_sales_leader(size_world):
    _, model = size_world
    eff = model.effects()
    row = eff.filter(pl.col("covariate") == "amount").row(0, named=True)
    assert row["contrast"] == "deals twice as large"
    assert row["win_odds_ratio_low"] < row["win_odds_ratio"] < row["win_odds_ratio_high"] < 1.0
    assert row["text"].startswith("deals twice as large: win odds ×0.")


def test_missing_covariate_column_is_named(size_world):
    log, model = size_world
    spec = dataclasses.replace(
        model.covariates.specs[0], name="colour", kind="categorical", columns=("colour=red",),
        levels=("red",), reference="blue",
    )  # fmt: skip
    broken = model.replace(covariates=dataclasses.replace(model.covariates, specs=(spec,)))
    with pytest.raises(ParameterError, match=r"column\(s\) \['colour'\]"):
        broken.simulate(log, n_paths=10, horizon=1)
