"""Competing-risk exits from a stage: Aalen–Johansen curves, tails, chain quantities.

A spell in an open stage ends after a sojourn ``T`` (days, clock reset at stage
entry) in a destination ``J`` (another open stage, won, lost or no decision;
codes of :class:`forecast.data.stages.StageMap`), or is right-censored when the
deal is still in the stage at the as-of date. This module estimates, with
censoring and case weights,

* the all-cause survival ``S(t) = P(T > t)`` (Kaplan–Meier) and the cumulative
  incidence ``F_j(t) = P(T <= t, J = j)`` of every destination (Aalen–Johansen),
  :func:`aalen_johansen`;
* :class:`ExitCurves`: those curves on an integer-day grid plus a parametric
  tail beyond the last observed duration (:mod:`forecast.fit.tails`), with age
  conditioning, day-binned exit densities, mixing (shrinkage) and perturbation
  (parameter draws), :func:`fit_exit_curves`;
* chain quantities over the open stages: eventual absorption probabilities
  ``B = (I − Q)⁻¹ R`` (:func:`absorption_probabilities`) and the win probability
  of a deal of a given age, eventually or within a number of days
  (:func:`win_probability`, :func:`win_time_density`).

The estimators are written out in ``docs/model.md`` (sections 2, 3 and 6).
Conventions (``docs/internals.md`` §1 and §4): ``C`` destination codes, ``-1``
marks a censored spell; ``cif_grid[j, d] = F_j(d)`` at ``d = 0 .. D`` with
``D = ceil(max duration)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forecast._kernels import ahead
from forecast._kernels.densities import scaled_day_densities
from forecast._solvers import find_root, minimize_bounded
from forecast._validation import check_int
from forecast.errors import ModelError, ParameterError
from forecast.fit.tails import TailFit, fit_tail

__all__ = [
    "AalenJohansen",
    "CensoredSpells",
    "ExitCurves",
    "TailPiece",
    "aalen_johansen",
    "absorption_probabilities",
    "fit_exit_curves",
    "win_probability",
    "win_time_density",
]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _check_time(name: str, t: Any) -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr < 0)
    if np.any(bad):
        flat = arr.reshape(-1)
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise ParameterError(
            f"`{name}` must be finite days ≥ 0. Got {float(flat[i])!r} at index {i}."
        )
    return arr


# ============================================================================================
# Censored spells
# ============================================================================================


@dataclass(frozen=True, eq=False)
class CensoredSpells:
    """Right-censored sojourns in one stage with their destinations.

    Parameters
    ----------
    durations : array_like of float, shape (n,)
        Days in the stage, ≥ 0 (exit − entry, or as-of − entry when censored).
    destinations : array_like of int, shape (n,)
        Destination stage code in ``0 .. n_codes − 1``, or ``-1`` if censored.
    n_codes : int
        ``C``, the number of stage codes (``StageMap.n_codes``).
    weights : array_like of float, shape (n,), optional
        Non-negative case weights, default 1 (the Bayesian bootstrap passes
        Dirichlet weights; an integer weight acts like repeated rows).
    entries : array_like of float, shape (n,), optional
        Delayed entry (left truncation), days on the sojourn clock: the spell was
        first observed ``entries[i]`` days after it entered the stage, so it is at
        risk only from then on (``0 ≤ entries ≤ durations``; default 0, observed from
        the stage entry). A deal already in progress when the log started has its
        stage time before the first record unobserved.

    Examples
    --------
    >>> s = CensoredSpells([3.0, 5.5, 8.0], [4, -1, 1], n_codes=7)
    >>> print(s)
    CensoredSpells(n=3, exits=2, censored=1, weight=3)
      exits by destination: 1: 1, 4: 1
    """

    durations: np.ndarray
    destinations: np.ndarray
    n_codes: int
    weights: np.ndarray | None = None
    entries: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_codes = check_int(self.n_codes, "n_codes", "CensoredSpells", minimum=1)
        d = np.array(self.durations, dtype=np.float64, copy=True)
        if d.ndim != 1:
            raise ParameterError(f"`durations` must be 1-D (n,). Got shape {d.shape}.")
        bad = np.flatnonzero(~np.isfinite(d) | (d < 0))
        if bad.size:
            raise ParameterError(
                f"`durations` must be finite days ≥ 0. Got {float(d[bad[0]])!r} at index {int(bad[0])}."
            )
        raw_j = np.asarray(self.destinations)
        if raw_j.shape != d.shape:
            raise ParameterError(
                f"`destinations` must have the shape of `durations` {d.shape}. Got {raw_j.shape}."
            )
        if raw_j.size and not np.issubdtype(raw_j.dtype, np.integer):
            as_int = raw_j.astype(np.int64)
            bad = np.flatnonzero(as_int != raw_j)
            if bad.size:
                raise ParameterError(
                    f"`destinations` must be integer stage codes. Got {raw_j[bad[0]]!r} at index {int(bad[0])}."
                )
        j = np.array(raw_j, dtype=np.int64, copy=True)
        bad = np.flatnonzero((j < -1) | (j >= n_codes))
        if bad.size:
            raise ParameterError(
                f"`destinations` must be codes in 0..{int(n_codes) - 1} or -1 (censored). "
                f"Got {int(j[bad[0]])} at index {int(bad[0])}."
            )
        if self.weights is None:
            w = np.ones_like(d)
        else:
            w = np.array(self.weights, dtype=np.float64, copy=True)
            if w.shape != d.shape:
                raise ParameterError(
                    f"`weights` must have the shape of `durations` {d.shape}. Got {w.shape}."
                )
            bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
            if bad.size:
                raise ParameterError(
                    f"`weights` must be finite and ≥ 0. Got {float(w[bad[0]])!r} at index {int(bad[0])}."
                )
        entries = None
        if self.entries is not None:
            e = np.array(self.entries, dtype=np.float64, copy=True)
            if e.shape != d.shape:
                raise ParameterError(
                    f"`entries` must have the shape of `durations` {d.shape}. Got {e.shape}."
                )
            bad = np.flatnonzero(~np.isfinite(e) | (e < 0) | (e > d))
            if bad.size:
                i = int(bad[0])
                raise ParameterError(
                    "`entries` must be finite days in [0, duration] (the spell is observed "
                    f"from its entry on). Got {float(e[i])!r} with duration {float(d[i])!r} "
                    f"at index {i}."
                )
            entries = _readonly(e) if np.any(e > 0) else None
        object.__setattr__(self, "n_codes", int(n_codes))
        object.__setattr__(self, "durations", _readonly(d))
        object.__setattr__(self, "destinations", _readonly(j))
        object.__setattr__(self, "weights", _readonly(w))
        object.__setattr__(self, "entries", entries)

    @classmethod
    def trusted(
        cls,
        durations: np.ndarray,
        destinations: np.ndarray,
        n_codes: int,
        weights: np.ndarray,
        entries: np.ndarray | None = None,
    ) -> CensoredSpells:
        """Spells from arrays that are already valid, without checking or copying them again.

        For callers that validated the arrays once for many fits (e.g. every
        bootstrap draw of :class:`forecast.fit.data.FitData`): ``durations`` float64
        finite ≥ 0, ``destinations`` int64 in ``-1 .. n_codes - 1``, ``weights``
        float64 finite ≥ 0 and ``entries`` (optional) float64 in ``[0, durations]``,
        all of shape (n,).
        """
        obj = object.__new__(cls)
        object.__setattr__(obj, "n_codes", int(n_codes))
        object.__setattr__(obj, "durations", _readonly(durations))
        object.__setattr__(obj, "destinations", _readonly(destinations))
        object.__setattr__(obj, "weights", _readonly(weights))
        has = entries is not None and bool(np.any(entries > 0))
        object.__setattr__(obj, "entries", _readonly(entries) if has else None)
        return obj

    @property
    def entry_days(self) -> np.ndarray:
        """float64 (n,): delayed entry of each spell (days; 0 when observed from its entry)."""
        return np.zeros(self.n) if self.entries is None else self.entries

    @classmethod
    def right_censored(
        cls, durations: Any, censored: Any, destinations: Any, n_codes: int, weights: Any = None
    ) -> CensoredSpells:
        """Build from a censoring flag; destinations of censored spells are ignored."""
        c = np.asarray(censored, dtype=bool)
        j = np.where(c, -1, np.asarray(destinations, dtype=np.int64))
        return cls(durations, j, n_codes, weights)

    @property
    def n(self) -> int:
        """Number of spells (rows, whatever their weight)."""
        return int(self.durations.size)

    @property
    def observed(self) -> np.ndarray:
        """bool (n,): ``True`` where the spell ended with an exit."""
        return self.destinations >= 0

    @property
    def n_censored(self) -> int:
        """Number of right-censored spells."""
        return int(np.count_nonzero(self.destinations < 0))

    @property
    def event_counts(self) -> np.ndarray:
        """int64 (C,): exits per destination code (unweighted)."""
        obs = self.destinations >= 0
        return np.bincount(self.destinations[obs], minlength=self.n_codes).astype(np.int64)

    @property
    def weighted_event_counts(self) -> np.ndarray:
        """float64 (C,): total weight of the exits per destination code."""
        obs = self.destinations >= 0
        return np.bincount(
            self.destinations[obs], weights=self.weights[obs], minlength=self.n_codes
        )

    def subset(self, mask: Any) -> CensoredSpells:
        """The spells selected by a boolean mask or index array."""
        return CensoredSpells(
            self.durations[mask],
            self.destinations[mask],
            self.n_codes,
            self.weights[mask],
            None if self.entries is None else self.entries[mask],
        )

    def with_weights(self, weights: Any) -> CensoredSpells:
        """The same spells with new case weights, shape (n,)."""
        return CensoredSpells(
            self.durations, self.destinations, self.n_codes, weights, self.entries
        )

    def __str__(self) -> str:
        counts = self.event_counts
        by_dest = ", ".join(f"{j}: {int(c)}" for j, c in enumerate(counts) if c)
        return (
            f"CensoredSpells(n={self.n}, exits={int(counts.sum())}, censored={self.n_censored}, "
            f"weight={float(self.weights.sum()):g})\n"
            f"  exits by destination: {by_dest or 'none'}"
        )

    def __repr__(self) -> str:
        return str(self).splitlines()[0]


# ============================================================================================
# Aalen–Johansen
# ============================================================================================


@dataclass(frozen=True, eq=False)
class AalenJohansen:
    """Aalen–Johansen step functions at the distinct exit times.

    All curves are right-continuous steps: the value at ``times[i]`` holds on
    ``[times[i], times[i + 1])``; before ``times[0]`` ``S = 1`` and ``F = 0``.

    Attributes
    ----------
    times : float64 (m,)
        Distinct durations (days) with positive exit weight, increasing.
    survival : float64 (m,)
        Kaplan–Meier all-cause ``S(times[i])``.
    cif : float64 (C, m)
        ``F_j(times[i]) = P(T <= times[i], J = j)``; ``cif.sum(0) = 1 − survival``.
    at_risk : float64 (m,)
        Weight of spells with duration ≥ ``times[i]`` (censorings at a time are at
        risk at it: exits count before censorings).
    exits : float64 (C, m)
        Weight of exits to each destination at ``times[i]``.
    """

    times: np.ndarray
    survival: np.ndarray
    cif: np.ndarray
    at_risk: np.ndarray
    exits: np.ndarray

    def evaluate(self, t: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(S(t), F(t))`` of the step functions: shapes ``t.shape`` and ``(C,) + t.shape``."""
        t = _check_time("t", t)
        idx = np.searchsorted(self.times, t, side="right") - 1
        safe = np.maximum(idx, 0)
        c = self.cif.shape[0]
        if self.times.size == 0:
            return np.ones_like(t), np.zeros((c, *t.shape))
        s = np.where(idx >= 0, self.survival[safe], 1.0)
        f = np.where(idx >= 0, self.cif[:, safe], 0.0)
        return s, f

    def median(self) -> float:
        """Smallest exit time with ``S <= 1/2`` (days); ``nan`` if never reached."""
        below = np.flatnonzero(self.survival <= 0.5)
        return float(self.times[below[0]]) if below.size else float("nan")


def aalen_johansen(spells: CensoredSpells) -> AalenJohansen:
    """Weighted Aalen–Johansen cumulative incidences and Kaplan–Meier survival.

    At each distinct exit time ``t_i`` with at-risk weight ``Y_i`` and exit
    weights ``d_ij``: ``S(t_i) = Π_{k<=i} (1 − Σ_j d_kj / Y_k)`` and
    ``F_j(t_i) = Σ_{k<=i} S(t_{k−1}) d_kj / Y_k``. Ties: several exits at one
    time enter together; spells censored at an exit time are still at risk at it.
    A spell with a delayed entry ``e`` (:attr:`CensoredSpells.entries`) is at risk
    from ``e`` on: ``Y_i`` is the weight of the spells with ``e ≤ t_i ≤ T``.
    Fully vectorised (one sort, cumulative sums); 10⁶ spells take well under a
    second.

    Parameters
    ----------
    spells : CensoredSpells
        ``n`` spells of one stage.

    Returns
    -------
    AalenJohansen
        Step functions at the ``m`` distinct exit times with positive weight.

    Examples
    --------
    >>> aj = aalen_johansen(CensoredSpells([1.0, 2.0, 2.0, 3.0], [3, -1, 4, 3], n_codes=5))
    >>> aj.times.tolist(), aj.survival.tolist()
    ([1.0, 2.0, 3.0], [0.75, 0.5, 0.0])
    >>> aj.cif[3].tolist(), aj.cif[4].tolist()
    ([0.25, 0.25, 0.75], [0.0, 0.25, 0.25])
    """
    c = spells.n_codes
    empty = AalenJohansen(
        _readonly(np.zeros(0)), _readonly(np.zeros(0)), _readonly(np.zeros((c, 0))),
        _readonly(np.zeros(0)), _readonly(np.zeros((c, 0))),
    )  # fmt: skip
    if spells.n == 0:
        return empty
    order = np.argsort(spells.durations)
    d = spells.durations[order]
    w = spells.weights[order]
    j = spells.destinations[order]
    # weight of the spells with duration >= d[i], read at the first row of each tie group
    tail_weight = np.cumsum(w[::-1])[::-1]
    first_of_tie = np.r_[True, d[1:] != d[:-1]]
    group_start = np.maximum.accumulate(np.where(first_of_tie, np.arange(d.size), 0))
    ev = np.flatnonzero((j >= 0) & (w > 0))
    if ev.size == 0:
        return empty
    ev_start = group_start[ev]  # identifies the distinct time of each exit row
    new_time = np.r_[True, ev_start[1:] != ev_start[:-1]]
    time_index = np.cumsum(new_time) - 1
    starts = ev_start[new_time]
    times = d[starts]
    at_risk = tail_weight[starts]
    m = times.size
    exits = np.bincount(j[ev] * m + time_index, weights=w[ev], minlength=c * m).reshape(c, m)
    all_exits = np.bincount(time_index, weights=w[ev], minlength=m)
    if spells.entries is not None:  # not yet at risk: entry > t (and then also T > t)
        by_entry = np.argsort(spells.entries, kind="stable")
        cum = np.r_[0.0, np.cumsum(spells.weights[by_entry])]
        later = cum[-1] - cum[np.searchsorted(spells.entries[by_entry], times, side="right")]
        # an exit at t is at risk at t (entry < T), so rounding never leaves Y below it
        at_risk = np.maximum(at_risk - later, all_exits)
    hazard = np.minimum(all_exits / at_risk, 1.0)
    survival = np.cumprod(1.0 - hazard)
    lagged = np.r_[1.0, survival[:-1]]
    cif = exits * (lagged / at_risk)
    np.cumsum(cif, axis=1, out=cif)
    return AalenJohansen(
        _readonly(times), _readonly(survival), _readonly(cif), _readonly(at_risk), _readonly(exits)
    )


# ============================================================================================
# Exit curves on a day grid with parametric tails
# ============================================================================================


@dataclass(frozen=True, eq=False)
class TailPiece:
    """Probability mass still in the stage at the grid end, leaving by a parametric tail.

    For curve time ``t >= D`` (``D`` the grid end of the owning curves) the mass
    of this piece still in the stage is
    ``mass * S_fit(t + offset) / S_fit(D + offset)``, and it leaves to
    destination ``j`` with probability ``shares[j]``.

    Attributes
    ----------
    mass : float
        Probability of still being in the stage at ``D`` carried by this piece.
    offset : float
        Days added to the curve clock to read the tail fit's clock (non-zero
        after age conditioning).
    fit : TailFit
    shares : float64 (C,)
        Destination mix of exits from this piece (sums to 1, or 0 if no exits).
    """

    mass: float
    offset: float
    fit: TailFit
    shares: np.ndarray

    def remaining(self, t: np.ndarray, grid_end: float) -> np.ndarray:
        """Mass of the piece still in the stage at curve times ``t >= grid_end``."""
        if self.mass == 0.0:
            return np.zeros_like(t)
        log_ratio = self.fit.log_survival(t + self.offset) - self.fit.log_survival(
            np.float64(grid_end + self.offset)
        )
        return self.mass * np.exp(np.minimum(log_ratio, 0.0))

    def eventual_exit(self) -> float:
        """Mass that eventually leaves (all of it, unless the tail is ``"none"``)."""
        return 0.0 if self.fit.family == "none" else float(self.mass)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mass": float(self.mass),
            "offset": float(self.offset),
            "fit": self.fit.to_dict(),
            "shares": [float(x) for x in self.shares],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TailPiece:
        return cls(
            float(d["mass"]),
            float(d["offset"]),
            TailFit.from_dict(d["fit"]),
            _readonly(np.asarray(d["shares"], dtype=np.float64)),
        )


@dataclass(frozen=True, eq=False)
class ExitCurves:
    """Exit curves of one stage: cumulative incidences on a day grid plus tails.

    Parameters
    ----------
    cif_grid : float64 (C, D + 1)
        ``cif_grid[j, d] = P(T <= d, J = j)`` at integer days ``d = 0 .. D``.
        Between integer days the curves are linear (exits spread uniformly
        within a day); the values at integer days are exact Aalen–Johansen
        values for a fitted curve.
    tail_pieces : tuple of TailPiece
        The mass still in the stage at ``D`` and how it leaves (one piece for a
        fitted curve; mixtures keep one piece per component). The masses sum to
        ``S(D)``.
    counts : int64 (C,)
        Observed exits per destination behind the fit (unweighted; for mixed or
        scaled curves, those of the curve the method was called on).
    n_censored : int
        Censored spells behind the fit.

    Notes
    -----
    All-cause survival is ``S(t) = 1 − Σ_j F_j(t)``. Beyond ``D``,
    ``F_j(t) = F_j(D) + Σ_p shares_pj (mass_p − remaining_p(t))``, which for a
    fitted curve is internals §4: ``S(t) = S(D) S_tail(t) / S_tail(D)`` with exits
    split by ``tail_shares``.
    """

    cif_grid: np.ndarray
    tail_pieces: tuple[TailPiece, ...]
    counts: np.ndarray
    n_censored: int

    def __post_init__(self) -> None:
        g = np.array(self.cif_grid, dtype=np.float64, copy=True)
        if g.ndim != 2 or g.shape[1] < 1:
            raise ParameterError(f"`cif_grid` must be (C, D + 1) with D ≥ 0. Got shape {g.shape}.")
        if not np.all(np.isfinite(g)) or np.any(g < -1e-12):
            raise ParameterError("`cif_grid` must hold finite probabilities ≥ 0.")
        if np.any(np.diff(g, axis=1) < -1e-12):
            raise ParameterError("Every row of `cif_grid` must be non-decreasing in days.")
        if np.any(g.sum(axis=0) > 1 + 1e-9):
            raise ParameterError("`cif_grid` columns must sum to at most 1 (they are P(T <= d)).")
        counts = np.asarray(self.counts, dtype=np.int64)
        if counts.shape != (g.shape[0],):
            raise ParameterError(f"`counts` must have shape ({g.shape[0]},). Got {counts.shape}.")
        pieces = tuple(self.tail_pieces)
        for p in pieces:
            if np.shape(p.shares) != (g.shape[0],):
                raise ParameterError(
                    f"Tail piece `shares` must have shape ({g.shape[0]},). Got {np.shape(p.shares)}."
                )
        object.__setattr__(self, "cif_grid", _readonly(np.maximum(g, 0.0)))
        object.__setattr__(self, "tail_pieces", pieces)
        object.__setattr__(self, "counts", _readonly(counts))
        object.__setattr__(self, "n_censored", int(self.n_censored))

    @classmethod
    def _derived(
        cls, cif_grid: np.ndarray, tail_pieces: Sequence[TailPiece], counts: Any, n_censored: int
    ) -> ExitCurves:
        """Curves derived from valid ones (:meth:`mixed`, :meth:`scaled`): the same
        normalisation as the constructor (clipped at 0, read-only) without its checks, which
        such curves pass by construction (shrinkage derives a dozen per fit)."""
        out = object.__new__(cls)
        object.__setattr__(out, "cif_grid", _readonly(np.maximum(cif_grid, 0.0)))
        object.__setattr__(out, "tail_pieces", tuple(tail_pieces))
        object.__setattr__(out, "counts", _readonly(np.asarray(counts, dtype=np.int64)))
        object.__setattr__(out, "n_censored", int(n_censored))
        return out

    # -- basic properties -------------------------------------------------------------------

    @property
    def n_codes(self) -> int:
        """``C``, the number of destination codes."""
        return int(self.cif_grid.shape[0])

    @property
    def max_day(self) -> int:
        """``D``, the last day of the grid (days)."""
        return int(self.cif_grid.shape[1] - 1)

    @property
    def n_events(self) -> int:
        """Observed exits behind the fit (unweighted)."""
        return int(self.counts.sum())

    @property
    def n_spells(self) -> int:
        """Spells behind the fit (exits + censored)."""
        return int(self.counts.sum()) + self.n_censored

    @property
    def survival_grid(self) -> np.ndarray:
        """float64 (D + 1,): ``S(d)`` at integer days."""
        return np.clip(1.0 - self.cif_grid.sum(axis=0), 0.0, 1.0)

    @property
    def tail(self) -> TailFit:
        """Tail fit of the piece carrying the most mass (the only one for a fitted curve)."""
        if not self.tail_pieces:
            return TailFit.none()
        return max(self.tail_pieces, key=lambda p: p.mass).fit

    @property
    def tail_shares(self) -> np.ndarray:
        """float64 (C,): destination mix of all exits beyond ``D`` (mass-weighted over pieces)."""
        mass = sum(p.mass for p in self.tail_pieces)
        if mass <= 0:
            if self.tail_pieces:
                return np.asarray(self.tail_pieces[0].shares, dtype=np.float64).copy()
            return np.zeros(self.n_codes)
        return sum(p.mass * np.asarray(p.shares) for p in self.tail_pieces) / mass

    # -- evaluation --------------------------------------------------------------------------

    def cif(self, t: Any) -> np.ndarray:
        """Cumulative incidence ``F_j(t) = P(T <= t, J = j)``, tail included.

        Parameters
        ----------
        t : array_like of float
            Days ≥ 0 on the sojourn clock, any shape.

        Returns
        -------
        numpy.ndarray of float64, shape ``(C,) + t.shape``
        """
        t = _check_time("t", t)
        return self._cif(t)

    def _cif(self, t: np.ndarray) -> np.ndarray:
        """:meth:`cif` at float64 days ``t`` ≥ 0 known to be valid (not checked again)."""
        flat = t.reshape(-1)
        out = np.empty((self.n_codes, flat.size))
        big_d = self.max_day
        inside = flat <= big_d
        if big_d == 0:
            out[:, inside] = self.cif_grid[:, :1]
        else:
            grid = np.arange(big_d + 1, dtype=np.float64)
            ti = flat[inside]
            for j in range(self.n_codes):
                out[j, inside] = np.interp(ti, grid, self.cif_grid[j])
        if not np.all(inside):
            to = flat[~inside]
            add = np.zeros((self.n_codes, to.size))
            for p in self.tail_pieces:
                left = p.mass - p.remaining(to, big_d)
                add += np.asarray(p.shares)[:, None] * left[None, :]
            out[:, ~inside] = self.cif_grid[:, -1:] + add
        return out.reshape((self.n_codes, *t.shape))

    def _cif_at_days(self, first: int, n: int) -> np.ndarray:
        """:meth:`_cif` at the whole days ``first .. first + n - 1``, shape (C, n).

        The same numbers as ``_cif(np.arange(first, first + n, dtype=float))``: on the
        grid it reads the nodes, where :func:`numpy.interp` returns them exactly, instead
        of interpolating (the tail beyond ``D`` is evaluated as there).
        """
        big_d = self.max_day
        n_inside = max(0, min(n, big_d + 1 - first))  # days <= D
        out = np.empty((self.n_codes, n))
        out[:, :n_inside] = self.cif_grid[:, first : first + n_inside]
        if n_inside < n:
            out[:, n_inside:] = self._cif(np.arange(first + n_inside, first + n, dtype=np.float64))
        return out

    def survival(self, t: Any) -> np.ndarray:
        """All-cause ``S(t) = P(T > t)``, tail included; same shape as ``t`` (days ≥ 0).

        On the grid ``1 − Σ_j F_j(t)``; beyond ``D`` the sum of the tail pieces'
        remaining masses (full relative precision far into the tail).
        """
        t = _check_time("t", t)
        out = np.asarray(np.clip(1.0 - self.cif(t).sum(axis=0), 0.0, 1.0)).reshape(t.shape)
        beyond = t > self.max_day
        if np.any(beyond):
            tb = t[beyond]
            rem = np.zeros_like(tb)
            for p in self.tail_pieces:
                rem += p.remaining(tb, self.max_day)
            out[beyond] = np.clip(rem, 0.0, 1.0)
        return out

    def exit_density(self, max_days: int) -> np.ndarray:
        """Day-binned exit sub-densities ``f[j, d] = P(d < T <= d + 1, J = j)``.

        Bin 0 also holds ``T = 0``, so ``f.sum() + S(max_days) = 1``.

        Parameters
        ----------
        max_days : int
            Number of day bins ``L`` (≥ 1).

        Returns
        -------
        numpy.ndarray of float64, shape (C, max_days)
        """
        max_days = check_int(max_days, "max_days", "exit_density", minimum=1)
        f = self._cif_at_days(1, int(max_days))
        return np.maximum(np.diff(f, axis=1, prepend=0.0), 0.0)

    def scaled_exit_densities(
        self, max_days: int, time_factors: Any, destination_multipliers: Any
    ) -> np.ndarray:
        """:meth:`exit_density` of :meth:`scaled` curves for many perturbations at once.

        Row ``b`` is ``self.scaled(time_factors[b], destination_multipliers[b])
        .exit_density(max_days)`` up to rounding: the scaled curves are
        ``F'_j(t) = c m_j F_j(t / f)`` (a tail piece whose exits all go where
        ``m = 0`` keeps its own mix), evaluated on every row's day grid in one pass.

        Parameters
        ----------
        max_days : int
            Number of day bins ``L`` (≥ 1).
        time_factors : array_like of float, shape (B,)
            ``f > 0`` per row.
        destination_multipliers : array_like of float, shape (B, C)
            ``m_j ≥ 0`` per row.

        Returns
        -------
        numpy.ndarray of float64, shape (B, C, max_days)
        """
        max_days = check_int(max_days, "max_days", "scaled_exit_densities", minimum=1)
        f = np.asarray(time_factors, dtype=np.float64).reshape(-1)
        m = np.asarray(destination_multipliers, dtype=np.float64)
        n_rows, n_codes = f.size, self.n_codes
        if m.shape != (n_rows, n_codes) or not np.all(np.isfinite(m)) or np.any(m < 0):
            raise ParameterError(
                f"`destination_multipliers` must be finite numbers ≥ 0 of shape ({n_rows}, "
                f"{n_codes}). Got shape {m.shape}."
            )
        if not (np.all(np.isfinite(f)) and np.all(f > 0)):
            raise ParameterError("`time_factors` must be finite and > 0.")
        shares = self.eventual_shares()
        total = float(shares.sum())
        new_total = m @ shares  # (B,)
        if total > 0 and np.any(new_total <= 0):
            raise ParameterError(
                "`destination_multipliers` give zero weight to every destination the curves "
                "can exit to."
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(new_total > 0, total / new_total, 1.0)[:, None] * m  # c m_j
        if total <= 0:
            scale = np.ones_like(m)
        t = np.arange(1, max_days + 1, dtype=np.float64)[None, :] / f[:, None]  # (B, L)
        big_d = self.max_day
        beyond = t > big_d
        pieces = self.tail_pieces if np.any(beyond) else ()
        piece_scale = np.empty((len(pieces), n_rows, n_codes))
        piece_left = np.zeros((len(pieces), n_rows, max_days))
        for i, p in enumerate(pieces):
            piece_left[i][beyond] = p.mass - p.remaining(t[beyond], big_d)
            sm = m @ np.asarray(p.shares)  # (B,)
            piece_scale[i] = np.asarray(p.shares)[None, :] * np.where(sm[:, None] > 0, scale, 1.0)
        out = np.empty((n_rows, n_codes, max_days))
        # the grid read as numpy.interp, the pieces added in order, differenced per day
        ahead.wait("scaled_day_densities")  # if a second process is compiling it
        scaled_day_densities(
            np.ascontiguousarray(self.cif_grid), t, scale, piece_scale, piece_left, out
        )
        return out

    def eventual_shares(self) -> np.ndarray:
        """``F_j(∞)``, float64 (C,): probability of eventually leaving to each destination.

        Sums to 1 unless some mass never leaves (a ``"none"`` tail).
        """
        out = self.cif_grid[:, -1].copy()
        for p in self.tail_pieces:
            out += np.asarray(p.shares) * p.eventual_exit()
        return out

    def median(self) -> float:
        """All-cause median sojourn (days): smallest ``t`` with ``S(t) <= 1/2``.

        Linear between integer days; solved in the tail if needed; ``inf`` if
        survival never falls to one half.
        """
        s = self.survival_grid
        below = np.flatnonzero(s <= 0.5)
        if below.size:
            d = int(below[0])
            if d == 0:
                return 0.0
            return float(d - 1 + (s[d - 1] - 0.5) / (s[d - 1] - s[d]))
        s_inf = 1.0 - float(self.eventual_shares().sum())
        if s_inf >= 0.5 - 1e-12:
            return math.inf
        lo = float(self.max_day)
        hi = max(2.0 * lo, 1.0)
        while float(self.survival(hi)) > 0.5:
            lo, hi = hi, 2.0 * hi
            if hi > 1e12:
                return math.inf
        return find_root(lambda x: float(self.survival(x)) - 0.5, lo, hi, xtol=1e-9)

    # -- transformations ---------------------------------------------------------------------

    def _pieces_at(self, new_end: float) -> list[TailPiece]:
        """Tail pieces re-anchored at curve time ``new_end >= D`` (masses still in the stage)."""
        out = []
        for p in self.tail_pieces:
            m = float(p.remaining(np.array([new_end], dtype=np.float64), self.max_day)[0])
            out.append(TailPiece(m, p.offset, p.fit, p.shares))
        return out

    def conditional_on_age(self, age: float) -> ExitCurves:
        """Curves of the remaining sojourn given ``T > age``.

        ``F'_j(t) = (F_j(age + t) − F_j(age)) / S(age)`` for ``t >= 0`` (days from
        now). Exact at integer ``t``; linear in between.

        Parameters
        ----------
        age : float
            Days already spent in the stage (≥ 0).

        Raises
        ------
        ModelError
            If ``S(age) = 0`` (nobody stays that long under the fit).
        """
        age = float(_check_time("age", age))
        if age == 0.0:
            return self
        s_age = float(self.survival(age))
        if age >= self.max_day and s_age > 0.0:
            # wholly in the tail: re-anchor the pieces at `age` (no grid differences)
            pieces = []
            for p in self.tail_pieces:
                rem = float(p.remaining(np.array([age]), self.max_day)[0])
                pieces.append(TailPiece(rem / s_age, p.offset + age, p.fit, p.shares))
            return ExitCurves(
                np.zeros((self.n_codes, 1)), tuple(pieces), self.counts, self.n_censored
            )
        if s_age <= 0.0:
            raise ModelError(
                f"The fitted survival is 0 at `age` = {age:g} days: no spell stayed that long "
                "and the tail does not extend it. Use a smaller age or a tail family that decays."
            )
        new_d = max(math.ceil(self.max_day - age), 0)
        grid = age + np.arange(new_d + 1, dtype=np.float64)
        f_age = self.cif(age)
        cif_new = (self.cif(grid) - f_age[:, None]) / s_age
        # age + new_d >= D, so the tail pieces are re-anchored at curve time age + new_d
        pieces = [
            TailPiece(q.mass / s_age, q.offset + age, q.fit, q.shares)
            for q in self._pieces_at(age + new_d)
        ]
        return ExitCurves(np.maximum(cif_new, 0.0), tuple(pieces), self.counts, self.n_censored)

    def mixed(self, other: ExitCurves, weight: float) -> ExitCurves:
        """Mixture ``weight * self + (1 − weight) * other`` of the two distributions.

        Used by shrinkage (``weight`` = credibility of the segment). Exact at
        integer days and in the tails (pieces of both are kept).

        Parameters
        ----------
        other : ExitCurves
            Same number of codes.
        weight : float
            In [0, 1].
        """
        if not isinstance(other, ExitCurves) or other.n_codes != self.n_codes:
            raise ParameterError(
                f"`other` of `ExitCurves.mixed` must be ExitCurves with {self.n_codes} codes."
            )
        if not (0.0 <= weight <= 1.0):
            raise ParameterError(
                f"`weight` of `ExitCurves.mixed` must be in [0, 1]. Got {weight!r}."
            )
        big_d = max(self.max_day, other.max_day)
        cif_new = weight * self._cif_at_days(0, big_d + 1) + (1.0 - weight) * other._cif_at_days(
            0, big_d + 1
        )
        pieces = [
            TailPiece(weight * p.mass, p.offset, p.fit, p.shares) for p in self._pieces_at(big_d)
        ] + [
            TailPiece((1.0 - weight) * p.mass, p.offset, p.fit, p.shares)
            for p in other._pieces_at(big_d)
        ]
        pieces = [p for p in pieces if p.mass > 0] or pieces[:1]
        return ExitCurves._derived(cif_new, pieces, self.counts, self.n_censored)

    def scaled(self, time_factor: float = 1.0, destination_multipliers: Any = None) -> ExitCurves:
        """Perturbed curves for a parameter draw.

        The clock is stretched, ``T' = time_factor * T``, and the destination
        odds are reweighted, ``F'_j(t) = c m_j F_j(t / time_factor)`` with ``c``
        chosen so that ``Σ_j F'_j(∞) = Σ_j F_j(∞)``.

        Parameters
        ----------
        time_factor : float, default 1
            > 0; 1.2 makes every sojourn 20% longer.
        destination_multipliers : array_like of float, shape (C,), optional
            ``m_j ≥ 0`` (default all 1). Eventual shares become proportional to
            ``m_j F_j(∞)``.
        """
        if not (math.isfinite(time_factor) and time_factor > 0):
            raise ParameterError(
                f"`time_factor` of `ExitCurves.scaled` must be finite and > 0. Got {time_factor!r}."
            )
        cur = self
        if time_factor != 1.0:
            new_d = math.ceil(self.max_day * time_factor)
            grid = np.arange(new_d + 1, dtype=np.float64)
            cif_new = self._cif(grid / time_factor)
            base = self._pieces_at(max(new_d / time_factor, float(self.max_day)))
            pieces = [
                TailPiece(p.mass, p.offset * time_factor, p.fit.rescaled(time_factor), p.shares)
                for p in base
            ]
            cur = ExitCurves._derived(cif_new, pieces, self.counts, self.n_censored)
        if destination_multipliers is None:
            return cur
        m = np.asarray(destination_multipliers, dtype=np.float64)
        if m.shape != (self.n_codes,) or not np.all(np.isfinite(m)) or np.any(m < 0):
            raise ParameterError(
                f"`destination_multipliers` must be {self.n_codes} finite numbers ≥ 0. Got {m!r}."
            )
        shares = cur.eventual_shares()
        # over the reachable codes only: codes no exit reaches (e.g. a stage no deal was
        # in) add nothing but would change the sums' rounding
        nz = shares > 0
        total, new_total = float(shares[nz].sum()), float(np.dot(m[nz], shares[nz]))
        if total <= 0:
            return cur
        if new_total <= 0:
            raise ParameterError(
                "`destination_multipliers` give zero weight to every destination the curves can exit to."
            )
        c = total / new_total
        cif_new = cur.cif_grid * (c * m)[:, None]
        pieces = []
        for p in cur.tail_pieces:
            on = p.shares > 0
            sm = float(np.dot(m[on], p.shares[on]))
            if sm > 0:
                pieces.append(TailPiece(c * sm * p.mass, p.offset, p.fit, m * p.shares / sm))
            else:
                pieces.append(p)
        return ExitCurves._derived(cif_new, pieces, self.counts, self.n_censored)

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists of floats and ints; no NaN or infinity)."""
        return {
            "cif_grid": [[float(x) for x in row] for row in self.cif_grid],
            "tail_pieces": [p.to_dict() for p in self.tail_pieces],
            "counts": [int(x) for x in self.counts],
            "n_censored": int(self.n_censored),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExitCurves:
        """Inverse of :meth:`to_dict`."""
        return cls(
            np.asarray(d["cif_grid"], dtype=np.float64),
            tuple(TailPiece.from_dict(p) for p in d["tail_pieces"]),
            np.asarray(d["counts"], dtype=np.int64),
            int(d["n_censored"]),
        )

    def __repr__(self) -> str:
        return (
            f"ExitCurves(C={self.n_codes}, D={self.max_day} days, exits={int(self.counts.sum())}, "
            f"censored={self.n_censored}, median={self.median():.4g} days, tail={self.tail.family})"
        )


#: EM iterations of the destination-mixture fit behind the tail's destination mix.
_TAIL_MIX_ITERATIONS = 40
#: Tail mass (probability still in the stage at the grid end) below which the late
#: exits' mix is kept: the mixture fit would change the curves by less than this.
_TAIL_MIX_MIN_MASS = 0.01


def tail_destination_shares(
    spells: CensoredSpells, grid_end: float, late_shares: np.ndarray
) -> np.ndarray:
    """Destination mix ``(C,)`` of the mass still in the stage at the grid end.

    Destinations do not leave at the same pace (advances early, losses late), so
    the mix of the exits seen so far overstates the fast ones among the deals that
    stay longer than any seen: on a short history nearly all of the slow exits are
    still to come. A parametric **destination mixture** (Larson & Dinse 1985) is
    fitted to the stage's spells: a spell ends in ``j`` with probability ``p_j``
    after a Weibull sojourn ``G_j``, so ``F_j(t) = p_j G_j(t)``, by weighted
    maximum likelihood with censoring (EM: a censored spell at ``c`` belongs to
    ``j`` with responsibility ``∝ p_j (1 − G_j(c))``). The mass left at
    ``D = grid_end`` leaves to ``j`` with probability
    ``p_j (1 − G_j(D)) / Σ_i p_i (1 − G_i(D))``. Destinations with fewer than 2
    exits keep their share of ``late_shares`` (the late exits' mix); delayed
    entries are treated as entries at 0 (an approximation of the mixture only).
    """
    obs = spells.observed & (spells.weights > 0)
    cens = ~spells.observed & (spells.weights > 0)
    codes = [int(j) for j in np.flatnonzero(late_shares > 0)]
    exits = {j: obs & (spells.destinations == j) for j in codes}
    mixed = [j for j in codes if np.count_nonzero(exits[j]) >= 2]
    if len(mixed) < 2 or not np.any(cens):
        return late_shares
    t = np.maximum(spells.durations, 1.0 / 24.0)
    w = spells.weights
    t_c, w_c = t[cens], w[cens]
    total = float(w[obs].sum() + w_c.sum())
    n_exit = np.array([float(w[exits[j]].sum()) for j in mixed])
    p = n_exit / total
    params = []
    for j in mixed:
        te = t[exits[j]]
        params.append(_weighted_weibull(te, np.ones(te.size, bool), w[exits[j]]))
    resp = np.zeros((len(mixed), t_c.size))
    for _ in range(_TAIL_MIX_ITERATIONS):
        for i, (shape, scale) in enumerate(params):
            resp[i] = p[i] * np.exp(-((t_c / scale) ** shape))
        # censored mass not explained by the exits' destinations stays unassigned
        norm = resp.sum(axis=0) + (1.0 - p.sum())
        resp /= np.maximum(norm, 1e-300)
        p_new = (n_exit + resp @ w_c) / total
        for i, j in enumerate(mixed):
            te, we = t[exits[j]], w[exits[j]]
            tt = np.concatenate([te, t_c])
            dd = np.concatenate([np.ones(te.size, bool), np.zeros(t_c.size, bool)])
            params[i] = _weighted_weibull(tt, dd, np.concatenate([we, w_c * resp[i]]))
        done = float(np.max(np.abs(p_new - p))) < 1e-5
        p = p_new
        if done:
            break
    d0 = float(grid_end)
    left = np.array(
        [p[i] * math.exp(-((d0 / scale) ** shape)) for i, (shape, scale) in enumerate(params)]
    )
    if not left.sum() > 0:
        return late_shares
    out = np.zeros_like(late_shares)
    rest = [j for j in codes if j not in mixed]
    kept = float(sum(late_shares[j] for j in rest))
    out[mixed] = left / left.sum() * (1.0 - kept)
    for j in rest:
        out[j] = late_shares[j]
    return out / out.sum()


def _weighted_weibull(t: np.ndarray, d: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(shape, scale) of a weighted censored Weibull fit (profile likelihood over the shape)."""
    events = float(np.dot(w, d))
    log_t = np.log(t)
    log_tmax = float(log_t.max())
    rel = log_t - log_tmax
    sum_dlogt = float(np.dot(w * d, log_t))

    def log_a(c: float) -> float:
        return c * log_tmax + math.log(float(np.dot(w, np.exp(c * rel))))

    def neg_profile(log_c: float) -> float:
        c = math.exp(log_c)
        return -(
            c * 0
            + events * math.log(c)
            - events * (log_a(c) - math.log(events))
            + (c - 1) * sum_dlogt
            - events
        )

    log_c, _ = minimize_bounded(neg_profile, math.log(0.05), math.log(20.0))
    c = math.exp(log_c)
    return c, math.exp((log_a(c) - math.log(events)) / c)


def fit_exit_curves(
    spells: CensoredSpells,
    tail_families: Sequence[str] = ("exponential", "weibull", "lognormal"),
    *,
    tail_quantile: float = 0.75,
    min_tail_events: int = 20,
    steps: AalenJohansen | None = None,
    tail_mixture: bool = True,
) -> ExitCurves:
    """Fit the exit curves of one stage: Aalen–Johansen on a day grid plus a tail.

    Tail rule (used both for ``tail_shares`` and for the tail fit): let ``u`` be
    the ``tail_quantile`` quantile of the observed exit times (unweighted). The
    late exits are those with duration > ``u``; their weighted destination mix
    is ``tail_shares`` and the tail family is fitted on the spells longer than
    ``u``, conditional on ``T > u`` (:func:`forecast.fit.tails.fit_tail`). With
    fewer than ``min_tail_events`` late exits both fall back to all exits/spells.

    Parameters
    ----------
    spells : CensoredSpells
        Spells of one stage (at least one).
    tail_families : sequence of str
        Candidate tail families, chosen by AIC.
    tail_quantile : float, default 0.75
        In [0, 1).
    min_tail_events : int, default 20
    steps : AalenJohansen, optional
        Step functions to put on the grid instead of the Aalen–Johansen fit of
        ``spells`` (e.g. the covariate model's baseline at ``x = 0``,
        :func:`forecast.fit.covariates.baseline_steps`); the tail is fitted on
        ``spells`` as usual.
    tail_mixture : bool, default True
        Where more than ``_TAIL_MIX_MIN_MASS`` of the stage's mass is left at the grid
        end, split it by a destination-mixture fit
        (:func:`tail_destination_shares`); False keeps the late exits' mix (the
        cheaper curves the half-life backtest scores with).

    Returns
    -------
    ExitCurves
        ``cif_grid`` of shape ``(C, D + 1)``, ``D = ceil(max duration)``.

    Raises
    ------
    ModelError
        If there are no spells.
    """
    if spells.n == 0:
        raise ModelError("Cannot fit exit curves from zero spells; the stage has no history.")
    if not (0.0 <= tail_quantile < 1.0):
        raise ParameterError(f"`tail_quantile` must be in [0, 1). Got {tail_quantile!r}.")
    aj = aalen_johansen(spells) if steps is None else steps
    big_d = math.ceil(float(spells.durations.max()))
    surv_grid, cif_grid = aj.evaluate(np.arange(big_d + 1, dtype=np.float64))
    s_end = float(surv_grid[-1])  # Kaplan–Meier: exactly 0 when the last spell is an exit

    obs = spells.observed & (spells.weights > 0)
    exit_times = spells.durations[obs]
    u = float(np.quantile(exit_times, tail_quantile)) if exit_times.size else 0.0
    late = obs & (spells.durations > u)
    if np.count_nonzero(late) < min_tail_events:
        late, u = obs, 0.0
    shares = np.bincount(
        spells.destinations[late], weights=spells.weights[late], minlength=spells.n_codes
    ).astype(np.float64)
    if shares.sum() > 0:
        shares /= shares.sum()
    if tail_mixture and s_end > _TAIL_MIX_MIN_MASS and shares.sum() > 0:
        shares = tail_destination_shares(spells, big_d, shares)
    tail = fit_tail(
        spells.durations,
        spells.observed,
        tail_families,
        spells.weights,
        entries=spells.entries,
        threshold=u,
        min_events=min_tail_events,
    )
    piece = TailPiece(s_end, 0.0, tail, _readonly(shares))
    return ExitCurves(cif_grid, (piece,), spells.event_counts, spells.n_censored)


# ============================================================================================
# Chain quantities
# ============================================================================================


def _check_chain(
    curves_by_stage: Sequence[ExitCurves], stage: int | None = None
) -> tuple[int, int]:
    if len(curves_by_stage) == 0:
        raise ParameterError(
            "`curves_by_stage` must hold the ExitCurves of at least one open stage."
        )
    k = len(curves_by_stage)
    c = curves_by_stage[0].n_codes
    for i, cv in enumerate(curves_by_stage):
        if not isinstance(cv, ExitCurves) or cv.n_codes != c:
            raise ParameterError(
                f"`curves_by_stage[{i}]` must be ExitCurves with {c} codes like `curves_by_stage[0]`."
            )
    if c <= k:
        raise ParameterError(
            f"With {k} open stages the curves need more than {k} codes (terminal codes follow). Got {c}."
        )
    if stage is not None and not (0 <= stage < k):
        raise ParameterError(f"`stage` must be an open stage code in 0..{k - 1}. Got {stage!r}.")
    return k, c


def absorption_probabilities(curves_by_stage: Sequence[ExitCurves]) -> np.ndarray:
    """Eventual probability of each terminal outcome from a fresh entry to each open stage.

    With ``P[k, j]`` the eventual shares of stage ``k`` (its first exit), ``Q``
    the open-to-open block and ``R`` the open-to-terminal block,
    ``B = (I − Q)⁻¹ R`` (absorbing Markov chain).

    Parameters
    ----------
    curves_by_stage : sequence of ExitCurves, length K
        Curves of open stages ``0 .. K − 1`` (codes as in ``StageMap``).

    Returns
    -------
    numpy.ndarray of float64, shape (K, C − K)
        ``B[k, i]``: probability of ending in terminal code ``K + i`` from stage ``k``.
        Rows sum to 1 unless some mass never leaves a stage.

    Raises
    ------
    ModelError
        If ``I − Q`` is singular (deals circulate among open stages for ever).
    """
    k, _ = _check_chain(curves_by_stage)
    p = np.stack([cv.eventual_shares() for cv in curves_by_stage])
    q, r = p[:, :k], p[:, k:]
    a = np.eye(k) - q
    if np.linalg.cond(a) > 1e12:
        raise ModelError(
            "The open stages form a closed loop (I − Q is singular): deals never reach a terminal outcome."
        )
    return np.linalg.solve(a, r)


def _conv_day_bins(a: np.ndarray, b: np.ndarray, length: int) -> np.ndarray:
    """Day-bin density of the sum of two sojourns, each uniform within its day bin.

    The sum of uniforms on bins ``i`` and ``l`` is triangular on ``(i + l, i + l + 2]``,
    half in bin ``i + l`` and half in ``i + l + 1``.
    """
    full = np.convolve(a, b)[:length]
    out = 0.5 * full
    out[1:] += 0.5 * full[: length - 1]
    return out


def win_time_density(
    curves_by_stage: Sequence[ExitCurves],
    stage: int,
    won_code: int,
    *,
    age: float = 0.0,
    max_days: int,
    tol: float = 1e-13,
) -> np.ndarray:
    """Day-binned density of the time to win of a deal in ``stage`` for ``age`` days.

    ``out[d] = P(win in (d, d + 1] days from now)`` (bin 0 includes now). The
    first exit uses the age-conditioned curves of ``stage``; later stages start
    fresh (semi-Markov, clock reset). Sums of sojourns are convolved on the day
    grid assuming uniform exit times within a day.

    Parameters
    ----------
    curves_by_stage : sequence of ExitCurves, length K
    stage : int
        Open stage code of the deal.
    won_code : int
        Code of the won outcome (``StageMap.WON``).
    age : float, default 0
        Days already spent in ``stage``.
    max_days : int
        Number of day bins ``L``.
    tol : float
        Stop the fixed-point iteration over multi-stage paths when the largest
        change of any bin is below this.

    Returns
    -------
    numpy.ndarray of float64, shape (max_days,)
    """
    k, c = _check_chain(curves_by_stage, stage)
    if not (0 <= won_code < c) or won_code < k:
        raise ParameterError(
            f"`won_code` must be a terminal code in {k}..{c - 1}. Got {won_code!r}."
        )
    max_days = check_int(max_days, "max_days", "win_time_density", minimum=1)
    length = int(max_days)
    dens = np.stack([cv.exit_density(length) for cv in curves_by_stage])  # (K, C, L)
    g = np.zeros((k, length))  # fresh-entry win-time densities
    for _ in range(100 * k + 1000):
        new = dens[:, won_code, :].copy()
        for a in range(k):
            for b in range(k):
                if a != b and dens[a, b].any() and g[b].any():
                    new[a] += _conv_day_bins(dens[a, b], g[b], length)
        change = float(np.max(np.abs(new - g)))
        g = new
        if change < tol:
            break
    first = curves_by_stage[stage].conditional_on_age(age).exit_density(length)
    out = first[won_code].copy()
    for b in range(k):
        if b != stage and first[b].any():
            out += _conv_day_bins(first[b], g[b], length)
    return out


def win_probability(
    curves_by_stage: Sequence[ExitCurves],
    stage: int,
    won_code: int,
    *,
    age: float = 0.0,
    within: float | None = None,
) -> float:
    """Probability that a deal in ``stage`` for ``age`` days is won (eventually, or soon).

    Parameters
    ----------
    curves_by_stage : sequence of ExitCurves, length K
        Curves of open stages ``0 .. K − 1``.
    stage : int
        Open stage code of the deal.
    won_code : int
        Code of the won outcome (``StageMap.WON``, i.e. ``K``).
    age : float, default 0
        Days already spent in ``stage``.
    within : float, optional
        Days. ``None``: eventual win, ``P_age[won] + Σ_k' P_age[k'] B[k', won]``
        with ``P_age`` the eventual first-exit shares of
        ``conditional_on_age(age)``. A number: P(win within ``within`` days),
        by convolution on the day grid (:func:`win_time_density`).

    Returns
    -------
    float
        In [0, 1].

    Examples
    --------
    >>> s = CensoredSpells([5.0, 10.0, 20.0, 40.0], [1, 2, 1, 2], n_codes=3)
    >>> cv = fit_exit_curves(s, tail_families=["exponential"])
    >>> win_probability([cv], 0, 1)
    0.5
    """
    k, c = _check_chain(curves_by_stage, stage)
    if not (k <= won_code < c):
        raise ParameterError(
            f"`won_code` must be a terminal code in {k}..{c - 1}. Got {won_code!r}."
        )
    if within is None:
        first = curves_by_stage[stage].conditional_on_age(age).eventual_shares()
        b = absorption_probabilities(curves_by_stage)[:, won_code - k]
        open_first = first[:k].copy()
        open_first[stage] = 0.0
        return float(np.clip(first[won_code] + np.dot(open_first, b), 0.0, 1.0))
    within = float(_check_time("within", within))
    whole = math.floor(within)
    frac = within - whole
    dens = win_time_density(curves_by_stage, stage, won_code, age=age, max_days=whole + 1)
    return float(np.clip(dens[:whole].sum() + frac * dens[whole], 0.0, 1.0))
