"""Tests of forecast.fit.shrinkage (Bühlmann–Straub credibility of segment exit curves)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from forecast.errors import ParameterError
from forecast.fit.competing_risks import CensoredSpells, fit_exit_curves
from forecast.fit.shrinkage import (
    credibility_from_counts,
    credibility_weights,
    shrink_curves,
)

# 12 segments of very different sizes; win share 18%..42% ("modest" differences),
# the rest split evenly between lost and no decision.
SIZES = [12, 2000, 400, 800, 300, 1500, 1000, 60, 250, 600, 150, 900]
WIN = np.linspace(0.18, 0.42, len(SIZES))
MIX = np.stack([WIN, 0.5 * (1 - WIN), 0.5 * (1 - WIN)], axis=1)


def loop_reference(counts):
    """Textbook Bühlmann–Straub, one segment and destination at a time (independent of the
    vectorised implementation)."""
    counts = [list(map(float, row)) for row in counts]
    n_g = [sum(r) for r in counts]
    n = sum(n_g)
    means = [[c / ng for c in r] for r, ng in zip(counts, n_g)]
    overall = [sum(r[j] for r in counts) / n for j in range(len(counts[0]))]
    epv = sum(ng * sum(p * (1 - p) for p in m) for ng, m in zip(n_g, means)) / sum(
        ng - 1 for ng in n_g
    )
    spread = sum(ng * sum((p - o) ** 2 for p, o in zip(m, overall)) for ng, m in zip(n_g, means))
    vhm = (spread - (len(counts) - 1) * epv) / (n - sum(ng * ng for ng in n_g) / n)
    k = epv / vhm
    return [ng / (ng + k) for ng in n_g], k, epv, vhm


def test_matches_textbook_loop():
    counts = [[3, 5, 4], [300, 420, 280], [90, 60, 50], [40, 41, 19]]
    cred = credibility_from_counts(counts)
    z, k, epv, vhm = loop_reference(counts)
    np.testing.assert_allclose(cred.weights, z, rtol=1e-12)
    assert cred.k == pytest.approx(k, rel=1e-12)
    assert cred.process_variance == pytest.approx(epv, rel=1e-12)
    assert cred.between_variance == pytest.approx(vhm, rel=1e-12)


def test_small_segment_borrows_large_segment_stands_alone():
    # Population k = EPV / VHM ≈ 0.64 / 0.0090 ≈ 71 exits, so Z(12) ≈ 0.14, Z(2000) ≈ 0.97.
    rng = np.random.default_rng(42)
    counts = np.stack([rng.multinomial(n, p) for n, p in zip(SIZES, MIX)])
    cred = credibility_from_counts(counts)
    assert cred.weights[0] < 0.3
    assert cred.weights[1] > 0.9
    # Not a lucky seed: over 300 replicates the bounds hold in the extreme percentiles.
    reps = np.array(
        [
            credibility_from_counts(
                np.stack([rng.multinomial(n, p) for n, p in zip(SIZES, MIX)])
            ).weights[:2]
            for _ in range(300)
        ]
    )
    assert np.quantile(reps[:, 0], 0.99) < 0.5
    assert np.quantile(reps[:, 1], 0.01) > 0.9
    assert np.all(np.diff(cred.weights[np.argsort(SIZES)]) > 0)  # Z increases with n
    assert 0 < cred.k < math.inf
    text = str(cred)
    assert "k=" in text and "Z=" in text
    json.dumps(cred.to_dict(), allow_nan=False)


def test_between_variance_estimator_is_unbiased_without_differences():
    # Identical true mixes: the unbiased estimator of VHM has mean 0. Its sd over
    # 400 replicates gives the tolerance (4 standard errors of the mean).
    mix = np.array([0.3, 0.35, 0.35])
    rng = np.random.default_rng(5)
    vhm = np.array(
        [
            credibility_from_counts(
                np.stack([rng.multinomial(n, mix) for n in SIZES])
            ).between_variance
            for _ in range(400)
        ]
    )
    assert abs(vhm.mean()) < 4 * vhm.std(ddof=1) / math.sqrt(vhm.size)
    # and the expected process variance recovers Σ p (1 − p)
    cred = credibility_from_counts(np.stack([rng.multinomial(n, mix) for n in SIZES]))
    expected_epv = float(np.sum(mix * (1 - mix)))
    # sd of the EPV estimate with ~8,000 exits: 0.0006 (500 replicates of this design);
    # 0.003 is 5 sd.
    assert cred.process_variance == pytest.approx(expected_epv, abs=0.003)


def test_no_detectable_differences_means_full_pooling():
    cred = credibility_from_counts([[10, 10], [100, 100], [50, 50]])
    assert cred.k == math.inf
    np.testing.assert_array_equal(cred.weights, 0.0)
    assert cred.to_dict()["k"] is None


def test_segments_without_within_information():
    # One exit per segment: the within-segment variance is unmeasurable (no segment has
    # two exits), so the spread between them cannot be told from noise: full pooling.
    # Before, k came out 0 and a segment without exits divided 0 by 0 (a warning).
    cred = credibility_from_counts([[1, 0], [0, 1], [0, 0]])
    assert cred.k == np.inf and np.array_equal(cred.weights, [0.0, 0.0, 0.0])
    # Exits that agree within every segment but differ between them: k = 0, full
    # credibility for segments with exits, none for the one without.
    cred = credibility_from_counts([[5, 0], [0, 5], [0, 0]])
    assert cred.k == 0.0 and np.array_equal(cred.weights, [1.0, 1.0, 0.0])


def test_credibility_weights_from_spells_uses_exits_only():
    rng = np.random.default_rng(8)
    spells, counts = [], []
    for n, p in zip(SIZES[:6], MIX[:6]):
        dest = rng.choice(3, size=n, p=p) + 1  # codes 1..3
        censored = rng.random(n) < 0.3
        dur = rng.exponential(10.0, n)
        s = CensoredSpells(dur, np.where(censored, -1, dest), n_codes=4)
        spells.append(s)
        counts.append(s.event_counts)
    a = credibility_weights(spells)
    b = credibility_from_counts(counts)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12)
    np.testing.assert_allclose(a.n, [c.sum() for c in counts])
    with pytest.raises(ParameterError, match="n_codes"):
        credibility_weights([spells[0], CensoredSpells([1.0], [1], n_codes=5)])


def test_shrink_curves_mixes_with_pooled():
    rng = np.random.default_rng(9)
    seg = []
    for n, p in ((30, [0.0, 0.2, 0.5, 0.3]), (500, [0.0, 0.4, 0.3, 0.3])):
        dest = rng.choice(4, size=n, p=p)
        seg.append(CensoredSpells(rng.exponential(12.0, n), dest, n_codes=4))
    pooled_spells = CensoredSpells(
        np.r_[seg[0].durations, seg[1].durations],
        np.r_[seg[0].destinations, seg[1].destinations],
        n_codes=4,
    )
    pooled = fit_exit_curves(pooled_spells)
    own = [fit_exit_curves(s) for s in seg]
    z = np.array([0.1, 0.95])
    shrunk = shrink_curves(own, pooled, z)
    for cv, o, zg in zip(shrunk, own, z):
        np.testing.assert_allclose(
            cv.eventual_shares(),
            zg * o.eventual_shares() + (1 - zg) * pooled.eventual_shares(),
            atol=1e-12,
        )
    with pytest.raises(ParameterError, match="`weights`"):
        shrink_curves(own, pooled, [0.5])
    with pytest.raises(ParameterError, match="`weights`"):
        shrink_curves(own, pooled, [0.5, 1.2])


def test_time_bands_make_speed_differences_credible():
    # Same destination mix everywhere, but segment speeds differ by a factor 2.5:
    # destination indicators see no between-segment variance (Z = 0 or tiny), the
    # (destination, quartile band) cells do (a 2.5× speed change moves ~40% of exits
    # across quartile bands, a between variance far above its noise at these sizes).
    rng = np.random.default_rng(11)
    mix = [0.0, 0.3, 0.4, 0.3]
    spells = []
    for n, mean in ((1500, 10.0), (800, 25.0), (1200, 15.0), (40, 25.0)):
        dest = rng.choice(4, size=n, p=mix)
        spells.append(CensoredSpells(rng.exponential(mean, n), dest, n_codes=4))
    by_dest = credibility_weights(spells)
    by_cell = credibility_weights(spells, time_bands="quartiles")
    assert by_dest.weights[0] < 0.5
    assert by_cell.weights[0] > 0.9 and by_cell.weights[1] > 0.9
    assert by_cell.weights[3] < by_cell.weights[1]
    assert by_cell.segment_means.shape == (4, 4 * 4)
    explicit = credibility_weights(spells, time_bands=[5.0, 12.0, 30.0])
    assert explicit.segment_means.shape == (4, 4 * 4)
    with pytest.raises(ParameterError, match="`time_bands`"):
        credibility_weights(spells, time_bands="deciles")
