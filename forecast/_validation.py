"""Argument checks and boundary conversions, the one place for them.

Every public function of :mod:`forecast` checks its scalar arguments here, so that
the same kind of argument is accepted and rejected the same way everywhere:

- integers: Python ``int`` and NumPy integers, never ``bool`` (``n_draws=True``
  is an error, ``n_draws=np.int64(4)`` is fine), with bounds;
- real numbers: ``int``/``float`` and NumPy numbers, finite unless allowed, with
  bounds (open or closed);
- instants: ``datetime`` (time-zone-aware ones converted to naive UTC), ``date``
  (its midnight), ``numpy.datetime64`` or an ISO-8601 string; see :func:`as_datetime`;
- frames: the columns a function needs (:func:`require_columns`) and the segment
  columns of a log (:func:`check_segment_by`).

Each check raises :class:`~forecast.errors.ParameterError` (or
:class:`~forecast.errors.MissingColumnError`) naming the parameter, the function,
what was expected and what was found, and returns the converted value. The
calendar check lives next to the calendar (:func:`forecast.calendar.check_calendar`),
because the calendar itself relies on the checks here.

This module depends on nothing else in the package but :mod:`forecast.errors`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

from forecast.errors import MissingColumnError, ParameterError

__all__ = [
    "MAX_SEED",
    "as_datetime",
    "check_as_of",
    "check_bool",
    "check_float",
    "check_int",
    "check_seed",
    "check_segment_by",
    "float_or_none",
    "is_int",
    "require_columns",
    "to_datetime64",
]

#: Largest seed accepted anywhere (seeds are carried as int64 by the kernels).
MAX_SEED = 2**63 - 1


def _of(caller: str | None) -> str:
    return f" of `{caller}`" if caller else ""


# -- numbers --------------------------------------------------------------------------------
def is_int(value: object) -> bool:
    """Whether ``value`` is an integer argument: ``int`` or a NumPy integer, not ``bool``."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(
    value: object,
    name: str,
    caller: str | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``value`` as a Python ``int`` in ``[minimum, maximum]``, else :class:`ParameterError`.

    Parameters
    ----------
    value : object
        The argument.
    name : str
        Parameter name, for the message.
    caller : str, optional
        Function name, for the message.
    minimum, maximum : int, optional
        Inclusive bounds (``None``: unbounded).

    Returns
    -------
    int

    Examples
    --------
    >>> check_int(np.int64(3), "n", minimum=1)
    3
    >>> check_int(True, "n_draws", "fit", minimum=0)
    Traceback (most recent call last):
    ...
    forecast.errors.ParameterError: The `n_draws` parameter of `fit` must be an int ≥ 0. Got True.
    """
    ok = is_int(value)
    if ok and minimum is not None and value < minimum:  # type: ignore[operator]
        ok = False
    if ok and maximum is not None and value > maximum:  # type: ignore[operator]
        ok = False
    if not ok:
        if minimum is not None and maximum is not None:
            want = f"an int in [{minimum}, {maximum}]"
        elif minimum is not None:
            want = f"an int ≥ {minimum}"
        elif maximum is not None:
            want = f"an int ≤ {maximum}"
        else:
            want = "an int"
        raise ParameterError(f"The `{name}` parameter{_of(caller)} must be {want}. Got {value!r}.")
    return int(value)  # type: ignore[arg-type]


def check_seed(value: object, caller: str | None = None, name: str = "seed") -> int:
    """A seed: an int in ``[0, 2**63 - 1]``."""
    return check_int(value, name, caller, minimum=0, maximum=MAX_SEED)


def check_float(
    value: object,
    name: str,
    caller: str | None = None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """``value`` as a Python ``float`` in the given interval, else :class:`ParameterError`.

    Parameters
    ----------
    value : object
        ``int``, ``float`` or a NumPy number (not ``bool``).
    name, caller : str
        For the message.
    minimum, maximum : float, optional
        Bounds (``None``: unbounded).
    low_open, high_open : bool, default False
        Exclude the bound itself (``(0, 1)`` is ``minimum=0, maximum=1, low_open=True,
        high_open=True``).
    allow_inf : bool, default False
        Accept ±inf (within the bounds). NaN is never accepted.

    Returns
    -------
    float
    """
    number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
    x = float(value) if number else math.nan  # type: ignore[arg-type]
    ok = number and not math.isnan(x) and (allow_inf or math.isfinite(x))
    if ok and minimum is not None:
        ok = x > minimum if low_open else x >= minimum
    if ok and maximum is not None:
        ok = x < maximum if high_open else x <= maximum
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        a = "-inf" if minimum is None else f"{minimum:g}"
        b = "inf" if maximum is None else f"{maximum:g}"
        finite = "" if allow_inf else "finite "
        raise ParameterError(
            f"The `{name}` parameter{_of(caller)} must be a {finite}number in {lo}{a}, {b}{hi}. "
            f"Got {value!r}."
        )
    return x


def check_bool(value: object, name: str, caller: str | None = None) -> bool:
    """``value`` if it is a ``bool`` (or NumPy bool), else :class:`ParameterError`."""
    if not isinstance(value, bool | np.bool_):
        raise ParameterError(
            f"The `{name}` parameter{_of(caller)} must be True or False. Got {value!r}."
        )
    return bool(value)


# -- instants -------------------------------------------------------------------------------
def as_datetime(value: object, name: str = "when", caller: str | None = None) -> dt.datetime:
    """An instant as a naive-UTC :class:`datetime.datetime`.

    Parameters
    ----------
    value : datetime, date, numpy.datetime64 or str
        A time-zone-aware datetime is converted to UTC; a date means its midnight;
        a string is parsed as ISO 8601 (``"2025-01-01"``, ``"2025-01-01 12:30"``,
        ``"2025-01-01T12:30:00+02:00"``).
    name, caller : str
        For the message.

    Returns
    -------
    datetime.datetime
        Naive (``tzinfo=None``), UTC.

    Examples
    --------
    >>> as_datetime("2025-01-01T02:00:00+02:00")
    datetime.datetime(2025, 1, 1, 0, 0)
    """
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, np.datetime64) and not np.isnat(value):
        return as_datetime(value.astype("datetime64[us]").item(), name, caller)
    if isinstance(value, str):
        try:
            return as_datetime(dt.datetime.fromisoformat(value), name, caller)
        except ValueError:
            pass
    raise ParameterError(
        f"The `{name}` parameter{_of(caller)} must be a date, datetime or ISO-8601 string. "
        f"Got {value!r}."
    )


def check_as_of(as_of: object, caller: str | None = None) -> dt.datetime:
    """The ``as_of`` argument as a naive-UTC datetime (:func:`as_datetime`)."""
    return as_datetime(as_of, "as_of", caller)


def to_datetime64(values: pl.Series | dt.datetime) -> np.ndarray | np.datetime64:
    """Polars Datetime series (or one datetime) -> NumPy ``datetime64[us]``."""
    if isinstance(values, dt.datetime):
        return np.datetime64(values, "us")
    return values.cast(pl.Datetime("us")).to_numpy().astype("datetime64[us]")


# -- frames ---------------------------------------------------------------------------------
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


def check_segment_by(
    segment_by: object, available: Sequence[str], caller: str | None = None
) -> tuple[str, ...]:
    """``segment_by`` as a tuple of column names, each one of ``available``.

    Parameters
    ----------
    segment_by : iterable of str
        Segment columns asked for (a single string is refused: it would be read
        letter by letter).
    available : sequence of str
        The segment columns the log carries.
    caller : str, optional

    Raises
    ------
    ParameterError
        ``segment_by`` is a string or not an iterable of strings.
    MissingColumnError
        A column is not a segment column of the log.
    """
    if isinstance(segment_by, str | bytes) or not isinstance(segment_by, Iterable):
        raise ParameterError(
            f"The `segment_by` parameter{_of(caller)} must be a list of segment column names "
            f"(e.g. ['region']). Got {segment_by!r}."
        )
    cols = tuple(segment_by)
    for c in cols:
        if not isinstance(c, str):
            raise ParameterError(
                f"The `segment_by` parameter{_of(caller)} must hold column names (str). Got {c!r}."
            )
        if c not in available:
            raise MissingColumnError(
                f"The `segment_by` column {c!r} is not a segment column of the log. "
                f"Segment columns: {list(available)} (pass `segment_columns=` "
                "to `read_deal_log`).",
                column=c,
                expected=list(available),
                found=c,
            )
    return cols


# -- JSON -----------------------------------------------------------------------------------
def float_or_none(x: float) -> float | None:
    """JSON-safe float: ``None`` for ±inf or NaN (the readers map ``None`` back to inf)."""
    return None if not np.isfinite(x) else float(x)
