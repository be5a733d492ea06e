"""The day grid of the outcome kernels against a continuous-time simulation.

The kernels (:mod:`forecast._kernels.outcomes`) compute win-quarter probabilities on
one-day bins. Here the exit densities are binned from the synthetic generator's true
sojourn distributions (gamma moves and wins, gamma + log-normal losses), so the only
difference from the truth is the discretisation; the reference walks the same chain in
continuous time with NumPy. Tolerances are 4 Monte Carlo standard errors.

Before the midpoint rule (every move landing in the exit's own day bin, and ages
rounded down), SMB new deals were put 3 % too often into their creation quarter
(0.1483 against 0.1441 ± 0.0006) and too rarely into the next one.
"""

from __future__ import annotations

import numpy as np
import pytest

from forecast._kernels import ModelArrays, outcome_probabilities
from forecast.datasets import generate_crm

QB = np.array([0, 90, 181], dtype=np.int64)  # a 90-day and a 91-day quarter
N_DEALS = 300_000
HORIZON_DAYS = 400.0  # walks stop past this; wins after day 181 are not counted


@pytest.fixture(scope="module")
def truth():
    return generate_crm(seed=1, scale=0.05).truth


def _destination_name(truth, j):
    n_open = truth.stage_map.n_open
    if j < n_open:
        return truth.stage_map.code_names[j]
    return ("won", "lost", "no_decision")[j - n_open]


def _true_dens(truth, segment, n_bins):
    """``dens[k, j, l] = P(l < T <= l + 1, J = j)`` from the true distributions."""
    p = truth.destination_probabilities[segment]
    n_open, n_codes = p.shape
    grid = np.arange(n_bins + 1, dtype=np.float64)
    dens = np.zeros((n_open, n_codes, n_bins))
    for k in range(n_open):
        for j in range(n_codes):
            if p[k, j] > 0:
                law = truth.sojourn[
                    (segment, truth.stage_map.code_names[k], _destination_name(truth, j))
                ]
                dens[k, j] = p[k, j] * np.diff(law.cdf(grid))
    return dens


def _draw_sojourns(truth, segment, rng, stage, dest):
    """One sojourn (days) per item from the true law of (stage, destination)."""
    out = np.empty(stage.shape[0])
    names = truth.stage_map.code_names
    for k in np.unique(stage):
        for j in np.unique(dest[stage == k]):
            sel = np.flatnonzero((stage == k) & (dest == j))
            law = truth.sojourn[(segment, names[k], _destination_name(truth, j))]
            comp = rng.choice(len(law.weights), sel.size, p=np.asarray(law.weights))
            for c, dist in enumerate(law.components):
                pick = sel[comp == c]
                if pick.size:
                    out[pick] = dist.rvs(size=pick.size, random_state=rng)
    return out


def _continuous_win_times(truth, segment, rng, stage, start, min_first=None):
    """Win instant (days, inf if none before HORIZON_DAYS) of walks in continuous time.

    ``min_first``: condition the first sojourn on exceeding it (age in stage), by
    rejection; the win instant is then measured from the conditioning point.
    """
    p = truth.destination_probabilities[segment]
    n_open, n_codes = p.shape
    cum = np.cumsum(p, axis=1)
    t = start.astype(np.float64).copy()
    k = stage.copy()
    win = np.full(t.shape[0], np.inf)
    active = np.arange(t.shape[0])
    first = True
    while active.size:
        kk = k[active]
        dest = np.minimum((rng.random(active.size)[:, None] >= cum[kk]).sum(axis=1), n_codes - 1)
        soj = _draw_sojourns(truth, segment, rng, kk, dest)
        if first and min_first is not None:
            age = min_first[active]
            redo = np.flatnonzero(soj <= age)
            while redo.size:  # T | T > age by rejection (destination redrawn with it)
                d2 = np.minimum(
                    (rng.random(redo.size)[:, None] >= cum[kk[redo]]).sum(axis=1), n_codes - 1
                )
                s2 = _draw_sojourns(truth, segment, rng, kk[redo], d2)
                dest[redo], soj[redo] = d2, s2
                redo = redo[s2 <= age[redo]]
            soj = soj - age
        first = False
        t[active] += soj
        won = dest == n_open
        win[active[won]] = t[active[won]]
        moving = (dest < n_open) & (t[active] < HORIZON_DAYS)
        k[active[moving]] = dest[moving]
        active = active[moving]
    return win


def _quarter_shares(win):
    counts = np.array([np.mean((win >= QB[q]) & (win < QB[q + 1])) for q in range(2)])
    return counts, np.sqrt(counts * (1 - counts) / win.shape[0])


def _arrays(dens, ages, stages, mix):
    return ModelArrays(
        dens=dens[None, None],
        qb=QB,
        qe_window=14,
        pull_in=0.0,
        deal_segment=np.zeros(len(ages), dtype=np.int64),
        deal_stage=np.asarray(stages, dtype=np.int64),
        deal_age=np.asarray(ages, dtype=np.int64),
        deal_amount=np.ones(len(ages)),
        new_counts=np.ones((1, 1, 2)),
        new_entry_mix=np.asarray(mix, dtype=np.float64)[None, None],
    )


@pytest.mark.parametrize("segment", ["SMB", "MidMarket", "Enterprise"])
def test_new_deal_quarters_match_continuous_time(truth, segment):
    rng = np.random.default_rng(11)
    mix = np.asarray(truth.arrivals[segment].entry_stage_probabilities)
    dens = _true_dens(truth, segment, 1200)
    out = outcome_probabilities(_arrays(dens, [0], [0], mix))
    created = rng.uniform(0.0, float(QB[1]), N_DEALS)  # uniform in the first quarter
    stage = rng.choice(mix.shape[0], N_DEALS, p=mix)
    ref, se = _quarter_shares(_continuous_win_times(truth, segment, rng, stage, created))
    np.testing.assert_array_less(np.abs(out.new_pmf[0, 0, 0] - ref), 4 * se)


@pytest.mark.parametrize("age_days", [0.3, 9.5, 40.8])
def test_open_deal_quarters_match_continuous_time(truth, age_days):
    segment, stage = "MidMarket", 1
    rng = np.random.default_rng(12)
    dens = _true_dens(truth, segment, 1200)
    # model_arrays rounds the age in stage to the nearest day.
    age_bin = int(np.floor(age_days + 0.5))
    out = outcome_probabilities(_arrays(dens, [age_bin], [stage], [1.0, 0, 0, 0]))
    win = _continuous_win_times(
        truth,
        segment,
        rng,
        np.full(N_DEALS, stage),
        np.zeros(N_DEALS),
        min_first=np.full(N_DEALS, age_days),
    )
    ref, se = _quarter_shares(win)
    np.testing.assert_array_less(np.abs(out.p_win[0, 0] - ref), 4 * se)
