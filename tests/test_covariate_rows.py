"""The counting-process rows of the deal covariates equal their definition.

``covariate_states`` finds each spell's pieces by binary search over the event
frame's order; the reference here is the definition written directly: every spell
joined with every state of its deal, the states before the spell's end kept, of
those at or before its entry only the last, sorted by time.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from forecast.fit.covariates import covariate_states, deal_states
from forecast.fit.data import FitData


def direct_pieces(cut, spells: pl.DataFrame, as_of: dt.datetime) -> pl.DataFrame:
    """``(_spell, source_row)`` of every piece, by the join that defines them."""
    end = pl.coalesce(pl.col("exited_at"), pl.lit(as_of, dtype=pl.Datetime("us")))
    sp = spells.with_row_index("_spell").select(
        pl.col("_spell").cast(pl.Int64), "deal_id", "entered_at", end.alias("_end")
    )
    j = (
        sp.join(deal_states(cut, []), on="deal_id", how="inner")
        .filter(pl.col("timestamp") < pl.col("_end"))
        .sort(["_spell", "timestamp", "source_row"])
    )
    same_next = pl.col("_spell").shift(-1) == pl.col("_spell")
    before = pl.col("timestamp") <= pl.col("entered_at")
    j = j.with_columns(before.alias("_before")).filter(
        ~pl.col("_before") | ~(same_next & pl.col("_before").shift(-1)).fill_null(False)
    )
    # several changes at one instant: the last one holds from it on
    at = pl.col("timestamp").clip(lower_bound=pl.col("entered_at"))
    j = j.filter(~(same_next & (at.shift(-1) == at)).fill_null(False))
    return j.select("_spell", "source_row")


def with_same_instant_changes(log):
    """``log`` with a second change at the instant of every 7th row (amount + 1)."""
    ev = log.events
    extra = ev.gather_every(7).with_columns(
        pl.col("amount") + 1.0, pl.col("source_row") + ev.height
    )
    events = pl.concat([ev, extra]).sort(["deal_id", "timestamp", "source_row"])
    return type(log)(
        events.with_columns(pl.col("deal_id").set_sorted()),
        log.stages,
        log.segment_columns,
        log.report,
        source=log.source,
    )


@pytest.mark.parametrize("as_of", ["2024-06-30", "2025-01-15"])
@pytest.mark.parametrize("ties", [False, True])
def test_rows_are_the_direct_join_of_spells_and_states(sample_log, as_of, ties):
    log = with_same_instant_changes(sample_log) if ties else sample_log
    data = FitData.from_log(log, as_of=as_of)
    rows = covariate_states(data.cut, data.spells, data.as_of, [])
    expected = direct_pieces(data.cut, data.spells, data.as_of)
    assert rows.height == expected.height > data.spells.height
    assert_frame_equal(rows.select("_spell"), expected.select("_spell"))
    # each row holds the values of its state: the amount known from its start on
    states = deal_states(data.cut, []).select("source_row", "_amount")
    values = expected.join(states, on="source_row", how="left", maintain_order="left")
    assert_frame_equal(rows.select("_amount"), values.select("_amount"))
