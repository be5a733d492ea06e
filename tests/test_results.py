"""Tests of `Forecast` summaries: quantiles, sources, segments, targets, per-deal risk.

Most tests build a `Forecast` by hand from deals with known win probabilities and
amounts, so the expected values are closed forms; one fixture runs the real fit
and simulation on the bundled sample for the identities that must hold there.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from forecast.errors import ParameterError
from forecast.results import Forecast

AS_OF = dt.datetime(2025, 1, 1)


def bernoulli_forecast(
    p: np.ndarray,
    amount: np.ndarray,
    n_paths: int,
    seed: int,
    *,
    shock_sd: float = 0.0,
    new_mean: float = 0.0,
) -> Forecast:
    """One quarter, one segment: deal n is won with probability p[n] for amount[n].

    ``shock_sd`` > 0 multiplies every deal's win odds in a path by a common
    log-normal factor (correlated deals); new deals add Poisson(new_mean) × 1000.
    """
    rng = np.random.default_rng(seed)
    n = len(p)
    if shock_sd > 0:
        z = rng.normal(0.0, shock_sd, size=(n_paths, 1))
        odds = p / (1 - p) * np.exp(z)
        pp = odds / (1 + odds)
    else:
        pp = np.broadcast_to(p, (n_paths, n))
    won = rng.random((n_paths, n)) < pp
    x = won * amount
    totals = np.zeros((n_paths, 1, 1, 2))
    totals[:, 0, 0, 0] = x.sum(axis=1)
    totals[:, 0, 0, 1] = rng.poisson(new_mean, n_paths) * 1000.0 if new_mean else 0.0
    return Forecast(
        totals=totals,
        booked_to_date=np.array([[500.0]]),
        deal_ids=np.array([f"D{i}" for i in range(n)]),
        deal_amounts=amount.astype(float),
        deal_wins=won.sum(axis=0)[:, None].astype(np.int64),
        deal_won_cents=np.rint(x * 100).sum(axis=0)[:, None].astype(np.int64),
        quarters=("FY2025-Q1",),
        segments=("All",),
        weighted_pipeline=np.array([float((p * amount).sum())]),
        as_of=AS_OF,
        info={
            "seed": seed,
            "n_paths": n_paths,
            "calendar": {"start_month": 1, "year_label": "end"},
        },
    )


P_WIN = np.array([0.1, 0.3, 0.5, 0.7, 0.2, 0.05])
AMOUNT = np.array([1_000_000.0, 50_000.0, 20_000.0, 10_000.0, 5_000.0, 300_000.0])


def test_deal_variance_is_bernoulli_with_amount() -> None:
    fc = bernoulli_forecast(P_WIN, AMOUNT, 4000, seed=1)
    p_hat = fc.deal_wins[:, 0] / fc.n_paths
    expected = p_hat * (1 - p_hat) * AMOUNT**2  # closed form with the simulated frequency
    np.testing.assert_allclose(fc.deal_variance()[:, 0], expected, rtol=1e-12)


def test_independent_deal_variances_add_up_to_the_pipeline_variance() -> None:
    """For independent deals with fixed amounts the approximation is exact: Σ var_n = Var(total)."""
    fc = bernoulli_forecast(P_WIN, AMOUNT, 40_000, seed=2)
    s = fc.totals[:, 0, 0, 0]
    sample_var = s.var(ddof=1)
    # Sampling error of a sample variance: sd ≈ sqrt((m4 - s^4) / P) with m4 the
    # fourth central moment (estimated from the same paths); both sides use the same
    # paths, so 4 standard errors bound their difference generously.
    m4 = np.mean((s - s.mean()) ** 4)
    se = np.sqrt((m4 - sample_var**2) / fc.n_paths)
    summary = fc.risk_summary().row(0, named=True)
    assert abs(summary["deal_variance_sum"] - sample_var) < 4 * se
    assert abs(summary["between_deal_covariance"]) < 4 * se


def test_shared_shock_shows_up_as_between_deal_covariance() -> None:
    # 40 equal deals, p = 0.3, log-odds shock sd 0.8: covariance is about
    # 40·39·Cov(I_i, I_j)·a² with Cov ≈ Var(p(z)) ≈ (0.21 · 0.8)² ≈ 0.028 > 0, i.e. many
    # times the independent part 40 · 0.21 a² (a = 1); measured with 20,000 paths its
    # standard error is a few percent of that.
    p = np.full(40, 0.3)
    a = np.full(40, 1.0)
    fc = bernoulli_forecast(p, a, 20_000, seed=3, shock_sd=0.8)
    row = fc.risk_summary().row(0, named=True)
    assert row["between_deal_covariance"] > 2 * row["deal_variance_sum"]


def test_variance_decomposition_adds_up() -> None:
    fc = bernoulli_forecast(P_WIN, AMOUNT, 5000, seed=4, new_mean=3.0)
    row = fc.risk_summary().row(0, named=True)
    parts = row["pipeline_variance"] + row["new_deals_variance"] + row["pipeline_new_covariance"]
    assert parts == pytest.approx(row["total_variance"], rel=1e-9)


def test_rocks_stones_and_pebbles() -> None:
    fc = bernoulli_forecast(P_WIN, AMOUNT, 20_000, seed=5)
    risk = fc.deal_risk("FY2025-Q1")
    assert risk["share_of_deal_variance"].sum() == pytest.approx(1.0)
    assert risk["variance"].is_sorted(descending=True)
    assert risk["rank"].to_list() == list(range(1, len(P_WIN) + 1))
    # Exact shares: the 1M deal at p = 0.1 has variance 0.09e12, the 300k deal at
    # p = 0.05 has 0.0043e12, the rest < 0.001e12: the big one alone is > 90% -> rock.
    assert risk["deal_id"][0] == "D0"
    assert risk["risk_class"].to_list()[0] == "rock"
    assert set(risk["risk_class"].to_list()[1:]) <= {"stone", "pebble"}
    strict = fc.deal_risk(thresholds=(0.99, 1.0))
    assert strict["risk_class"].to_list()[:2] == ["rock", "rock"]


def test_deal_risk_rejects_bad_arguments() -> None:
    fc = bernoulli_forecast(P_WIN, AMOUNT, 100, seed=6)
    with pytest.raises(ParameterError, match="thresholds"):
        fc.deal_risk(thresholds=(0.9, 0.5))
    with pytest.raises(ParameterError, match="FY2030-Q1"):
        fc.deal_risk("FY2030-Q1")


def test_prob_at_least_many_targets() -> None:
    fc = bernoulli_forecast(P_WIN, AMOUNT, 3000, seed=7)
    s = fc.samples[:, 0]
    out = fc.prob_at_least({"FY2025-Q1": [10_000.0, 60_000.0]})
    assert out["target"].to_list() == [10_000.0, 60_000.0]
    expected = [float(np.mean(s >= 10_000.0)), float(np.mean(s >= 60_000.0))]
    assert out["probability"].to_list() == expected
    se = np.sqrt(np.array(expected) * (1 - np.array(expected)) / fc.n_paths)
    np.testing.assert_allclose(out["standard_error"].to_numpy(), se)
    assert fc.prob_at_least(60_000.0)["probability"][0] == expected[1]
    with pytest.raises(ParameterError, match="unknown quarters"):
        fc.prob_at_least({"FY2031-Q2": 1.0})
    with pytest.raises(ParameterError, match="finite"):
        fc.prob_at_least([1.0, float("nan")])


def test_samples_include_booked_to_date() -> None:
    fc = bernoulli_forecast(P_WIN, AMOUNT, 1000, seed=8)
    np.testing.assert_array_equal(fc.samples[:, 0], fc.totals[:, 0, 0, 0] + 500.0)


def test_sources_and_segments_add_up_on_the_sample(sample_forecast: Forecast) -> None:
    fc = sample_forecast
    q = fc.quarterly()
    total = q["booked_to_date"] + q["from_pipeline"] + q["from_new_deals"]
    np.testing.assert_allclose(total.to_numpy(), q["mean"].to_numpy(), rtol=1e-9)
    by_source = fc.by_source().group_by("quarter", maintain_order=True).agg(pl.col("mean").sum())
    np.testing.assert_allclose(by_source["mean"].to_numpy(), q["mean"].to_numpy(), rtol=1e-9)
    by_seg = fc.by_segment().group_by("quarter", maintain_order=True).agg(pl.col("mean").sum())
    np.testing.assert_allclose(by_seg["mean"].to_numpy(), q["mean"].to_numpy(), rtol=1e-9)
    levels = q.select("p05", "p10", "p25", "p50", "p75", "p90", "p95").to_numpy()
    assert np.all(np.diff(levels, axis=1) >= 0)


def test_deal_risk_on_the_sample(sample_forecast: Forecast) -> None:
    fc = sample_forecast
    risk = fc.deal_risk()
    assert risk.height == len(fc.deal_ids) * len(fc.quarters)
    shares = risk.group_by("quarter").agg(pl.col("share_of_deal_variance").sum())
    np.testing.assert_allclose(shares["share_of_deal_variance"].to_numpy(), 1.0)
    # the per-deal expected bookings add up to the pipeline mean (same paths, cents exact)
    per_q = risk.group_by("quarter", maintain_order=True).agg(pl.col("expected_won_amount").sum())
    np.testing.assert_allclose(
        per_q["expected_won_amount"].to_numpy(),
        fc.quarterly()["from_pipeline"].to_numpy(),
        rtol=1e-9,
    )
    assert fc.riskiest_quarter() in fc.quarters


def test_paths_long_format(sample_forecast: Forecast) -> None:
    fc = sample_forecast
    paths = fc.paths()
    assert paths.height == fc.totals.size
    assert paths["bookings"].sum() == pytest.approx(fc.totals.sum(), rel=1e-12)
    one = paths.filter((pl.col("path") == 7) & (pl.col("quarter") == fc.quarters[1]))
    assert one["bookings"].sum() == pytest.approx(fc.totals[7, 1].sum())
