"""Deal covariates in the exit model: proportional cause-specific hazards per stage.

Within a segment, deals in a stage differ: big deals win less often and move
slower, a deal whose close date keeps being pushed is stuck, a lead source wins
more. Each open stage ``k``'s exits depend on a deal's covariates ``x`` through
proportional effects on the cause-specific hazards,

    h_kj(t | x) = h_kj,g(t) · exp(β_{k,G(j)} · x(t)),

``t`` the time in stage, ``h_kj,g`` the baseline of destination ``j`` in segment
``g`` (the baseline is per segment × stage, as the exit curves are), ``G(j)`` the
destination's group (another open stage, won, lost, no decision) and ``β`` one
coefficient vector per stage and destination group, shared across segments.
``docs/model.md`` ("Deal covariates") gives the estimators; in short:

- **Rows.** Each stage visit is split at every change of the deal in it (amount,
  close date, a user column) into counting-process rows ``(start, stop]`` on the
  time-in-stage clock, each holding the values known from its start on
  (:func:`covariate_states`); nothing after an instant reaches the row of that
  instant, and nothing after the as-of date reaches any row (the rows come from
  the log cut by ``DealLog.as_of``).
- **Covariates** (:class:`CovariateSpec`): ``amount`` — log₂ of the amount, centred on
  the segment's mean log₂ amount at creation (one unit = twice the amount);
  ``days_to_close`` — the rep's current close date minus the stage entry, in
  months of 30 days, centred on the stage's median at entry (at a given time in stage this is the signed time until, or
  past, the close date plus a constant, and the constant's effect is absorbed by
  the baseline, so the coefficient reads "per month later close date");
  ``pushes`` — how often the close date has moved later so far; ``overdue`` — 1
  once the current close date has passed (rows split there); and the user's
  columns: categorical (segment columns; indicators against the most common
  level) or numeric (numeric columns, per standard deviation).
- **Estimation.** Per stage and destination group, a Cox model stratified by
  segment with Efron ties, the deals' weights and a ridge penalty
  (:mod:`forecast.fit.cox`); exits to other groups are censorings.
- **Selection.** Forward selection of whole covariates (all their coefficients
  at once) by Akaike's criterion with the effective degrees of freedom of the
  ridge fit; a covariate is kept only if it lowers the criterion
  (:func:`select_covariates`). ``covariates=()`` switches all off.
- **Baseline.** The Breslow cause-specific hazards at ``x = 0``, turned into exit
  curves by the product integral (with ``β = 0`` exactly the Aalen–Johansen
  curves), then tails and shrinkage as for the exit curves
  (:func:`baseline_curves`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from forecast._kernels.tilt import baseline_hazards, tilted_totals
from forecast._kernels.tilt import tilt_density as kernel_tilt
from forecast.data.deal_log import (
    DealLog,
    close_date_pushed,
    deal_start,
    ffill_within_deal,
    first_row_of_deal,
    previous_close_date,
)
from forecast.errors import ParameterError
from forecast.fit.competing_risks import AalenJohansen, CensoredSpells, ExitCurves, fit_exit_curves
from forecast.fit.cox import CoxRows, breslow_increments, fit_cox
from forecast.fit.data import FitData
from forecast.segments import SEGMENT_COLUMN

__all__ = [
    "CLOSE_DATE_COVARIATES",
    "DEFAULT_COVARIATES",
    "DESTINATION_GROUPS",
    "TIMING_COVARIATES",
    "CovariateDesign",
    "CovariateModel",
    "CovariateSpec",
    "baseline_steps",
    "build_design",
    "cause_rows",
    "chain_win_probabilities",
    "covariate_states",
    "destination_groups",
    "fit_covariate_coefficients",
    "select_covariates",
    "split_at_close_date",
]

#: Covariates a fit considers by default (each kept only where the data support it).
DEFAULT_COVARIATES: tuple[str, ...] = ("amount",)
#: The close-date covariates, considered only when asked for by name: where close
#: dates carry timing (as the generator's, drawn from each deal's time to outcome) the
#: selection keeps them, and their proportional effects forecast worse than none
#: (``docs/model.md``, "Deal covariates").
CLOSE_DATE_COVARIATES: tuple[str, ...] = ("days_to_close", "pushes")
#: The timing form of the close date, considered only when asked for by name:
#: ``overdue`` is 1 from the instant the deal's current close date has passed until
#: it is moved (the stay's rows split there).
TIMING_COVARIATES: tuple[str, ...] = ("overdue",)
#: Names of the built-in covariates (derived from the canonical columns).
BUILTIN_COVARIATES: frozenset[str] = frozenset(
    (*DEFAULT_COVARIATES, *CLOSE_DATE_COVARIATES, *TIMING_COVARIATES)
)
#: Destination groups sharing one coefficient vector per stage.
DESTINATION_GROUPS: tuple[str, ...] = ("move", "won", "lost", "no_decision")
#: Ridge penalty λ on every coefficient (a N(0, 1/λ) prior on each log hazard ratio).
RIDGE_PENALTY = 1.0
#: Days in the month unit of ``days_to_close``.
DAYS_PER_MONTH = 30.0
#: Clip of the ``amount`` covariate (doublings from the segment centre).
AMOUNT_CLIP = 5.0
#: Clip of the ``days_to_close`` covariate (months).
CLOSE_CLIP = (-6.0, 12.0)
#: Cap of the ``pushes`` covariate.
PUSH_CAP = 5.0
#: Clip of a standardised numeric user covariate (standard deviations).
NUMERIC_CLIP = 5.0
#: A categorical level needs this many deals to get its own coefficient (rarer levels
#: join the reference level).
MIN_LEVEL_DEALS = 10


def destination_groups(n_open: int) -> np.ndarray:
    """int64 (C,): the group (index into :data:`DESTINATION_GROUPS`) of each destination code."""
    return np.array([0] * n_open + [1, 2, 3], dtype=np.int64)


# ============================================================================================
# Values known at each instant
# ============================================================================================
def _days(expr: pl.Expr) -> pl.Expr:
    return expr.dt.total_microseconds().cast(pl.Float64) / 86_400_000_000.0


def deal_states(cut: DealLog, columns: Sequence[str]) -> pl.DataFrame:
    """Each event of ``cut`` with the deal's values from that instant on.

    Returns
    -------
    polars.DataFrame
        ``deal_id, timestamp, source_row, _amount`` (latest known amount),
        ``_close`` (latest known close date), ``_pushes`` (moves of the close date
        to a later date so far, as in ``DealLog.pipeline``) and each of
        ``columns`` forward-filled within the deal.
    """
    ffill = ffill_within_deal
    total = close_date_pushed().cum_sum()  # 0 at each deal's first row: minus its value there
    return cut.events.select(
        "deal_id",
        "timestamp",
        "source_row",
        ffill("amount").alias("_amount"),
        ffill("close_date").alias("_close"),
        (total - total.gather(deal_start())).alias("_pushes"),
        *[ffill(c).alias(c) for c in columns],
    )


def covariate_states(
    cut: DealLog,
    spells: pl.DataFrame,
    as_of: dt.datetime,
    columns: Sequence[str] = (),
    split_at_close: bool = False,
    known_at_as_of: bool = False,
) -> pl.DataFrame:
    """Counting-process rows of the spells: each visit split at every change of its deal.

    Parameters
    ----------
    cut : DealLog
        The log cut at ``as_of`` (``DealLog.as_of``).
    spells : polars.DataFrame
        Spells of ``cut`` (``DealLog.spells``), with the segment label column.
    as_of : datetime
        The cut instant (censored visits end there).
    columns : sequence of str
        User columns of the log to carry (forward-filled within the deal).
    split_at_close : bool, default False
        Also split a piece at the instant its close date passes (the ``overdue``
        covariate): the part up to it holds ``_overdue = 0``, the rest 1.
    known_at_as_of : bool, default False
        A change stamped exactly at ``as_of`` is known at it (as in ``DealLog.as_of``,
        which keeps rows with ``timestamp <= as_of``, and ``DealLog.pipeline``). With
        True, a censored visit also takes such changes, as a last piece of zero
        length ``(d, d]`` (``d`` its duration) holding the values at the as-of
        instant: what the simulation starts from. False (the fit): the piece is left
        out, as it holds for no time at risk (a row is at risk on ``(start, stop]``).
        A visit that ended never takes a change stamped at its exit (the value just
        before the exit holds for it).

    Returns
    -------
    polars.DataFrame
        One row per piece, grouped by spell and in time order: ``_spell`` (row of
        ``spells``), ``start``, ``stop`` (days since the stage entry; the first piece
        of a visit starts at -1 so that an exit at entry, ``T = 0``, is at risk),
        ``event`` (destination code at ``stop`` on the last piece of a visit that
        ended, else -1), ``first`` (the piece starting at the entry), the spell's
        ``stage_code`` and ``_segment``, and the values from the piece's start on:
        ``_amount``, ``_close_offset`` (close date minus stage entry, days),
        ``_pushes``, ``_overdue`` (1.0 from the instant the close date has passed on,
        :func:`split_at_close_date`; 0 when the pieces are not split there) and
        ``columns``.
    """
    states = deal_states(cut, columns)
    end = pl.coalesce(pl.col("exited_at"), pl.lit(as_of, dtype=pl.Datetime("us")))
    sp = spells.select(
        pl.col("deal_id").cast(pl.Utf8),
        pl.col("entered_at").cast(pl.Datetime("us")),
        end.cast(pl.Datetime("us")).alias("_end"),
        "duration_days",
        pl.col("destination_code").cast(pl.Int64),
        pl.col("stage_code").cast(pl.Int64),
        SEGMENT_COLUMN,
    )
    state_rows, spell_rows = _piece_rows(
        states, sp, spells["exited_at"].is_null() if known_at_as_of else None
    )
    j = pl.concat(
        [
            pl.DataFrame({"_spell": spell_rows}),
            sp.drop("deal_id")[spell_rows],
            states.drop("deal_id")[state_rows],
        ],
        how="horizontal",
    ).lazy()
    same_next = pl.col("_spell").shift(-1) == pl.col("_spell")
    j = j.with_columns(
        _days(pl.col("timestamp") - pl.col("entered_at")).clip(lower_bound=0.0).alias("start")
    )
    # several changes at one instant: the last one holds from it on
    j = j.filter(~(same_next & (pl.col("start").shift(-1) == pl.col("start"))).fill_null(False))
    first = (pl.col("_spell") != pl.col("_spell").shift(1)).fill_null(True)
    j = j.with_columns(
        pl.when(same_next.fill_null(False))
        .then(pl.col("start").shift(-1))
        .otherwise(pl.col("duration_days"))
        .alias("stop"),
        pl.when(same_next.fill_null(False))
        .then(pl.lit(-1, dtype=pl.Int64))
        .otherwise(pl.col("destination_code"))
        .alias("event"),
        first.alias("first"),
    ).with_columns(pl.when(pl.col("first")).then(-1.0).otherwise(pl.col("start")).alias("start"))
    out = j.select(
        "_spell",
        "start",
        "stop",
        "event",
        "first",
        "stage_code",
        SEGMENT_COLUMN,
        "_amount",
        _days(pl.col("_close") - pl.col("entered_at")).alias("_close_offset"),
        pl.col("_pushes").cast(pl.Float64),
        pl.lit(0.0).alias("_overdue"),
        *columns,
    ).collect()
    return split_at_close_date(out) if split_at_close else out


def split_at_close_date(rows: pl.DataFrame) -> pl.DataFrame:
    """Pieces of :func:`covariate_states` split where their close date passes.

    On the time-in-stage clock a piece ``(start, stop]`` with close date ``c`` days
    after the stage entry (``_close_offset``) is overdue from ``c`` on: with
    ``s = max(start, 0)`` (the first piece stands for the stage entry), a piece with
    ``s < c < stop`` becomes ``(start, c]`` (not overdue, no event) and ``(c, stop]``
    (overdue, the piece's event); any other piece is overdue when ``s >= c``. An exit
    at the close date itself is not overdue (the value just before it holds), and a
    piece without a close date never is. Returns the rows with ``_overdue`` set, in
    the same order (grouped by spell, in time order).
    """
    c = pl.col("_close_offset")
    s = pl.max_horizontal(pl.col("start"), pl.lit(0.0))
    known = c.is_not_null() & c.is_not_nan()
    split = (known & (s < c) & (c < pl.col("stop"))).fill_null(False)
    base = rows.with_row_index("_row").with_columns(
        (known & (s >= c)).fill_null(False).cast(pl.Float64).alias("_overdue"),
        pl.lit(0, dtype=pl.Int8).alias("_part"),
    )
    before = base.filter(split).with_columns(
        c.alias("stop"), pl.lit(-1, dtype=pl.Int64).alias("event")
    )
    after = base.filter(split).with_columns(
        c.alias("start"),
        pl.lit(False).alias("first"),
        pl.lit(1.0).alias("_overdue"),
        pl.lit(1, dtype=pl.Int8).alias("_part"),
    )
    return (
        pl.concat([base.filter(~split), before, after])
        .sort(["_row", "_part"])
        .drop("_row", "_part")
    )


def _piece_rows(
    states: pl.DataFrame, spells: pl.DataFrame, through_end: pl.Series | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The state rows each spell is split at, and the spell of each: int64 (n,) twice.

    For spell ``i`` of deal ``d`` (entered at ``e``, ended or censored at ``x``) the
    rows of ``d`` in ``states`` (the event frame's order: by deal, then time) before
    ``x`` (at or before ``x`` where ``through_end``, bool (n_spells,), is true), from
    the last one at or before ``e`` (the state at entry; the first row when none is)
    on; grouped by spell, in time order. Found by binary search on (deal, time) keys,
    without joining every spell to every state of its deal.
    """
    n_states = states.height
    first = np.flatnonzero(states.select(first_row_of_deal())["deal_id"].to_numpy())
    table = pl.DataFrame(
        {"deal_id": states["deal_id"].gather(first), "_deal": np.arange(first.size)}
    )
    deal = spells.select("deal_id").join(table, on="deal_id", how="left", maintain_order="left")[
        "_deal"
    ]
    found = deal.is_not_null().to_numpy()
    deal = deal.fill_null(0).to_numpy().astype(np.int64)
    # times as ranks among every time involved, so that (deal, time) is one int64 key
    state_t = states["timestamp"].to_physical().to_numpy()
    entry_t = spells["entered_at"].to_physical().to_numpy()
    end_t = spells["_end"].to_physical().to_numpy()
    rank, n_times = _dense_ranks(np.concatenate([state_t, entry_t, end_t]))
    span = np.int64(n_times + 1)
    key = np.repeat(np.arange(first.size), np.diff(np.append(first, n_states)))
    key *= span
    key += rank[:n_states]
    n = entry_t.size
    end_key = deal * span + rank[n_states + n :]
    hi = np.searchsorted(key, end_key, side="left")
    if through_end is not None and through_end.any():
        hi = np.where(through_end.to_numpy(), np.searchsorted(key, end_key, side="right"), hi)
    after_entry = np.searchsorted(key, deal * span + rank[n_states : n_states + n], side="right")
    del key, rank, end_key
    start = first[deal] if first.size else np.zeros(n, dtype=np.int64)
    lo = np.maximum(start, np.minimum(after_entry, hi) - 1)
    lengths = np.where(found, np.maximum(hi - lo, 0), 0)
    spell_rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    # row r of spell i is state row lo[i] + (r - offsets[i])
    state_rows = np.repeat((lo - offsets).astype(np.int64, copy=False), lengths)
    state_rows += np.arange(spell_rows.size, dtype=np.int64)
    return state_rows, spell_rows


def _dense_ranks(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank of each value among the distinct ``values`` (0 for the smallest), int64 (n,),
    and the number of distinct values: ``np.unique(values, return_inverse=True)``'s
    inverse and size, holding fewer full-length temporaries at once."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    order = np.argsort(values)  # ties in any order: they share a rank
    ordered = values[order]
    del values
    new = np.empty(ordered.size, dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    del ordered
    dense = np.cumsum(new, dtype=np.int64)
    del new
    dense -= 1
    rank = np.empty_like(dense)
    rank[order] = dense
    return rank, int(dense[-1]) + 1


# ============================================================================================
# Encoding
# ============================================================================================
@dataclass(frozen=True)
class CovariateSpec:
    """How one covariate turns the values known at an instant into design columns.

    Attributes
    ----------
    name : str
        ``"amount"``, ``"days_to_close"``, ``"pushes"``, ``"overdue"`` or a user column.
    kind : {"amount", "days_to_close", "pushes", "overdue", "categorical", "numeric"}
    columns : tuple of str
        Design column labels (one, or one per non-reference level).
    unit : str
        What one unit of the (single) column is, for the effects table.
    levels : tuple of str
        Categorical: the level of each column.
    reference : str or None
        Categorical: the reference level (rarer levels join it).
    centers : mapping str -> float
        ``amount``: per segment label (and ``"*"`` for any other), the mean log₂ amount
        at creation; ``numeric``: ``{"*": median}``.
    scale : float
        ``numeric``: the standard deviation of the column.
    fill : tuple of float
        ``days_to_close``: per open stage, the months used when the close date is
        unknown (the stage's median at entry).
    centered : bool
        ``days_to_close``: the column is the months minus the stage's ``fill``, so
        ``x = 0`` (the baseline deal) is the typical deal at entry rather than one
        whose close date is its stage entry (models saved before this have False).
    """

    name: str
    kind: str
    columns: tuple[str, ...]
    unit: str = ""
    levels: tuple[str, ...] = ()
    reference: str | None = None
    centers: Mapping[str, float] = field(default_factory=dict)
    scale: float = 1.0
    fill: tuple[float, ...] = ()
    centered: bool = False

    @property
    def time_varying(self) -> bool:
        """Whether the value at a future stage entry is unknown today (close-date values)."""
        return self.kind in ("days_to_close", "overdue")

    def encode(self, raw: pl.DataFrame) -> np.ndarray:
        """Design columns of ``raw`` (rows of :func:`covariate_states`), shape (n, len(columns)).

        Unknown values become 0 (the centre; for ``days_to_close`` the stage's fill).
        """
        n = raw.height
        if self.kind == "amount":
            a = raw["_amount"].to_numpy().astype(np.float64)
            center = (
                raw[SEGMENT_COLUMN]
                .cast(pl.Utf8)
                .replace_strict(
                    dict(self.centers),
                    default=self.centers.get("*", 0.0),
                    return_dtype=pl.Float64,
                )
                .to_numpy()
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(np.isfinite(a) & (a > 0), np.log2(a) - center, 0.0)
            return np.clip(v, -AMOUNT_CLIP, AMOUNT_CLIP)[:, None]
        if self.kind == "days_to_close":
            d = raw["_close_offset"].to_numpy().astype(np.float64)
            k = raw["stage_code"].to_numpy().astype(np.int64)
            return self.close_months(d, k)[:, None]
        if self.kind == "overdue":
            return raw["_overdue"].to_numpy().astype(np.float64)[:, None]
        if self.kind == "pushes":
            p = raw["_pushes"].to_numpy().astype(np.float64)
            return np.clip(np.nan_to_num(p, nan=0.0), 0.0, PUSH_CAP)[:, None]
        if self.kind == "categorical":
            vals = raw[self.name].cast(pl.Utf8).fill_null("(missing)").to_numpy()
            return (
                np.stack([vals == lv for lv in self.levels], axis=1)
                .astype(np.float64)
                .reshape(n, len(self.levels))
            )
        if self.kind == "numeric":
            v = raw[self.name].cast(pl.Float64).to_numpy()
            z = (v - self.centers.get("*", 0.0)) / self.scale
            return np.clip(np.nan_to_num(z, nan=0.0), -NUMERIC_CLIP, NUMERIC_CLIP)[:, None]
        raise ParameterError(f"Unknown covariate kind {self.kind!r}.")  # pragma: no cover

    def close_months(self, days: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """``days_to_close`` values: close date minus stage entry (``days``, NaN unknown) in stage.

        Months of :data:`DAYS_PER_MONTH` days clipped to :data:`CLOSE_CLIP` (unknown:
        the stage's ``fill``), minus the clipped ``fill`` when :attr:`centered`.
        ``days`` and ``stage`` broadcast together.
        """
        days, stage = np.broadcast_arrays(np.asarray(days, np.float64), np.asarray(stage))
        fill = np.asarray(self.fill, dtype=np.float64)
        f = fill[stage.astype(np.int64)] if days.size else np.zeros(days.shape)
        v = np.clip(np.where(np.isfinite(days), days / DAYS_PER_MONTH, f), *CLOSE_CLIP)
        return v - np.clip(f, *CLOSE_CLIP) if self.centered else v

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "name": self.name,
            "kind": self.kind,
            "columns": list(self.columns),
            "unit": self.unit,
            "levels": list(self.levels),
            "reference": self.reference,
            "centers": {k: float(v) for k, v in self.centers.items()},
            "scale": float(self.scale),
            "fill": [float(x) for x in self.fill],
            "centered": bool(self.centered),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CovariateSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            columns=tuple(d["columns"]),
            unit=str(d.get("unit", "")),
            levels=tuple(d.get("levels", ())),
            reference=d.get("reference"),
            centers={str(k): float(v) for k, v in d.get("centers", {}).items()},
            scale=float(d.get("scale", 1.0)),
            fill=tuple(float(x) for x in d.get("fill", ())),
            centered=bool(d.get("centered", False)),
        )


def _amount_centers(data: FitData) -> dict[str, float]:
    oc = data.outcomes
    assert oc is not None
    ok = oc.filter(pl.col("amount_at_creation").is_not_null() & (pl.col("amount_at_creation") > 0))
    values = np.log2(ok["amount_at_creation"].to_numpy().astype(np.float64))
    labels = np.array([str(g) for g in ok[SEGMENT_COLUMN].to_list()], dtype=object)
    centers = {str(g): _stable_mean(values[labels == g]) for g in np.unique(labels)}
    centers["*"] = _stable_mean(values) if values.size else 0.0
    return centers


def _stable_mean(values: np.ndarray) -> float:
    """The mean of ``values`` whatever their order (sorted first: polars' row order after
    a join or a group-by may change from run to run, and with it the last bits of a sum)."""
    return float(np.mean(np.sort(np.asarray(values, dtype=np.float64))))


def _spec_for(
    name: str, data: FitData, states: pl.DataFrame, numeric: Sequence[str]
) -> tuple[CovariateSpec | None, str]:
    """The spec of candidate ``name`` fitted to the data, or (None, why it cannot be used)."""
    n_open = int(data.n_open or 0)
    if name == "amount":
        if states["_amount"].drop_nulls().filter(states["_amount"].drop_nulls() > 0).len() == 0:
            return None, "no positive amounts"
        return (
            CovariateSpec(
                name, "amount", ("amount",), "twice the amount", centers=_amount_centers(data)
            ),
            "",
        )
    if name == "days_to_close":
        first = states.filter(pl.col("first"))
        fill = []
        for k in range(n_open):
            v = first.filter(pl.col("stage_code") == k)["_close_offset"].drop_nulls()
            fill.append(float(v.median()) / DAYS_PER_MONTH if v.len() else 0.0)
        if states["_close_offset"].drop_nulls().len() == 0:
            return None, "no close dates in the log"
        return (
            CovariateSpec(
                name,
                "days_to_close",
                ("days_to_close",),
                "close date a month later",
                fill=tuple(fill),
                centered=True,
            ),
            "",
        )
    if name == "pushes":
        return CovariateSpec(name, "pushes", ("pushes",), "one more push of the close date"), ""
    if name == "overdue":
        if states["_close_offset"].drop_nulls().len() == 0:
            return None, "no close dates in the log"
        return CovariateSpec(name, "overdue", ("overdue",), "close date passed"), ""
    if name in numeric:
        v = states[name].cast(pl.Float64).drop_nulls()
        vs = np.sort(v.to_numpy().astype(np.float64))
        if vs.size < 2 or not float(np.std(vs, ddof=1)) > 0:
            return None, "no variation"
        sd = float(np.std(vs, ddof=1))
        return (
            CovariateSpec(
                name,
                "numeric",
                (name,),
                f"one standard deviation ({sd:.4g}) more",
                centers={"*": float(v.median())},
                scale=sd,
            ),
            "",
        )
    # categorical: levels by number of deals
    sp = data.spells
    assert sp is not None
    vals = states.select(
        pl.col(name).cast(pl.Utf8).fill_null("(missing)").alias("v"), pl.col("_spell")
    ).join(
        sp.with_row_index("_spell").select(pl.col("_spell").cast(pl.Int64), "deal_id"),
        on="_spell",
        how="left",
    )
    counts = vals.group_by("v").agg(pl.col("deal_id").n_unique().alias("n")).sort(["n", "v"])
    counts = counts.sort(["n", "v"], descending=[True, False])
    if counts.height < 2:
        return None, "a single level"
    reference = str(counts["v"][0])
    levels = tuple(str(v) for v, n in counts.rows()[1:] if n >= MIN_LEVEL_DEALS)
    if not levels:
        return None, f"no level but {reference!r} has {MIN_LEVEL_DEALS} deals"
    return (
        CovariateSpec(
            name,
            "categorical",
            tuple(f"{name}={lv}" for lv in levels),
            f"{name} vs {reference!r}",
            levels=levels,
            reference=reference,
        ),
        "",
    )


# ============================================================================================
# Design (part of the fit input)
# ============================================================================================
@dataclass(frozen=True, eq=False)
class CovariateDesign:
    """The counting-process rows of a :class:`FitData` with every candidate's columns.

    Built once per fit by :func:`build_design` and kept in
    :attr:`FitData.covariate_design`; a re-weighted :class:`FitData` (bootstrap draw)
    reads the same design with its own deal weights (through :attr:`deal`).

    Attributes
    ----------
    candidates : tuple of str
        The covariates asked for.
    specs : tuple of CovariateSpec
        The usable candidates, in the order asked.
    unusable : mapping str -> str
        Candidates that cannot be used, and why.
    blocks : mapping str -> ndarray of int64
        Columns of ``x`` of each usable candidate.
    columns : tuple of str
        Labels of the columns of ``x``.
    x : ndarray of float64, shape (n, p)
    start, stop : ndarray of float64, shape (n,)
        Rows ``(start, stop]``, days since the stage entry.
    event : ndarray of int64, shape (n,)
        Destination code at ``stop`` or -1.
    first : ndarray of bool, shape (n,)
        The row starts at the stage entry.
    stage, segment, deal, spell : ndarray of int64, shape (n,)
        Open stage, segment index, index into :attr:`FitData.deal_ids` and row of the
        spells frame of each row.
    close_offset : ndarray of float64, shape (n,)
        The row's close date minus the stage entry, days (NaN when unknown).
    """

    candidates: tuple[str, ...]
    specs: tuple[CovariateSpec, ...]
    unusable: Mapping[str, str]
    blocks: Mapping[str, np.ndarray]
    columns: tuple[str, ...]
    x: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    event: np.ndarray
    first: np.ndarray
    stage: np.ndarray
    segment: np.ndarray
    deal: np.ndarray
    spell: np.ndarray
    close_offset: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _rows: dict[tuple[int, bool], tuple[np.ndarray, CoxRows]] = field(
        default_factory=dict, repr=False
    )

    def stage_rows(self, stage: int, pooled: bool = False) -> tuple[np.ndarray, CoxRows]:
        """Rows of one open stage (indices into the design, and their :class:`CoxRows`).

        Strata are the segments (``pooled=False``) or one stratum for the stage.
        """
        key = (int(stage), bool(pooled))
        if key not in self._rows:
            idx = np.flatnonzero(self.stage == stage)
            strat = np.zeros(idx.size, dtype=np.int64) if pooled else self.segment[idx]
            self._rows[key] = (
                idx,
                CoxRows.build(self.start[idx], self.stop[idx], strat, self.x[idx]),
            )
        return self._rows[key]

    def release_rows(self) -> None:
        """Drop the Cox rows :meth:`stage_rows` keeps (rebuilt, the same, if asked again)."""
        self._rows.clear()

    def spec(self, name: str) -> CovariateSpec:
        """The spec of a usable candidate."""
        for s in self.specs:
            if s.name == name:
                return s
        raise ParameterError(f"No usable covariate {name!r}.")  # pragma: no cover


def check_covariates(
    covariates: Sequence[str], log: DealLog | None, caller: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The candidate names, and which of them are numeric columns; raises on unknown names."""
    if isinstance(covariates, str):
        raise ParameterError(
            f"The `covariates` parameter of `{caller}` must be a list of names (e.g. "
            f"{list(DEFAULT_COVARIATES)}). Got {covariates!r}."
        )
    names = tuple(str(c) for c in covariates)
    if len(set(names)) != len(names):
        raise ParameterError(f"The `covariates` of `{caller}` must be distinct. Got {list(names)}.")
    segs = tuple(log.segment_columns) if log is not None else ()
    numeric = tuple(getattr(log, "numeric_columns", ())) if log is not None else ()
    unknown = [c for c in names if c not in BUILTIN_COVARIATES and c not in segs + numeric]
    if unknown:
        raise ParameterError(
            f"Unknown covariate(s) {unknown} in `{caller}`. Expected the built-in covariates "
            f"{sorted(BUILTIN_COVARIATES)} or columns of the log declared when it was read: "
            f"categorical {list(segs)} (`segment_columns`), numeric {list(numeric)} "
            "(`numeric_columns`)."
        )
    return names, tuple(c for c in names if c in numeric)


def build_design(
    data: FitData, covariates: Sequence[str], numeric: Sequence[str] = ()
) -> CovariateDesign:
    """The :class:`CovariateDesign` of ``data`` for the candidate covariates.

    Parameters
    ----------
    data : FitData
        Built from a log (needs the cut log and the spells frame).
    covariates : sequence of str
        Candidate names (checked by :func:`check_covariates`).
    numeric : sequence of str
        The candidates that are numeric user columns.
    """
    if data.cut is None or data.spells is None or data.spell_arrays is None:
        raise ParameterError("Deal covariates need fit data built from a log (`FitData.from_log`).")
    user = [c for c in covariates if c not in BUILTIN_COVARIATES]
    states = covariate_states(
        data.cut, data.spells, data.as_of, user, split_at_close="overdue" in covariates
    )
    specs: list[CovariateSpec] = []
    unusable: dict[str, str] = {}
    for name in covariates:
        spec, why = _spec_for(name, data, states, numeric)
        if spec is None:
            unusable[name] = why
        else:
            specs.append(spec)
    # each candidate's columns, checked for variation over every row; the kept ones are
    # copied straight into x (rows kept below), each freed as soon as it is copied
    parts: list[np.ndarray] = []
    blocks: dict[str, np.ndarray] = {}
    columns: list[str] = []
    pos = 0
    keep: list[CovariateSpec] = []
    for s in specs:
        part = s.encode(states)
        if not np.any(np.ptp(part, axis=0) > 0) if part.size else True:
            unusable[s.name] = "no variation"
            continue
        blocks[s.name] = np.arange(pos, pos + part.shape[1], dtype=np.int64)
        pos += part.shape[1]
        columns.extend(s.columns)
        keep.append(s)
        parts.append(part)
    spell = states["_spell"].to_numpy().astype(np.int64)
    arrays = data.spell_arrays
    start = states["start"].to_numpy().astype(np.float64)
    stop = states["stop"].to_numpy().astype(np.float64)
    first = states["first"].to_numpy().astype(bool)
    rows_kept = np.ones(spell.size, dtype=bool)
    if arrays.excluded is not None:  # stage entry unknown: left out, as from the exit curves
        rows_kept &= ~arrays.excluded[spell]
    if arrays.entry is not None:  # delayed entry: at risk from the first observation on
        entry = arrays.entry[spell]
        delayed = entry > 0
        rows_kept &= ~(delayed & (stop <= entry))
        start = np.where(delayed, np.maximum(start, entry), start)
        first &= ~delayed
    close_offset = states["_close_offset"].fill_null(float("nan")).to_numpy().astype(np.float64)
    event = states["event"].to_numpy().astype(np.int64)
    del states
    every_row = bool(rows_kept.all())
    x = np.empty((spell.size if every_row else int(np.count_nonzero(rows_kept)), pos))
    for s in keep:
        part = parts.pop(0)
        x[:, blocks[s.name]] = part if every_row else part[rows_kept]
        del part
    if not every_row:
        spell, start, stop, first = (
            spell[rows_kept],
            start[rows_kept],
            stop[rows_kept],
            first[rows_kept],
        )
        close_offset, event = close_offset[rows_kept], event[rows_kept]
    return CovariateDesign(
        candidates=tuple(covariates),
        specs=tuple(keep),
        unusable=unusable,
        blocks=blocks,
        columns=tuple(columns),
        x=x,
        start=start,
        stop=stop,
        event=event,
        first=first,
        stage=arrays.stage[spell],
        segment=arrays.segment[spell],
        deal=arrays.deal[spell],
        spell=spell,
        close_offset=close_offset,
    )


def row_weights(data: FitData, design: CovariateDesign) -> np.ndarray:
    """Weight of each design row, shape ``(n,)``: its deal's weight times its spell's
    recency weight by the stage entry (:attr:`FitData.spell_recency`; as for the exit
    curves, the factor a row's calendar time adds is common to its risk set)."""
    w = data.weights[design.deal]
    rec = data.spell_recency
    return w if rec is None else w * rec[design.spell]


# ============================================================================================
# Fitting and selection
# ============================================================================================
@dataclass(frozen=True, eq=False)
class CoefficientFit:
    """Coefficients of the selected covariates per open stage and destination group.

    Attributes
    ----------
    columns : tuple of str
        Design columns (of the selected covariates), ``d``.
    beta : ndarray, shape (K, 4, d)
        Log hazard ratios.
    covariance : ndarray, shape (K, 4, d, d)
    n_events : ndarray, shape (K, 4)
        Weighted exits of each group.
    loglik : float
        Sum of the log partial likelihoods.
    edf : float
        Effective degrees of freedom of the ridge fits, ``tr(I(β̂) (I(β̂) + λ)⁻¹)`` summed.
    """

    columns: tuple[str, ...]
    beta: np.ndarray
    covariance: np.ndarray
    n_events: np.ndarray
    loglik: float
    edf: float

    @property
    def aic(self) -> float:
        """``−2 ℓ + 2 edf``."""
        return -2.0 * self.loglik + 2.0 * self.edf


def cause_rows(
    design: CovariateDesign, cols: np.ndarray, stage: int, n_open: int
) -> tuple[np.ndarray, CoxRows, np.ndarray]:
    """The Cox rows of open stage ``stage`` (of ``n_open``) on the design columns ``cols``,
    and its causes' events.

    Returns the stage's design rows (as :meth:`CovariateDesign.stage_rows`), their
    :class:`~forecast.fit.cox.CoxRows` holding only ``cols``, and bool (4, n): per
    destination group, True on the rows (in the Cox rows' order) that end with an exit
    to that group (a re-entry of the stage itself is a censoring).
    """
    idx, rows = design.stage_rows(stage)
    sub = CoxRows(rows.start, rows.stop, np.ascontiguousarray(rows.x[:, cols]), rows.offsets,
                  rows.order_stop, rows.order_start, rows.index)  # fmt: skip
    ev_dest = rows.take(design.event[idx])
    hit = ev_dest >= 0
    group = destination_groups(n_open)[ev_dest[hit]]
    events = np.zeros((len(DESTINATION_GROUPS), rows.n), dtype=bool)
    for grp in range(len(DESTINATION_GROUPS)):
        events[grp, hit] = (group == grp) & (ev_dest[hit] != stage)
    return idx, sub, events


def fit_covariate_coefficients(
    data: FitData,
    design: CovariateDesign,
    names: Sequence[str],
    *,
    penalty: float = RIDGE_PENALTY,
    start: CoefficientFit | None = None,
    max_iter: int = 50,
) -> CoefficientFit:
    """Fit the stratified Cox models of every (stage, destination group) on ``names``.

    Parameters
    ----------
    data : FitData
        Supplies the deal weights.
    design : CovariateDesign
    names : sequence of str
        Usable covariates to include (their columns, in this order).
    penalty : float
        Ridge penalty ``λ``.
    start : CoefficientFit, optional
        Starting values (same columns), e.g. the point fit for a bootstrap draw.
    max_iter : int
        Newton iterations per model.
    """
    cols = np.concatenate([design.blocks[n] for n in names]) if names else np.zeros(0, np.int64)
    labels = tuple(design.columns[c] for c in cols)
    n_open = int(data.n_open or 0)
    d = cols.size
    beta = np.zeros((n_open, 4, d))
    cov = np.zeros((n_open, 4, d, d))
    n_events = np.zeros((n_open, 4))
    loglik = 0.0
    edf = 0.0
    w_row = row_weights(data, design)
    for k in range(n_open):
        idx, sub, events = cause_rows(design, cols, k, n_open)
        w = sub.take(w_row[idx])
        for grp, ev in enumerate(events):
            b0 = None if start is None else start.beta[k, grp]
            res = fit_cox(sub, ev, w, penalty=penalty, beta0=b0, max_iter=max_iter)
            beta[k, grp] = res.beta
            cov[k, grp] = res.covariance
            n_events[k, grp] = res.n_events
            loglik += res.loglik
            if d:
                info = np.linalg.inv(res.covariance) - penalty * np.eye(d)
                edf += float(np.trace(info @ res.covariance))
    return CoefficientFit(labels, beta, cov, n_events, loglik, edf)


def select_covariates(
    data: FitData, design: CovariateDesign, *, penalty: float = RIDGE_PENALTY
) -> tuple[tuple[str, ...], pl.DataFrame, CoefficientFit]:
    """Forward selection of whole covariates by Akaike's criterion (effective df).

    Starting from no covariate, the usable candidate that lowers
    ``AIC = −2 ℓ + 2 edf`` the most is added, while one does.

    Returns
    -------
    selected : tuple of str
    table : polars.DataFrame
        One row per candidate: ``covariate, kind, n_columns, kept, delta_aic`` (the
        change of AIC from adding it at the last step it was tried — negative for a
        kept covariate, the reduction it brought — or null if unusable), ``note``.
    fit : CoefficientFit
        The fit of the selected covariates.
    """
    current = fit_covariate_coefficients(data, design, (), penalty=penalty)
    selected: list[str] = []
    last_delta: dict[str, float] = {}
    remaining = [s.name for s in design.specs]
    while remaining:
        trials = {
            n: fit_covariate_coefficients(data, design, (*selected, n), penalty=penalty)
            for n in remaining
        }
        deltas = {n: f.aic - current.aic for n, f in trials.items()}
        last_delta.update(deltas)
        best = min(deltas, key=lambda n: deltas[n])
        if not deltas[best] < 0:
            break
        selected.append(best)
        current = trials[best]
        remaining.remove(best)
    rows = []
    for name in design.candidates:
        usable = name in design.blocks
        spec = design.spec(name) if usable else None
        rows.append(
            {
                "covariate": name,
                "kind": spec.kind if spec else None,
                "n_columns": int(design.blocks[name].size) if usable else 0,
                "kept": name in selected,
                "delta_aic": last_delta.get(name),
                "note": design.unusable.get(name, ""),
            }
        )
    table = pl.DataFrame(
        rows,
        schema={
            "covariate": pl.Utf8,
            "kind": pl.Utf8,
            "n_columns": pl.Int64,
            "kept": pl.Boolean,
            "delta_aic": pl.Float64,
            "note": pl.Utf8,
        },
    )
    # report in the selected order
    return tuple(selected), table, current


# ============================================================================================
# Baseline curves at x = 0
# ============================================================================================
def baseline_steps(
    times: np.ndarray, destinations: np.ndarray, increments: np.ndarray, n_codes: int
) -> AalenJohansen:
    """Product integral of cause-specific hazard increments into step curves.

    Parameters
    ----------
    times : ndarray of float64, shape (m,)
        Exit time (days) of each event row.
    destinations : ndarray of int64, shape (m,)
        Destination code of each event row.
    increments : ndarray of float64, shape (m,)
        The row's hazard increment (Breslow: ``w / Σ_at risk w exp(η)``).
    n_codes : int
        ``C``.

    Returns
    -------
    AalenJohansen
        At the distinct times ``t_i`` with positive increments,
        ``S(t_i) = Π_{k ≤ i} (1 − min(1, Σ_j dΛ_kj))`` and
        ``F_j(t_i) = Σ_{k ≤ i} S(t_{k−1}) dΛ_kj`` (scaled down where the sum is
        clipped). With Nelson–Aalen increments (``η = 0``) this is the
        Aalen–Johansen estimator.
    """
    ok = increments > 0
    t, j, inc = times[ok], destinations[ok], increments[ok]
    if t.size == 0:
        z = np.zeros(0)
        return AalenJohansen(z, z, np.zeros((n_codes, 0)), z, np.zeros((n_codes, 0)))
    uniq, index = np.unique(t, return_inverse=True)
    m = uniq.size
    d_lam = np.bincount(j * m + index, weights=inc, minlength=n_codes * m).reshape(n_codes, m)
    total = d_lam.sum(axis=0)
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-300), 1.0)
    d_lam = d_lam * scale
    hazard = np.minimum(total, 1.0)
    survival = np.cumprod(1.0 - hazard)
    lagged = np.r_[1.0, survival[:-1]]
    cif = np.cumsum(d_lam * lagged, axis=1)
    return AalenJohansen(uniq, survival, cif, np.zeros(m), d_lam)


def _stage_steps(
    data: FitData,
    design: CovariateDesign,
    coef: CoefficientFit,
    names: Sequence[str],
    stage: int,
    pooled: bool,
) -> dict[int, AalenJohansen]:
    """Baseline step curves of one stage per stratum (segment index, or 0 pooled)."""
    cols = np.concatenate([design.blocks[n] for n in names]) if names else np.zeros(0, np.int64)
    n_open, n_codes = int(data.n_open or 0), int(data.n_codes or 0)
    group_of = destination_groups(n_open)
    idx, rows = design.stage_rows(stage, pooled)
    x = rows.x[:, cols]
    dest = rows.take(design.event[idx])
    w = rows.take(row_weights(data, design)[idx])
    inc = np.zeros(rows.n)
    for grp in range(4):
        ev = np.zeros(rows.n, dtype=np.int64)
        hit = dest >= 0
        ev[hit] = (group_of[dest[hit]] == grp) & (dest[hit] != stage)
        if not ev.any():
            continue
        eta = x @ coef.beta[stage, grp] if cols.size else np.zeros(rows.n)
        part = breslow_increments(rows, ev, w, eta)
        inc[ev == 1] = part[ev == 1]
    out: dict[int, AalenJohansen] = {}
    for s in range(rows.offsets.size - 1):
        lo, hi = int(rows.offsets[s]), int(rows.offsets[s + 1])
        sel = np.arange(lo, hi)
        e = sel[(dest[sel] >= 0)]
        out[s] = baseline_steps(rows.stop[e], dest[e], inc[e], n_codes)
    return out


def baseline_curves(
    data: FitData,
    design: CovariateDesign,
    coef: CoefficientFit,
    names: Sequence[str],
    *,
    credibility: Mapping[tuple[str, int], float],
    destination_effects: Mapping[str, np.ndarray | None],
    tail_families: Sequence[str],
    shrink_toward: Any,
    borrowed: Mapping[int, tuple[Mapping[tuple[str, int], ExitCurves], ExitCurves]] | None = None,
    tail_mixture: bool = True,
) -> tuple[dict[tuple[str, int], ExitCurves], dict[int, ExitCurves]]:
    """The exit curves of a deal with ``x = 0`` per (segment, stage), and pooled per stage.

    The Breslow cause-specific hazards (:func:`baseline_steps`) on the day grid with
    the tail fitted on the stratum's spells (:func:`fit_exit_curves`), then shrunk
    toward the pooled baseline with the exit curves' credibility weights and
    destination effects (``shrink_toward`` is
    :func:`forecast.fit.exits.shrink_toward`). A stage without any exit
    (``borrowed``: stage code -> its exit curves per (segment, stage) and pooled,
    borrowed by :mod:`forecast.fit.borrowing`) keeps those curves as its baseline
    (its coefficients are zero: no exit to fit them on). ``tail_mixture`` as
    :func:`~forecast.fit.competing_risks.fit_exit_curves`.
    """
    n_open = int(data.n_open or 0)
    curves: dict[tuple[str, int], ExitCurves] = {}
    pooled: dict[int, ExitCurves] = {}
    for k in range(n_open):
        if borrowed is not None and k in borrowed:
            seg_curves, pooled[k] = borrowed[k]
            for g in data.segments:
                curves[(g, k)] = seg_curves[(g, k)]
            continue
        pooled_steps = _stage_steps(data, design, coef, names, k, pooled=True)
        pooled[k] = fit_exit_curves(
            data.stratum_spells(k),
            tail_families=tail_families,
            steps=pooled_steps.get(0),
            tail_mixture=tail_mixture,
        )
        seg_steps = _stage_steps(data, design, coef, names, k, pooled=False)
        for gi, g in enumerate(data.segments):
            cs: CensoredSpells = data.stratum_spells(k, gi)
            if cs.n == 0 or gi not in seg_steps:
                raw = pooled[k]
            else:
                raw = fit_exit_curves(
                    cs, tail_families=tail_families, steps=seg_steps[gi], tail_mixture=tail_mixture
                )
            z = float(credibility.get((g, k), 1.0))
            curves[(g, k)] = shrink_toward(raw, pooled[k], z, destination_effects.get(g))
    return curves, pooled


# ============================================================================================
# The model's covariate part
# ============================================================================================
@dataclass(frozen=True, eq=False)
class CovariateModel:
    """The fitted covariate part of a :class:`~forecast.fit.model.PipelineModel`.

    Attributes
    ----------
    candidates : tuple of str
        Covariates considered.
    selection : polars.DataFrame
        :func:`select_covariates`'s table (which kept, which dropped, criterion values).
    specs : tuple of CovariateSpec
        Encodings of the kept covariates, in column order.
    columns : tuple of str
        Design columns ``d``.
    beta, covariance, n_events : ndarray
        Shapes (K, 4, d), (K, 4, d, d), (K, 4): per open stage and destination group
        (:data:`DESTINATION_GROUPS`).
    baseline : dict (segment, stage) -> ExitCurves
        Curves of a deal with ``x = 0`` (empty when nothing is kept).
    pooled_baseline : dict stage -> ExitCurves
    entry_values : ndarray, shape (G, K, d)
        Typical ``x`` at stage entry per segment and stage (mean; median for the
        close date): the close date's value at a future stage entry, and how many
        pushes a deal collects between stage entries.
    new_deal_x : dict segment -> ndarray (m, d)
        Covariates at creation of the segment's recent new deals (the mix new deals
        draw from).
    new_deal_amount : dict segment -> ndarray (m,)
        Their amounts at creation, currency.
    penalty : float
        Ridge penalty.
    draw_beta : ndarray, shape (B, K, 4, d) or None
        Coefficients of each bootstrap draw.
    push_interval : dict segment -> float
        Mean days from a push of the close date to the new close date (``"*"``:
        all segments); how the close date is expected to move once it passes
        (:mod:`forecast.deal_covariates`).
    entry_close_days : ndarray, shape (G, K, Q)
        Quantiles (levels ``(q + 0.5) / Q``) of the days from a stage entry to the
        close date then: a deal entering a stage in the future gets one of them
        (its ``days_to_close`` there, and when its close date is expected to pass;
        :func:`forecast.deal_covariates.entry_close_at`).
    push_delay : dict segment -> float
        Mean days from the instant a close date passes to its push (``"*"``: all
        segments): how long a deal stays ``overdue`` before the push
        (:func:`push_delays`; empty, 0, without ``overdue`` among the candidates).
    """

    candidates: tuple[str, ...]
    selection: pl.DataFrame
    specs: tuple[CovariateSpec, ...]
    columns: tuple[str, ...]
    beta: np.ndarray
    covariance: np.ndarray
    n_events: np.ndarray
    baseline: dict[tuple[str, int], ExitCurves]
    pooled_baseline: dict[int, ExitCurves]
    entry_values: np.ndarray
    new_deal_x: dict[str, np.ndarray]
    new_deal_amount: dict[str, np.ndarray]
    penalty: float = RIDGE_PENALTY
    draw_beta: np.ndarray | None = None
    push_interval: dict[str, float] = field(default_factory=dict)
    entry_close_days: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    push_delay: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether any covariate was kept (otherwise the model is the one without covariates)."""
        return len(self.columns) > 0

    @property
    def kept(self) -> tuple[str, ...]:
        """Names of the kept covariates."""
        return tuple(s.name for s in self.specs)

    def time_varying_columns(self) -> np.ndarray:
        """bool (d,): columns whose value at a future stage entry is unknown today."""
        return (
            np.concatenate([np.full(len(s.columns), s.time_varying) for s in self.specs])
            if self.specs
            else np.zeros(0, dtype=bool)
        )

    def encode(self, raw: pl.DataFrame) -> np.ndarray:
        """Design matrix (n, d) of rows shaped like :func:`covariate_states`'s."""
        parts = [s.encode(raw) for s in self.specs]
        return np.hstack(parts) if parts else np.zeros((raw.height, 0))

    def multipliers(self, stage: int, x: np.ndarray, draw: int | None = None) -> np.ndarray:
        """Hazard ratios ``exp(β_{k,G(j)} · x)`` per destination code, shape (n, C)."""
        beta = self.beta if draw is None or self.draw_beta is None else self.draw_beta[draw]
        n_open = beta.shape[0]
        eta = np.asarray(x, dtype=np.float64) @ beta[stage].T  # (n, 4)
        return np.exp(eta[:, destination_groups(n_open)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "candidates": list(self.candidates),
            "selection": [{k: clean(v) for k, v in r.items()} for r in self.selection.to_dicts()],
            "specs": [s.to_dict() for s in self.specs],
            "columns": list(self.columns),
            "beta": self.beta.tolist(),
            "covariance": self.covariance.tolist(),
            "n_events": self.n_events.tolist(),
            "baseline": [
                {"segment": g, "stage": k, "curves": c.to_dict()}
                for (g, k), c in sorted(self.baseline.items())
            ],
            "pooled_baseline": [
                {"stage": k, "curves": c.to_dict()} for k, c in sorted(self.pooled_baseline.items())
            ],
            "entry_values": self.entry_values.tolist(),
            "new_deal_x": {g: v.tolist() for g, v in sorted(self.new_deal_x.items())},
            "new_deal_amount": {g: v.tolist() for g, v in sorted(self.new_deal_amount.items())},
            "penalty": float(self.penalty),
            "draw_beta": None if self.draw_beta is None else self.draw_beta.tolist(),
            "push_interval": {g: float(v) for g, v in sorted(self.push_interval.items())},
            "entry_close_days": self.entry_close_days.tolist(),
            # only with `overdue` among the candidates (the JSON of other models unchanged)
            **(
                {"push_delay": {g: float(v) for g, v in sorted(self.push_delay.items())}}
                if self.push_delay
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_open: int) -> CovariateModel:
        """Inverse of :meth:`to_dict`."""
        cols = tuple(d["columns"])
        dd = len(cols)

        def arr(v: Any, shape: tuple[int, ...]) -> np.ndarray:
            a = np.asarray(v, dtype=np.float64)
            return a.reshape(shape) if a.size == int(np.prod(shape)) else np.zeros(shape)

        sel = pl.DataFrame(
            list(d["selection"]),
            schema={
                "covariate": pl.Utf8,
                "kind": pl.Utf8,
                "n_columns": pl.Int64,
                "kept": pl.Boolean,
                "delta_aic": pl.Float64,
                "note": pl.Utf8,
            },
        )
        entry = np.asarray(d["entry_values"], dtype=np.float64)
        return cls(
            candidates=tuple(d["candidates"]),
            selection=sel,
            specs=tuple(CovariateSpec.from_dict(s) for s in d["specs"]),
            columns=cols,
            beta=arr(d["beta"], (n_open, 4, dd)),
            covariance=arr(d["covariance"], (n_open, 4, dd, dd)),
            n_events=arr(d["n_events"], (n_open, 4)),
            baseline={
                (e["segment"], int(e["stage"])): ExitCurves.from_dict(e["curves"])
                for e in d["baseline"]
            },
            pooled_baseline={
                int(e["stage"]): ExitCurves.from_dict(e["curves"]) for e in d["pooled_baseline"]
            },
            entry_values=entry.reshape(entry.shape[0], n_open, dd) if entry.size else entry,
            new_deal_x={
                g: np.asarray(v, dtype=np.float64).reshape(len(v), dd)
                for g, v in d["new_deal_x"].items()
            },
            new_deal_amount={
                g: np.asarray(v, dtype=np.float64) for g, v in d["new_deal_amount"].items()
            },
            penalty=float(d.get("penalty", RIDGE_PENALTY)),
            draw_beta=None
            if d.get("draw_beta") is None
            else np.asarray(d["draw_beta"], dtype=np.float64).reshape(
                len(d["draw_beta"]), n_open, 4, dd
            ),
            push_interval={str(g): float(v) for g, v in d.get("push_interval", {}).items()},
            entry_close_days=_entry_close_array(d.get("entry_close_days", []), n_open),
            push_delay={str(g): float(v) for g, v in d.get("push_delay", {}).items()},
        )


def _entry_close_array(v: Any, n_open: int) -> np.ndarray:
    """``entry_close_days`` from JSON, shape (G, K, Q) (one level per stratum: the median)."""
    a = np.asarray(v, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, n_open, 0))
    return a.reshape(a.shape[0], n_open, -1)


#: Push interval (days) assumed when the history has no push to measure it from.
DEFAULT_PUSH_INTERVAL_DAYS = 30.0


def push_intervals(data: FitData) -> dict[str, float]:
    """Mean days from each push of the close date to the new close date, per segment.

    A push is a close date moved later (as in ``DealLog.pipeline``). Segments with
    fewer than 10 pushes use all segments' mean (key ``"*"``);
    :data:`DEFAULT_PUSH_INTERVAL_DAYS` without any push.
    """
    return _push_means(data, pl.col("close_date") - pl.col("timestamp"), DEFAULT_PUSH_INTERVAL_DAYS)


def push_delays(data: FitData) -> dict[str, float]:
    """Mean days from the instant a close date passes to its push, per segment.

    Over the pushes of the history (close dates moved later), the days from the
    close date they replace to the push (0 for a push before it passed). How long a
    deal stays overdue before its next push in simulation (the ``overdue``
    covariate, :func:`forecast.deal_covariates.covariate_paths`). Segments with
    fewer than 10 pushes use all segments' mean (key ``"*"``); 0 without any push.
    """
    return _push_means(data, pl.col("timestamp") - pl.col("_prev"), 0.0)


def _push_means(data: FitData, days: pl.Expr, default: float) -> dict[str, float]:
    """Per segment (``"*"``: pooled) the mean of ``days`` (clipped at 0) over the pushes."""
    assert data.cut is not None and data.outcomes is not None
    ev = data.cut.events.select(
        "deal_id",
        "timestamp",
        "close_date",
        previous_close_date().alias("_prev"),
    ).filter(pl.col("close_date") > pl.col("_prev"))
    ev = ev.with_columns(_days(days).clip(lower_bound=0.0).alias("_d")).join(
        data.outcomes.select("deal_id", SEGMENT_COLUMN), on="deal_id", how="left"
    )
    pooled = _stable_mean(ev["_d"].to_numpy()) if ev.height else default
    out = {"*": pooled}
    for g in data.segments:
        v = ev.filter(pl.col(SEGMENT_COLUMN) == g)["_d"].to_numpy()
        out[g] = _stable_mean(v) if v.size >= 10 else pooled
    return out


#: Quantile levels ``(q + 0.5) / Q`` of the days from a stage entry to the close date
#: kept per (segment, stage): a future stage entry's close date is drawn from them.
ENTRY_CLOSE_LEVELS = 16


def entry_close_days(data: FitData, design: CovariateDesign) -> np.ndarray:
    """Days from a stage entry to the close date known then, per (segment, stage): quantiles.

    Shape (G, K, :data:`ENTRY_CLOSE_LEVELS`), the quantiles at levels ``(q + 0.5) / Q``
    (the middle ones bracket the median); a stratum without close dates takes its
    stage's quantiles over all segments, and a stage without any
    :data:`DEFAULT_PUSH_INTERVAL_DAYS`.
    """
    n_open = int(data.n_open or 0)
    levels = (np.arange(ENTRY_CLOSE_LEVELS) + 0.5) / ENTRY_CLOSE_LEVELS
    out = np.full((len(data.segments), n_open, ENTRY_CLOSE_LEVELS), DEFAULT_PUSH_INTERVAL_DAYS)
    ok = design.first & np.isfinite(design.close_offset)
    for k in range(n_open):
        stage_rows = ok & (design.stage == k)
        pooled = np.quantile(design.close_offset[stage_rows], levels) if stage_rows.any() else None
        for g in range(len(data.segments)):
            sel = stage_rows & (design.segment == g)
            if sel.any():
                out[g, k] = np.quantile(design.close_offset[sel], levels)
            elif pooled is not None:
                out[g, k] = pooled
    return out


def entry_and_new_deal_values(
    data: FitData, design: CovariateDesign, names: Sequence[str], new_deal_quarters: int = 4
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Typical ``x`` at stage entry per (segment, stage), and the recent new deals' ``x`` and amounts.

    Typical: the mean over the stage entries (the median for the close date).

    New deals: the deals created in the last ``new_deal_quarters`` full fiscal
    quarters before the as-of date (all deals if fewer than 20), their covariates
    at the start of their first stage visit, per segment (pooled for a segment
    with none).
    """
    cols = np.concatenate([design.blocks[n] for n in names]) if names else np.zeros(0, np.int64)
    n_open = int(data.n_open or 0)
    G = len(data.segments)
    x = design.x[:, cols]
    entry = np.zeros((G, n_open, cols.size))
    first = design.first
    close_cols = np.zeros(cols.size, dtype=bool)
    pos = 0
    for n in names:
        size = design.blocks[n].size
        close_cols[pos : pos + size] = design.spec(n).kind == "days_to_close"
        pos += size
    for g in range(G):
        for k in range(n_open):
            sel = first & (design.segment == g) & (design.stage == k)
            if not sel.any():
                sel = first & (design.stage == k)
            if sel.any():
                # mean values (e.g. pushes so far) but the median close date (heavy tails)
                entry[g, k] = np.where(
                    close_cols, np.median(x[sel], axis=0), np.mean(x[sel], axis=0)
                )
    sp = data.spells
    assert sp is not None
    visit0 = sp["visit"].to_numpy()[design.spell] == 0
    created = sp["created_at"].to_numpy()[design.spell]
    cur = data.calendar.quarter_of(data.as_of)
    since = np.datetime64(data.calendar.shift(cur, -new_deal_quarters).start, "us")
    recent = first & visit0 & (created >= since)
    if np.count_nonzero(recent) < 20:
        recent = first & visit0
    amounts = sp["amount_at_entry"].to_numpy().astype(np.float64)[design.spell]
    new_x: dict[str, np.ndarray] = {}
    new_a: dict[str, np.ndarray] = {}
    for g, label in enumerate(data.segments):
        sel = recent & (design.segment == g)
        if not sel.any():
            sel = recent
        new_x[label] = np.ascontiguousarray(x[sel])
        new_a[label] = np.nan_to_num(amounts[sel], nan=0.0)
    return entry, new_x, new_a


# ============================================================================================
# Per-deal curves and effects
# ============================================================================================
def tilt_density(dens: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """Day-bin exit sub-densities of a deal whose hazards are ``multipliers`` × the baseline's.

    Per day bin ``l`` the baseline's discrete cause-specific hazards are
    ``q_j(l) = f_j(l) / S(l)`` (``S(l)`` the mass not yet exited at the start of the
    bin); the deal's are ``r_j q_j(l)``, scaled down to a total of 1 where they would
    exceed it, and its sub-densities follow by the product-limit recursion
    (:mod:`forecast._kernels.tilt`). With every ``r_j = 1`` this returns ``dens``.

    Parameters
    ----------
    dens : ndarray of float64, shape (C, L)
        Baseline ``f[j, l] = P(l < T <= l + 1, J = j)``; the mass beyond ``L`` is
        ``1 − Σ f``.
    multipliers : ndarray of float64, shape (C,)
        Hazard ratios ``r_j > 0``.

    Returns
    -------
    ndarray of float64, shape (C, L)
    """
    f = np.ascontiguousarray(dens, dtype=np.float64)
    q = np.empty_like(f)
    baseline_hazards(f, q)
    out = np.empty_like(f)
    kernel_tilt(q, np.ascontiguousarray(multipliers, dtype=np.float64), np.int64(0), out)
    return out


def chain_win_probabilities(
    curves: Sequence[ExitCurves], r_sets: np.ndarray, n_open: int
) -> np.ndarray:
    """Eventual win probability from the first open stage for many hazard-ratio sets.

    ``r_sets`` (n, K, C): per set, the hazard ratios of each stage; each stage's
    tilted eventual shares (the mass left at the grid end split by the tail shares)
    enter ``B = (I − Q)⁻¹ R``. Returns shape (n,).
    """
    n_days = max(c.max_day for c in curves) * 3 + 30
    n = r_sets.shape[0]
    shares = np.empty((n, n_open, r_sets.shape[2]))
    for k in range(n_open):
        f = np.ascontiguousarray(curves[k].exit_density(n_days))
        q = np.empty_like(f)
        baseline_hazards(f, q)
        tot = np.empty((n, f.shape[0]))
        tilted_totals(q, np.ascontiguousarray(r_sets[:, k, :]), tot)
        left = np.clip(1.0 - tot.sum(axis=1), 0.0, None)
        shares[:, k] = tot + left[:, None] * curves[k].tail_shares[None, :]
    q_blk, r_blk = shares[:, :, :n_open], shares[:, :, n_open:]
    eye = np.eye(n_open)[None, :, :]
    try:
        b = np.linalg.solve(eye - q_blk, r_blk)  # (n, K, 3)
    except np.linalg.LinAlgError:
        # open stages that only ever move among themselves (I − Q singular): they
        # never close, and the pseudo-inverse gives them no win probability
        b = np.linalg.pinv(eye - q_blk) @ r_blk
    return b[:, 0, 0]


def win_probability_from_entry(
    model: CovariateModel,
    curves: Sequence[ExitCurves],
    x: np.ndarray,
    beta: np.ndarray | None = None,
) -> float:
    """Eventual win probability of a deal entering the first open stage with covariates ``x``.

    ``x`` is held fixed through every stage; the chain is ``B = (I − Q)⁻¹ R`` on the
    tilted eventual shares of each stage's baseline ``curves``.
    """
    b = model.beta if beta is None else beta
    n_open = b.shape[0]
    r = np.exp(np.einsum("kgd,d->kg", b, x))[:, destination_groups(n_open)]
    return float(chain_win_probabilities(curves, r[None], n_open)[0])


def coefficient_table(model: CovariateModel, stage_names: Sequence[str]) -> pl.DataFrame:
    """Log hazard ratios per open stage, destination group and design column.

    Columns ``stage, destination, covariate, beta, se, hazard_ratio, hazard_ratio_low,
    hazard_ratio_high`` (95 % Wald interval), ``n_exits`` (weighted exits of the group).
    """
    rows = []
    for k, stage in enumerate(stage_names):
        for grp, gname in enumerate(DESTINATION_GROUPS):
            for c, col in enumerate(model.columns):
                b = float(model.beta[k, grp, c])
                se = float(math.sqrt(max(model.covariance[k, grp, c, c], 0.0)))
                rows.append(
                    {
                        "stage": stage,
                        "destination": gname,
                        "covariate": col,
                        "beta": b,
                        "se": se,
                        "hazard_ratio": math.exp(b),
                        "hazard_ratio_low": math.exp(b - 1.96 * se),
                        "hazard_ratio_high": math.exp(b + 1.96 * se),
                        "n_exits": float(model.n_events[k, grp]),
                    }
                )
    return pl.DataFrame(
        rows,
        schema={
            "stage": pl.Utf8,
            "destination": pl.Utf8,
            "covariate": pl.Utf8,
            "beta": pl.Float64,
            "se": pl.Float64,
            "hazard_ratio": pl.Float64,
            "hazard_ratio_low": pl.Float64,
            "hazard_ratio_high": pl.Float64,
            "n_exits": pl.Float64,
        },
    )


def _contrast_label(spec: CovariateSpec, column: int) -> str:
    if spec.kind == "amount":
        return "deals twice as large"
    if spec.kind == "days_to_close":
        return "close date a month later"
    if spec.kind == "pushes":
        return "one more close-date push"
    if spec.kind == "overdue":
        return "close date passed (overdue) instead of ahead"
    if spec.kind == "categorical":
        return f"{spec.name} {spec.levels[column]!r} instead of {spec.reference!r}"
    return f"{spec.name} one standard deviation ({spec.scale:.4g}) higher"


def effects_table(
    model: CovariateModel, curves: Sequence[ExitCurves], *, n_sim: int = 200, seed: int = 0
) -> pl.DataFrame:
    """What each covariate does to a deal's chance of winning, in words a sales leader reads.

    For every kept covariate and contrast (``"deals twice as large"``, ``"one more
    close-date push"``, a level against the reference level, ...) the odds ratio
    of eventually winning for a deal entering the first stage with the contrast,
    against the same deal at the reference (``x = 0``, the covariate held fixed
    through the stages), from the pooled baseline ``curves``; 95 % interval from
    ``n_sim`` coefficient draws ``β ~ N(β̂, Σ̂)``. Dropped covariates get a row
    with ``kept = False`` and their criterion value.

    Columns: ``covariate, contrast, kept, delta_aic, win_probability_reference,
    win_probability, win_odds_ratio, win_odds_ratio_low, win_odds_ratio_high,
    text``.
    """
    rows: list[dict[str, Any]] = []
    sel = {r["covariate"]: r for r in model.selection.iter_rows(named=True)}
    d = len(model.columns)
    rng = np.random.default_rng(seed)
    sims: list[np.ndarray] = []
    if d:
        n_open = model.beta.shape[0]
        draws = np.empty((n_sim, *model.beta.shape))
        for k in range(n_open):
            for grp in range(4):
                cov = model.covariance[k, grp]
                try:
                    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(d))
                except np.linalg.LinAlgError:
                    chol = np.diag(np.sqrt(np.maximum(np.diag(cov), 0.0)))
                draws[:, k, grp] = model.beta[k, grp] + rng.standard_normal((n_sim, d)) @ chol.T
        sims = list(draws)

    def odds(p: Any) -> Any:
        p = np.asarray(p, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((p > 0) & (p < 1), p / (1.0 - p), np.nan)

    if d:
        n_open = model.beta.shape[0]
        group_of = destination_groups(n_open)
        xs = np.vstack([np.zeros(d), np.eye(d)])  # reference, then each column
        betas = np.concatenate([model.beta[None], np.asarray(sims).reshape(-1, *model.beta.shape)])
        eta = np.einsum("bkgd,xd->bxkg", betas, xs)  # (1 + n_sim, 1 + d, K, 4)
        r_sets = np.exp(eta)[..., group_of].reshape(-1, n_open, group_of.size)
        p_all = chain_win_probabilities(curves, r_sets, n_open).reshape(betas.shape[0], d + 1)
        ratio_all = odds(p_all[:, 1:]) / odds(p_all[:, :1])  # (1 + n_sim, d)
    pos = 0
    for spec in model.specs:
        for c in range(len(spec.columns)):
            col = pos + c
            ratio = float(ratio_all[0, col])
            sim = ratio_all[1:, col]
            lo, hi = np.nanquantile(sim, [0.025, 0.975]) if sim.size else (np.nan, np.nan)
            label = _contrast_label(spec, c)
            r = sel.get(spec.name, {})
            rows.append(
                {
                    "covariate": spec.name,
                    "contrast": label,
                    "kept": True,
                    "delta_aic": r.get("delta_aic"),
                    "win_probability_reference": float(p_all[0, 0]),
                    "win_probability": float(p_all[0, col + 1]),
                    "win_odds_ratio": ratio,
                    "win_odds_ratio_low": float(lo),
                    "win_odds_ratio_high": float(hi),
                    "text": f"{label}: win odds ×{ratio:.2f} ({lo:.2f}–{hi:.2f})",
                }
            )
        pos += len(spec.columns)
    for name, r in sel.items():
        if r["kept"]:
            continue
        why = r["note"] or (
            f"ΔAIC {r['delta_aic']:+.1f}" if r["delta_aic"] is not None else "not tried"
        )
        rows.append(
            {
                "covariate": name,
                "contrast": "",
                "kept": False,
                "delta_aic": r["delta_aic"],
                "win_probability_reference": None,
                "win_probability": None,
                "win_odds_ratio": None,
                "win_odds_ratio_low": None,
                "win_odds_ratio_high": None,
                "text": f"{name}: not kept ({why})",
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "covariate": pl.Utf8,
            "contrast": pl.Utf8,
            "kept": pl.Boolean,
            "delta_aic": pl.Float64,
            "win_probability_reference": pl.Float64,
            "win_probability": pl.Float64,
            "win_odds_ratio": pl.Float64,
            "win_odds_ratio_low": pl.Float64,
            "win_odds_ratio_high": pl.Float64,
            "text": pl.Utf8,
        },
    )
