"""No leakage past `as_of`: a property over random deal histories (hypothesis).

For a random valid log A and a cut instant t, a second log B keeps A's rows with
``timestamp <= t`` and replaces everything after t with a different random future
(new rows for existing deals, new deals, rows dropped, duplicates, other order).
Both go through :func:`read_deal_log` (the one validation path), and
``pipeline(t)``, ``spells(t)`` and ``outcomes(t)`` must be identical frames.
"""

import datetime as dt

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast import StageMap
from forecast.data.readers import read_deal_log

OPEN = ("A", "B", "C")
TERMINAL = ("W", "L", "N")
STAGES = StageMap(open=OPEN, won=("W",), lost=("L",), no_decision=("N",))
T0 = dt.datetime(2024, 1, 1)
HORIZON_MIN = 300 * 24 * 60  # minutes covered by the random histories
SCHEMA = {
    "deal_id": pl.Utf8,
    "timestamp": pl.Datetime("us"),
    "stage": pl.Utf8,
    "amount": pl.Float64,
    "close_date": pl.Datetime("us"),
    "created_at": pl.Datetime("us"),
    "region": pl.Utf8,
}


def walk(draw, n, prev=None):
    """n stages where a terminal stage is followed only by itself or an open stage."""
    out = []
    for _ in range(n):
        choices = (prev, *OPEN) if prev in TERMINAL else (*OPEN, *TERMINAL)
        prev = draw(st.sampled_from(choices))
        out.append(prev)
    return out


def rows_for(draw, deal, times, stages, created_at):
    rows = []
    for ts, stage in zip(times, stages, strict=True):
        amount = draw(st.one_of(st.none(), st.integers(0, 10_000).map(float)))
        close = draw(st.one_of(st.none(), st.integers(0, 400).map(lambda d: T0 + dt.timedelta(d))))
        region = draw(st.sampled_from(["EU", "US", None]))
        rows.append((deal, ts, stage, amount, close, created_at, region))
    return rows


def distinct_times(draw, n, lo, hi):
    """n strictly increasing instants in [lo, hi] minutes after T0."""
    mins = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n, unique=True))
    return [T0 + dt.timedelta(minutes=m) for m in sorted(mins)]


@st.composite
def log_and_cut(draw):
    n_deals = draw(st.integers(1, 6))
    history = []
    created = {}
    for i in range(n_deals):
        deal = f"d{i}"
        n = draw(st.integers(1, 6))
        times = distinct_times(draw, n, 0, HORIZON_MIN)
        lead = draw(st.one_of(st.none(), st.integers(0, 600)))  # minutes before 1st event
        created[deal] = None if lead is None else times[0] - dt.timedelta(minutes=lead)
        history += rows_for(draw, deal, times, walk(draw, n), created[deal])
    all_times = sorted({r[1] for r in history})
    cut = draw(
        st.one_of(
            st.sampled_from(all_times),  # exactly on an event
            st.integers(0, HORIZON_MIN).map(lambda m: T0 + dt.timedelta(minutes=m)),
        )
    )
    past = [r for r in history if r[1] <= cut]
    cut_min = int((cut - T0).total_seconds() // 60)
    future = []
    for deal in created:  # a fresh future for some existing deals
        if draw(st.booleans()):
            n = draw(st.integers(1, 4))
            lo = cut_min + 1
            if created[deal] is not None:  # no change before the deal's creation
                lo = max(lo, int((created[deal] - T0).total_seconds() // 60) + 1)
            times = distinct_times(draw, n, lo, lo + HORIZON_MIN)
            if draw(st.booleans()) and (created[deal] is None or created[deal] <= cut):
                times[0] = cut + dt.timedelta(microseconds=1)  # 1 µs after the cut
            # an open stage first keeps any history valid (terminal -> open re-opens)
            first = draw(st.sampled_from(OPEN))
            stages = [first, *walk(draw, n - 1, first)]
            future += rows_for(draw, deal, times, stages, created[deal])
    # deals created after the cut (at least one if B would otherwise be an empty table)
    for j in range(draw(st.integers(0 if past or future else 1, 2))):
        n = draw(st.integers(1, 3))
        times = distinct_times(draw, n, cut_min + 1, cut_min + 1 + HORIZON_MIN)
        future += rows_for(draw, f"new{j}", times, walk(draw, n), None)
    altered = past + future
    if altered:
        altered += draw(st.lists(st.sampled_from(altered), max_size=3))  # exact duplicates
    order_a = draw(st.permutations(range(len(history))))
    order_b = draw(st.permutations(range(len(altered))))
    return [history[i] for i in order_a], [altered[i] for i in order_b], cut


def load(rows):
    return read_deal_log(
        pl.DataFrame(rows, schema=SCHEMA, orient="row"),
        stages=STAGES,
        segment_columns=["region"],
    )


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_and_cut())
def test_views_at_t_ignore_everything_after_t(case):
    original, altered, t = case
    a, b = load(original), load(altered)
    assert a.pipeline(t).equals(b.pipeline(t))
    assert a.spells(t).equals(b.spells(t))
    assert a.outcomes(t).equals(b.outcomes(t))
    assert a.as_of(t).events.drop("source_row").equals(b.as_of(t).events.drop("source_row"))


def test_the_comparison_sees_a_change_at_t():
    """Sanity check of the property's power: a change at t itself does show."""
    t = T0 + dt.timedelta(days=10)
    base = [("d0", T0, "A", 5.0, None, None, "EU"), ("d0", t, "B", 7.0, None, None, "EU")]
    moved = [base[0], ("d0", t, "C", 7.0, None, None, "EU")]
    later = [base[0], ("d0", t + dt.timedelta(microseconds=1), "B", 7.0, None, None, "EU")]
    assert not load(base).pipeline(t).equals(load(moved).pipeline(t))
    assert not load(base).spells(t).equals(load(later).spells(t))
