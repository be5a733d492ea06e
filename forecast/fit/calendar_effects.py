"""Quarter-end effect: how strongly wins bunch in the last days of a fiscal quarter.

Model (``docs/model.md``, "Quarter-end effect"; ``docs/internals.md`` §5): a win that would fall in the first ``W`` days of
quarter ``q + 1`` is moved into the last ``W`` days of quarter ``q`` with
probability ``pi``. If wins arrive at a base rate ``b`` per day around a quarter
boundary, the expected number of wins is ``b W (1 + pi)`` in the last ``W`` days
before the boundary and ``b W (1 - pi)`` in the first ``W`` days after it. Given
``n = n_last + n_first`` wins in the two windows, ``n_last ~ Binomial(n, (1 + pi) / 2)``,
so

    pi_hat = (n_last - n_first) / (n_last + n_first),   SE = sqrt((1 - pi_hat²) / n)

(``pi_hat = 2 p_hat - 1`` with ``p_hat = n_last / n``). Only complete boundaries
are used (both windows inside the observed history), and the estimate is clipped
to ``[0, 1)`` because the simulator can only pull wins forward. The base rate is
assumed the same on both sides of a boundary (a trend or seasonality over two
weeks is negligible next to the push).

Also holds the vectorised fiscal-quarter arithmetic the other component fitters use.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import check_int, float_or_none, to_datetime64
from forecast.calendar import FiscalCalendar
from forecast.errors import ParameterError
from forecast.fit.data import FitData

__all__ = ["MAX_PULL_IN", "QuarterEndEffect", "QuarterEndLayout", "fit_quarter_end_effect"]

#: Upper clip of the pull-in probability (the estimate lives in [0, 1)).
MAX_PULL_IN = 0.999
_DAY_US = 86_400_000_000


# -- vectorised fiscal quarters -------------------------------------------------------------------
def quarter_start_month_index(times: np.ndarray, calendar: FiscalCalendar) -> np.ndarray:
    """Month index (months since 1970-01) of the start of each time's fiscal quarter.

    Parameters
    ----------
    times : ndarray of datetime64, shape (n,)
    calendar : FiscalCalendar

    Returns
    -------
    ndarray of int64, shape (n,)
        Convert back with ``.astype("datetime64[M]")``. Agrees with
        ``calendar.quarter_of(t).start`` for every ``t``.
    """
    months = np.asarray(times).astype("datetime64[M]").astype(np.int64)
    offset = (months % 12 - (calendar.start_month - 1)) % 3
    return months - offset


def fiscal_quarter_number(month_index: np.ndarray, calendar: FiscalCalendar) -> np.ndarray:
    """Fiscal quarter number (1..4) of quarters starting at ``month_index`` (int64, (n,))."""
    return ((np.asarray(month_index) % 12 - (calendar.start_month - 1)) % 12) // 3 + 1


def month_index_to_datetime(month_index: np.ndarray) -> np.ndarray:
    """Month index (months since 1970-01) -> ``datetime64[us]`` of that month's first instant."""
    return np.asarray(month_index, dtype=np.int64).astype("datetime64[M]").astype("datetime64[us]")


def in_quarter_end_window(
    times: np.ndarray, calendar: FiscalCalendar, window_days: float
) -> np.ndarray:
    """Whether each time falls in the last ``window_days`` days of its fiscal quarter.

    Parameters
    ----------
    times : ndarray of datetime64, shape (n,)
    calendar : FiscalCalendar
    window_days : float
        Window length in days.

    Returns
    -------
    ndarray of bool, shape (n,)
        ``quarter_end - window_days <= t < quarter_end``.
    """
    t = np.asarray(times).astype("datetime64[us]")
    q_end = month_index_to_datetime(quarter_start_month_index(t, calendar) + 3)
    return (q_end - t).astype(np.int64) <= np.int64(round(window_days * _DAY_US))


# -- the quarter-end effect -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class QuarterEndEffect:
    """Fitted quarter-end pull-in (see the module docstring for the model).

    Attributes
    ----------
    pi : float
        Pull-in probability in ``[0, MAX_PULL_IN]``: the share of wins due in the
        first ``window_days`` days of a quarter that close in the last
        ``window_days`` days of the previous one instead. 0 when not estimable.
    standard_error : float
        Binomial standard error of the unclipped estimate, ``sqrt((1 - pi²) / n)``
        with ``n`` the (Kish effective) number of wins in the windows; ``inf``
        when no complete boundary was observed.
    raw_estimate : float
        ``(n_last - n_first) / (n_last + n_first)`` before clipping (0 if n = 0).
    n_last, n_first : float
        (Weighted) wins in the last / first ``window_days`` days around the
        complete quarter boundaries.
    n_boundaries : int
        Number of complete quarter boundaries used.
    window_days : int
        ``W``, in days.
    boundaries : tuple of dict
        Per boundary: ``boundary`` (ISO date of the quarter start), ``quarter``
        (label of the quarter that ends), ``n_last``, ``n_first``.
    note : str
        Empty, or why the estimate is a fallback.
    """

    pi: float
    standard_error: float
    raw_estimate: float
    n_last: float
    n_first: float
    n_boundaries: int
    window_days: int
    boundaries: tuple[dict[str, Any], ...] = ()
    note: str = ""

    @property
    def estimated(self) -> bool:
        """Whether at least one complete boundary had wins (else ``pi`` is the fallback 0)."""
        return self.n_last + self.n_first > 0

    def summary(self) -> pl.DataFrame:
        """One row: ``pi, standard_error, raw_estimate, n_last, n_first, n_boundaries, window_days, note``."""
        return pl.DataFrame(
            [
                {
                    "pi": self.pi,
                    "standard_error": self.standard_error,
                    "raw_estimate": self.raw_estimate,
                    "n_last": self.n_last,
                    "n_first": self.n_first,
                    "n_boundaries": self.n_boundaries,
                    "window_days": self.window_days,
                    "note": self.note,
                }
            ]
        )

    def boundary_table(self) -> pl.DataFrame:
        """Per complete boundary: ``boundary, quarter, n_last, n_first``."""
        schema = {
            "boundary": pl.Utf8,
            "quarter": pl.Utf8,
            "n_last": pl.Float64,
            "n_first": pl.Float64,
        }
        return pl.DataFrame(list(self.boundaries), schema=schema)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (``standard_error`` is ``None`` when infinite)."""
        return {
            "pi": self.pi,
            "standard_error": float_or_none(self.standard_error),
            "raw_estimate": self.raw_estimate,
            "n_last": self.n_last,
            "n_first": self.n_first,
            "n_boundaries": self.n_boundaries,
            "window_days": self.window_days,
            "boundaries": [dict(b) for b in self.boundaries],
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuarterEndEffect:
        """Inverse of :meth:`to_dict`."""
        se = d["standard_error"]
        return cls(
            pi=float(d["pi"]),
            standard_error=float("inf") if se is None else float(se),
            raw_estimate=float(d["raw_estimate"]),
            n_last=float(d["n_last"]),
            n_first=float(d["n_first"]),
            n_boundaries=int(d["n_boundaries"]),
            window_days=int(d["window_days"]),
            boundaries=tuple(dict(b) for b in d.get("boundaries", [])),
            note=str(d.get("note", "")),
        )


def _win_times(wins: pl.DataFrame, time_column: str | None) -> tuple[pl.DataFrame, str]:
    if time_column is None:
        for c in ("won_at", "closed_at", "exited_at"):
            if c in wins.columns:
                time_column = c
                break
        else:
            raise ParameterError(
                "`fit_quarter_end_effect` needs the win times: a `won_at` column (bookings), "
                f"`closed_at` (outcomes) or `exited_at` (won spells). Got columns {wins.columns}."
            )
    elif time_column not in wins.columns:
        raise ParameterError(
            f"The `time_column` {time_column!r} of `fit_quarter_end_effect` is not a column of "
            f"`wins`. Got columns {wins.columns}."
        )
    if "status" in wins.columns:  # an outcomes frame: wins only
        wins = wins.filter(pl.col("status") == "won")
    return wins.filter(pl.col(time_column).is_not_null()), time_column


def fit_quarter_end_effect(
    data: FitData,
    *,
    window_days: int = 14,
    time_column: str | None = None,
    layout: QuarterEndLayout | None = None,
) -> QuarterEndEffect:
    """Estimate the quarter-end pull-in probability ``pi`` from past wins.

    Parameters
    ----------
    data : FitData
        Reads the bookings frame: one row per win, with the win time in ``won_at``
        (the ``bookings`` view), ``closed_at`` (an ``outcomes``-shaped frame; rows
        with ``status != 'won'`` are dropped) or ``exited_at`` (won spells), and the
        deal weights. Only boundaries whose window after the boundary ends by
        ``data.as_of`` are used, and only boundaries with ``boundary - W >=
        data.history_start`` (default: the earliest win).
    window_days : int, default 14
        ``W``: days on each side of a quarter boundary.
    time_column : str, optional
        Column of win times (default: the first of ``won_at``, ``closed_at``,
        ``exited_at`` present).
    layout : QuarterEndLayout, optional
        The wins of ``data`` already laid out by :meth:`QuarterEndLayout.from_data` with
        these options (the fit's parameter draws reuse it); built here by default.

    Returns
    -------
    QuarterEndEffect
        ``pi = 0`` (``standard_error = inf``, with a ``note``) when no complete
        boundary holds a win, e.g. with less than a quarter of history.

    Examples
    --------
    >>> import datetime as dt
    >>> t = [dt.datetime(2024, 3, 25), dt.datetime(2024, 3, 28), dt.datetime(2024, 4, 3)]
    >>> data = FitData.from_frames(bookings=pl.DataFrame({"won_at": t}),
    ...                            as_of=dt.datetime(2024, 5, 1),
    ...                            history_start=dt.datetime(2024, 1, 1))
    >>> e = fit_quarter_end_effect(data)
    >>> round(e.pi, 4), e.n_last, e.n_first
    (0.3333, 2.0, 1.0)
    """
    if layout is None:
        layout = QuarterEndLayout.from_data(data, window_days=window_days, time_column=time_column)
    n_last, n_first, sum_w2 = layout.window_weights(data.weights[None, :])
    last_b, first_b = layout.boundary_weights(data.weights)
    rows = tuple(
        {"boundary": boundary, "quarter": label, "n_last": float(a), "n_first": float(b)}
        for (boundary, label), a, b in zip(layout.boundaries, last_b, first_b, strict=True)
    )
    w_days = layout.window_days
    n = float(n_last[0] + n_first[0])
    if n <= 0:
        note = (
            "no complete quarter boundary with wins in the history "
            f"({len(rows)} complete boundaries); pull-in set to 0"
        )
        return QuarterEndEffect(
            0.0, float("inf"), 0.0, float(n_last[0]), float(n_first[0]), len(rows), w_days, rows,
            note,
        )  # fmt: skip
    raw = float((n_last[0] - n_first[0]) / n)
    n_eff = n * n / float(sum_w2[0])  # Kish effective sample size (= n for unit weights)
    se = float(np.sqrt(max(1.0 - raw * raw, 0.0) / n_eff))
    pi = float(np.clip(raw, 0.0, MAX_PULL_IN))
    return QuarterEndEffect(
        pi, se, raw, float(n_last[0]), float(n_first[0]), len(rows), w_days, rows
    )


@dataclass(frozen=True, eq=False)
class QuarterEndLayout:
    """The wins around complete quarter boundaries, laid out once for any deal weights.

    Attributes
    ----------
    deal : ndarray of int64, shape (n_wins,)
        Deal index (into ``FitData.deal_ids``) of each win, in time order.
    recency : ndarray of float64, shape (n_wins,)
        Recency weight of each win by its win time (all 1 without a half-life,
        :meth:`FitData.recency`); a win weighs its deal's weight times it.
    bounds : ndarray of int64, shape (n_boundaries, 3)
        Per complete boundary, the positions in ``deal`` where its last-``W``-days
        window starts, where the boundary is and where its first-``W``-days window ends.
    boundaries : tuple of (str, str)
        Per boundary, its ISO date and the label of the quarter that ends.
    window_days : int
    """

    deal: np.ndarray
    recency: np.ndarray
    bounds: np.ndarray
    boundaries: tuple[tuple[str, str], ...]
    window_days: int

    @classmethod
    def from_data(
        cls, data: FitData, *, window_days: int = 14, time_column: str | None = None
    ) -> QuarterEndLayout:
        """Lay out the wins of ``data`` (see :func:`fit_quarter_end_effect`)."""
        caller = "fit_quarter_end_effect"
        t_cut, calendar = data.as_of, data.calendar
        w_days = check_int(window_days, "window_days", caller, minimum=1)
        frame = data.frame("bookings", caller).with_row_index("_row")
        frame, col = _win_times(frame, time_column)
        frame = frame.filter(pl.col(col) <= t_cut)
        times = to_datetime64(frame[col])
        order = np.argsort(times, kind="stable")
        times = times[order]
        deal = data.deal_index("bookings")[frame["_row"].to_numpy()[order]]
        # the recency of each win (docs/model.md, "Recency weighting")
        recency = data.recency(frame[col])[order]
        if data.history_start is None:
            start = times[0].astype(dt.datetime) if times.size else t_cut
        else:
            start = data.history_start
        window = dt.timedelta(days=w_days)
        bounds: list[np.ndarray] = []
        labels: list[tuple[str, str]] = []
        q = calendar.quarter_of(start)
        while q.end + window <= t_cut:
            if q.end - window >= start:
                edges = [np.datetime64(x, "us") for x in (q.end - window, q.end, q.end + window)]
                bounds.append(np.searchsorted(times, edges, side="left"))
                labels.append((q.end.date().isoformat(), q.label))
            q = calendar.shift(q, 1)
        return cls(
            deal=np.ascontiguousarray(deal, dtype=np.int64),
            recency=np.ascontiguousarray(recency, dtype=np.float64),
            bounds=np.array(bounds, dtype=np.int64).reshape(-1, 3),
            boundaries=tuple(labels),
            window_days=w_days,
        )

    def _cumulative(self, weights: np.ndarray, power: int = 1) -> np.ndarray:
        w = weights[:, self.deal] * self.recency
        if power != 1:
            w = w**power
        cum = np.zeros((w.shape[0], w.shape[1] + 1))
        np.cumsum(w, axis=1, out=cum[:, 1:])
        return cum

    def window_weights(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per weight vector: weighted wins in the last and first ``W`` days of every complete
        boundary together, and the sum of their squared weights.

        Parameters
        ----------
        weights : ndarray of float64, shape (B, n_deals)

        Returns
        -------
        n_last, n_first, sum_w2 : ndarray of float64, shape (B,)
        """
        cum = self._cumulative(weights)
        cum2 = self._cumulative(weights, 2)
        n_last = np.zeros(weights.shape[0])
        n_first = np.zeros(weights.shape[0])
        sum_w2 = np.zeros(weights.shape[0])
        for ia, ib, ic in self.bounds:
            n_last += cum[:, ib] - cum[:, ia]
            n_first += cum[:, ic] - cum[:, ib]
            sum_w2 += cum2[:, ic] - cum2[:, ia]
        return n_last, n_first, sum_w2

    def boundary_weights(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per boundary, weighted wins in its last and first ``W`` days, for one weight
        vector ``(n_deals,)``: two arrays of shape (n_boundaries,)."""
        cum = self._cumulative(weights[None, :])[0]
        ia, ib, ic = self.bounds.T
        return cum[ib] - cum[ia], cum[ic] - cum[ib]

    def pull_in(self, weights: np.ndarray) -> np.ndarray:
        """The estimate ``pi`` of :func:`fit_quarter_end_effect` for each weight vector.

        Parameters
        ----------
        weights : ndarray of float64, shape (B, n_deals)

        Returns
        -------
        ndarray of float64, shape (B,)
            In ``[0, MAX_PULL_IN]``; 0 where no complete boundary holds a win.
        """
        n_last, n_first, _ = self.window_weights(weights)
        n = n_last + n_first
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = np.where(n > 0, (n_last - n_first) / n, 0.0)
        return np.clip(raw, 0.0, MAX_PULL_IN)
