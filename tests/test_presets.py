"""The same history as a canonical event log, a Salesforce export and a HubSpot export.

The exports are written by converters below from one small canonical history, in the
vendors' documented layouts (see ``forecast/data/presets.py`` for the sources):
Salesforce ``OpportunityHistory`` with ``CreatedDate`` like
``2024-01-15T10:30:00.000+0000`` and date-only ``CloseDate``; HubSpot deal-stage
history with ISO-8601 ``Z`` timestamps (v3) or epoch milliseconds (v1). All three
must give the same pipeline at the same as-of dates.
"""

import csv
import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from forecast import StageMap
from forecast.data.presets import (
    HUBSPOT,
    PRESETS,
    SALESFORCE,
    SALESFORCE_STANDARD_STAGES,
    Preset,
    get_preset,
)
from forecast.data.readers import read_deal_log
from forecast.errors import ParameterError

D = dt.datetime

# deal, time of change (UTC), stage, amount, rep's close date
HISTORY = [
    ("1001", D(2024, 1, 3, 9, 15), "Prospecting", 100.0, D(2024, 3, 31)),
    ("1001", D(2024, 1, 20, 14), "Qualification", 100.0, D(2024, 3, 31)),
    ("1001", D(2024, 2, 10, 11), "Proposal", 150.0, D(2024, 4, 30)),  # pushed
    ("1001", D(2024, 3, 5, 17), "Closed Won", 140.0, D(2024, 3, 5)),
    ("1002", D(2024, 1, 10, 8), "Prospecting", 50.0, D(2024, 2, 29)),
    ("1002", D(2024, 2, 15, 8), "Closed Lost", 50.0, D(2024, 2, 29)),
    ("1002", D(2024, 3, 1, 8), "Qualification", 60.0, D(2024, 5, 31)),  # re-opened
    ("1003", D(2024, 2, 1, 12), "Qualification", 300.0, D(2024, 6, 30)),
    ("1003", D(2024, 2, 20, 12), "Negotiation", 280.0, D(2024, 7, 31)),  # skips Proposal
    ("1004", D(2024, 3, 10, 10), "Prospecting", 20.0, D(2024, 6, 30)),
    ("1005", D(2024, 1, 5, 23, 59), "Prospecting", None, None),
]
OPEN = ("Prospecting", "Qualification", "Proposal", "Negotiation")
CANONICAL_STAGES = StageMap(open=OPEN, won=("Closed Won",), lost=("Closed Lost",))
SALESFORCE_NAMES = {
    "Prospecting": "Prospecting",
    "Qualification": "Qualification",
    "Proposal": "Proposal/Price Quote",
    "Negotiation": "Negotiation/Review",
    "Closed Won": "Closed Won",
    "Closed Lost": "Closed Lost",
}
HUBSPOT_IDS = {
    "Prospecting": "appointmentscheduled",
    "Qualification": "qualifiedtobuy",
    "Proposal": "presentationscheduled",
    "Negotiation": "decisionmakerboughtin",
    "Closed Won": "closedwon",
    "Closed Lost": "closedlost",
}
AS_OF = [D(2024, 2, 1), D(2024, 2, 20, 12), D(2024, 3, 15)]


def _created(deal):
    return min(ts for d, ts, *_ in HISTORY if d == deal)


def canonical_frame():
    return pl.DataFrame(
        HISTORY,
        schema={
            "deal_id": pl.Utf8,
            "timestamp": pl.Datetime("us"),
            "stage": pl.Utf8,
            "amount": pl.Float64,
            "close_date": pl.Datetime("us"),
        },
        orient="row",
    )


def write_salesforce_csv(path):
    """OpportunityHistory as the Bulk API / Data Loader writes it, plus a deleted row."""
    header = ["Id", "OpportunityId", "CreatedDate", "StageName", "Amount", "CloseDate"]
    header += ["Probability", "IsDeleted"]
    rows = []
    for i, (deal, ts, stage, amount, close) in enumerate(HISTORY):
        rows.append(
            [
                f"008{i:012d}",
                deal,
                ts.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
                SALESFORCE_NAMES[stage],
                "" if amount is None else f"{amount:.2f}",
                "" if close is None else close.strftime("%Y-%m-%d"),
                "10",
                "false",
            ]
        )
    # a change later deleted in the CRM (in the Recycle Bin): must be filtered, counted
    rows.insert(2, ["008999", "1001", "2024-01-25T10:00:00.000+0000", "Closed Lost"])
    rows[2] += ["1.00", "2024-01-25", "0", "true"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def hubspot_frame(epoch_ms: bool):
    """Deal-stage history flattened from propertiesWithHistory, one row per change."""

    def stamp(t):
        if t is None:
            return None
        if epoch_ms:
            return int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)
        return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    rows = [
        {
            "hs_object_id": deal,
            "dealstage": HUBSPOT_IDS[stage],
            "timestamp": stamp(ts),
            "amount": None if amount is None else str(amount),
            "closedate": stamp(close),
            "createdate": stamp(_created(deal)),
            "pipeline": "default",
            "archived": False,
        }
        for deal, ts, stage, amount, close in HISTORY
    ]
    return pl.DataFrame(rows, infer_schema_length=None)


def pipelines(log):
    out = []
    for t in AS_OF:
        p = log.pipeline(t)
        out.append(p.drop("stage"))
    return out


@pytest.fixture(scope="module")
def canonical_log():
    return read_deal_log(canonical_frame(), stages=CANONICAL_STAGES)


def test_canonical_pipeline_by_hand(canonical_log):
    p = canonical_log.pipeline(D(2024, 2, 20, 12))
    assert p.select("deal_id", "stage", "amount", "close_date_pushes").rows() == [
        ("1001", "Proposal", 150.0, 1),
        ("1003", "Negotiation", 280.0, 1),
        ("1005", "Prospecting", None, 0),
    ]


def test_salesforce_export_gives_the_same_pipeline(canonical_log, tmp_path):
    path = tmp_path / "OpportunityHistory.csv"
    write_salesforce_csv(path)
    log = read_deal_log(path, preset="salesforce")
    assert log.stages.open == tuple(SALESFORCE_NAMES[s] for s in OPEN)  # inferred by name
    assert log.report.rows_filtered == 1 and log.report.rows_read == len(HISTORY) + 1
    assert log.report.timestamps_converted_to_utc == len(HISTORY)
    for a, b in zip(pipelines(canonical_log), pipelines(log), strict=True):
        assert a.equals(b)
    back = {v: k for k, v in SALESFORCE_NAMES.items()}
    for t in AS_OF:
        stages = log.pipeline(t)["stage"].replace_strict(back)
        assert stages.equals(canonical_log.pipeline(t)["stage"])


@pytest.mark.parametrize("epoch_ms", [False, True], ids=["iso-Z", "epoch-ms"])
def test_hubspot_export_gives_the_same_pipeline(canonical_log, tmp_path, epoch_ms):
    path = tmp_path / "deal_stage_history.csv"
    hubspot_frame(epoch_ms).write_csv(path)
    log = read_deal_log(path, preset="hubspot")
    assert log.stages == PRESETS["hubspot"].stages
    for a, b in zip(pipelines(canonical_log), pipelines(log), strict=True):
        assert a.equals(b)
    back = {v: k for k, v in HUBSPOT_IDS.items()}
    for t in AS_OF:
        stages = log.pipeline(t)["stage"].replace_strict(back)
        assert stages.equals(canonical_log.pipeline(t)["stage"])


def test_hubspot_in_memory_with_archived_rows():
    f = hubspot_frame(epoch_ms=True)
    f = pl.concat([f, f.head(1).with_columns(pl.lit(True).alias("archived"))])
    log = read_deal_log(f, preset="hubspot")
    assert log.report.rows_filtered == 1
    assert log.report.exact_duplicates_removed == 0


def test_preset_column_names_come_from_the_vendor_docs():
    assert SALESFORCE.columns["deal_id"][0] == "OpportunityId"
    assert SALESFORCE.columns["timestamp"][0] == "CreatedDate"
    assert SALESFORCE.columns["stage"][0] == "StageName"
    assert SALESFORCE.columns["close_date"][0] == "CloseDate"
    assert SALESFORCE.deleted_columns[0] == "IsDeleted"
    assert HUBSPOT.columns["stage"] == ("dealstage",)
    assert HUBSPOT.stages is not None
    assert HUBSPOT.stages.open == (
        "appointmentscheduled",
        "qualifiedtobuy",
        "presentationscheduled",
        "decisionmakerboughtin",
        "contractsent",
    )
    assert (HUBSPOT.stages.won, HUBSPOT.stages.lost) == (("closedwon",), ("closedlost",))


def test_get_preset():
    assert get_preset("Salesforce") is SALESFORCE
    custom = Preset(name="mine", shape="events", columns={"deal_id": ("Key",)})
    assert get_preset(custom) is custom
    with pytest.raises(ParameterError, match="'hubspot', 'hubspot_deals', 'salesforce'"):
        get_preset("zoho")


def test_user_columns_override_the_preset(tmp_path):
    path = tmp_path / "OpportunityHistory.csv"
    write_salesforce_csv(path)
    f = pl.read_csv(path, infer_schema=False).rename({"StageName": "Stage__c"})
    log = read_deal_log(f, preset="salesforce", columns={"stage": "Stage__c"})
    assert log.events.height == len(HISTORY)


# -- one-row-per-deal exports: Salesforce `Opportunity` and HubSpot deals ----------------------
DATA = Path(__file__).parent / "data"


def test_salesforce_opportunity_export_loads_with_the_preset_alone():
    # tests/data/salesforce_opportunity.csv: an `Opportunity` export in the API's field
    # names (Data Loader / SOQL layout); one deleted record, one custom closed stage.
    log = read_deal_log(DATA / "salesforce_opportunity.csv", preset="salesforce_opportunity")
    assert log.source is not None and log.source.shape == "deals"
    assert log.source.preset == "salesforce_opportunity"
    assert log.n_deals == 7 and log.report.rows_filtered == 1  # IsDeleted = true
    assert log.stages.open == (
        "Prospecting",
        "Qualification",
        "Proposal/Price Quote",
        "Negotiation/Review",
    )
    # "Closed - Duplicate" is no known name: IsClosed = true, IsWon = false make it lost.
    assert log.stages.kind("Closed - Duplicate") == "lost"
    assert log.segment_columns == ("ForecastCategoryName", "Type", "LeadSource")
    out = log.outcomes("2024-04-01").sort("deal_id")
    assert out["status"].to_list() == ["open", "open", "won", "lost", "open", "lost", "open"]
    won = log.bookings("2024-01-01", "2024-04-01")
    assert won.rows() == [
        ("0065g00000AbCd3AAF", D(2024, 3, 15), 120000.0, "Closed", "New Customer", "Trade Show")
    ]
    assert log.events["created_at"].min() == D(2023, 11, 20, 16, 45)  # +0000 read as UTC


def test_salesforce_report_labels_and_the_standard_stage_list():
    # The same export with the field labels a report export uses, read with Salesforce's
    # standard stage list, whose "Needs Analysis", "Value Proposition", ... no deal is in.
    table = pl.read_csv(DATA / "salesforce_opportunity.csv", infer_schema=False).rename(
        {
            "Id": "Opportunity ID",
            "StageName": "Stage",
            "CloseDate": "Close Date",
            "CreatedDate": "Created Date",
            "IsClosed": "Closed",
            "IsWon": "Won",
            "IsDeleted": "Deleted",
            "ForecastCategoryName": "Forecast Category",
            "LeadSource": "Lead Source",
        }
    )
    stages = StageMap(
        open=SALESFORCE_STANDARD_STAGES.open,
        won=("Closed Won",),
        lost=("Closed Lost", "Closed - Duplicate"),
    )
    log = read_deal_log(table, preset="salesforce_opportunity", stages=stages)
    assert log.stages is stages
    assert log.n_deals == 7
    assert log.segment_columns == ("Forecast Category", "Type", "Lead Source")
    unused = set(stages.open) - set(log.events["stage"].unique().to_list())
    assert {"Needs Analysis", "Value Proposition", "Perception Analysis"} <= unused
    assert log.pipeline("2024-04-01").height == 4


def test_hubspot_deals_export_loads_with_the_preset_alone():
    # tests/data/hubspot_deals.csv: the CSV of "Export" on the deals index page, with the
    # default columns (property labels as headers, stage labels as values).
    log = read_deal_log(DATA / "hubspot_deals.csv", preset="hubspot_deals")
    assert log.source.shape == "deals"
    assert log.stages.open == (
        "Appointment Scheduled",
        "Qualified To Buy",
        "Presentation Scheduled",
        "Decision Maker Bought-In",
        "Contract Sent",
    )
    assert log.segment_columns == ("Pipeline", "Deal Type")
    assert log.report.amounts_missing == 1
    assert log.bookings("2024-01-01", "2024-04-01")["deal_id"].to_list() == ["9876543203"]
    assert log.pipeline("2024-04-01")["stage"].to_list() == [
        "Appointment Scheduled",
        "Contract Sent",
        "Decision Maker Bought-In",
        "Qualified To Buy",
        "Presentation Scheduled",
    ]


def test_a_folder_of_weekly_opportunity_exports(tmp_path):
    # The same report saved weekly is a history: with the preset, the folder is read as
    # snapshots dated by the file names.
    base = pl.read_csv(DATA / "salesforce_opportunity.csv", infer_schema=False)
    week1 = base.filter(pl.col("CreatedDate") < "2024-02-15")
    week2 = base.with_columns(
        pl.when(pl.col("Id") == "0065g00000AbCd2AAF")
        .then(pl.lit("Closed Won"))
        .otherwise(pl.col("StageName"))
        .alias("StageName"),
        pl.when(pl.col("Id") == "0065g00000AbCd2AAF")
        .then(pl.lit("2024-03-25"))
        .otherwise(pl.col("CloseDate"))
        .alias("CloseDate"),
    )
    week1.write_csv(tmp_path / "opportunities 2024-03-22.csv")
    week2.write_csv(tmp_path / "opportunities 2024-03-29.csv")
    log = read_deal_log(tmp_path, preset="salesforce_opportunity")
    assert log.source.shape == "snapshots"
    assert log.source.snapshot_dates == (D(2024, 3, 22), D(2024, 3, 29))
    won = log.bookings("2024-03-01", "2024-04-01").sort("won_at")
    assert won.select("deal_id", "won_at").rows() == [
        ("0065g00000AbCd3AAF", D(2024, 3, 15)),  # closed before the first export
        ("0065g00000AbCd2AAF", D(2024, 3, 25)),  # closed between the exports: its close date
    ]
