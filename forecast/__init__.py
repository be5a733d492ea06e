"""forecast: Monte Carlo sales-pipeline forecasting from CRM deal histories."""

from forecast.calendar import FiscalCalendar, FiscalQuarter
from forecast.data.stages import StageMap
from forecast.errors import (
    AmountError,
    DataError,
    ForecastError,
    MissingColumnError,
    MixedTimezoneError,
    ModelError,
    ParameterError,
    TerminalEventError,
    TimestampError,
    UnknownStageError,
)

__version__ = "0.1.0"

__all__ = [
    "AmountError",
    "DataError",
    "FiscalCalendar",
    "FiscalQuarter",
    "ForecastError",
    "MissingColumnError",
    "MixedTimezoneError",
    "ModelError",
    "ParameterError",
    "StageMap",
    "TerminalEventError",
    "TimestampError",
    "UnknownStageError",
    "__version__",
]
