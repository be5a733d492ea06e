"""Bayesian-bootstrap deal weights, and the per-deal helpers every component fitter shares.

The parameter uncertainty of the fit (DESIGN §2) is represented by refitting on
re-weighted deals: in the Bayesian bootstrap (Rubin 1981) each deal gets a weight
``n * D_i`` with ``D ~ Dirichlet(1, ..., 1)``, so the weights are positive, sum to
the number of deals ``n`` and have mean 1 and variance ``(n - 1) / (n + 1)``.
Every component fitter (:mod:`forecast.fit.amounts`, :mod:`~forecast.fit.arrivals`,
:mod:`~forecast.fit.calendar_effects`, :mod:`~forecast.fit.shocks`) reads an
optional ``weight`` column (Float64, joined on ``deal_id``; absent means 1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from forecast.calendar import FiscalCalendar, _as_datetime
from forecast.errors import MissingColumnError, ParameterError

__all__ = ["WEIGHT_COLUMN", "dirichlet_deal_weights"]

#: Name of the optional per-deal weight column read by the component fitters.
WEIGHT_COLUMN = "weight"
#: Segment label used when no segment columns are given (same as ``forecast.fit.fitting``).
ALL_SEGMENTS = "all"
#: Key of the pooled (all segments together) fit in the component models.
POOLED = "__pooled__"
_SEGMENT = "_segment_label"


def dirichlet_deal_weights(
    deal_ids: Sequence[Any] | pl.Series, n_draws: int, seed: int
) -> pl.DataFrame:
    """Bayesian-bootstrap weights: ``n × Dirichlet(1, ..., 1)`` over deals, per draw.

    Parameters
    ----------
    deal_ids : sequence of str or polars.Series
        Distinct deal ids (``n`` of them). The weights do not depend on their
        order: ids are sorted before the weights are assigned.
    n_draws : int
        Number of bootstrap draws ``B`` (≥ 1).
    seed : int
        Seed (≥ 0). Draw ``b`` uses its own stream seeded from ``(seed, b)``, so
        the first draws are the same whatever ``n_draws`` is.

    Returns
    -------
    polars.DataFrame
        ``B × n`` rows ``draw`` (Int64, 0..B-1), ``deal_id`` (Utf8), ``weight``
        (Float64, > 0); within each draw the weights sum to ``n`` (mean 1).

    Examples
    --------
    >>> w = dirichlet_deal_weights(["a", "b", "c"], n_draws=2, seed=0)
    >>> w.shape, round(w.filter(pl.col("draw") == 0)["weight"].sum(), 9)
    ((6, 3), 3.0)
    """
    if not isinstance(n_draws, int | np.integer) or isinstance(n_draws, bool) or n_draws < 1:
        raise ParameterError(
            f"The `n_draws` parameter of `dirichlet_deal_weights` must be an int ≥ 1. Got {n_draws!r}."
        )
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(
            f"The `seed` parameter of `dirichlet_deal_weights` must be an int ≥ 0. Got {seed!r}."
        )
    ids = pl.Series("deal_id", list(deal_ids) if not isinstance(deal_ids, pl.Series) else deal_ids)
    ids = ids.cast(pl.Utf8)
    if ids.null_count():
        raise ParameterError("The `deal_ids` of `dirichlet_deal_weights` contain null ids.")
    if ids.n_unique() != ids.len():
        dup = ids.filter(ids.is_duplicated()).unique().sort().head(5).to_list()
        raise ParameterError(
            f"The `deal_ids` of `dirichlet_deal_weights` must be distinct. Got duplicates {dup}."
        )
    ids = ids.sort()
    n = ids.len()
    weights = np.empty((int(n_draws), n), dtype=np.float64)
    for b in range(int(n_draws)):
        e = np.random.default_rng([int(seed), b]).standard_exponential(n)
        weights[b] = e * (n / e.sum()) if n else e
    return pl.DataFrame(
        {
            "draw": np.repeat(np.arange(int(n_draws), dtype=np.int64), n),
            "deal_id": pl.concat([ids] * int(n_draws)) if n else pl.Series([], dtype=pl.Utf8),
            "weight": weights.ravel(),
        }
    )


# -- helpers shared by the component fitters ---------------------------------------------------
def require_columns(
    frame: pl.DataFrame, columns: Sequence[str], caller: str, frame_name: str
) -> None:
    """Raise :class:`MissingColumnError` naming every column of ``columns`` absent from ``frame``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingColumnError(
            f"`{caller}` needs the column(s) {missing} in `{frame_name}`; it has "
            f"{frame.columns}. Build `{frame_name}` with the `DealLog` views "
            "(docs/internals.md §3).",
            column=missing[0],
            expected=list(columns),
            found=frame.columns,
        )


def with_weight(frame: pl.DataFrame, caller: str, frame_name: str) -> pl.DataFrame:
    """``frame`` with a valid Float64 ``weight`` column (1.0 where the column is absent).

    Raises :class:`ParameterError` if a given weight is null, negative or not finite.
    """
    if WEIGHT_COLUMN not in frame.columns:
        return frame.with_columns(pl.lit(1.0, dtype=pl.Float64).alias(WEIGHT_COLUMN))
    w = frame[WEIGHT_COLUMN].cast(pl.Float64)
    bad = w.is_null() | ~w.is_finite() | (w < 0)
    if bad.any():
        row = int(bad.arg_max())  # first offending row
        raise ParameterError(
            f"The `weight` column of `{frame_name}` passed to `{caller}` must be finite and ≥ 0. "
            f"Got {frame[WEIGHT_COLUMN][row]!r} at row {row}."
        )
    return frame.with_columns(w.alias(WEIGHT_COLUMN))


def with_segment_label(
    frame: pl.DataFrame, segment_columns: Sequence[str], caller: str, frame_name: str
) -> pl.DataFrame:
    """``frame`` with a ``_segment_label`` column: values of ``segment_columns`` joined by ``"|"``.

    Same labelling as ``forecast.fit.fitting.segment_labels`` (``"all"`` without
    segment columns, ``"(missing)"`` for a null value), so a label built there
    (the ``_segment`` column passed as the only segment column) passes through.
    """
    cols = list(segment_columns)
    require_columns(frame, cols, caller, frame_name)
    if not cols:
        return frame.with_columns(pl.lit(ALL_SEGMENTS).alias(_SEGMENT))
    return frame.with_columns(
        pl.concat_str(
            [pl.col(c).cast(pl.Utf8).fill_null("(missing)") for c in cols], separator="|"
        ).alias(_SEGMENT)
    )


def check_as_of(as_of: object, caller: str) -> dt.datetime:
    """``as_of`` as a naive-UTC datetime, with the caller's name in the error message."""
    try:
        return _as_datetime(as_of, "as_of")
    except ParameterError:
        raise ParameterError(
            f"The `as_of` parameter of `{caller}` must be a date, datetime or ISO-8601 "
            f"string. Got {as_of!r}."
        ) from None


def check_calendar(calendar: object, caller: str) -> FiscalCalendar:
    """Raise :class:`ParameterError` unless ``calendar`` is a :class:`FiscalCalendar`."""
    if not isinstance(calendar, FiscalCalendar):
        raise ParameterError(
            f"The `calendar` parameter of `{caller}` must be a `FiscalCalendar`. "
            f"Got {type(calendar).__name__}."
        )
    return calendar


def check_positive_int(value: object, name: str, caller: str, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``, else :class:`ParameterError`."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ParameterError(
            f"The `{name}` parameter of `{caller}` must be an int ≥ {minimum}. Got {value!r}."
        )
    return int(value)


def to_datetime64(values: pl.Series | dt.datetime) -> np.ndarray | np.datetime64:
    """Polars Datetime series (or a datetime) -> numpy ``datetime64[us]``."""
    if isinstance(values, dt.datetime):
        return np.datetime64(values, "us")
    return values.cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]")


def float_or_none(x: float) -> float | None:
    """JSON-safe float: ``None`` for ±inf or nan (the readers map ``None`` back to inf)."""
    return None if not np.isfinite(x) else float(x)
