"""Synthetic CRM histories with known parameters, and the bundled sample log."""

from forecast.datasets.sample import SAMPLE_STAGES, load_sample, sample_events, sample_truth
from forecast.datasets.synthetic import (
    SYNTHETIC_STAGES,
    ArrivalProcess,
    SojournDistribution,
    SyntheticCRM,
    SyntheticTruth,
    generate_crm,
)

__all__ = [
    "SAMPLE_STAGES",
    "SYNTHETIC_STAGES",
    "ArrivalProcess",
    "SojournDistribution",
    "SyntheticCRM",
    "SyntheticTruth",
    "generate_crm",
    "load_sample",
    "sample_events",
    "sample_truth",
]
