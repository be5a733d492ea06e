"""FitData: the fit input built once (cut, labels, deal table, strata) and re-weighted."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from forecast.data.deal_log import DealLog
from forecast.errors import MissingColumnError, ModelError, ParameterError
from forecast.fit.bootstrap import bootstrap_weights, dirichlet_deal_weights
from forecast.fit.data import FRAMES, FitData
from forecast.segments import POOLED_SEGMENT, SEGMENT_COLUMN

AS_OF = "2024-07-01"


@pytest.fixture(scope="module")
def data(sample_log):
    return FitData.from_log(sample_log, as_of=AS_OF, segment_by=["segment"])


def test_views_are_the_cut_log_views_with_labels(data, sample_log):
    t = dt.datetime(2024, 7, 1)
    assert data.as_of == t and data.cut.cut == t
    spells = sample_log.spells(t)
    assert data.spells.drop(SEGMENT_COLUMN).equals(spells)
    assert data.spells[SEGMENT_COLUMN].equals(spells["segment"].alias(SEGMENT_COLUMN))
    assert data.outcomes.drop(SEGMENT_COLUMN).equals(sample_log.outcomes(t))
    assert data.segments == ("Enterprise", "MidMarket", "SMB")
    assert data.history_start == sample_log.first_timestamp
    assert data.n_open == sample_log.stages.n_open
    # the deal table: every deal of the views, sorted; weights 1 and read-only
    assert data.deal_ids.to_list() == sorted(data.outcomes["deal_id"].to_list())
    assert np.all(data.weights == 1.0) and not data.weights.flags.writeable


def test_strata_hold_the_rows_of_a_filter_in_their_order(data):
    sp = data.spells
    for k, g in data.strata():
        label = data.segments[g]
        expect = sp.filter((pl.col("stage_code") == k) & (pl.col(SEGMENT_COLUMN) == label))
        got = data.stratum_spells(k, g)
        np.testing.assert_array_equal(got.durations, expect["duration_days"].to_numpy())
        np.testing.assert_array_equal(got.destinations, expect["destination_code"].to_numpy())
    for k in range(data.n_open):
        expect = sp.filter(pl.col("stage_code") == k)
        np.testing.assert_array_equal(
            data.stratum_spells(k).durations, expect["duration_days"].to_numpy()
        )
    assert data.spell_arrays.offsets[-1] == sp.height


def test_weights_reach_every_row_through_the_deal_index(data):
    rng = np.random.default_rng(5)
    w = rng.uniform(0.0, 3.0, data.n_deals)
    d2 = data.with_weights(w)
    assert d2.spells is data.spells and d2.spell_arrays is data.spell_arrays  # nothing rebuilt
    by_id = dict(zip(data.deal_ids.to_list(), w, strict=True))
    for name in ("spells", "outcomes", "bookings"):
        frame = d2.frame(name, "test")
        want = np.array([by_id[i] for i in frame["deal_id"].to_list()])
        np.testing.assert_array_equal(frame["weight"].to_numpy(), want)
    s = d2.stratum_spells(1, 2)
    rows = data.spells.filter((pl.col("stage_code") == 1) & (pl.col(SEGMENT_COLUMN) == "SMB"))
    np.testing.assert_array_equal(s.weights, [by_id[i] for i in rows["deal_id"].to_list()])


def test_bootstrap_weights_are_the_dirichlet_weights_of_the_deals(data):
    w = bootstrap_weights(data, seed=7, draw=3)
    table = dirichlet_deal_weights(data.outcomes["deal_id"], n_draws=4, seed=7)
    ref = dict(table.filter(pl.col("draw") == 3).select("deal_id", "weight").rows())
    np.testing.assert_array_equal(w, [ref[i] for i in data.deal_ids.to_list()])
    assert w.sum() == pytest.approx(data.n_deals)


def test_bad_weights_and_arguments_are_named(data, sample_log):
    with pytest.raises(ParameterError, match=r"shape \("):
        data.with_weights(np.ones(3))
    w = np.ones(data.n_deals)
    w[4] = -1.0
    with pytest.raises(ParameterError, match=f"deal '{data.deal_ids[4]}'"):
        data.with_weights(w)
    with pytest.raises(MissingColumnError, match="colour"):
        FitData.from_log(sample_log, segment_by=["colour"])
    with pytest.raises(ParameterError, match="`as_of`"):
        FitData.from_log(sample_log, as_of="soon")
    with pytest.raises(ParameterError, match="`log`"):
        FitData.from_log(sample_log.events)
    with pytest.raises(ModelError, match="before the first event of the history"):
        FitData.from_log(sample_log, as_of="2000-01-01")


def test_hand_made_frames(data):
    wins = pl.DataFrame({"won_at": [dt.datetime(2024, 3, 25), dt.datetime(2024, 4, 2)]})
    d = FitData.from_frames(bookings=wins, as_of="2024-06-01")
    assert d.n_deals == 2 and d.segments == () and d.spell_arrays is None
    assert d.bookings[SEGMENT_COLUMN].to_list() == [POOLED_SEGMENT] * 2
    assert d.with_weights([2.0, 3.0]).frame("bookings", "test")["weight"].to_list() == [2.0, 3.0]
    with pytest.raises(ParameterError, match="with_weights"):
        FitData.from_frames(bookings=wins.with_columns(weight=pl.lit(1.0)), as_of="2024-06-01")
    with pytest.raises(ParameterError, match="needs the `spells` frame"):
        d.frame("spells", "test")
    bad = data.spells.with_columns(duration_days=pl.lit(-1.0))
    with pytest.raises(ParameterError, match=r"`duration_days`.*row 0"):
        FitData.from_frames(spells=bad.drop(SEGMENT_COLUMN), as_of=AS_OF, n_open_stages=4)


def test_from_log_releases_the_visits_and_the_cut_views_stay_those_of_a_fresh_log(sample_log):
    t = dt.datetime(2024, 7, 1)
    data = FitData.from_log(sample_log, as_of=t, segment_by=["segment"])
    cut = data.cut
    assert "visits" not in cut._cache  # the table as large as the events is gone
    # a log of the same rows with nothing cached computes every view from its visits
    fresh = DealLog(cut.events, cut.stages, cut.segment_columns, cut=t, source=cut.source)
    assert cut.spells(t).equals(fresh.spells(t))
    assert cut.outcomes(t).equals(fresh.outcomes(t))
    assert cut.pipeline(t).equals(fresh.pipeline(t))
    q = dt.datetime(2024, 4, 1)
    for start, end in ((cut.first_timestamp, t + dt.timedelta(microseconds=1)), (q, t)):
        assert cut.bookings(start, end).equals(fresh.bookings(start, end))
    assert cut.bookings(q, t).height > 0
    assert "visits" not in cut._cache  # none of them rebuilt the visits
    # a view at another instant is taken from the visits rebuilt, as before
    later = t + dt.timedelta(days=3)
    assert cut.spells(later).equals(fresh.spells(later))
    assert "visits" in cut._cache


def test_deal_table_of_a_log_is_that_of_the_general_sort_and_join(data):
    # the views of a log come sorted by deal (binary search, no join); the same frames
    # with the outcomes reversed take the general path (sort the ids, join on them)
    frames = {name: getattr(data, name).drop(SEGMENT_COLUMN) for name in FRAMES}
    frames["outcomes"] = frames["outcomes"].reverse()
    general = FitData.from_frames(
        as_of=AS_OF, segment_by=["segment"], n_open_stages=data.n_open, **frames
    )
    assert general.deal_ids.equals(data.deal_ids)
    for name in ("spells", "bookings"):
        np.testing.assert_array_equal(data.deal_index(name), general.deal_index(name))
    n = data.n_deals
    np.testing.assert_array_equal(general.deal_index("outcomes"), np.arange(n)[::-1])
    for name in FRAMES:
        ids = data.deal_ids.gather(data.deal_index(name))
        assert ids.equals(getattr(data, name)["deal_id"], check_names=False)
