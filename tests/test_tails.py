"""Tests of forecast.fit.tails: censored ML tails against scipy's censored fits.

References: ``scipy.stats.<dist>.fit(scipy.stats.CensoredData(...), floc=0)``
(an independent optimiser on scipy's own log-densities), the closed-form
exponential MLE, and a brute-force Nelder–Mead on scipy's conditional likelihood
for the left-truncated fits.
"""

from __future__ import annotations

import json
import math
import threading
import warnings

import numpy as np
import pytest
from scipy import optimize, stats

from forecast.errors import ParameterError
from forecast.fit import tails
from forecast.fit.tails import TailCandidate, TailFit, fit_tail

SCIPY = {
    "exponential": (stats.expon, lambda p: (0.0, p["scale"])),
    "weibull": (stats.weibull_min, lambda p: (p["shape"], 0.0, p["scale"])),
    "lognormal": (stats.lognorm, lambda p: (p["sigma"], 0.0, p["scale"])),
}


def censored_weibull(seed: int, n: int = 1500):
    rng = np.random.default_rng(seed)
    t = 20.0 * rng.weibull(1.5, n) + 0.01  # keep away from the duration floor
    c = rng.uniform(0.0, 45.0, n) + 0.01
    obs = t <= c
    return np.where(obs, t, c), obs


def scipy_loglik(family, params, x, obs, u=0.0):
    dist, args = SCIPY[family]
    a = args(params)
    ll = dist.logpdf(x[obs], *a).sum() + dist.logsf(x[~obs], *a).sum()
    return ll - x.size * dist.logsf(u, *a) if u > 0 else ll


@pytest.mark.parametrize("family", ["exponential", "weibull", "lognormal"])
def test_matches_scipy_censored_fit(family):
    x, obs = censored_weibull(1)
    fit = fit_tail(x, obs, families=[family], duration_floor=1e-9)
    assert fit.family == family and not fit.truncated
    dist, _ = SCIPY[family]
    ref = dist.fit(stats.CensoredData(uncensored=x[obs], right=x[~obs]), floc=0)
    ref_params = {
        "exponential": lambda r: {"scale": r[1]},
        "weibull": lambda r: {"shape": r[0], "scale": r[2]},
        "lognormal": lambda r: {"sigma": r[0], "scale": r[2]},
    }[family](ref)
    ll_ref = scipy_loglik(family, ref_params, x, obs)
    # our log-likelihood is scipy's log-likelihood at our parameters ...
    assert fit.log_likelihood == pytest.approx(scipy_loglik(family, fit.params, x, obs), abs=1e-8)
    # ... and at least as high as at scipy's optimum (scipy's fmin stops at ~1e-4 relative)
    assert fit.log_likelihood >= ll_ref - 1e-8
    for name, value in ref_params.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-3)
    if family == "exponential":  # both closed form: total time / exits
        assert fit.params["scale"] == pytest.approx(x.sum() / obs.sum(), rel=1e-12)


def test_aic_picks_the_generating_family():
    # Large samples: AIC differences between the true family and the others grow
    # linearly in n (here hundreds of units), far beyond sampling noise.
    rng = np.random.default_rng(2)
    n = 4000
    c = rng.uniform(0.0, 150.0, n)
    t_w = 30.0 * rng.weibull(2.5, n)
    fit_w = fit_tail(np.minimum(t_w, c), t_w <= c)
    assert fit_w.family == "weibull"
    t_l = np.exp(math.log(25.0) + 0.9 * rng.standard_normal(n))
    fit_l = fit_tail(np.minimum(t_l, c), t_l <= c)
    assert fit_l.family == "lognormal"
    aics = {cand.family: cand.aic for cand in fit_l.candidates}
    assert set(aics) == {"exponential", "weibull", "lognormal"}
    assert fit_l.aic == min(aics.values())


def test_truncated_exponential_closed_form_and_memorylessness():
    # Exponential is memoryless: the fit conditional on T > u recovers the scale,
    # MLE = Σ (t − u) / exits, with sd ≈ scale / sqrt(exits). Tolerance: 4 sd.
    rng = np.random.default_rng(3)
    n, scale, u = 6000, 25.0, 30.0
    t = rng.exponential(scale, n)
    c = rng.uniform(0.0, 200.0, n)
    x, obs = np.minimum(t, c), t <= c
    fit = fit_tail(x, obs, families=["exponential"], threshold=u)
    assert fit.truncated and fit.threshold == u
    keep = x > u
    assert fit.n_used == keep.sum() and fit.events_used == (keep & obs).sum()
    assert fit.params["scale"] == pytest.approx((x[keep] - u).sum() / (keep & obs).sum(), rel=1e-12)
    assert abs(fit.params["scale"] - scale) < 4 * scale / math.sqrt(fit.events_used)


@pytest.mark.parametrize("family", ["weibull", "lognormal"])
def test_truncated_fit_maximises_the_conditional_likelihood(family):
    x, obs = censored_weibull(4, 3000)
    u = 15.0
    fit = fit_tail(x, obs, families=[family], threshold=u, duration_floor=1e-9)
    assert fit.truncated
    keep = x > u
    xs, os_ = x[keep], obs[keep]
    assert fit.log_likelihood == pytest.approx(
        scipy_loglik(family, fit.params, xs, os_, u), abs=1e-8
    )
    names = ("shape", "scale") if family == "weibull" else ("sigma", "scale")

    def nll(theta):
        return -scipy_loglik(family, dict(zip(names, np.exp(theta))), xs, os_, u)

    start = np.log([fit.params[names[0]] * 1.3, fit.params["scale"] * 0.8])
    ref = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12}
    )
    assert fit.log_likelihood >= -ref.fun - 1e-7
    np.testing.assert_allclose(
        [fit.params[names[0]], fit.params["scale"]], np.exp(ref.x), rtol=1e-4
    )


def test_falls_back_to_all_spells_when_few_late_exits():
    x, obs = censored_weibull(5, 200)
    fit = fit_tail(x, obs, threshold=40.0, min_events=20)
    assert (x[obs] > 40.0).sum() < 20
    assert not fit.truncated and fit.threshold == 0.0 and fit.requested_threshold == 40.0
    assert fit.n_used == x.size


def test_integer_weights_equal_duplicated_rows():
    x, obs = censored_weibull(6, 300)
    reps = np.random.default_rng(7).integers(0, 4, x.size)
    fw = fit_tail(x, obs, weights=reps.astype(float))
    fd = fit_tail(np.repeat(x, reps), np.repeat(obs, reps))
    assert fw.family == fd.family
    for cw, cd in zip(fw.candidates, fd.candidates):
        assert cw.log_likelihood == pytest.approx(cd.log_likelihood, rel=1e-9)
        for name in cw.params:
            assert cw.params[name] == pytest.approx(cd.params[name], rel=1e-6)


def test_no_exits_gives_none_tail():
    fit = fit_tail([3.0, 5.0], [False, False])
    assert fit.family == "none"
    np.testing.assert_array_equal(fit.survival([0.0, 1e6]), [1.0, 1.0])
    assert all(c.message == "no exits to fit" for c in fit.candidates)
    assert all(c.code == "no_exits" for c in fit.candidates)


def test_too_few_distinct_exits_for_two_parameter_families():
    fit = fit_tail([1.0, 2.0, 9.0], [True, True, False])
    assert fit.family == "exponential"
    msgs = {c.family: c.message for c in fit.candidates}
    assert "distinct" in msgs["weibull"] and "distinct" in msgs["lognormal"]
    codes = {c.family: c.code for c in fit.candidates}
    assert codes == {"exponential": "ok", "weibull": "too_few_exits", "lognormal": "too_few_exits"}
    only_two = fit_tail([1.0, 2.0, 9.0], [True, True, False], families=["weibull", "lognormal"])
    assert only_two.family == "exponential" and only_two.candidates[-1].code == "fallback"


def test_survival_rescaled_and_json():
    x, obs = censored_weibull(8)
    fit = fit_tail(x, obs)
    t = np.array([0.0, 1.0, 10.0, 100.0])
    np.testing.assert_allclose(fit.rescaled(2.0).survival(2.0 * t), fit.survival(t), rtol=1e-12)
    dist, args = SCIPY[fit.family]
    np.testing.assert_allclose(fit.survival(t), dist.sf(t, *args(fit.params)), rtol=1e-12)
    back = TailFit.from_dict(json.loads(json.dumps(fit.to_dict(), allow_nan=False)))
    assert back.family == fit.family and back.params == fit.params
    assert [c.aic for c in back.candidates] == [c.aic for c in fit.candidates]
    assert [c.code for c in back.candidates] == [c.code for c in fit.candidates]
    # models saved before the codes existed still load
    old = fit.candidates[0].to_dict()
    del old["code"]
    assert TailCandidate.from_dict(old).code == "ok"
    assert fit.family in str(fit)


def test_argument_errors():
    with pytest.raises(ParameterError, match=r"`families`.*'gamma'"):
        fit_tail([1.0], [True], families=["gamma"])
    with pytest.raises(ParameterError, match=r"`durations`.*-2.0 at index 1"):
        fit_tail([1.0, -2.0], [True, True])
    with pytest.raises(ParameterError, match="`observed`"):
        fit_tail([1.0, 2.0], [True])
    with pytest.raises(ParameterError, match="`threshold`"):
        fit_tail([1.0], [True], threshold=-1.0)


def lognormal_sample(seed: int, n: int = 800):
    """Censored log-normal sojourns (median 25 days, sigma 0.9) with uniform censoring."""
    rng = np.random.default_rng(seed)
    t = np.exp(math.log(25.0) + 0.9 * rng.standard_normal(n))
    c = rng.uniform(0.0, 120.0, n)
    return np.minimum(t, c), t <= c


@pytest.mark.parametrize("u", [0.0, 20.0])
def test_lognormal_gradient_and_hessian_match_finite_differences(u):
    x, obs = lognormal_sample(11)
    keep = x > u
    log_t, d, w = np.log(x[keep]), obs[keep].astype(float), np.ones(keep.sum())
    log_u = math.log(u) if u > 0 else None

    def f(theta):
        data = tails._lognormal_data(log_t, d, w)
        return tails._lognormal_mean_nll(np.asarray(theta), *data, log_u, w.sum())

    for theta in ([3.0, -0.1], [2.0, 0.5], [4.5, -1.0]):
        _, g, h = f(theta)
        eps = 1e-6  # central differences: error ~ eps² × third derivative ≪ 1e-7
        e = np.eye(2) * eps
        g_fd = [(f(theta + e[i])[0] - f(theta - e[i])[0]) / (2 * eps) for i in range(2)]
        h_fd = [(f(theta + e[i])[1] - f(theta - e[i])[1]) / (2 * eps) for i in range(2)]
        np.testing.assert_allclose(g, g_fd, atol=1e-7)
        np.testing.assert_allclose(h, np.array(h_fd), atol=1e-7)


def test_lognormal_fit_converges_to_a_stationary_point():
    # The point fit's projected gradient is below the stopping rule and the Hessian
    # there is positive definite: a strict local minimum of the negative log-likelihood.
    for seed, u in [(12, 0.0), (13, 20.0), (14, 40.0)]:
        x, obs = lognormal_sample(seed)
        fit = fit_tail(x, obs, ["lognormal"], threshold=u, min_events=1, duration_floor=1e-9)
        cand = fit.candidates[0]
        assert cand.code == "ok", cand.message
        keep = x > fit.threshold
        theta = np.array([math.log(fit.params["scale"]), math.log(fit.params["sigma"])])
        log_u = math.log(u) if u > 0 else None
        w = np.ones(keep.sum())
        data = tails._lognormal_data(np.log(x[keep]), obs[keep].astype(float), w)
        _, g, h = tails._lognormal_mean_nll(theta, *data, log_u, w.sum())
        assert np.max(np.abs(g)) <= tails._NEWTON_GTOL
        assert np.all(np.linalg.eigvalsh(h) > 0)


def test_runaway_truncated_fit_is_reported_at_the_bound():
    # Beyond u, Pareto sojourns have a power-law tail: the conditional log-normal
    # likelihood keeps rising as scale -> 0 and sigma -> inf (no maximum), and the
    # Weibull one as shape -> 0. Both must end on their search bound and say so.
    rng = np.random.default_rng(5)
    t = 10.0 * (1.0 - rng.uniform(size=400)) ** (-1.0 / 0.7)
    fit = fit_tail(t, np.ones(t.size, bool), ["lognormal", "weibull"], threshold=10.0)
    codes = {c.family: c.code for c in fit.candidates}
    assert codes == {"lognormal": "at_bound", "weibull": "at_bound"}
    assert "search bound" in fit.candidates[0].message


def test_lognormal_not_converged_is_reported(monkeypatch):
    x, obs = lognormal_sample(15)
    monkeypatch.setattr(tails, "_NEWTON_MAX_ITER", 1)
    fit = fit_tail(x, obs, ["lognormal"])
    cand = fit.candidates[0]
    assert cand.code == "not_converged" and "did not converge" in cand.message
    assert cand.params is not None and math.isfinite(cand.log_likelihood)


def test_tail_fit_leaves_the_process_warning_state_alone(monkeypatch):
    # The root cause of thread-dependent tail fits was an optimiser that swapped the
    # process-global warning filters (warnings.catch_warnings) around a fallback line
    # search: another thread restoring its own copy meanwhile let the warning through.
    # A fit must neither touch that state nor warn, on easy and hard samples.
    entered = []
    real = warnings.catch_warnings

    class Spy(real):
        def __enter__(self):
            entered.append(1)
            return super().__enter__()

    rng = np.random.default_rng(5)
    pareto = 10.0 * (1.0 - rng.uniform(size=400)) ** (-1.0 / 0.7)
    samples = [lognormal_sample(16), censored_weibull(17), (pareto, np.ones(400, bool))]
    before = list(warnings.filters)
    with monkeypatch.context() as m, np.errstate(all="raise"):
        # also under a caller's strictest floating-point settings: every underflow or
        # overflow inside is handled where it happens
        m.setattr(warnings, "catch_warnings", Spy)
        for x, obs in samples:
            for u in (0.0, 20.0):
                fit_tail(x, obs, threshold=u, min_events=5)
    assert entered == [] and warnings.filters == before


def test_tail_fits_on_threads_equal_serial_fits():
    # Two threads fitting at once, with warnings as errors and a neighbour thread
    # entering and leaving catch_warnings (as library code does) all the while.
    samples = [lognormal_sample(s, 300) for s in range(18, 26)]
    jobs = [(x, obs, u) for x, obs in samples for u in (0.0, 20.0)]

    def run(job):
        x, obs, u = job
        fit = fit_tail(x, obs, threshold=u, min_events=5)
        return [(c.family, c.code, c.params, c.log_likelihood) for c in fit.candidates]

    serial = [run(j) for j in jobs]
    stop = threading.Event()

    def neighbour():
        while not stop.is_set():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)

    from concurrent.futures import ThreadPoolExecutor

    side = threading.Thread(target=neighbour)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        side.start()
        try:
            with ThreadPoolExecutor(2) as ex:
                threaded = list(ex.map(run, jobs * 5))
        finally:
            stop.set()
            side.join()
    assert threaded == serial * 5
