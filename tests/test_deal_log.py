"""DealLog point-in-time views on small hand-made histories (expected values by hand)."""

import datetime as dt

import polars as pl
import pytest

from forecast import ParameterError, StageMap
from forecast.data.deal_log import CANONICAL_COLUMNS, DealLog

D = dt.datetime
STAGES = StageMap(open=("Prospecting", "Proposal"), won=("Closed Won",), lost=("Closed Lost",))


def make_log(rows):
    schema = {k: v for k, v in CANONICAL_COLUMNS.items() if k not in ("created_at", "source_row")}
    ev = pl.DataFrame(rows, schema={**schema, "seg": pl.Utf8}, orient="row")
    ev = ev.with_columns(
        pl.lit(None, dtype=pl.Datetime("us")).alias("created_at"),
        pl.int_range(pl.len()).cast(pl.Int64).alias("source_row"),
    ).sort("deal_id", "timestamp", "source_row")
    return DealLog(ev, STAGES, ("seg",))


ROWS = [
    ("a", D(2024, 1, 1), "Prospecting", 100.0, D(2024, 3, 1), "X"),
    ("a", D(2024, 1, 10), "Proposal", None, D(2024, 4, 1), "X"),
    ("a", D(2024, 2, 1), "Proposal", 120.0, D(2024, 5, 1), "Y"),
    ("a", D(2024, 3, 1), "Closed Won", 110.0, None, "Y"),
    ("b", D(2024, 1, 5), "Prospecting", 50.0, None, "X"),
    ("b", D(2024, 2, 5), "Closed Lost", 50.0, None, "X"),
    ("b", D(2024, 3, 5), "Proposal", 60.0, None, "X"),  # re-opened
    ("c", D(2024, 6, 1), "Prospecting", 10.0, None, "X"),
]


def test_pipeline_mid_history():
    log = make_log(ROWS)
    p = log.pipeline(D(2024, 1, 20))
    assert p["deal_id"].to_list() == ["a", "b"]
    a = p.row(0, named=True)
    assert a["stage"] == "Proposal" and a["stage_code"] == 1
    assert a["days_in_stage"] == pytest.approx(10.0) and a["age_days"] == pytest.approx(19.0)
    assert a["amount"] == 100.0  # forward-filled from creation: the Proposal row has no amount
    assert a["close_date"] == D(2024, 4, 1) and a["close_date_pushes"] == 1
    assert a["seg"] == "X"  # the change to Y happens later


def test_segment_value_is_latest_known():
    log = make_log(ROWS)
    assert log.pipeline(D(2024, 2, 15)).filter(pl.col("deal_id") == "a")["seg"].item() == "Y"


def test_spells_censoring_and_destinations():
    s = make_log(ROWS).spells(D(2024, 2, 15))
    assert s.select("deal_id", "stage", "destination", "censored").rows() == [
        ("a", "Prospecting", "Proposal", False),
        ("a", "Proposal", None, True),
        ("b", "Prospecting", "Closed Lost", False),
    ]
    assert s["duration_days"].to_list() == pytest.approx([9.0, 36.0, 31.0])
    assert s["destination_code"].to_list() == [1, -1, 3]


def test_reopened_deal_is_closed_then_open_again():
    log = make_log(ROWS)
    assert "b" not in log.pipeline(D(2024, 3, 1))["deal_id"].to_list()
    p = log.pipeline(D(2024, 3, 10))
    assert p.filter(pl.col("deal_id") == "b")["stage"].item() == "Proposal"
    o = log.outcomes(D(2024, 3, 1))
    assert o.filter(pl.col("deal_id") == "b")["status"].item() == "lost"


def test_outcomes_and_bookings():
    log = make_log(ROWS)
    o = log.outcomes(D(2024, 4, 1))
    assert o["deal_id"].to_list() == ["a", "b"]  # c does not exist yet
    assert o.filter(pl.col("deal_id") == "a").select("status", "amount").row(0) == ("won", 110.0)
    b = log.bookings(D(2024, 1, 1), D(2024, 4, 1))
    assert b.select("deal_id", "amount").rows() == [("a", 110.0)]
    assert log.bookings(D(2024, 3, 2), D(2024, 4, 1)).height == 0
    assert log.booked_amount("2024-03-01", "2024-03-02") == 110.0
    with pytest.raises(ParameterError, match="start"):
        log.bookings("2024-04-01", "2024-01-01")


def test_as_of_is_the_only_cut_and_is_idempotent():
    log = make_log(ROWS)
    cut = log.as_of(D(2024, 2, 1))
    assert cut.events["timestamp"].max() == D(2024, 2, 1)
    assert cut.as_of(D(2024, 3, 1)) is cut  # cannot un-cut
    assert cut.pipeline().equals(log.pipeline(D(2024, 2, 1)))
    assert cut.spells().equals(log.spells(D(2024, 2, 1)))


def test_fingerprint_changes_with_content():
    a, b = (
        make_log(ROWS),
        make_log([*ROWS[:-1], ("c", D(2024, 6, 1), "Prospecting", 11.0, None, "X")]),
    )
    assert a.fingerprint == make_log(ROWS).fingerprint
    assert a.fingerprint != b.fingerprint


def test_missing_canonical_column_rejected():
    with pytest.raises(ParameterError, match="read_deal_log"):
        DealLog(pl.DataFrame({"deal_id": ["a"]}), STAGES)


def test_close_date_pushes_count_later_dates_than_the_latest_given_before():
    """Pushes per open deal, against the definition written plainly: a row's close date is
    later than the last close date given on an earlier row of the same deal (rows without
    one are skipped); the first row of a deal never counts."""
    import numpy as np

    rng = np.random.default_rng(4)
    rows = []
    for i in range(40):
        for j in range(int(rng.integers(1, 7))):
            close = (
                None
                if rng.random() < 0.4
                else D(2024, 6, 1) + dt.timedelta(int(rng.integers(-20, 20)))
            )
            rows.append((f"d{i:02d}", D(2024, 1, 1 + j), "Prospecting", 1.0, close, "X"))
    want = {}
    for deal, _, _, _, close, _ in rows:
        last = want.setdefault(deal, [0, None])
        if close is not None:
            last[0] += last[1] is not None and close > last[1]
            last[1] = close
    got = dict(make_log(rows).pipeline(D(2024, 2, 1)).select("deal_id", "close_date_pushes").rows())
    assert got == {d: n for d, (n, _) in want.items()} and sum(got.values()) > 0
