"""`Forecast`: simulated quarterly bookings and what finance reads off them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from forecast.errors import ParameterError

__all__ = ["QUANTILES", "Forecast"]

#: Quantile levels reported in :meth:`Forecast.quarterly`.
QUANTILES: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)


@dataclass(frozen=True, eq=False)
class Forecast:
    """Result of :meth:`PipelineModel.simulate`.

    Attributes
    ----------
    totals : ndarray, shape (n_paths, n_quarters, n_segments, 2)
        Simulated bookings (currency) won after the as-of instant, per path,
        quarter and segment; last axis 0 = deals open at the as-of date,
        1 = deals created after it.
    booked_to_date : ndarray, shape (n_quarters, n_segments)
        Bookings already won in each quarter before the as-of instant (only the
        first quarter can be non-zero).
    deal_ids : ndarray of str, shape (n_deals,)
        Open deals at the as-of date, in the order of the per-deal arrays.
    deal_amounts : ndarray, shape (n_deals,)
        Pipeline amount (currency) of each open deal at the as-of date.
    deal_wins : ndarray of int64, shape (n_deals, n_quarters)
        Number of paths in which each deal is won in each quarter.
    deal_won_cents : ndarray of int64, shape (n_deals, n_quarters)
        Sum over paths of each deal's won amount in each quarter, in 1/100
        currency units (integer so that totals do not depend on thread count).
    quarters : tuple of str
        Fiscal quarter labels, e.g. ``("FY2025-Q1", ...)``.
    segments : tuple of str
        Segment labels.
    weighted_pipeline : ndarray, shape (n_quarters,)
        The classical weighted pipeline per quarter (stage win probability ×
        amount for open deals whose rep close date falls in the quarter), for
        comparison.
    as_of : datetime
        The as-of instant.
    info : dict
        Seed, number of paths, model and data fingerprints, calendar.
    """

    totals: np.ndarray
    booked_to_date: np.ndarray
    deal_ids: np.ndarray
    deal_amounts: np.ndarray
    deal_wins: np.ndarray
    deal_won_cents: np.ndarray
    quarters: tuple[str, ...]
    segments: tuple[str, ...]
    weighted_pipeline: np.ndarray
    as_of: dt.datetime
    info: Mapping[str, Any] = field(default_factory=dict)

    # -- raw samples -----------------------------------------------------------------
    @property
    def n_paths(self) -> int:
        """Number of simulated paths."""
        return int(self.totals.shape[0])

    @property
    def samples(self) -> np.ndarray:
        """Total bookings per path and quarter, shape (n_paths, n_quarters), currency.

        Includes what was booked before the as-of date in the first quarter.
        """
        return self.totals.sum(axis=(2, 3)) + self.booked_to_date.sum(axis=1)[None, :]

    def segment_samples(self) -> np.ndarray:
        """Bookings per path, quarter and segment (booked-to-date included), currency."""
        return self.totals.sum(axis=3) + self.booked_to_date[None, :, :]

    # -- summaries ----------------------------------------------------------------------
    def quarterly(self) -> pl.DataFrame:
        """One row per quarter: mean, sd, P05..P95, booked to date, weighted pipeline.

        Returns
        -------
        polars.DataFrame
            Columns ``quarter, mean, sd, p05, p10, p25, p50, p75, p90, p95,
            booked_to_date, from_pipeline, from_new_deals, weighted_pipeline``;
            all in currency. ``from_pipeline``/``from_new_deals`` are means.
        """
        s = self.samples
        q = np.quantile(s, QUANTILES, axis=0)
        cols: dict[str, Any] = {
            "quarter": list(self.quarters),
            "mean": s.mean(axis=0),
            "sd": s.std(axis=0, ddof=1) if self.n_paths > 1 else np.zeros(s.shape[1]),
        }
        for level, row in zip(QUANTILES, q):
            cols[f"p{round(level * 100):02d}"] = row
        cols["booked_to_date"] = self.booked_to_date.sum(axis=1)
        cols["from_pipeline"] = self.totals[..., 0].sum(axis=2).mean(axis=0)
        cols["from_new_deals"] = self.totals[..., 1].sum(axis=2).mean(axis=0)
        cols["weighted_pipeline"] = np.asarray(self.weighted_pipeline, dtype=float)
        return pl.DataFrame(cols)

    def by_segment(self) -> pl.DataFrame:
        """Mean and P10/P50/P90 per quarter and segment (long format), currency."""
        s = self.segment_samples()
        rows = []
        for qi, qlab in enumerate(self.quarters):
            for gi, glab in enumerate(self.segments):
                x = s[:, qi, gi]
                p10, p50, p90 = np.quantile(x, [0.1, 0.5, 0.9])
                rows.append((qlab, glab, float(x.mean()), float(p10), float(p50), float(p90)))
        return pl.DataFrame(
            rows,
            schema=["quarter", "segment", "mean", "p10", "p50", "p90"],
            orient="row",
        )

    def deals(self) -> pl.DataFrame:
        """Per open deal: probability of winning in each quarter and within the horizon.

        Returns
        -------
        polars.DataFrame
            ``deal_id, amount, p_win_<quarter>..., p_win_horizon,
            expected_won_amount`` (probabilities from simulation counts;
            amounts in currency).
        """
        p = self.deal_wins / max(self.n_paths, 1)
        cols: dict[str, Any] = {"deal_id": self.deal_ids, "amount": self.deal_amounts}
        for qi, qlab in enumerate(self.quarters):
            cols[f"p_win_{qlab}"] = p[:, qi]
        cols["p_win_horizon"] = p.sum(axis=1)
        cols["expected_won_amount"] = self.deal_won_cents.sum(axis=1) / 100.0 / max(self.n_paths, 1)
        return pl.DataFrame(cols).sort("expected_won_amount", descending=True)

    def prob_at_least(self, targets: float | Sequence[float] | Mapping[str, float]) -> pl.DataFrame:
        """Probability that a quarter's bookings reach each target.

        Parameters
        ----------
        targets : float, sequence of float, or mapping quarter label -> float
            Currency targets: one value for every quarter, several values for
            every quarter, or a target per quarter label.

        Returns
        -------
        polars.DataFrame
            ``quarter, target, probability`` (long format).
        """
        s = self.samples
        if isinstance(targets, Mapping):
            unknown = [k for k in targets if k not in self.quarters]
            if unknown:
                raise ParameterError(
                    f"The `targets` of `prob_at_least` name unknown quarters {unknown}. "
                    f"Quarters in this forecast: {list(self.quarters)}."
                )
            pairs = [(k, float(v)) for k, v in targets.items()]
        else:
            values = [float(targets)] if np.isscalar(targets) else [float(v) for v in targets]  # type: ignore[arg-type]
            pairs = [(qlab, v) for qlab in self.quarters for v in values]
        index = {q: i for i, q in enumerate(self.quarters)}
        rows = [(q, t, float(np.mean(s[:, index[q]] >= t))) for q, t in pairs]
        return pl.DataFrame(rows, schema=["quarter", "target", "probability"], orient="row")

    def __repr__(self) -> str:
        return (
            f"Forecast({self.n_paths} paths, quarters {list(self.quarters)}, "
            f"{len(self.deal_ids)} open deals, as of {self.as_of:%Y-%m-%d})"
        )
