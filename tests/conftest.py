"""Shared fixtures (session-scoped, built once per test run) and the test tiers.

Tests marked ``@pytest.mark.slow`` are the long statistical checks (many
simulated worlds, oracle comparisons) and the end-to-end runs (subprocesses,
notebooks, clusters); ``make check`` leaves them out (``pytest -m "not slow"``),
``make test`` runs everything.

The fitted objects are immutable (``PipelineModel`` and ``Forecast`` are frozen),
so sharing them between modules cannot couple tests.
"""

from __future__ import annotations

import pytest

from forecast.data.deal_log import DealLog
from forecast.datasets import load_sample
from forecast.fit.fitting import fit
from forecast.fit.model import PipelineModel
from forecast.results import Forecast

#: Arguments of the shared fit of the bundled sample (:func:`sample_model`).
SAMPLE_FIT = {"as_of": "2025-01-01", "segment_by": ["segment"], "n_draws": 4, "seed": 2}


@pytest.fixture(scope="session")
def sample_log() -> DealLog:
    """The bundled synthetic sample (:func:`forecast.datasets.load_sample`)."""
    return load_sample()


@pytest.fixture(scope="session")
def sample_fit_arguments() -> dict:
    """The arguments of :func:`forecast.fit` behind :func:`sample_model` (a copy)."""
    return {**SAMPLE_FIT, "segment_by": list(SAMPLE_FIT["segment_by"])}


@pytest.fixture(scope="session")
def sample_model(sample_log: DealLog) -> PipelineModel:
    """The sample fitted at its end by segment, with 4 parameter draws (:data:`SAMPLE_FIT`)."""
    return fit(sample_log, **SAMPLE_FIT)


@pytest.fixture(scope="session")
def sample_forecast(sample_log: DealLog, sample_model: PipelineModel) -> Forecast:
    """2,000 paths of the next three quarters from :func:`sample_model` (seed 0)."""
    return sample_model.simulate(sample_log, n_paths=2000, horizon=3, seed=0)
