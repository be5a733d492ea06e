"""Markets that move and logs that start mid-stream: generator truth, drift report, delayed entry.

The drift report is checked on generated worlds whose truth is known: a step change
(win odds down, every sojourn 50 % longer) at the split of the report must be
flagged in every stage of the pooled rows, and a stationary world must flag
nothing (the report controls the family-wise error at 5 %, so one fixed seed is a
fair check; it fails if the tests are miscalibrated, e.g. with Holm's correction
dropped, or if the split or the delayed entries are wrong).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

import forecast
from forecast import cli
from forecast.datasets.synthetic import SYNTHETIC_STAGES, MarketDrift, generate_crm
from forecast.errors import ModelError
from forecast.fit.data import FitData, mid_stream_deals
from forecast.fit.drift import DRIFT_COLUMNS, drift_table
from forecast.segments import POOLED_SEGMENT
from forecast.simulate import AgeMixture, mix_ages

AS_OF = "2025-01-01"
SPLIT = "2024-07-01"  # two fiscal quarters before the one holding AS_OF


def _log(crm):
    return forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])


@pytest.fixture(scope="module")
def step_log():
    return _log(generate_crm(seed=1, end=AS_OF, drift=MarketDrift.step(SPLIT)))


@pytest.fixture(scope="module")
def stable_log():
    return _log(generate_crm(seed=1, end=AS_OF))


# -- generator ---------------------------------------------------------------------------------


def test_market_drift_truth():
    start = dt.datetime(2022, 1, 1)
    smooth = MarketDrift.smooth(win_log_odds_per_year=-0.3, pace_per_year=0.2)
    two_years = dt.datetime(2024, 1, 1)
    years = (two_years - start).days / 365.25
    assert smooth.win_log_odds(two_years, start) == pytest.approx(-0.3 * years)
    assert smooth.pace_factor(two_years, start) == pytest.approx(1.2**years)
    step = MarketDrift.step("2023-01-01", win_log_odds=-0.7, pace=0.5)
    assert step.win_log_odds("2022-12-31", start) == 0.0
    assert step.pace_factor("2023-01-01", start) == pytest.approx(1.5)
    crm = generate_crm(seed=2, end="2024-01-01", scale=0.3, drift=step)
    truth = crm.truth
    assert truth.drift is step
    won = truth.stage_map.WON
    before = truth.destination_probabilities_at("SMB", "2022-06-01")
    after = truth.destination_probabilities_at("SMB", "2023-06-01")
    np.testing.assert_allclose(before, truth.destination_probabilities["SMB"])
    odds = lambda p: p[:, won] / (1.0 - p[:, won])  # noqa: E731
    np.testing.assert_allclose(odds(after) / odds(before), math.exp(-0.7))
    np.testing.assert_allclose(after.sum(axis=1), 1.0)


def test_log_recorded_mid_stream_has_deals_in_progress():
    crm = generate_crm(seed=3, end="2024-01-01", scale=0.5, recorded_from="2023-01-01")
    ev = crm.events
    assert ev["timestamp"].min() >= dt.datetime(2023, 1, 1)
    assert len(crm.truth.in_progress) > 0
    log = _log(crm)
    mid = mid_stream_deals(log, "2023-01-01")
    flagged = set(mid.filter(pl.col("in_progress"))["deal_id"].cast(pl.Utf8).to_list())
    assert flagged == set(crm.truth.in_progress)
    # without the argument the deals created before the first event are found too
    implicit = mid_stream_deals(log)
    found = set(implicit.filter(pl.col("in_progress"))["deal_id"].cast(pl.Utf8).to_list())
    assert found == set(crm.truth.in_progress)


def test_deals_in_progress_are_not_arrivals():
    """The arrival fit of a mid-stream log counts only the deals created after it began.

    The same world recorded from its start and from a later date: the arrival counts
    of the quarters both logs cover are equal (the deals already in progress at the
    later start would otherwise all count as arrivals of its first quarter).
    """
    full = generate_crm(seed=4, end="2024-07-01", scale=0.5)
    mid = generate_crm(seed=4, end="2024-07-01", scale=0.5, recorded_from="2023-07-01")
    kw = {"as_of": "2024-07-01", "segment_by": ["segment"], "n_draws": 0, "half_life": None}
    h_full = forecast.fit(_log(full), **kw).arrivals.history_table()
    h_mid = forecast.fit(_log(mid), recorded_from="2023-07-01", **kw).arrivals.history_table()
    assert h_mid["quarter"].unique().sort().to_list() == [
        "FY2023-Q3", "FY2023-Q4", "FY2024-Q1", "FY2024-Q2"
    ]  # fmt: skip
    both = h_mid.join(h_full, on=["segment", "quarter"], suffix="_full")
    assert both.height == h_mid.height
    assert both["count"].to_list() == both["count_full"].to_list()
    assert len(mid.truth.in_progress) > 0.3 * float(h_mid["count"].sum()) / 4


# -- drift report ------------------------------------------------------------------------------


def test_drift_report_flags_a_step_change(step_log):
    data = FitData.from_log(step_log, as_of=AS_OF, segment_by=["segment"])
    t = drift_table(data, recent_quarters=2, n_draws=60, seed=0)
    assert t.columns == list(DRIFT_COLUMNS)
    assert t["recent_from"].unique().to_list() == [dt.date(2024, 7, 1)]
    pooled = t.filter(pl.col("segment") == POOLED_SEGMENT)
    assert pooled.height == len(SYNTHETIC_STAGES.open)
    assert (pooled["win_probability_change"] < 0).all()
    assert (pooled["median_days_ratio"] > 1).all()
    # the truth: every sojourn 1.5 × as long after the step; the intervals of the two
    # medians cover the truth within their widths
    for r in pooled.iter_rows(named=True):
        assert "slower" in r["signal"], r
        lo = r["median_days_recent_low"] / r["median_days_earlier_high"]
        hi = r["median_days_recent_high"] / r["median_days_earlier_low"]
        assert lo < 1.5 < hi, r
    assert pooled["signal"].str.contains("win probability falling").sum() >= 3


def test_drift_report_is_quiet_on_a_stable_market(stable_log):
    data = FitData.from_log(stable_log, as_of=AS_OF, segment_by=["segment"])
    t = drift_table(data, recent_quarters=2, n_draws=60, seed=0)
    assert (t["signal"] == "").all(), t.filter(pl.col("signal") != "")
    tested = t["win_probability_p_value"].drop_nulls()
    assert tested.len() >= 8  # most rows have enough exits to be tested
    # a handful of recent exits: no test, but a wide interval
    few = t.filter(pl.col("exits_recent") < 10)
    assert few["win_probability_p_value"].null_count() == few.height


def test_drift_report_is_deterministic_and_checks_its_input(stable_log):
    data = FitData.from_log(stable_log, as_of=AS_OF, segment_by=["segment"])
    a = drift_table(data, n_draws=5, seed=3)
    assert a.equals(drift_table(data, n_draws=5, seed=3))
    assert not a.equals(drift_table(data, n_draws=5, seed=4))
    with pytest.raises(ModelError, match="recent_quarters"):
        drift_table(data, recent_quarters=20, n_draws=5)
    with pytest.raises(forecast.errors.ParameterError, match="n_draws"):
        drift_table(data, n_draws=1)


def test_model_drift_and_cli(stable_log, tmp_path, capsys):
    model = forecast.fit(stable_log, as_of=AS_OF, segment_by=["segment"], n_draws=0, half_life=None)
    t = model.drift(stable_log, n_draws=5)
    data = FitData.from_log(stable_log, as_of=AS_OF, segment_by=["segment"])
    assert t.equals(drift_table(data, n_draws=5))
    path = tmp_path / "h.csv"
    stable_log.events.drop("source_row").write_csv(path)
    out = tmp_path / "drift.parquet"
    code = cli.main(
        ["drift", str(path), "--as-of", AS_OF, "--segment", "segment", "--draws", "5",
         "--no-progress", "-o", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "recent period from 2024-07-01" in text
    for stage in SYNTHETIC_STAGES.open:
        assert stage in text
    assert pl.read_parquet(out).equals(t)


# -- simulation of deals whose age in stage is known only within a range -----------------------


def test_mix_ages_averages_the_outcomes_over_the_ages():
    @dataclasses.dataclass(frozen=True)
    class Arrays:  # the fields mix_ages reads of ModelArrays
        deal_segment: np.ndarray
        deal_stage: np.ndarray
        deal_age: np.ndarray
        deal_amount: np.ndarray

    @dataclasses.dataclass(frozen=True)
    class Outcomes:
        p_win: np.ndarray
        p_qe: np.ndarray

    def outcomes_of(a):  # shape (B=2, N, H=3): depends on the age only
        age = np.asarray(a.deal_age, dtype=float)
        p = np.stack([np.exp(-age / 50.0) * h / 4 for h in (1, 2, 3)], axis=-1)
        p_win = np.stack([p, 0.5 * p])
        p_qe = np.broadcast_to(age[None, :, None] / 100.0, p_win.shape)
        return Outcomes(p_win, p_qe)

    arrays = Arrays(np.zeros(3, np.int64), np.zeros(3, np.int64), np.array([5, 10, 0]),
                    np.ones(3))  # fmt: skip
    mix = AgeMixture(
        np.array([1, 1, 1, 2]), np.array([10, 40, 70, 0]), np.array([0.2, 0.3, 0.5, 1.0])
    )
    out = mix_ages(arrays, mix, outcomes_of)
    plain = outcomes_of(arrays)
    np.testing.assert_array_equal(out.p_win[:, 0], plain.p_win[:, 0])  # not a mixture deal
    ages, w = np.array([10.0, 40.0, 70.0]), np.array([0.2, 0.3, 0.5])
    pw = np.exp(-ages / 50.0)
    for b, f in enumerate((1.0, 0.5)):
        for h in (1, 2, 3):
            win = f * h / 4 * pw
            assert out.p_win[b, 1, h - 1] == pytest.approx(float(w @ win))
            # P(in the quarter's last days | won) mixes with the win weights
            assert out.p_qe[b, 1, h - 1] == pytest.approx(
                float((w * win) @ (ages / 100)) / float(w @ win)
            )
    assert math.isclose(out.p_win[0, 2, 0], plain.p_win[0, 2, 0])


@pytest.mark.slow
def test_mid_stream_log_forecasts_like_the_full_log():
    """The same world, recorded from the start and from a later date, forecasts alike.

    The open pipeline at the as-of date is the same deals; the mid-stream log has
    lost their earlier history (their ages in stage are ranges) and the deals that
    closed before it began. The next-quarter means agree within their Monte Carlo
    and parameter error (a loose 20 %: the two fits see different histories).
    """
    kw = {"as_of": "2024-04-01", "segment_by": ["segment"], "n_draws": 0, "half_life": None}
    full = _log(generate_crm(seed=5, end="2024-04-01"))
    mid = _log(generate_crm(seed=5, end="2024-04-01", recorded_from="2023-04-01"))
    m_full = forecast.fit(full, **kw)
    m_mid = forecast.fit(mid, recorded_from="2023-04-01", **kw)
    a = m_full.simulate(full, n_paths=2000, horizon=1, seed=0)
    b = m_mid.simulate(mid, n_paths=2000, horizon=1, seed=0)
    mean_a = float(a.quarterly().select(pl.col("mean").sum()).item())
    mean_b = float(b.quarterly().select(pl.col("mean").sum()).item())
    assert mean_b == pytest.approx(mean_a, rel=0.2)
