"""Tests of `forecast.compare`: a hand-built pair of forecasts whose movement is known deal
by deal, the same pair read back from Parquet, and real forecasts a week apart."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

import forecast
from forecast.calendar import FiscalCalendar
from forecast.compare import CAUSES, compare
from forecast.errors import ParameterError
from forecast.io import write_forecast
from forecast.results import Forecast

T0 = dt.datetime(2025, 1, 15)
T1 = dt.datetime(2025, 1, 22)
QUARTERS = ("FY2025-Q1", "FY2025-Q2")
P = 100  # paths

# (deal, day, stage, amount, close date): every change of the hand-made history.
EVENTS = [
    ("J", "2024-12-01", "Proposal", 1000.0, "2025-01-10"),
    ("J", "2025-01-05", "Closed Won", 1000.0, "2025-01-05"),  # booked before t0
    ("A", "2024-12-01", "Proposal", 100.0, "2025-02-01"),
    ("A", "2025-01-18", "Closed Won", 100.0, "2025-01-18"),  # won between t0 and t1
    ("B", "2024-12-05", "Proposal", 200.0, "2025-02-01"),
    ("B", "2025-01-20", "Closed Lost", 200.0, "2025-02-01"),  # lost
    ("C", "2025-01-17", "Prospecting", 300.0, "2025-03-01"),  # created, still open
    ("H", "2025-01-16", "Proposal", 80.0, "2025-01-30"),
    ("H", "2025-01-21", "Closed Won", 80.0, "2025-01-21"),  # created and won
    ("D", "2024-11-01", "Proposal", 100.0, "2025-02-15"),
    ("D", "2025-01-19", "Proposal", 150.0, "2025-02-15"),  # amount up
    ("E", "2024-11-01", "Prospecting", 50.0, "2025-02-15"),
    ("E", "2025-01-19", "Proposal", 50.0, "2025-02-15"),  # stage move
    ("F", "2024-11-01", "Proposal", 60.0, "2025-03-01"),
    ("F", "2025-01-20", "Proposal", 60.0, "2025-05-01"),  # close date pushed out of Q1
    ("G", "2024-11-01", "Proposal", 20.0, "2025-06-01"),
    ("G", "2025-01-20", "Proposal", 20.0, "2025-03-15"),  # close date pulled into Q1
    ("I", "2024-11-01", "Proposal", 40.0, "2025-02-20"),  # nothing happens
    ("K", "2024-06-01", "Prospecting", 10.0, "2024-07-01"),  # for a history before t0
]

# Expected won amount in FY2025-Q1 of each open deal (previous, current) and amounts.
PREVIOUS = {"A": 60.0, "B": 50.0, "D": 40.0, "E": 10.0, "F": 30.0, "G": 5.0, "I": 20.0, "K": 0.5}
CURRENT = {"C": 30.0, "D": 66.0, "E": 25.0, "F": 12.0, "G": 9.0, "I": 17.0, "K": 0.5}
AMOUNT_PREVIOUS = {"A": 100.0, "B": 200.0, "D": 100.0, "E": 50.0, "F": 60.0, "G": 20.0, "I": 40.0}
AMOUNT_CURRENT = {"C": 300.0, "D": 150.0, "E": 50.0, "F": 60.0, "G": 20.0, "I": 40.0}
NEW_DEALS = (500.0, 420.0)  # expected bookings from deals still to be created, Q1
BOOKED = (1000.0, 1180.0)  # J before t0; + A (100) and H (80) between t0 and t1

# The movement, worked out by hand from the definitions in forecast.compare.
TRUE_CHANGES = {
    ("A", "won"): 100.0 - 60.0,
    ("B", "lost"): -50.0,
    ("C", "created"): 30.0,
    ("H", "created"): 80.0,
    ("D", "amount_change"): (150.0 - 100.0) * (40.0 / 100.0 + 66.0 / 150.0) / 2.0,  # 21
    ("D", "aged"): (66.0 - 40.0) - 21.0,
    ("E", "stage_move"): 15.0,
    ("F", "slipped"): -18.0,
    ("G", "pulled_in"): 4.0,
    ("I", "aged"): -3.0,
    (None, "new_deals"): NEW_DEALS[1] - NEW_DEALS[0],
}


def history() -> forecast.DealLog:
    frame = pl.DataFrame(
        EVENTS, schema=["deal_id", "timestamp", "stage", "amount", "close_date"], orient="row"
    )
    return forecast.read_deal_log(
        frame,
        open_stages=["Prospecting", "Proposal"],
    )


def hand_forecast(
    as_of: dt.datetime,
    expected: dict[str, float],
    amounts: dict[str, float],
    new_deals: float,
    booked: float,
) -> Forecast:
    """A forecast whose per-deal expectations and quarterly mean are exactly the given numbers."""
    ids = sorted(expected)
    cents = np.array([[round(expected[d] * 100 * P), 0] for d in ids], dtype=np.int64)
    totals = np.zeros((P, 2, 1, 2))
    totals[:, 0, 0, 0] = sum(expected.values())
    totals[:, 0, 0, 1] = new_deals
    totals[:, 1, 0, :] = 7.0
    return Forecast(
        totals=totals,
        booked_to_date=np.array([[booked], [0.0]]),
        deal_ids=np.array(ids),
        deal_amounts=np.array([amounts.get(d, 10.0) for d in ids]),
        deal_wins=np.ones((len(ids), 2), dtype=np.int64),
        deal_won_cents=cents,
        quarters=QUARTERS,
        segments=("all",),
        weighted_pipeline=np.zeros(2),
        as_of=as_of,
        info={"seed": 0, "n_paths": P, "calendar": FiscalCalendar().to_dict()},
        deal_segments=np.array(["all"] * len(ids)),
    )


@pytest.fixture(scope="module")
def pair() -> tuple[Forecast, Forecast]:
    prev = hand_forecast(T0, PREVIOUS, AMOUNT_PREVIOUS, NEW_DEALS[0], BOOKED[0])
    cur = hand_forecast(T1, CURRENT, AMOUNT_CURRENT, NEW_DEALS[1], BOOKED[1])
    return prev, cur


def test_hand_built_pair_is_explained_deal_by_deal(pair: tuple[Forecast, Forecast]) -> None:
    prev, cur = pair
    mv = compare(prev, cur, history())
    # Quarterly means of the hand-made forecasts: booked + deals + new deals.
    assert mv.previous_expected == pytest.approx(1000 + sum(PREVIOUS.values()) + 500, abs=1e-9)
    assert mv.current_expected == pytest.approx(1180 + sum(CURRENT.values()) + 420, abs=1e-9)
    got = {
        (r["deal_id"], r["cause"]): r["change"]
        for r in mv.deals.filter(pl.col("cause") != "other").iter_rows(named=True)
    }
    assert set(got) == set(TRUE_CHANGES)
    for key, value in TRUE_CHANGES.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    causes = mv.by_cause()
    assert causes["cause"].to_list() == list(CAUSES)
    # The causes add up to the total change (float rounding only), and nothing is left over.
    assert causes["change"].sum() == pytest.approx(mv.total_change, abs=1e-9)
    assert abs(causes.filter(pl.col("cause") == "other")["change"][0]) < 1e-9
    assert causes.filter(pl.col("cause") == "model_change")["change"][0] == 0.0
    assert causes["end"][-1] == pytest.approx(mv.current_expected, abs=1e-9)
    n = dict(causes.select("cause", "n_deals").iter_rows())
    assert n["created"] == 2 and n["won"] == 1 and n["aged"] == 2 and n["new_deals"] == 0
    # Facts from the history are carried along for the reader.
    e = mv.by_deal().filter(pl.col("deal_id") == "E").row(0, named=True)
    assert (e["stage_previous"], e["stage_current"]) == ("Prospecting", "Proposal")
    f = mv.by_deal().filter(pl.col("deal_id") == "F").row(0, named=True)
    assert f["close_date_current"] == dt.datetime(2025, 5, 1)


def test_parquet_outputs_give_the_same_movement(tmp_path, pair) -> None:
    prev, cur = pair
    write_forecast(prev, tmp_path)
    write_forecast(cur, tmp_path)
    log = history()
    from_objects = compare(prev, cur, log)
    # Default partitions: the latest for `current`, the latest before it for `previous`.
    from_files = compare(tmp_path, tmp_path, log)
    assert from_files.previous_as_of == T0 and from_files.current_as_of == T1
    a = from_objects.deals.sort("deal_id", "cause")
    b = from_files.deals.sort("deal_id", "cause")
    assert a.select("deal_id", "cause").equals(b.select("deal_id", "cause"))
    np.testing.assert_allclose(b["change"].to_numpy(), a["change"].to_numpy(), atol=1e-9)
    mixed = compare(tmp_path, cur, log, previous_as_of="2025-01-15")
    assert mixed.total_change == pytest.approx(from_objects.total_change, abs=1e-9)


def test_bad_arguments_are_named(pair, tmp_path) -> None:
    prev, cur = pair
    log = history()
    with pytest.raises(ParameterError, match="earlier"):
        compare(cur, prev, log)
    with pytest.raises(ParameterError, match="FY2025-Q3"):
        compare(prev, cur, log, quarter="FY2025-Q3")
    with pytest.raises(ParameterError, match="DealLog"):
        compare(prev, cur, None)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="must be a Forecast"):
        compare(3, cur, log)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="No forecast output"):
        compare(tmp_path / "nothing", cur, log)


def test_real_forecasts_a_week_apart_with_the_model_refit_separated() -> None:
    from forecast.datasets import load_sample

    log = load_sample()
    t0, t1 = dt.datetime(2024, 11, 1), dt.datetime(2024, 11, 8)
    m0 = forecast.fit(log, as_of=t0, segment_by=["segment"], n_draws=0, seed=3)
    m1 = forecast.fit(log, as_of=t1, segment_by=["segment"], n_draws=0, seed=3)
    f0 = m0.simulate(log, n_paths=1000, horizon=2, seed=5)
    f1 = m1.simulate(log, n_paths=1000, horizon=2, seed=5)
    mv = compare(f0, f1, log, previous_model=m0)
    causes = dict(mv.by_cause().select("cause", "change").iter_rows())
    assert sum(causes.values()) == pytest.approx(mv.total_change, rel=1e-12, abs=1e-6)
    # Same history for both runs: only the per-deal rounding to cents is left over.
    assert abs(causes["other"]) < 0.01 * (len(f0.deal_ids) + len(f1.deal_ids))
    assert mv.info["model_change_separated"]
    # Every deal open at t0 and won / lost by t1 in the history is classified so.
    status = dict(log.outcomes(t1).select("deal_id", "status").iter_rows())
    open0, open1 = set(f0.deal_ids), set(f1.deal_ids)
    rows = mv.by_deal().filter(pl.col("cause").is_in(["won", "lost"]))
    for d, cause in rows.select("deal_id", "cause").iter_rows():
        assert d in open0 and d not in open1
        assert (status[d] == "won") == (cause == "won")
    closed = {d for d in open0 - open1 if status.get(d) in ("won", "lost", "no_decision")}
    expected_nonzero = {d for d in closed if f0.deal_won_cents[list(f0.deal_ids).index(d), 0] != 0}
    assert set(rows["deal_id"].to_list()) == expected_nonzero
    # Without the previous model the refit stays inside the deal causes; the total is the same.
    plain = compare(f0, f1, log)
    assert plain.total_change == mv.total_change
    assert dict(plain.by_cause().select("cause", "change").iter_rows())["model_change"] == 0.0
