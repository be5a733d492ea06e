"""Deal covariates: the Cox estimator, counting-process rows, baseline curves, selection.

References: lifelines' ``CoxTimeVaryingFitter`` and ``CoxPHFitter`` (independent
implementations of the weighted, stratified Efron partial likelihood), the
Aalen–Johansen estimator (the baseline with β = 0), and a direct product-integral
computation of a deal's cumulative incidences from its own hazards.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
from lifelines import CoxPHFitter, CoxTimeVaryingFitter

import forecast
from forecast.data.readers import read_deal_log
from forecast.data.stages import StageMap
from forecast.datasets import SYNTHETIC_STAGES, generate_crm
from forecast.deal_covariates import (
    covariate_paths,
    deal_covariate_values,
    eventual_outcome_probabilities,
)
from forecast.errors import ParameterError
from forecast.fit.competing_risks import CensoredSpells, aalen_johansen, fit_exit_curves
from forecast.fit.covariates import (
    CovariateModel,
    CovariateSpec,
    baseline_steps,
    build_design,
    chain_win_probabilities,
    covariate_states,
    deal_states,
    destination_groups,
    fit_covariate_coefficients,
    tilt_density,
)
from forecast.fit.cox import CoxRows, breslow_increments, fit_cox
from forecast.fit.data import FitData
from forecast.segments import segment_labels

# -- data -----------------------------------------------------------------------------------


def counting_process_data(seed: int, n: int = 300) -> pd.DataFrame:
    """Rows (start, stop] with a covariate change at day 3, three strata, weights, ties."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    strat = rng.integers(0, 3, n)
    t = np.round(rng.exponential(10 * np.exp(-0.5 * x[:, 0] + 0.3 * x[:, 1]))) + 1  # ties
    c = np.round(rng.exponential(15, n)) + 1
    e = (t <= c).astype(int)
    T = np.minimum(t, c)
    w = rng.uniform(0.5, 2.0, n)
    rows = []
    for i in range(n):
        if T[i] > 3:  # x1 changes at day 3
            rows.append((i, 0.0, 3.0, 0, x[i, 0], x[i, 1] + 0.5, strat[i], w[i]))
            rows.append((i, 3.0, T[i], e[i], x[i, 0], x[i, 1], strat[i], w[i]))
        else:
            rows.append((i, 0.0, T[i], e[i], x[i, 0], x[i, 1], strat[i], w[i]))
    return pd.DataFrame(rows, columns=["id", "start", "stop", "event", "x0", "x1", "s", "w"])


def ours(df: pd.DataFrame, penalty: float | np.ndarray = 0.0):
    rows = CoxRows.build(df.start.values, df.stop.values, df.s.values, df[["x0", "x1"]].values)
    return rows, fit_cox(rows, rows.take(df.event.values), rows.take(df.w.values), penalty=penalty)


# -- the estimator against lifelines ----------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_time_varying_cox_agrees_with_lifelines(seed):
    df = counting_process_data(seed)
    ctv = CoxTimeVaryingFitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines' notes on weights and ties
        ctv.fit(df, id_col="id", event_col="event", start_col="start", stop_col="stop",
                weights_col="w", strata=["s"])  # fmt: skip
    _, res = ours(df)
    assert res.converged
    np.testing.assert_allclose(res.beta, ctv.params_.values, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.se, ctv.standard_errors_.values, rtol=1e-6)
    assert res.loglik == pytest.approx(ctv.log_likelihood_, rel=1e-9)


def test_time_fixed_cox_with_ridge_agrees_with_lifelines():
    df = counting_process_data(3)
    last = df.groupby("id").tail(1).reset_index(drop=True)  # one row per subject
    d = last[["stop", "event", "x0", "x1", "s", "w"]].rename(columns={"stop": "T"})
    d = d.assign(start=0.0, stop=d["T"])
    lam = 8.0
    # lifelines penalises n * p / 2 * (beta * sd)^2 on standardised columns: p_a = λ / (n sd_a²)
    sd = d[["x0", "x1"]].std().values  # pandas' (n - 1) standard deviation, as lifelines
    p = lam / (len(d) * sd**2)
    cph = CoxPHFitter(penalizer=p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph.fit(d[["T", "event", "x0", "x1", "s", "w"]], "T", "event", weights_col="w",
                strata=["s"], fit_options={"precision": 1e-12})  # fmt: skip
    rows = CoxRows.build(d.start.values, d.stop.values, d.s.values, d[["x0", "x1"]].values)
    res = fit_cox(rows, rows.take(d.event.values), rows.take(d.w.values), penalty=lam)
    np.testing.assert_allclose(res.beta, cph.params_.values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.se, cph.standard_errors_.values, rtol=1e-5)


def test_breslow_baseline_agrees_with_lifelines():
    # unit weights: lifelines' time-varying baseline leaves the weights out of its risk sums
    df = counting_process_data(4).assign(s=0, w=1.0)
    ctv = CoxTimeVaryingFitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctv.fit(df.drop(columns="s"), id_col="id", event_col="event", start_col="start",
                stop_col="stop", weights_col="w")  # fmt: skip
    rows, res = ours(df)
    eta = rows.x @ res.beta
    inc = breslow_increments(rows, rows.take(df.event.values), rows.take(df.w.values), eta)
    times = np.unique(rows.stop[inc > 0])
    cum = np.array([inc[(rows.stop <= t)].sum() for t in times])
    # lifelines' baseline is at the covariate means: H_0(t; x̄) = exp(x̄ β) H_0(t; 0)
    ref = ctv.baseline_cumulative_hazard_.iloc[:, 0]
    xbar = df[["x0", "x1"]].mean().values
    got = cum * np.exp(xbar @ res.beta)
    np.testing.assert_allclose(got, ref.loc[times].values, rtol=1e-6)


# -- the baseline with β = 0 is Aalen–Johansen ---------------------------------------------------


def test_baseline_with_zero_coefficients_is_aalen_johansen():
    rng = np.random.default_rng(7)
    n = 200
    dur = np.round(rng.exponential(20, n), 1)
    dest = np.where(rng.random(n) < 0.2, -1, rng.integers(3, 6, n))
    w = rng.uniform(0.2, 2.0, n)
    spells = CensoredSpells(dur, dest, n_codes=6, weights=w)
    aj = aalen_johansen(spells)
    rows = CoxRows.build(np.full(n, -1.0), dur, np.zeros(n, np.int64), np.zeros((n, 0)))
    ev = rows.take((dest >= 0).astype(np.int64))
    inc = breslow_increments(rows, ev, rows.take(w), np.zeros(n))
    d = rows.take(dest)
    steps = baseline_steps(rows.stop[ev == 1], d[ev == 1], inc[ev == 1], 6)
    np.testing.assert_allclose(steps.times, aj.times)
    np.testing.assert_allclose(steps.survival, aj.survival, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(steps.cif, aj.cif, rtol=1e-12, atol=1e-15)


def test_deal_curves_equal_a_direct_computation_for_two_deals():
    """Two deals, one stratum, one covariate: each deal's CIF from its own hazards.

    Deal A (x = 0) exits to code 3 at 2.5 days; deal B (x = 1) exits to code 4 at
    5.5 days; a third spell (x = 0) is censored at 4.2 days. With β = (b3, b4) for
    the two causes, the Breslow increments are, at 2.5: 1 / (1 + 1 + e^{b3}) for
    cause 3, at 5.5: 1 / e^{b4} for cause 4; a deal with x has hazards
    ``e^{b_j x} dΛ_j`` (at most 1) and its CIF is the product integral. (With
    b4 < 0 the baseline increment at 5.5 would exceed 1; the baseline deal then
    surely exits there and a deal with x gets ``e^{b4 x}`` of that, the one place
    where the day-grid curves and the product integral part: ``docs/model.md``.)
    """
    b3, b4 = 0.4, 0.3
    rows = CoxRows.build(
        np.array([-1.0, -1.0, -1.0]),
        np.array([2.5, 5.5, 4.2]),
        np.zeros(3, np.int64),
        np.array([[0.0], [1.0], [0.0]]),
    )
    dest = np.array([3, 4, -1])
    inc = np.zeros(3)
    for code, b in ((3, b3), (4, b4)):
        ev = (dest == code).astype(np.int64)
        part = breslow_increments(rows, ev, np.ones(3), rows.x[:, 0] * b)
        inc[ev == 1] = part[ev == 1]
    assert inc[0] == pytest.approx(1.0 / (2.0 + np.exp(b3)))
    assert inc[1] == pytest.approx(1.0 / np.exp(b4))
    steps = baseline_steps(np.array([2.5, 5.5]), np.array([3, 4]), inc[:2], 6)
    # baseline on the day grid (exact at integer days: one exit time per day)
    grid = np.arange(8, dtype=float)
    _, cif = steps.evaluate(grid)
    dens = np.diff(cif, axis=1, prepend=0.0)[:, 1:]  # bins (d, d + 1]
    for x in (0.0, 1.0, 2.0):
        r = np.ones(6)
        r[3], r[4] = np.exp(b3 * x), np.exp(b4 * x)
        got = tilt_density(dens, r).cumsum(axis=1)
        h3 = min(1.0, r[3] * inc[0])
        s1 = 1.0 - h3
        h4 = min(1.0, r[4] * inc[1])
        want3 = np.where(grid[1:] >= 2.5, h3, 0.0)
        want4 = np.where(grid[1:] >= 5.5, s1 * h4, 0.0)
        np.testing.assert_allclose(got[3], want3, atol=1e-14)
        np.testing.assert_allclose(got[4], want4, atol=1e-14)


def test_tilt_with_unit_ratios_returns_the_baseline(sample_model):
    dens = sample_model.curves[("SMB", 2)].exit_density(400)
    np.testing.assert_allclose(tilt_density(dens, np.ones(dens.shape[0])), dens, atol=1e-15)


# -- counting-process rows: the value known at each instant --------------------------------------

STAGES = StageMap(open=("A", "B"), won=("Won",), lost=("Lost",), no_decision=("None",))


def tiny_log() -> forecast.DealLog:
    t = dt.datetime(2024, 1, 1)
    day = dt.timedelta(days=1)
    rows = [
        # deal 1: A for 10 days, close date pushed at day 4 and 7, then B, won at day 15
        ("d1", t, "A", 100.0, t + 3 * day, "Partner"),
        ("d1", t + 4 * day, "A", 100.0, t + 20 * day, "Partner"),
        ("d1", t + 7 * day, "A", 200.0, t + 30 * day, "Partner"),
        ("d1", t + 10 * day, "B", 200.0, t + 30 * day, "Partner"),
        ("d1", t + 15 * day, "Won", 200.0, t + 15 * day, "Partner"),
        # deal 2: A from day 2, lost at day 12
        ("d2", t + 2 * day, "A", 50.0, t + 40 * day, "Inbound"),
        ("d2", t + 12 * day, "Lost", 50.0, t + 12 * day, "Inbound"),
        # deal 3: A from day 1, still open
        ("d3", t + 1 * day, "A", 80.0, t + 9 * day, "Inbound"),
    ]
    frame = pl.DataFrame(
        rows,
        schema=["deal_id", "timestamp", "stage", "amount", "close_date", "source"],
        orient="row",
    )
    return read_deal_log(frame, stages=STAGES, segment_columns=["source"])


def test_rows_split_at_changes_and_hold_the_values_known_then():
    log = tiny_log()
    data = FitData.from_log(log, as_of="2024-01-20")
    st = covariate_states(data.cut, data.spells, data.as_of, ["source"])
    sp = data.spells.with_row_index("_spell")
    d1a = int(sp.filter((pl.col("deal_id") == "d1") & (pl.col("stage") == "A"))["_spell"][0])
    rows = st.filter(pl.col("_spell") == d1a)
    assert rows["start"].to_list() == [-1.0, 4.0, 7.0]
    assert rows["stop"].to_list() == [4.0, 7.0, 10.0]
    assert rows["event"].to_list() == [-1, -1, 1]  # moved to B at day 10
    assert rows["_pushes"].to_list() == [0.0, 1.0, 2.0]
    assert rows["_amount"].to_list() == [100.0, 100.0, 200.0]
    assert rows["_close_offset"].to_list() == [3.0, 20.0, 30.0]
    # deal 3 is censored at the as-of date with the values of its only row
    d3 = st.join(sp.select(pl.col("_spell").cast(pl.Int64), "deal_id"), on="_spell").filter(
        pl.col("deal_id") == "d3"
    )
    assert d3["stop"].to_list() == [pytest.approx(18.0)] and d3["event"].to_list() == [-1]


def test_deal_states_fill_within_each_deal_only():
    # deal e2 starts with nothing known: the values of e1's last rows must not leak into
    # it, and its close-date pushes count from its own first row
    t = dt.datetime(2024, 1, 1)
    day = dt.timedelta(days=1)
    rows = [
        ("e1", t, "A", 100.0, t + 30 * day, "Partner"),
        ("e1", t + 2 * day, "A", None, t + 40 * day, None),
        ("e1", t + 3 * day, "B", None, None, None),
        ("e2", t + 1 * day, "A", None, None, None),
        ("e2", t + 4 * day, "A", 70.0, t + 50 * day, "Inbound"),
        ("e2", t + 5 * day, "A", None, t + 20 * day, None),
        ("e2", t + 6 * day, "B", None, t + 60 * day, None),
    ]
    frame = pl.DataFrame(
        rows,
        schema={
            "deal_id": pl.Utf8,
            "timestamp": pl.Datetime("us"),
            "stage": pl.Utf8,
            "amount": pl.Float64,
            "close_date": pl.Datetime("us"),
            "source": pl.Utf8,
        },
        orient="row",
    )
    log = read_deal_log(frame, stages=STAGES, segment_columns=["source"])
    st = deal_states(log, ["source"]).sort("deal_id", "timestamp")
    e1, e2 = st.filter(pl.col("deal_id") == "e1"), st.filter(pl.col("deal_id") == "e2")
    assert e1["_amount"].to_list() == [100.0, 100.0, 100.0]
    assert e1["source"].to_list() == ["Partner"] * 3
    assert e1["_pushes"].to_list() == [0, 1, 1]
    assert e2["_amount"].to_list() == [None, 70.0, 70.0, 70.0]
    assert e2["source"].to_list() == [None, "Inbound", "Inbound", "Inbound"]
    assert e2["_close"].to_list() == [None, t + 50 * day, t + 20 * day, t + 60 * day]
    assert e2["_pushes"].to_list() == [0, 0, 0, 1]  # a move earlier is not a push


def test_rows_never_see_a_change_after_the_as_of_date():
    t = dt.datetime(2024, 1, 6)  # after the first push only
    cut = tiny_log().as_of(t)
    spells = segment_labels(cut.spells(t), ())
    st = covariate_states(cut, spells, t, [])
    sp = spells.with_row_index("_spell")
    d1a = int(sp.filter(pl.col("deal_id") == "d1")["_spell"][0])
    rows = st.filter(pl.col("_spell") == d1a)
    assert rows["stop"].to_list() == [4.0, 5.0] and rows["event"].to_list() == [-1, -1]
    assert rows["_pushes"].to_list() == [0.0, 1.0]
    assert rows["_amount"].to_list() == [100.0, 100.0]


def test_design_encodes_each_covariate():
    log = tiny_log()
    data = FitData.from_log(log, as_of="2024-01-20")
    design = build_design(data, ("amount", "days_to_close", "pushes"))
    assert design.columns == ("amount", "days_to_close", "pushes")
    # log2 amount centred on the mean log2 amount at creation (100, 50, 80)
    center = np.mean(np.log2([100.0, 50.0, 80.0]))
    first = design.x[design.first & (design.stage == 0)]
    assert sorted(first[:, 0].round(12)) == sorted(
        (np.log2([100.0, 50.0, 80.0]) - center).round(12)
    )
    assert set(design.x[:, 2]) == {0.0, 1.0, 2.0}
    d1 = design.x[design.stage == 0][:3]
    # months from the entry to the close date, centred on stage A's median at entry
    # (close dates 3, 38 and 8 days after the entries of d1, d2 and d3)
    np.testing.assert_allclose(d1[:, 1], (np.array([3.0, 20.0, 30.0]) - 8.0) / 30.0)


def test_unknown_covariates_are_named(sample_log):
    with pytest.raises(ParameterError, match=r"Unknown covariate\(s\) \['colour'\]"):
        forecast.fit(sample_log, covariates=["amount", "colour"], n_draws=0)
    with pytest.raises(ParameterError, match="list of names"):
        forecast.fit(sample_log, covariates="amount", n_draws=0)


# -- the fitted model -----------------------------------------------------------------------------


def test_no_covariates_is_the_model_without_them(sample_log, sample_fit_arguments):
    model = forecast.fit(sample_log, **sample_fit_arguments, covariates=())
    assert model.covariates is None
    d = json.loads(model.to_json())
    assert "covariates" not in d and "covariates" not in d["options"]
    assert model.effects().height == 0 and model.coefficients().height == 0


def test_default_candidates_leave_the_close_dates_out(sample_model):
    cov = sample_model.covariates
    assert cov is not None and cov.candidates == forecast.DEFAULT_COVARIATES == ("amount",)
    assert cov.selection["covariate"].to_list() == ["amount"]


@pytest.fixture(scope="module")
def close_date_model(sample_log, sample_fit_arguments):
    """The sample's fit offered every built-in covariate (it keeps some, drops some)."""
    names = (*forecast.DEFAULT_COVARIATES, *forecast.CLOSE_DATE_COVARIATES)
    return forecast.fit(sample_log, **sample_fit_arguments, covariates=names)


def test_selection_is_reported_and_round_trips(close_date_model):
    sample_model = close_date_model
    cov = sample_model.covariates
    assert cov is not None
    assert cov.kept and len(cov.kept) < len(cov.candidates)  # kept and dropped both shown
    table = cov.selection
    assert table["covariate"].to_list() == list(cov.candidates)
    assert set(table.filter(pl.col("kept"))["covariate"]) == set(cov.kept)
    kept = table.filter(pl.col("kept"))["delta_aic"].to_numpy()
    assert np.all(kept < 0)  # kept only where the criterion falls
    back = forecast.PipelineModel.from_json(sample_model.to_json())
    assert back.to_json() == sample_model.to_json()
    assert back.covariates.selection.equals(table)
    eff = sample_model.effects()
    assert eff.filter(pl.col("kept")).height == len(cov.columns)
    assert eff.filter(~pl.col("kept")).height == len(cov.candidates) - len(cov.kept)


def test_chain_win_probabilities_of_stages_that_never_close() -> None:
    # two open stages (codes 0, 1; won 2, lost 3, no decision 4)
    def curves(dest0: int, dest1: list[int]) -> list:
        first = fit_exit_curves(CensoredSpells([3.0, 5.0, 7.0], [dest0] * 3, n_codes=5))
        second = fit_exit_curves(CensoredSpells([2.0, 4.0, 6.0, 8.0], dest1, n_codes=5))
        return [first, second]

    ones = np.ones((1, 2, 5))
    # stage 0 always moves on; stage 1 wins half and loses half: 0.5 from stage 0
    closing = curves(1, [2, 3, 2, 3])
    assert chain_win_probabilities(closing, ones, 2) == pytest.approx([0.5])
    # stage 0 and stage 1 only move to each other: I − Q is singular, never a win
    looping = curves(1, [0, 0, 0, 0])
    assert chain_win_probabilities(looping, ones, 2) == pytest.approx([0.0], abs=1e-12)


def test_cox_fit_carries_recency_weights_and_delayed_entries():
    """On a log recorded mid-stream with a half-life, the coefficients are lifelines'
    on the same rows with each row weighted by the recency of its stage entry (computed
    here from the spells frame) and the delayed spells at risk from their entry on."""
    crm = generate_crm(seed=4, end="2024-07-01", scale=0.5, recorded_from="2023-07-01",
                       size_effect=True)  # fmt: skip
    log = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    as_of, half_life = dt.datetime(2024, 7, 1), 182.0
    data = FitData.from_log(
        log, as_of=as_of, segment_by=["segment"], recorded_from="2023-07-01"
    ).with_half_life(half_life)
    design = build_design(data, ["amount"])
    a = data.spell_arrays
    entry = a.entry[design.spell]
    delayed = entry > 0
    assert delayed.any() and np.all(design.start[delayed] >= entry[delayed])
    assert a.excluded.any() and not a.excluded[design.spell].any()
    coef = fit_covariate_coefficients(data, design, ["amount"], penalty=0.0)
    age = (as_of - data.spells["entered_at"]).dt.total_seconds().to_numpy() / 86400.0
    recency = 2.0 ** (-age / half_life)
    n_open = SYNTHETIC_STAGES.n_open
    won = destination_groups(n_open)[SYNTHETIC_STAGES.WON]
    for k in (2, 3):
        r = design.stage == k
        df = pd.DataFrame({
            "id": design.spell[r], "start": design.start[r], "stop": design.stop[r],
            "event": (design.event[r] == SYNTHETIC_STAGES.WON).astype(int),
            "x": design.x[r, 0], "s": design.segment[r], "w": recency[design.spell[r]],
        })  # fmt: skip
        assert df.w.min() < 0.5 < df.w.max()
        ctv = CoxTimeVaryingFitter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lifelines' notes on weights and ties
            ctv.fit(df, id_col="id", event_col="event", start_col="start", stop_col="stop",
                    weights_col="w", strata=["s"])  # fmt: skip
        np.testing.assert_allclose(coef.beta[k, won], ctv.params_.values, rtol=1e-6, atol=1e-9)
        # unweighted rows give another coefficient: the check above sees the weights
        flat = CoxTimeVaryingFitter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat.fit(df.drop(columns="w"), id_col="id", event_col="event", start_col="start",
                     stop_col="stop", strata=["s"])  # fmt: skip
        assert abs(float(flat.params_.values[0]) - float(coef.beta[k, won][0])) > 1e-3


# -- the timing covariate `overdue` ----------------------------------------------------------------


def test_rows_split_where_the_close_date_passes():
    data = FitData.from_log(tiny_log(), as_of="2024-01-20")
    st = covariate_states(data.cut, data.spells, data.as_of, [], split_at_close=True)
    sp = data.spells.with_row_index("_spell").select(
        pl.col("_spell").cast(pl.Int64), "deal_id", "stage"
    )
    st = st.join(sp, on="_spell", how="left", maintain_order="left")
    # d1 in A: close date 3 days after entry, pushed at day 4 (to 20) and 7 (to 30)
    d1a = st.filter((pl.col("deal_id") == "d1") & (pl.col("stage") == "A"))
    assert d1a["start"].to_list() == [-1.0, 3.0, 4.0, 7.0]
    assert d1a["stop"].to_list() == [3.0, 4.0, 7.0, 10.0]
    assert d1a["_overdue"].to_list() == [0.0, 1.0, 0.0, 0.0]
    assert d1a["event"].to_list() == [-1, -1, -1, 1]  # the exit stays on the last piece
    assert d1a["first"].to_list() == [True, False, False, False]
    assert d1a["_pushes"].to_list() == [0.0, 0.0, 1.0, 2.0]
    # d3 (open, close date 8 days after entry) is overdue at the as-of date
    d3 = st.filter(pl.col("deal_id") == "d3")
    assert d3["start"].to_list() == [-1.0, 8.0] and d3["_overdue"].to_list() == [0.0, 1.0]
    assert d3["stop"].to_list() == [8.0, pytest.approx(18.0)] and d3["event"].to_list() == [-1, -1]
    # d2 (close date after its loss) and d1 in B (won before its close date): never
    assert st.filter(pl.col("deal_id") == "d2")["_overdue"].to_list() == [0.0]
    assert st.filter((pl.col("deal_id") == "d1") & (pl.col("stage") == "B"))[
        "_overdue"
    ].to_list() == [0.0]
    # without the split the rows are those of the other covariates, never overdue
    plain = covariate_states(data.cut, data.spells, data.as_of, [])
    assert plain.height == st.height - 2 and set(plain["_overdue"]) == {0.0}


def test_overdue_design_and_cox_fit_agree_with_lifelines():
    """The rows split at the close date, fitted per stage for the wins: the
    coefficient of ``overdue`` is lifelines' on the same rows (with an unsplit
    covariate alongside); each row's value is its definition, computed here."""
    crm = generate_crm(seed=5, end="2024-07-01", scale=0.5)
    log = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    data = FitData.from_log(log, as_of="2024-07-01", segment_by=["segment"])
    design = build_design(data, ["pushes", "overdue"])
    assert design.columns == ("pushes", "overdue")
    s = np.maximum(design.start, 0.0)
    c = design.close_offset
    known = np.isfinite(c)
    np.testing.assert_array_equal(design.x[:, 1], (known & (s >= c)).astype(float))
    assert not np.any(known & (s < c) & (c < design.stop))  # no piece left unsplit
    assert 0.02 < design.x[:, 1].mean() < 0.5
    coef = fit_covariate_coefficients(data, design, ["pushes", "overdue"], penalty=0.0)
    won = destination_groups(SYNTHETIC_STAGES.n_open)[SYNTHETIC_STAGES.WON]
    for k in (2, 3):
        r = design.stage == k
        df = pd.DataFrame({
            "id": design.spell[r], "start": design.start[r], "stop": design.stop[r],
            "event": (design.event[r] == SYNTHETIC_STAGES.WON).astype(int),
            "pushes": design.x[r, 0], "overdue": design.x[r, 1], "s": design.segment[r],
        })  # fmt: skip
        ctv = CoxTimeVaryingFitter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lifelines' notes on ties
            ctv.fit(df, id_col="id", event_col="event", start_col="start", stop_col="stop",
                    strata=["s"])  # fmt: skip
        np.testing.assert_allclose(coef.beta[k, won], ctv.params_.values, rtol=1e-6, atol=1e-9)


def _overdue_model(names: tuple[str, ...]) -> CovariateModel:
    """A covariate model keeping ``names`` of the built-ins (zero effects; paths only)."""
    specs = []
    for n in names:
        if n == "days_to_close":
            specs.append(CovariateSpec(n, n, (n,), fill=(0.5, 0.5), centered=True))
        else:
            specs.append(CovariateSpec(n, n, (n,)))
    d = len(names)
    return CovariateModel(
        candidates=names, selection=pl.DataFrame(), specs=tuple(specs), columns=names,
        beta=np.zeros((2, 4, d)), covariance=np.zeros((2, 4, d, d)), n_events=np.zeros((2, 4)),
        baseline={}, pooled_baseline={}, entry_values=np.zeros((1, 2, d)), new_deal_x={},
        new_deal_amount={},
    )  # fmt: skip


def test_a_change_stamped_at_the_as_of_instant_is_known_then():
    """``DealLog.as_of`` keeps rows with ``timestamp <= as_of`` and the pipeline shows
    a close date pushed at that instant; the open deal's covariates (the simulation's
    start) see it too, while the fit's rows are unchanged (it holds for no time)."""
    now = dt.datetime(2024, 3, 1)
    day = dt.timedelta(days=1)
    rows = [
        ("p", now - 20 * day, "A", 10.0, now - 2 * day),
        ("p", now - 10 * day, "B", 10.0, now - 2 * day),
        ("p", now, "B", 10.0, now + 45 * day),  # pushed at the as-of instant
        ("q", now - 10 * day, "B", 10.0, now + 15 * day),
    ]
    frame = pl.DataFrame(
        rows, schema=["deal_id", "timestamp", "stage", "amount", "close_date"], orient="row"
    )
    log = read_deal_log(frame, stages=STAGES)
    cov = _overdue_model(("pushes", "days_to_close", "overdue"))
    pipe = segment_labels(log.pipeline(now), ()).sort("deal_id")
    assert pipe["close_date"].to_list() == [now + 45 * day, now + 15 * day]
    assert pipe["close_date_pushes"].to_list() == [1, 0]
    x = deal_covariate_values(cov, log, now, (), pipe)
    assert x[:, 0].tolist() == [1.0, 0.0]  # pushes
    assert x[:, 2].tolist() == [0.0, 0.0]  # no longer overdue
    spec = cov.specs[1]
    np.testing.assert_allclose(x[:, 1], spec.close_months(np.array([55.0, 25.0]), 1))
    # the fit's rows: the censored stay ends at the instant of the push, without it
    cut = log.as_of(now)
    spells = segment_labels(cut.spells(now), ()).filter(pl.col("censored"))
    fit_rows = covariate_states(cut, spells, now, [])
    assert fit_rows.height == 2 and fit_rows["_pushes"].to_list() == [0.0, 0.0]
    assert np.all(fit_rows["stop"].to_numpy() > fit_rows["start"].to_numpy())
    at_end = covariate_states(cut, spells, now, [], known_at_as_of=True)
    assert at_end.height == 3 and at_end["_pushes"].to_list() == [0.0, 1.0, 0.0]
    np.testing.assert_allclose(at_end["start"].to_numpy()[1], at_end["stop"].to_numpy()[1])


def test_simulated_overdue_switches_when_the_data_rule_does():
    """An open deal's expected path (close date in 10 days, pushed D days after it
    passes to I days later) written as a log: the rows of that log, split by the data
    rule, switch ``overdue`` and ``pushes`` at the path's instants."""
    cov = _overdue_model(("pushes", "overdue", "days_to_close"))
    age, c, delay, interval = 5.0, 10.0, 2.0, 30.0
    x0 = np.array([[1.0, 0.0, 0.0]])
    x, starts = covariate_paths(
        cov, x0, np.array([c]), np.array([age]), interval, np.array([0]), delay=delay
    )
    np.testing.assert_allclose(starts[0], [0, 10, 12, 42, 44, 74, 76, 106, 108])
    assert x[0, :, 1].tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert x[0, :, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5]
    # the same path as a history: entry 5 days before now, a push every I + D days
    now = dt.datetime(2024, 3, 1)
    day = dt.timedelta(days=1)
    entry = now - age * day
    rows = [
        ("p", entry - 3 * day, "A", 10.0, entry - 1 * day),
        ("p", entry, "B", 10.0, now + c * day),  # pushed once on entering B
    ]
    for t in starts[0, 2::2]:
        rows.append(("p", now + t * day, "B", 10.0, now + (t + interval) * day))
    frame = pl.DataFrame(
        rows, schema=["deal_id", "timestamp", "stage", "amount", "close_date"], orient="row"
    )
    end = now + 120 * day
    cut = read_deal_log(frame, stages=STAGES).as_of(end)
    spells = segment_labels(cut.spells(end), ()).filter(pl.col("stage") == "B")
    st = covariate_states(cut, spells, end, [], split_at_close=True)
    # time in stage -> days from now; the piece starting at the stage entry is -age
    got = np.maximum(st["start"].to_numpy(), 0.0) - age
    assert st["_overdue"].to_list() == x[0, :, 1].tolist()
    np.testing.assert_allclose(got[1:9], starts[0, 1:], atol=1e-6)
    assert st["_pushes"].to_list()[:9] == x[0, :, 0].tolist()
    enc = cov.specs[2].close_months(st["_close_offset"].to_numpy()[:9], np.zeros(9, np.int64))
    np.testing.assert_allclose(enc[2:], x[0, 2:, 2], atol=1e-6)


def test_open_deals_start_overdue_when_their_close_date_has_passed():
    """A fit that keeps ``overdue``: each open deal's value at the as-of date (the
    simulation's start) is 1 exactly when its current close date lies before it, and
    its eventual outcome probabilities are a distribution."""
    crm = generate_crm(seed=1000, end="2024-10-01")
    log = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    model = forecast.fit(
        log, as_of="2024-09-30", covariates=("pushes", "overdue"), n_draws=0, segment_by=["segment"]
    )
    cov = model.covariates
    assert cov is not None and "overdue" in cov.kept
    assert 0.0 < cov.push_delay["*"] < 3.0  # the generator pushes U(0, 3) days after
    pipe = segment_labels(log.pipeline(model.as_of), ("segment",))
    x = deal_covariate_values(cov, log, model.as_of, model.segment_by, pipe)
    passed = (pipe["close_date"] < model.as_of).fill_null(False).to_numpy()
    assert 0 < passed.sum() < pipe.height
    np.testing.assert_array_equal(x[:, cov.columns.index("overdue")], passed.astype(float))
    p = eventual_outcome_probabilities(model, log, pipe)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
