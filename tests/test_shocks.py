"""Between-quarter shock on win log-odds: REML estimator, per-quarter table, recovery."""

import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest

from forecast.calendar import FiscalCalendar
from forecast.fit.data import FitData
from forecast.fit.shocks import ShockModel, fit_shocks, reml_shock_variance

D = dt.datetime
CAL = FiscalCalendar()
K = 3  # open stages 0..2; won = 3, lost = 4, no decision = 5


def shocks(spells, as_of, *, n_open_stages=None, **kw):
    """fit_shocks on a hand-made spells frame (each row its own deal)."""
    data = FitData.from_frames(
        spells=spells, as_of=as_of, calendar=CAL, n_open_stages=n_open_stages
    )
    return fit_shocks(data, **kw)


def simulate_spells(sigma, n_quarters, n_per_quarter, seed, base_logit=-0.85, trend_per_year=0.0):
    """Terminal spells per fiscal quarter, won with probability expit(base + trend·t + z_q),
    z_q ~ N(0, sigma²); plus censored spells and open-to-open exits that must be ignored."""
    rng = np.random.default_rng(seed)
    q = CAL.quarter_of(D(2014, 1, 1))
    rows = []
    for i in range(n_quarters):
        z = rng.normal(0.0, sigma)
        t_years = i / 4.0
        p = 1.0 / (1.0 + math.exp(-(base_logit + trend_per_year * t_years + z)))
        span = (q.end - q.start).total_seconds()
        for _ in range(n_per_quarter):
            exit_t = q.start + dt.timedelta(seconds=float(rng.uniform(0, span)))
            dest = K if rng.random() < p else int(rng.choice([K + 1, K + 2]))
            rows.append((int(rng.integers(0, K)), dest, exit_t, False, float(rng.uniform(1, 90))))
        rows.append((0, 1, q.start + dt.timedelta(days=3), False, 3.0))  # open -> open
        q = CAL.shift(q, 1)
    rows.append((1, -1, None, True, 10.0))  # censored
    frame = pl.DataFrame(
        rows,
        schema={
            "stage_code": pl.Int32,
            "destination_code": pl.Int32,
            "exited_at": pl.Datetime("us"),
            "censored": pl.Boolean,
            "duration_days": pl.Float64,
        },
        orient="row",
    )
    return frame.with_columns(entered_at=pl.lit(D(2014, 1, 1), dtype=pl.Datetime("us"))), q.start


def test_reml_equals_closed_form_with_equal_variances():
    # With equal sampling variances v and an intercept only, the REML estimate is the
    # moment estimate max(0, s² - v), s² the unbiased sample variance (closed form).
    rng = np.random.default_rng(3)
    y = rng.normal(0.2, 0.5, size=25)
    v = np.full(25, 0.05)
    s, lo, hi, _ = reml_shock_variance(y, v, np.ones((25, 1)))
    assert s**2 == pytest.approx(max(0.0, np.var(y, ddof=1) - 0.05), rel=1e-6)
    assert lo < s < hi
    y0 = np.full(10, 0.3) + rng.normal(0, 0.01, 10)  # far less spread than v: boundary 0
    s0, lo0, _, _ = reml_shock_variance(y0, np.full(10, 0.05), np.ones((10, 1)))
    assert s0 == 0.0 and lo0 == 0.0


def test_quarter_table_by_hand_without_baseline():
    # Q1 2024: 3 won, 7 lost; Q2 2024: 5 won, 5 no decision; Q3 2024 incomplete at as_of.
    rows = [(0, K, D(2024, 2, 1), False)] * 3 + [(1, K + 1, D(2024, 3, 1), False)] * 7
    rows += [(2, K, D(2024, 5, 1), False)] * 5 + [(0, K + 2, D(2024, 6, 1), False)] * 5
    rows += [(0, K, D(2024, 8, 1), False)] * 10
    rows += [(2, -1, None, True)]  # stage 2 is the last open stage: K inferred = 3
    sp = pl.DataFrame(
        rows,
        schema={
            "stage_code": pl.Int32,
            "destination_code": pl.Int32,
            "exited_at": pl.Datetime("us"),
            "censored": pl.Boolean,
        },
        orient="row",
    )
    m = shocks(sp, D(2024, 8, 15), baseline="none", min_closed_per_quarter=10, min_quarters=2)
    t = m.quarter_table()
    assert t["quarter"].to_list() == ["FY2024-Q1", "FY2024-Q2"]
    assert t["n_won"].to_list() == [3.0, 5.0] and t["n_closed"].to_list() == [10.0, 10.0]
    # without a baseline the shift is the Haldane–Anscombe empirical logit (closed form)
    assert t["log_odds_shift"].to_list() == pytest.approx([math.log(3.5 / 7.5), 0.0])
    assert t["sampling_variance"].to_list() == pytest.approx([1 / 3.5 + 1 / 7.5, 2 / 5.5])
    assert not m.detrended and "trend not removed" in m.note


def test_too_little_history_falls_back_to_zero_with_note():
    sp, _ = simulate_spells(0.4, 2, 50, seed=1)
    m = shocks(sp, D(2014, 7, 1))
    assert m.n_quarters == 2 and m.sigma == 0.0 and not m.estimated
    assert "not estimable" in m.note
    assert math.isinf(m.ci_high)
    json.dumps(m.to_dict(), allow_nan=False)


def test_quarters_with_few_closures_are_left_out():
    sp, end = simulate_spells(0.0, 8, 12, seed=2)
    assert shocks(sp, end, min_closed_per_quarter=12).n_quarters == 8
    assert shocks(sp, end, min_closed_per_quarter=13).n_quarters == 0


def test_no_shock_gives_near_zero():
    # 40 quarters × 200 closures at p ≈ 0.3: binomial variance of a logit v ≈ 1/(200·0.21)
    # ≈ 0.024. Under sigma = 0 the estimate of sigma² is ≈ max(0, N(0, sqrt(2/38)·v)), whose
    # 99th percentile is 2.33 · 0.229 · 0.024 ≈ 0.0128, i.e. sigma < 0.113: bound 0.12.
    sp, end = simulate_spells(0.0, 40, 200, seed=5)
    m = shocks(sp, end)
    assert m.n_quarters == 40 and m.detrended
    assert m.sigma < 0.12 and m.sigma_moments < 0.12
    assert m.ci_low == 0.0 or m.sigma > 0


def test_recovers_sigma_within_sampling_error():
    # sigma = 0.4 over 40 quarters × 200 closures: SE(sigma²) ≈ sqrt(2/(40-2))·(sigma² + v)
    # ≈ 0.229 · 0.184 ≈ 0.042, SE(sigma) ≈ 0.042 / (2 · 0.4) ≈ 0.053; allow 3 SE = 0.16.
    sp, end = simulate_spells(0.4, 40, 200, seed=7)
    m = shocks(sp, end)
    assert abs(m.sigma - 0.4) < 0.16
    assert abs(m.sigma_moments - 0.4) < 0.16
    assert m.ci_low < 0.4 < m.ci_high  # the 95% profile interval covers the truth
    assert 0.03 < m.standard_error < 0.1  # and reports an error of the expected size


def test_trend_is_not_read_as_shock():
    # No shock, log-odds drifting by 0.3/year for 10 years: the raw spread of the quarterly
    # logits is ≈ 0.3·10/sqrt(12) ≈ 0.87, far above the no-shock bound of 0.12 (derived in
    # test_no_shock_gives_near_zero); detrended it must stay under that bound. Slope SE ≈
    # sqrt(v / (40 · var(t))) ≈ sqrt(0.024 / (40 · 8.3)) ≈ 0.009: allow 0.03 (> 3 SE).
    sp, end = simulate_spells(0.0, 40, 200, seed=9, base_logit=-1.5, trend_per_year=0.3)
    m = shocks(sp, end)
    assert m.sigma < 0.12
    assert m.trend_per_year == pytest.approx(0.3, abs=0.03)
    raw = shocks(sp, end, detrend=False)
    assert raw.sigma > 0.5 and not raw.detrended


def test_json_round_trip():
    sp, end = simulate_spells(0.4, 12, 50, seed=4)
    m = shocks(sp, end)
    back = ShockModel.from_dict(json.loads(json.dumps(m.to_dict(), allow_nan=False)))
    assert back.to_dict() == m.to_dict()
    assert back.quarter_table().equals(m.quarter_table())
    assert m.summary().height == 1


def test_heterogeneous_deals_do_not_attenuate_sigma():
    # Per quarter 200 fast exits (sojourn 1-30 days) won with p = expit(z_q) and 200 slow
    # "zombie" exits (200-400 days) won with p = expit(-6 + z_q) ≈ 0: the aggregate won share
    # ≈ expit(z)/2 moves its logit by only ≈ 2/3 of z (d logit(p/2)/dz at z = 0), while the
    # stratified baseline compares each exit with its own stratum. Fast exits carry the
    # information: v ≈ 1/(200 · 0.25) = 0.02, so SE(sigma) ≈ sqrt(2/38)·(0.16 + 0.02)/0.8 ≈
    # 0.05; tolerance 3 SE = 0.15.
    rng = np.random.default_rng(13)
    q = CAL.quarter_of(D(2014, 1, 1))
    parts = []
    for _ in range(40):
        z = rng.normal(0.0, 0.4)
        dur = np.concatenate([rng.uniform(1, 30, 200), rng.uniform(200, 400, 200)])
        base = np.concatenate([np.zeros(200), np.full(200, -6.0)])
        won = rng.random(400) < 1.0 / (1.0 + np.exp(-(base + z)))
        parts.append(
            pl.DataFrame(
                {
                    "stage_code": np.zeros(400, dtype=np.int32),
                    "destination_code": np.where(won, K, K + 1).astype(np.int32),
                    "exited_at": [q.start + dt.timedelta(days=10)] * 400,
                    "censored": False,
                    "duration_days": dur,
                },
                schema_overrides={"exited_at": pl.Datetime("us")},
            )
        )
        q = CAL.shift(q, 1)
    sp = pl.concat(parts)
    strat = shocks(sp, q.start, n_open_stages=K, detrend=False)
    aggregate = shocks(sp, q.start, n_open_stages=K, detrend=False, baseline="none")
    assert abs(strat.sigma - 0.4) < 0.15
    assert aggregate.sigma < strat.sigma - 0.05  # the naive aggregate logit is attenuated
