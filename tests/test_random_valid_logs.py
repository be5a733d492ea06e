"""Random *valid* deal histories never fail with anything but the documented errors.

Hypothesis draws small event logs (random deals, stage walks with skips, backward
moves, re-openings and same-instant changes, amounts from zero to millions or
unknown, segments, optional ``created_at``), reads them (as a frame and as a CSV
file, which must give the same events), fits at a random as-of date and simulates
a few paths. Reading a valid log must succeed; fitting and
simulating may refuse with a :class:`~forecast.errors.ModelError` (too little
history) or an :class:`~forecast.errors.AmountError` (won amounts that could overflow
the int64 cents of a sum: a deal won at millions of times its pipeline amount makes
the amount model scale every deal so), and nothing else: no other exception, and no
warning (pytest turns every warning into an error).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import forecast
from forecast.errors import AmountError, ModelError

OPEN = ("Prospecting", "Qualification", "Proposal", "Negotiation")
TERMINAL = ("Closed Won", "Closed Lost", "No Decision")
OUTCOMES = ("Closed Won", *TERMINAL)  # won twice as often as each other outcome
START = dt.datetime(2022, 1, 3)
MINUTES_PER_DAY = 24 * 60

amounts = st.one_of(
    st.none(),
    st.just(0.0),
    st.floats(min_value=0.0, max_value=5e6, allow_nan=False, allow_infinity=False),
    st.integers(min_value=1, max_value=10).map(lambda k: 10.0**k),
)


@st.composite
def deal_rows(draw: st.DrawFn, deal: str, n_open: int, with_created: bool) -> list[dict[str, Any]]:
    """One deal's events: a walk over the open stages, ending open or in an outcome."""
    t = START + dt.timedelta(minutes=draw(st.integers(0, 3 * 365 * MINUTES_PER_DAY)))
    created = t - dt.timedelta(days=draw(st.integers(0, 30)))
    segment = draw(st.sampled_from(["A", "B", "C"]))
    amount = draw(amounts)
    stage = OPEN[draw(st.integers(0, n_open - 1))]
    rows: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        if any(r["timestamp"] == t and (r["stage"], r["amount"]) == (stage, amount) for r in rows):
            t += dt.timedelta(minutes=1)  # not an exact duplicate of a row at the same instant
        rows.append(
            {
                "deal_id": deal,
                "timestamp": t,
                "stage": stage,
                "amount": amount,
                "segment": segment,
                "created_at": created if with_created else None,
            }
        )
        # next change: same instant (0 days), hours later, or up to a year later
        t += dt.timedelta(minutes=draw(st.sampled_from([0, 30, MINUTES_PER_DAY, 400 * 60])))
        t += dt.timedelta(days=draw(st.integers(0, 365)))
        if stage in TERMINAL:
            stage = OPEN[draw(st.integers(0, n_open - 1))]  # re-opened
        elif draw(st.booleans()):
            stage = draw(st.sampled_from(OUTCOMES))
        else:
            stage = OPEN[draw(st.integers(0, n_open - 1))]  # forward, backward, skip, stay
        if draw(st.booleans()):
            amount = draw(amounts)
        if draw(st.integers(0, 9)) == 0:
            segment = draw(st.sampled_from(["A", "B", "C"]))
    return rows


@st.composite
def histories(draw: st.DrawFn) -> tuple[pl.DataFrame, dict[str, Any], dict[str, Any]]:
    n_open = draw(st.integers(1, len(OPEN)))
    with_created = draw(st.booleans())
    rows = []
    for i in range(draw(st.integers(1, 30))):
        rows += draw(deal_rows(f"deal-{i}", n_open, with_created))
    frame = pl.DataFrame(
        rows,
        schema={
            "deal_id": pl.Utf8,
            "timestamp": pl.Datetime("us"),
            "stage": pl.Utf8,
            "amount": pl.Float64,
            "segment": pl.Utf8,
            "created_at": pl.Datetime("us"),
        },
    )
    if not with_created:
        frame = frame.drop("created_at")
    # rows in a random order, except that changes of a deal at the same instant keep
    # theirs (the source order is what orders them)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    frame = (
        frame.with_columns(pl.Series("_key", rng.permutation(frame.height)))
        .with_columns(pl.col("_key").sort().over("deal_id", "timestamp"))
        .sort("_key")
        .drop("_key")
    )
    # as-of: the last event (default), or anywhere from the first event to 60 days after
    # the last, most often in the second half of the history
    first, last = frame["timestamp"].min(), frame["timestamp"].max()
    span = last - first + dt.timedelta(days=60)
    where = st.floats(0.0, 1.0) | st.floats(0.5, 1.0)
    as_of = draw(st.none() | where.map(lambda f: first + f * span))
    segmented = draw(st.booleans())
    read = {
        "open_stages": list(OPEN[:n_open]),
        "segment_columns": ["segment"] if segmented else [],
    }
    fit = {
        "as_of": as_of,
        "segment_by": ["segment"] if segmented else [],
        "n_draws": draw(st.sampled_from([0, 2])),
        "seed": draw(st.integers(0, 1000)),
    }
    return frame, read, fit


def test_valid_logs_fit_and_simulate_or_refuse_with_a_model_error(tmp_path: Path) -> None:
    outcomes: list[str] = []
    csv_file = tmp_path / "history.csv"

    @settings(
        max_examples=25,
        deadline=None,
        database=None,  # the same 25 logs on every run: a fixed seed, no replayed examples
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @seed(20241)
    @given(histories())
    def check(history: tuple[pl.DataFrame, dict[str, Any], dict[str, Any]]) -> None:
        frame, read, fit = history
        log = forecast.read_deal_log(frame, **read)  # a valid log always reads
        assert log.n_deals == frame["deal_id"].n_unique()
        assert log.report.rows_read == frame.height
        frame.write_csv(csv_file)  # the same history as a CSV file reads the same
        assert forecast.read_deal_log(csv_file, **read).events.equals(log.events)
        try:
            model = forecast.fit(log, **fit)
            fc = model.simulate(log, n_paths=20, horizon=2, seed=1, progress=False)
        except (ModelError, AmountError) as err:
            assert str(err).strip(), "a refusal needs a message"
            outcomes.append("refused")
            return
        quarterly = fc.quarterly()
        assert quarterly.height == 2
        assert (quarterly["mean"] >= 0).all()
        outcomes.append("simulated")

    check()
    # not vacuous: a good share of the logs get all the way through a simulation
    assert outcomes.count("simulated") >= 5, outcomes
