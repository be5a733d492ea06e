"""Figures render to valid PNG files of plausible size; bad arguments are refused."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_io import synthetic_forecast

from forecast import plots
from forecast.errors import ParameterError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk (PNG spec: bytes 16-24 of the file)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_figures_writes_valid_pngs(tmp_path: Path) -> None:
    fc = synthetic_forecast(1)
    written = plots.save_figures(fc, tmp_path / "figs", targets={"FY2025-Q1": 9000.0}, dpi=80)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "fan_chart.png",
            "distribution_FY2025-Q1.png",
            "distribution_FY2025-Q2.png",
            f"deal_risk_{fc.riskiest_quarter()}.png",
        ]
    )
    for path in written:
        width, height = png_size(path)
        # 8 in wide at 80 dpi = 640 px; heights from 2.5 in (200 px) up
        assert width == 640
        assert 200 <= height <= 1000
        assert 5_000 < path.stat().st_size < 2_000_000  # not blank, not absurd


def test_fan_chart_marks_targets_with_their_probability() -> None:
    fc = synthetic_forecast(2)
    fig = plots.fan_chart(fc, targets=[9000.0, 8000.0])
    texts = [t.get_text() for t in fig.axes[0].texts]
    p = fc.prob_at_least({"FY2025-Q1": 9000.0})["probability"][0]
    assert f"P(≥ target) {p:.0%}" in texts
    assert len(texts) == 2


def test_distribution_legend_names_target_and_weighted_pipeline() -> None:
    fc = synthetic_forecast(3)
    fig = plots.quarter_distribution(fc, "FY2025-Q2", target=7000.0)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any(lab.startswith("target 7k") for lab in labels)
    assert any(lab.startswith("weighted pipeline") for lab in labels)


def test_deal_risk_chart_has_one_bar_per_deal() -> None:
    fc = synthetic_forecast(4)
    fig = plots.deal_risk_chart(fc, "FY2025-Q1", top=3)
    assert len(fig.axes[0].patches) == 3


def test_bad_arguments() -> None:
    fc = synthetic_forecast(5)
    with pytest.raises(ParameterError, match="one value per quarter"):
        plots.fan_chart(fc, targets=[1.0, 2.0, 3.0])
    with pytest.raises(ParameterError, match="unknown quarters"):
        plots.fan_chart(fc, targets={"FY1999-Q1": 1.0})
    with pytest.raises(ParameterError, match="top"):
        plots.deal_risk_chart(fc, top=0)
    with pytest.raises(ParameterError, match="quarter"):
        plots.quarter_distribution(fc, "FY1999-Q1")
