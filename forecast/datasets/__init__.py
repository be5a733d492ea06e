"""Synthetic CRM histories with known parameters, the bundled sample log, and dated exports."""

from forecast.datasets.exports import deal_table_at, export_dates, export_snapshots, write_exports
from forecast.datasets.sample import SAMPLE_STAGES, load_sample, sample_events, sample_truth
from forecast.datasets.synthetic import (
    SYNTHETIC_STAGES,
    ArrivalProcess,
    MarketDrift,
    SojournDistribution,
    SyntheticCRM,
    SyntheticTruth,
    generate_crm,
)

__all__ = [
    "SAMPLE_STAGES",
    "SYNTHETIC_STAGES",
    "ArrivalProcess",
    "MarketDrift",
    "SojournDistribution",
    "SyntheticCRM",
    "SyntheticTruth",
    "deal_table_at",
    "export_dates",
    "export_snapshots",
    "generate_crm",
    "load_sample",
    "sample_events",
    "sample_truth",
    "write_exports",
]
