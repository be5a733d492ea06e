"""forecast.metrics: win rates, conversion, cycle length, velocity, coverage, slippage."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

import forecast
from forecast import ParameterError
from forecast.datasets import SYNTHETIC_STAGES, generate_crm
from forecast.metrics import (
    SalesMetrics,
    compute_metrics,
    fit_and_compute_metrics,
    open_deal_outcome_probabilities,
)
from forecast.segments import segment_labels

AS_OF = dt.datetime(2025, 1, 1)


def synthetic_model_log() -> forecast.DealLog:
    """A small history of the synthetic generator up to AS_OF."""
    w = generate_crm(seed=0, start="2022-01-01", end="2025-01-01", scale=0.3)
    return forecast.read_deal_log(w.events, stages=w.stage_map)


@pytest.fixture(scope="module")
def synthetic_model():
    """A model (no segments, stages of the synthetic generator) fitted at AS_OF."""
    return forecast.fit(synthetic_model_log(), as_of=AS_OF, n_draws=0)


def _four_deals(c_closes: bool) -> forecast.DealLog:
    """Four deals: A $20k won, B $10k won, C $40k lost (or still open), D $30k lost.

    A's rep close date is pushed once by 10 days while in Proposal.
    """
    d = dt.datetime
    rows = [
        ("A", d(2024, 3, 1), "Prospecting", 20_000.0, d(2024, 6, 1)),
        ("A", d(2024, 4, 1), "Proposal", 20_000.0, d(2024, 6, 11)),
        ("A", d(2024, 6, 5), "Closed Won", 20_000.0, d(2024, 6, 11)),
        ("B", d(2024, 3, 5), "Prospecting", 10_000.0, d(2024, 5, 1)),
        ("B", d(2024, 5, 1), "Closed Won", 10_000.0, d(2024, 5, 1)),
        ("C", d(2024, 3, 10), "Prospecting", 40_000.0, d(2025, 2, 1)),
        ("C", d(2024, 11, 15), "Proposal", 40_000.0, d(2025, 2, 1)),
        ("D", d(2024, 3, 15), "Prospecting", 30_000.0, d(2024, 7, 1)),
        ("D", d(2024, 7, 1), "Closed Lost", 30_000.0, d(2024, 7, 1)),
    ]
    if c_closes:
        rows.append(("C", d(2024, 12, 1), "Closed Lost", 40_000.0, d(2025, 2, 1)))
    frame = pl.DataFrame(
        rows, schema=["deal_id", "timestamp", "stage", "amount", "close_date"], orient="row"
    )
    return forecast.read_deal_log(frame, stages=SYNTHETIC_STAGES)


def _overall(m: SalesMetrics) -> dict:
    return m.win_rates.filter(
        (pl.col("segment") == forecast.POOLED_SEGMENT) & (pl.col("period") == "all")
    ).row(0, named=True)


def test_four_deals_all_closed(synthetic_model):
    m = compute_metrics(synthetic_model, _four_deals(True), coverage=False)
    r = _overall(m)
    assert r["n_deals"] == 4 and r["n_open"] == 0
    # unit 2/4 = 50 %, value (20k + 10k) / 100k = 30 %; nothing open, so both agree
    for kind in ("closed_only", "censoring_aware"):
        assert r[f"unit_win_rate_{kind}"] == pytest.approx(0.5)
        assert r[f"value_win_rate_{kind}"] == pytest.approx(0.3)
        assert r[f"no_decision_rate_{kind}"] == 0.0


@pytest.mark.parametrize("covariates", ["with_close_dates", "none"])
def test_four_deals_with_c_open(covariates):
    # the generator's close dates carry timing: with them offered the fit keeps some
    names = (*forecast.DEFAULT_COVARIATES, *forecast.CLOSE_DATE_COVARIATES)
    model = forecast.fit(
        synthetic_model_log(),
        as_of=AS_OF,
        n_draws=0,
        covariates=names if covariates != "none" else (),
    )
    log = _four_deals(False)
    m = compute_metrics(model, log, coverage=False)
    r = _overall(m)
    assert r["n_open"] == 1
    # closed-only: 2 of 3 deals, 30k of 60k
    assert r["unit_win_rate_closed_only"] == pytest.approx(2 / 3)
    assert r["value_win_rate_closed_only"] == pytest.approx(0.5)
    # censoring-aware: C counts its model probability of a win from Proposal after
    # (AS_OF - 2024-11-15) = 47 days there: the stage curve's without covariates,
    # its own (its amount, close date and pushes at AS_OF) with them
    if covariates == "none":
        p = model.win_probability("Proposal", age=47.0)
    else:
        assert model.covariates is not None and model.covariates.active
        pipe = segment_labels(log.pipeline(AS_OF), model.segment_by)
        p = float(open_deal_outcome_probabilities(model, pipe, log)[0, 0])
        assert p != pytest.approx(model.win_probability("Proposal", age=47.0), rel=1e-3)
    assert 0 < p < 0.5
    assert r["unit_win_rate_censoring_aware"] == pytest.approx((2 + p) / 4, rel=1e-9)
    assert r["value_win_rate_censoring_aware"] == pytest.approx((30_000 + 40_000 * p) / 100_000)
    assert r["expected_wins_open"] == pytest.approx(p, rel=1e-9)
    # the creation quarter row holds the same deals
    q = m.win_rates.filter(
        (pl.col("segment") == forecast.POOLED_SEGMENT) & (pl.col("period") == "FY2024-Q1")
    )
    assert q["n_deals"].to_list() == [4]


def test_four_deals_slippage(synthetic_model):
    m = compute_metrics(synthetic_model, _four_deals(False), coverage=False)
    s = m.slippage.filter(pl.col("stage") == "Proposal").row(0, named=True)
    assert s["n_deals"] == 2  # A and C visited Proposal
    assert s["n_deals_pushed"] == 1 and s["push_rate"] == 0.5
    assert s["median_push_days"] == pytest.approx(10.0)
    assert s["win_rate_pushed_closed_only"] == 1.0  # A was pushed and won
    assert s["win_rate_not_pushed_closed_only"] is None  # C is still open
    a = m.slippage.filter(pl.col("stage") == "all").row(0, named=True)
    # A: won 2024-06-05, first rep close date 2024-06-01; B: won on its close date
    assert a["median_slip_at_win_days"] == pytest.approx(2.0)


@pytest.mark.slow
def test_censoring_aware_win_rate_matches_what_happened_next():
    # At 2024-01-01 most deals created in FY2023-Q4 are still open. Four worlds
    # without shared shocks, run on to 2026: the censoring-aware rate predicts the
    # wins that happened; the closed-only rate over-states them (wins close sooner
    # than losses). se of the predicted count: sqrt(sum p(1-p)) <= sqrt(n_open)/2.
    predicted = naive = happened = n_open = 0.0
    for seed in range(4):
        w = generate_crm(
            seed=seed, start="2022-01-01", end="2026-01-01", scale=0.5, sigma_shock=0.0
        )
        log = forecast.read_deal_log(w.events, stages=w.stage_map)
        model = forecast.fit(log, as_of="2024-01-01", n_draws=0)
        r = (
            compute_metrics(model, log, coverage=False)
            .win_rates.filter(
                (pl.col("segment") == forecast.POOLED_SEGMENT) & (pl.col("period") == "FY2023-Q4")
            )
            .row(0, named=True)
        )
        later = log.outcomes("2026-01-01").filter(
            pl.col("created_at").is_between(
                dt.datetime(2023, 10, 1), dt.datetime(2024, 1, 1), "left"
            )
        )
        assert later.height == r["n_deals"]
        predicted += r["unit_win_rate_censoring_aware"] * r["n_deals"]
        naive += r["unit_win_rate_closed_only"] * r["n_deals"]
        happened += float((later["status"] == "won").sum())
        n_open += r["n_open"]
    se = np.sqrt(n_open) / 2
    assert abs(predicted - happened) < 3 * se, (predicted, happened, se)
    assert naive - happened > 3 * se, (naive, happened, se)


@pytest.fixture(scope="module")
def sample_metrics(sample_log, sample_model):
    assert sample_model.as_of == AS_OF
    return (
        sample_log,
        sample_model,
        compute_metrics(sample_model, sample_log, n_paths=500, max_copies=64),
    )


def test_conversion_matches_model_with_draw_intervals(sample_metrics):
    _, model, m = sample_metrics
    c = m.conversion
    for r in c.filter(pl.col("segment") != forecast.POOLED_SEGMENT).iter_rows(named=True):
        assert r["win_probability"] == pytest.approx(
            model.win_probability(r["stage"], segment=r["segment"])
        )
        assert r["win_within_90_days"] == pytest.approx(
            model.win_probability(r["stage"], segment=r["segment"], within=90.0)
        )
        assert r["win_within_90_days"] <= r["win_within_180_days"] <= r["win_probability"] + 1e-12
        assert r["win_probability_low"] <= r["win_probability_high"]
    # interval bounds differ between draws (parameter uncertainty is there)
    assert (c["win_probability_high"] - c["win_probability_low"]).drop_nulls().min() > 0
    pooled = c.filter(pl.col("segment") == forecast.POOLED_SEGMENT)
    assert pooled.height == model.stages.n_open
    assert pooled["win_probability_low"].null_count() == pooled.height


def test_cycle_length_matches_lifelines_kaplan_meier(sample_metrics):
    from lifelines import KaplanMeierFitter

    log, _, m = sample_metrics
    o = log.outcomes(AS_OF)
    end = pl.coalesce("closed_at", pl.lit(AS_OF, dtype=pl.Datetime("us")))
    days = o.select((end - pl.col("created_at")).dt.total_microseconds() / 86_400e6)
    kmf = KaplanMeierFitter().fit(days.to_series().to_numpy(), (o["status"] != "open").to_numpy())
    row = m.cycle_length.filter(
        (pl.col("segment") == forecast.POOLED_SEGMENT)
        & (pl.col("deals") == "all")
        & (pl.col("method") == "censoring_aware")
    ).row(0, named=True)
    assert row["median_days"] == pytest.approx(kmf.median_survival_time_, rel=1e-9)
    assert row["n_censored"] == int((o["status"] == "open").sum())
    closed = m.cycle_length.filter(
        (pl.col("segment") == forecast.POOLED_SEGMENT)
        & (pl.col("deals") == "all")
        & (pl.col("method") == "closed_only")
    ).row(0, named=True)
    # dropping open deals shortens the cycle (they are the long ones)
    assert closed["median_days"] < row["median_days"]


def test_time_in_stage_from_fitted_curves(sample_metrics):
    _, model, m = sample_metrics
    for r in m.time_in_stage.filter(pl.col("segment") != forecast.POOLED_SEGMENT).iter_rows(
        named=True
    ):
        k = model.stages.code(r["stage"])
        # ExitCurves.median solves S(t) = 1/2 on the same piecewise-linear curve
        assert r["median_days"] == pytest.approx(model.curves[(r["segment"], k)].median(), abs=1e-6)
        assert r["median_days"] <= r["p75_days"] <= r["p90_days"]


def test_velocity_formula(sample_metrics):
    _, _, m = sample_metrics
    v = m.velocity.drop_nulls("cycle_length_days")
    assert v.height > 0
    np.testing.assert_allclose(
        v["velocity_per_day"].to_numpy(),
        (
            v["opportunities"] * v["average_value"] * v["win_rate"] / v["cycle_length_days"]
        ).to_numpy(),
    )
    np.testing.assert_allclose(
        v["gain_per_day_cycle_length_minus_10pct"].to_numpy(),
        v["velocity_per_day"].to_numpy() * (1 / 0.9 - 1),
    )


def test_coverage_table(sample_metrics):
    _, model, m = sample_metrics
    cov = m.coverage
    stages = cov.filter(pl.col("stage").is_in(list(model.stages.open)))
    assert stages.height == model.stages.n_open
    tgt = m.info["target"]
    np.testing.assert_allclose(cov["coverage"].to_numpy(), cov["pipeline_amount"].to_numpy() / tgt)
    finite = stages.filter(pl.col("pipeline_value_factor").is_finite())
    assert finite.height > 0
    np.testing.assert_allclose(
        finite["required_pipeline"].to_numpy(), finite["pipeline_value_factor"].to_numpy() * tgt
    )
    # the required stage pipeline is at most `copies` times today's (amounts scaled ≤ 1)
    # and more than `copies - 1` times it would have been short of the target
    assert (
        finite["required_pipeline"] <= finite["copies"] * finite["pipeline_amount"] * (1 + 1e-9)
    ).all()
    full = cov.filter(pl.col("stage") == "pipeline and new deals").row(0, named=True)
    only = cov.filter(pl.col("stage") == "all open stages").row(0, named=True)
    assert full["probability_today"] >= only["probability_today"]


def test_to_parquet_tables_and_summary(sample_metrics, tmp_path):
    _, _, m = sample_metrics
    paths = m.to_parquet(tmp_path / "out")
    assert [p.name for p in paths] == [f"{k}.parquet" for k in m.tables()]
    for name, frame in m.tables().items():
        back = pl.read_parquet(tmp_path / "out" / f"{name}.parquet")
        assert back.equals(frame), name
    text = str(m)
    assert "win rate, units" in text and "Pipeline Value Factor" in text


def test_parameter_errors(sample_metrics):
    log, model, _ = sample_metrics
    with pytest.raises(ParameterError, match=r"`model`.*fit_and_compute_metrics"):
        compute_metrics(log, model)
    with pytest.raises(ParameterError, match="`interval_level`"):
        compute_metrics(model, log, interval_level=1.5, coverage=False)
    with pytest.raises(ParameterError, match="`target_probability`"):
        compute_metrics(model, log, target_probability=1.0)
    with pytest.raises(ParameterError, match="`target`"):
        compute_metrics(model, log, target=-5.0)
    with pytest.raises(ParameterError, match="`within_days`"):
        compute_metrics(model, log, within_days=[0.0], coverage=False)
    with pytest.raises(ParameterError, match="`n_paths`"):
        compute_metrics(model, log, n_paths=True)
    with pytest.raises(forecast.MissingColumnError, match="`segment_by`"):
        fit_and_compute_metrics(log, segment_by=["colour"], coverage=False)


def test_fit_and_compute_metrics_is_fit_then_compute(sample_log):
    kw = {"as_of": "2024-07-01", "n_draws": 2, "seed": 3}
    both = fit_and_compute_metrics(sample_log, coverage=False, within_days=[np.int64(30)], **kw)
    model = forecast.fit(sample_log, **kw)
    alone = compute_metrics(model, sample_log, coverage=False, within_days=[30.0], seed=3)
    assert both.info == alone.info
    for name in ("win_rates", "conversion", "cycle_length", "time_in_stage", "slippage"):
        assert both.tables()[name].equals(alone.tables()[name]), name
