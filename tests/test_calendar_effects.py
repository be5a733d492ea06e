"""Quarter-end pull-in estimator and the vectorised fiscal-quarter helpers."""

import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest

from forecast.calendar import FiscalCalendar
from forecast.errors import ParameterError
from forecast.fit.calendar_effects import (
    QuarterEndEffect,
    fiscal_quarter_number,
    fit_quarter_end_effect,
    in_quarter_end_window,
    month_index_to_datetime,
    quarter_start_month_index,
)
from forecast.fit.data import FitData

D = dt.datetime
CAL = FiscalCalendar()


def pull_in(wins, as_of, *, history_start=None, weights=None, **kw):
    """fit_quarter_end_effect on a hand-made frame of wins (each row its own deal)."""
    data = FitData.from_frames(
        bookings=wins, as_of=as_of, calendar=CAL, history_start=history_start
    )
    if weights is not None:
        data = data.with_weights(weights)
    return fit_quarter_end_effect(data, **kw)


# -- vectorised quarters agree with FiscalCalendar ----------------------------------------------
@pytest.mark.parametrize("start_month", [1, 2, 4, 11])
def test_vectorised_quarters_match_calendar(start_month):
    cal = FiscalCalendar(start_month=start_month)
    rng = np.random.default_rng(1)
    base = np.datetime64("2018-01-01T00:00:00", "us")
    times = base + rng.integers(0, 8 * 365 * 86_400_000_000, size=300).astype("timedelta64[us]")
    qm = quarter_start_month_index(times, cal)
    starts = month_index_to_datetime(qm)
    fq = fiscal_quarter_number(qm, cal)
    for t, s, n in zip(times, starts, fq):
        q = cal.quarter_of(t.astype(dt.datetime))
        assert s.astype(dt.datetime) == q.start
        assert n == q.quarter


def test_quarter_end_window_bounds():
    # Q1 2024 ends 2024-04-01; with W = 14 the window is [2024-03-18, 2024-04-01)
    t = np.array(
        ["2024-03-17T23:59:59", "2024-03-18T00:00:00", "2024-03-31T23:00", "2024-04-01T00:00"],
        dtype="datetime64[us]",
    )
    assert in_quarter_end_window(t, CAL, 14).tolist() == [False, True, True, False]


# -- the estimator on hand-made counts ------------------------------------------------------------
def test_counts_by_hand():
    # boundary 2024-04-01: 3 wins in the last 14 days of Q1, 1 in the first 14 days of Q2;
    # a win on 2024-03-01 is outside both windows; the boundary 2024-07-01 is incomplete
    # (as_of is 2024-07-10 < 2024-07-15) and the win after it is not counted.
    wins = pl.DataFrame(
        {
            "won_at": [
                D(2024, 3, 1),
                D(2024, 3, 20),
                D(2024, 3, 25),
                D(2024, 3, 31, 23),
                D(2024, 4, 10),
                D(2024, 7, 2),
            ]
        }
    )
    e = pull_in(wins, D(2024, 7, 10), window_days=14)
    assert (e.n_last, e.n_first, e.n_boundaries) == (3.0, 1.0, 1)
    assert e.pi == pytest.approx(0.5)  # (3 - 1) / 4
    assert e.standard_error == pytest.approx(math.sqrt((1 - 0.25) / 4))
    assert e.boundary_table()["boundary"].to_list() == ["2024-04-01"]


def test_negative_estimate_is_clipped_and_reported_raw():
    wins = pl.DataFrame({"won_at": [D(2024, 3, 25), D(2024, 4, 2), D(2024, 4, 3), D(2024, 4, 4)]})
    e = pull_in(wins, D(2024, 6, 1), history_start=D(2024, 1, 1))
    assert e.pi == 0.0 and e.raw_estimate == pytest.approx(-0.5)


def test_weights_scale_free_and_kish_se():
    wins = pl.DataFrame({"won_at": [D(2024, 3, 25), D(2024, 3, 26), D(2024, 4, 2)]})
    kw = {"history_start": D(2024, 1, 1)}
    e1 = pull_in(wins, D(2024, 6, 1), **kw)
    e2 = pull_in(wins, D(2024, 6, 1), weights=[2.5] * 3, **kw)
    assert e2.pi == pytest.approx(e1.pi) and e2.standard_error == pytest.approx(e1.standard_error)
    assert e2.n_last == pytest.approx(5.0)
    # unequal weights: n = 3 + 1 + 2 = 6, Kish n_eff = 36 / (9 + 1 + 4) = 36/14
    e3 = pull_in(wins, D(2024, 6, 1), weights=[3.0, 1.0, 2.0], **kw)
    assert e3.pi == pytest.approx((4 - 2) / 6)
    assert e3.standard_error == pytest.approx(math.sqrt((1 - (1 / 3) ** 2) / (36 / 14)))


def test_outcomes_frame_keeps_wins_only():
    oc = pl.DataFrame(
        {
            "closed_at": [D(2024, 3, 25), D(2024, 3, 26), D(2024, 4, 2)],
            "status": ["won", "lost", "won"],
        }
    )
    e = pull_in(oc, D(2024, 6, 1), history_start=D(2024, 1, 1))
    assert (e.n_last, e.n_first) == (1.0, 1.0)


def test_single_quarter_of_history_falls_back_to_zero():
    wins = pl.DataFrame({"won_at": [D(2024, 1, 5), D(2024, 2, 10)]})
    e = pull_in(wins, D(2024, 3, 1))
    assert e.pi == 0.0 and math.isinf(e.standard_error) and not e.estimated
    assert "no complete quarter boundary" in e.note
    assert e.summary()["pi"].item() == 0.0


def test_errors_name_the_parameter():
    wins = pl.DataFrame({"when": [D(2024, 1, 5)]})
    with pytest.raises(ParameterError, match="won_at"):
        pull_in(wins, D(2024, 3, 1))
    with pytest.raises(ParameterError, match="window_days"):
        pull_in(wins, D(2024, 3, 1), window_days=0, time_column="when")
    with pytest.raises(ParameterError, match="weight"):
        pull_in(wins, D(2024, 3, 1), weights=[-1.0], time_column="when")
    with pytest.raises(ParameterError, match="with_weights"):
        pull_in(wins.with_columns(weight=pl.lit(1.0)), D(2024, 3, 1), time_column="when")


def test_json_round_trip_is_strict_json():
    wins = pl.DataFrame({"won_at": [D(2024, 3, 25), D(2024, 4, 2)]})
    for e in (
        pull_in(wins, D(2024, 6, 1), history_start=D(2024, 1, 1)),
        pull_in(wins, D(2024, 4, 5)),  # fallback with infinite SE
    ):
        text = json.dumps(e.to_dict(), allow_nan=False)
        back = QuarterEndEffect.from_dict(json.loads(text))
        assert back.to_dict() == e.to_dict()
        assert back.standard_error == e.standard_error


# -- recovery on data simulated with the simulator's mechanism ------------------------------------
def simulate_wins(pi, rate_per_day, start, end, window_days, seed):
    """Poisson wins at a constant daily rate; then each win in the first W days of a quarter
    is moved, with probability pi, to the mirror-image instant in the last W days of the
    previous quarter (docs/internals.md §5)."""
    rng = np.random.default_rng(seed)
    days = (end - start).days
    n = rng.poisson(rate_per_day * days)
    offsets = np.sort(rng.uniform(0, days, n))
    out = []
    w = dt.timedelta(days=window_days)
    for x in offsets:
        t = start + dt.timedelta(days=float(x))
        q = CAL.quarter_of(t)
        if t < q.start + w and q.start - w >= start and rng.random() < pi:
            t = q.start - (t - q.start) - dt.timedelta(microseconds=1)
        out.append(t)
    return pl.DataFrame({"won_at": out})


@pytest.mark.parametrize("pi_true", [0.0, 0.3])
def test_recovers_pull_in_within_sampling_error(pi_true):
    # 20 complete boundaries (2019-04-01 .. 2024-01-01; 2019-01-01 has no history before it),
    # 5 wins/day, W = 14: n ≈ 20 · 28 · 5 = 2800 wins in the windows, so
    # SE = sqrt((1 - pi²)/n) ≈ 0.019; the raw estimate is unbiased and asymptotically
    # normal, so |raw - pi| < 3 SE fails with probability 0.3% (seeded: deterministic).
    wins = simulate_wins(pi_true, 5.0, D(2019, 1, 1), D(2024, 1, 20), 14, seed=11)
    e = pull_in(wins, D(2024, 1, 20), history_start=D(2019, 1, 1))
    assert e.n_boundaries == 20  # 2019-04-01 .. 2024-01-01
    assert e.standard_error == pytest.approx(
        math.sqrt((1 - e.raw_estimate**2) / (e.n_last + e.n_first))
    )
    assert abs(e.raw_estimate - pi_true) < 3 * e.standard_error
    assert 0.0 <= e.pi < 1.0
    if pi_true > 0:
        assert e.pi > 0.2  # and the effect is clearly detected
