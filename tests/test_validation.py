"""Validation: each typed error on a tiny input, each deliberate repair counted.

Expected counts and messages are worked out by hand from the few rows of each case.
"""

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from forecast.data.readers import read_deal_log
from forecast.data.validation import ValidationReport
from forecast.errors import (
    AmountError,
    DataError,
    MissingColumnError,
    MixedTimezoneError,
    ParameterError,
    TerminalEventError,
    TimestampError,
    UnknownStageError,
)

D = dt.datetime


def frame(rows, columns=("deal_id", "timestamp", "stage", "amount")):
    return pl.DataFrame([dict(zip(columns, r)) for r in rows], infer_schema_length=None)


GOOD = [
    ("a", "2024-01-01", "Prospecting", 10.0),
    ("a", "2024-01-10", "Proposal", 12.0),
    ("b", "2024-01-05", "Prospecting", 5.0),
]


# -- missing columns ----------------------------------------------------------------------
def test_missing_column_names_canonical_and_source_and_lists_available():
    t = frame(GOOD).rename({"amount": "amout"})
    with pytest.raises(MissingColumnError) as exc:
        read_deal_log(t)
    msg = str(exc.value)
    assert "`amount`" in msg and "amout" in msg  # canonical name, and the near miss offered
    assert "['deal_id', 'timestamp', 'stage', 'amout']" in msg
    assert exc.value.column == "amount"
    assert isinstance(exc.value, KeyError)


def test_missing_mapped_column_names_the_source_name():
    t = frame(GOOD).rename({"stage": "Phase"})
    with pytest.raises(MissingColumnError, match=r"`stage`.*`StageName`") as exc:
        read_deal_log(t, columns={"stage": "StageName"})
    assert exc.value.expected == ["StageName"]


def test_amount_may_be_declared_absent():
    t = frame(GOOD).drop("amount")
    log = read_deal_log(t, columns={"amount": None})
    assert log.events["amount"].null_count() == 3
    assert log.report.amounts_missing == 3


def test_missing_segment_column():
    with pytest.raises(MissingColumnError, match="`region`"):
        read_deal_log(frame(GOOD), segment_columns=["region"])


# -- cells ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "what"),
    [("2024-13-01", "cannot parse"), (None, "missing"), ("yesterday", "cannot parse")],
)
def test_timestamp_errors_name_deal_row_and_value(value, what):
    rows = [*GOOD, ("c", value, "Prospecting", 1.0)]
    with pytest.raises(TimestampError) as exc:
        read_deal_log(frame(rows))
    e = exc.value
    assert (e.column, e.deal_id, e.row, e.found) == ("timestamp", "c", 3, value)
    assert what in str(e) and "deal `c`, row 3" in str(e)


def test_unparseable_close_date_is_an_error_but_missing_is_not():
    cols = ("deal_id", "timestamp", "stage", "amount", "close_date")
    ok = read_deal_log(frame([("a", "2024-01-01", "Prospecting", 1.0, None)], cols))
    assert ok.events["close_date"].to_list() == [None]
    with pytest.raises(TimestampError, match=r"`close_date`, deal `a`, row 0.*'31/03/2024'"):
        read_deal_log(frame([("a", "2024-01-01", "Prospecting", 1.0, "31/03/2024")], cols))
    ok = read_deal_log(
        frame([("a", "2024-01-01", "Prospecting", 1.0, "31/03/2024")], cols),
        timestamp_formats=["%d/%m/%Y"],
    )
    assert ok.events["close_date"].to_list() == [D(2024, 3, 31)]


def test_numeric_timestamps_need_an_epoch_unit():
    t = pl.DataFrame(
        {"deal_id": ["a"], "timestamp": [1_704_067_200_000], "stage": ["Lead"], "amount": [1.0]}
    )
    with pytest.raises(TimestampError, match="epoch_unit"):
        read_deal_log(t)
    log = read_deal_log(t, epoch_unit="ms")
    assert log.events["timestamp"].to_list() == [D(2024, 1, 1)]


@pytest.mark.parametrize(
    ("value", "what"),
    [(-5.0, "negative"), (math.inf, "infinite"), (math.nan, "NaN"), ("12abc", "not a number")],
)
def test_amount_errors(value, what):
    rows = [r if isinstance(value, float) else (*r[:3], str(r[3])) for r in GOOD]
    rows = [*rows, ("c", "2024-01-07", "Prospecting", value)]
    with pytest.raises(AmountError) as exc:
        read_deal_log(frame(rows))
    e = exc.value
    assert (e.column, e.deal_id, e.row) == ("amount", "c", 3)
    assert what in str(e) and "deal `c`, row 3" in str(e)


def test_unknown_stage_lists_every_unknown_name_with_its_first_row():
    rows = [*GOOD, ("c", "2024-01-07", "Pilot", 1.0), ("d", "2024-01-07", "Trial", 1.0)]
    with pytest.raises(UnknownStageError) as exc:
        read_deal_log(frame(rows), open_stages=["Prospecting", "Proposal"])
    msg = str(exc.value)
    assert (
        "'Pilot' (first at deal `c`, row 3)" in msg and "'Trial' (first at deal `d`, row 4)" in msg
    )
    assert "StageMap(" in msg  # says how to classify
    assert (exc.value.deal_id, exc.value.row) == ("c", 3)


def test_unknown_stage_when_inferring_names_deal_and_row():
    rows = [*GOOD, ("c", "2024-01-07", "Pilot", 1.0)]
    with pytest.raises(UnknownStageError, match=r"'Pilot' first at deal `c`, row 3"):
        read_deal_log(frame(rows))


def test_missing_stage():
    with pytest.raises(UnknownStageError, match=r"deal `c`, row 3: the stage is missing"):
        read_deal_log(frame([*GOOD, ("c", "2024-01-07", None, 1.0)]), open_stages=["Prospecting"])


def test_missing_deal_id():
    with pytest.raises(DataError, match=r"`deal_id`, row 1"):
        read_deal_log(frame([GOOD[0], (None, "2024-01-07", "Prospecting", 1.0)]))


def test_terminal_to_other_terminal_is_an_error():
    rows = [
        ("a", "2024-01-01", "Prospecting", 1.0),
        ("a", "2024-02-01", "Closed Won", 1.0),
        ("a", "2024-03-01", "Closed Lost", 1.0),
    ]
    with pytest.raises(TerminalEventError) as exc:
        read_deal_log(frame(rows))
    e = exc.value
    assert (e.column, e.deal_id, e.row, e.found) == ("stage", "a", 2, "Closed Lost")
    assert "'Closed Won' (row 1" in str(e)


def test_mixed_time_zones_in_one_column():
    rows = [
        ("a", "2024-01-01T09:00:00+01:00", "Prospecting", 1.0),
        ("b", "2024-01-01 09:00:00", "Prospecting", 1.0),
    ]
    with pytest.raises(MixedTimezoneError) as exc:
        read_deal_log(frame(rows))
    assert (exc.value.column, exc.value.deal_id, exc.value.row) == ("timestamp", "b", 1)
    assert "row 0" in str(exc.value) and "row 1" in str(exc.value)


def test_errors_are_value_errors():
    for cls in (AmountError, TimestampError, MixedTimezoneError, TerminalEventError):
        assert issubclass(cls, ValueError) and issubclass(cls, DataError)


# -- repairs, counted ---------------------------------------------------------------------
def test_aware_timestamps_with_different_offsets_become_naive_utc():
    rows = [
        ("a", "2024-01-01T09:00:00+01:00", "Prospecting", 1.0),
        ("b", "2024-01-01T09:00:00.000+0000", "Prospecting", 1.0),
        ("c", "2024-01-01T09:00:00Z", "Prospecting", 1.0),
        ("d", "2023-12-31T22:30:00-05:00", "Prospecting", 1.0),
    ]
    log = read_deal_log(frame(rows))
    assert log.events["timestamp"].dtype == pl.Datetime("us")
    assert log.events["timestamp"].to_list() == [
        D(2024, 1, 1, 8),
        D(2024, 1, 1, 9),
        D(2024, 1, 1, 9),
        D(2024, 1, 1, 3, 30),
    ]
    assert log.report.timestamps_converted_to_utc == 4


def test_tz_aware_datetime_column_is_converted_and_counted():
    t = frame(GOOD).with_columns(
        pl.col("timestamp").str.to_datetime("%Y-%m-%d").dt.replace_time_zone("Europe/Paris")
    )
    log = read_deal_log(t)
    # Paris is UTC+1 in January: local midnight is 23:00 UTC the day before
    assert log.events["timestamp"].to_list()[0] == D(2023, 12, 31, 23)
    assert log.report.timestamps_converted_to_utc == 3


def test_exact_duplicates_removed_and_counted():
    rows = [GOOD[0], GOOD[1], GOOD[0], GOOD[2], GOOD[0]]
    log = read_deal_log(frame(rows))
    assert log.report.exact_duplicates_removed == 2
    assert log.events["source_row"].to_list() == [0, 1, 3]  # the first copy is kept
    assert (log.report.rows_read, log.report.rows_kept, log.report.events) == (5, 3, 3)


def test_unsorted_input_sorted_and_counted():
    rows = [GOOD[2], GOOD[1], GOOD[0]]  # deal order does not count; a's rows are swapped
    log = read_deal_log(frame(rows))
    assert log.report.rows_reordered == 1
    assert log.events.select("deal_id", "source_row").rows() == [("a", 2), ("a", 1), ("b", 0)]
    assert read_deal_log(frame(GOOD)).report.rows_reordered == 0


def test_reopened_deal_kept_and_counted():
    rows = [
        ("a", "2024-01-01", "Prospecting", 1.0),
        ("a", "2024-02-01", "Closed Lost", 1.0),
        ("a", "2024-03-01", "Proposal", 1.0),
        ("a", "2024-04-01", "Closed Lost", 1.0),
        ("a", "2024-05-01", "Proposal", 1.0),
    ]
    log = read_deal_log(frame(rows))
    assert log.report.reopened_deals == 1  # one deal, re-opened twice
    assert log.events.height == 5  # the earlier close is kept: dropping it would leak
    assert log.pipeline("2024-02-15").height == 0
    assert log.pipeline("2024-03-15")["stage"].to_list() == ["Proposal"]


def test_post_terminal_updates_kept_and_counted():
    rows = [
        ("a", "2024-01-01", "Prospecting", 1.0),
        ("a", "2024-02-01", "Closed Won", 1.0),
        ("a", "2024-02-03", "Closed Won", 2.0),
        ("a", "2024-02-05", "Won", 3.0),
    ]
    log = read_deal_log(frame(rows))
    assert log.report.post_terminal_updates == 2
    assert log.events["stage"].to_list() == [
        "Prospecting",
        "Closed Won",
        "Closed Won",
        "Closed Won",
    ]
    assert any("'Won' -> 'Closed Won'" in n for n in log.report.notes)
    assert log.bookings("2024-01-01", "2024-03-01").height == 1  # one win, not two


def test_report_is_frozen_and_exports():
    log = read_deal_log(frame([*GOOD, GOOD[0]]))
    r = log.report
    assert isinstance(r, ValidationReport)
    with pytest.raises(AttributeError):
        r.rows_read = 0  # type: ignore[misc]
    f = r.to_polars()
    assert f.height == 1 and f["exact_duplicates_removed"].item() == 1
    assert f["notes"].dtype == pl.List(pl.Utf8)
    text = str(r)
    assert "4 rows read, 3 kept -> 3 events for 2 deals" in text
    assert "exact duplicate rows removed" in text


def test_both_stage_arguments_rejected():
    from forecast import StageMap

    with pytest.raises(ParameterError, match="not both"):
        read_deal_log(frame(GOOD), stages=StageMap(open=("Prospecting",)), open_stages=["x"])


def test_reordered_rows_counted_as_defined_on_a_shuffled_history() -> None:
    """``rows_reordered`` counts rows whose timestamp is before the latest timestamp of
    an earlier-given row of their deal; checked against that definition written plainly
    (a running maximum per deal in the given order)."""
    from forecast.data.validation import RepairCounts, deduplicate_and_sort

    rng = np.random.default_rng(8)
    n = 400
    frame = pl.DataFrame(
        {
            "deal_id": rng.choice([f"D{i}" for i in range(30)], n),
            "timestamp": dt.datetime(2024, 1, 1)
            + pl.Series(rng.integers(0, 40, n)).cast(pl.Duration("us")) * 86_400_000_000,
            "stage": rng.choice(["A", "B"], n),
            "amount": rng.random(n),  # no two rows alike: nothing is removed as a duplicate
            "source_row": np.arange(n),
        }
    )
    want, latest = 0, {}
    for deal, ts in zip(frame["deal_id"], frame["timestamp"], strict=True):
        want += deal in latest and ts < latest[deal]
        latest[deal] = max(latest.get(deal, ts), ts)
    tally = RepairCounts()
    out = deduplicate_and_sort(frame, tally)
    assert want > 0 and tally.rows_reordered == want
    assert tally.exact_duplicates_removed == 0 and out.height == frame.height
    assert out.sort(["deal_id", "timestamp", "source_row"]).equals(out)


def _history_with_duplicates(seed: int, *, in_order: bool) -> pl.DataFrame:
    """300 rows over 20 deals and 10 days with duplicates, near-duplicates (one value
    apart) and missing amounts; ``source_row`` numbers them in the order given
    (``in_order``: sorted by deal and time first)."""
    rng = np.random.default_rng(seed)
    n = 300
    base = pl.DataFrame(
        {
            "deal_id": rng.choice([f"D{i}" for i in range(20)], n),
            "timestamp": dt.datetime(2024, 1, 1)
            + pl.Series(rng.integers(0, 10, n)).cast(pl.Duration("us")) * 86_400_000_000,
            "stage": rng.choice(["A", "B"], n),
            "amount": pl.Series(rng.choice([1.0, 2.0, np.nan], n)).fill_nan(None),
        }
    )
    if in_order:
        base = base.sort("deal_id", "timestamp")
    return base.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("source_row"))


def test_exact_duplicates_removed_as_defined() -> None:
    """Rows equal in every column but ``source_row`` are removed, the earliest kept: checked
    against polars' ``unique`` over all those columns (the definition) on a history with
    duplicates, near-duplicates (one value apart) and missing values."""
    from forecast.data.validation import RepairCounts, deduplicate_and_sort

    frame = _history_with_duplicates(9, in_order=False)
    subset = [c for c in frame.columns if c != "source_row"]
    want = frame.unique(subset=subset, keep="first", maintain_order=True)
    tally = RepairCounts()
    got = deduplicate_and_sort(frame, tally)
    assert 0 < tally.exact_duplicates_removed == frame.height - want.height
    assert got.equals(want.sort(["deal_id", "timestamp", "source_row"]))


def test_exact_duplicates_removed_as_defined_on_an_already_sorted_history() -> None:
    """A history given in order (as most exports are) is not re-sorted, yet loses the same
    duplicates as the definition (polars' ``unique``, earliest kept), counts no reordered
    row, and comes out flagged sorted by deal like a sorted one."""
    from forecast.data.validation import RepairCounts, deduplicate_and_sort

    frame = _history_with_duplicates(10, in_order=True)
    subset = [c for c in frame.columns if c != "source_row"]
    want = frame.unique(subset=subset, keep="first", maintain_order=True)
    tally = RepairCounts()
    got = deduplicate_and_sort(frame, tally)
    assert 0 < tally.exact_duplicates_removed == frame.height - want.height
    assert tally.rows_reordered == 0
    assert got.equals(want)
    assert got["deal_id"].flags["SORTED_ASC"]


def test_same_outcome_renamed_and_reopened_deals_counted() -> None:
    """Worked by hand: deal a is won ('Won'), then 'Booked' (another won name): one
    post-terminal update, renamed to 'Won'; deal b is lost, re-opened, then won: one
    re-opened deal, nothing renamed."""
    rows = [
        ("a", "2024-01-01", "Prospecting", 10.0),
        ("a", "2024-01-05", "Won", 10.0),
        ("a", "2024-01-09", "Booked", 10.0),
        ("b", "2024-01-02", "Prospecting", 5.0),
        ("b", "2024-01-03", "Lost", 5.0),
        ("b", "2024-01-04", "Prospecting", 5.0),
        ("b", "2024-01-06", "Won", 5.0),
    ]
    stages = {"open": ["Prospecting"], "won": ["Won", "Booked"], "lost": ["Lost"]}
    log = read_deal_log(frame(rows), stages=stages)
    assert log.events["stage"].to_list() == [
        "Prospecting",
        "Won",
        "Won",
        "Prospecting",
        "Lost",
        "Prospecting",
        "Won",
    ]
    assert log.report.post_terminal_updates == 1
    assert log.report.reopened_deals == 1
    assert any("'Booked' -> 'Won'" in note for note in log.report.notes)


def test_created_at_extremes_per_deal_as_defined() -> None:
    """Per-deal min and max of ``created_at`` over contiguous deals equal polars'
    ``group_by`` (the definition), deals without any ``created_at`` included."""
    from forecast.data.validation import created_at_extremes_per_deal

    rng = np.random.default_rng(11)
    n = 500
    days = pl.Series(rng.integers(0, 30, n)).cast(pl.Duration("us")) * 86_400_000_000
    events = pl.DataFrame(
        {
            "deal_id": np.sort(rng.choice([f"D{i:02d}" for i in range(60)], n)),
            "created_at": (dt.datetime(2024, 1, 1) + days).set(
                pl.Series(rng.random(n) < 0.4), None
            ),
        }
    )
    lengths, low, high = created_at_extremes_per_deal(events)
    want = events.group_by("deal_id", maintain_order=True).agg(
        pl.len().alias("n"),
        pl.col("created_at").min().dt.epoch("us").alias("low"),
        pl.col("created_at").max().dt.epoch("us").alias("high"),
    )
    none = np.iinfo(np.int64)
    assert want["low"].null_count() > 0  # some deals have no created_at at all
    assert lengths.tolist() == want["n"].to_list()
    assert low.tolist() == want["low"].fill_null(none.max).to_list()
    assert high.tolist() == want["high"].fill_null(none.min).to_list()
