"""The dry run (`inspect_log`) and the dated-export helpers, on histories written by hand."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from forecast import StageMap, read_deal_log
from forecast.data.inspection import inspect_log
from forecast.datasets import export_dates, export_snapshots
from forecast.errors import ParameterError

D = dt.datetime
STAGES = StageMap(
    open=("Lead", "Demo", "Proposal", "Contract"),
    won=("Won",),
    lost=("Lost",),
    no_decision=("Stalled",),
)
EVENTS = pl.DataFrame(
    {
        "deal": ["a", "a", "a", "b", "b", "c", "d"],
        "when": [
            "2024-01-02",
            "2024-01-10",
            "2024-02-01",
            "2024-01-05",
            "2024-01-20",
            "2024-01-08",
            "2024-02-10",
        ],
        "stage": ["Lead", "Demo", "Won", "Lead", "Proposal", "Lead", "Demo"],
        "value": [100.0, 100.0, 90.0, 50.0, None, 20.0, 70.0],
        "region": ["EU", "EU", "EU", "US", "US", "US", "EU"],
    }
)
COLUMNS = {"deal_id": "deal", "timestamp": "when", "amount": "value"}


def test_inspect_log_counts_what_a_fit_would_see() -> None:
    log = read_deal_log(EVENTS, columns=COLUMNS, stages=STAGES, segment_columns=["region"])
    found = inspect_log(log, "2024-03-01")
    assert found.as_of == D(2024, 3, 1)
    assert dict(found.columns.iter_rows()) == {
        "deal_id": "deal",
        "timestamp": "when",
        "stage": "stage",
        "amount": "value",
        "close_date": None,
        "created_at": None,
        "segment": "region",
    }
    # Lead: a, b, c reached it; a and b left it; c is still in it.
    assert found.stages.rows() == [
        ("Lead", "open", 3, 2, 1),
        ("Demo", "open", 2, 1, 1),
        ("Proposal", "open", 1, 0, 1),
        ("Contract", "open", 0, 0, 0),
        ("Won", "won", 1, None, None),
        ("Lost", "lost", 0, None, None),
        ("Stalled", "no_decision", 0, None, None),
    ]
    assert found.pipeline.select("stage", "deals", "amount").rows() == [
        ("Lead", 1, 20.0),
        ("Demo", 1, 70.0),
        ("Proposal", 1, 50.0),  # b's amount is unknown at Proposal: its last known one
    ]
    assert found.pipeline["median_days_in_stage"].to_list() == pytest.approx([53.0, 20.0, 41.0])
    assert (found.deals, found.events, found.exports) == (4, 7, 0)
    assert (found.first, found.last) == (D(2024, 1, 2), D(2024, 2, 10))
    assert found.warnings == (
        "No deal has reached stage(s) ['Contract', 'Lost', 'Stalled'] by 2024-03-01: a fit "
        "skips them (they stay in the stage map; no deal enters them).",
        "Stage 'Proposal' holds 1 open deal(s) but no deal has left it yet: a stage fit "
        "borrows its exit curves from the nearest stage with exits, with deliberately wide "
        "uncertainty, and names it in the model's diagnostics.",
        "1 event(s) have no amount; deals never given one book nothing.",
    )
    text = str(found)
    assert "Open pipeline at 2024-03-01: 3 deals, amount 140" in text
    assert "region: EU 2, US 2" in text
    assert "Validation report: 7 rows read" in text


def test_inspect_log_before_the_history_and_of_a_deal_table() -> None:
    log = read_deal_log(EVENTS, columns=COLUMNS, stages=STAGES)
    early = inspect_log(log, "2023-12-01")
    assert (early.deals, early.events, early.first) == (0, 0, None)
    assert "No event on or before 2023-12-01: nothing to fit." in early.warnings
    deals = pl.DataFrame(
        {
            "deal_id": ["x", "y"],
            "created_at": ["2024-01-01", "2024-01-03"],
            "close_date": ["2024-02-01", "2024-03-01"],
            "stage": ["Won", "Demo"],
            "amount": [1.0, 2.0],
        }
    )
    found = inspect_log(read_deal_log(deals, shape="deals", stages=STAGES), "2024-02-15")
    assert found.warnings[0].startswith("One row per deal: the table has no stage history,")
    assert "deal-level model" in found.warnings[0]


def test_export_dates_and_snapshots() -> None:
    assert export_dates("2024-01-01", "2024-01-15") == [
        D(2024, 1, 1),
        D(2024, 1, 8),
        D(2024, 1, 15),
    ]
    assert export_dates("2024-01-01", "2024-01-14", 7) == [D(2024, 1, 1), D(2024, 1, 8)]
    with pytest.raises(ParameterError, match="every_days"):
        export_dates("2024-01-01", "2024-02-01", 0)
    with pytest.raises(ParameterError, match="start"):
        export_dates("2024-02-01", "2024-01-01")
    ev = EVENTS.rename({"deal": "deal_id", "when": "timestamp"}).with_columns(
        pl.col("timestamp").str.to_datetime()
    )
    snaps = export_snapshots(ev, ["2024-01-09", "2024-02-05"])
    assert snaps.select("export_date", "deal_id", "stage").rows() == [
        (D(2024, 1, 9), "a", "Lead"),
        (D(2024, 1, 9), "b", "Lead"),
        (D(2024, 1, 9), "c", "Lead"),
        (D(2024, 2, 5), "a", "Won"),
        (D(2024, 2, 5), "b", "Proposal"),
        (D(2024, 2, 5), "c", "Lead"),
    ]
    # Closed deals shown for 3 days after closing only: a (won 02-01) is gone by 02-05.
    recent = export_snapshots(ev, ["2024-02-03", "2024-02-05"], stages=STAGES, keep_closed_days=3)
    assert recent.filter(pl.col("deal_id") == "a")["export_date"].to_list() == [D(2024, 2, 3)]
    with pytest.raises(ParameterError, match="needs `stages`"):
        export_snapshots(ev, ["2024-02-05"], keep_closed_days=3)
