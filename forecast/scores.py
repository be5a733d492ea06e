"""Proper scores of probabilistic forecasts given as samples, in one place.

Every function is vectorised over leading axes: a forecast is an array of
samples ``(..., m)`` (currency, or any unit) and the outcome an array ``(...)``
of the same unit. Point forecasts are samples with ``m = 1``; their CRPS is the
absolute error.

- :func:`crps_samples` — continuous ranked probability score of the empirical
  distribution of the samples (lower is better, same unit as the outcome);
- :func:`pinball_loss` — quantile (pinball) loss of predicted quantiles;
- :func:`pit` — probability integral transform (mid-rank for ties);
- :func:`interval_hits` — whether the outcome lies in a central interval;
- :func:`wilson_interval` — binomial confidence interval of a hit rate;
- :func:`crps_normal` — closed form for a normal forecast (the reference of the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special

from forecast.errors import ParameterError

_SQRT_2PI = np.sqrt(2 * np.pi)

__all__ = [
    "crps_normal",
    "crps_samples",
    "interval_hits",
    "pinball_loss",
    "pit",
    "sample_quantiles",
    "skill",
    "wilson_interval",
]


def _samples_and_outcome(
    samples: object, observed: object, caller: str
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(observed, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ParameterError(
            f"The `samples` parameter of `{caller}` must have at least one sample on its "
            f"last axis. Got shape {x.shape}."
        )
    if x.shape[:-1] != y.shape:
        raise ParameterError(
            f"The `observed` parameter of `{caller}` must have the shape of `samples` without "
            f"its last (sample) axis, {x.shape[:-1]}. Got {y.shape}."
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ParameterError(
            f"The `samples` and `observed` parameters of `{caller}` must be finite. "
            "Got NaN or infinite values."
        )
    return x, y


def crps_samples(samples: object, observed: object) -> np.ndarray:
    """CRPS of the empirical distribution of ``samples`` at the outcome ``observed``.

    ``CRPS(F, y) = ∫ (F(x) − 1{y ≤ x})² dx``, with ``F`` the empirical CDF of the
    ``m`` samples. Computed exactly by the energy form
    ``mean|X − y| − ½ mean|X − X'|``, the second term from the sorted samples:
    ``Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − m − 1) x_(i)`` (``i = 1..m``), so the cost is
    O(m log m).

    Parameters
    ----------
    samples : array_like, shape (..., m)
        Forecast samples (e.g. simulated bookings in currency); ``m = 1`` is a point
        forecast, whose CRPS is the absolute error.
    observed : array_like, shape (...)
        Outcomes, same unit.

    Returns
    -------
    ndarray, shape (...)
        CRPS, same unit as the outcome, ``>= 0``; 0 only if every sample equals the
        outcome.

    Notes
    -----
    This is the CRPS of the empirical distribution itself; as an estimate of the
    CRPS of the distribution the samples come from it is biased up by
    ``E|X − X'| / (2m)`` (for a normal, ``σ / (m √π)``).

    Examples
    --------
    >>> float(crps_samples([1.0, 2.0, 3.0], 2.0))
    0.2222222222222222
    >>> float(crps_samples([5.0], 3.0))
    2.0
    """
    x, y = _samples_and_outcome(samples, observed, "crps_samples")
    m = x.shape[-1]
    xs = np.sort(x, axis=-1)
    abs_err = np.abs(xs - y[..., None]).mean(axis=-1)
    weights = 2.0 * np.arange(1, m + 1) - m - 1.0  # (m,)
    spread = (xs * weights).sum(axis=-1) / (m * m)  # = ½ mean |X − X'|
    return np.maximum(abs_err - spread, 0.0)


def crps_normal(mu: object, sigma: object, observed: object) -> np.ndarray:
    """Closed-form CRPS of a normal forecast ``N(mu, sigma²)`` at ``observed``.

    ``CRPS = σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π]`` with ``z = (y − μ)/σ``
    (Gneiting & Raftery 2007, eq. 21).

    Parameters
    ----------
    mu, sigma, observed : array_like, broadcastable
        Mean, standard deviation (> 0) and outcome, same unit.

    Returns
    -------
    ndarray
        CRPS, same unit.
    """
    mu_, sd, y = (np.asarray(v, dtype=np.float64) for v in (mu, sigma, observed))
    if np.any(~(sd > 0)):
        raise ParameterError(f"The `sigma` parameter of `crps_normal` must be > 0. Got {sigma!r}.")
    z = (y - mu_) / sd
    return sd * (
        z * (2.0 * special.ndtr(z) - 1.0) + 2.0 * _normal_pdf(z) - 1.0 / math.sqrt(math.pi)
    )


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    """Standard normal density, as ``scipy.stats.norm.pdf`` computes it (without importing
    ``scipy.stats``, which takes half a second)."""
    return np.exp(-(z**2) / 2.0) / _SQRT_2PI


def _levels(levels: object, name: str, caller: str) -> np.ndarray:
    tau = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    if tau.ndim != 1 or tau.size == 0 or np.any(~((tau > 0) & (tau < 1))):
        raise ParameterError(
            f"The `{name}` parameter of `{caller}` must be probabilities strictly between "
            f"0 and 1. Got {levels!r}."
        )
    return tau


def sample_quantiles(samples: object, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of the samples at ``levels`` (linear interpolation, numpy's default).

    Parameters
    ----------
    samples : array_like, shape (..., m)
    levels : sequence of float in (0, 1), length n_levels

    Returns
    -------
    ndarray, shape (..., n_levels)
    """
    x = np.asarray(samples, dtype=np.float64)
    tau = _levels(levels, "levels", "sample_quantiles")
    return np.moveaxis(np.quantile(x, tau, axis=-1), 0, -1)


def pinball_loss(quantiles: object, levels: Sequence[float], observed: object) -> np.ndarray:
    """Pinball (quantile) loss of predicted quantiles.

    ``L_τ(q, y) = max(τ (y − q), (τ − 1)(y − q))``; its expectation is minimised
    by the true ``τ``-quantile, and twice its average over all levels in (0, 1)
    is the CRPS.

    Parameters
    ----------
    quantiles : array_like, shape (..., n_levels)
        Predicted quantiles, same unit as the outcome.
    levels : sequence of float in (0, 1), length n_levels
    observed : array_like, shape (...)

    Returns
    -------
    ndarray, shape (..., n_levels)
        Loss per level, same unit, ``>= 0``.

    Examples
    --------
    >>> pinball_loss([[10.0, 20.0]], [0.1, 0.75], [15.0]).tolist()
    [[0.5, 1.25]]
    """
    q = np.asarray(quantiles, dtype=np.float64)
    tau = _levels(levels, "levels", "pinball_loss")
    y = np.asarray(observed, dtype=np.float64)
    if q.ndim == 0 or q.shape[-1] != tau.size or q.shape[:-1] != y.shape:
        raise ParameterError(
            "The `quantiles` parameter of `pinball_loss` must have shape "
            f"{(*y.shape, tau.size)} (observed shape + one entry per level). Got {q.shape}."
        )
    diff = y[..., None] - q
    return np.maximum(tau * diff, (tau - 1.0) * diff)


def pit(samples: object, observed: object) -> np.ndarray:
    """Probability integral transform ``F(y)`` of the outcome under the samples.

    Ties count half (mid-rank PIT): ``(#{x < y} + ½ #{x = y}) / m``, so an
    outcome equal to every sample (e.g. zero bookings forecast and observed)
    gives 0.5. For a calibrated forecast the PIT is uniform on (0, 1).

    Parameters
    ----------
    samples : array_like, shape (..., m)
    observed : array_like, shape (...)

    Returns
    -------
    ndarray, shape (...)
        Values in [0, 1].
    """
    x, y = _samples_and_outcome(samples, observed, "pit")
    below = (x < y[..., None]).sum(axis=-1)
    equal = (x == y[..., None]).sum(axis=-1)
    return (below + 0.5 * equal) / x.shape[-1]


def interval_hits(samples: object, observed: object, coverage: float) -> np.ndarray:
    """Whether ``observed`` lies in the central ``coverage`` interval of the samples.

    The interval is ``[q_{(1−c)/2}, q_{(1+c)/2}]`` (sample quantiles, both ends
    included).

    Parameters
    ----------
    samples : array_like, shape (..., m)
    observed : array_like, shape (...)
    coverage : float in (0, 1)
        e.g. 0.8 for the P10–P90 interval.

    Returns
    -------
    ndarray of bool, shape (...)
    """
    x, y = _samples_and_outcome(samples, observed, "interval_hits")
    c = float(_levels(coverage, "coverage", "interval_hits")[0])
    lo_hi = np.quantile(x, [(1.0 - c) / 2.0, (1.0 + c) / 2.0], axis=-1)
    return (lo_hi[0] <= y) & (y <= lo_hi[1])


def wilson_interval(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score confidence interval of a binomial proportion ``hits / n``.

    Parameters
    ----------
    hits, n : int
        Successes and trials, ``0 <= hits <= n``.
    confidence : float, default 0.95

    Returns
    -------
    (low, high) : tuple of float
        ``(nan, nan)`` when ``n = 0``.
    """
    if n < 0 or hits < 0 or hits > n:
        raise ParameterError(
            f"`wilson_interval` needs 0 <= `hits` <= `n`. Got hits={hits!r}, n={n!r}."
        )
    if n == 0:
        return (math.nan, math.nan)
    z = float(special.ndtri(0.5 + confidence / 2.0))
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def skill(score: float, reference: float) -> float:
    """Skill score ``1 − score / reference`` (1 perfect, 0 no better, < 0 worse); nan if ``reference`` is 0."""
    return 1.0 - score / reference if reference > 0 else math.nan
