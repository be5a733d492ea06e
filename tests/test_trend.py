"""The calendar trend of the exit curves (forecast.fit.trend, ``fit(..., trend=True)``)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import optimize

import forecast
from forecast._kernels import ModelArrays, dated_outcome_probabilities, outcome_probabilities
from forecast.calendar import DAYS_PER_YEAR
from forecast.datasets import SYNTHETIC_STAGES, MarketDrift, generate_crm
from forecast.errors import ParameterError
from forecast.fit.data import FitData
from forecast.fit.trend import (
    COHORT_DAYS,
    cohort_factors,
    fit_stage_trend,
    fit_trend,
    shrunk_slope,
    stage_likelihood,
)
from forecast.simulate import entry_dated_densities, model_arrays, prepare_simulation

WON = 5  # a code of the toy below: destinations 2 (next stage), 5 (won), 6 (lost)


def _toy(seed: int, a: float, b: float, n: int = 4000):
    """Visits entered uniformly over three years before the as-of instant, drawn from
    the trend model itself: won odds ``exp(b x)``, stays log-normal times ``exp(a x)``,
    censored at the as-of instant."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 0.0, n)  # entry, years relative to the as-of instant
    codes = np.array([2, WON, 6])
    logit = np.log([0.5, 0.2, 0.3])[None, :] + b * x[:, None] * (codes == WON)[None, :]
    p = np.exp(logit) / np.exp(logit).sum(axis=1, keepdims=True)
    j = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    mu = np.array([3.0, 3.6, 3.3])[j]
    stay = np.exp(mu + a * x + 0.8 * rng.standard_normal(n))
    followed = -x * 365.25
    dest = np.where(stay <= followed, codes[j], -1)
    return x, np.minimum(stay, followed), dest


def test_recovers_the_trend_of_data_drawn_from_the_model():
    a, b = math.log(1.2), -0.3
    x, t, d = _toy(7, a, b)
    st = fit_stage_trend(x, t, d, np.ones(x.size), None, WON, standard_errors=True)
    assert abs(st.pace_per_year - a) < 3 * st.pace_se
    assert abs(st.win_log_odds_per_year - b) < 3 * st.win_log_odds_se
    # the slopes are told apart from no trend at this sample size
    assert st.pace_per_year > 3 * st.pace_se and st.win_log_odds_per_year < -3 * st.win_log_odds_se


def test_no_trend_in_data_without_one():
    x, t, d = _toy(8, 0.0, 0.0)
    st = fit_stage_trend(x, t, d, np.ones(x.size), None, WON, standard_errors=True)
    assert abs(st.pace_per_year) < 3 * st.pace_se
    assert abs(st.win_log_odds_per_year) < 3 * st.win_log_odds_se


@pytest.mark.parametrize("delayed", [False, True])
def test_the_likelihoods_gradient_is_its_derivative(delayed):
    """The analytic gradient against scipy's finite differences, away from the optimum,
    with uneven weights and (optionally) delayed entries."""
    x, t, d = _toy(10, math.log(1.2), -0.3, n=1500)
    rng = np.random.default_rng(11)
    w = rng.uniform(0.2, 2.0, x.size)
    e = np.where(rng.random(x.size) < 0.3, t * rng.uniform(0.0, 0.9, x.size), 0.0)
    lik = stage_likelihood(x, t, d, w, e if delayed else None, WON)
    assert lik.nll is not None
    p = lik.start + rng.normal(0.0, 0.2, lik.start.size)
    grad = lik.nll(p)[1]
    err = optimize.check_grad(lambda q: lik.nll(q)[0], lambda q: lik.nll(q)[1], p)
    # forward differences of step 1.5e-8 are good to about 1e-7 of the gradient's scale
    assert err < 1e-5 * max(1.0, float(np.linalg.norm(grad)))
    assert np.all(grad[:-2] != 0.0) and grad[-2] != 0.0 and grad[-1] != 0.0


def test_shrunk_slope():
    # estimate · max(0, 1 − (se / estimate)²)
    assert shrunk_slope(0.2, 0.1) == pytest.approx(0.2 * 0.75)
    assert shrunk_slope(-0.3, 0.1) == pytest.approx(-0.3 * (1 - 1 / 9))
    assert shrunk_slope(0.05, 0.1) == 0.0  # within one standard error of 0
    assert shrunk_slope(0.2, math.nan) == 0.0 and shrunk_slope(0.0, 0.1) == 0.0


def test_shrinking_keeps_a_clear_trend_and_the_estimates():
    x, t, d = _toy(7, math.log(1.2), -0.3)
    raw = fit_stage_trend(x, t, d, np.ones(x.size), None, WON, standard_errors=True)
    st = fit_stage_trend(x, t, d, np.ones(x.size), None, WON, shrink=True)
    assert (st.pace_estimate, st.win_log_odds_estimate) == (
        raw.pace_per_year,
        raw.win_log_odds_per_year,
    )
    assert st.pace_per_year == shrunk_slope(raw.pace_per_year, raw.pace_se)
    # ten standard errors away: shrunk by 1 %
    assert st.pace_per_year == pytest.approx(raw.pace_per_year, rel=0.02)
    assert math.isnan(raw.pace_estimate)


def test_too_few_exits_give_no_trend():
    x, t, d = _toy(9, 0.5, -0.5, n=20)
    st = fit_stage_trend(x, t, d, np.ones(x.size), None, WON)
    assert (st.pace_per_year, st.win_log_odds_per_year) == (0.0, 0.0)


@pytest.fixture(scope="module")
def smooth_log():
    crm = generate_crm(seed=1001, end="2025-03-31", drift=MarketDrift.smooth())
    return forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])


def test_recovers_the_generators_smooth_drift(smooth_log):
    """MarketDrift.smooth(): sojourns x1.2 and won log-odds -0.3 per year of stage entry.
    Negotiation (the last open stage) is where most wins come from."""
    data = FitData.from_log(smooth_log, as_of="2025-01-01", segment_by=("segment",))
    st = fit_trend(data, standard_errors=True).stages[3]
    assert abs(st.pace_per_year - math.log(1.2)) < 3 * st.pace_se
    assert abs(st.win_log_odds_per_year - (-0.3)) < 3 * st.win_log_odds_se
    assert st.reference_years < -0.5  # the curves describe a market long past


def test_fit_with_trend_moves_the_curves_and_records_the_slopes(smooth_log):
    kw = {"as_of": "2025-01-01", "n_draws": 0, "half_life": None, "covariates": ()}
    plain = forecast.fit(smooth_log, **kw)
    trended = forecast.fit(smooth_log, trend=True, **kw)
    assert "trend" not in plain.options
    slopes = trended.options["trend_fit"]
    assert set(slopes) == set(SYNTHETIC_STAGES.open)
    won = trended.stages.WON
    for k in range(trended.stages.n_open):
        g = plain.segments[0]
        p, t = plain.curves[(g, k)], trended.curves[(g, k)]
        # a slower market with lower win odds at the as-of instant than on average
        assert t.median() > p.median()
        b = slopes[trended.stages.open[k]]["win_log_odds_per_year"]
        assert b <= 0.0  # 0: within a standard error of no trend, shrunk away
        if b < 0.0 and p.eventual_shares()[won] > 0:
            assert t.eventual_shares()[won] < p.eventual_shares()[won]
        else:
            assert t.eventual_shares()[won] == pytest.approx(p.eventual_shares()[won])
    back = forecast.PipelineModel.from_json(trended.to_json())
    assert back.options["trend_fit"] == slopes


def _one_stage_dens(rate: float, win: float, n_bins: int) -> np.ndarray:
    """(1, 1, 1, 4, L) geometric stays of one open stage (codes: 0 open, 1 won, 2 lost,
    3 the kernels' fourth code, unused here)."""
    lag = np.arange(n_bins)
    dens = np.zeros((1, 1, 1, 4, n_bins))
    dens[0, 0, 0, 1] = win * rate * (1 - rate) ** lag
    dens[0, 0, 0, 2] = (1 - win) * rate * (1 - rate) ** lag
    return dens


def test_open_deals_current_visit_reads_its_entry_cohorts_curve():
    """A deal aged into the second cohort exits along the second cohort's curve (here
    three times faster, with more wins); a young deal along the as-of curve."""
    n_bins = 700
    dens = _one_stage_dens(0.005, 0.3, n_bins)
    older = _one_stage_dens(0.015, 0.5, n_bins)
    first = np.concatenate([dens, older], axis=2)  # cohort 0, cohort 1
    kw = {"qb": np.array([0, 91, 182]), "qe_window": 10, "pull_in": 0.0}
    ages = [10, COHORT_DAYS + 30, 5 * COHORT_DAYS]  # cohorts 0, 1 and (capped) 1
    arrays = ModelArrays(
        dens=dens, deal_segment=[0, 0, 0], deal_stage=[0, 0, 0], deal_age=ages,
        deal_amount=[1.0, 1.0, 1.0], **kw,
    )  # fmt: skip
    dated = dated_outcome_probabilities(arrays, first, COHORT_DAYS)
    plain = outcome_probabilities(arrays)
    moved = outcome_probabilities(
        ModelArrays(
            dens=older, deal_segment=[0, 0, 0], deal_stage=[0, 0, 0], deal_age=ages,
            deal_amount=[1.0, 1.0, 1.0], **kw,
        )
    )  # fmt: skip
    np.testing.assert_allclose(dated.p_win[:, 0], plain.p_win[:, 0], rtol=1e-12)
    np.testing.assert_allclose(dated.p_win[:, 1:], moved.p_win[:, 1:], rtol=1e-12)
    np.testing.assert_allclose(dated.new_pmf, plain.new_pmf, rtol=1e-12)
    # geometric stays forget their age: the older curve's quarter-one win is 0.5 (1 - 0.985^91)
    assert dated.p_win[0, 1, 0] == pytest.approx(0.5 * (1 - 0.985**91), rel=0.02)
    assert dated.p_win[0, 1, 0] > 2 * dated.p_win[0, 0, 0]


def test_cohort_densities_of_the_wrong_shape_are_refused():
    """The cohorts' densities must stack whole stages (n_cohorts * K) on the bins of
    ``arrays.dens``; anything else is named in the error."""
    n_bins = 200
    dens = _one_stage_dens(0.01, 0.3, n_bins)
    arrays = ModelArrays(
        dens=dens, deal_segment=[0], deal_stage=[0], deal_age=[3], deal_amount=[1.0],
        qb=np.array([0, 91]), qe_window=10, pull_in=0.0,
    )  # fmt: skip
    for bad in (dens[:, :, :0], dens[..., :-1], dens[0]):
        with pytest.raises(ParameterError, match="`first` must have shape"):
            dated_outcome_probabilities(arrays, bad, COHORT_DAYS)


def test_cohort_factors_move_the_curves_back_to_the_entry_dates():
    slopes = {"A": {"pace_per_year": 0.2, "win_log_odds_per_year": -0.4}, "B": {}}
    f, m = cohort_factors(slopes, ("A", "B"), n_codes=4, won=2, n_cohorts=3)
    x = -(np.arange(3) + 0.5) * COHORT_DAYS / DAYS_PER_YEAR
    np.testing.assert_allclose(f[:, 0], np.exp(0.2 * x))
    np.testing.assert_allclose(m[:, 0, 2], np.exp(-0.4 * x))
    assert np.all(f[:, 1] == 1.0) and np.all(m[:, 1] == 1.0) and np.all(m[:, 0, [0, 1, 3]] == 1.0)
    assert cohort_factors({"A": {}}, ("A",), 3, 1, 2) is None


def test_open_deals_that_entered_long_ago_get_their_markets_curves(smooth_log):
    """MarketDrift.smooth() slows the market and lowers its win odds year by year: under
    the trend, a deal that entered its stage a year before the as-of instant exits along
    a faster, more winning curve than the one moved to the as-of instant."""
    kw = {"as_of": "2025-01-01", "n_draws": 0, "half_life": None, "covariates": ()}
    model = forecast.fit(smooth_log, trend=True, **kw)
    slopes = model.options["trend_fit"]
    arrays = model_arrays(model, smooth_log, 1)[0]
    L = arrays.shape["L"]
    first = entry_dated_densities(model, L, oldest=400)
    K, C, won = model.stages.n_open, model.stages.n_codes, model.stages.WON
    assert first is not None and first.shape == (1, 1, 5 * K, C, L)
    g = model.segments[0]
    k = K - 1
    st = slopes[model.stages.open[k]]
    assert st["pace_per_year"] > 0 and st["win_log_odds_per_year"] < 0
    cohort = 4  # ages 364-454 days: entered about a year ago
    x = -(cohort + 0.5) * COHORT_DAYS / DAYS_PER_YEAR
    m = np.ones(C)
    m[won] = math.exp(st["win_log_odds_per_year"] * x)
    expected = model.curves[(g, k)].scaled(math.exp(st["pace_per_year"] * x), m).exit_density(L)
    row = first[0, 0, cohort * K + k]
    np.testing.assert_allclose(row, expected, rtol=1e-9, atol=1e-15)
    now = first[0, 0, k]  # cohort 0, 45 days back: close to the as-of curve
    as_of = model.curves[(g, k)].exit_density(L)
    assert row[won].sum() > now[won].sum() > as_of[won].sum()
    assert row.sum(axis=0)[:60].sum() > as_of.sum(axis=0)[:60].sum()  # faster
    # the forecast: old open deals win more next quarter than on the as-of curves
    plain = dataclasses.replace(
        model, options={n: v for n, v in model.options.items() if n != "trend_fit"}
    )
    p_dated = prepare_simulation(model, smooth_log, 1)[1].p_win[0, :, 0]
    p_as_of = prepare_simulation(plain, smooth_log, 1)[1].p_win[0, :, 0]
    age = arrays.deal_age
    old = (age >= COHORT_DAYS) & (arrays.deal_stage == k)
    assert old.sum() >= 5
    assert p_dated[old].sum() > 1.05 * p_as_of[old].sum()


def test_without_trend_the_simulation_set_up_has_no_entry_dated_curves(smooth_log):
    kw = {"as_of": "2025-01-01", "n_draws": 0, "half_life": None, "covariates": ()}
    model = forecast.fit(smooth_log, **kw)
    assert entry_dated_densities(model, 400, oldest=400) is None
