"""Recency weighting: the half-life of a fit and how ``half_life="auto"`` chooses it.

Markets move, so every estimator of the fit can weigh the past by recency: an
observation made ``a`` days before the as-of instant counts ``2^(−a / h)`` (``h``
the half-life in days), with one ``h`` for every estimator (``docs/model.md``,
"Recency weighting"; :meth:`forecast.fit.data.FitData.with_half_life`).

``half_life="auto"`` (:func:`forecast.fit.fitting.choose_half_life`) backtests the
user's own history: at a few past fiscal quarter starts it refits with each
candidate half-life (no weighting among them) and scores the forecast of the
quarter that followed by its CRPS against what was booked. The rule that turns the
scores into a choice is :func:`select_half_life`: the least weighting whose mean
CRPS is within one standard error of the best (the "one-standard-error rule",
Breiman et al. 1984), because a shorter half-life also throws data away, and on a
stable market the scores of a few origins cannot tell the candidates apart.
:class:`HalfLifeChoice` keeps the choice and the scores behind it (in the model's
``summary()`` and JSON).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import as_datetime, check_float
from forecast.errors import ParameterError

__all__ = [
    "DEFAULT_HALF_LIFE_GRID",
    "HalfLifeChoice",
    "check_half_life",
    "format_half_life",
    "select_half_life",
]

#: Candidate half-lives (days) of ``half_life="auto"``, least weighting first
#: (None: every observation counts fully).
DEFAULT_HALF_LIFE_GRID: tuple[float | None, ...] = (None, 730.0, 365.0, 182.0)


def check_half_life(value: object, caller: str) -> float | str | None:
    """``"auto"``, None or a half-life in days > 0, else :class:`ParameterError`."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, str):
        raise ParameterError(
            f"The `half_life` parameter of `{caller}` must be 'auto', None (no recency "
            f"weighting) or a number of days > 0. Got {value!r}."
        )
    return check_float(value, "half_life", caller, minimum=0.0, low_open=True)


def format_half_life(half_life: float | None) -> str:
    """``"none"`` or ``"365 days"``."""
    return "none" if half_life is None else f"{half_life:g} days"


def select_half_life(
    candidates: Sequence[float | None], crps: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """The one-standard-error choice among candidates scored at common origins.

    Parameters
    ----------
    candidates : sequence of float or None, length m
        Half-lives (days), least weighting first (None = no weighting).
    crps : ndarray, shape (m, n_origins)
        CRPS (currency) of each candidate's forecast at each origin.

    Returns
    -------
    index : int
        The first candidate (least weighting) whose mean CRPS exceeds the best mean
        by at most the standard error of its paired difference to the best over the
        origins (with one origin: the best).
    mean : ndarray, shape (m,)
        Mean CRPS per candidate.
    se : ndarray, shape (m,)
        Standard error of each candidate's mean paired difference to the best (0 for
        the best).
    """
    crps = np.asarray(crps, dtype=np.float64)
    if crps.ndim != 2 or crps.shape[0] != len(candidates) or crps.shape[1] == 0:
        raise ParameterError(
            f"`crps` must have shape ({len(candidates)}, n_origins ≥ 1). Got {crps.shape}."
        )
    mean = crps.mean(axis=1)
    best = int(np.argmin(mean))
    n = crps.shape[1]
    diff = crps - crps[best]
    se = diff.std(axis=1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(candidates))
    for i in range(len(candidates)):
        if mean[i] - mean[best] <= se[i]:
            return i, mean, se
    return best, mean, se  # pragma: no cover - the best always qualifies


@dataclass(frozen=True, eq=False)
class HalfLifeChoice:
    """The recency half-life of a fit and, for ``half_life="auto"``, why.

    Attributes
    ----------
    half_life : float or None
        Half-life in days the model was fitted with (None: no recency weighting).
    requested : str or float or None
        What was asked: ``"auto"``, a number of days or None.
    candidates : tuple of float or None
        Half-lives scored (``"auto"`` only), least weighting first.
    origins : tuple of datetime
        Fiscal quarter starts the candidates were backtested from (``"auto"`` only).
    crps : tuple of tuple of float
        ``crps[i][o]``: CRPS (currency) of candidate ``i``'s forecast of the quarter
        starting at origin ``o`` against what was booked.
    booked : tuple of float
        What was booked in each origin's quarter (currency).
    chosen_index : int or None
        Index of the choice among the candidates.
    n_paths : int
        Paths per scored forecast.
    seed : int
        Seed of the scored simulations (the choice is deterministic for a seed).
    note : str
        Why the choice fell back to no weighting, if it did.
    deal_step : int
        The backtest scored every ``deal_step``-th deal of the history (in sorted
        deal-id order; 1: every deal), a sample that bounds its cost on large
        histories; the fit itself uses every deal.
    """

    half_life: float | None
    requested: str | float | None = None
    candidates: tuple[float | None, ...] = ()
    origins: tuple[dt.datetime, ...] = ()
    crps: tuple[tuple[float, ...], ...] = ()
    booked: tuple[float, ...] = ()
    chosen_index: int | None = None
    n_paths: int = 0
    seed: int = 0
    note: str = ""
    deal_step: int = 1

    @property
    def scored(self) -> bool:
        """Whether candidates were backtested (``"auto"`` with enough history)."""
        return bool(self.candidates) and bool(self.origins)

    def table(self) -> pl.DataFrame:
        """Per candidate: ``half_life_days`` (null = none), ``mean_crps`` (currency),
        ``relative_to_none`` (mean CRPS over that of no weighting), ``se_vs_best``
        (currency), ``chosen`` (bool), one row per candidate (empty if not scored)."""
        schema = {
            "half_life_days": pl.Float64,
            "mean_crps": pl.Float64,
            "relative_to_none": pl.Float64,
            "se_vs_best": pl.Float64,
            "chosen": pl.Boolean,
        }
        if not self.scored:
            return pl.DataFrame(schema=schema)
        crps = np.asarray(self.crps, dtype=np.float64)
        _, mean, se = select_half_life(self.candidates, crps)
        base = mean[self.candidates.index(None)] if None in self.candidates else math.nan
        rows = [
            {
                "half_life_days": h,
                "mean_crps": float(mean[i]),
                "relative_to_none": float(mean[i] / base) if base > 0 else math.nan,
                "se_vs_best": float(se[i]),
                "chosen": i == self.chosen_index,
            }
            for i, h in enumerate(self.candidates)
        ]
        return pl.DataFrame(rows, schema=schema)

    def scores_text(self) -> str:
        """The mean CRPS per candidate, the chosen one starred (``""`` if not scored)."""
        if not self.scored:
            return ""
        t = self.table()
        return " | ".join(
            f"{format_half_life(h)} {m / 1e3:,.1f}k{'*' if c else ''}"
            for h, m, c in zip(t["half_life_days"], t["mean_crps"], t["chosen"])
        )

    def describe(self) -> str:
        """One line for people: the half-life and, for ``"auto"``, the scores behind it."""
        head = f"half-life {format_half_life(self.half_life)}"
        if self.requested != "auto":
            return head + " (given)"
        if not self.scored:
            return f"{head} (auto: {self.note})"
        sample = "" if self.deal_step == 1 else f" of every {self.deal_step}th deal"
        return (
            f"{head} (auto: mean CRPS of the next quarter{sample} over {len(self.origins)} "
            f"origins {self.origins[0]:%Y-%m-%d}..{self.origins[-1]:%Y-%m-%d}: "
            f"{self.scores_text()}; the least weighting within one standard error of the best)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "half_life": self.half_life,
            "requested": self.requested,
            "candidates": list(self.candidates),
            "origins": [o.isoformat() for o in self.origins],
            "crps": [list(r) for r in self.crps],
            "booked": list(self.booked),
            "chosen_index": self.chosen_index,
            "n_paths": self.n_paths,
            "seed": self.seed,
            "note": self.note,
            # only a sampled backtest says so (the JSON of one on every deal is unchanged)
            **({"deal_step": self.deal_step} if self.deal_step != 1 else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HalfLifeChoice:
        """Inverse of :meth:`to_dict`."""
        return cls(
            half_life=None if d["half_life"] is None else float(d["half_life"]),
            requested=d.get("requested"),
            candidates=tuple(None if h is None else float(h) for h in d.get("candidates", [])),
            origins=tuple(as_datetime(o, "origins") for o in d.get("origins", [])),
            crps=tuple(tuple(float(x) for x in r) for r in d.get("crps", [])),
            booked=tuple(float(x) for x in d.get("booked", [])),
            chosen_index=None if d.get("chosen_index") is None else int(d["chosen_index"]),
            n_paths=int(d.get("n_paths", 0)),
            seed=int(d.get("seed", 0)),
            note=str(d.get("note", "")),
            deal_step=int(d.get("deal_step", 1)),
        )
