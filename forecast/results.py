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
        Seed, number of paths, model and data fingerprints, calendar, version.
    deal_segments : ndarray of str, shape (n_deals,), optional
        Segment label of each open deal (adds a ``segment`` column to the
        per-deal tables when given).
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
    deal_segments: np.ndarray | None = None

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
            all in currency. ``from_pipeline``/``from_new_deals`` are the mean
            bookings from deals open at the as-of date and from deals created
            after it; ``mean = booked_to_date + from_pipeline + from_new_deals``.
        """
        s = self.samples
        q = np.quantile(s, QUANTILES, axis=0)
        cols: dict[str, Any] = {
            "quarter": list(self.quarters),
            "mean": s.mean(axis=0),
            "sd": _sd(s),
        }
        for level, row in zip(QUANTILES, q):
            cols[f"p{round(level * 100):02d}"] = row
        cols["booked_to_date"] = self.booked_to_date.sum(axis=1)
        cols["from_pipeline"] = self.totals[..., 0].sum(axis=2).mean(axis=0)
        cols["from_new_deals"] = self.totals[..., 1].sum(axis=2).mean(axis=0)
        cols["weighted_pipeline"] = np.asarray(self.weighted_pipeline, dtype=float)
        return pl.DataFrame(cols)

    def by_segment(self) -> pl.DataFrame:
        """Bookings per quarter and segment (long format), currency.

        Returns
        -------
        polars.DataFrame
            ``quarter, segment, mean, sd, p10, p50, p90, booked_to_date,
            from_pipeline, from_new_deals``; one row per (quarter, segment).
            Segment quantiles do not add up to the quarter's quantiles.
        """
        s = self.segment_samples()
        pipe = self.totals[..., 0].mean(axis=0)
        new = self.totals[..., 1].mean(axis=0)
        rows = []
        for qi, qlab in enumerate(self.quarters):
            for gi, glab in enumerate(self.segments):
                x = s[:, qi, gi]
                p10, p50, p90 = np.quantile(x, [0.1, 0.5, 0.9])
                rows.append(
                    (
                        qlab,
                        glab,
                        float(x.mean()),
                        float(_sd(x)),
                        float(p10),
                        float(p50),
                        float(p90),
                        float(self.booked_to_date[qi, gi]),
                        float(pipe[qi, gi]),
                        float(new[qi, gi]),
                    )
                )
        return pl.DataFrame(
            rows,
            schema=[
                "quarter",
                "segment",
                "mean",
                "sd",
                "p10",
                "p50",
                "p90",
                "booked_to_date",
                "from_pipeline",
                "from_new_deals",
            ],
            orient="row",
        )

    def by_source(self) -> pl.DataFrame:
        """Bookings per quarter split by where they come from (long format), currency.

        Returns
        -------
        polars.DataFrame
            ``quarter, source, mean, sd, p10, p50, p90, share_of_mean`` with
            ``source`` one of ``"booked"`` (won before the as-of date, no
            uncertainty), ``"pipeline"`` (deals open at the as-of date) and
            ``"new_deals"`` (deals created after it). ``share_of_mean`` is the
            source's part of the quarter's mean bookings (0 when the mean is 0).
        """
        parts = {
            "booked": np.broadcast_to(
                self.booked_to_date.sum(axis=1)[None, :], (self.n_paths, len(self.quarters))
            ),
            "pipeline": self.totals[..., 0].sum(axis=2),
            "new_deals": self.totals[..., 1].sum(axis=2),
        }
        total_mean = self.samples.mean(axis=0)
        rows = []
        for qi, qlab in enumerate(self.quarters):
            for name, x in parts.items():
                col = x[:, qi]
                p10, p50, p90 = np.quantile(col, [0.1, 0.5, 0.9])
                m = float(col.mean())
                share = m / total_mean[qi] if total_mean[qi] > 0 else 0.0
                rows.append(
                    (qlab, name, m, float(_sd(col)), float(p10), float(p50), float(p90), share)
                )
        return pl.DataFrame(
            rows,
            schema=["quarter", "source", "mean", "sd", "p10", "p50", "p90", "share_of_mean"],
            orient="row",
        )

    def deals(self) -> pl.DataFrame:
        """Per open deal: probability of winning in each quarter and within the horizon.

        Returns
        -------
        polars.DataFrame
            ``deal_id, [segment,] amount, p_win_<quarter>..., p_win_horizon,
            expected_won_amount``, sorted by ``expected_won_amount`` descending.
            Probabilities are simulation frequencies (standard error
            ``sqrt(p (1 - p) / n_paths)``); amounts in currency; ``segment`` is
            present when the forecast carries ``deal_segments``.
        """
        p = self.deal_wins / max(self.n_paths, 1)
        cols: dict[str, Any] = {"deal_id": self.deal_ids}
        if self.deal_segments is not None:
            cols["segment"] = np.asarray(self.deal_segments, dtype=str)
        cols["amount"] = self.deal_amounts
        for qi, qlab in enumerate(self.quarters):
            cols[f"p_win_{qlab}"] = p[:, qi]
        cols["p_win_horizon"] = p.sum(axis=1)
        cols["expected_won_amount"] = self.deal_won_cents.sum(axis=1) / 100.0 / max(self.n_paths, 1)
        return pl.DataFrame(cols).sort("expected_won_amount", descending=True)

    # -- which deals carry the risk ---------------------------------------------------------
    def deal_variance(self) -> np.ndarray:
        """Each open deal's own variance of bookings per quarter, currency², shape (n_deals, n_quarters).

        Computed from the kernel's per-deal counts without storing paths × deals:
        with ``W`` paths in which the deal is won in quarter ``q``, ``S`` the sum of
        its won amounts over those paths and ``P`` paths, ``p = W / P`` and the mean
        won amount ``a = S / W``, the deal's bookings in ``q`` are approximately
        ``a`` with probability ``p`` and 0 otherwise, so

            ``var = p (1 - p) a²``.

        Limits of the approximation: (i) it treats the won amount as fixed given a
        win, so it understates the variance by ``p Var(amount | win)`` (the spread
        of the discount ratio; exact with a per-deal sum of squared won amounts,
        which the kernel does not return yet); (ii) it is the deal's *own*
        (marginal) variance: covariances between deals, from the shared quarterly
        shock and from parameter uncertainty, are not attributed to deals — see
        :meth:`risk_summary` for their total; (iii) ``p`` and ``a`` are simulation
        estimates (relative standard error of ``p`` about ``sqrt((1 - p) / (p P))``).
        """
        wins = self.deal_wins.astype(np.float64)
        won = self.deal_won_cents.astype(np.float64) / 100.0
        n = max(self.n_paths, 1)
        p = wins / n
        mean_if_won = np.divide(won, wins, out=np.zeros_like(won), where=wins > 0)
        return p * (1.0 - p) * mean_if_won**2

    def deal_risk(
        self, quarter: str | None = None, *, thresholds: tuple[float, float] = (0.5, 0.9)
    ) -> pl.DataFrame:
        """Which deals carry the risk: each deal's share of the variance ("rocks, stones, pebbles").

        Parameters
        ----------
        quarter : str, optional
            A quarter label (e.g. ``"FY2025-Q1"``); default: every quarter.
        thresholds : (float, float), default (0.5, 0.9)
            Within a quarter, deals are ranked by their variance; the largest ones
            that together hold the first ``thresholds[0]`` of the summed deal
            variance are ``"rock"``, those up to ``thresholds[1]`` are ``"stone"``,
            the rest (and deals that cannot be won in the quarter) ``"pebble"``.

        Returns
        -------
        polars.DataFrame
            One row per (quarter, deal), sorted by quarter then variance descending:
            ``quarter, rank, deal_id, [segment,] amount, p_win, expected_won_amount,
            amount_if_won, sd, variance, share_of_deal_variance,
            share_of_total_variance, cumulative_share, risk_class``. Amounts and
            ``sd`` in currency, ``variance`` in currency². ``share_of_deal_variance``
            sums to 1 over a quarter's deals; ``share_of_total_variance`` divides by
            the variance of the quarter's total bookings over the paths (new deals
            and covariances included), so it sums to less or more than 1. See
            :meth:`deal_variance` for the approximation and its limits.
        """
        lo, hi = (float(t) for t in thresholds)
        if not 0.0 < lo <= hi <= 1.0:
            raise ParameterError(
                "The `thresholds` parameter of `deal_risk` must be two numbers with "
                f"0 < first ≤ second ≤ 1. Got {thresholds!r}."
            )
        qidx = self._quarter_indices(quarter, "deal_risk")
        var = self.deal_variance()
        n = max(self.n_paths, 1)
        p = self.deal_wins / n
        won = self.deal_won_cents / 100.0
        mean = won / n
        if_won = np.divide(won, self.deal_wins, out=np.zeros_like(won), where=self.deal_wins > 0)
        total_var = _sd(self.samples) ** 2
        frames = []
        for qi in qidx:
            v = var[:, qi]
            order = np.argsort(-v, kind="stable")
            vs = v[order]
            vsum = vs.sum()
            share = vs / vsum if vsum > 0 else np.zeros_like(vs)
            cum = np.cumsum(share)
            before = cum - share
            risk_class = np.where(
                (vs > 0) & (before < lo),
                "rock",
                np.where((vs > 0) & (before < hi), "stone", "pebble"),
            )
            cols: dict[str, Any] = {
                "quarter": [self.quarters[qi]] * len(order),
                "rank": np.arange(1, len(order) + 1, dtype=np.int64),
                "deal_id": np.asarray(self.deal_ids)[order],
            }
            if self.deal_segments is not None:
                cols["segment"] = np.asarray(self.deal_segments, dtype=str)[order]
            cols |= {
                "amount": np.asarray(self.deal_amounts, dtype=np.float64)[order],
                "p_win": p[order, qi],
                "expected_won_amount": mean[order, qi],
                "amount_if_won": if_won[order, qi],
                "sd": np.sqrt(vs),
                "variance": vs,
                "share_of_deal_variance": share,
                "share_of_total_variance": vs / total_var[qi]
                if total_var[qi] > 0
                else np.zeros_like(vs),
                "cumulative_share": cum,
                "risk_class": risk_class,
            }
            # explicit string types: a forecast without open deals has empty columns
            text = {
                c: pl.Utf8 for c in ("quarter", "deal_id", "segment", "risk_class") if c in cols
            }
            frames.append(pl.DataFrame(cols, schema_overrides=text))
        return pl.concat(frames) if frames else pl.DataFrame()

    def risk_summary(self, *, thresholds: tuple[float, float] = (0.5, 0.9)) -> pl.DataFrame:
        """Where each quarter's variance comes from, currency².

        Returns
        -------
        polars.DataFrame
            One row per quarter: ``quarter, total_variance`` (variance of total
            bookings over the paths), ``pipeline_variance``, ``new_deals_variance``,
            ``pipeline_new_covariance`` (twice their covariance, so the three add up
            to ``total_variance``), ``deal_variance_sum`` (sum of the deals' own
            variances, :meth:`deal_variance`), ``between_deal_covariance``
            (``pipeline_variance - deal_variance_sum``: what deals share through the
            quarterly shock and parameter uncertainty, plus the amount-spread term
            the approximation leaves out), ``n_rocks, n_stones, n_pebbles``,
            ``rocks_share`` (the rocks' part of ``deal_variance_sum``) and
            ``top10_share_of_total`` (the ten largest deals' variance over
            ``total_variance``).
        """
        pipe = self.totals[..., 0].sum(axis=2)
        new = self.totals[..., 1].sum(axis=2)
        risk = self.deal_risk(thresholds=thresholds)
        var = self.deal_variance()
        rows = []
        for qi, qlab in enumerate(self.quarters):
            vp = float(_sd(pipe[:, qi]) ** 2)
            vn = float(_sd(new[:, qi]) ** 2)
            cov = float(np.cov(pipe[:, qi], new[:, qi], ddof=1)[0, 1]) if self.n_paths > 1 else 0.0
            total = float(_sd(self.samples[:, qi]) ** 2)
            dsum = float(var[:, qi].sum())
            r = risk.filter(pl.col("quarter") == qlab) if risk.height else risk
            counts = {c: 0 for c in ("rock", "stone", "pebble")}
            rocks_share = 0.0
            if r.height:
                for c, k in r.group_by("risk_class").len().rows():
                    counts[c] = int(k)
                rocks_share = float(
                    r.filter(pl.col("risk_class") == "rock")["share_of_deal_variance"].sum()
                )
            top10 = float(np.sort(var[:, qi])[::-1][:10].sum())
            rows.append(
                (
                    qlab,
                    total,
                    vp,
                    vn,
                    2.0 * cov,
                    dsum,
                    vp - dsum,
                    counts["rock"],
                    counts["stone"],
                    counts["pebble"],
                    rocks_share,
                    top10 / total if total > 0 else 0.0,
                )
            )
        return pl.DataFrame(
            rows,
            schema={
                "quarter": pl.Utf8,
                "total_variance": pl.Float64,
                "pipeline_variance": pl.Float64,
                "new_deals_variance": pl.Float64,
                "pipeline_new_covariance": pl.Float64,
                "deal_variance_sum": pl.Float64,
                "between_deal_covariance": pl.Float64,
                "n_rocks": pl.Int64,
                "n_stones": pl.Int64,
                "n_pebbles": pl.Int64,
                "rocks_share": pl.Float64,
                "top10_share_of_total": pl.Float64,
            },
            orient="row",
        )

    # -- probabilities and raw paths ----------------------------------------------------
    def prob_at_least(
        self, targets: float | Sequence[float] | Mapping[str, float | Sequence[float]]
    ) -> pl.DataFrame:
        """Probability that a quarter's bookings reach each target.

        Parameters
        ----------
        targets : float, sequence of float, or mapping quarter label -> float or sequence
            Currency targets: one value for every quarter, several values for
            every quarter, or one or several targets per quarter label.

        Returns
        -------
        polars.DataFrame
            ``quarter, target, probability, standard_error`` (long format, in the
            order given); ``probability`` is the share of paths whose total bookings
            (booked to date included) are ≥ ``target``, with Monte Carlo standard
            error ``sqrt(p (1 - p) / n_paths)``.

        Examples
        --------
        >>> fc.prob_at_least({"FY2025-Q1": [2e6, 3e6]})  # doctest: +SKIP
        """
        s = self.samples
        if isinstance(targets, Mapping):
            unknown = [k for k in targets if k not in self.quarters]
            if unknown:
                raise ParameterError(
                    f"The `targets` of `prob_at_least` name unknown quarters {unknown}. "
                    f"Quarters in this forecast: {list(self.quarters)}."
                )
            pairs = [(k, v) for k, vals in targets.items() for v in _as_targets(vals)]
        else:
            pairs = [(qlab, v) for qlab in self.quarters for v in _as_targets(targets)]
        index = {q: i for i, q in enumerate(self.quarters)}
        n = max(self.n_paths, 1)
        rows = []
        for q, t in pairs:
            p = float(np.mean(s[:, index[q]] >= t))
            rows.append((q, t, p, float(np.sqrt(p * (1.0 - p) / n))))
        return pl.DataFrame(
            rows,
            schema={
                "quarter": pl.Utf8,
                "target": pl.Float64,
                "probability": pl.Float64,
                "standard_error": pl.Float64,
            },
            orient="row",
        )

    def paths(self) -> pl.DataFrame:
        """The raw simulated bookings in long format, currency.

        Returns
        -------
        polars.DataFrame
            ``path, quarter, segment, source, bookings`` with ``source`` ``"pipeline"``
            or ``"new_deals"``; n_paths × n_quarters × n_segments × 2 rows. Bookings
            won before the as-of date are not included (see ``booked_to_date``).
        """
        P, H, G, _ = self.totals.shape
        path, q, g, src = np.indices((P, H, G, 2)).reshape(4, -1)
        return pl.DataFrame(
            {
                "path": path.astype(np.int64),
                "quarter": pl.Series(np.asarray(self.quarters, dtype=object)[q], dtype=pl.Utf8),
                "segment": pl.Series(np.asarray(self.segments, dtype=object)[g], dtype=pl.Utf8),
                "source": pl.Series(
                    np.array(["pipeline", "new_deals"], dtype=object)[src], dtype=pl.Utf8
                ),
                "bookings": self.totals.reshape(-1).astype(np.float64),
            }
        )

    def riskiest_quarter(self) -> str:
        """The quarter whose open-deal risk is largest (largest sum of :meth:`deal_variance`).

        Usually the current quarter; the next one when the as-of date is at the very
        end of a quarter. Returns the first quarter when there are no open deals.
        """
        total = self.deal_variance().sum(axis=0)
        return (
            self.quarters[int(np.argmax(total))] if total.size and total.any() else self.quarters[0]
        )

    def _quarter_indices(self, quarter: str | None, method: str) -> list[int]:
        if quarter is None:
            return list(range(len(self.quarters)))
        if quarter not in self.quarters:
            raise ParameterError(
                f"The `quarter` parameter of `{method}` must be one of {list(self.quarters)}. "
                f"Got {quarter!r}."
            )
        return [self.quarters.index(quarter)]

    def __repr__(self) -> str:
        return (
            f"Forecast({self.n_paths} paths, quarters {list(self.quarters)}, "
            f"{len(self.deal_ids)} open deals, as of {self.as_of:%Y-%m-%d})"
        )


def _sd(x: np.ndarray) -> np.ndarray:
    """Sample standard deviation over axis 0 (ddof=1; 0 for a single path)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return np.zeros(x.shape[1:]) if x.ndim > 1 else np.float64(0.0)
    return x.std(axis=0, ddof=1)


def _as_targets(value: object) -> list[float]:
    """Targets as a list of finite floats (one number or a sequence)."""
    values = [value] if np.isscalar(value) else list(value)  # type: ignore[call-overload]
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        if not np.isfinite(f):
            raise ParameterError(
                f"The `targets` of `prob_at_least` must be finite numbers (currency). Got {v!r}."
            )
        out.append(f)
    return out
