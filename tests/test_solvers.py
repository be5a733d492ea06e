"""The scalar solvers of :mod:`forecast._solvers` return SciPy's numbers bit for bit.

The fit used :func:`scipy.optimize.brentq` and ``minimize_scalar(method="bounded")``;
the package's own copies exist only so that the command line does not import
:mod:`scipy.optimize`. The reference is SciPy itself, called on the same functions
(random smooth functions with fixed seeds, and edge cases): any difference in a
single bit would change fits, samples and fingerprints.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize

from forecast._solvers import find_root, minimize_bounded


def _root_cases(n: int) -> list[tuple[object, float, float, float]]:
    rng = np.random.default_rng(20261130)
    cases = []
    while len(cases) < n:
        c0, c1, c2 = rng.normal(size=3)
        s = float(rng.uniform(0.1, 5.0))

        def f(x: float, c0: float = c0, c1: float = c1, c2: float = c2, s: float = s) -> float:
            return math.tanh(c0 + s * x) + 0.2 * c1 * math.sin(3.0 * x) + 0.01 * c2 * x**3

        lo, hi = -float(rng.uniform(0.5, 6.0)), float(rng.uniform(0.5, 6.0))
        if f(lo) * f(hi) < 0:
            cases.append((f, lo, hi, float(10 ** rng.uniform(-14, -3))))
    return cases


@pytest.mark.parametrize("case", range(4))
def test_find_root_equals_brentq_bit_for_bit(case):
    for f, lo, hi, xtol in _root_cases(400)[case * 100 : (case + 1) * 100]:
        assert find_root(f, lo, hi, xtol=xtol) == optimize.brentq(f, lo, hi, xtol=xtol)
        assert find_root(f, hi, lo) == optimize.brentq(f, hi, lo)


def test_find_root_edge_cases_as_brentq():
    cases = [
        (lambda x: x - 0.25, 0.0, 1.0),  # linear: one interpolation step
        (lambda x: 1e-170 * (x - 0.3), -1.0, 0.5),  # f(lo) f(hi) underflows to -0
        (lambda x: x, 0.0, 1.0),  # a root at a bracket end
        (lambda x: math.copysign(1.0, x - 1 / 3), 0.0, 1.0),  # a jump: bisection only
    ]
    for f, lo, hi in cases:
        assert find_root(f, lo, hi) == optimize.brentq(f, lo, hi)
    flat = lambda x: (x - 0.5) ** 3  # noqa: E731  (neither converges in 100 iterations)
    with pytest.raises(RuntimeError):
        optimize.brentq(flat, 0.0, 2.0)
    with pytest.raises(RuntimeError, match="no convergence in 100"):
        find_root(flat, 0.0, 2.0)
    f = lambda x: (x - 1.0) * 1e-3  # noqa: E731
    assert find_root(f, 0.0, 5.0, xtol=1e-12, rtol=1e-10) == optimize.brentq(
        f, 0.0, 5.0, xtol=1e-12, rtol=1e-10
    )


def test_find_root_errors():
    with pytest.raises(ValueError, match="different signs"):
        find_root(lambda x: x * x + 1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        find_root(lambda x: math.nan if x > 0.1 else -1.0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="no convergence in 3"):
        find_root(lambda x: math.tanh(x - 0.123), -10.0, 10.0, maxiter=3)
    with pytest.raises(ValueError, match="xtol"):
        find_root(lambda x: x, -1.0, 1.0, xtol=0.0)


@pytest.mark.parametrize("case", range(4))
def test_minimize_bounded_equals_scipy_bit_for_bit(case):
    rng = np.random.default_rng(1000 + case)
    for _ in range(100):
        c = rng.normal(size=4)

        def f(x: float, c: np.ndarray = c) -> float:
            return float(c[0] * (x - c[1]) ** 2 + np.cos(3.0 * x * c[2]) + 0.1 * c[3] * x**4)

        lo = float(rng.uniform(-4.0, 0.0))
        hi = lo + float(rng.uniform(0.01, 6.0))
        xatol = float(10 ** rng.uniform(-12, -3))
        ref = optimize.minimize_scalar(
            f, bounds=(lo, hi), method="bounded", options={"xatol": xatol}
        )
        assert minimize_bounded(f, lo, hi, xatol=xatol) == (float(ref.x), float(ref.fun))
    ref = optimize.minimize_scalar(math.cos, bounds=(-1.0, 5.0), method="bounded")
    assert minimize_bounded(math.cos, -1.0, 5.0) == (float(ref.x), float(ref.fun))


def test_minimize_bounded_stops_at_maxiter_as_scipy():
    f = lambda x: abs(x - 0.3) ** 0.5  # noqa: E731  (a cusp: many steps)
    ref = optimize.minimize_scalar(
        f, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-12, "maxiter": 7}
    )
    assert ref.nfev == 7
    assert minimize_bounded(f, 0.0, 1.0, xatol=1e-12, maxiter=7) == (float(ref.x), float(ref.fun))
    with pytest.raises(ValueError, match="finite lo <= hi"):
        minimize_bounded(f, 1.0, 0.0)


def test_the_command_line_does_not_import_scipy_optimize():
    # The point of the module: `forecast demo` and the other commands start without it.
    script = "import sys, forecast.cli; print('scipy.optimize' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == "False"
