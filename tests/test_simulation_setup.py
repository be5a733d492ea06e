"""Simulation set-up: exit densities of every draw at once, cached per model; the model
fingerprint from its arrays.

References: :meth:`ExitCurves.scaled_exit_densities` is defined as ``scaled(f, m)
.exit_density(L)`` row by row (``docs/model.md``, "Parameter uncertainty"), so the
one-pass version is checked against that composition; the fingerprint must be a
function of the model's content (equal after a JSON round trip, different when one
fitted value changes, and when the recency half-life does); the compiled set-up keeps
the averaging over the possible ages of deals in progress when the log started.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest

import forecast
from forecast._kernels import outcome_probabilities
from forecast.datasets.synthetic import SYNTHETIC_STAGES, generate_crm
from forecast.errors import ParameterError
from forecast.fit.model import PipelineModel
from forecast.fit.recency import HalfLifeChoice
from forecast.simulate import (
    condition_on_not_pulled_in,
    early_window_days,
    exit_densities,
    model_arrays,
    prepare_simulation,
    quarter_bins,
)


def test_scaled_exit_densities_equal_each_scaled_curve(sample_model: PipelineModel) -> None:
    rng = np.random.default_rng(3)
    for curves in list(sample_model.curves.values())[:4]:
        f = rng.uniform(0.6, 1.6, size=5)
        m = rng.uniform(0.5, 1.5, size=(5, curves.n_codes))
        m[0, 1] = 0.0  # a destination switched off
        got = curves.scaled_exit_densities(700, f, m)
        assert got.shape == (5, curves.n_codes, 700)
        for b in range(5):
            want = curves.scaled(f[b], m[b]).exit_density(700)
            np.testing.assert_allclose(got[b], want, rtol=1e-10, atol=1e-15)


def _numpy_scaled_densities(curves: Any, max_days: int, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The plain NumPy reading of ``scaled_exit_densities`` (the grid by ``numpy.interp``,
    the tail pieces added in order), which the compiled pass must equal bit for bit."""
    shares = curves.eventual_shares()
    scale = (shares.sum() / (m @ shares))[:, None] * m
    t = np.arange(1, max_days + 1, dtype=np.float64)[None, :] / f[:, None]
    flat, big_d = t.reshape(-1), curves.max_day
    inside = flat <= big_d
    grid = np.empty((curves.n_codes, flat.size))
    for j in range(curves.n_codes):
        grid[j, inside] = np.interp(flat[inside], np.arange(big_d + 1.0), curves.cif_grid[j])
    grid[:, ~inside] = curves.cif_grid[:, -1:]
    cif = grid.reshape(curves.n_codes, f.size, max_days) * scale.T[:, :, None]
    if not np.all(inside):
        for p in curves.tail_pieces:
            left = np.zeros(flat.size)
            left[~inside] = p.mass - p.remaining(flat[~inside], big_d)
            piece_scale = np.where((m @ p.shares)[:, None] > 0, scale, 1.0)
            cif += p.shares[:, None, None] * piece_scale.T[:, :, None] * left.reshape(f.size, -1)
    return np.maximum(np.diff(cif, axis=2, prepend=0.0), 0.0).transpose(1, 0, 2)


def test_scaled_exit_densities_are_the_bits_of_the_numpy_reading(
    sample_model: PipelineModel,
) -> None:
    rng = np.random.default_rng(5)
    tails = 0
    for curves in sample_model.curves.values():
        f = rng.uniform(0.5, 2.0, size=4)
        m = rng.uniform(0.5, 1.5, size=(4, curves.n_codes))
        max_days = 3 * curves.max_day + 7  # far into the tail pieces
        got = curves.scaled_exit_densities(max_days, f, m)
        want = _numpy_scaled_densities(curves, max_days, f, m)
        assert got.tobytes() == want.tobytes()
        tails += len(curves.tail_pieces) > 1
    assert tails > 0  # shrunk curves: several tail pieces, added in order


def test_scaled_exit_densities_refuse_negative_multipliers(sample_model: PipelineModel) -> None:
    curves = next(iter(sample_model.curves.values()))
    m = np.ones((1, curves.n_codes))
    m[0, 0] = -1.0
    with pytest.raises(ParameterError, match="destination_multipliers"):
        curves.scaled_exit_densities(10, [1.0], m)


def test_exit_densities_are_built_once_per_model(sample_model: PipelineModel) -> None:
    model = sample_model.replace()  # nothing cached
    first = exit_densities(model, 400)
    assert exit_densities(model, 400) is first and not first.flags.writeable
    draws = model.draws
    assert draws is not None
    g, k = 1, 2
    curve = model.curves[(model.segments[g], k)]
    want = curve.scaled(draws.time_factor[3, g, k], draws.destination_multiplier[3, g, k])
    np.testing.assert_allclose(first[3, g, k], want.exit_density(400), rtol=1e-10, atol=1e-15)
    assert exit_densities(model, 401).shape[-1] == 401  # another size is built anew
    clone = pickle.loads(pickle.dumps(model))
    assert "exit_densities" not in clone._cache  # pickles travel without the cache


def test_simulate_twice_on_a_model_gives_the_same_samples(
    sample_log: Any, sample_model: PipelineModel
) -> None:
    model = sample_model.replace()
    a = model.simulate(sample_log, n_paths=300, horizon=2, seed=4)  # builds the cache
    b = model.simulate(sample_log, n_paths=300, horizon=2, seed=4)  # reads it
    np.testing.assert_array_equal(a.totals, b.totals)
    np.testing.assert_array_equal(a.deal_wins, b.deal_wins)


def test_fingerprint_follows_the_content(sample_model: PipelineModel) -> None:
    fp = sample_model.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert PipelineModel.from_json(sample_model.to_json()).fingerprint == fp
    assert sample_model.replace().fingerprint == fp
    draws = sample_model.draws
    assert draws is not None
    sigma = draws.shock_sigma.copy()
    sigma[0] = np.nextafter(sigma[0], np.inf)  # one value, one ulp
    moved = sample_model.replace(draws=draws.__class__(
        draws.time_factor, draws.destination_multiplier, draws.arrival_multiplier,
        draws.pull_in, sigma, draws.seed,
    ))  # fmt: skip
    assert moved.fingerprint != fp
    assert sample_model.replace(adjustments={"arrivals": 1.1}).fingerprint != fp


def test_fingerprint_and_exit_densities_follow_the_half_life(
    sample_log: Any, sample_fit_arguments: dict[str, Any]
) -> None:
    """What recency changes is in the fingerprint and in the cached densities."""
    weighted = forecast.fit(sample_log, **{**sample_fit_arguments, "half_life": 365.0})
    assert weighted.recency is not None and weighted.recency.half_life == 365.0
    fp = weighted.fingerprint
    # the same fitted values said to come from another half-life: another model
    relabelled = weighted.replace(recency=HalfLifeChoice(None, requested=None))
    assert relabelled.fingerprint != fp
    plain = forecast.fit(sample_log, **{**sample_fit_arguments, "half_life": None})
    assert plain.fingerprint != fp
    assert not np.array_equal(exit_densities(plain, 64), exit_densities(weighted, 64))


def test_compiled_set_up_averages_mid_stream_deals_over_their_ages() -> None:
    """A deal in progress when the log started, still in its first recorded stage, gets
    the outcomes averaged over its possible ages: its row of the set-up equals the
    mixture of the set-up's outcomes of the same deal at each age (``docs/model.md``,
    "Logs that start mid-stream")."""
    crm = generate_crm(seed=5, end="2024-04-01", scale=0.5, recorded_from="2023-10-01")
    log = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    model = forecast.fit(
        log, as_of="2024-04-01", segment_by=["segment"], n_draws=2, half_life=None,
        recorded_from="2023-10-01",
    )  # fmt: skip
    arrays, _, _, _, mixture = model_arrays(model, log, 2)
    assert mixture.n > 0
    _, outcomes, *_ = prepare_simulation(model, log, 2)
    early = early_window_days(model, quarter_bins(model, 2)[0])

    def plain(a: Any) -> Any:
        return condition_on_not_pulled_in(a, outcome_probabilities(a), early)

    unmixed = plain(arrays)
    mixed_deals = np.unique(mixture.deal)
    for n in mixed_deals[:3]:
        rows = mixture.deal == n
        ages, w = mixture.ages[rows], mixture.weights[rows]
        at_ages = plain(dataclasses.replace(
            arrays,
            deal_segment=np.repeat(arrays.deal_segment[n], ages.size),
            deal_stage=np.repeat(arrays.deal_stage[n], ages.size),
            deal_age=ages,
            deal_amount=np.repeat(arrays.deal_amount[n], ages.size),
        ))  # fmt: skip
        want = np.einsum("m,bmh->bh", w, at_ages.p_win)
        np.testing.assert_allclose(outcomes.p_win[:, n], want, rtol=1e-12, atol=1e-15)
    assert not np.allclose(outcomes.p_win[:, mixed_deals], unmixed.p_win[:, mixed_deals])
    others = np.setdiff1d(np.arange(arrays.deal_age.size), mixed_deals)
    np.testing.assert_array_equal(outcomes.p_win[:, others], unmixed.p_win[:, others])
