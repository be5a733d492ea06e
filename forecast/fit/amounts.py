"""Amounts: won amount relative to pipeline amount, and the amounts of new deals.

Summary in ``docs/model.md``, section 7.

**Win ratios.** For every won deal and every open spell it had before the win,
``ratio = amount at the win / amount at entry of the spell``. Each won deal has
weight 1 (times its bootstrap ``weight``), split equally over its spells, so a
deal that moved through five stages counts as much as one that moved through one.
The simulator multiplies the amount of an open deal (its pipeline amount) by a
ratio drawn from ``ratio_samples(segment, quarter_end)``.

**Quarter-end discount.** Ratios of wins in the last ``window_days`` days of a
fiscal quarter and of other wins are kept apart only when the data supports a
difference: a Welch z-test on deal-level mean ratios (each won deal's weighted
mean over its spells; Kish effective sizes under weights), two-sided at level
``significance`` (default 0.05), with at least ``min_group_deals`` deals on each
side. Otherwise the two samples are pooled.

**Segments.** A segment with fewer than ``min_segment_wins`` won deals uses the
pooled (all segments) ratios; one with fewer than ``min_segment_new_deals``
recent new deals uses the pooled new-deal amounts. The summary says which.

**New-deal amounts.** Amounts at creation of deals created from the start of the
fiscal quarter ``new_deal_quarters`` quarters before the current one up to
``as_of``, per segment (if the pooled recent sample has fewer than
``min_segment_new_deals`` deals, the whole history is used). These are pipeline
amounts: the simulator applies a win ratio to them like to any open deal. Deals
already in progress when the log started are not new deals and are left out.

**Recency.** With a half-life (:meth:`FitData.with_half_life`) a win ratio weighs
its deal's weight times the recency weight of the win time, a new-deal amount
times that of its creation.

**Representation.** Each sample is stored as ``n_quantiles`` equally likely
values, the weighted empirical quantiles at probabilities ``(i + 0.5) / n_quantiles``;
with unit weights and as many values as quantiles this is the sample itself.
Drawing uniformly from them samples the weighted empirical distribution (up to
the grid), and the model stays small in JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import check_float, check_int, to_datetime64
from forecast.errors import ModelError, ParameterError
from forecast.fit.calendar_effects import in_quarter_end_window
from forecast.fit.data import WEIGHT_COLUMN, FitData
from forecast.segments import POOLED_SEGMENT, SEGMENT_COLUMN

__all__ = ["MIN_ENTRY_AMOUNT", "AmountModel", "fit_amounts", "weighted_quantile_grid"]

#: Smallest amount at stage entry (currency; one cent, the resolution of the simulated
#: won amounts) a win ratio is computed from: smaller ones make the ratio noise or inf.
MIN_ENTRY_AMOUNT = 0.01

#: Key of the pooled entry in the amount model's dictionaries and JSON (a serialisation
#: detail: callers name the pooled segment ``None`` or :data:`POOLED_SEGMENT`).
_POOLED_KEY = "__pooled__"


def weighted_quantile_grid(values: np.ndarray, weights: np.ndarray, n_quantiles: int) -> np.ndarray:
    """Equally likely values representing a weighted sample.

    Parameters
    ----------
    values, weights : ndarray, shape (n,)
        Sample and non-negative weights (not all zero).
    n_quantiles : int

    Returns
    -------
    ndarray, shape (n_quantiles,)
        ``Q(p_i)`` at ``p_i = (i + 0.5) / n_quantiles`` for the weighted empirical
        distribution function (``Q(p) = min{v : F(v) >= p}``), ascending.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    cum /= cum[-1]
    p = (np.arange(n_quantiles) + 0.5) / n_quantiles
    idx = np.minimum(np.searchsorted(cum, p, side="left"), v.size - 1)
    return v[idx]


def _welch(x1: np.ndarray, w1: np.ndarray, x2: np.ndarray, w2: np.ndarray) -> tuple[float, float]:
    """Welch z statistic and two-sided normal p-value of ``mean1 - mean2`` (weighted, Kish sizes)."""

    def moments(x: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
        sw = w.sum()
        m = float((w * x).sum() / sw)
        n_eff = float(sw * sw / (w * w).sum())
        var = float((w * (x - m) ** 2).sum() / sw) * n_eff / max(n_eff - 1.0, 1e-12)
        return m, var, n_eff

    m1, v1, n1 = moments(x1, w1)
    m2, v2, n2 = moments(x2, w2)
    se = math.sqrt(v1 / n1 + v2 / n2)
    if se == 0.0:
        return (0.0, 1.0) if m1 == m2 else (math.copysign(math.inf, m1 - m2), 0.0)
    z = (m1 - m2) / se
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def _wmean(x: np.ndarray, w: np.ndarray) -> float:
    return float((w * x).sum() / w.sum()) if x.size and w.sum() > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class AmountModel:
    """Fitted amount model (see the module docstring).

    Attributes
    ----------
    segments : tuple of str
        Segment labels.
    window_days : int
        Quarter-end window in days.
    ratio_quantiles : dict str -> ndarray, shape (2, Q)
        Per segment label (and the pooled entry, key ``"__pooled__"``): row 0 the
        win ratios elsewhere, row 1 at quarter end (identical rows when not split).
        Dimensionless.
    new_amount_quantiles : dict str -> ndarray, shape (Q,)
        Per segment label (and the pooled entry): amounts at creation (currency).
    stats : tuple of dict
        Pooled first, then per segment: sample sizes, means, the test and which
        source each sample came from (see :meth:`summary`).
    """

    segments: tuple[str, ...]
    window_days: int
    ratio_quantiles: dict[str, np.ndarray]
    new_amount_quantiles: dict[str, np.ndarray]
    stats: tuple[dict[str, Any], ...]

    def _key(self, segment: str | None) -> str:
        if segment is None or (segment == POOLED_SEGMENT and segment not in self.segments):
            return _POOLED_KEY
        if segment not in self.segments:
            raise ParameterError(
                f"Unknown `segment` {segment!r} for the amount model. Known segments: "
                f"{list(self.segments)} (or None / {POOLED_SEGMENT!r} for the pooled fit)."
            )
        return segment

    def ratio_samples(self, segment: str | None, quarter_end: bool) -> np.ndarray:
        """Equally likely win ratios (won amount / pipeline amount) for a segment.

        Parameters
        ----------
        segment : str or None
            Segment label; ``None`` (or :data:`~forecast.segments.POOLED_SEGMENT`)
            for the pooled fit.
        quarter_end : bool
            Ratios of wins in the last ``window_days`` days of a quarter (``True``)
            or elsewhere.

        Returns
        -------
        ndarray, shape (Q,)
            Dimensionless ratios, ascending (a copy).
        """
        return self.ratio_quantiles[self._key(segment)][1 if quarter_end else 0].copy()

    def new_deal_amount_samples(self, segment: str | None) -> np.ndarray:
        """Equally likely amounts at creation (currency) of new deals, shape ``(Q,)``."""
        return self.new_amount_quantiles[self._key(segment)].copy()

    def summary(self) -> pl.DataFrame:
        """Pooled (segment :data:`~forecast.segments.POOLED_SEGMENT`), then per segment:
        ``n_won_deals, n_ratios, mean_ratio, mean_ratio_quarter_end,
        mean_ratio_elsewhere, discount_quarter_end, discount_elsewhere, z_quarter_end,
        p_value_quarter_end, split_quarter_end, ratio_source, n_new_deals,
        mean_new_amount, new_amount_source``.

        Means are weighted over the segment's own data; ``*_source`` says whether
        the simulator's samples are the segment's own or the pooled ones;
        ``discount = 1 - mean ratio``; a statistic that could not be computed
        (no wins on a side, too few deals for the test) is null. Without segment
        columns the one segment is the pooled one, shown once.
        """
        rows = [
            {**r, "segment": POOLED_SEGMENT} if r["segment"] == _POOLED_KEY else r
            for r in self.stats
            if r["segment"] != POOLED_SEGMENT  # the one segment is the pooled one
        ]
        return pl.DataFrame(rows, infer_schema_length=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "segments": list(self.segments),
            "window_days": self.window_days,
            "ratio_quantiles": {k: v.tolist() for k, v in self.ratio_quantiles.items()},
            "new_amount_quantiles": {k: v.tolist() for k, v in self.new_amount_quantiles.items()},
            "stats": [dict(r) for r in self.stats],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AmountModel:
        """Inverse of :meth:`to_dict`."""
        return cls(
            segments=tuple(d["segments"]),
            window_days=int(d["window_days"]),
            ratio_quantiles={
                k: np.asarray(v, dtype=np.float64) for k, v in d["ratio_quantiles"].items()
            },
            new_amount_quantiles={
                k: np.asarray(v, dtype=np.float64) for k, v in d["new_amount_quantiles"].items()
            },
            stats=tuple(dict(r) for r in d["stats"]),
        )


def _null_nan(row: dict[str, Any]) -> dict[str, Any]:
    """Not-computed statistics (nan) become ``None`` so summaries show null, and JSON stays strict."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def _ratio_part(
    r: pl.DataFrame, min_group_deals: int, significance: float
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Stats and (values, weights) samples elsewhere / at quarter end of one group of ratios."""
    ratio = r["ratio"].to_numpy()
    w = r["w_spell"].to_numpy()
    qe = r["quarter_end"].to_numpy()
    deals = r.group_by("deal_id", maintain_order=True).agg(
        ((pl.col("ratio") * pl.col("w_spell")).sum() / pl.col("w_spell").sum()).alias("x"),
        pl.col("w_spell").sum().alias("w"),
        pl.col("quarter_end").first(),
    )
    deals = deals.filter(pl.col("w") > 0)
    d_qe, d_el = deals.filter(pl.col("quarter_end")), deals.filter(~pl.col("quarter_end"))
    z = p = float("nan")
    split = False
    if d_qe.height >= min_group_deals and d_el.height >= min_group_deals:
        z, p = _welch(
            d_qe["x"].to_numpy(), d_qe["w"].to_numpy(), d_el["x"].to_numpy(), d_el["w"].to_numpy()
        )
        split = p < significance
    stats = {
        "n_won_deals": int(r["deal_id"].n_unique()),
        "n_ratios": int(r.height),
        "mean_ratio": _wmean(ratio, w),
        "mean_ratio_quarter_end": _wmean(ratio[qe], w[qe]),
        "mean_ratio_elsewhere": _wmean(ratio[~qe], w[~qe]),
        "z_quarter_end": z,
        "p_value_quarter_end": p,
        "split_quarter_end": split,
    }
    stats["discount_quarter_end"] = 1.0 - stats["mean_ratio_quarter_end"]
    stats["discount_elsewhere"] = 1.0 - stats["mean_ratio_elsewhere"]
    if split:
        return stats, (ratio[~qe], w[~qe]), (ratio[qe], w[qe])
    return stats, (ratio, w), (ratio, w)


def fit_amounts(
    data: FitData,
    *,
    window_days: int = 14,
    new_deal_quarters: int = 4,
    min_segment_wins: int = 30,
    min_segment_new_deals: int = 20,
    min_group_deals: int = 10,
    significance: float = 0.05,
    n_quantiles: int = 200,
) -> AmountModel:
    """Fit win ratios (won / pipeline amount) and new-deal amounts per segment.

    Parameters
    ----------
    data : FitData
        Reads the spells (``deal_id, entered_at, amount_at_entry``) and the
        outcomes (``deal_id, created_at, amount_at_creation, status, closed_at,
        amount``) with their segment labels and deal weights.
    window_days : int, default 14
        Quarter-end window in days.
    new_deal_quarters : int, default 4
        Full fiscal quarters (before the current one) of creations used for new-deal amounts.
    min_segment_wins : int, default 30
        Fewer won deals (with amounts) in a segment: use the pooled ratios.
    min_segment_new_deals : int, default 20
        Fewer recent new deals (with amounts) in a segment: use the pooled amounts.
    min_group_deals : int, default 10
        Deals needed on each side of the quarter-end test to run it.
    significance : float, default 0.05
        Level of the two-sided quarter-end test.
    n_quantiles : int, default 200
        Size ``Q`` of each stored sample.

    Returns
    -------
    AmountModel

    Raises
    ------
    ModelError
        No won deal with a positive amount at entry and a known won amount, or no
        deal with a known amount at creation.
    """
    caller = "fit_amounts"
    t, calendar = data.as_of, data.calendar
    w_days = check_int(window_days, "window_days", caller, minimum=1)
    n_q = check_int(n_quantiles, "n_quantiles", caller, minimum=1)
    n_new_q = check_int(new_deal_quarters, "new_deal_quarters", caller, minimum=0)
    min_wins = check_int(min_segment_wins, "min_segment_wins", caller, minimum=1)
    min_new = check_int(min_segment_new_deals, "min_segment_new_deals", caller, minimum=1)
    min_group = check_int(min_group_deals, "min_group_deals", caller, minimum=1)
    significance = check_float(
        significance, "significance", caller, minimum=0.0, maximum=1.0, low_open=True,
        high_open=True,
    )  # fmt: skip
    sp = data.frame("spells", caller, ["deal_id", "entered_at", "amount_at_entry"])
    oc = data.frame(
        "outcomes",
        caller,
        ["deal_id", "created_at", "amount_at_creation", "status", "closed_at", "amount"],
    )
    segments = tuple(
        sorted(
            set(sp[SEGMENT_COLUMN].unique().to_list()) | set(oc[SEGMENT_COLUMN].unique().to_list())
        )
    )

    # -- win ratios --------------------------------------------------------------------------
    won = oc.filter(
        (pl.col("status") == "won")
        & pl.col("closed_at").is_not_null()
        & (pl.col("closed_at") <= t)
        & pl.col("amount").is_not_null()
        & pl.col("amount").is_finite()
        & (pl.col("amount") >= 0)
    ).select("deal_id", "closed_at", pl.col("amount").alias("won_amount"))
    won = won.with_columns(pl.Series("_recency", data.recency(won["closed_at"])))
    r = (
        sp.select("deal_id", "entered_at", "amount_at_entry", WEIGHT_COLUMN, SEGMENT_COLUMN)
        .join(won, on="deal_id", how="inner")
        .filter(
            (pl.col("entered_at") < pl.col("closed_at"))
            & pl.col("amount_at_entry").is_not_null()
            & pl.col("amount_at_entry").is_finite()
            # below a cent (the engine's money resolution) the ratio is noise, or inf
            & (pl.col("amount_at_entry") >= MIN_ENTRY_AMOUNT)
        )
        .with_columns(
            (pl.col("won_amount") / pl.col("amount_at_entry")).alias("ratio"),
            (pl.col(WEIGHT_COLUMN) * pl.col("_recency") / pl.len().over("deal_id")).alias(
                "w_spell"
            ),
        )
    )
    if r.height == 0 or r["w_spell"].sum() <= 0:
        raise ModelError(
            f"`{caller}`: no won deal before {t:%Y-%m-%d} has a known won amount and an amount "
            f"of at least {MIN_ENTRY_AMOUNT} at entry of an earlier open stage, so won/pipeline "
            "amount ratios cannot be "
            "estimated. Check the `amount` column of the log."
        )
    r = r.with_columns(
        pl.Series(
            "quarter_end", in_quarter_end_window(to_datetime64(r["closed_at"]), calendar, w_days)
        )
    )

    # -- new-deal amounts --------------------------------------------------------------------
    oc = oc.with_columns(
        (pl.col(WEIGHT_COLUMN) * pl.Series(data.recency(oc["created_at"]))).alias(WEIGHT_COLUMN),
        pl.Series("_in_progress", data.row_in_progress("outcomes")),
    )
    new_all = oc.filter(
        ~pl.col("_in_progress")
        & pl.col("amount_at_creation").is_not_null()
        & pl.col("amount_at_creation").is_finite()
        & (pl.col("amount_at_creation") >= 0)
        & pl.col("created_at").is_not_null()
        & (pl.col("created_at") <= t)
    )
    current = calendar.quarter_of(t)
    new_start = calendar.shift(current, -n_new_q).start
    new = new_all.filter(pl.col("created_at") >= new_start)
    new_window = f"created {new_start:%Y-%m-%d} .. {t:%Y-%m-%d}"
    if new.height < min_new or new[WEIGHT_COLUMN].sum() <= 0:
        new, new_window = new_all, f"created any time up to {t:%Y-%m-%d} (too few recent deals)"
    if new.height == 0 or new[WEIGHT_COLUMN].sum() <= 0:
        raise ModelError(
            f"`{caller}`: no deal created before {t:%Y-%m-%d} has a known amount at creation, so "
            "new-deal amounts cannot be estimated. Check the `amount` column of the log."
        )

    # -- pooled then per segment -------------------------------------------------------------
    ratio_q: dict[str, np.ndarray] = {}
    new_q: dict[str, np.ndarray] = {}
    stats: list[dict[str, Any]] = []

    def grids(el: tuple[np.ndarray, np.ndarray], qe: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return np.vstack([weighted_quantile_grid(*el, n_q), weighted_quantile_grid(*qe, n_q)])

    pooled_stats, el, qe = _ratio_part(r, min_group, significance)
    ratio_q[_POOLED_KEY] = grids(el, qe)
    new_q[_POOLED_KEY] = weighted_quantile_grid(
        new["amount_at_creation"].to_numpy(), new[WEIGHT_COLUMN].to_numpy(), n_q
    )
    pooled_new = (new["amount_at_creation"].to_numpy(), new[WEIGHT_COLUMN].to_numpy())
    stats.append(
        {
            "segment": _POOLED_KEY,
            **pooled_stats,
            "ratio_source": "own",
            "n_new_deals": int(new.height),
            "mean_new_amount": _wmean(*pooled_new),
            "new_amount_source": "own",
            "new_amount_window": new_window,
        }
    )
    for g in segments:
        rg = r.filter(pl.col(SEGMENT_COLUMN) == g)
        if rg.height and rg["w_spell"].sum() > 0:
            g_stats, el, qe = _ratio_part(rg, min_group, significance)
        else:
            g_stats = {k: (0 if k.startswith("n_") else float("nan")) for k in pooled_stats}
            g_stats["split_quarter_end"] = False
        own = g_stats["n_won_deals"] >= min_wins
        ratio_q[g] = grids(el, qe) if own else ratio_q[_POOLED_KEY]
        ng = new.filter(pl.col(SEGMENT_COLUMN) == g)
        own_new = ng.height >= min_new and ng[WEIGHT_COLUMN].sum() > 0
        vals = (ng["amount_at_creation"].to_numpy(), ng[WEIGHT_COLUMN].to_numpy())
        new_q[g] = weighted_quantile_grid(*vals, n_q) if own_new else new_q[_POOLED_KEY]
        stats.append(
            {
                "segment": g,
                **g_stats,
                "ratio_source": "own" if own else "pooled",
                "n_new_deals": int(ng.height),
                "mean_new_amount": _wmean(*vals),
                "new_amount_source": "own" if own_new else "pooled",
                "new_amount_window": new_window,
            }
        )
    return AmountModel(segments, w_days, ratio_q, new_q, tuple(_null_nan(x) for x in stats))
