"""Proper scores against closed forms, independent numerical references and properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from forecast.errors import ParameterError
from forecast.scores import (
    crps_normal,
    crps_samples,
    interval_hits,
    pinball_loss,
    pit,
    sample_quantiles,
    skill,
    wilson_interval,
)

finite = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False
)


def crps_by_quad(x: np.ndarray, y: float, exact: bool = False) -> float:
    """∫ (F_m(t) − 1{y ≤ t})² dt by scipy quad, piece by piece between the jump points.

    ``exact=True``: value at the midpoint × width instead of quad (the integrand is
    piecewise constant; quad warns on pieces of width 1e-305).
    """
    xs = np.sort(x)
    pts = np.unique(np.concatenate([xs, [y]]))
    m = len(xs)

    def integrand(t: float) -> float:
        f = np.searchsorted(xs, t, side="right") / m
        return (f - (1.0 if y <= t else 0.0)) ** 2

    total = 0.0
    for a, b in itertools.pairwise(pts):
        if exact:  # the integrand is constant between jump points
            total += integrand(0.5 * (a + b)) * (b - a)
        else:
            total += integrate.quad(integrand, a, b)[0]
    return total


def test_crps_normal_closed_form_matches_numerical_integration():
    # Reference: ∫ (Φ((t − μ)/σ) − 1{y ≤ t})² dt by scipy quad.
    mu, sigma, y = 2.0, 3.0, 4.5
    f = stats.norm(mu, sigma).cdf
    ref = integrate.quad(lambda t: f(t) ** 2, -np.inf, y)[0]
    ref += integrate.quad(lambda t: (1 - f(t)) ** 2, y, np.inf)[0]
    assert float(crps_normal(mu, sigma, y)) == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("y", [-4.0, 0.0, 0.7, 3.0])
def test_crps_samples_of_normal_quantile_grid_matches_closed_form(y):
    # Samples at the normal's (i − ½)/m quantiles, m = 20 000: |CRPS(F_m) − CRPS(F)| ≤
    # 3 W1(F_m, F) (since |a² − b²| ≤ 2|a − b| for CDFs, plus the cross term), and W1 of
    # this grid is O(σ √log m / m) ≈ 2e-4 σ; tolerance 1e-3 σ.
    m, mu, sigma = 20_000, 1.0, 2.0
    x = mu + sigma * stats.norm.ppf((np.arange(m) + 0.5) / m)
    assert float(crps_samples(x, y)) == pytest.approx(float(crps_normal(mu, sigma, y)), abs=2e-3)


def test_crps_samples_random_normal_within_sampling_error():
    # E[CRPS(F_m)] = CRPS(F) + σ/(m √π) (module notes); over 200 replicates of m = 500
    # the mean's standard error is below 0.02 σ / √200 ≈ 1.5e-3 σ (sd of one replicate's
    # CRPS ≈ 0.02 σ, measured); 5 standard errors = 0.0075.
    rng = np.random.default_rng(3)
    m, reps, y = 500, 200, 0.5
    x = rng.standard_normal((reps, m))
    got = crps_samples(x, np.full(reps, y)).mean()
    expected = float(crps_normal(0.0, 1.0, y)) + 1.0 / (m * math.sqrt(math.pi))
    assert got == pytest.approx(expected, abs=0.0075)


def test_crps_samples_equals_quad_of_empirical_cdf():
    rng = np.random.default_rng(11)
    for m in (1, 2, 5, 40):
        x = rng.gamma(2.0, 3.0, size=m)
        for y in (0.0, float(np.median(x)), 50.0):
            assert float(crps_samples(x, y)) == pytest.approx(
                crps_by_quad(x, y), rel=1e-9, abs=1e-9
            )


def test_crps_hand_values():
    # F_m of {1, 2, 3} at y = 2: ∫_1^2 (1/3)² + ∫_2^3 (2/3 − 1)² = 2/9.
    assert float(crps_samples([1.0, 2.0, 3.0], 2.0)) == pytest.approx(2 / 9)
    assert float(crps_samples([5.0], 3.0)) == 2.0  # point forecast: absolute error
    assert float(crps_samples([7.0] * 10, 7.0)) == 0.0


def test_crps_vectorised_over_leading_axes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 50))
    y = rng.normal(size=(3, 4))
    got = crps_samples(x, y)
    assert got.shape == (3, 4)
    assert got[2, 1] == pytest.approx(float(crps_samples(x[2, 1], y[2, 1])))


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=30), finite)
def test_crps_nonnegative_and_zero_only_when_perfect(xs, y):
    c = float(crps_samples(xs, y))
    assert c >= 0.0
    # Reference: the exact piecewise integral, up to float rounding of large values.
    assert c == pytest.approx(crps_by_quad(np.array(xs), y, exact=True), rel=1e-6, abs=1e-6)
    if all(v == y for v in xs):
        assert c == 0.0
    else:
        assert c > 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=30), finite, st.floats(-1e3, 1e3))
def test_crps_translation_invariant(xs, y, shift):
    a = float(crps_samples(xs, y))
    b = float(crps_samples(np.array(xs) + shift, y + shift))
    assert b == pytest.approx(a, rel=1e-6, abs=1e-6)


def test_pinball_hand_values_and_crps_identity():
    assert pinball_loss([[10.0, 20.0]], [0.1, 0.75], [15.0]).tolist() == [[0.5, 1.25]]
    assert pinball_loss([3.0], [0.5], 3.0).tolist() == [0.0]
    assert pinball_loss([4.0], [0.25], 2.0).tolist() == [1.5]  # over: (1 − τ)(q − y)
    # CRPS = 2 ∫_0^1 pinball_τ(F⁻¹(τ), y) dτ; midpoint rule on 20 000 levels of a normal,
    # error O(1/n²) away from the (integrable) tails: tolerance 1e-3.
    n = 20_000
    tau = (np.arange(n) + 0.5) / n
    q = stats.norm.ppf(tau)
    got = 2.0 * pinball_loss(q, tau, 0.3).mean()
    assert got == pytest.approx(float(crps_normal(0.0, 1.0, 0.3)), abs=1e-3)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=20), finite)
def test_pinball_nonnegative(qs, y):
    tau = np.linspace(0.05, 0.95, len(qs))
    assert np.all(pinball_loss(np.sort(qs), tau, y) >= 0.0)


def test_sample_quantiles_match_numpy():
    x = np.arange(11.0)
    assert sample_quantiles(x, [0.1, 0.5]).tolist() == [1.0, 5.0]
    assert sample_quantiles(np.stack([x, 2 * x]), [0.5]).tolist() == [[5.0], [10.0]]


def test_pit_ranks_and_ties():
    x = np.arange(10.0)
    assert float(pit(x, 4.5)) == 0.5
    assert float(pit(x, 4.0)) == pytest.approx(0.45)  # 4 below, 1 tie counted half
    assert float(pit(x, -1.0)) == 0.0
    assert float(pit(x, 100.0)) == 1.0
    assert float(pit(np.zeros(5), 0.0)) == 0.5


def test_pit_uniform_for_calibrated_forecast():
    # Outcome and 999 samples from the same distribution: the PIT takes the values
    # k/999 (k = 0..999) uniformly. Kolmogorov–Smirnov at level 0.001 over 2000 cases
    # (a fixed seed; fails only if the PIT is not uniform).
    rng = np.random.default_rng(5)
    x = rng.lognormal(size=(2000, 999))
    y = rng.lognormal(size=2000)
    assert stats.kstest(pit(x, y), "uniform").pvalue > 1e-3


def test_interval_hits_includes_ends():
    x = np.arange(101.0)  # 80 % interval [10, 90], 50 % [25, 75]
    assert interval_hits(x, 10.0, 0.8) and interval_hits(x, 90.0, 0.8)
    assert not interval_hits(x, 9.99, 0.8) and not interval_hits(x, 90.01, 0.8)
    assert interval_hits(x, 25.0, 0.5) and not interval_hits(x, 24.9, 0.5)
    assert interval_hits(np.stack([x, x]), np.array([50.0, 95.0]), 0.8).tolist() == [True, False]


def test_wilson_interval_reference_values():
    # 95 %, 8/10, by hand from Wilson's closed form: denominator 1 + 1.96²/10 = 1.38416,
    # centre (0.8 + 1.96²/20) / 1.38416 = 0.71674, half-width
    # 1.96 √(0.8·0.2/10 + 1.96²/400) / 1.38416 = 0.22658 -> (0.49016, 0.94332).
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ParameterError, match="hits"):
        wilson_interval(11, 10)


def test_skill():
    assert skill(1.0, 4.0) == 0.75
    assert skill(4.0, 4.0) == 0.0
    assert math.isnan(skill(1.0, 0.0))


def test_errors_name_the_parameter():
    with pytest.raises(ParameterError, match="`observed`"):
        crps_samples(np.zeros((3, 5)), np.zeros(4))
    with pytest.raises(ParameterError, match="`samples`"):
        crps_samples(np.zeros((3, 0)), np.zeros(3))
    with pytest.raises(ParameterError, match="finite"):
        pit([1.0, np.nan], 0.0)
    with pytest.raises(ParameterError, match="`levels`"):
        pinball_loss([1.0], [1.5], 0.0)
    with pytest.raises(ParameterError, match="`quantiles`"):
        pinball_loss([1.0, 2.0], [0.5], 0.0)
    with pytest.raises(ParameterError, match="`coverage`"):
        interval_hits([1.0], 1.0, 80)
    with pytest.raises(ParameterError, match="`sigma`"):
        crps_normal(0.0, 0.0, 1.0)
