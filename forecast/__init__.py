"""forecast: Monte Carlo sales-pipeline forecasting from CRM deal histories."""

from forecast._version import __version__
from forecast.backtest import BacktestResult, backtest
from forecast.calendar import FiscalCalendar, FiscalQuarter
from forecast.compare import Movement, compare
from forecast.data.deal_log import DealLog
from forecast.data.inspection import inspect_log
from forecast.data.readers import read_deal_log
from forecast.data.stages import StageMap
from forecast.data.validation import ValidationReport
from forecast.errors import (
    AmountError,
    DataError,
    ForecastError,
    MissingColumnError,
    MissingDependencyError,
    MixedTimezoneError,
    ModelError,
    ParameterError,
    TerminalEventError,
    TimestampError,
    UnknownStageError,
)
from forecast.fit.covariates import (
    CLOSE_DATE_COVARIATES,
    DEFAULT_COVARIATES,
    TIMING_COVARIATES,
)
from forecast.fit.fitting import fit
from forecast.fit.model import PipelineModel
from forecast.metrics import SalesMetrics, compute_metrics, fit_and_compute_metrics
from forecast.report import Report, report
from forecast.results import Forecast
from forecast.scenarios import compare_scenarios, with_changes
from forecast.segments import POOLED_SEGMENT

__all__ = [
    "CLOSE_DATE_COVARIATES",
    "DEFAULT_COVARIATES",
    "POOLED_SEGMENT",
    "TIMING_COVARIATES",
    "AmountError",
    "BacktestResult",
    "DataError",
    "DealLog",
    "FiscalCalendar",
    "FiscalQuarter",
    "Forecast",
    "ForecastError",
    "MissingColumnError",
    "MissingDependencyError",
    "MixedTimezoneError",
    "ModelError",
    "Movement",
    "ParameterError",
    "PipelineModel",
    "Report",
    "SalesMetrics",
    "StageMap",
    "TerminalEventError",
    "TimestampError",
    "UnknownStageError",
    "ValidationReport",
    "__version__",
    "backtest",
    "compare",
    "compare_scenarios",
    "compute_metrics",
    "fit",
    "fit_and_compute_metrics",
    "inspect_log",
    "read_deal_log",
    "report",
    "with_changes",
]
