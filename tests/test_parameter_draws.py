"""Parameter draws in one pass equal refitting every component on the re-weighted data.

:func:`forecast.fit.fitting.parameter_draws` estimates a block of draws at once from
layouts built once per fit. The reference here is the definition in
``docs/model.md`` ("Parameter uncertainty"), written out the plain way: for each
draw, ``data.with_weights(bootstrap_weights(...))`` refitted by the component
fitters, one draw and one stratum at a time. Same Dirichlet weights, so the draws
must agree to rounding (the shock sigma to its optimiser's tolerance) — also with a
recency half-life (every draw keeps the data's recency weights) and on a log that
starts mid-stream (delayed entries, first visits of unknown entry left out, deals in
progress not counted as arrivals).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

import forecast
from forecast._kernels import aj_summaries
from forecast.datasets.synthetic import SYNTHETIC_STAGES, generate_crm
from forecast.fit.arrivals import ArrivalLayout, fit_arrivals
from forecast.fit.bootstrap import bootstrap_weight_block, bootstrap_weights
from forecast.fit.calendar_effects import fit_quarter_end_effect
from forecast.fit.competing_risks import CensoredSpells
from forecast.fit.data import FitData
from forecast.fit.exits import weighted_fit_summary
from forecast.fit.fitting import FitOptions, fit_components, parameter_draws
from forecast.fit.shocks import fit_shocks

SEED, N_DRAWS = 5, 3


def refit_draws(data: FitData, point: Any, options: FitOptions) -> dict[str, np.ndarray]:
    """Each draw refitted on ``data.with_weights``, one stratum at a time."""
    segments, exits = data.segments, point.exits
    n_open, n_codes, G = int(data.n_open or 0), int(data.n_codes or 0), len(segments)
    t = data.as_of
    qb = data.calendar.quarters(t, 1)[0]
    window = (qb.start, data.calendar.shift(qb, 4).end)
    base = point.arrivals.expected_counts([window], t)[:, 0]
    out = {
        "time_factor": np.ones((N_DRAWS, G, n_open)),
        "destination_multiplier": np.ones((N_DRAWS, G, n_open, n_codes)),
        "arrival_multiplier": np.ones((N_DRAWS, G)),
        "pull_in": np.empty(N_DRAWS),
        "shock_sigma": np.empty(N_DRAWS),
    }

    # each draw's tail shares: Dirichlet(a · point shares), a the stratum's exits later
    # than half its longest stay (at least 1); strata in layout order, one stream a draw
    strata = [(exits.raw[(g, k)], data.stratum_spells(k, gi)) for k in range(n_open)
              for gi, g in enumerate(segments)]  # fmt: skip
    strata += [(exits.pooled[k], data.stratum_spells(k)) for k in range(n_open)]
    tails = np.empty((N_DRAWS, len(strata), n_codes))
    for b in range(N_DRAWS):
        rng = np.random.default_rng([SEED, b, 0x7A11])
        for s, (curves, sp) in enumerate(strata):
            point_tail = curves.tail_shares
            tails[b, s] = point_tail
            pos = point_tail > 0
            if np.count_nonzero(pos) > 1 and sp.n:
                late = sp.observed & (sp.durations > 0.5 * sp.durations.max()) if sp.n else []
                a = max(1.0, float(np.count_nonzero(late)))
                tails[b, s, pos] = rng.dirichlet(a * point_tail[pos])
    assert np.any(np.abs(tails - tails[:1]) > 1e-3)  # the tails do vary between draws

    def ratios(
        curves: Any, spells: Any, point_spells: Any, tail: np.ndarray
    ) -> tuple[np.ndarray, float]:
        # the point median on the point fit's own weights (unit deal weights, recency)
        shares_b, med_b = weighted_fit_summary(spells, tail)
        _, med_pt = weighted_fit_summary(point_spells, curves.tail_shares)
        shares_pt = curves.eventual_shares()
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(shares_pt > 0, shares_b / shares_pt, 1.0)
        ok = np.isfinite(med_b) and np.isfinite(med_pt) and med_pt > 0
        return m, float(med_b / med_pt) if ok else 1.0

    for b in range(N_DRAWS):
        data_b = data.with_weights(bootstrap_weights(data, SEED, b))
        for k in range(n_open):
            m_pool, tf_pool = ratios(
                exits.pooled[k],
                data_b.stratum_spells(k),
                data.stratum_spells(k),
                tails[b, n_open * G + k],
            )
            for gi, g in enumerate(segments):
                z = exits.credibility[(g, k)]
                sg = data_b.stratum_spells(k, gi)
                if sg.n and z > 0:
                    m_g, tf_g = ratios(
                        exits.raw[(g, k)], sg, data.stratum_spells(k, gi), tails[b, k * G + gi]
                    )
                else:
                    m_g, tf_g = m_pool, tf_pool
                out["destination_multiplier"][b, gi, k] = z * m_g + (1 - z) * m_pool
                out["time_factor"][b, gi, k] = z * tf_g + (1 - z) * tf_pool
        arr_b = fit_arrivals(data_b, lookback_quarters=options.arrivals_lookback_quarters)
        counts_b = arr_b.expected_counts([window], t)[:, 0]
        for i, g in enumerate(arr_b.segments):
            if g in segments and base[point.arrivals.segments.index(g)] > 0:
                j = point.arrivals.segments.index(g)
                out["arrival_multiplier"][b, segments.index(g)] = counts_b[i] / base[j]
        window_days = options.quarter_end_window_days
        out["pull_in"][b] = fit_quarter_end_effect(data_b, window_days=window_days).pi
        out["shock_sigma"][b] = fit_shocks(data_b).sigma
    return out


#: Cases of the equality check: no recency weighting, a half-life, and a log recorded
#: mid-stream with a half-life.
CASES = ("unweighted", "half_life", "mid_stream_half_life")


def _case_data(name: str, sample_log: Any) -> FitData:
    if name == "unweighted":
        return FitData.from_log(sample_log, as_of="2025-01-01", segment_by=["segment"])
    if name == "half_life":
        data = FitData.from_log(sample_log, as_of="2025-01-01", segment_by=["segment"])
        return data.with_half_life(365.0)
    crm = generate_crm(seed=4, end="2024-07-01", scale=0.5, recorded_from="2023-07-01")
    log = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    data = FitData.from_log(
        log, as_of="2024-07-01", segment_by=["segment"], recorded_from="2023-07-01"
    )
    return data.with_half_life(182.0)


@pytest.fixture(scope="module", params=CASES)
def fitted(request: Any, sample_log: Any) -> tuple[FitData, Any, FitOptions]:
    data = _case_data(request.param, sample_log)
    options = FitOptions()
    return data, fit_components(data, options), options


def test_cases_exercise_recency_and_mid_stream(fitted: tuple[FitData, Any, FitOptions]) -> None:
    """Each case holds what it is meant to test (else the equality below proves little)."""
    data = fitted[0]
    a = data.spell_arrays
    assert a is not None
    if data.half_life is not None:
        rec = data.spell_recency
        assert rec is not None and rec.min() < 0.5 < rec.max()  # old and recent spells
    if data.in_progress is not None:
        assert a.entry is not None and np.any(a.entry > 0)  # delayed entries
        assert a.excluded is not None and a.excluded.any()  # first visits left out
        assert data.row_in_progress("outcomes").any()


def test_weight_block_rows_are_the_single_draws(sample_log: Any) -> None:
    data = _case_data("unweighted", sample_log)
    block = bootstrap_weight_block(data, SEED, [0, 2], threads=2)
    assert block.shape == (2, data.n_deals)
    np.testing.assert_array_equal(block[1], bootstrap_weights(data, SEED, 2))


def test_draws_in_one_pass_equal_refitting_each_draw(
    fitted: tuple[FitData, Any, FitOptions],
) -> None:
    data, point, options = fitted
    assert not point.exits.borrowed  # every stage fitted (borrowed stages: test_borrowing.py)
    got = parameter_draws(data, point, options, N_DRAWS, SEED, threads=2)
    want = refit_draws(data, point, options)
    for name in ("time_factor", "destination_multiplier", "arrival_multiplier", "pull_in"):
        have = np.asarray(getattr(got, name))
        assert not np.allclose(want[name], 1.0), f"{name}: the draws did not move it"
        np.testing.assert_allclose(have, want[name], rtol=1e-9, atol=1e-12, err_msg=name)
    # the shock sigma comes out of a bounded search (xatol 1e-9 on sigma)
    np.testing.assert_allclose(got.shock_sigma, want["shock_sigma"], rtol=0, atol=1e-8)


def test_draws_on_the_point_fits_layouts_equal_draws_on_fresh_layouts(
    fitted: tuple[FitData, Any, FitOptions],
) -> None:
    """The draws reuse the layouts the point fit laid its data out on; they must be the
    layouts the draws would build (same options), so the draws are the same bits."""
    data, point, options = fitted
    assert point.arrival_layout is not None and point.shock_layout is not None
    assert point.quarter_end_layout is not None
    fresh = dataclasses.replace(
        point, arrival_layout=None, quarter_end_layout=None, shock_layout=None
    )
    got = parameter_draws(data, point, options, N_DRAWS, SEED, threads=2)
    want = parameter_draws(data, fresh, options, N_DRAWS, SEED, threads=2)
    for name in ("time_factor", "destination_multiplier", "arrival_multiplier", "pull_in"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_array_equal(got.shock_sigma, want.shock_sigma)


def test_arrival_counts_of_a_block_are_each_draws_bincount(sample_log: Any) -> None:
    """The block's weighted creations per (segment, quarter) equal, to the bit, the plain
    ``np.bincount`` of each draw's weights (what a refit of one draw sums)."""
    data = _case_data("unweighted", sample_log)
    layout = ArrivalLayout.from_data(data)
    block = bootstrap_weight_block(data, SEED, range(4), threads=2)
    counts = layout.counts(block)
    n_q = len(layout.quarters)
    inside = layout.quarter_index >= 0
    assert counts.shape == (4, len(layout.segments), n_q)
    for b in range(4):
        for g in range(len(layout.segments)):
            sel = inside & (layout.segment_index == g)
            plain = np.bincount(
                layout.quarter_index[sel], weights=block[b, layout.deal[sel]], minlength=n_q
            )
            np.testing.assert_array_equal(counts[b, g], plain)
    assert counts.sum() > 0


@pytest.mark.parametrize("n_draws", [2, 300])
def test_aj_summaries_of_a_block_equal_each_draws_plain_fit(n_draws: int) -> None:
    """The compiled sweep gives each draw's Aalen–Johansen shares and median to the bit of
    the plain estimator, whether a stratum is gathered in one chunk (2 draws) or in
    several with tied durations across the chunk boundary (300 draws: 2^20 weights a
    chunk is 3,495 rows of the 5,000-row stratum)."""
    rng = np.random.default_rng(11)
    n_deals, sizes, n_codes = 2_000, (5_000, 1_500), 4
    deal = rng.integers(0, n_deals, sum(sizes))
    duration = np.concatenate([np.sort(rng.integers(0, 60, m)).astype(float) for m in sizes])
    destination = rng.integers(-1, n_codes, sum(sizes))
    row_weight = rng.uniform(0.5, 1.5, sum(sizes))
    offsets = np.array([0, sizes[0], sum(sizes)])
    tail = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0]])
    weights = rng.exponential(size=(n_draws, n_deals))
    weights[:, :100] = 0.0  # deals that a draw leaves out
    shares, median = aj_summaries(
        weights, deal, duration, destination, offsets, tail, threads=2, row_weight=row_weight
    )
    assert shares.shape == (n_draws, 2, n_codes) and median.shape == (n_draws, 2)
    for b in range(n_draws):
        for s in range(2):
            lo, hi = offsets[s], offsets[s + 1]
            w = weights[b, deal[lo:hi]] * row_weight[lo:hi]
            cs = CensoredSpells.trusted(duration[lo:hi], destination[lo:hi], n_codes, w)
            plain_shares, plain_median = weighted_fit_summary(cs, tail[s])
            np.testing.assert_array_equal(shares[b, s], plain_shares)
            np.testing.assert_array_equal(median[b, s], plain_median)
    assert np.isfinite(median).all()
