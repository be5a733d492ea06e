"""The calendar trend of the exit curves (forecast.fit.trend, ``fit(..., trend=True)``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import forecast
from forecast.datasets import SYNTHETIC_STAGES, MarketDrift, generate_crm
from forecast.fit.data import FitData
from forecast.fit.trend import fit_stage_trend, fit_trend

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
        assert t.eventual_shares()[won] < p.eventual_shares()[won] or p.eventual_shares()[won] == 0
    back = forecast.PipelineModel.from_json(trended.to_json())
    assert back.options["trend_fit"] == slopes
