"""Recency weighting and delayed entry: the weighted estimators against independent references.

References: lifelines' KaplanMeierFitter / AalenJohansenFitter (``weights=``,
``entry=``); a brute-force hazard computation with weights that change with
calendar time (the definition the per-spell weights must reproduce exactly);
scipy's optimiser on the written-out weighted and truncated likelihoods.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from scipy import optimize, stats

import forecast
from forecast.errors import ParameterError
from forecast.fit.arrivals import poisson_glm
from forecast.fit.competing_risks import CensoredSpells, aalen_johansen
from forecast.fit.data import FitData, recency_weights
from forecast.fit.fitting import (
    FitOptions,
    assemble_model,
    choose_half_life,
    fit_components,
    scoring_options,
)
from forecast.fit.recency import HalfLifeChoice, check_half_life, select_half_life
from forecast.fit.shocks import reml_shock_variance
from forecast.fit.tails import fit_tail
from forecast.scores import crps_samples
from forecast.simulate import simulate_quarter_totals


def delayed_sample(seed: int, n: int = 300, n_codes: int = 4):
    """Competing-risks spells with delayed entries, right censoring and random weights."""
    rng = np.random.default_rng(seed)
    t = rng.gamma(1.5, 20.0, n)
    dest = rng.integers(1, n_codes, n)
    entry = np.where(rng.random(n) < 0.4, rng.uniform(0.0, 30.0, n), 0.0)
    keep = t > entry  # a spell is seen only if it lasted past its first observation
    t, dest, entry = t[keep], dest[keep], entry[keep]
    c = entry + rng.exponential(60.0, t.size)
    obs = t <= c
    w = rng.uniform(0.2, 3.0, t.size)
    return CensoredSpells(np.where(obs, t, c), np.where(obs, dest, -1), n_codes, w, entry)


# -- delayed entry and weights against lifelines ----------------------------------------------


# lifelines warns that its variance estimates are naive under non-integer weights; no
# variance is compared here.
@pytest.mark.filterwarnings("ignore:It looks like your weights are not integers")
@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_delayed_entry_matches_lifelines(seed):
    lifelines = pytest.importorskip("lifelines")
    s = delayed_sample(seed)
    assert np.unique(s.durations).size == s.n  # no ties: lifelines would jitter them
    aj = aalen_johansen(s)
    obs = s.destinations >= 0
    km = lifelines.KaplanMeierFitter().fit(
        s.durations, event_observed=obs, entry=s.entries, weights=s.weights
    )
    at = km.survival_function_.index.to_numpy(dtype=float)
    at = at[at > 0]
    surv, _ = aj.evaluate(at)
    ref = km.survival_function_.loc[at].iloc[:, 0].to_numpy()
    np.testing.assert_allclose(surv, ref, atol=1e-10)
    event = np.where(obs, s.destinations, 0)
    for j in range(1, s.n_codes):
        ajf = lifelines.AalenJohansenFitter(calculate_variance=False).fit(
            s.durations, event, event_of_interest=j, entry=s.entries, weights=s.weights
        )
        t_ref = ajf.cumulative_density_.index.to_numpy(dtype=float)
        t_ref = t_ref[t_ref > 0]
        _, fj = aj.evaluate(t_ref)
        np.testing.assert_allclose(
            fj[j], ajf.cumulative_density_.loc[t_ref].iloc[:, 0].to_numpy(), atol=1e-10
        )


def test_delayed_entry_by_hand():
    # spell a: entry 0, exit at 2 (dest 1); b: entry 3, exit at 5 (dest 2);
    # c: entry 0, censored at 4; d: entry 1, exit at 6 (dest 1)
    s = CensoredSpells([2.0, 5.0, 4.0, 6.0], [1, 2, -1, 1], 3, entries=[0.0, 3.0, 0.0, 1.0])
    aj = aalen_johansen(s)
    # at 2: a, c, d at risk (b enters at 3); at 5: b, d; at 6: d
    assert aj.times.tolist() == [2.0, 5.0, 6.0]
    assert aj.at_risk.tolist() == [3.0, 2.0, 1.0]
    np.testing.assert_allclose(aj.survival, [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(aj.cif[1], [1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(aj.cif[2], [0.0, 1 / 3, 1 / 3])


def test_entries_are_checked():
    with pytest.raises(ParameterError, match="`entries`"):
        CensoredSpells([2.0, 5.0], [1, -1], 3, entries=[0.0, 6.0])
    with pytest.raises(ParameterError, match="`entries`"):
        CensoredSpells([2.0], [1], 3, entries=[-1.0])
    s = CensoredSpells([2.0, 5.0], [1, -1], 3, entries=[0.0, 0.0])
    assert s.entries is None  # no delayed entry: the plain estimator
    assert s.subset([1]).n == 1


# -- recency: per-spell weights give exactly the calendar-time weighted risk sets -------------


def test_entry_weights_equal_calendar_time_weighted_hazards():
    """Weighting each at-risk contribution by the recency of its calendar time.

    At sojourn time t a spell entered at e is at calendar time e + t; its weight
    2^(-(t0 - e - t)/h) is its entry weight times 2^(t/h), a factor common to every
    spell at risk at t, so it cancels in every hazard ratio. The reference computes
    the hazards with the time-varying weights directly.
    """
    rng = np.random.default_rng(7)
    n, h, t0 = 400, 120.0, 1000.0
    entered = rng.uniform(0.0, 900.0, n)
    t = rng.gamma(1.3, 30.0, n)
    dest = rng.integers(1, 3, n)
    c = t0 - entered  # censored at the as-of instant
    obs = t <= c
    dur = np.where(obs, t, c)
    j = np.where(obs, dest, -1)
    aj = aalen_johansen(CensoredSpells(dur, j, 3, recency_weights(t0 - entered, h)))
    surv, cif = 1.0, np.zeros(3)
    ref_s, ref_f = [], []
    for time in np.unique(dur[obs]):
        w = 2.0 ** (-(t0 - entered - time) / h)  # the weight at calendar time entered + time
        at_risk = float(w[dur >= time].sum())
        d = np.array([w[(dur == time) & (j == k)].sum() for k in range(3)])
        cif = cif + surv * d / at_risk
        surv = surv * (1.0 - d.sum() / at_risk)
        ref_s.append(surv)
        ref_f.append(cif.copy())
    np.testing.assert_allclose(aj.survival, ref_s, rtol=1e-10)
    np.testing.assert_allclose(aj.cif.T, np.array(ref_f), rtol=1e-9, atol=1e-14)


@pytest.mark.filterwarnings("ignore:It looks like your weights are not integers")
def test_entry_weights_equal_lifelines_on_calendar_pieces():
    """The same identity against lifelines, with weights that change with calendar time.

    Each spell (delayed entries included) is split between consecutive exit times
    into pieces that each hold one exit time ``t_k`` it is at risk at; a piece
    weighs the recency of the calendar instant ``entered + t_k``, the spell's weight
    at that exit time. lifelines' weighted Aalen–Johansen with delayed entry on the
    pieces must give the curves of the per-spell entry weights.
    """
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(3)
    n, h, t0 = 120, 90.0, 600.0
    entered = rng.uniform(0.0, 560.0, n)  # calendar day of the stage entry
    t = rng.gamma(1.4, 25.0, n)
    dest = rng.integers(1, 3, n)
    late = np.where(rng.random(n) < 0.3, rng.uniform(0.0, 20.0, n), 0.0)  # delayed entry
    keep = (t > late) & (t0 - entered > late)
    entered, t, dest, late = entered[keep], t[keep], dest[keep], late[keep]
    # a spell still in the stage long after every other: lifelines' at-risk weights,
    # sums of entries minus exits, never round to a tiny negative number
    entered, t = np.append(entered, -400.0), np.append(t, 2000.0)
    dest, late = np.append(dest, 1), np.append(late, 0.0)
    c = t0 - entered  # censored at the as-of instant
    obs = t <= c
    dur = np.where(obs, t, c)
    j = np.where(obs, dest, -1)
    assert np.unique(dur).size == dur.size  # no ties: lifelines would jitter them
    spells = CensoredSpells(dur, j, 3, recency_weights(t0 - entered, h), late)
    aj = aalen_johansen(spells)
    grid = np.unique(dur[obs])
    start, stop, event, weight = [], [], [], []
    for i in range(dur.size):
        at = grid[(grid > late[i]) & (grid <= dur[i])]  # the exit times it is at risk at
        # cut between consecutive exit times (at a point of its own, so that lifelines
        # never sees every spell leave and re-enter at once)
        cuts = at[:-1] + rng.uniform(0.1, 0.9) * np.diff(at)
        start.extend(np.concatenate(([late[i]], cuts)))
        stop.extend(np.append(cuts, dur[i]))
        event.extend([0] * cuts.size + [max(int(j[i]), 0)])
        weight.extend(2.0 ** (-(t0 - entered[i] - at) / h) if at.size else [1.0])
    start, stop = np.asarray(start), np.asarray(stop)
    event, weight = np.asarray(event), np.asarray(weight)
    surv, cif = aj.evaluate(grid)
    total = np.zeros(grid.size)
    for k in (1, 2):
        ajf = lifelines.AalenJohansenFitter(calculate_variance=False).fit(
            stop, event, event_of_interest=k, entry=start, weights=weight
        )
        ref_k = ajf.cumulative_density_.loc[grid].iloc[:, 0].to_numpy()
        np.testing.assert_allclose(cif[k], ref_k, rtol=1e-9, atol=1e-12)
        total += ref_k
    np.testing.assert_allclose(surv, 1.0 - total, rtol=1e-9, atol=1e-12)


def test_recency_weights_halve_every_half_life():
    np.testing.assert_allclose(recency_weights([0.0, 100.0, 200.0], 100.0), [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(recency_weights([0.0, 1e4], None), [1.0, 1.0])


# -- weighted arrivals, shocks and tails against scipy -----------------------------------------


def test_weighted_poisson_glm_maximises_the_weighted_likelihood():
    rng = np.random.default_rng(3)
    n = 12
    x = np.linspace(-3.0, 0.0, n)
    X = np.column_stack([np.ones(n), x])
    offset = np.log(rng.uniform(0.5, 1.0, n))
    y = rng.poisson(np.exp(3.0 + 0.2 * x + offset)).astype(float)
    om = recency_weights(-x * 365.25, 365.0)
    beta, info, ok = poisson_glm(y, X, offset, weights=om)
    assert ok

    def nll(b):
        eta = X @ b + offset
        return -float(np.sum(om * (y * eta - np.exp(eta))))

    ref = optimize.minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(beta, ref.x, atol=1e-6)
    mu = np.exp(X @ beta + offset)
    np.testing.assert_allclose(info, X.T @ ((om * mu)[:, None] * X), rtol=1e-12)


def test_weighted_reml_reduces_to_unweighted_with_unit_weights():
    rng = np.random.default_rng(4)
    v = rng.uniform(0.01, 0.05, 10)
    y = rng.normal(0.0, np.sqrt(v + 0.09))
    X = np.ones((10, 1))
    a = reml_shock_variance(y, v, X)
    b = reml_shock_variance(y, v, X, np.ones(10))
    np.testing.assert_allclose(a, b, rtol=1e-12)
    # doubling one period's weight is the same as repeating it
    c = reml_shock_variance(y, v, X, np.r_[2.0, np.ones(9)])
    d = reml_shock_variance(np.r_[y[0], y], np.r_[v[0], v], np.ones((11, 1)))
    np.testing.assert_allclose(c[0], d[0], atol=1e-6)


@pytest.mark.parametrize("family", ["exponential", "weibull", "lognormal"])
def test_tail_fit_with_delayed_entries_maximises_the_truncated_likelihood(family):
    rng = np.random.default_rng(11)
    n = 600
    dist = {"exponential": stats.expon(scale=40.0), "weibull": stats.weibull_min(1.4, scale=40.0),
            "lognormal": stats.lognorm(0.8, scale=30.0)}[family]  # fmt: skip
    t = dist.rvs(size=n, random_state=rng)
    e = np.where(rng.random(n) < 0.5, rng.uniform(0.0, 40.0, n), 0.0)
    keep = t > e
    t, e = t[keep], e[keep]
    c = e + rng.exponential(100.0, t.size)
    obs = t <= c
    x = np.where(obs, t, c)
    w = rng.uniform(0.5, 2.0, t.size)
    fit = fit_tail(x, obs, [family], w, entries=e, duration_floor=1e-9)
    cand = fit.candidates[0]

    def logpdf_sf(p):
        if family == "exponential":
            d = stats.expon(scale=p[0])
        elif family == "weibull":
            d = stats.weibull_min(p[0], scale=p[1])
        else:
            d = stats.lognorm(p[0], scale=p[1])
        return d

    def nll(log_p):
        d = logpdf_sf(np.exp(log_p))
        ll = np.where(obs, d.logpdf(x), d.logsf(x)) - np.where(e > 0, d.logsf(e), 0.0)
        return -float(np.dot(w, ll))

    order = {
        "exponential": ["scale"],
        "weibull": ["shape", "scale"],
        "lognormal": ["sigma", "scale"],
    }
    p0 = np.log([cand.params[k] for k in order[family]])
    ref = optimize.minimize(
        nll,
        p0 + 0.1,
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 20000},
    )
    assert cand.log_likelihood == pytest.approx(-ref.fun, abs=1e-5)
    np.testing.assert_allclose(p0, ref.x, atol=1e-3)


# -- the half-life choice -------------------------------------------------------------------


def test_select_half_life_is_the_one_standard_error_rule():
    cands = (None, 365.0, 182.0)
    # 182 days is best (mean 9.275); 365 (mean 9.3) within one SE of the paired
    # differences (mean 0.025, SE 0.075); none (mean 11.5) clearly worse
    crps = np.array([[10.0, 12.0, 11.0, 13.0], [9.0, 9.3, 9.3, 9.6], [9.1, 9.4, 9.1, 9.5]])
    i, mean, se = select_half_life(cands, crps)
    assert cands[i] == 365.0
    assert mean[2] == mean.min() and se[2] == 0.0
    # one origin: the best
    assert select_half_life(cands, crps[:, :1])[0] in (1, 2)
    with pytest.raises(ParameterError, match="`crps`"):
        select_half_life(cands, crps[:2])


def test_check_half_life():
    assert check_half_life("auto", "fit") == "auto"
    assert check_half_life(None, "fit") is None
    assert check_half_life(90, "fit") == 90.0
    for bad in (0, -3.0, "weekly", math.inf):
        with pytest.raises(ParameterError, match="half_life"):
            check_half_life(bad, "fit")


def test_half_life_choice_round_trips():
    c = HalfLifeChoice(
        365.0, "auto", (None, 365.0), (dt.datetime(2024, 1, 1), dt.datetime(2024, 4, 1)),
        ((3.0, 4.0), (2.0, 3.5)), (10.0, 11.0), 1, 200, 3,
    )  # fmt: skip
    back = HalfLifeChoice.from_dict(c.to_dict())
    assert back.to_dict() == c.to_dict()
    t = back.table()
    assert t["chosen"].to_list() == [False, True]
    assert t["relative_to_none"][1] == pytest.approx(2.75 / 3.5)
    assert "365 days" in back.describe() and "*" in back.scores_text()


# -- FitData ----------------------------------------------------------------------------------


def test_fit_data_recency_multiplies_the_deal_weights(sample_log):
    data = FitData.from_log(sample_log, as_of="2024-10-01", segment_by=["segment"])
    weighted = data.with_half_life(180.0)
    a = data.spell_arrays
    for k, g in ((0, 0), (2, 1)):
        rows = a.order[
            a.offsets[k * len(data.segments) + g] : a.offsets[k * len(data.segments) + g + 1]
        ]
        cs = weighted.stratum_spells(k, g)
        np.testing.assert_allclose(cs.weights, 2.0 ** (-a.days_before_as_of[rows] / 180.0))
    w = np.random.default_rng(0).uniform(0.5, 2.0, data.n_deals)
    both = weighted.with_weights(w)
    assert both.half_life == 180.0
    cs = both.stratum_spells(1)
    rows = a.stage_order[a.stage_offsets[1] : a.stage_offsets[2]]
    np.testing.assert_allclose(
        cs.weights, w[a.deal[rows]] * 2.0 ** (-a.days_before_as_of[rows] / 180.0)
    )
    times = pl.Series([dt.datetime(2024, 10, 1), dt.datetime(2024, 3, 30), None])
    np.testing.assert_allclose(weighted.recency(times), [1.0, 2.0 ** (-185 / 180.0), 1.0])
    assert data.recency(times).tolist() == [1.0, 1.0, 1.0]
    assert weighted.with_half_life(None).stratum_spells(1).weights.tolist() == [1.0] * cs.n


def test_fitted_pooled_curves_are_the_aalen_johansen_weighted_by_stage_entry(sample_log):
    """End to end: a weighted fit's pooled exit curves are the Aalen–Johansen estimate
    with every spell weighted by the recency of its stage entry, written out here from
    the log's spells (weighting by exit or creation instead gives other curves)."""
    as_of, h = dt.datetime(2024, 10, 1), 120.0
    model = forecast.fit(sample_log, as_of=as_of, segment_by=["segment"], n_draws=0,
                         half_life=h)  # fmt: skip
    spells = sample_log.spells(as_of)
    n_codes = model.stages.n_codes
    compared = 0
    for k in range(model.stages.n_open):
        s = spells.filter(pl.col("stage_code") == k)
        t = s["duration_days"].to_numpy()
        dest = s["destination_code"].to_numpy()
        exited = ~s["censored"].to_numpy()
        age = np.array([(as_of - e).total_seconds() / 86400.0 for e in s["entered_at"]])
        w = 2.0 ** (-age / h)
        surv, cif, grid = 1.0, np.zeros(n_codes), model.pooled_curves[k].cif_grid
        expected = np.zeros_like(grid)
        times = np.unique(t[exited])
        for i, ti in enumerate(times):
            at_risk = w[t >= ti].sum()
            here = exited & (t == ti)
            d = np.bincount(dest[here], weights=w[here], minlength=n_codes)
            cif = cif + surv * d / at_risk
            surv *= 1.0 - d.sum() / at_risk
            upto = grid.shape[1] if i + 1 == times.size else math.ceil(times[i + 1])
            expected[:, math.ceil(ti) : upto] = cif[:, None]
        np.testing.assert_allclose(grid, expected, atol=1e-12)
        compared += int(exited.sum())
    assert compared > 1000


# -- the automatic choice in a fit ------------------------------------------------------------


def test_auto_half_life_is_deterministic_and_saved(sample_log, sample_model, sample_fit_arguments):
    choice = sample_model.recency
    assert choice.requested == "auto" and choice.scored
    assert len(choice.origins) == 4 and len(choice.crps) == len(choice.candidates)
    assert choice.half_life == choice.candidates[choice.chosen_index]
    i, _, _ = select_half_life(choice.candidates, np.asarray(choice.crps))
    assert i == choice.chosen_index
    # the same seed gives the same scores (parameter draws do not enter the choice)
    again = forecast.fit(sample_log, **{**sample_fit_arguments, "n_draws": 0}).recency
    assert again.to_dict() == choice.to_dict()
    other = forecast.fit(sample_log, **{**sample_fit_arguments, "n_draws": 0, "seed": 9})
    assert other.recency.crps != choice.crps
    back = forecast.PipelineModel.from_json(sample_model.to_json())
    assert back.recency.to_dict() == choice.to_dict()
    s = sample_model.summary()
    h = s["half_life_days"].unique().to_list()
    assert h == [choice.half_life]
    assert s["half_life_scores"][0] == choice.scores_text()


def test_auto_scores_equal_one_plain_fit_and_simulation_per_candidate(sample_log, sample_model):
    # the backtest shares the origin's cut, pipeline and bookings among the candidates;
    # each score must equal fitting that candidate on its own and simulating it from
    # the whole log, scored against the log's own booked amount
    choice = sample_model.recency
    options = scoring_options(FitOptions())
    for i in (0, len(choice.origins) - 1):
        origin = choice.origins[i]
        quarter = sample_model.calendar.quarter_of(origin)
        realised = sample_log.booked_amount(quarter.start, quarter.end)
        assert choice.booked[i] == pytest.approx(realised, rel=1e-12)
        data = FitData.from_log(sample_log, as_of=origin, segment_by=sample_model.segment_by)
        for j, h in enumerate(choice.candidates):
            d = data.with_half_life(h)
            model = assemble_model(d, fit_components(d, options), None, options={"n_draws": 0})
            total = simulate_quarter_totals(model, sample_log, choice.n_paths, choice.seed + i)
            assert choice.crps[j][i] == pytest.approx(crps_samples(total, realised), rel=1e-12)


def test_large_history_is_backtested_on_every_kth_deal(sample_log, sample_fit_arguments):
    # with at most 1,000 deals scored, the 3,160-deal sample is backtested on every 4th
    # deal id (sorted): the same scores as backtesting a log of only those deals
    data = FitData.from_log(sample_log, as_of="2025-01-01", segment_by=["segment"])
    sampled = choose_half_life(sample_log, data=data, options=FitOptions(), max_deals=1000)
    step = math.ceil(sample_log.n_deals / 1000)
    assert sampled.deal_step == step == 4
    ids = sample_log.events["deal_id"].unique().sort()
    kept = ids.gather(np.arange(0, ids.len(), step))
    small = forecast.DealLog(
        sample_log.events.filter(pl.col("deal_id").is_in(kept.implode())),
        sample_log.stages,
        sample_log.segment_columns,
        sample_log.report,
    )
    small_data = FitData.from_log(small, as_of="2025-01-01", segment_by=["segment"])
    plain = choose_half_life(small, data=small_data, options=FitOptions(), max_deals=None)
    assert plain.deal_step == 1
    assert sampled.origins == plain.origins and sampled.booked == plain.booked
    assert sampled.crps == plain.crps and sampled.half_life == plain.half_life
    assert "every 4th deal" in sampled.describe()
    assert HalfLifeChoice.from_dict(sampled.to_dict()).deal_step == 4
    # below the cap nothing is sampled
    whole = choose_half_life(sample_log, data=data, options=FitOptions())
    assert whole.deal_step == 1 and "deal_step" not in whole.to_dict()


def test_given_half_life_is_used_by_every_draw(sample_log):
    m = forecast.fit(sample_log, as_of="2024-07-01", segment_by=["segment"], n_draws=2,
                     half_life=120)  # fmt: skip
    assert m.recency.half_life == 120.0 and m.recency.requested == 120.0
    assert "given" in m.recency.describe()
    with pytest.raises(ParameterError, match="half_life"):
        forecast.fit(sample_log, as_of="2024-07-01", half_life="weekly")
