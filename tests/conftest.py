"""Shared fixtures: the bundled sample log (session-scoped)."""

from __future__ import annotations

import pytest

from forecast.data.deal_log import DealLog
from forecast.datasets import load_sample


@pytest.fixture(scope="session")
def sample_log() -> DealLog:
    """The bundled synthetic sample (:func:`forecast.datasets.load_sample`)."""
    return load_sample()
