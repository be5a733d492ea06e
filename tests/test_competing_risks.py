"""Tests of forecast.fit.competing_risks: Aalen–Johansen, ExitCurves, chain quantities.

References: lifelines' AalenJohansenFitter / KaplanMeierFitter (independent
implementations), hand-computed tie examples, the absorbing-chain closed form
B = (I − Q)⁻¹ R and the continuous-time Markov chain expm(G t) for exponential
sojourns.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import scipy.linalg

from forecast.errors import ModelError, ParameterError
from forecast.fit.competing_risks import (
    CensoredSpells,
    ExitCurves,
    TailPiece,
    aalen_johansen,
    absorption_probabilities,
    fit_exit_curves,
    win_probability,
    win_time_density,
)
from forecast.fit.tails import TailFit

# -- helpers ------------------------------------------------------------------------------------


def competing_sample(
    seed: int, n: int, n_codes: int = 5, censor_scale: float = 40.0
) -> CensoredSpells:
    """Continuous (tie-free) durations; destinations 1..n_codes-1 with different speeds."""
    rng = np.random.default_rng(seed)
    dest = rng.integers(1, n_codes, n)
    t = rng.gamma(1.5, 4.0 * dest)  # later codes are slower: destination-dependent durations
    c = rng.exponential(censor_scale, n)
    obs = t <= c
    return CensoredSpells(np.where(obs, t, c), np.where(obs, dest, -1), n_codes=n_codes)


# Exponential semi-Markov chain: 3 open stages, WON=3, LOST=4, NO_DECISION=5.
P_CHAIN = np.array(
    [
        [0.0, 0.55, 0.05, 0.0, 0.30, 0.10],
        [0.10, 0.0, 0.50, 0.0, 0.30, 0.10],
        [0.0, 0.10, 0.0, 0.55, 0.35, 0.0],
    ]
)
RATE_CHAIN = np.array([1 / 15, 1 / 25, 1 / 20])  # exits per day
WON = 3


def exact_exponential_curves(k: int, big_d: int = 200) -> ExitCurves:
    """Exact ExitCurves of stage k of the chain: F_j(t) = P_kj (1 − exp(−λ_k t))."""
    d = np.arange(big_d + 1.0)
    cif = P_CHAIN[k][:, None] * (1.0 - np.exp(-RATE_CHAIN[k] * d))[None, :]
    tail = TailFit("exponential", {"scale": 1 / RATE_CHAIN[k]}, 0.0, 0.0)
    piece = TailPiece(float(np.exp(-RATE_CHAIN[k] * big_d)), 0.0, tail, P_CHAIN[k])
    return ExitCurves(cif, (piece,), np.zeros(6, dtype=np.int64), 0)


def chain_closed_form() -> np.ndarray:
    q, r = P_CHAIN[:, :3], P_CHAIN[:, 3:]
    return np.linalg.solve(np.eye(3) - q, r)


def simulate_chain_spells(seed: int, n_deals: int, horizon: float) -> list[CensoredSpells]:
    """Walk deals created uniformly on [0, horizon] through the chain; cut at `horizon`."""
    rng = np.random.default_rng(seed)
    clock = rng.uniform(0.0, horizon, n_deals)
    stage = np.zeros(n_deals, dtype=np.int64)
    alive = np.ones(n_deals, dtype=bool)
    out: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(3)]
    cum = np.cumsum(P_CHAIN, axis=1)
    while alive.any():
        idx = np.flatnonzero(alive)
        st = stage[idx]
        t = rng.exponential(1.0 / RATE_CHAIN[st])
        dest = (rng.random(idx.size)[:, None] > cum[st]).sum(axis=1)
        censored = clock[idx] + t > horizon
        dur = np.where(censored, horizon - clock[idx], t)
        for k in range(3):
            m = st == k
            out[k].append((dur[m], np.where(censored[m], -1, dest[m])))
        clock[idx] += t
        moved = ~censored & (dest < 3)
        stage[idx[moved]] = dest[moved]
        alive[idx[~moved]] = False
    return [
        CensoredSpells(
            np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts]), n_codes=6
        )
        for parts in out
    ]


# -- CensoredSpells -----------------------------------------------------------------------------


def test_censored_spells_validates_and_summarises():
    s = CensoredSpells([1.0, 2.5, 3.0, 4.0], [2, -1, 2, 0], n_codes=3)
    assert s.n == 4 and s.n_censored == 1
    assert s.event_counts.tolist() == [1, 0, 2]
    text = str(s)
    assert "n=4" in text and "exits=3" in text and "censored=1" in text and "2: 2" in text
    assert not s.durations.flags.writeable
    with pytest.raises(ParameterError, match=r"`durations`.*-1.0 at index 1"):
        CensoredSpells([1.0, -1.0], [0, 0], n_codes=2)
    with pytest.raises(ParameterError, match=r"`destinations`.*Got 5 at index 0"):
        CensoredSpells([1.0], [5], n_codes=3)
    with pytest.raises(ParameterError, match="`weights`"):
        CensoredSpells([1.0], [0], n_codes=3, weights=[-2.0])
    with pytest.raises(ParameterError, match="shape"):
        CensoredSpells([1.0, 2.0], [0], n_codes=3)
    with pytest.raises(ParameterError, match="`n_codes`"):
        CensoredSpells([1.0], [0], n_codes=0)
    rc = CensoredSpells.right_censored([1.0, 2.0], [False, True], [1, 1], n_codes=2)
    assert rc.destinations.tolist() == [1, -1]


# -- Aalen–Johansen against lifelines -----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_aalen_johansen_matches_lifelines(seed):
    lifelines = pytest.importorskip("lifelines")
    s = competing_sample(seed, 400)
    assert np.unique(s.durations).size == s.n  # no ties, so lifelines does not jitter
    aj = aalen_johansen(s)
    event = np.where(s.destinations < 0, 0, s.destinations)
    for j in range(1, s.n_codes):
        ref = lifelines.AalenJohansenFitter(calculate_variance=False).fit(
            s.durations, event, event_of_interest=j
        )
        at = ref.cumulative_density_.index.to_numpy(dtype=float)
        _, f = aj.evaluate(at)
        np.testing.assert_allclose(f[j], ref.cumulative_density_.iloc[:, 0].to_numpy(), atol=1e-10)
    km = lifelines.KaplanMeierFitter().fit(s.durations, event_observed=s.destinations >= 0)
    at = km.survival_function_.index.to_numpy(dtype=float)
    surv, f = aj.evaluate(at)
    np.testing.assert_allclose(surv, km.survival_function_.iloc[:, 0].to_numpy(), atol=1e-10)
    np.testing.assert_allclose(f.sum(axis=0), 1.0 - surv, atol=1e-12)


def test_aalen_johansen_ties_by_hand():
    # times: 1 exit(1); 2: exit(1), exit(2), censored; 3: censored; 4: exit(2)
    s = CensoredSpells([1, 2, 2, 2, 3, 4], [1, 1, 2, -1, -1, 2], n_codes=3)
    aj = aalen_johansen(s)
    # at risk 6, 5, 1 (the spell censored at 2 is at risk at 2: exits before censorings)
    assert aj.times.tolist() == [1.0, 2.0, 4.0]
    assert aj.at_risk.tolist() == [6.0, 5.0, 1.0]
    s1, s2 = 5 / 6, 5 / 6 * 3 / 5
    np.testing.assert_allclose(aj.survival, [s1, s2, 0.0], atol=1e-15)
    np.testing.assert_allclose(aj.cif[1], [1 / 6, 1 / 6 + s1 / 5, 1 / 6 + s1 / 5], atol=1e-15)
    np.testing.assert_allclose(aj.cif[2], [0.0, s1 / 5, s1 / 5 + s2], atol=1e-15)


def test_integer_weights_equal_duplicated_rows():
    s = competing_sample(3, 150)
    reps = np.random.default_rng(9).integers(0, 4, s.n)
    weighted = aalen_johansen(s.with_weights(reps.astype(float)))
    dup = aalen_johansen(
        CensoredSpells(
            np.repeat(s.durations, reps), np.repeat(s.destinations, reps), n_codes=s.n_codes
        )
    )
    np.testing.assert_array_equal(weighted.times, dup.times)
    np.testing.assert_allclose(weighted.survival, dup.survival, atol=1e-13)
    np.testing.assert_allclose(weighted.cif, dup.cif, atol=1e-13)
    cw = fit_exit_curves(s.with_weights(reps.astype(float)))
    cd = fit_exit_curves(
        CensoredSpells(
            np.repeat(s.durations, reps), np.repeat(s.destinations, reps), n_codes=s.n_codes
        )
    )
    grid = np.linspace(0.0, 300.0, 61)
    np.testing.assert_allclose(cw.cif(grid), cd.cif(grid), atol=1e-7)


def test_aalen_johansen_empty_and_all_censored():
    assert aalen_johansen(CensoredSpells([], [], n_codes=3)).times.size == 0
    aj = aalen_johansen(CensoredSpells([1.0, 2.0], [-1, -1], n_codes=3))
    assert aj.times.size == 0 and aj.cif.shape == (3, 0)


# -- ExitCurves ---------------------------------------------------------------------------------


def test_grid_equals_step_function_and_density_conserves_mass():
    s = competing_sample(4, 500)
    aj = aalen_johansen(s)
    cv = fit_exit_curves(s)
    big_d = math.ceil(s.durations.max())
    assert cv.cif_grid.shape == (s.n_codes, big_d + 1)
    _, f = aj.evaluate(np.arange(big_d + 1.0))
    np.testing.assert_allclose(cv.cif_grid, f, atol=1e-15)
    for max_days in (1, 17, big_d, 3 * big_d):
        dens = cv.exit_density(max_days)
        assert dens.shape == (s.n_codes, max_days)
        assert dens.min() >= 0
        assert dens.sum() + cv.survival(float(max_days)) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(cv.eventual_shares().sum(), 1.0, atol=1e-12)


def test_tail_continues_survival_beyond_last_day():
    cv = fit_exit_curves(competing_sample(5, 300))
    big_d = float(cv.max_day)
    t = big_d + np.array([0.5, 10.0, 100.0])
    expected = cv.survival(big_d) * cv.tail.survival(t) / cv.tail.survival(big_d)
    np.testing.assert_allclose(cv.survival(t), expected, rtol=1e-12)
    # exits beyond D go by tail_shares
    inc = cv.cif(t[-1]) - cv.cif(big_d)
    np.testing.assert_allclose(inc, cv.tail_shares * inc.sum(), atol=1e-14)


def test_conditional_on_age_formula():
    s = competing_sample(6, 400)
    # the longest spell is an exit here, so nobody survives past D: conditioning there fails
    assert s.destinations[np.argmax(s.durations)] >= 0
    dead = fit_exit_curves(s)
    assert dead.survival(dead.max_day + 1.0) == 0.0
    with pytest.raises(ModelError, match="`age`"):
        dead.conditional_on_age(dead.max_day + 5.5)
    # add a spell censored beyond the last exit: the tail carries mass past D
    longer = CensoredSpells(
        np.r_[s.durations, s.durations.max() + 10.0], np.r_[s.destinations, -1], n_codes=s.n_codes
    )
    cv = fit_exit_curves(longer)
    for age in (0.0, 7.0, 12.3, cv.max_day + 5.5, cv.max_day + 80.0):
        cond = cv.conditional_on_age(age)
        t = np.arange(0.0, 60.0)  # exact at integer days from now
        expected = (cv.cif(age + t) - cv.cif(age)[:, None]) / cv.survival(age)
        np.testing.assert_allclose(cond.cif(t), expected, atol=1e-9)
        np.testing.assert_allclose(
            cond.survival(t), cv.survival(age + t) / cv.survival(age), rtol=1e-9
        )
        assert cond.eventual_shares().sum() == pytest.approx(1.0, abs=1e-9)


def test_mixed_is_the_mixture():
    a = fit_exit_curves(competing_sample(7, 300))
    b = fit_exit_curves(competing_sample(8, 2000, censor_scale=80.0))
    m = a.mixed(b, 0.3)
    t = np.array([0.0, 1.0, 5.0, 20.0, float(a.max_day), float(b.max_day), 1000.0])
    np.testing.assert_allclose(m.cif(t), 0.3 * a.cif(t) + 0.7 * b.cif(t), atol=1e-12)
    np.testing.assert_allclose(
        m.eventual_shares(), 0.3 * a.eventual_shares() + 0.7 * b.eventual_shares(), atol=1e-12
    )
    assert a.mixed(b, 1.0).cif(t) == pytest.approx(a.cif(t), abs=1e-12)
    with pytest.raises(ParameterError, match="`weight`"):
        a.mixed(b, 1.5)


def test_scaled_stretches_clock_and_reweights_destinations():
    cv = fit_exit_curves(competing_sample(10, 600))
    slow = cv.scaled(1.5)
    # exact at the new grid's integer days and in the tail (linear in between)
    t_new = np.array([0.0, 3.0, 12.0, 40.0, 400.0, 600.5])
    np.testing.assert_allclose(slow.cif(t_new), cv.cif(t_new / 1.5), atol=1e-12)
    assert slow.median() == pytest.approx(1.5 * cv.median(), rel=1e-6)
    m = np.array([1.0, 1.0, 2.0, 1.0, 0.5])
    re = cv.scaled(1.0, m)
    shares = cv.eventual_shares()
    expected = m * shares / np.dot(m, shares) * shares.sum()
    np.testing.assert_allclose(re.eventual_shares(), expected, atol=1e-12)
    assert re.eventual_shares().sum() == pytest.approx(shares.sum(), abs=1e-12)
    with pytest.raises(ParameterError, match="`time_factor`"):
        cv.scaled(0.0)


def test_json_roundtrip_is_exact():
    a = fit_exit_curves(competing_sample(11, 300))
    b = fit_exit_curves(competing_sample(12, 500))
    cv = a.mixed(b, 0.4).scaled(1.2, np.ones(5)).conditional_on_age(3.0)
    back = ExitCurves.from_dict(json.loads(json.dumps(cv.to_dict(), allow_nan=False)))
    t = np.linspace(0.0, 800.0, 81)
    np.testing.assert_array_equal(back.cif(t), cv.cif(t))
    assert back.tail.family == cv.tail.family


def test_median_matches_kaplan_meier_for_exponential():
    # Large uncensored exponential sample: the KM median estimates ln 2 × mean with
    # sd ≈ mean × 1/sqrt(n) (asymptotic sd of the sample median of Exp: 1/(λ sqrt(n))).
    n, mean = 20000, 30.0
    rng = np.random.default_rng(13)
    t = rng.exponential(mean, n)
    cv = fit_exit_curves(CensoredSpells(t, np.ones(n, dtype=np.int64), n_codes=2))
    assert abs(cv.median() - mean * math.log(2)) < 4 * mean / math.sqrt(n) + 1.0  # + 1 day grid


def test_fit_needs_spells():
    with pytest.raises(ModelError, match="zero spells"):
        fit_exit_curves(CensoredSpells([], [], n_codes=3))


# -- chain quantities ---------------------------------------------------------------------------


def test_absorption_closed_form_with_exact_curves():
    curves = [exact_exponential_curves(k) for k in range(3)]
    np.testing.assert_allclose(absorption_probabilities(curves), chain_closed_form(), atol=1e-12)
    for k in range(3):
        assert win_probability(curves, k, WON) == pytest.approx(
            chain_closed_form()[k, 0], abs=1e-12
        )


@pytest.mark.parametrize("within", [10.0, 30.0, 90.5, 365.0])
def test_win_within_days_matches_markov_chain(within):
    # Continuous-time chain with generator G: P(won by t) = expm(G t)[start, WON].
    # The day-grid convolution treats exits as uniform within a day; with rates
    # ≤ 1/15 per day its error is O((λ · 1 day)²) ≈ 4e-3 relative, so ≤ 1e-4 absolute.
    curves = [exact_exponential_curves(k) for k in range(3)]
    gen = np.zeros((6, 6))
    for k in range(3):
        gen[k] = RATE_CHAIN[k] * P_CHAIN[k]
        gen[k, k] = -RATE_CHAIN[k]
    for start in range(3):
        ref = scipy.linalg.expm(gen * within)[start, WON]
        got = win_probability(curves, start, WON, within=within)
        assert abs(got - ref) < 1e-4
        # memoryless sojourns: age does not matter
        assert win_probability(curves, start, WON, age=40.0, within=within) == pytest.approx(
            got, abs=1e-9
        )
    dens = win_time_density(curves, 0, WON, max_days=3000)
    assert dens.sum() == pytest.approx(chain_closed_form()[0, 0], abs=1e-6)


def test_absorption_from_simulated_chain_within_sampling_error():
    spells = simulate_chain_spells(seed=21, n_deals=4000, horizon=720.0)
    curves = [fit_exit_curves(s) for s in spells]
    got = absorption_probabilities(curves)
    true_b = chain_closed_form()
    # Delta method: B = N R, N = (I − Q)⁻¹; ∂B[a, won]/∂P[k, :] = N[a, k] v with
    # v_j = B[j, won] for open j, 1 for won, 0 for the other terminals. With the
    # destination mix of stage k estimated from n_k exits (sojourns are exponential,
    # so censoring is independent of destination and the mix is multinomial),
    # Var B̂[a, won] ≈ Σ_k N[a, k]² Var_{P_k}(v) / n_k. Tolerance: 4 standard errors.
    n_mat = np.linalg.inv(np.eye(3) - P_CHAIN[:, :3])
    v = np.r_[true_b[:, 0], 1.0, 0.0, 0.0]
    var_v = np.array([P_CHAIN[k] @ v**2 - (P_CHAIN[k] @ v) ** 2 for k in range(3)])
    n_exits = np.array([s.event_counts.sum() for s in spells])
    for a in range(3):
        se = math.sqrt(np.sum(n_mat[a] ** 2 * var_v / n_exits))
        assert abs(got[a, 0] - true_b[a, 0]) < 4 * se, (a, got[a, 0], true_b[a, 0], se)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)


def _stale_stage_curves(seed: int) -> list[ExitCurves]:
    """Stage 0: 70% advance fast (Exp mean 12 d), 30% lost slowly (log-normal, median 120 d).
    Stage 1: won 60% / lost 40%, Exp mean 20 d. Codes: 0, 1 open; WON=2, LOST=3, ND=4."""
    rng = np.random.default_rng(seed)
    n = 4000
    adv = rng.random(n) < 0.7
    t0 = np.where(
        adv, rng.exponential(12.0, n), np.exp(math.log(120.0) + 0.8 * rng.standard_normal(n))
    )
    c0 = rng.uniform(0.0, 720.0, n)
    obs0 = t0 <= c0
    s0 = CensoredSpells(np.where(obs0, t0, c0), np.where(obs0, np.where(adv, 1, 3), -1), n_codes=5)
    won = rng.random(n) < 0.6
    t1 = rng.exponential(20.0, n)
    c1 = rng.uniform(0.0, 720.0, n)
    obs1 = t1 <= c1
    s1 = CensoredSpells(np.where(obs1, t1, c1), np.where(obs1, np.where(won, 2, 3), -1), n_codes=5)
    return [fit_exit_curves(s0), fit_exit_curves(s1)]


def test_age_conditioning_old_deals_rarely_win():
    curves = _stale_stage_curves(31)
    fresh = win_probability(curves, 0, 2)
    # truth 0.7 × 0.6 = 0.42; binomial se with ~4000 spells per stage ≈ 0.01, so 0.05 is > 4 se
    assert abs(fresh - 0.42) < 0.05
    ages = [0.0, 30.0, 100.0, 200.0]
    probs = [win_probability(curves, 0, 2, age=a) for a in ages]
    assert all(x > y for x, y in itertools.pairwise(probs))
    # truth at 200 days: 0.6 × 0.7 e^{-200/12} / (0.7 e^{-200/12} + 0.3 P(LN > 200)) < 1e-5
    assert probs[-1] < 0.1 * fresh
    assert win_probability(curves, 0, 2, age=200.0, within=90.0) < 0.1 * win_probability(
        curves, 0, 2, within=90.0
    )


def _late_loss_sample(seed: int, n: int = 3000) -> CensoredSpells:
    """Wins fast (Exp mean 15 d), losses slow (log-normal median 150 d), 50/50; entries
    uniform over a year and cut at its end, so most losses are censored."""
    rng = np.random.default_rng(seed)
    won = rng.random(n) < 0.5
    t = np.where(
        won, rng.exponential(15.0, n), np.exp(math.log(150.0) + 0.8 * rng.standard_normal(n))
    )
    cens = 365.0 - rng.uniform(0.0, 365.0, n)
    obs = t <= cens
    return CensoredSpells(np.where(obs, t, cens), np.where(obs, np.where(won, 1, 2), -1), n_codes=3)


@pytest.mark.slow
def test_censoring_naive_estimate_is_biased_aalen_johansen_is_not():
    def estimates(seed: int) -> tuple[float, float]:
        s = _late_loss_sample(seed)
        counts = s.event_counts
        return fit_exit_curves(s).eventual_shares()[1], counts[1] / counts.sum()

    # Sampling sd of both estimators from 200 independent replicates (seeds 1000..1199);
    # the sd estimate itself is good to ~5%.
    reps = np.array([estimates(1000 + i) for i in range(200)])
    sd_aj, sd_naive = reps.std(axis=0, ddof=1)
    aj, naive = estimates(7)
    assert abs(aj - 0.5) < 4 * sd_aj
    assert naive - 0.5 > 8 * sd_naive  # closed deals only: slow losses are missing
    assert abs(reps[:, 0].mean() - 0.5) < 4 * sd_aj / math.sqrt(200)  # AJ unbiased on average


def test_chain_argument_errors():
    curves = [exact_exponential_curves(k) for k in range(3)]
    with pytest.raises(ParameterError, match="`stage`"):
        win_probability(curves, 3, WON)
    with pytest.raises(ParameterError, match="`won_code`"):
        win_probability(curves, 0, 1)
    with pytest.raises(ParameterError, match="`curves_by_stage`"):
        absorption_probabilities([])


def test_win_within_long_horizon_equals_eventual_win():
    # Convolution route and linear-solve route agree once the horizon covers the mass:
    # what is left after 3000 days is ≤ S(3000 | age) of stage 0 (≤ 1.2e-8 at these ages,
    # checked below) plus stage 1's remainder (its curve ends at 0 survival).
    curves = _stale_stage_curves(32)
    for age in (0.0, 50.0, 300.0):
        left = float(curves[0].conditional_on_age(age).survival(3000.0))
        assert left < 2e-8
        eventual = win_probability(curves, 0, 2, age=age)
        within = win_probability(curves, 0, 2, age=age, within=3000.0)
        assert within <= eventual + 1e-12
        assert within == pytest.approx(eventual, abs=left + 1e-10)


def test_whole_day_reading_is_the_interpolation_bit_for_bit(sample_model):
    # exit_density and mixed read the grid's nodes directly instead of interpolating:
    # numpy.interp returns the nodes exactly, so nothing may change by a bit, on the grid,
    # across its end and in the tail (the fitted sample's curves, tails of every family)
    for curves in sample_model.curves.values():
        big_d = curves.max_day
        for first, n in ((0, big_d + 1), (1, big_d + 40), (0, 1), (big_d, 3), (big_d + 2, 5)):
            reference = curves._cif(np.arange(first, first + n, dtype=np.float64))
            np.testing.assert_array_equal(
                curves._cif_at_days(first, n).view(np.int64), reference.view(np.int64)
            )
