"""Typed errors raised by :mod:`forecast`.

Every error is a :class:`ForecastError`; data and argument errors also inherit
:class:`ValueError` (and :class:`KeyError` for missing columns) so that ordinary
``except`` clauses keep working. Data errors carry structured fields (``column``,
``deal_id``, ``row``, ``expected``, ``found``) as well as a readable message.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AmountError",
    "DataError",
    "ForecastError",
    "MissingColumnError",
    "MissingDependencyError",
    "MixedTimezoneError",
    "ModelError",
    "ParameterError",
    "TerminalEventError",
    "TimestampError",
    "UnknownStageError",
]


class ForecastError(Exception):
    """Base class of every error raised on purpose by :mod:`forecast`."""


class ParameterError(ForecastError, ValueError):
    """An argument to a public function is out of its allowed range or type."""


class MissingDependencyError(ForecastError, ImportError):
    """An optional dependency needed for what was asked is not installed.

    The message names the extra to install, e.g. ``pip install 'forecast[plots]'``.
    """


class ModelError(ForecastError, ValueError):
    """A model cannot be fitted, loaded or used as asked (e.g. too little data)."""


class DataError(ForecastError, ValueError):
    """The input history is malformed.

    Parameters
    ----------
    message : str
        Human-readable explanation, including what to do about it.
    column, deal_id, row, expected, found : optional
        Structured context. ``row`` is the 0-based row number in the source table
        as the caller gave it (before any sorting or de-duplication).
    """

    def __init__(
        self,
        message: str,
        *,
        column: str | None = None,
        deal_id: Any = None,
        row: int | None = None,
        expected: Any = None,
        found: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.deal_id = deal_id
        self.row = row
        self.expected = expected
        self.found = found

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


class MissingColumnError(DataError, KeyError):
    """A required column is absent from the input table."""


class TimestampError(DataError):
    """A timestamp is missing or cannot be parsed."""


class MixedTimezoneError(DataError):
    """A timestamp column mixes time-zone-aware and naive values."""


class AmountError(DataError):
    """An amount is negative, infinite or not a number."""


class UnknownStageError(DataError):
    """A stage name cannot be classified as open, won, lost or no decision."""


class TerminalEventError(DataError):
    """A deal changes to a different terminal outcome without being re-opened."""
