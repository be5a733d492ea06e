"""Synthetic CRM histories with known parameters.

:func:`generate_crm` simulates a deal history from a censoring-aware semi-Markov
model (clock reset at each stage entry, ``docs/model.md``) that contains every
trap a real history holds: censoring at the cut date, stale ("zombie") deals,
destination-dependent sojourns (losses linger), skips and backward moves,
amount revisions and discounts, the quarter-end push, segments of different
speed and size, growing seasonal over-dispersed arrivals, shared quarterly
shocks to the odds of winning, and optimistic rep close dates that get pushed.
The true parameters come back with the log (:class:`SyntheticTruth`), so tests
can check that a fit recovers them and that forecast intervals cover.

The model, for a deal of segment ``g`` entering open stage ``k`` at time ``t0``:

1. a destination ``J0`` is drawn from ``p[g][k]`` (length ``C`` over the stage
   codes of ``docs/internals.md`` §1), then the sojourn ``T | J0`` from the
   destination's distribution: gamma for moves and wins; for lost and no
   decision a mixture of a long gamma and a very long log-normal "zombie" part;
2. shared shock: the exit instant ``t0 + T`` falls in fiscal quarter ``q``, whose
   shock ``z_q ~ N(0, sigma_shock**2)`` multiplies the odds of "won" against the
   other destinations *given the exit time*: the destination is redrawn from
   ``P(J = j | T) ∝ p_j f_j(T)``, with the won term multiplied by ``exp(z_q)``.
   With ``sigma_shock = 0`` this is exactly the draw of step 1; in every case the
   all-cause sojourn ``T`` keeps its mixture law ``sum_j p_j f_j``;
3. quarter-end push: a win in the first ``W`` days of a quarter is moved, with
   probability ``pull_in``, to a uniform instant in the last ``W`` days of the
   previous quarter (no earlier than the stage entry);
4. amounts: revised (log-normal factor) with some probability at each move to an
   open stage; a win books ``amount * (1 - discount)``, the discount being deeper
   when the win falls in the last ``W`` days of its quarter.

Arrivals per segment are Poisson-gamma quarterly counts with a growth trend and
fiscal seasonality, creation instants uniform within the quarter. Every deal is
simulated to absorption; the log is then cut at ``end`` (open deals are censored:
they have no terminal row yet).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import polars as pl
from scipy import optimize, special

from forecast._validation import as_datetime, check_bool, check_float, check_seed
from forecast.calendar import FiscalCalendar, check_calendar
from forecast.data.stages import StageMap
from forecast.errors import ParameterError

__all__ = [
    "SYNTHETIC_STAGES",
    "ArrivalProcess",
    "SojournDistribution",
    "SyntheticCRM",
    "SyntheticTruth",
    "generate_crm",
]

#: Stage classification of every synthetic log.
SYNTHETIC_STAGES = StageMap(
    open=("Prospecting", "Qualification", "Proposal", "Negotiation"),
    won=("Closed Won",),
    lost=("Closed Lost",),
    no_decision=("No Decision",),
)
_K = SYNTHETIC_STAGES.n_open
_C = SYNTHETIC_STAGES.n_codes
_WON, _LOST, _ND = SYNTHETIC_STAGES.WON, SYNTHETIC_STAGES.LOST, SYNTHETIC_STAGES.NO_DECISION
_STAGE_NAMES = np.array(
    [*SYNTHETIC_STAGES.open, "Closed Won", "Closed Lost", "No Decision"], dtype=object
)

_SEGMENTS = ("SMB", "MidMarket", "Enterprise")
_REGIONS = ("AMER", "EMEA", "APAC")
_REGION_SHARES = (0.5, 0.3, 0.2)

# Destination probabilities p[segment][stage] over codes
# (Prospecting, Qualification, Proposal, Negotiation, won, lost, no decision).
_P = {
    "SMB": [
        [0.00, 0.55, 0.08, 0.00, 0.02, 0.25, 0.10],
        [0.03, 0.00, 0.55, 0.07, 0.03, 0.22, 0.10],
        [0.00, 0.05, 0.00, 0.57, 0.12, 0.18, 0.08],
        [0.00, 0.00, 0.05, 0.00, 0.62, 0.25, 0.08],
    ],
    "MidMarket": [
        [0.00, 0.50, 0.07, 0.00, 0.01, 0.28, 0.14],
        [0.04, 0.00, 0.50, 0.06, 0.02, 0.25, 0.13],
        [0.00, 0.07, 0.00, 0.52, 0.10, 0.20, 0.11],
        [0.00, 0.00, 0.07, 0.00, 0.55, 0.27, 0.11],
    ],
    "Enterprise": [
        [0.00, 0.45, 0.05, 0.00, 0.01, 0.29, 0.20],
        [0.05, 0.00, 0.45, 0.05, 0.01, 0.26, 0.18],
        [0.00, 0.08, 0.00, 0.48, 0.08, 0.20, 0.16],
        [0.00, 0.00, 0.08, 0.00, 0.50, 0.28, 0.14],
    ],
}
# Mean sojourn (days) of a forward move out of each open stage; other destinations
# scale from it.
_STAGE_MEAN_DAYS = {
    "SMB": (10.0, 14.0, 18.0, 12.0),
    "MidMarket": (18.0, 25.0, 32.0, 22.0),
    "Enterprise": (35.0, 45.0, 60.0, 40.0),
}
_FORWARD_SHAPE = 2.0
_BACKWARD = (1.3, 2.0)  # (mean multiple of the stage mean, gamma shape)
_WON_SOJOURN = (1.0, 2.5)
_LOST_SOJOURN = (2.5, 1.5)
_ND_SOJOURN = (3.5, 1.2)
_ZOMBIE_WEIGHT = {_LOST: 0.15, _ND: 0.30}  # stale share of lost / no-decision exits
_ZOMBIE_MEDIAN_MULTIPLE = 8.0  # zombie median = 8 x stage mean
_ZOMBIE_SIGMA = 0.5
_MIN_SOJOURN_DAYS = 1e-3  # 86 s: keeps successive rows of a deal strictly ordered

_ARRIVALS_PER_QUARTER = {"SMB": 150.0, "MidMarket": 65.0, "Enterprise": 11.0}
_SEASONALITY = (0.90, 1.00, 0.95, 1.15)  # fiscal Q1..Q4, mean 1
_ARRIVAL_DISPERSION = 25.0  # gamma shape of the quarterly rate multiplier (CV 20%)
_ENTRY_QUALIFICATION = {"SMB": 0.15, "MidMarket": 0.20, "Enterprise": 0.30}
_AMOUNT = {"SMB": (8_000.0, 0.6), "MidMarket": (40_000.0, 0.7), "Enterprise": (180_000.0, 0.8)}
_REVISION_PROBABILITY = 0.3
_REVISION = (-0.03, 0.2)  # log-normal (mu, sigma) of the amount factor at a revision
_DISCOUNT = (2.0, 38.0)  # beta(a, b) of the discount, mean 5%
_DISCOUNT_QUARTER_END = (3.0, 22.0)  # beta(a, b) in the quarter-end window, mean 12%
_CLOSE_OPTIMISM = (0.3, 0.8)  # initial close = created + U(lo, hi) x true time to outcome
_CLOSE_MIN_DAYS = 7.0
_PUSH_DELAY_DAYS = 3.0  # a passed close date is pushed U(0, 3) days later
_PUSH_MEAN_DAYS = {"SMB": 21.0, "MidMarket": 30.0, "Enterprise": 45.0}
_PUSH_SHAPE = 2.0
_SHOCK_QUARTERS_AFTER_END = 80  # shocks drawn this far past `end` (unobserved)

_DEFAULT_START = dt.datetime(2022, 1, 1)
_DEFAULT_END = dt.datetime(2025, 1, 1)


# ----------------------------------------------------------------------------------
# True parameter objects
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SojournDistribution:
    """A finite mixture of scipy frozen distributions of a sojourn, in days.

    Parameters
    ----------
    weights : tuple of float
        Mixture weights, summing to 1.
    components : tuple of scipy.stats frozen distributions
        One continuous distribution on ``[0, inf)`` per weight.
    """

    weights: tuple[float, ...]
    components: tuple[Any, ...]

    def pdf(self, t: Any) -> np.ndarray:
        """Density at ``t`` days (per day)."""
        return sum(w * c.pdf(t) for w, c in zip(self.weights, self.components))

    def cdf(self, t: Any) -> np.ndarray:
        """``P(T <= t)``, ``t`` in days."""
        return sum(w * c.cdf(t) for w, c in zip(self.weights, self.components))

    def sf(self, t: Any) -> np.ndarray:
        """``P(T > t)``, ``t`` in days."""
        return sum(w * c.sf(t) for w, c in zip(self.weights, self.components))

    def mean(self) -> float:
        """Mean sojourn in days."""
        return float(sum(w * c.mean() for w, c in zip(self.weights, self.components)))

    def ppf(self, q: float) -> float:
        """Quantile in days: the ``t`` with ``cdf(t) = q`` (``0 < q < 1``)."""
        if not 0.0 < q < 1.0:
            raise ParameterError(f"The `q` parameter of `ppf` must be in (0, 1). Got {q!r}.")
        hi = max(float(c.ppf(q)) for c in self.components)
        return float(optimize.brentq(lambda t: float(self.cdf(t)) - q, 0.0, hi, xtol=1e-10))

    def median(self) -> float:
        """Median sojourn in days."""
        return self.ppf(0.5)


@dataclass(frozen=True)
class ArrivalProcess:
    """New-deal arrivals of one segment.

    The count in a fiscal quarter starting ``y`` years after the log start is
    Poisson with mean ``per_quarter * scale * (1 + growth_per_year) ** y *
    seasonality[fiscal_quarter - 1] * G`` times the share of the quarter inside
    the log, with ``G ~ Gamma(shape=dispersion, scale=1/dispersion)`` drawn per
    quarter (over-dispersion). Creation instants are uniform within the quarter.

    Attributes
    ----------
    per_quarter : float
        Expected deals per quarter at the log start (already times ``scale``).
    growth_per_year : float
        Relative growth of the rate per year (0.15 = +15 %/year).
    seasonality : tuple of 4 float
        Multipliers of fiscal quarters 1..4 (mean 1).
    dispersion : float
        Gamma shape of the per-quarter rate multiplier (larger = closer to Poisson).
    entry_stage_probabilities : numpy.ndarray
        Shape ``(K,)``: probability that a new deal enters each open stage.
    amount : scipy.stats frozen lognorm
        Amount of a new deal (currency).
    """

    per_quarter: float
    growth_per_year: float
    seasonality: tuple[float, float, float, float]
    dispersion: float
    entry_stage_probabilities: np.ndarray
    amount: Any


@dataclass(frozen=True)
class SyntheticTruth:
    """The true parameters of a synthetic world, and true quantities derived from them.

    Attributes
    ----------
    stage_map : StageMap
        Stage classification (codes as in ``docs/internals.md`` §1).
    segments : tuple of str
        Values of the ``segment`` column.
    destination_probabilities : mapping str -> numpy.ndarray
        Per segment, shape ``(K, C)``: ``[k, j]`` is the probability that a visit to
        open stage ``k`` ends in code ``j`` (before shocks).
    sojourn : mapping (segment, stage, destination) -> SojournDistribution
        Sojourn in days given the destination, for every destination with
        positive probability; stage is an open-stage name, destination an
        open-stage name or ``"won"``, ``"lost"``, ``"no_decision"``.
    arrivals : mapping str -> ArrivalProcess
        New-deal process per segment.
    arrival_counts : polars.DataFrame
        Realised arrivals: ``segment, quarter, start, end, expected, count``
        (``expected`` includes trend, seasonality and the in-log share, not the
        gamma multiplier).
    amount_revision_probability : float
        Probability that a move into an open stage revises the amount.
    amount_revision : scipy.stats frozen lognorm
        Multiplicative factor of a revision.
    discount, discount_quarter_end : scipy.stats frozen beta
        Fraction taken off the amount when a deal is won, outside and inside the
        last ``quarter_end_window_days`` of a fiscal quarter.
    pull_in : float
        Probability ``pi`` that a win in the first ``W`` days of a quarter moves
        into the last ``W`` days of the previous quarter.
    quarter_end_window_days : float
        ``W``, in days.
    sigma_shock : float
        Standard deviation of the per-quarter log-odds shock on winning.
    shocks : polars.DataFrame
        Realised shocks of the quarters overlapping the log: ``quarter, start, end, z``.
    calendar : FiscalCalendar
        Fiscal calendar of quarters, seasonality, push and shocks.
    start, end : datetime.datetime
        The log covers ``[start, end)``.
    wins : polars.DataFrame
        Every win in the log: ``deal_id, won_at, amount, segment``.
    """

    stage_map: StageMap
    segments: tuple[str, ...]
    destination_probabilities: Mapping[str, np.ndarray]
    sojourn: Mapping[tuple[str, str, str], SojournDistribution]
    arrivals: Mapping[str, ArrivalProcess]
    arrival_counts: pl.DataFrame
    amount_revision_probability: float
    amount_revision: Any
    discount: Any
    discount_quarter_end: Any
    pull_in: float
    quarter_end_window_days: float
    sigma_shock: float
    shocks: pl.DataFrame
    calendar: FiscalCalendar
    start: dt.datetime
    end: dt.datetime
    wins: pl.DataFrame = field(repr=False)

    # -- lookups ---------------------------------------------------------------------
    def _segment(self, segment: str) -> str:
        if segment not in self.destination_probabilities:
            raise ParameterError(
                f"The `segment` parameter must be one of {list(self.segments)}. Got {segment!r}."
            )
        return segment

    def _open_code(self, stage: str | int) -> int:
        if isinstance(stage, int | np.integer) and 0 <= int(stage) < self.stage_map.n_open:
            return int(stage)
        if isinstance(stage, str) and stage in self.stage_map.open:
            return self.stage_map.open.index(stage)
        raise ParameterError(
            f"The `stage` parameter must be an open stage {list(self.stage_map.open)} "
            f"or its code 0..{self.stage_map.n_open - 1}. Got {stage!r}."
        )

    def _destination_name(self, destination: str | int) -> str:
        names = self.stage_map.code_names
        if isinstance(destination, int | np.integer) and 0 <= int(destination) < len(names):
            return names[int(destination)]
        if isinstance(destination, str):
            if destination in names:
                return destination
            if destination in self.stage_map.names():
                return names[self.stage_map.code(destination)]
        raise ParameterError(
            f"The `destination` parameter must be one of {list(names)} (or a stage name of "
            f"the StageMap, or a code 0..{len(names) - 1}). Got {destination!r}."
        )

    # -- true quantities ---------------------------------------------------------------
    def absorption_probabilities(self, segment: str) -> np.ndarray:
        """Probability of ending won / lost / no decision from each open stage.

        Absorbing-chain closed form ``B = (I - Q)^-1 R`` on the destination
        probabilities (shocks not applied).

        Returns
        -------
        numpy.ndarray
            Shape ``(K, 3)``: columns won, lost, no decision; rows sum to 1.
        """
        p = self.destination_probabilities[self._segment(segment)]
        k = self.stage_map.n_open
        return np.linalg.solve(np.eye(k) - p[:, :k], p[:, k:])

    def win_probability(self, segment: str, stage: str | int) -> float:
        """True probability that a deal now entering ``stage`` is eventually won.

        From ``(I - Q)^-1 R`` on the destination probabilities, without shocks.
        """
        return float(self.absorption_probabilities(segment)[self._open_code(stage), 0])

    def sojourn_distribution(
        self, segment: str, stage: str | int, destination: str | int
    ) -> SojournDistribution:
        """Sojourn (days) in ``stage`` given that the visit ends in ``destination``."""
        key = (
            self._segment(segment),
            self.stage_map.open[self._open_code(stage)],
            self._destination_name(destination),
        )
        try:
            return self.sojourn[key]
        except KeyError:
            raise ParameterError(
                f"Destination {key[2]!r} has probability 0 from stage {key[1]!r} in segment "
                f"{key[0]!r}; it has no sojourn distribution."
            ) from None

    def stage_sojourn(self, segment: str, stage: str | int) -> SojournDistribution:
        """All-cause sojourn (days) in ``stage``: mixture over destinations weighted by p."""
        g = self._segment(segment)
        k = self._open_code(stage)
        p = self.destination_probabilities[g][k]
        weights: list[float] = []
        comps: list[Any] = []
        for j, name in enumerate(self.stage_map.code_names):
            if p[j] > 0:
                d = self.sojourn[(g, self.stage_map.open[k], name)]
                weights.extend(float(p[j]) * w for w in d.weights)
                comps.extend(d.components)
        return SojournDistribution(tuple(weights), tuple(comps))

    def median_sojourn(self, segment: str, stage: str | int) -> float:
        """Median all-cause sojourn in ``stage`` in days (mixture over destinations)."""
        return self.stage_sojourn(segment, stage).median()

    def bookings(self, start: object, end: object) -> float:
        """True won amount (currency) of wins with ``start <= won_at < end``.

        Taken straight from the log's won rows, so ``end`` may not be later than the
        log's ``end``.
        """
        t0 = as_datetime(start, "start")
        t1 = as_datetime(end, "end")
        if t1 > self.end:
            raise ParameterError(
                f"The `end` parameter of `bookings` must be at most the log end {self.end}. "
                f"Got {t1}."
            )
        sel = self.wins.filter((pl.col("won_at") >= t0) & (pl.col("won_at") < t1))
        return float(sel["amount"].sum())


@dataclass(frozen=True)
class SyntheticCRM:
    """A synthetic deal history with its true parameters.

    Attributes
    ----------
    events : polars.DataFrame
        Event log, one row per change: ``deal_id`` (Utf8), ``timestamp``
        (Datetime us, naive UTC), ``stage`` (Utf8), ``amount`` (Float64, currency),
        ``close_date`` (Datetime us, rep's expected close), ``created_at``
        (Datetime us), ``segment`` (Utf8), ``region`` (Utf8, no effect).
    truth : SyntheticTruth
        True parameters and true derived quantities.
    stage_map : StageMap
        Classification of the ``stage`` values.
    messy_changes : mapping
        What ``messy=True`` did: ``duplicate_rows`` (int), ``reopened_deals``
        (tuple of deal ids), ``shuffled`` (bool). Empty changes when not messy.
    """

    events: pl.DataFrame
    truth: SyntheticTruth
    stage_map: StageMap
    messy_changes: Mapping[str, Any]


# ----------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tables:
    """Flat parameter arrays indexed ``[segment, stage, destination]``."""

    p: np.ndarray  # (G, K, C)
    shape: np.ndarray  # (G, K, C) gamma shape of the main component
    scale: np.ndarray  # (G, K, C) gamma scale (days)
    zombie_w: np.ndarray  # (G, K, C) weight of the log-normal zombie component
    zombie_mu: np.ndarray  # (G, K, C) log-normal mu (log days)
    zombie_sigma: np.ndarray  # (G, K, C)


def _tables() -> _Tables:
    g_n = len(_SEGMENTS)
    p = np.zeros((g_n, _K, _C))
    shape = np.ones((g_n, _K, _C))
    scale = np.ones((g_n, _K, _C))
    zw = np.zeros((g_n, _K, _C))
    zmu = np.zeros((g_n, _K, _C))
    zsig = np.full((g_n, _K, _C), _ZOMBIE_SIGMA)
    for g, seg in enumerate(_SEGMENTS):
        p[g] = np.asarray(_P[seg], dtype=float)
        for k in range(_K):
            mean_k = _STAGE_MEAN_DAYS[seg][k]
            for j in range(_C):
                if j < _K:
                    mult, a = (1.0, _FORWARD_SHAPE) if j > k else _BACKWARD
                else:
                    mult, a = {_WON: _WON_SOJOURN, _LOST: _LOST_SOJOURN, _ND: _ND_SOJOURN}[j]
                shape[g, k, j] = a
                scale[g, k, j] = mult * mean_k / a
                zw[g, k, j] = _ZOMBIE_WEIGHT.get(j, 0.0)
                zmu[g, k, j] = np.log(_ZOMBIE_MEDIAN_MULTIPLE * mean_k)
    assert np.allclose(p.sum(axis=2), 1.0)
    assert np.all(p[:, np.arange(_K), np.arange(_K)] == 0.0)
    return _Tables(p, shape, scale, zw, zmu, zsig)


def _sojourn_dist(t: _Tables, g: int, k: int, j: int) -> SojournDistribution:
    import scipy.stats as stats  # imported when used: it takes half a second

    main = stats.gamma(t.shape[g, k, j], scale=t.scale[g, k, j])
    w = float(t.zombie_w[g, k, j])
    if w == 0.0:
        return SojournDistribution((1.0,), (main,))
    zombie = stats.lognorm(t.zombie_sigma[g, k, j], scale=float(np.exp(t.zombie_mu[g, k, j])))
    return SojournDistribution((1.0 - w, w), (main, zombie))


def _log_sojourn_density(t: _Tables, g: np.ndarray, k: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Log density of every destination's sojourn at ``x``; shape ``(n, C)``."""
    a = t.shape[g, k]  # (n, C)
    s = t.scale[g, k]
    xx = x[:, None]
    with np.errstate(divide="ignore"):
        log_gamma = (a - 1.0) * np.log(xx) - xx / s - special.gammaln(a) - a * np.log(s)
        mu, sig, w = t.zombie_mu[g, k], t.zombie_sigma[g, k], t.zombie_w[g, k]
        log_ln = -np.log(xx * sig * np.sqrt(2.0 * np.pi)) - (np.log(xx) - mu) ** 2 / (2.0 * sig**2)
        return np.logaddexp(np.log1p(-w) + log_gamma, np.log(w) + log_ln)


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs`` (shape ``(n, m)``, rows sum to 1)."""
    u = rng.random(probs.shape[0])
    cum = np.cumsum(probs, axis=1)
    out = (cum < (u * cum[:, -1])[:, None]).sum(axis=1)
    return np.minimum(out, probs.shape[1] - 1)


# ----------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------
def _check_params(
    seed: object,
    start: dt.datetime,
    end: dt.datetime,
    sigma_shock: float,
    pull_in: float,
    scale: float,
    quarter_end_window_days: float,
    growth_per_year: float,
) -> None:
    caller = "generate_crm"
    check_seed(seed, caller)
    if end <= start:
        raise ParameterError(
            f"The `end` parameter of `generate_crm` must be later than `start` ({start}). "
            f"Got {end}."
        )
    check_float(sigma_shock, "sigma_shock", caller, minimum=0.0, maximum=5.0, high_open=True)
    check_float(pull_in, "pull_in", caller, minimum=0.0, maximum=1.0)
    check_float(scale, "scale", caller, minimum=0.0, maximum=100.0, low_open=True)
    check_float(
        quarter_end_window_days, "quarter_end_window_days", caller, minimum=0.0, maximum=30.0,
        low_open=True,
    )  # fmt: skip
    check_float(
        growth_per_year, "growth_per_year", caller, minimum=-0.9, maximum=10.0, low_open=True,
        high_open=True,
    )  # fmt: skip


def generate_crm(
    seed: int = 0,
    start: object = _DEFAULT_START,
    end: object = _DEFAULT_END,
    calendar: FiscalCalendar | None = None,
    sigma_shock: float = 0.3,
    pull_in: float = 0.4,
    scale: float = 1.0,
    messy: bool = False,
    *,
    quarter_end_window_days: float = 14.0,
    growth_per_year: float = 0.15,
) -> SyntheticCRM:
    """Simulate a CRM deal history with known parameters.

    Parameters
    ----------
    seed : int, default 0
        Seed of every random draw; the same seed and arguments give the same log.
        Arrivals, journeys, close dates and messy traps use independent streams
        spawned from it, so changing e.g. ``sigma_shock`` keeps the same arrivals.
    start, end : date, datetime or ISO string
        The log covers ``[start, end)`` (naive UTC); deals are created from
        ``start`` on and every row at or after ``end`` is cut. Default
        2022-01-01 to 2025-01-01 (three fiscal years with the default calendar).
    calendar : FiscalCalendar, optional
        Fiscal calendar for seasonality, the quarter-end push and the shocks.
        Default ``FiscalCalendar()`` (fiscal year = calendar year).
    sigma_shock : float, default 0.3
        Standard deviation of the shared per-quarter shock ``z_q`` on the log-odds
        of winning at every exit in quarter ``q``.
    pull_in : float, default 0.4
        Probability that a win in the first ``quarter_end_window_days`` of a quarter
        is moved into the last ``quarter_end_window_days`` of the previous one.
    scale : float, default 1.0
        Multiplier of the arrival rates (1.0: about 3,000 deals over three years).
    messy : bool, default False
        Add loader traps: exact duplicate rows (about 1 %), two re-opened lost
        deals, and shuffled row order. The truth describes the clean log.
    quarter_end_window_days : float, default 14.0
        ``W`` in days: window of the push and of the deeper quarter-end discount.
    growth_per_year : float, default 0.15
        Relative yearly growth of the arrival rates.

    Returns
    -------
    SyntheticCRM
        ``events`` (the log), ``truth`` (:class:`SyntheticTruth`) and ``stage_map``.

    Examples
    --------
    >>> crm = generate_crm(seed=1, scale=0.2)
    >>> sorted(crm.events["segment"].unique())
    ['Enterprise', 'MidMarket', 'SMB']
    >>> 0 < crm.truth.win_probability("SMB", "Prospecting") < 1
    True
    """
    import scipy.stats as stats  # imported when used: it takes half a second

    cal = check_calendar(calendar, "generate_crm")
    t_start = as_datetime(start, "start", "generate_crm")
    t_end = as_datetime(end, "end", "generate_crm")
    _check_params(
        seed, t_start, t_end, sigma_shock, pull_in, scale, quarter_end_window_days, growth_per_year
    )
    messy = check_bool(messy, "messy", "generate_crm")
    window = float(quarter_end_window_days)
    tables = _tables()
    ss = np.random.SeedSequence(int(seed))
    rng_arr, rng_walk, rng_close, rng_shock, rng_messy = (
        np.random.default_rng(s) for s in ss.spawn(5)
    )

    def days(x: dt.datetime) -> float:
        return (x - t_start).total_seconds() / 86400.0

    end_days = days(t_end)

    # Fiscal quarters from the one containing `start` to well past `end`.
    first_q = cal.quarter_of(t_start)
    n_log_q = 1
    while cal.shift(first_q, n_log_q).start < t_end:
        n_log_q += 1
    quarters = [cal.shift(first_q, i) for i in range(n_log_q + _SHOCK_QUARTERS_AFTER_END)]
    q_bounds = np.array([days(q.start) for q in quarters] + [days(quarters[-1].end)])
    z = sigma_shock * rng_shock.standard_normal(len(quarters))

    def quarter_index(t: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(q_bounds, t, side="right") - 1, 0, len(quarters) - 1)

    # -- arrivals ------------------------------------------------------------------
    arrivals: dict[str, ArrivalProcess] = {}
    count_rows: list[dict[str, Any]] = []
    created_parts, seg_parts = [], []
    for g, seg in enumerate(_SEGMENTS):
        mu_a, sig_a = _AMOUNT[seg]
        entry = np.zeros(_K)
        entry[1] = _ENTRY_QUALIFICATION[seg]
        entry[0] = 1.0 - entry[1]
        arrivals[seg] = ArrivalProcess(
            per_quarter=_ARRIVALS_PER_QUARTER[seg] * scale,
            growth_per_year=float(growth_per_year),
            seasonality=_SEASONALITY,
            dispersion=_ARRIVAL_DISPERSION,
            entry_stage_probabilities=_readonly(entry),
            amount=stats.lognorm(sig_a, scale=mu_a),
        )
        for qi in range(n_log_q):
            lo, hi = max(q_bounds[qi], 0.0), min(q_bounds[qi + 1], end_days)
            share = (hi - lo) / (q_bounds[qi + 1] - q_bounds[qi])
            years = lo / 365.25
            expected = (
                arrivals[seg].per_quarter
                * (1.0 + growth_per_year) ** years
                * _SEASONALITY[quarters[qi].quarter - 1]
                * share
            )
            mult = rng_arr.gamma(_ARRIVAL_DISPERSION, 1.0 / _ARRIVAL_DISPERSION)
            n = int(rng_arr.poisson(expected * mult))
            created_parts.append(lo + (hi - lo) * rng_arr.random(n))
            seg_parts.append(np.full(n, g, dtype=np.int64))
            count_rows.append(
                {
                    "segment": seg,
                    "quarter": quarters[qi].label,
                    "start": quarters[qi].start,
                    "end": quarters[qi].end,
                    "expected": expected,
                    "count": n,
                }
            )
    created = np.concatenate(created_parts)
    seg_of = np.concatenate(seg_parts)
    order = np.argsort(created, kind="stable")
    created, seg_of = created[order], seg_of[order]
    n_deals = created.size
    entry_q = np.array([_ENTRY_QUALIFICATION[s] for s in _SEGMENTS])[seg_of]
    stage0 = (rng_arr.random(n_deals) < entry_q).astype(np.int64)
    amt_mu = np.log(np.array([_AMOUNT[s][0] for s in _SEGMENTS]))[seg_of]
    amt_sig = np.array([_AMOUNT[s][1] for s in _SEGMENTS])[seg_of]
    amount0 = np.round(rng_arr.lognormal(amt_mu, amt_sig), 2)
    region = rng_arr.choice(len(_REGIONS), size=n_deals, p=_REGION_SHARES)

    # -- journeys (vectorised over deals, one step per stage visit) ------------------
    row_deal = [np.arange(n_deals)]
    row_t = [created.copy()]
    row_code = [stage0.copy()]
    row_amount = [amount0.copy()]
    cur_stage, cur_t, cur_amt = stage0.copy(), created.copy(), amount0.copy()
    active = np.arange(n_deals)
    rev_mu, rev_sig = _REVISION
    while active.size:
        g, k, t0 = seg_of[active], cur_stage[active], cur_t[active]
        n = active.size
        probs = tables.p[g, k]  # (n, C)
        j0 = _categorical(rng_walk, probs)
        zombie = rng_walk.random(n) < tables.zombie_w[g, k, j0]
        t_gamma = rng_walk.gamma(tables.shape[g, k, j0], tables.scale[g, k, j0])
        t_zombie = rng_walk.lognormal(tables.zombie_mu[g, k, j0], tables.zombie_sigma[g, k, j0])
        soj = np.maximum(np.where(zombie, t_zombie, t_gamma), _MIN_SOJOURN_DAYS)
        t_exit = t0 + soj
        qi = quarter_index(t_exit)
        # Destination given the exit time, won odds tilted by the quarter's shock.
        with np.errstate(divide="ignore"):
            logw = np.log(probs) + _log_sojourn_density(tables, g, k, soj)
        logw[:, _WON] += z[qi]
        logw -= logw.max(axis=1, keepdims=True)
        post = np.exp(logw)
        post /= post.sum(axis=1, keepdims=True)
        j_post = _categorical(rng_walk, post)
        dest = j_post if sigma_shock > 0.0 else j0
        # Quarter-end push of wins from the first W days of a quarter.
        q_start = q_bounds[qi]
        lo = np.maximum(t0, q_start - window)
        push = (
            (dest == _WON)
            & (t_exit - q_start < window)
            & (qi > 0)
            & (t0 < q_start - _MIN_SOJOURN_DAYS)
            & (rng_walk.random(n) < pull_in)
        )
        u_push = rng_walk.random(n)
        t_exit = np.where(
            push, np.maximum(lo + u_push * (q_start - lo), t0 + _MIN_SOJOURN_DAYS), t_exit
        )
        # Amounts: revisions at moves to open stages, discount at wins.
        revise = (dest < _K) & (rng_walk.random(n) < _REVISION_PROBABILITY)
        factor = rng_walk.lognormal(rev_mu, rev_sig, n)
        in_qe = q_bounds[quarter_index(t_exit) + 1] - t_exit <= window
        disc = np.where(
            in_qe,
            rng_walk.beta(*_DISCOUNT_QUARTER_END, n),
            rng_walk.beta(*_DISCOUNT, n),
        )
        amt = cur_amt[active]
        amt = np.where(revise, np.round(amt * factor, 2), amt)
        amt = np.where(dest == _WON, np.round(amt * (1.0 - disc), 2), amt)
        row_deal.append(active)
        row_t.append(t_exit)
        row_code.append(dest)
        row_amount.append(amt)
        cur_stage[active], cur_t[active], cur_amt[active] = dest, t_exit, amt
        active = active[dest < _K]
    outcome_t = cur_t  # absorption instant of every deal (days since start)

    # -- rep close dates -------------------------------------------------------------
    f_opt = rng_close.uniform(*_CLOSE_OPTIMISM, n_deals)
    close0 = created + np.maximum(_CLOSE_MIN_DAYS, f_opt * (outcome_t - created))
    push_mean = np.array([_PUSH_MEAN_DAYS[s] for s in _SEGMENTS])[seg_of]
    push_deal, push_t, push_close = [], [], []
    cur_close = close0.copy()
    live = np.arange(n_deals)
    while live.size:
        t_push = cur_close[live] + rng_close.uniform(0.0, _PUSH_DELAY_DAYS, live.size)
        ok = (t_push < outcome_t[live]) & (t_push < end_days)
        live, t_push = live[ok], t_push[ok]
        new_close = t_push + np.maximum(
            1.0, rng_close.gamma(_PUSH_SHAPE, push_mean[live] / _PUSH_SHAPE)
        )
        push_deal.append(live)
        push_t.append(t_push)
        push_close.append(new_close)
        cur_close[live] = new_close

    # -- assemble rows: stage rows then push rows, forward-filled per deal --------------
    s_deal = np.concatenate(row_deal)
    s_t = np.concatenate(row_t)
    s_code = np.concatenate(row_code)
    s_amt = np.concatenate(row_amount)
    s_close = np.full(s_deal.size, np.nan)
    s_close[:n_deals] = close0
    terminal = s_code >= _K
    s_close[terminal] = s_t[terminal]
    p_deal = np.concatenate(push_deal) if push_deal else np.zeros(0, np.int64)
    p_t = np.concatenate(push_t) if push_t else np.zeros(0)
    p_close = np.concatenate(push_close) if push_close else np.zeros(0)
    deal = np.concatenate([s_deal, p_deal])
    t_all = np.concatenate([s_t, p_t])
    code = np.concatenate([s_code, np.full(p_deal.size, -1)])
    amount = np.concatenate([s_amt, np.full(p_deal.size, np.nan)])
    close = np.concatenate([s_close, p_close])
    kind = np.concatenate([np.zeros(s_deal.size, np.int8), np.ones(p_deal.size, np.int8)])
    order = np.lexsort((kind, t_all, deal))
    deal, t_all, code, amount, close = (a[order] for a in (deal, t_all, code, amount, close))
    pos = np.arange(deal.size)
    code = code[np.maximum.accumulate(np.where(code >= 0, pos, 0))]
    amount = amount[np.maximum.accumulate(np.where(np.isfinite(amount), pos, 0))]
    close = close[np.maximum.accumulate(np.where(np.isfinite(close), pos, 0))]
    keep = t_all < end_days
    deal, t_all, code, amount, close = (a[keep] for a in (deal, t_all, code, amount, close))

    def to_ts(x: np.ndarray) -> np.ndarray:
        secs = np.round(x * 86400.0).astype(np.int64)
        return np.datetime64(t_start, "us") + secs * np.timedelta64(1, "s")

    ids = np.array([f"D{i + 1:06d}" for i in range(n_deals)], dtype=object)
    seg_names = np.array(_SEGMENTS, dtype=object)
    reg_names = np.array(_REGIONS, dtype=object)
    events = pl.DataFrame(
        {
            "deal_id": pl.Series(ids[deal], dtype=pl.Utf8),
            "timestamp": pl.Series(to_ts(t_all), dtype=pl.Datetime("us")),
            "stage": pl.Series(_STAGE_NAMES[code], dtype=pl.Utf8),
            "amount": pl.Series(amount, dtype=pl.Float64),
            "close_date": pl.Series(to_ts(close), dtype=pl.Datetime("us")),
            "created_at": pl.Series(to_ts(created[deal]), dtype=pl.Datetime("us")),
            "segment": pl.Series(seg_names[seg_of[deal]], dtype=pl.Utf8),
            "region": pl.Series(reg_names[region[deal]], dtype=pl.Utf8),
        }
    )

    # -- truth -------------------------------------------------------------------------
    sojourn: dict[tuple[str, str, str], SojournDistribution] = {}
    names = SYNTHETIC_STAGES.code_names
    for g, seg in enumerate(_SEGMENTS):
        for k in range(_K):
            for j in range(_C):
                if tables.p[g, k, j] > 0:
                    sojourn[(seg, names[k], names[j])] = _sojourn_dist(tables, g, k, j)
    wins = events.filter(pl.col("stage") == "Closed Won").select(
        "deal_id", pl.col("timestamp").alias("won_at"), "amount", "segment"
    )
    shocks = pl.DataFrame(
        {
            "quarter": [q.label for q in quarters[:n_log_q]],
            "start": pl.Series([q.start for q in quarters[:n_log_q]], dtype=pl.Datetime("us")),
            "end": pl.Series([q.end for q in quarters[:n_log_q]], dtype=pl.Datetime("us")),
            "z": z[:n_log_q],
        }
    )
    truth = SyntheticTruth(
        stage_map=SYNTHETIC_STAGES,
        segments=_SEGMENTS,
        destination_probabilities=MappingProxyType(
            {seg: _readonly(tables.p[g]) for g, seg in enumerate(_SEGMENTS)}
        ),
        sojourn=MappingProxyType(sojourn),
        arrivals=MappingProxyType(arrivals),
        arrival_counts=pl.DataFrame(
            count_rows,
            schema={
                "segment": pl.Utf8,
                "quarter": pl.Utf8,
                "start": pl.Datetime("us"),
                "end": pl.Datetime("us"),
                "expected": pl.Float64,
                "count": pl.Int64,
            },
        ),
        amount_revision_probability=_REVISION_PROBABILITY,
        amount_revision=stats.lognorm(rev_sig, scale=float(np.exp(rev_mu))),
        discount=stats.beta(*_DISCOUNT),
        discount_quarter_end=stats.beta(*_DISCOUNT_QUARTER_END),
        pull_in=float(pull_in),
        quarter_end_window_days=window,
        sigma_shock=float(sigma_shock),
        shocks=shocks,
        calendar=cal,
        start=t_start,
        end=t_end,
        wins=wins,
    )
    changes: dict[str, Any] = {"duplicate_rows": 0, "reopened_deals": (), "shuffled": False}
    if messy:
        events, changes = _make_messy(events, rng_messy, t_end)
    return SyntheticCRM(
        events=events,
        truth=truth,
        stage_map=SYNTHETIC_STAGES,
        messy_changes=MappingProxyType(changes),
    )


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


def _make_messy(
    events: pl.DataFrame, rng: np.random.Generator, end: dt.datetime
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Duplicate about 1 % of rows, re-open two lost deals, shuffle the rows."""
    n_dup = max(1, events.height // 100)
    dup = events[np.sort(rng.choice(events.height, size=n_dup, replace=False)).tolist()]
    # Lost at least 60 days before the cut, with an open stage before the loss.
    prev_stage = pl.col("stage").shift(1).over("deal_id")
    lost = events.with_columns(prev_stage.alias("_prev")).filter(
        (pl.col("stage") == "Closed Lost")
        & (pl.col("timestamp") < end - dt.timedelta(days=60))
        & pl.col("_prev").is_in(list(SYNTHETIC_STAGES.open))
    )
    chosen = lost[np.sort(rng.choice(lost.height, size=min(2, lost.height), replace=False))]
    extra = []
    for row in chosen.iter_rows(named=True):
        reopen_at = row["timestamp"] + dt.timedelta(days=float(rng.uniform(5.0, 20.0)))
        relost_at = reopen_at + dt.timedelta(days=float(rng.uniform(5.0, 30.0)))
        base = {k: row[k] for k in events.columns}
        extra.append(
            {
                **base,
                "timestamp": reopen_at,
                "stage": row["_prev"],
                "close_date": reopen_at + dt.timedelta(days=30),
            }
        )
        extra.append({**base, "timestamp": relost_at, "close_date": relost_at})
    extra_df = pl.DataFrame(extra, schema=events.schema).with_columns(
        pl.col("timestamp", "close_date").dt.truncate("1s")
    )
    messy = pl.concat([events, dup, extra_df])
    perm = rng.permutation(messy.height)
    changes = {
        "duplicate_rows": n_dup,
        "reopened_deals": tuple(chosen["deal_id"].to_list()),
        "shuffled": True,
    }
    return messy[perm.tolist()], changes
