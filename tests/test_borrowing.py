"""Stages without history: skipped when no deal was ever there, borrowed when none has left yet."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

import forecast
from forecast.data.presets import SALESFORCE_STANDARD_STAGES
from forecast.data.stages import StageMap
from forecast.datasets import SAMPLE_STAGES, deal_table_at, generate_crm, sample_events
from forecast.errors import ModelError
from forecast.fit.borrowing import (
    BORROWED_LOG_TIME_SD,
    destination_shift,
    shifted_curves,
    shifted_multipliers,
)
from forecast.fit.competing_risks import CensoredSpells, fit_exit_curves
from forecast.fit.data import FitData
from forecast.fit.exits import fit_exits

D = dt.datetime
AS_OF = "2025-01-01"
#: The sample's stages with a stage no deal has been in and a new last stage ("Legal").
WIDE = StageMap(
    open=("Prospecting", "Qualification", "Needs Analysis", "Proposal", "Negotiation", "Legal"),
    won=SAMPLE_STAGES.won,
    lost=SAMPLE_STAGES.lost,
    no_decision=SAMPLE_STAGES.no_decision,
)


def with_legal_deals(n: int = 5) -> pl.DataFrame:
    """The sample plus ``n`` SMB deals that entered the new stage "Legal" in December 2024."""
    ev = sample_events()
    start = D(2024, 12, 1)
    extra = pl.DataFrame(
        {
            "deal_id": [f"L{i}" for i in range(n)],
            "timestamp": [start + dt.timedelta(days=3 * i) for i in range(n)],
            "stage": ["Legal"] * n,
            "amount": [50_000.0] * n,
            "close_date": [D(2025, 2, 1)] * n,
            "created_at": [start + dt.timedelta(days=3 * i) for i in range(n)],
            "segment": ["SMB"] * n,
            "region": ["EMEA"] * n,
        },
        schema=ev.schema,
    )
    return pl.concat([ev, extra])


@pytest.fixture(scope="module")
def legal_model() -> tuple[forecast.DealLog, forecast.PipelineModel]:
    log = forecast.read_deal_log(with_legal_deals(), stages=WIDE, segment_columns=["segment"])
    return log, forecast.fit(log, as_of=AS_OF, segment_by=["segment"], n_draws=32, seed=5)


# -- the pieces --------------------------------------------------------------------------------
def test_destinations_shift_with_the_stage_and_fall_off_the_ends() -> None:
    # K = 4 open stages, C = 7: a move one stage on from stage 2 is a move one stage on
    # from stage 3 only if there is a stage 4 (there is not: left out)
    assert destination_shift(2, 3, 4, 7).tolist() == [1, 2, 3, -1, 4, 5, 6]
    assert destination_shift(3, 1, 4, 7).tolist() == [-1, -1, 0, 1, 4, 5, 6]
    s = CensoredSpells([5.0, 8.0, 9.0, 12.0, 30.0], [3, 3, 4, 5, -1], n_codes=7)
    source = fit_exit_curves(s, tail_families=["exponential"])
    assert source.eventual_shares()[[3, 4, 5]] == pytest.approx([0.5, 0.25, 0.25])
    moved = shifted_curves(source, destination_shift(2, 3, 4, 7), n_censored=2)
    # the move to stage 3 fell off the end; won and lost keep their odds and all the mass
    assert moved.eventual_shares() == pytest.approx([0, 0, 0, 0, 0.5, 0.5, 0])
    assert (moved.n_events, moved.n_spells) == (0, 2)
    back = shifted_curves(source, destination_shift(2, 1, 4, 7))
    assert back.eventual_shares() == pytest.approx([0, 0, 0.5, 0, 0.25, 0.25, 0])
    only_moves = fit_exit_curves(CensoredSpells([1.0, 2.0], [3, 3], n_codes=7))
    assert shifted_curves(only_moves, destination_shift(2, 3, 4, 7)) is None
    m = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert shifted_multipliers(m, destination_shift(2, 1, 4, 7)).tolist() == [
        1.0, 1.0, 2.0, 1.0, 3.0, 4.0, 5.0,
    ]  # fmt: skip


# -- fits --------------------------------------------------------------------------------------
def test_a_stage_no_deal_was_in_is_skipped_and_changes_no_forecast(sample_log) -> None:
    wide = StageMap(
        open=("Prospecting", "Qualification", "Needs Analysis", "Proposal", "Negotiation"),
        won=SAMPLE_STAGES.won,
        lost=SAMPLE_STAGES.lost,
        no_decision=SAMPLE_STAGES.no_decision,
    )
    log = forecast.read_deal_log(sample_events(), stages=wide, segment_columns=["segment"])
    # no recency weighting: with fractional (recency) weights the extra empty stage moves
    # the draws' time factors and destination multipliers by up to an ulp (2.2e-16,
    # measured with half_life=365), enough to flip a sampled win; unit weights give
    # the same bits
    fit_kw = {"as_of": AS_OF, "segment_by": ["segment"], "n_draws": 4, "seed": 2, "half_life": None}
    model = forecast.fit(log, **fit_kw)
    assert model.borrowed == {"Needs Analysis": {"source": "Proposal", "n_spells": 0, "n_open": 0}}
    (note,) = [d for d in model.diagnostics if d.component == "exits"]
    assert (note.stage, note.code) == ("Needs Analysis", "skipped")
    assert note.message.startswith("Stage 'Needs Analysis': no deal had been in it by 2025-01")
    row = model.summary().filter(pl.col("stage") == "Needs Analysis").row(0, named=True)
    assert row["n_spells"] == 0 and row["exit_curves"].startswith("skipped (no deal)")
    # no deal enters it, so the forecast is that of the stage map without it
    plain = forecast.fit(sample_log, **fit_kw)
    a = model.simulate(log, n_paths=500, horizon=2, seed=9)
    b = plain.simulate(sample_log, n_paths=500, horizon=2, seed=9)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-9)
    back = forecast.PipelineModel.from_json(model.to_json())
    assert back.borrowed == model.borrowed and back.diagnostics == model.diagnostics


def test_a_stage_with_open_deals_and_no_exit_borrows_with_wide_uncertainty(legal_model) -> None:
    log, model = legal_model
    assert model.borrowed["Legal"] == {"source": "Negotiation", "n_spells": 5, "n_open": 5}
    assert model.borrowed["Needs Analysis"]["n_spells"] == 0
    (legal,) = [d for d in model.diagnostics if d.stage == "Legal"]
    assert (legal.component, legal.segment, legal.code) == ("exits", None, "borrowed")
    assert "5 open deal(s)" in legal.message and "'Negotiation'" in legal.message
    summary = model.summary().filter(pl.col("stage") == "Legal")
    assert summary["exit_curves"].unique().to_list() == ["borrowed from 'Negotiation'"]
    assert summary["n_exits"].unique().to_list() == [0]
    # the Legal deals can be won (read as "never leaves", they could not)
    p_legal = model.win_probability("Legal", age=20.0, segment="SMB")
    p_negotiation = model.win_probability("Negotiation", age=20.0, segment="SMB")
    assert 0.2 < p_legal and p_legal == pytest.approx(p_negotiation, abs=0.15)
    # the borrowed stage's draws spread far wider than the fitted stages' bootstrap:
    # log time factors ~ N(0, 0.5²) on top (32 draws: an sd below 0.3 has p < 1e-4)
    k_legal, k_negotiation = WIDE.code("Legal"), WIDE.code("Negotiation")
    g = model.segments.index("SMB")
    tf = np.log(model.draws.time_factor[:, g])
    assert tf[:, k_legal].std(ddof=1) > 0.6 * BORROWED_LOG_TIME_SD
    assert tf[:, k_legal].std(ddof=1) > 3 * tf[:, k_negotiation].std(ddof=1)
    won = np.log(model.draws.destination_multiplier[:, g, k_legal, WIDE.WON])
    assert won.std(ddof=1) > 0.6
    fc = model.simulate(log, n_paths=400, horizon=2, seed=1)
    legal_wins = fc.deals().filter(pl.col("deal_id").str.starts_with("L"))
    assert legal_wins.height == 5 and legal_wins["p_win_horizon"].min() > 0.05


def test_a_segment_without_exits_in_a_stage_takes_the_pooled_curves_unshrunk() -> None:
    # three deals of a new segment, open in Proposal, none has left: even without
    # shrinkage their curves are the pooled ones (read as "never leaves", no win)
    ev = sample_events()
    extra = pl.DataFrame(
        {
            "deal_id": ["P1", "P2", "P3"],
            "timestamp": [D(2024, 12, 1), D(2024, 12, 5), D(2024, 12, 9)],
            "stage": ["Proposal"] * 3,
            "amount": [10_000.0] * 3,
            "close_date": [D(2025, 2, 1)] * 3,
            "created_at": [D(2024, 12, 1), D(2024, 12, 5), D(2024, 12, 9)],
            "segment": ["Partner"] * 3,
            "region": ["EMEA"] * 3,
        },
        schema=ev.schema,
    )
    log = forecast.read_deal_log(
        pl.concat([ev, extra]), stages=SAMPLE_STAGES, segment_columns=["segment"]
    )
    for shrink in (True, False):
        m = forecast.fit(log, as_of=AS_OF, segment_by=["segment"], n_draws=0, shrink=shrink)
        p = m.win_probability("Proposal", age=20.0, segment="Partner")
        assert p == pytest.approx(m.win_probability("Proposal", age=20.0, segment=None))


def test_when_no_stage_has_an_exit_the_error_names_the_stages_and_their_open_deals() -> None:
    spells = pl.DataFrame(
        {
            "deal_id": ["a", "b", "c"],
            "stage_code": [0, 1, 1],
            "duration_days": [3.0, 5.0, 8.0],
            "destination_code": [-1, -1, -1],
        }
    )
    data = FitData.from_frames(as_of="2024-06-01", spells=spells, n_open_stages=3)
    with pytest.raises(ModelError) as err:
        fit_exits(data)
    msg = str(err.value)
    assert "No deal has left any open stage by 2024-06-01" in msg
    assert "'0' (1 open), '1' (2 open)" in msg
    assert "fit at a later as-of date" in msg and "shape='snapshots'" in msg


# -- the Salesforce-format case -----------------------------------------------------------------
def salesforce_opportunity_export(at: str) -> pl.DataFrame:
    """A generated history as the Salesforce ``Opportunity`` report exported at ``at``.

    API field names, the standard stage names (the generator's "No Decision" is a
    loss: Salesforce's standard process has no such outcome), ``IsClosed``/``IsWon``.
    """
    crm = generate_crm(seed=77, start="2022-01-01", end=at, scale=0.5)
    names = {
        "Prospecting": "Prospecting",
        "Qualification": "Qualification",
        "Proposal": "Proposal/Price Quote",
        "Negotiation": "Negotiation/Review",
        "Closed Won": "Closed Won",
        "Closed Lost": "Closed Lost",
        "No Decision": "Closed Lost",
    }
    t = deal_table_at(crm.events, at).with_columns(pl.col("stage").replace_strict(names))
    return t.select(
        pl.col("deal_id").alias("Id"),
        pl.lit(False).alias("IsDeleted"),
        pl.col("stage").alias("StageName"),
        pl.col("amount").round(2).alias("Amount"),
        pl.col("close_date").dt.date().alias("CloseDate"),
        pl.col("created_at").dt.strftime("%Y-%m-%dT%H:%M:%S.000+0000").alias("CreatedDate"),
        pl.col("stage").str.starts_with("Closed").alias("IsClosed"),
        (pl.col("stage") == "Closed Won").alias("IsWon"),
        pl.col("segment").alias("Type"),
    )


@pytest.mark.slow
def test_a_salesforce_export_with_the_standard_stage_list_fits_at_every_quarter(tmp_path) -> None:
    path = tmp_path / "Opportunity.csv"
    salesforce_opportunity_export("2025-01-01").write_csv(path)
    log = forecast.read_deal_log(
        path, preset="salesforce_opportunity", stages=SALESFORCE_STANDARD_STAGES
    )
    assert log.source.shape == "deals"
    unused = {"Needs Analysis", "Value Proposition", "Id. Decision Makers", "Perception Analysis"}
    assert unused.isdisjoint(log.events["stage"].unique().to_list())
    as_of = [f"{y}-{m:02d}-01" for y, m in [(2023, 4), (2023, 7), (2023, 10), (2024, 1),
                                             (2024, 4), (2024, 7), (2024, 10)]]  # fmt: skip
    for t in as_of:
        deal_level = forecast.fit(log, as_of=t, segment_by=["Type"], n_draws=2)
        assert deal_level.model_kind == "deal_level"
        assert not [d for d in deal_level.diagnostics if d.component == "exits"]
        staged = forecast.fit(log, as_of=t, segment_by=["Type"], n_draws=2, model_kind="stages")
        skipped = {s for s, b in staged.borrowed.items() if b["n_spells"] == 0}
        assert unused <= skipped
        # later stages hold open deals that never left in this table: borrowed
        assert "Negotiation/Review" in staged.borrowed
        for model in (deal_level, staged):
            fc = model.simulate(log, n_paths=200, horizon=1, seed=0)
            assert np.isfinite(fc.samples).all() and fc.samples.mean() > 0
