"""Credibility (Bühlmann–Straub) shrinkage of per-segment exit curves toward the pooled fit.

For one stage, each observed exit is a destination indicator vector ``X`` (one
1 among ``C`` codes). Segment ``g`` has ``n_g`` exits with mean ``p_g`` (its
destination mix). Bühlmann–Straub credibility treats the segments' true mixes
as draws around a common mean and weighs a segment's own estimate by

    Z_g = n_g / (n_g + k),   k = E[process variance] / Var[hypothetical means],

with, summed over destinations (trace of the covariance matrices),

* ``EPV = Σ_g n_g Σ_j p_gj (1 − p_gj) / Σ_g (n_g − 1)`` — the within-segment
  multinomial variance of one indicator, unbiased;
* ``VHM = [Σ_g n_g ‖p_g − p̄‖² − (G − 1) EPV] / (n − Σ_g n_g² / n)`` — the
  unbiased between-segment variance, ``p̄`` the exit-weighted overall mix.

If ``VHM <= 0`` the segments are indistinguishable from noise: ``k = ∞`` and
every ``Z_g = 0`` (use the pooled fit). The same holds when no segment has two
exits (``Σ_g (n_g − 1) = 0``): the within-segment variance cannot be measured, so
neither can the spread beyond it. A segment without exits gets ``Z_g = 0``. Only observed exits count, since a
censored spell's destination is unknown; ``n_g`` is their (weighted) number.
The shrunk curves are the mixture ``Z_g · segment + (1 − Z_g) · pooled``
(:meth:`forecast.fit.competing_risks.ExitCurves.mixed`), which keeps them proper
distributions of (time, destination). How the model uses it: ``docs/model.md``,
section 5 (the mixture target is built in :mod:`forecast.fit.exits`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forecast.errors import ParameterError
from forecast.fit.competing_risks import CensoredSpells, ExitCurves

__all__ = ["Credibility", "credibility_from_counts", "credibility_weights", "shrink_curves"]


@dataclass(frozen=True, eq=False)
class Credibility:
    """Bühlmann–Straub credibility of G segments for one stage.

    Attributes
    ----------
    weights : float64 (G,)
        ``Z_g`` in [0, 1] (1 only when ``k = 0``): weight of the segment's own fit (1 − Z_g goes to the pooled fit).
    k : float
        ``EPV / VHM`` in exits; ``inf`` when there is no detectable between-segment variance.
    n : float64 (G,)
        Exits per segment (weighted).
    process_variance : float
        ``EPV``, the expected within-segment variance of one destination indicator (trace).
    between_variance : float
        ``VHM``, the between-segment variance of the destination mixes (trace; may be
        ≤ 0 as estimated, then ``k = inf``).
    segment_means : float64 (G, C)
        Observed destination mix of each segment (zeros for a segment without exits).
    overall_mean : float64 (C,)
        Exit-weighted destination mix over all segments.
    """

    weights: np.ndarray
    k: float
    n: np.ndarray
    process_variance: float
    between_variance: float
    segment_means: np.ndarray
    overall_mean: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``k = inf`` stored as ``None``)."""
        return {
            "weights": [float(x) for x in self.weights],
            "k": float(self.k) if math.isfinite(self.k) else None,
            "n": [float(x) for x in self.n],
            "process_variance": float(self.process_variance),
            "between_variance": float(self.between_variance),
            "segment_means": [[float(x) for x in row] for row in self.segment_means],
            "overall_mean": [float(x) for x in self.overall_mean],
        }

    def __str__(self) -> str:
        rows = ", ".join(f"n={n:g}: Z={z:.3f}" for n, z in zip(self.n, self.weights))
        return (
            f"Credibility(k={self.k:.4g} exits, EPV={self.process_variance:.4g}, "
            f"VHM={self.between_variance:.4g}; {rows})"
        )


def credibility_from_counts(destination_counts: Any) -> Credibility:
    """Bühlmann–Straub credibility weights from per-segment destination counts.

    Parameters
    ----------
    destination_counts : array_like of float, shape (G, C)
        Exits (or their total weight) of each segment to each destination code.

    Returns
    -------
    Credibility

    Examples
    --------
    >>> cred = credibility_from_counts([[6, 6], [500, 500], [550, 450]])
    >>> bool(cred.weights[0] < 0.5 < cred.weights[1])
    True
    """
    counts = np.asarray(destination_counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] < 1:
        raise ParameterError(
            f"`destination_counts` must be a (G, C) array with G ≥ 1 segments. Got shape {counts.shape}."
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ParameterError("`destination_counts` must hold finite counts ≥ 0.")
    n_g = counts.sum(axis=1)
    n = float(n_g.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n_g[:, None] > 0, counts / n_g[:, None], 0.0)
    overall = counts.sum(axis=0) / n if n > 0 else np.zeros(counts.shape[1])
    g_used = int(np.count_nonzero(n_g > 0))
    dof = float(np.sum(np.maximum(n_g - 1.0, 0.0)))
    within = float(np.sum(n_g * np.sum(means * (1.0 - means), axis=1)))
    epv = within / dof if dof > 0 else 0.0
    denom = n - float(np.sum(n_g**2)) / n if n > 0 else 0.0
    if g_used >= 2 and denom > 0:
        spread = float(np.sum(n_g * np.sum((means - overall) ** 2, axis=1)))
        vhm = (spread - (g_used - 1) * epv) / denom
    else:
        vhm = 0.0
    if vhm > 0 and dof > 0:
        k = epv / vhm  # 0 when every segment's exits agree within it: full credibility
        z = np.divide(n_g, n_g + k, out=np.zeros_like(n_g), where=n_g > 0)
    else:
        # No spread between segments beyond chance, or no segment with two exits to
        # measure the spread within against (EPV unknown): everything to the pool.
        k = math.inf
        z = np.zeros_like(n_g)
    return Credibility(z, float(k), n_g, float(epv), float(vhm), means, overall)


def credibility_weights(
    segment_spells: Sequence[CensoredSpells], *, time_bands: Any = None
) -> Credibility:
    """Credibility weights of segments from their spells in one stage.

    Parameters
    ----------
    segment_spells : sequence of CensoredSpells, length G
        The stage's spells of each segment (same ``n_codes``). Only exits count;
        case weights are used.
    time_bands : None, "quartiles" or array_like of float (days), optional
        ``None`` (default): the indicators are the destinations alone, so only
        differences in destination mix make segments credible. Otherwise each exit
        is a (destination, sojourn band) cell, so differences in speed count too;
        ``"quartiles"`` cuts at the pooled quartiles of the exit times, an array
        gives the cut points. (Censored spells still do not count, so segments
        with very different follow-up look faster than they are.)

    Returns
    -------
    Credibility
        ``weights[g]`` is ``Z_g``, ``k`` the credibility constant (in exits).
        ``segment_means`` has ``C`` columns, or ``C × (bands)`` with time bands
        (destination-major).
    """
    spells = list(segment_spells)
    if not spells:
        raise ParameterError("`segment_spells` must hold the spells of at least one segment.")
    c = spells[0].n_codes
    for i, s in enumerate(spells):
        if not isinstance(s, CensoredSpells) or s.n_codes != c:
            raise ParameterError(
                f"`segment_spells[{i}]` must be CensoredSpells with n_codes={c} like `segment_spells[0]`."
            )
    if time_bands is None:
        return credibility_from_counts(np.stack([s.weighted_event_counts for s in spells]))
    if isinstance(time_bands, str):
        if time_bands != "quartiles":
            raise ParameterError(
                f"`time_bands` must be None, 'quartiles' or an array of days. Got {time_bands!r}."
            )
        exits = np.concatenate([s.durations[s.observed] for s in spells])
        cuts = np.unique(np.quantile(exits, [0.25, 0.5, 0.75])) if exits.size else np.zeros(0)
    else:
        cuts = np.sort(np.asarray(time_bands, dtype=np.float64).reshape(-1))
        if not np.all(np.isfinite(cuts)):
            raise ParameterError("`time_bands` must be finite days.")
    n_bands = cuts.size + 1
    rows = []
    for s in spells:
        obs = s.observed
        band = np.searchsorted(cuts, s.durations[obs], side="left")
        cell = s.destinations[obs] * n_bands + band
        rows.append(np.bincount(cell, weights=s.weights[obs], minlength=c * n_bands))
    counts = np.stack(rows)
    # cells no exit reached add nothing but would change the sums' rounding (e.g. the
    # codes of a stage no deal was in): computed without them, reported with them (0)
    hit = counts.sum(axis=0) > 0
    cred = credibility_from_counts(counts[:, hit])
    means = np.zeros(counts.shape)
    means[:, hit] = cred.segment_means
    overall = np.zeros(counts.shape[1])
    overall[hit] = cred.overall_mean
    return dataclasses.replace(cred, segment_means=means, overall_mean=overall)


def shrink_curves(
    segment_curves: Sequence[ExitCurves], pooled_curves: ExitCurves, weights: Any
) -> list[ExitCurves]:
    """Mix every segment's curves with the pooled curves: ``Z_g · own + (1 − Z_g) · pooled``.

    Parameters
    ----------
    segment_curves : sequence of ExitCurves, length G
    pooled_curves : ExitCurves
    weights : array_like of float, shape (G,)
        Credibilities ``Z_g`` in [0, 1] (e.g. :attr:`Credibility.weights`).

    Returns
    -------
    list of ExitCurves, length G
    """
    z = np.asarray(weights, dtype=np.float64)
    if z.shape != (len(segment_curves),):
        raise ParameterError(
            f"`weights` must have one credibility per segment, shape ({len(segment_curves)},). Got {z.shape}."
        )
    bad = np.flatnonzero(~np.isfinite(z) | (z < 0) | (z > 1))
    if bad.size:
        raise ParameterError(
            f"`weights` must be in [0, 1]. Got {float(z[bad[0]])!r} at index {int(bad[0])}."
        )
    return [cv.mixed(pooled_curves, float(zg)) for cv, zg in zip(segment_curves, z)]
