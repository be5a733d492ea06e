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
from scipy import special

from forecast._solvers import find_root
from forecast._validation import as_datetime, check_bool, check_float, check_seed
from forecast.calendar import FiscalCalendar, check_calendar
from forecast.data.stages import StageMap
from forecast.errors import ParameterError

__all__ = [
    "SYNTHETIC_STAGES",
    "ArrivalProcess",
    "MarketDrift",
    "SojournDistribution",
    "SyntheticCRM",
    "SyntheticTruth",
    "generate_crm",
    "tilt_won_odds",
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

# Deal covariate traps (generate_crm's size_effect, push_effect, category_effect): true
# log hazard ratios of the cause-specific hazards per destination group (a move to
# another open stage, won, lost, no decision), the same in every stage.
_GROUPS = ("move", "won", "lost", "no_decision")
#: per doubling of the amount at the visit relative to the segment's median amount
_SIZE_BETA = (-0.15, -0.35, 0.10, 0.0)
#: per push of the close date so far (counted up to _PUSH_EFFECT_CAP pushes)
_PUSH_BETA = (-0.20, -0.30, 0.25, 0.20)
_PUSH_EFFECT_CAP = 5
#: first rep close date of a deal under push_effect: creation + gamma(2) with this mean
_EXOGENOUS_CLOSE_DAYS = {"SMB": 60.0, "MidMarket": 100.0, "Enterprise": 180.0}
_LEAD_SOURCES = ("Inbound", "Outbound", "Partner")
_LEAD_SOURCE_SHARES = (0.5, 0.3, 0.2)
_LEAD_SOURCE_BETA = {"Outbound": (0.0, -0.40, 0.20, 0.0), "Partner": (0.0, 0.50, -0.20, 0.0)}
_PRODUCT_LINES = ("Core", "Add-on")  # no effect
_PRODUCT_LINE_SHARES = (0.6, 0.4)
_HAZARD_GRID_POINTS = 2000
_HAZARD_SPAN = 80.0  # hazard grid up to this many stage means
_HAZARD_CHUNK = 400

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
    time_factor : float, default 1
        Every component stretched by this factor (a drifting pace, :class:`MarketDrift`).
    """

    weights: tuple[float, ...]
    components: tuple[Any, ...]
    time_factor: float = 1.0

    def pdf(self, t: Any) -> np.ndarray:
        """Density at ``t`` days (per day)."""
        f = self.time_factor
        x = np.asarray(t, dtype=np.float64) / f
        return sum(w * c.pdf(x) for w, c in zip(self.weights, self.components)) / f

    def cdf(self, t: Any) -> np.ndarray:
        """``P(T <= t)``, ``t`` in days."""
        x = np.asarray(t, dtype=np.float64) / self.time_factor
        return sum(w * c.cdf(x) for w, c in zip(self.weights, self.components))

    def sf(self, t: Any) -> np.ndarray:
        """``P(T > t)``, ``t`` in days."""
        x = np.asarray(t, dtype=np.float64) / self.time_factor
        return sum(w * c.sf(x) for w, c in zip(self.weights, self.components))

    def mean(self) -> float:
        """Mean sojourn in days."""
        m = sum(w * c.mean() for w, c in zip(self.weights, self.components))
        return float(m * self.time_factor)

    def stretched(self, factor: float) -> SojournDistribution:
        """The distribution of ``factor × T`` (days)."""
        return SojournDistribution(self.weights, self.components, self.time_factor * float(factor))

    def ppf(self, q: float) -> float:
        """Quantile in days: the ``t`` with ``cdf(t) = q`` (``0 < q < 1``)."""
        if not 0.0 < q < 1.0:
            raise ParameterError(f"The `q` parameter of `ppf` must be in (0, 1). Got {q!r}.")
        hi = max(float(c.ppf(q)) for c in self.components) * self.time_factor
        return find_root(lambda t: float(self.cdf(t)) - q, 0.0, hi, xtol=1e-10)

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
class MarketDrift:
    """How the market moves over calendar time: win odds and pace of every stage visit.

    A visit to an open stage entered at calendar time ``t`` (``y`` years after the
    generator's ``start``) draws its destination from the destination probabilities
    with the odds of "won" against every other destination multiplied by
    ``exp(win_log_odds(t))``, and its sojourn from the destination's distribution
    stretched by ``pace_factor(t)`` (1.2 = every sojourn 20 % longer). Both change

    - smoothly: ``win_log_odds_per_year * y`` and ``(1 + pace_per_year) ** y``;
    - and by a step at ``step_at``: ``+ step_win_log_odds`` and ``× (1 + step_pace)``
      for visits entered from then on.

    Build one with :meth:`smooth` or :meth:`step` (or both terms at once).

    Attributes
    ----------
    win_log_odds_per_year : float
        Change of the log-odds of winning per year (−0.3: odds × 0.74 per year).
    pace_per_year : float
        Relative change of every sojourn per year, compounding (0.2: +20 % per year).
    step_at : datetime or None
        Instant of the step change (naive UTC); None: no step.
    step_win_log_odds : float
        Change of the log-odds of winning at the step.
    step_pace : float
        Relative change of every sojourn at the step (0.5: 50 % longer).
    """

    win_log_odds_per_year: float = 0.0
    pace_per_year: float = 0.0
    step_at: dt.datetime | None = None
    step_win_log_odds: float = 0.0
    step_pace: float = 0.0

    def __post_init__(self) -> None:
        caller = "MarketDrift"
        for name, lo, hi in (
            ("win_log_odds_per_year", -5.0, 5.0),
            ("pace_per_year", -0.9, 10.0),
            ("step_win_log_odds", -10.0, 10.0),
            ("step_pace", -0.9, 10.0),
        ):
            value = check_float(getattr(self, name), name, caller, minimum=lo, maximum=hi)
            object.__setattr__(self, name, value)
        if self.step_at is not None:
            object.__setattr__(self, "step_at", as_datetime(self.step_at, "step_at", caller))

    @classmethod
    def smooth(cls, win_log_odds_per_year: float = -0.3, pace_per_year: float = 0.2) -> MarketDrift:
        """A steady drift: won log-odds and sojourn scale change a little every day."""
        return cls(win_log_odds_per_year=win_log_odds_per_year, pace_per_year=pace_per_year)

    @classmethod
    def step(cls, at: object, win_log_odds: float = -0.7, pace: float = 0.5) -> MarketDrift:
        """A step change at ``at`` (e.g. a new competitor): odds × e^win_log_odds, sojourns × (1 + pace)."""
        return cls(
            step_at=as_datetime(at, "at", "MarketDrift.step"),
            step_win_log_odds=win_log_odds,
            step_pace=pace,
        )

    def win_log_odds(self, t: object, start: object) -> float:
        """Shift of the won log-odds of a visit entered at ``t`` (generator started at ``start``)."""
        t, s = as_datetime(t, "t"), as_datetime(start, "start")
        years = (t - s).total_seconds() / 86400.0 / 365.25
        step = self.step_win_log_odds if self.step_at is not None and t >= self.step_at else 0.0
        return float(self.win_log_odds_per_year * years + step)

    def pace_factor(self, t: object, start: object) -> float:
        """Factor on every sojourn of a visit entered at ``t`` (generator started at ``start``)."""
        t, s = as_datetime(t, "t"), as_datetime(start, "start")
        years = (t - s).total_seconds() / 86400.0 / 365.25
        step = 1.0 + self.step_pace if self.step_at is not None and t >= self.step_at else 1.0
        return float((1.0 + self.pace_per_year) ** years * step)

    def _arrays(self, entry_days: np.ndarray, start: dt.datetime) -> tuple[np.ndarray, np.ndarray]:
        """(won log-odds shift, sojourn factor) of visits entered ``entry_days`` after ``start``."""
        years = entry_days / 365.25
        shift = self.win_log_odds_per_year * years
        pace = (1.0 + self.pace_per_year) ** years
        if self.step_at is not None:
            after = entry_days >= (self.step_at - start).total_seconds() / 86400.0
            shift = shift + np.where(after, self.step_win_log_odds, 0.0)
            pace = pace * np.where(after, 1.0 + self.step_pace, 1.0)
        return shift, pace

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "win_log_odds_per_year": self.win_log_odds_per_year,
            "pace_per_year": self.pace_per_year,
            "step_at": None if self.step_at is None else self.step_at.isoformat(),
            "step_win_log_odds": self.step_win_log_odds,
            "step_pace": self.step_pace,
        }


def tilt_won_odds(p: np.ndarray, log_odds: float | np.ndarray, won: int) -> np.ndarray:
    """Destination probabilities with the odds of ``won`` against the rest times ``exp(log_odds)``.

    Parameters
    ----------
    p : ndarray, shape (..., C)
        Probabilities over destination codes (last axis sums to 1).
    log_odds : float or ndarray broadcastable to ``p.shape[:-1]``
    won : int
        Code of the won outcome.
    """
    p = np.asarray(p, dtype=np.float64)
    m = np.exp(np.asarray(log_odds, dtype=np.float64))[..., None]
    out = p.copy()
    out[..., won] = p[..., won] * m[..., 0]
    return out / out.sum(axis=-1, keepdims=True)


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
        The process runs over ``[start, end)``; the log covers ``[start, end)``, or
        ``[recorded_from, end)`` when recorded from a later date.
    wins : polars.DataFrame
        Every win in the log: ``deal_id, won_at, amount, segment``.
    drift : MarketDrift or None
        How win odds and pace change over calendar time (None: a stationary market).
        The destination probabilities and sojourns above are those at ``start``;
        ``at=`` of the lookups gives them at another instant.
    recorded_from : datetime or None
        The log starts at this instant, with the deals then open already in progress
        (one row each at ``recorded_from``, their state then); None: recorded from
        ``start``.
    in_progress : tuple of str
        Deal ids open at ``recorded_from`` (empty when recorded from ``start``).
    covariate_effects : polars.DataFrame
        The deal covariates' true log hazard ratios (empty without covariate
        traps): ``covariate`` (the design column as
        :mod:`forecast.fit.covariates` names it: ``amount`` per doubling of the
        amount relative to the segment's median amount, ``pushes`` per push of
        the close date so far, ``lead_source=Outbound`` / ``lead_source=Partner``
        against ``Inbound``), ``stage``, ``destination`` (``move``, ``won``,
        ``lost``, ``no_decision``) and ``beta``: the cause-specific hazard of
        every destination of the group is multiplied by ``exp(beta · x)``.
        ``product_line`` has no effect.
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
    drift: MarketDrift | None = None
    recorded_from: dt.datetime | None = None
    in_progress: tuple[str, ...] = field(default=(), repr=False)
    covariate_effects: pl.DataFrame = field(default_factory=lambda: _effects_frame([]), repr=False)

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
    def _pace(self, at: object | None) -> float:
        return 1.0 if at is None or self.drift is None else self.drift.pace_factor(at, self.start)

    def destination_probabilities_at(self, segment: str, at: object | None = None) -> np.ndarray:
        """Destination probabilities ``(K, C)`` of a visit entered at ``at`` (default ``start``).

        Under a :class:`MarketDrift` the odds of "won" are tilted by its log-odds shift
        at ``at``; without drift they are :attr:`destination_probabilities`.
        """
        p = self.destination_probabilities[self._segment(segment)]
        if at is None or self.drift is None:
            return np.array(p)
        return tilt_won_odds(p, self.drift.win_log_odds(at, self.start), self.stage_map.WON)

    def absorption_probabilities(self, segment: str, at: object | None = None) -> np.ndarray:
        """Probability of ending won / lost / no decision from each open stage.

        Absorbing-chain closed form ``B = (I - Q)^-1 R`` on the destination
        probabilities (shocks not applied) of visits entered at ``at`` (default:
        ``start``; the market frozen at that instant).

        Returns
        -------
        numpy.ndarray
            Shape ``(K, 3)``: columns won, lost, no decision; rows sum to 1.
        """
        p = self.destination_probabilities_at(segment, at)
        k = self.stage_map.n_open
        return np.linalg.solve(np.eye(k) - p[:, :k], p[:, k:])

    def win_probability(self, segment: str, stage: str | int, at: object | None = None) -> float:
        """True probability that a deal now entering ``stage`` is eventually won.

        From ``(I - Q)^-1 R`` on the destination probabilities, without shocks, with
        the market frozen at ``at`` (default: ``start``).
        """
        return float(self.absorption_probabilities(segment, at)[self._open_code(stage), 0])

    def sojourn_distribution(
        self, segment: str, stage: str | int, destination: str | int, at: object | None = None
    ) -> SojournDistribution:
        """Sojourn (days) in ``stage`` given that the visit ends in ``destination``
        (entered at ``at``; default ``start``)."""
        key = (
            self._segment(segment),
            self.stage_map.open[self._open_code(stage)],
            self._destination_name(destination),
        )
        try:
            d = self.sojourn[key]
        except KeyError:
            raise ParameterError(
                f"Destination {key[2]!r} has probability 0 from stage {key[1]!r} in segment "
                f"{key[0]!r}; it has no sojourn distribution."
            ) from None
        pace = self._pace(at)
        return d if pace == 1.0 else d.stretched(pace)

    def stage_sojourn(
        self, segment: str, stage: str | int, at: object | None = None
    ) -> SojournDistribution:
        """All-cause sojourn (days) in ``stage``: mixture over destinations weighted by p
        (of a visit entered at ``at``; default ``start``)."""
        g = self._segment(segment)
        k = self._open_code(stage)
        p = self.destination_probabilities_at(g, at)[k]
        weights: list[float] = []
        comps: list[Any] = []
        for j, name in enumerate(self.stage_map.code_names):
            if p[j] > 0:
                d = self.sojourn[(g, self.stage_map.open[k], name)]
                weights.extend(float(p[j]) * w for w in d.weights)
                comps.extend(d.components)
        return SojournDistribution(tuple(weights), tuple(comps), self._pace(at))

    def median_sojourn(self, segment: str, stage: str | int, at: object | None = None) -> float:
        """Median all-cause sojourn in ``stage`` in days (mixture over destinations),
        of a visit entered at ``at`` (default ``start``)."""
        return self.stage_sojourn(segment, stage, at).median()

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


def _effects_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "covariate": pl.Utf8,
            "stage": pl.Utf8,
            "destination": pl.Utf8,
            "beta": pl.Float64,
        },
    )


def _true_effects(size: bool, pushes: bool, category: bool) -> dict[str, tuple[float, ...]]:
    """Design column -> true log hazard ratio per destination group."""
    out: dict[str, tuple[float, ...]] = {}
    if size:
        out["amount"] = _SIZE_BETA
    if pushes:
        out["pushes"] = _PUSH_BETA
    if category:
        for level, beta in _LEAD_SOURCE_BETA.items():
            out[f"lead_source={level}"] = beta
    return out


@dataclass(frozen=True)
class _Hazards:
    """Cause-specific baseline hazards of one (segment, stage) on a grid (days)."""

    u: np.ndarray  # (m,) grid, u[0] = 0
    cum: np.ndarray  # (C, m) cumulative hazards
    rate: np.ndarray  # (C, m) hazards


def _hazard_tables(t: _Tables) -> dict[tuple[int, int], _Hazards]:
    """The baseline cause-specific hazards ``p_j f_j(u) / S(u)`` of every (segment, stage)."""
    out = {}
    for g, seg in enumerate(_SEGMENTS):
        for k in range(_K):
            span = _HAZARD_SPAN * _STAGE_MEAN_DAYS[seg][k]
            u = np.concatenate([[0.0], np.geomspace(span * 1e-6, span, _HAZARD_GRID_POINTS)])
            dens = np.zeros((_C, u.size))
            surv = np.zeros(u.size)
            for j in range(_C):
                if t.p[g, k, j] > 0:
                    d = _sojourn_dist(t, g, k, j)
                    dens[j] = t.p[g, k, j] * d.pdf(u)
                    surv += t.p[g, k, j] * d.sf(u)
            rate = dens / np.maximum(surv, 1e-300)
            step = np.diff(u)[None, :] * 0.5 * (rate[:, 1:] + rate[:, :-1])
            cum = np.concatenate([np.zeros((_C, 1)), np.cumsum(step, axis=1)], axis=1)
            out[(g, k)] = _Hazards(u, cum, rate)
    return out


def _grouped_cum_at(
    t: np.ndarray, u: np.ndarray, c_grp: np.ndarray, r_end: np.ndarray
) -> np.ndarray:
    """Grouped cumulative hazards at days ``t`` (any shape), shape ``t.shape + (4,)``.

    Linear on the grid ``u``; beyond it the hazards stay at their last values ``r_end``.
    """
    tc = np.minimum(t, u[-1])
    out = np.stack([np.interp(tc, u, c_grp[q]) for q in range(4)], axis=-1)
    return out + np.maximum(t - u[-1], 0.0)[..., None] * r_end


def _hazard_exits(
    rng: np.random.Generator,
    hazards: dict[tuple[int, int], _Hazards],
    g: np.ndarray,
    k: np.ndarray,
    t0: np.ndarray,
    eta: np.ndarray,
    push_times: np.ndarray | None,
    shock: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Sojourn and destination of each visit under proportional cause-specific hazards.

    ``eta`` (n, 4) is each visit's fixed log hazard ratio per destination group;
    ``push_times`` (n, P) the times (days since the log start) of the deal's first
    pushes (``inf`` padded), each adding ``_PUSH_BETA``; ``shock(t_exit)`` the log
    odds added to "won" given the exit instant (the all-cause sojourn keeps its law).
    Exit time by inversion of the deal's cumulative hazard on the grid (constant
    hazards beyond it); destination with probability proportional to the deal's
    hazards at the exit time.
    """
    n = g.size
    soj = np.empty(n)
    dest = np.empty(n, dtype=np.int64)
    e = rng.standard_exponential(n)
    u_dest = rng.random(n)
    group_of = np.array([0] * _K + [1, 2, 3])
    push_beta = np.asarray(_PUSH_BETA, dtype=np.float64)
    pairs = np.unique(g * _K + k)
    n_cap = 0 if push_times is None else push_times.shape[1]
    for pair in pairs:
        gg, kk = divmod(int(pair), _K)
        hz = hazards[(gg, kk)]
        # cumulative hazard of each destination group on the grid, (4, m)
        c_grp = np.zeros((4, hz.u.size))
        r_end = np.zeros(4)
        for j in range(_C):
            c_grp[group_of[j]] += hz.cum[j]
            r_end[group_of[j]] += hz.rate[j, -1]
        u_end = hz.u[-1]

        idx_all = np.flatnonzero((g == gg) & (k == kk))
        for lo in range(0, idx_all.size, _HAZARD_CHUNK):
            idx = idx_all[lo : lo + _HAZARD_CHUNK]
            m = idx.size
            rows = np.arange(m)
            # pieces of constant covariates: pushes split the visit
            bounds = np.zeros((m, n_cap + 2))
            if n_cap:
                bounds[:, 1:-1] = np.clip(push_times[idx] - t0[idx][:, None], 0.0, None)
            bounds[:, -1] = np.inf
            p_level = np.arange(n_cap + 1)
            a_piece = np.exp(
                eta[idx][:, None, :] + push_beta[None, None, :] * p_level[None, :, None]
            )
            if not n_cap:
                a_piece = np.exp(eta[idx])[:, None, :]
            c_b = _grouped_cum_at(np.minimum(bounds, 1e12), hz.u, c_grp, r_end)  # (m, P + 2, 4)
            lam_b = np.concatenate(
                [np.zeros((m, 1)), np.cumsum((a_piece * np.diff(c_b, axis=1)).sum(axis=2), axis=1)],
                axis=1,
            )
            piece = np.minimum((lam_b[:, 1:] < e[idx][:, None]).sum(axis=1), n_cap)
            a_p = a_piece[rows, piece]  # (m, 4)
            base = lam_b[rows, piece] - (a_p * c_b[rows, piece]).sum(axis=1)
            lam = base[:, None] + a_p @ c_grp  # the piece's cumulative hazard on the grid
            cell = (lam < e[idx][:, None]).sum(axis=1)  # first grid point at or past e
            inside = cell < hz.u.size
            hi_c = np.minimum(cell, hz.u.size - 1)
            lo_c = np.maximum(hi_c - 1, 0)
            width = lam[rows, hi_c] - lam[rows, lo_c]
            frac = np.where(
                width > 0, (e[idx] - lam[rows, lo_c]) / np.where(width > 0, width, 1.0), 0.0
            )
            t_in = hz.u[lo_c] + np.clip(frac, 0.0, 1.0) * (hz.u[hi_c] - hz.u[lo_c])
            rate_end = (a_p * r_end[None, :]).sum(axis=1)
            t_out = u_end + (e[idx] - lam[:, -1]) / np.maximum(rate_end, 1e-300)
            t_exit = np.where(inside, t_in, t_out)
            soj[idx] = t_exit
            rate_t = np.stack([np.interp(t_exit, hz.u, hz.rate[j]) for j in range(_C)], axis=1)
            w = rate_t * a_p[:, group_of]
            with np.errstate(divide="ignore"):
                logw = np.log(w)
            logw[:, _WON] += shock(t0[idx] + t_exit)
            logw -= logw.max(axis=1, keepdims=True)
            post = np.exp(logw)
            post /= post.sum(axis=1, keepdims=True)
            cum = np.cumsum(post, axis=1)
            dest[idx] = np.minimum((cum < u_dest[idx][:, None]).sum(axis=1), _C - 1)
    return soj, dest


def _push_schedule(
    rng: np.random.Generator, created: np.ndarray, seg_of: np.ndarray, end_days: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rep close dates that ignore the deal's future: first close and every later push.

    The first close date is the creation plus a gamma(2) with the segment's mean
    (``_EXOGENOUS_CLOSE_DAYS``); whenever the close date passes it is pushed
    ``U(0, 3)`` days later by a gamma(2) with the segment's push mean. Returns
    ``close0`` and the pushes ``(deal, time, new close)`` up to ``end_days`` (the
    caller drops those after the deal's outcome).
    """
    n = created.size
    mean0 = np.array([_EXOGENOUS_CLOSE_DAYS[s] for s in _SEGMENTS])[seg_of]
    close0 = created + np.maximum(_CLOSE_MIN_DAYS, rng.gamma(2.0, mean0 / 2.0))
    push_mean = np.array([_PUSH_MEAN_DAYS[s] for s in _SEGMENTS])[seg_of]
    deals, times, closes = [], [], []
    cur = close0.copy()
    live = np.arange(n)
    while live.size:
        t_push = cur[live] + rng.uniform(0.0, _PUSH_DELAY_DAYS, live.size)
        ok = t_push < end_days
        live, t_push = live[ok], t_push[ok]
        new_close = t_push + np.maximum(1.0, rng.gamma(_PUSH_SHAPE, push_mean[live] / _PUSH_SHAPE))
        deals.append(live)
        times.append(t_push)
        closes.append(new_close)
        cur[live] = new_close

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    return close0, cat(deals, np.int64), cat(times, float), cat(closes, float)


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
    drift: MarketDrift | None = None,
    recorded_from: object | None = None,
    size_effect: bool = False,
    push_effect: bool = False,
    category_effect: bool = False,
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
    drift : MarketDrift, optional
        A market that moves: win odds and pace of every stage visit change with the
        calendar time of its entry, smoothly and/or by a step (:class:`MarketDrift`).
        Default: a stationary market.
    recorded_from : date, datetime or ISO string, optional
        Start the log at this instant (in ``(start, end)``) instead of ``start``: the
        process runs from ``start``, rows before ``recorded_from`` are dropped, and
        each deal open then gets one row at ``recorded_from`` holding its stage,
        amount and close date then (its ``created_at`` is kept), like a CRM whose
        history tracking was switched on with deals already in progress. Deals closed
        before it do not appear.
    size_effect : bool, default False
        Deals differ by size: the cause-specific exit hazards of a visit are
        multiplied by ``exp(beta · x)``, ``x`` the log₂ of the deal's amount over
        its segment's median amount, with ``beta`` = (−0.15, −0.35, +0.10, 0) for
        moves, wins, losses and no decisions: big deals win less often and move
        slower (``truth.covariate_effects``).
    push_effect : bool, default False
        Informative pushes: the rep's close dates ignore the deal's future (a
        first close date a gamma(2) after creation, pushed whenever it passes),
        and each push so far (up to five) multiplies the hazards by
        ``exp(beta)``, ``beta`` = (−0.20, −0.30, +0.25, +0.20): a deal pushed
        again and again is stuck.
    category_effect : bool, default False
        Add the columns ``lead_source`` (Inbound 50 %, Outbound 30 %, Partner
        20 %; Outbound wins less, Partner more) and ``product_line`` (Core 60 %,
        Add-on 40 %; no effect). With any of the three, the journeys are drawn
        from the proportional hazards (exit time by inversion of each deal's
        cumulative hazard, destination in proportion to its hazards at that
        time); with all three off the generator is exactly the one above.

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
    if drift is not None and not isinstance(drift, MarketDrift):
        raise ParameterError(
            "The `drift` parameter of `generate_crm` must be a `MarketDrift` (e.g. "
            f"`MarketDrift.smooth()`) or None. Got {type(drift).__name__}."
        )
    t_record = None
    if recorded_from is not None:
        t_record = as_datetime(recorded_from, "recorded_from", "generate_crm")
        if not t_start < t_record < t_end:
            raise ParameterError(
                "The `recorded_from` parameter of `generate_crm` must lie strictly between "
                f"`start` ({t_start}) and `end` ({t_end}). Got {t_record}."
            )
    size_effect = check_bool(size_effect, "size_effect", "generate_crm")
    push_effect = check_bool(push_effect, "push_effect", "generate_crm")
    category_effect = check_bool(category_effect, "category_effect", "generate_crm")
    hazard_mode = size_effect or push_effect or category_effect
    if drift is not None and hazard_mode:
        raise ParameterError(
            "The `drift` parameter of `generate_crm` cannot be combined with `size_effect`, "
            "`push_effect` or `category_effect` (the proportional-hazard journeys do not "
            "drift). Got drift and a covariate trap."
        )
    window = float(quarter_end_window_days)
    tables = _tables()
    ss = np.random.SeedSequence(int(seed))
    rng_arr, rng_walk, rng_close, rng_shock, rng_messy = (
        np.random.default_rng(s) for s in ss.spawn(5)
    )
    # covariate traps draw from their own stream (the default world is unchanged)
    rng_cov = np.random.default_rng(ss.spawn(1)[0])

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

    # -- deal covariates (traps) ------------------------------------------------------
    effects = _true_effects(size_effect, push_effect, category_effect)
    lead = rng_cov.choice(len(_LEAD_SOURCES), size=n_deals, p=_LEAD_SOURCE_SHARES)
    product = rng_cov.choice(len(_PRODUCT_LINES), size=n_deals, p=_PRODUCT_LINE_SHARES)
    lead_eta = np.zeros((n_deals, 4))
    if category_effect:
        for i, level in enumerate(_LEAD_SOURCES):
            if level in _LEAD_SOURCE_BETA:
                lead_eta[lead == i] = _LEAD_SOURCE_BETA[level]
    median_amount = np.array([_AMOUNT[s][0] for s in _SEGMENTS])[seg_of]
    hazards = _hazard_tables(tables) if hazard_mode else {}
    exo_push: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    push_times = None
    if push_effect:
        exo_push = _push_schedule(rng_close, created, seg_of, end_days)
        push_times = np.full((n_deals, _PUSH_EFFECT_CAP), np.inf)
        order_p = np.lexsort((exo_push[2], exo_push[1]))
        pd_, pt_ = exo_push[1][order_p], exo_push[2][order_p]
        rank = np.arange(pd_.size) - np.searchsorted(pd_, pd_, side="left")
        early = rank < _PUSH_EFFECT_CAP
        push_times[pd_[early], rank[early]] = pt_[early]

    def shock_of(t_exit: np.ndarray) -> np.ndarray:
        return z[quarter_index(t_exit)] if sigma_shock > 0.0 else np.zeros(t_exit.size)

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
        if hazard_mode:
            eta = lead_eta[active].copy()
            if size_effect:
                x_size = np.clip(np.log2(cur_amt[active] / median_amount[active]), -5.0, 5.0)
                eta += np.asarray(_SIZE_BETA)[None, :] * x_size[:, None]
            soj, dest = _hazard_exits(
                rng_cov,
                hazards,
                g,
                k,
                t0,
                eta,
                None if push_times is None else push_times[active],
                shock_of,
            )
            soj = np.maximum(soj, _MIN_SOJOURN_DAYS)
            t_exit = t0 + soj
            qi = quarter_index(t_exit)
        else:
            probs = tables.p[g, k]  # (n, C)
            pace = 1.0
            if drift is not None:  # the market at the visit's entry
                shift, pace = drift._arrays(t0, t_start)
                probs = tilt_won_odds(probs, shift, _WON)
            j0 = _categorical(rng_walk, probs)
            zombie = rng_walk.random(n) < tables.zombie_w[g, k, j0]
            t_gamma = rng_walk.gamma(tables.shape[g, k, j0], tables.scale[g, k, j0])
            t_zombie = rng_walk.lognormal(tables.zombie_mu[g, k, j0], tables.zombie_sigma[g, k, j0])
            soj = np.maximum(np.where(zombie, t_zombie, t_gamma) * pace, _MIN_SOJOURN_DAYS)
            t_exit = t0 + soj
            qi = quarter_index(t_exit)
            # Destination given the exit time, won odds tilted by the quarter's shock.
            with np.errstate(divide="ignore"):
                logw = np.log(probs) + _log_sojourn_density(tables, g, k, soj / pace)
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
    push_deal, push_t, push_close = [], [], []
    if exo_push is not None:
        close0, all_deal, all_t, all_close = exo_push
        before_outcome = all_t < outcome_t[all_deal]
        push_deal.append(all_deal[before_outcome])
        push_t.append(all_t[before_outcome])
        push_close.append(all_close[before_outcome])
    else:
        f_opt = rng_close.uniform(*_CLOSE_OPTIMISM, n_deals)
        close0 = created + np.maximum(_CLOSE_MIN_DAYS, f_opt * (outcome_t - created))
        push_mean = np.array([_PUSH_MEAN_DAYS[s] for s in _SEGMENTS])[seg_of]
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
    in_progress = np.zeros(0, dtype=np.int64)
    if t_record is not None:
        # The state of every deal at the recording start becomes one row dated then.
        r = days(t_record)
        last_before = (t_all <= r) & (
            (np.r_[deal[1:], -1] != deal) | (np.r_[t_all[1:], np.inf] > r)
        )
        state_row = last_before & (code < _K)
        in_progress = deal[state_row]
        t_all = np.where(state_row, r, t_all)
        keep &= (t_all > r) | state_row
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
    if category_effect:
        events = events.with_columns(
            pl.Series(
                "lead_source", np.array(_LEAD_SOURCES, dtype=object)[lead[deal]], dtype=pl.Utf8
            ),
            pl.Series(
                "product_line", np.array(_PRODUCT_LINES, dtype=object)[product[deal]], dtype=pl.Utf8
            ),
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
        drift=drift,
        recorded_from=t_record,
        in_progress=tuple(ids[in_progress].tolist()),
        covariate_effects=_effects_frame(
            [
                {"covariate": c, "stage": names[k], "destination": _GROUPS[grp], "beta": b[grp]}
                for c, b in effects.items()
                for k in range(_K)
                for grp in range(4)
            ]
        ),
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
