import datetime as dt
import itertools

import pytest

from forecast import FiscalCalendar, ParameterError


@pytest.mark.parametrize(
    ("start_month", "when", "label", "start", "end"),
    [
        (1, "2024-03-31", "FY2024-Q1", dt.datetime(2024, 1, 1), dt.datetime(2024, 4, 1)),
        (1, "2024-12-31T23:59:59", "FY2024-Q4", dt.datetime(2024, 10, 1), dt.datetime(2025, 1, 1)),
        # Salesforce convention: a fiscal year starting Feb 2024 is FY2025.
        (2, "2024-02-01", "FY2025-Q1", dt.datetime(2024, 2, 1), dt.datetime(2024, 5, 1)),
        (2, "2025-01-31", "FY2025-Q4", dt.datetime(2024, 11, 1), dt.datetime(2025, 2, 1)),
        (10, "2024-09-30", "FY2024-Q4", dt.datetime(2024, 7, 1), dt.datetime(2024, 10, 1)),
        (10, "2024-10-01", "FY2025-Q1", dt.datetime(2024, 10, 1), dt.datetime(2025, 1, 1)),
    ],
)
def test_quarter_of(start_month, when, label, start, end):
    q = FiscalCalendar(start_month).quarter_of(when)
    assert (q.label, q.start, q.end) == (label, start, end)


def test_year_label_start():
    q = FiscalCalendar(2, year_label="start").quarter_of("2024-03-01")
    assert q.label == "FY2024-Q1"


@pytest.mark.parametrize("start_month", range(1, 13))
def test_quarters_tile_time_and_labels_roundtrip(start_month):
    cal = FiscalCalendar(start_month)
    qs = cal.quarters("2023-05-17", 9)
    for a, b in itertools.pairwise(qs):
        assert a.end == b.start
    for q in qs:
        assert cal.quarter_from_label(q.label) == q
        assert cal.quarter_of(q.start) == q
        assert 89 <= q.days <= 92
    assert cal.shift(qs[5], -5) == qs[0]


def test_bad_arguments_are_named():
    with pytest.raises(ParameterError, match="start_month"):
        FiscalCalendar(13)
    with pytest.raises(ParameterError, match="FY2025-Q1"):
        FiscalCalendar().quarter_from_label("2025Q1")
    with pytest.raises(ParameterError, match="when"):
        FiscalCalendar().quarter_of("not a date")
