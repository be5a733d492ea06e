"""Fiscal calendar: fiscal-year start, quarter boundaries and labels."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from forecast._validation import as_datetime, check_int
from forecast.errors import ParameterError

#: Mean length of a calendar year in days (the Julian year), the unit of every trend in
#: years (arrival trends, shock detrending, exit-curve calendar trends).
DAYS_PER_YEAR = 365.25

__all__ = ["DAYS_PER_YEAR", "FiscalCalendar", "FiscalQuarter", "check_calendar"]


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
        month = check_int(self.start_month, "start_month", "FiscalCalendar", minimum=1, maximum=12)
        object.__setattr__(self, "start_month", month)
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
        t = as_datetime(when, "when", "quarter_of")
        fy = self._fy_start_year(t)
        months_in = (t.month - self.start_month) % 12
        return self._quarter_from_index(fy, months_in // 3)

    def shift(self, quarter: FiscalQuarter, n: int) -> FiscalQuarter:
        """The quarter ``n`` quarters after (``n < 0``: before) ``quarter``."""
        n = check_int(n, "n", "shift")
        fy_start = (
            quarter.start.year
            if quarter.start.month >= self.start_month
            else (quarter.start.year - 1)
        )
        return self._quarter_from_index(fy_start, quarter.quarter - 1 + n)

    def quarters(self, start: object, n: int) -> list[FiscalQuarter]:
        """``n`` consecutive quarters, the first one containing ``start``."""
        n = check_int(n, "n", "quarters", minimum=1)
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


def check_calendar(calendar: object, caller: str | None = None) -> FiscalCalendar:
    """``calendar`` if it is a :class:`FiscalCalendar`; ``None`` gives the default calendar.

    The calendar counterpart of the checks in :mod:`forecast._validation` (kept
    here because the calendar itself uses those).

    Parameters
    ----------
    calendar : FiscalCalendar or None
        ``None``: ``FiscalCalendar()`` (fiscal year = calendar year).
    caller : str, optional
        Function name, for the message.

    Raises
    ------
    ParameterError
        Anything else.
    """
    if calendar is None:
        return FiscalCalendar()
    if not isinstance(calendar, FiscalCalendar):
        of = f" of `{caller}`" if caller else ""
        raise ParameterError(
            f"The `calendar` parameter{of} must be a `FiscalCalendar`. "
            f"Got {type(calendar).__name__}."
        )
    return calendar
