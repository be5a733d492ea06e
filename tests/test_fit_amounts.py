"""Win ratios, quarter-end discount, new-deal amounts; Bayesian-bootstrap deal weights."""

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from forecast.calendar import FiscalCalendar
from forecast.errors import MissingColumnError, ModelError, ParameterError
from forecast.fit.amounts import AmountModel, fit_amounts, weighted_quantile_grid
from forecast.fit.bootstrap import dirichlet_deal_weights
from forecast.fit.calendar_effects import in_quarter_end_window
from forecast.fit.data import FitData
from forecast.segments import POOLED_SEGMENT

D = dt.datetime
CAL = FiscalCalendar()
SPELL_SCHEMA = {
    "deal_id": pl.Utf8,
    "entered_at": pl.Datetime("us"),
    "amount_at_entry": pl.Float64,
    "region": pl.Utf8,
}
OUTCOME_SCHEMA = {
    "deal_id": pl.Utf8,
    "created_at": pl.Datetime("us"),
    "amount_at_creation": pl.Float64,
    "status": pl.Utf8,
    "closed_at": pl.Datetime("us"),
    "amount": pl.Float64,
    "region": pl.Utf8,
}


def hand_frames():
    # a: two spells entered at 100 and 200, won at 100 mid-quarter -> ratios 1.0 and 0.5,
    #    weight 1/2 each; b: one spell at 100, won at 50 in the last 14 days of Q1 -> 0.5;
    # c: lost; e: won without a known amount (left out).
    spells = pl.DataFrame(
        [
            ("a", D(2024, 1, 5), 100.0, "EU"),
            ("a", D(2024, 2, 1), 200.0, "EU"),
            ("b", D(2024, 1, 8), 100.0, "US"),
            ("c", D(2024, 1, 9), 80.0, "US"),
            ("e", D(2024, 1, 9), 80.0, "US"),
        ],
        schema=SPELL_SCHEMA,
        orient="row",
    )
    outcomes = pl.DataFrame(
        [
            ("a", D(2024, 1, 5), 100.0, "won", D(2024, 2, 20), 100.0, "EU"),
            ("b", D(2024, 1, 8), 100.0, "won", D(2024, 3, 25), 50.0, "US"),
            ("c", D(2024, 1, 9), 80.0, "lost", D(2024, 2, 1), 80.0, "US"),
            ("e", D(2024, 1, 9), 80.0, "won", D(2024, 2, 1), None, "US"),
        ],
        schema=OUTCOME_SCHEMA,
        orient="row",
    )
    return spells, outcomes


SMALL = {"min_segment_wins": 1, "min_segment_new_deals": 1}


def amounts(spells, outcomes, as_of, segment_by=(), weights=None, **options):
    """fit_amounts on hand-made frames; ``weights`` maps deal id -> weight."""
    data = FitData.from_frames(
        spells=spells, outcomes=outcomes, as_of=as_of, calendar=CAL, segment_by=segment_by
    )
    if weights is not None:
        data = data.with_weights([weights[d] for d in data.deal_ids])
    return fit_amounts(data, **options)


def stats_of(model, segment):
    return model.summary().filter(pl.col("segment") == segment).row(0, named=True)


def test_ratios_by_hand():
    spells, outcomes = hand_frames()
    m = amounts(spells, outcomes, D(2024, 4, 1), ["region"], **SMALL)
    pooled = stats_of(m, POOLED_SEGMENT)
    # weighted mean of (1.0, 0.5 | w = 1/2 each) and (0.5 | w = 1): (0.5 + 0.25 + 0.5) / 2
    assert pooled["mean_ratio"] == pytest.approx(0.625)
    assert pooled["mean_ratio_quarter_end"] == pytest.approx(0.5)
    assert pooled["mean_ratio_elsewhere"] == pytest.approx(0.75)
    assert pooled["discount_quarter_end"] == pytest.approx(0.5)
    assert pooled["n_won_deals"] == 2 and pooled["n_ratios"] == 3
    assert pooled["z_quarter_end"] is None and pooled["split_quarter_end"] is False  # too few
    eu = stats_of(m, "EU")
    assert eu["mean_ratio"] == pytest.approx(0.75) and eu["ratio_source"] == "own"
    # Q = 4 equally likely values of EU's weighted sample {0.5: 1/2, 1.0: 1/2}
    assert m.ratio_samples("EU", False).size == 200
    np.testing.assert_array_equal(
        weighted_quantile_grid(np.array([1.0, 0.5]), np.array([0.5, 0.5]), 4), [0.5, 0.5, 1.0, 1.0]
    )
    np.testing.assert_array_equal(m.ratio_samples("EU", True), m.ratio_samples("EU", False))


def test_weights_enter_ratios_and_new_amounts():
    spells, outcomes = hand_frames()
    w = {"a": 1.0, "b": 0.0, "c": 1.0, "e": 1.0}
    m = amounts(spells, outcomes, D(2024, 4, 1), weights=w, **SMALL)
    assert stats_of(m, POOLED_SEGMENT)["mean_ratio"] == pytest.approx(0.75)  # b has weight 0
    # new deals a, c, e (b weight 0): amounts 100, 80, 80
    assert stats_of(m, POOLED_SEGMENT)["mean_new_amount"] == pytest.approx(260 / 3)


def test_small_segments_and_segments_without_wins_use_pooled():
    spells, outcomes = hand_frames()
    spells = pl.concat(
        [
            spells,
            pl.DataFrame([("z", D(2024, 1, 2), 10.0, "APAC")], schema=SPELL_SCHEMA, orient="row"),
        ]
    )
    outcomes = pl.concat(
        [
            outcomes,
            pl.DataFrame(
                [("z", D(2024, 1, 2), 10.0, "lost", D(2024, 2, 2), 10.0, "APAC")],
                schema=OUTCOME_SCHEMA,
                orient="row",
            ),
        ]
    )
    m = amounts(spells, outcomes, D(2024, 4, 1), ["region"], min_segment_wins=2)
    assert m.segments == ("APAC", "EU", "US")
    apac = stats_of(m, "APAC")
    assert apac["ratio_source"] == "pooled" and apac["n_won_deals"] == 0
    assert apac["mean_ratio"] is None  # not computed: null, not a silent NaN
    np.testing.assert_array_equal(m.ratio_samples("APAC", True), m.ratio_samples(None, True))
    assert stats_of(m, "EU")["ratio_source"] == "pooled"  # 1 won deal < 2
    # every sample is finite
    for g in (*m.segments, None):
        assert np.all(np.isfinite(m.ratio_samples(g, False)))
        assert np.all(np.isfinite(m.new_deal_amount_samples(g)))


def test_errors():
    spells, outcomes = hand_frames()
    no_wins = outcomes.with_columns(status=pl.lit("lost"))
    with pytest.raises(ModelError, match="no won deal"):
        amounts(spells, no_wins, D(2024, 4, 1))
    with pytest.raises(MissingColumnError, match="segment_x"):
        amounts(spells, outcomes, D(2024, 4, 1), ["segment_x"])
    with pytest.raises(MissingColumnError, match="amount_at_entry"):
        amounts(spells.drop("amount_at_entry"), outcomes, D(2024, 4, 1))
    m = amounts(spells, outcomes, D(2024, 4, 1))
    with pytest.raises(ParameterError, match="Unknown `segment`"):
        m.ratio_samples("Mars", False)
    with pytest.raises(ParameterError, match="window_days"):
        amounts(spells, outcomes, D(2024, 4, 1), window_days=-1)
    with pytest.raises(ParameterError, match="significance"):
        amounts(spells, outcomes, D(2024, 4, 1), significance=1.0)
    with pytest.raises(ParameterError, match="weights"):
        amounts(spells, outcomes, D(2024, 4, 1), weights={"a": 1.0, "b": -1.0, "c": 1, "e": 1})


def test_json_round_trip_is_strict_json():
    spells, outcomes = hand_frames()
    m = amounts(spells, outcomes, D(2024, 4, 1), ["region"], **SMALL)
    text = json.dumps(m.to_dict(), allow_nan=False)
    back = AmountModel.from_dict(json.loads(text))
    assert back.to_dict() == m.to_dict()
    assert back.summary().equals(m.summary())


# -- recovery --------------------------------------------------------------------------------------
def simulate_wins(n, mean_elsewhere, mean_qe, seed, sd_log=0.2):
    """One spell per won deal, entry amount lognormal; won amount = entry × r with r lognormal
    (sd 0.2 on the log scale) of mean `mean_qe` if the win falls in the last 14 days of its
    quarter, else `mean_elsewhere`. Also 1000 deals created in the last 4 quarters with
    amount at creation lognormal(log 5000, 0.5) and older deals with huge amounts."""
    rng = np.random.default_rng(seed)
    start, span = D(2021, 1, 1), 3 * 365
    won_at = np.array(
        [start + dt.timedelta(days=float(x)) for x in rng.uniform(30, span, n)],
        dtype="datetime64[us]",
    )
    qe = in_quarter_end_window(won_at, CAL, 14)
    mean = np.where(qe, mean_qe, mean_elsewhere)
    r = np.exp(np.log(mean) - sd_log**2 / 2 + sd_log * rng.standard_normal(n))
    entry = np.exp(rng.normal(np.log(10_000), 0.8, n))
    ids = [f"w{i}" for i in range(n)]
    entered = won_at - np.timedelta64(30, "D")
    spells = pl.DataFrame({"deal_id": ids, "entered_at": entered, "amount_at_entry": entry})
    won = pl.DataFrame(
        {
            "deal_id": ids,
            "created_at": np.full(n, np.datetime64("2020-01-01", "us")),
            "amount_at_creation": np.full(n, 1e9),  # created long before the window
            "status": "won",
            "closed_at": won_at,
            "amount": entry * r,
        }
    ).with_columns(pl.col("created_at", "closed_at").cast(pl.Datetime("us")))
    as_of = D(2024, 1, 1)
    m_new = 1000
    created = [as_of - dt.timedelta(days=float(x)) for x in rng.uniform(0.1, 360, m_new)]
    new = pl.DataFrame(
        {
            "deal_id": [f"n{i}" for i in range(m_new)],
            "created_at": created,
            "amount_at_creation": np.exp(rng.normal(np.log(5000), 0.5, m_new)),
            "status": "open",
            "closed_at": None,
            "amount": 1.0,
        },
        schema_overrides={"created_at": pl.Datetime("us"), "closed_at": pl.Datetime("us")},
    )
    spells = spells.with_columns(pl.col("entered_at").cast(pl.Datetime("us")))
    return spells, pl.concat([won, new.select(won.columns)]), as_of, qe


def test_recovers_quarter_end_discount():
    # 2000 wins, ~15% of them (14 of ~91 days) at quarter end: SE of the mean ratio at
    # quarter end ≈ 0.8·0.2/sqrt(300) ≈ 0.009, elsewhere ≈ 0.9·0.2/sqrt(1700) ≈ 0.0044;
    # tolerance 3 SE. The difference 0.1 is ≈ 10 SE, so the test must split.
    spells, outcomes, as_of, qe = simulate_wins(2000, 0.9, 0.8, seed=21)
    m = amounts(spells, outcomes, as_of)
    s = stats_of(m, POOLED_SEGMENT)
    se_qe, se_el = 0.8 * 0.2 / np.sqrt(qe.sum()), 0.9 * 0.2 / np.sqrt((~qe).sum())
    assert abs(s["mean_ratio_quarter_end"] - 0.8) < 3 * se_qe
    assert abs(s["mean_ratio_elsewhere"] - 0.9) < 3 * se_el
    assert s["split_quarter_end"] is True and s["p_value_quarter_end"] < 1e-6
    # the stored samples carry the same means up to the 200-point grid (discretisation of a
    # lognormal with sd 0.2 over 200 quantiles: well under 0.005)
    assert m.ratio_samples("all", True).mean() == pytest.approx(
        s["mean_ratio_quarter_end"], abs=0.005
    )
    assert m.ratio_samples("all", False).mean() == pytest.approx(
        s["mean_ratio_elsewhere"], abs=0.005
    )
    # new-deal amounts: only the 1000 recent deals (mean 5000·exp(0.125) ≈ 5666, SE of the
    # mean ≈ 5666·sqrt(exp(0.25) - 1)/sqrt(1000) ≈ 95): within 3 SE
    assert s["n_new_deals"] == 1000
    assert abs(s["mean_new_amount"] - 5000 * np.exp(0.125)) < 3 * 95


def test_no_quarter_end_difference_pools():
    spells, outcomes, as_of, _ = simulate_wins(2000, 0.9, 0.9, seed=22)
    m = amounts(spells, outcomes, as_of)
    s = stats_of(m, POOLED_SEGMENT)
    assert s["split_quarter_end"] is False and s["p_value_quarter_end"] >= 0.05
    np.testing.assert_array_equal(m.ratio_samples(None, True), m.ratio_samples(None, False))
    assert abs(s["mean_ratio"] - 0.9) < 3 * 0.9 * 0.2 / np.sqrt(2000)


# -- Bayesian-bootstrap weights ----------------------------------------------------------------------
def test_dirichlet_weights_shape_sum_and_reproducibility():
    ids = [f"d{i}" for i in range(50)]
    w = dirichlet_deal_weights(ids, n_draws=4, seed=7)
    assert w.columns == ["draw", "deal_id", "weight"] and w.height == 200
    sums = w.group_by("draw").agg(pl.col("weight").sum()).sort("draw")["weight"].to_numpy()
    np.testing.assert_allclose(sums, 50.0)
    assert w["weight"].min() > 0
    assert w.equals(dirichlet_deal_weights(ids, n_draws=4, seed=7))
    assert not w.equals(dirichlet_deal_weights(ids, n_draws=4, seed=8))
    # independent of the order of ids and of n_draws for the first draws
    assert w.equals(dirichlet_deal_weights(ids[::-1], n_draws=4, seed=7))
    assert w.filter(pl.col("draw") < 2).equals(dirichlet_deal_weights(ids, n_draws=2, seed=7))


def test_dirichlet_weights_moments():
    # n × Dirichlet(1,...,1) has mean 1 and variance (n-1)/(n+1) = 49/51 for n = 50. Over
    # 200 draws (10,000 values, nearly exponential: 4th central moment ≈ 9), the SE of the
    # sample variance is ≈ sqrt((9 - 1)/10000) ≈ 0.028: tolerance 3 SE = 0.085.
    w = dirichlet_deal_weights([f"d{i}" for i in range(50)], n_draws=200, seed=1)[
        "weight"
    ].to_numpy()
    assert w.mean() == pytest.approx(1.0)
    assert abs(w.var() - 49 / 51) < 0.085


def test_dirichlet_weights_errors():
    with pytest.raises(ParameterError, match="distinct"):
        dirichlet_deal_weights(["a", "a"], 2, 0)
    with pytest.raises(ParameterError, match="n_draws"):
        dirichlet_deal_weights(["a"], 0, 0)
    with pytest.raises(ParameterError, match="seed"):
        dirichlet_deal_weights(["a"], 1, -1)
