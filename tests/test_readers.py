"""Readers: every source type, the three shapes, column mapping, canonical output.

Expected frames are written out by hand from the few input rows of each case.
"""

import datetime as dt

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from forecast import StageMap
from forecast.data.deal_log import CANONICAL_COLUMNS, DealLog
from forecast.data.readers import read_deal_log
from forecast.errors import DataError, MissingColumnError, ParameterError, TimestampError

D = dt.datetime

CSV = """deal_id,timestamp,stage,amount,close_date,region
007,2024-01-01T10:00:00,Prospecting,100,2024-03-31,EU
007,2024-01-20T09:00:00,Proposal,120,2024-04-30,EU
007,2024-02-15T16:30:00,Closed Won,110,,EU
12,2024-01-10T08:00:00,Qualification,,2024-02-28,US
12,2024-02-01T08:00:00,Closed Lost,50,,US
"""

EXPECTED = pl.DataFrame(
    {
        "deal_id": ["007", "007", "007", "12", "12"],
        "timestamp": [
            D(2024, 1, 1, 10),
            D(2024, 1, 20, 9),
            D(2024, 2, 15, 16, 30),
            D(2024, 1, 10, 8),
            D(2024, 2, 1, 8),
        ],
        "stage": ["Prospecting", "Proposal", "Closed Won", "Qualification", "Closed Lost"],
        "amount": [100.0, 120.0, 110.0, None, 50.0],
        "close_date": [D(2024, 3, 31), D(2024, 4, 30), None, D(2024, 2, 28), None],
        "created_at": [None] * 5,
        "region": ["EU", "EU", "EU", "US", "US"],
        "source_row": [0, 1, 2, 3, 4],
    },
    schema={**CANONICAL_COLUMNS, "region": pl.Utf8, "source_row": pl.Int64},
).select(*CANONICAL_COLUMNS.keys() - {"source_row"}, "region", "source_row")


@pytest.fixture
def csv_path(tmp_path):
    p = tmp_path / "history.csv"
    p.write_text(CSV)
    return p


def _expected_order(frame):
    cols = ["deal_id", "timestamp", "stage", "amount", "close_date", "created_at"]
    return frame.select(*cols, "region", "source_row")


def test_csv_path_gives_the_canonical_frame(csv_path):
    log = read_deal_log(csv_path, segment_columns=["region"])
    assert isinstance(log, DealLog)
    assert log.events.equals(_expected_order(EXPECTED))
    assert dict(log.events.schema) == {
        **{k: v for k, v in CANONICAL_COLUMNS.items() if k != "source_row"},
        "region": pl.Utf8(),
        "source_row": pl.Int64(),
    }
    assert log.segment_columns == ("region",)
    assert log.stages.open == ("Prospecting", "Qualification", "Proposal")


def test_csv_with_misspelt_amount_column_fails_naming_it(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(CSV.replace(",amount,", ",amonut,", 1))
    with pytest.raises(MissingColumnError) as exc:
        read_deal_log(p)
    assert exc.value.column == "amount"
    assert "Missing column `amount`" in str(exc.value) and "`amonut`" in str(exc.value)


def _tables(csv_path):
    typed = pl.read_csv(csv_path, schema_overrides={"deal_id": pl.Utf8})
    return {
        "str path": str(csv_path),
        "polars": typed,
        "lazy": typed.lazy(),
        "pandas": typed.to_pandas(),
        "arrow": typed.to_arrow(),
    }


@pytest.mark.parametrize("kind", ["str path", "polars", "lazy", "pandas", "arrow", "parquet"])
def test_every_source_type_gives_the_same_events(csv_path, tmp_path, kind):
    if kind == "parquet":
        source = tmp_path / "history.parquet"
        pl.read_csv(csv_path, schema_overrides={"deal_id": pl.Utf8}).write_parquet(source)
    else:
        source = _tables(csv_path)[kind]
    log = read_deal_log(source, segment_columns=["region"])
    assert log.events.equals(_expected_order(EXPECTED)), kind


def test_pandas_datetimes_and_nan_amounts():
    df = pd.DataFrame(
        {
            "deal_id": ["a", "a"],
            "timestamp": pd.to_datetime(["2024-01-01 10:00", "2024-02-01 00:00"]),
            "stage": ["Prospecting", "Closed Won"],
            "amount": [float("nan"), 5.0],  # pandas' missing value
        }
    )
    log = read_deal_log(df)
    assert log.events["amount"].to_list() == [None, 5.0]
    assert log.events["timestamp"].to_list() == [D(2024, 1, 1, 10), D(2024, 2, 1)]


def test_arrow_timestamp_with_time_zone():
    table = pa.table(
        {
            "deal_id": ["a"],
            "timestamp": pa.array([D(2024, 1, 1, 12)], type=pa.timestamp("ms", tz="UTC")),
            "stage": ["Prospecting"],
            "amount": [1.0],
        }
    )
    log = read_deal_log(table)
    assert log.events["timestamp"].to_list() == [D(2024, 1, 1, 12)]
    assert log.report.timestamps_converted_to_utc == 1


def test_column_mapping():
    t = pl.DataFrame(
        {
            "Opp": ["x", "x"],
            "When": ["2024-01-01", "2024-01-05"],
            "Phase": ["Discovery", "Closed Won"],
            "Value": [3.0, 4.0],
            "Expected": ["2024-02-01", "2024-02-01"],
        }
    )
    log = read_deal_log(
        t,
        columns={
            "deal_id": "Opp",
            "timestamp": "When",
            "stage": "Phase",
            "amount": "Value",
            "close_date": "Expected",
        },
    )
    assert log.events.select("deal_id", "stage", "amount").rows() == [
        ("x", "Discovery", 3.0),
        ("x", "Closed Won", 4.0),
    ]
    assert log.events["close_date"].to_list() == [D(2024, 2, 1)] * 2


def test_bad_arguments():
    t = pl.DataFrame(
        {"deal_id": ["a"], "timestamp": ["2024-01-01"], "stage": ["Lead"], "amount": [1]}
    )
    with pytest.raises(ParameterError, match=r"`columns` mapping.*'region'"):
        read_deal_log(t, columns={"region": "r"})
    with pytest.raises(ParameterError, match="`shape`"):
        read_deal_log(t, shape="wide")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"`epoch_unit`.*'xx'"):
        read_deal_log(t, epoch_unit="xx")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"`preset`.*'hubspot', 'hubspot_deals', 'salesforce'"):
        read_deal_log(t, preset="pipedrive")
    with pytest.raises(ParameterError, match="`source`"):
        read_deal_log([1, 2, 3])
    with pytest.raises(ParameterError, match=r"\.parquet"):
        read_deal_log("history.xlsx")
    with pytest.raises(ParameterError, match="segment_columns"):
        read_deal_log(t, segment_columns=["stage"])
    with pytest.raises(ParameterError, match="required but was mapped to nothing"):
        read_deal_log(t, columns={"deal_id": None})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_deal_log(tmp_path / "nope.csv")


def test_explicit_stage_map_and_open_stages():
    t = pl.DataFrame(
        {
            "deal_id": ["a", "a", "b"],
            "timestamp": ["2024-01-01", "2024-01-05", "2024-01-02"],
            "stage": ["Pilot", "Won", "Scoping"],
            "amount": [1.0, 1.0, 2.0],
        }
    )
    log = read_deal_log(t, open_stages=["Scoping", "Pilot"])
    assert (log.stages.open, log.stages.won) == (("Scoping", "Pilot"), ("Won",))
    sm = StageMap(open=("Scoping", "Pilot"), won=("Won",))
    assert read_deal_log(t, stages=sm).stages is sm


# -- one row per deal -----------------------------------------------------------------------
DEALS = pl.DataFrame(
    {
        "deal_id": ["a", "b", "c"],
        "created_at": ["2024-01-01 10:00", "2024-01-15 00:00", "2024-03-01 15:00"],
        "close_date": ["2024-02-01", "2024-04-01", "2024-03-01"],
        "stage": ["Closed Won", "Proposal", "Closed Lost"],
        "amount": [100.0, 50.0, 10.0],
    }
)


def test_deals_shape_becomes_creation_and_close_events():
    log = read_deal_log(DEALS, shape="deals", open_stages=["Prospecting", "Proposal"])
    ev = log.events
    assert ev.select("deal_id", "timestamp", "stage", "close_date", "source_row").rows() == [
        ("a", D(2024, 1, 1, 10), "Prospecting", None, 0),  # closed deal: entry stage, no leak
        ("a", D(2024, 2, 1), "Closed Won", D(2024, 2, 1), 0),
        ("b", D(2024, 1, 15), "Proposal", D(2024, 4, 1), 1),
        # closed the day it was created: the close is moved to the creation instant
        ("c", D(2024, 3, 1, 15), "Prospecting", None, 2),
        ("c", D(2024, 3, 1, 15), "Closed Lost", D(2024, 3, 1), 2),
    ]
    assert ev["created_at"].to_list() == [
        D(2024, 1, 1, 10),
        D(2024, 1, 1, 10),
        D(2024, 1, 15),
        D(2024, 3, 1, 15),
        D(2024, 3, 1, 15),
    ]
    assert log.pipeline("2024-01-20")["deal_id"].to_list() == ["a", "b"]
    assert log.bookings("2024-01-01", "2024-04-01")["deal_id"].to_list() == ["a"]
    assert (log.report.rows_read, log.report.events, log.report.deals) == (3, 5, 3)


def test_deals_shape_entry_stage_and_errors():
    log = read_deal_log(
        DEALS, shape="deals", open_stages=["Prospecting", "Proposal"], entry_stage="Proposal"
    )
    assert log.events.filter(pl.col("deal_id") == "a")["stage"].to_list() == [
        "Proposal",
        "Closed Won",
    ]
    with pytest.raises(ParameterError, match="entry_stage"):
        read_deal_log(DEALS, shape="deals", open_stages=["Proposal"], entry_stage="Closed Won")
    no_close = DEALS.with_columns(
        pl.when(pl.col("deal_id") == "c")
        .then(None)
        .otherwise(pl.col("close_date"))
        .alias("close_date")
    )
    with pytest.raises(TimestampError, match=r"`close_date`, deal `c`, row 2.*no close date"):
        read_deal_log(no_close, shape="deals", open_stages=["Prospecting", "Proposal"])
    early = DEALS.with_columns(pl.lit("2023-12-01").alias("close_date"))
    with pytest.raises(TimestampError, match=r"deal `a`, row 0.*before it was\s+created"):
        read_deal_log(early, shape="deals", open_stages=["Prospecting", "Proposal"])
    twice = pl.concat([DEALS, DEALS.head(1).with_columns(pl.lit(5.0).alias("amount"))])
    with pytest.raises(DataError, match=r"deal `a` appears on rows \[0, 3\]"):
        read_deal_log(twice, shape="deals", open_stages=["Prospecting", "Proposal"])


# -- snapshots -------------------------------------------------------------------------------
SNAPSHOTS = pl.DataFrame(
    {
        "deal_id": ["a", "a", "a", "a", "b", "b", "a"],
        "timestamp": [
            "2024-01-07",
            "2024-01-14",
            "2024-01-21",
            "2024-01-28",
            "2024-01-14",
            "2024-01-21",
            "2024-01-14",  # exact duplicate of row 1
        ],
        "stage": [
            "Prospecting",
            "Prospecting",
            "Proposal",
            "Closed Won",
            "Proposal",
            "Proposal",
            "Prospecting",
        ],
        "amount": [10.0, 12.0, 12.0, 12.0, 5.0, 5.0, 12.0],
    }
)


def test_snapshots_become_change_events():
    log = read_deal_log(SNAPSHOTS, shape="snapshots")
    # Exports on 01-07, 01-14, 01-21, 01-28; a change first seen in an export is dated at
    # the midpoint since the export before (no created_at / close_date to date it by).
    assert log.events.select("deal_id", "timestamp", "stage", "amount", "source_row").rows() == [
        ("a", D(2024, 1, 7), "Prospecting", 10.0, 0),  # in the first export: dated at it
        ("a", D(2024, 1, 10, 12), "Prospecting", 12.0, 1),  # amount change
        ("a", D(2024, 1, 17, 12), "Proposal", 12.0, 2),
        ("a", D(2024, 1, 24, 12), "Closed Won", 12.0, 3),
        ("b", D(2024, 1, 10, 12), "Proposal", 5.0, 4),  # first seen in the second export
        ("b", D(2024, 1, 24, 12), "Vanished from exports", 5.0, 5),  # gone after 01-21
    ]
    assert log.stages.kind("Vanished from exports") == "no_decision"
    assert log.source is not None and log.source.shape == "snapshots"
    assert log.source.snapshot_dates == tuple(D(2024, 1, d) for d in (7, 14, 21, 28))
    r = log.report
    assert r.exact_duplicates_removed == 1
    assert r.vanished_deals == 1
    assert any(
        "4 export(s) from 2024-01-07 to 2024-01-28 (median gap 7.0 days)" in n for n in r.notes
    )
    assert any("interval-censored" in n for n in r.notes)
    assert any("1 deal(s) open in an export are missing" in n for n in r.notes)
