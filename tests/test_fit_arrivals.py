"""New-deal arrivals: Poisson GLM (level, trend, seasonality), over-dispersion, entry mix."""

import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest

from forecast.calendar import FiscalCalendar
from forecast.errors import ModelError, ParameterError
from forecast.fit.arrivals import ArrivalModel, fit_arrivals, poisson_glm
from forecast.fit.data import FitData

D = dt.datetime
CAL = FiscalCalendar()
AS_OF = D(2024, 2, 15)  # mid FY2024-Q1: the current quarter is partial


def simulate_outcomes(
    level, trend, season, n_quarters, seed, gamma_shape=math.inf, segment="A", stage_probs=(1.0,)
):
    """Deals created at a constant rate within each fiscal quarter; the expected count of the
    whole quarter q is exp(level + trend·t_q + season[fq]) (t_q: quarter midpoint − AS_OF in
    years), times a Gamma(shape, 1/shape) factor per quarter when gamma_shape is finite. The
    current quarter is simulated only up to AS_OF."""
    rng = np.random.default_rng(seed)
    cur = CAL.quarter_of(AS_OF)
    ids, times, codes = [], [], []
    for i in range(-n_quarters, 1):
        q = CAL.shift(cur, i)
        mid = q.start + (q.end - q.start) / 2
        t = (mid - AS_OF).total_seconds() / 86400 / 365.25
        mu = math.exp(level + trend * t + season[q.quarter - 1])
        if math.isfinite(gamma_shape):
            mu *= rng.gamma(gamma_shape, 1.0 / gamma_shape)
        end = min(q.end, AS_OF)
        frac = (end - q.start) / (q.end - q.start)
        n = rng.poisson(mu * frac)
        secs = rng.uniform(0, (end - q.start).total_seconds(), n)
        times += [q.start + dt.timedelta(seconds=float(s)) for s in secs]
        codes += rng.choice(len(stage_probs), size=n, p=stage_probs).tolist()
    ids = [f"{segment}{i}" for i in range(len(times))]
    return pl.DataFrame(
        {"deal_id": ids, "created_at": times, "first_stage_code": codes, "seg": segment},
        schema_overrides={"created_at": pl.Datetime("us"), "first_stage_code": pl.Int32},
    )


def arrivals(
    outcomes, as_of, segment_by=(), *, n_open_stages=None, history_start=None, weight=None, **kw
):
    """fit_arrivals on a hand-made outcomes frame (every deal weighted ``weight``)."""
    data = FitData.from_frames(
        outcomes=outcomes,
        as_of=as_of,
        calendar=CAL,
        segment_by=segment_by,
        n_open_stages=n_open_stages,
        history_start=history_start,
    )
    if weight is not None:
        data = data.with_weights(np.full(data.n_deals, weight))
    return fit_arrivals(data, **kw)


LEVEL, TREND = math.log(200.0), 0.2
SEASON = (0.15, -0.1, -0.05, 0.0)  # sums to zero: effects coding recovers them directly


def test_recovers_level_trend_and_seasonality():
    # Poisson data, 12 full quarters of ≈ 200 deals: every coefficient within 3 of its own
    # reported standard errors (the GLM's asymptotic normal sampling distribution).
    oc = simulate_outcomes(LEVEL, TREND, SEASON, 12, seed=31)
    m = arrivals(oc, AS_OF, lookback_quarters=12)
    f = m.fits["all"]
    assert f.terms == ("level", "trend_per_year", "season_q1", "season_q2", "season_q3")
    assert f.n_full_quarters == 12 and f.n_quarters == 13
    truth = np.array([LEVEL, TREND, *SEASON[:3]])
    se = np.sqrt(np.diag(f.covariance))
    assert np.all(np.abs(f.coefficients - truth) < 3 * se), (f.coefficients, truth, se)
    assert se[1] < 0.05  # trend per year is pinned down to a few percent


def test_expected_counts_future_and_partial_quarter():
    oc = simulate_outcomes(LEVEL, TREND, SEASON, 12, seed=32)
    m = arrivals(oc, AS_OF)
    cur, nxt = CAL.quarter_of(AS_OF), CAL.shift(CAL.quarter_of(AS_OF), 1)
    counts = m.expected_counts([(cur.start, cur.end), (nxt.start, nxt.end), (cur.start, nxt.end)])
    assert counts.shape == (1, 3)
    assert counts[0, 2] == pytest.approx(counts[0, 0] + counts[0, 1])
    # the true expectation of FY2024-Q2 (fiscal quarter 2) from the simulation's formula;
    # log prediction SE from the coefficient covariance (delta method): within 3 SE
    f = m.fits["all"]
    t_mid = ((nxt.start + (nxt.end - nxt.start) / 2) - AS_OF).total_seconds() / 86400 / 365.25
    x = np.array([1.0, t_mid, 0.0, 1.0, 0.0])
    true_next = math.exp(LEVEL + TREND * t_mid + SEASON[1])
    se_log = math.sqrt(x @ f.covariance @ x)
    assert abs(math.log(counts[0, 1]) - math.log(true_next)) < 3 * se_log
    # the current quarter: only what is after AS_OF, i.e. its remaining fraction
    frac_left = (cur.end - AS_OF) / (cur.end - cur.start)
    x_cur = np.array(
        [1.0, ((cur.start + (cur.end - cur.start) / 2) - AS_OF).days / 365.25, 1, 0, 0]
    )
    assert counts[0, 0] == pytest.approx(frac_left * math.exp(x_cur @ f.coefficients), rel=1e-3)
    # a window entirely before as_of expects nothing
    prev = CAL.shift(cur, -1)
    assert m.expected_counts([(prev.start, prev.end)])[0, 0] == 0.0


def test_poisson_data_is_not_over_dispersed():
    # Under Poisson, alpha_hat ≈ max(0, (χ²/df − 1)/mu) with sd(χ²/df) ≈ sqrt(2/df): for
    # df = 8 and mu ≈ 200, sd(alpha_hat) ≈ 0.5/200 = 0.0025; bound 4 sd = 0.01.
    oc = simulate_outcomes(LEVEL, TREND, SEASON, 12, seed=33)
    f = arrivals(oc, AS_OF).fits["all"]
    assert f.alpha < 0.01
    assert f.shape > 100


def test_recovers_gamma_poisson_over_dispersion():
    # Gamma(4, 1/4) factor per quarter: alpha = 1/shape = 0.25. With 40 full quarters and 5
    # coefficients (df = 36) the moment estimate has sd ≈ alpha·sqrt(2/df) ≈ 0.06 (the Poisson
    # part, 1/mu ≈ 0.002, is negligible): within 3 sd = 0.18.
    oc = simulate_outcomes(math.log(500.0), 0.0, (0, 0, 0, 0), 40, seed=34, gamma_shape=4.0)
    f = arrivals(oc, AS_OF, lookback_quarters=40).fits["all"]
    assert abs(f.alpha - 0.25) < 0.18
    assert f.pearson_dispersion > 10  # ≈ 1 + alpha·mu ≈ 126 for mu ≈ 500


def test_short_history_drops_terms_and_never_returns_nan():
    # history starts on 2023-08-10: 2 full quarters (Q4 2023 and Q3 cut by the start), so
    # no trend (< 4) and no seasonality (< 8); the first quarter has a fractional exposure.
    oc = simulate_outcomes(LEVEL, TREND, SEASON, 12, seed=35).filter(
        pl.col("created_at") >= D(2023, 8, 10)
    )
    m = arrivals(oc, AS_OF, history_start=D(2023, 8, 10))
    f = m.fits["all"]
    assert f.terms == ("level",) and "no trend" in f.note
    h = m.history_table()
    assert h["quarter"].to_list() == ["FY2023-Q3", "FY2023-Q4", "FY2024-Q1"]
    q3 = CAL.quarter_from_label("FY2023-Q3")
    assert h["exposure"][0] == pytest.approx((q3.end - D(2023, 8, 10)) / (q3.end - q3.start))
    assert np.all(np.isfinite(m.expected_counts([(D(2024, 4, 1), D(2024, 7, 1))])))


def test_single_quarter_of_history():
    oc = simulate_outcomes(LEVEL, 0.0, (0, 0, 0, 0), 0, seed=36)  # only the current quarter
    m = arrivals(oc, AS_OF, history_start=CAL.quarter_of(AS_OF).start)
    f = m.fits["all"]
    assert f.n_quarters == 1 and f.df_residual == 0
    assert math.isinf(f.shape) and f.pearson_dispersion == 1.0 and "not estimable" in f.note
    # level = count / exposure of the partial quarter
    cur = CAL.quarter_of(AS_OF)
    expo = (AS_OF - cur.start) / (cur.end - cur.start)
    assert math.exp(f.coefficients[0]) == pytest.approx(oc.height / expo)
    json.dumps(m.to_dict(), allow_nan=False)


def test_fiscal_quarter_without_creations_drops_seasonality():
    oc = simulate_outcomes(LEVEL, 0.0, (0, 0, 0, 0), 12, seed=37)
    oc = oc.filter(pl.col("created_at").dt.month().is_in([7, 8, 9]).not_())  # no Q3 creations
    f = arrivals(oc, AS_OF).fits["all"]
    assert "season_q1" not in f.terms and "seasonality dropped" in f.note
    assert np.all(np.isfinite(f.coefficients)) and np.all(np.isfinite(f.covariance))


def test_segments_zero_rate_and_entry_mix():
    a = simulate_outcomes(LEVEL, 0.0, (0, 0, 0, 0), 8, seed=38, segment="A", stage_probs=(0.7, 0.3))
    # segment B: 5 deals created long ago (outside the lookback), all entering stage 1
    b = pl.DataFrame(
        {
            "deal_id": [f"B{i}" for i in range(5)],
            "created_at": [D(2015, 1, 1)] * 5,
            "first_stage_code": [1] * 5,
            "seg": "B",
        },
        schema_overrides={"created_at": pl.Datetime("us"), "first_stage_code": pl.Int32},
    )
    m = arrivals(pl.concat([a, b]), AS_OF, ["seg"], lookback_quarters=8, n_open_stages=3)
    assert m.segments == ("A", "B") and m.entry_mix.shape == (2, 3)
    assert m.fits["B"].zero_rate and m.expected_counts([(AS_OF, D(2025, 1, 1))])[1, 0] == 0.0
    # A's mix from its ≈ 800 recent deals: SE of a share ≈ sqrt(0.21/800) ≈ 0.016; 3 SE
    np.testing.assert_allclose(m.entry_mix[0], [0.7, 0.3, 0.0], atol=0.05)
    assert m.entry_mix_source == ("own", "pooled")
    np.testing.assert_allclose(m.entry_mix[1], m.entry_mix[0])  # B: no recent deals -> pooled
    s = m.summary()
    assert s["rate_per_quarter_now"].to_list()[1] == 0.0
    assert s.filter(pl.col("segment") == "A")["entry_share_stage_0"].item() == pytest.approx(
        m.entry_mix[0, 0]
    )


def test_weights_scale_counts():
    oc = simulate_outcomes(LEVEL, 0.0, (0, 0, 0, 0), 8, seed=39)
    m1 = arrivals(oc, AS_OF)
    m2 = arrivals(oc, AS_OF, weight=2.0)
    assert m2.fits["all"].coefficients[0] == pytest.approx(
        m1.fits["all"].coefficients[0] + math.log(2)
    )


def test_glm_matches_closed_form_for_level_only():
    # intercept-only Poisson with offsets: beta = log(sum y / sum exposure) exactly
    y, e = np.array([3.0, 7.0, 0.0, 5.0]), np.array([1.0, 1.0, 0.5, 0.25])
    beta, info, ok = poisson_glm(y, np.ones((4, 1)), np.log(e))
    assert ok and beta[0] == pytest.approx(math.log(15 / 2.75))
    assert info[0, 0] == pytest.approx(15.0)  # sum of fitted counts = sum y


def test_errors_and_round_trip():
    with pytest.raises(ModelError, match="no deal was created"):
        arrivals(simulate_outcomes(LEVEL, 0, (0, 0, 0, 0), 2, seed=1), D(2000, 1, 1))
    oc = simulate_outcomes(LEVEL, TREND, SEASON, 12, seed=40)
    with pytest.raises(ParameterError, match="lookback_quarters"):
        arrivals(oc, AS_OF, lookback_quarters=0)
    m = arrivals(oc, AS_OF)
    with pytest.raises(ParameterError, match="Unknown `segment`"):
        m.coefficient_covariance("nope")
    back = ArrivalModel.from_dict(json.loads(json.dumps(m.to_dict(), allow_nan=False)))
    assert back.to_dict() == m.to_dict()
    w = [(D(2024, 4, 1), D(2024, 7, 1))]
    np.testing.assert_array_equal(back.expected_counts(w), m.expected_counts(w))
    draws = m.draw_coefficients(4000, seed=0)["all"]
    assert draws.shape == (4000, 5)
    # mean of 4000 normal draws: within 4 SE (SE = sd/sqrt(4000)) of the point estimate
    se = np.sqrt(np.diag(m.fits["all"].covariance) / 4000)
    assert np.all(np.abs(draws.mean(axis=0) - m.fits["all"].coefficients) < 4 * se)
    c = m.expected_counts(w, coefficients={"all": draws[0]})
    assert c.shape == (1, 1) and c[0, 0] != m.expected_counts(w)[0, 0]
