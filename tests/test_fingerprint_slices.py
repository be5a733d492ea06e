"""The data fingerprint does not depend on the slices a column is hashed in."""

from __future__ import annotations

import hashlib

import polars as pl

from forecast.data import deal_log
from forecast.data.deal_log import DealLog


def whole_column_fingerprint(log: DealLog) -> str:
    """The fingerprint with every column hashed in one piece (its definition)."""
    h = hashlib.sha256()
    h.update(repr(log.stages.to_dict()).encode())
    h.update(repr(log.segment_columns).encode())
    for name in log.events.columns:
        if name == "source_row":
            continue
        col = log.events[name]
        h.update(name.encode())
        if col.dtype == pl.Utf8:
            h.update("\x1f".join(col.fill_null("\x00").to_list()).encode())
        else:
            h.update(col.to_physical().fill_null(-(2**62)).to_numpy().tobytes())
    return h.hexdigest()[:16]


def with_gaps(log: DealLog) -> DealLog:
    """A new log of the events with some amounts, close dates and segments unknown (a
    new object: the fingerprint is cached per log)."""
    gap = (pl.int_range(pl.len()) % 5) == 2
    events = log.events.with_columns(
        *[pl.when(gap).then(None).otherwise(pl.col(c)).alias(c) for c in ("amount", "close_date")],
        pl.when(gap).then(None).otherwise(pl.col("segment")).alias("segment"),
    )
    return DealLog(events, log.stages, log.segment_columns, log.report)


def test_sliced_hash_is_the_whole_column_hash(sample_log, monkeypatch):
    log = with_gaps(sample_log)
    assert log.events["segment"].null_count() > 0 and log.events["amount"].null_count() > 0
    expected = whole_column_fingerprint(log)
    assert log.fingerprint == expected
    for rows in (997, log.events.height - 1, log.events.height):
        monkeypatch.setattr(deal_log, "_FINGERPRINT_ROWS", rows)
        assert with_gaps(sample_log).fingerprint == expected
