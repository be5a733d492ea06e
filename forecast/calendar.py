"""Fiscal calendar: fiscal-year start, quarter boundaries and labels."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from forecast.errors import ParameterError

__all__ = ["FiscalCalendar", "FiscalQuarter"]


@dataclass(frozen=True, order=True)
class FiscalQuarter:
    """One fiscal quarter.

    Attributes
    ----------
    fiscal_year : int
        Fiscal year number as labelled (see ``FiscalCalendar.year_label``).
    quarter : int
        1 to 4.
    start, end : datetime.datetime
        Naive UTC bounds; the quarter is the half-open interval ``[start, end)``.
    """

    fiscal_year: int
    quarter: int
    start: dt.datetime
    end: dt.datetime

    @property
    def label(self) -> str:
        """Label such as ``"FY2025-Q1"``."""
        return f"FY{self.fiscal_year}-Q{self.quarter}"

    @property
    def days(self) -> float:
        """Length of the quarter in days."""
        return (self.end - self.start).total_seconds() / 86400.0

    def __str__(self) -> str:
        return self.label


def _as_datetime(value: object, name: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, np.datetime64):
        return _as_datetime(value.astype("datetime64[us]").item(), name)
    if isinstance(value, str):
        try:
            return _as_datetime(dt.datetime.fromisoformat(value), name)
        except ValueError:
            pass
    raise ParameterError(
        f"The `{name}` parameter must be a date, datetime or ISO-8601 string. Got {value!r}."
    )


@dataclass(frozen=True)
class FiscalCalendar:
    """Fiscal calendar with quarters of three calendar months.

    Parameters
    ----------
    start_month : int, default 1
        Calendar month (1-12) in which the fiscal year starts.
    year_label : {"end", "start"}, default "end"
        Whether a fiscal year is named after the calendar year in which it ends
        (Salesforce's default: FY starting Feb 2024 is FY2025) or starts.

    Examples
    --------
    >>> cal = FiscalCalendar(start_month=2)
    >>> cal.quarter_of("2024-03-15").label
    'FY2025-Q1'
    """

    start_month: int = 1
    year_label: str = "end"

    def __post_init__(self) -> None:
        if not isinstance(self.start_month, int) or not 1 <= self.start_month <= 12:
            raise ParameterError(
                "The `start_month` parameter of `FiscalCalendar` must be an int in 1..12. "
                f"Got {self.start_month!r}."
            )
        if self.year_label not in ("end", "start"):
            raise ParameterError(
                "The `year_label` parameter of `FiscalCalendar` must be 'end' or 'start'. "
                f"Got {self.year_label!r}."
            )

    # -- core arithmetic -------------------------------------------------------
    def _fy_start_year(self, when: dt.datetime) -> int:
        return when.year if when.month >= self.start_month else when.year - 1

    def _label_year(self, fy_start_year: int) -> int:
        if self.year_label == "start" or self.start_month == 1:
            return fy_start_year
        return fy_start_year + 1

    def _quarter_from_index(self, fy_start_year: int, q: int) -> FiscalQuarter:
        """Quarter ``q`` (0-based, may overflow) of the fiscal year starting in ``fy_start_year``."""
        fy_start_year += q // 4
        q %= 4
        m0 = self.start_month - 1 + 3 * q
        start = dt.datetime(fy_start_year + m0 // 12, m0 % 12 + 1, 1)
        m1 = m0 + 3
        end = dt.datetime(fy_start_year + m1 // 12, m1 % 12 + 1, 1)
        return FiscalQuarter(self._label_year(fy_start_year), q + 1, start, end)

    def quarter_of(self, when: object) -> FiscalQuarter:
        """Fiscal quarter containing ``when`` (date, datetime or ISO string)."""
        t = _as_datetime(when, "when")
        fy = self._fy_start_year(t)
        months_in = (t.month - self.start_month) % 12
        return self._quarter_from_index(fy, months_in // 3)

    def shift(self, quarter: FiscalQuarter, n: int) -> FiscalQuarter:
        """The quarter ``n`` quarters after (``n < 0``: before) ``quarter``."""
        fy_start = (
            quarter.start.year
            if quarter.start.month >= self.start_month
            else (quarter.start.year - 1)
        )
        return self._quarter_from_index(fy_start, quarter.quarter - 1 + n)

    def quarters(self, start: object, n: int) -> list[FiscalQuarter]:
        """``n`` consecutive quarters, the first one containing ``start``."""
        if not isinstance(n, int) or n < 1:
            raise ParameterError(f"The `n` parameter of `quarters` must be an int ≥ 1. Got {n!r}.")
        first = self.quarter_of(start)
        return [self.shift(first, i) for i in range(n)]

    def quarter_from_label(self, label: str) -> FiscalQuarter:
        """Parse a label such as ``"FY2025-Q1"``."""
        try:
            fy_part, q_part = label.upper().split("-Q")
            fy, q = int(fy_part.removeprefix("FY")), int(q_part)
            if not 1 <= q <= 4:
                raise ValueError
        except ValueError:
            raise ParameterError(
                f"A quarter label must look like 'FY2025-Q1'. Got {label!r}."
            ) from None
        start_year = fy if (self.year_label == "start" or self.start_month == 1) else fy - 1
        return self._quarter_from_index(start_year, q - 1)

    def label(self, when: object) -> str:
        """Label of the quarter containing ``when``."""
        return self.quarter_of(when).label

    def to_dict(self) -> dict[str, object]:
        """JSON-safe description."""
        return {"start_month": self.start_month, "year_label": self.year_label}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FiscalCalendar:
        """Inverse of :meth:`to_dict`."""
        return cls(start_month=int(d["start_month"]), year_label=str(d["year_label"]))
