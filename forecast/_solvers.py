"""Scalar root finding and bounded minimisation, without importing :mod:`scipy.optimize`.

The fit finds a few roots (the shocks' profile-likelihood interval, the arrivals'
over-dispersion, a curve's median) and minimises a few one-dimensional functions (the
shocks' REML variance, the Weibull tails' profile likelihood). SciPy's solvers for
them are small loops, but importing :mod:`scipy.optimize` loads :mod:`scipy.linalg`,
:mod:`scipy.sparse` and the rest of the package: about 0.3 s of CPU on every start of
the command line, a tenth of a warm ``forecast demo``.

The two functions here take the same steps, in the same floating-point operations and
order, as :func:`scipy.optimize.brentq` and ``scipy.optimize.minimize_scalar(...,
method="bounded")`` (Brent's methods; the SciPy algorithms are BSD licensed), so they
return the same numbers bit for bit (``tests/test_solvers.py`` compares them on many
functions): fits, samples and fingerprints do not change.

This module depends on nothing else in the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["find_root", "minimize_bounded"]

#: SciPy's default relative tolerance of ``brentq`` (four machine epsilons).
_RTOL = 4 * 2.220446049250313e-16


def _negative(x: float) -> bool:
    """Whether the sign bit of ``x`` is set (C's ``signbit``: true for ``-0.0``)."""
    return math.copysign(1.0, x) < 0


def find_root(
    f: Callable[[float], float],
    lo: float,
    hi: float,
    *,
    xtol: float = 2e-12,
    rtol: float = _RTOL,
    maxiter: int = 100,
) -> float:
    """A root of ``f`` in ``[lo, hi]`` by Brent's method (as :func:`scipy.optimize.brentq`).

    Parameters
    ----------
    f : callable
        A continuous function of one float returning a float, with ``f(lo)`` and
        ``f(hi)`` of opposite signs.
    lo, hi : float
        The bracket.
    xtol, rtol : float
        The root is found to within ``xtol + rtol × |root|`` (``xtol > 0``, ``rtol``
        at least four machine epsilons).
    maxiter : int
        Iterations at most.

    Returns
    -------
    float
        The root.

    Raises
    ------
    ValueError
        If ``f(lo)`` and ``f(hi)`` have the same sign, ``f`` returns NaN, or a
        tolerance is too small.
    RuntimeError
        If the root is not found within ``maxiter`` iterations.
    """
    if not xtol > 0:
        raise ValueError(f"find_root: xtol must be > 0; got {xtol!r}")
    if not rtol >= _RTOL:
        raise ValueError(f"find_root: rtol must be >= {_RTOL!r}; got {rtol!r}")

    def value(x: float) -> float:
        fx = float(f(x))
        if math.isnan(fx):
            raise ValueError(f"find_root: the function is NaN at x={x!r}")
        return fx

    xpre, xcur = float(lo), float(hi)
    xblk = fblk = spre = scur = 0.0
    fpre, fcur = value(xpre), value(xcur)
    if fpre != 0 and fcur != 0 and _negative(fpre) == _negative(fcur):
        raise ValueError(
            f"find_root: f(lo) and f(hi) must have different signs; got f({xpre!r}) = "
            f"{fpre!r} and f({xcur!r}) = {fcur!r}"
        )
    if fpre == 0:
        return xpre
    if fcur == 0:
        return xcur
    for _ in range(maxiter):
        if fpre != 0 and fcur != 0 and _negative(fpre) != _negative(fcur):
            xblk, fblk = xpre, fpre
            spre = scur = xcur - xpre
        if abs(fblk) < abs(fcur):
            xpre, xcur, xblk = xcur, xblk, xcur
            fpre, fcur, fblk = fcur, fblk, fcur
        delta = (xtol + rtol * abs(xcur)) / 2
        sbis = (xblk - xcur) / 2
        if fcur == 0 or abs(sbis) < delta:
            return xcur
        if abs(spre) > delta and abs(fcur) < abs(fpre):
            if xpre == xblk:  # interpolate
                stry = _divide(-fcur * (xcur - xpre), fcur - fpre)
            else:  # extrapolate
                dpre = _divide(fpre - fcur, xpre - xcur)
                dblk = _divide(fblk - fcur, xblk - xcur)
                stry = _divide(-fcur * (fblk * dblk - fpre * dpre), dblk * dpre * (fblk - fpre))
            if 2 * abs(stry) < min(abs(spre), 3 * abs(sbis) - delta):  # a good short step
                spre, scur = scur, stry
            else:  # bisect
                spre = scur = sbis
        else:  # bisect
            spre = scur = sbis
        xpre, fpre = xcur, fcur
        if abs(scur) > delta:
            xcur += scur
        else:
            xcur += delta if sbis > 0 else -delta
        fcur = value(xcur)
    raise RuntimeError(f"find_root: no convergence in {maxiter} iterations (last x={xcur!r})")


def minimize_bounded(
    f: Callable[[float], float], lo: float, hi: float, *, xatol: float = 1e-5, maxiter: int = 500
) -> tuple[float, float]:
    """Minimise ``f`` on ``[lo, hi]`` (as ``scipy.optimize.minimize_scalar(method="bounded")``).

    Brent's method: golden-section steps and parabolic interpolation, never evaluating
    ``f`` at the bounds.

    Parameters
    ----------
    f : callable
        A function of one float returning a float.
    lo, hi : float
        Finite bounds, ``lo <= hi``.
    xatol : float
        Absolute tolerance of the minimiser.
    maxiter : int
        Function evaluations at most (the last point is returned when reached, as SciPy
        does).

    Returns
    -------
    x, fx : float
        The minimiser and ``f(x)``.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"minimize_bounded: need finite lo <= hi; got ({lo!r}, {hi!r})")
    sqrt_eps = math.sqrt(2.2e-16)
    golden_mean = 0.5 * (3.0 - math.sqrt(5.0))
    a, b = float(lo), float(hi)
    fulc = a + golden_mean * (b - a)
    nfc = xf = fulc
    rat = e = 0.0
    fx = float(f(xf))
    num = 1
    ffulc = fnfc = fx
    xm = 0.5 * (a + b)
    tol1 = sqrt_eps * abs(xf) + xatol / 3.0
    tol2 = 2.0 * tol1
    while abs(xf - xm) > (tol2 - 0.5 * (b - a)):
        golden = True
        if abs(e) > tol1:  # try a parabolic fit
            golden = False
            r = (xf - nfc) * (fx - ffulc)
            q = (xf - fulc) * (fx - fnfc)
            p = (xf - fulc) * q - (xf - nfc) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            r = e
            e = rat
            if abs(p) < abs(0.5 * q * r) and p > q * (a - xf) and p < q * (b - xf):
                rat = (p + 0.0) / q
                x = xf + rat
                if (x - a) < tol2 or (b - x) < tol2:
                    rat = tol1 * _sign_or_one(xm - xf)
            else:
                golden = True
        if golden:  # a golden-section step
            e = (a - xf) if xf >= xm else (b - xf)
            rat = golden_mean * e
        x = xf + _sign_or_one(rat) * max(abs(rat), tol1)
        fu = float(f(x))
        num += 1
        if fu <= fx:
            if x >= xf:
                a = xf
            else:
                b = xf
            fulc, ffulc = nfc, fnfc
            nfc, fnfc = xf, fx
            xf, fx = x, fu
        else:
            if x < xf:
                a = x
            else:
                b = x
            if fu <= fnfc or nfc == xf:
                fulc, ffulc = nfc, fnfc
                nfc, fnfc = x, fu
            elif fu <= ffulc or fulc == xf or fulc == nfc:
                fulc, ffulc = x, fu
        xm = 0.5 * (a + b)
        tol1 = sqrt_eps * abs(xf) + xatol / 3.0
        tol2 = 2.0 * tol1
        if num >= maxiter:
            break
    return xf, fx


def _divide(a: float, b: float) -> float:
    """``a / b`` as in C: ``±inf`` or NaN where Python raises ``ZeroDivisionError``."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _sign_or_one(x: float) -> float:
    """``sign(x)``, with 1 for zero (``np.sign(x) + (x == 0)``; NaN stays NaN)."""
    if x > 0 or x == 0:
        return 1.0
    return -1.0 if x < 0 else x
