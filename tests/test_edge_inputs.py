"""Edge inputs the loader accepts: the API and the command never warn, and fail only typed.

pytest turns every warning into an error (``filterwarnings = error`` in pyproject), so
a numpy, scipy, polars, numba or matplotlib warning anywhere below fails the test. Each
step either returns or raises a documented :class:`forecast.ForecastError`.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import forecast
from forecast.datasets.sample import SAMPLE_STAGES
from forecast.errors import ForecastError
from forecast.io import write_forecast

OPEN = list(SAMPLE_STAGES.open)
WON, LOST, NO_DECISION = "Closed Won", "Closed Lost", "No Decision"
START = dt.datetime(2023, 1, 1)


def world(n: int, seed: int, *, gap=None, amount=None, segment=None, end=None) -> pl.DataFrame:
    """``n`` deals from ``START`` over two years: deal ``i`` walks the first ``1 + i % 4``
    open stages, then ends in ``end(i)`` (won / lost / no decision in turn; ``None`` = open)."""
    rng = np.random.default_rng(seed)
    gap = gap or (lambda i, j: rng.exponential(20.0))
    amount = amount or (lambda i: float(rng.lognormal(9.0, 1.0)))
    segment = segment or (lambda i: "AB"[i % 2])
    end = end or (lambda i: (WON, LOST, NO_DECISION)[i % 3])
    rows = []
    for i in range(n):
        t = START + dt.timedelta(days=float(rng.uniform(0.0, 700.0)))
        a = amount(i)
        last = end(i)
        for j, stage in enumerate([*OPEN[: 1 + i % 4], *([last] if last else [])]):
            rows.append(
                {
                    "deal_id": f"d{i}",
                    "timestamp": t,
                    "stage": stage,
                    "amount": a,
                    "segment": segment(i),
                }
            )
            t += dt.timedelta(days=float(gap(i, j)))
    return pl.DataFrame(rows)


def with_solo_segment(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` plus a copy of its first deal alone in segment ``Solo``."""
    solo = frame.filter(pl.col("deal_id") == frame["deal_id"][0]).with_columns(
        pl.lit("solo").alias("deal_id"), pl.lit("Solo").alias("segment")
    )
    return pl.concat([frame, solo])


CASES = {
    "two_deals": lambda: world(2, 1, end=lambda i: (WON, None)[i]),
    "no_open_deal": lambda: world(40, 2),
    "all_won": lambda: world(40, 3, end=lambda i: WON),
    "won_at_amount_zero": lambda: world(40, 4).with_columns(
        pl.when(pl.col("stage") == WON).then(0.0).otherwise(pl.col("amount")).alias("amount")
    ),
    "tiny_amounts": lambda: world(
        40,
        5,
        amount=lambda i: 1e-9 * (i + 1),
        end=lambda i: None if i % 5 == 0 else (WON, LOST, NO_DECISION)[i % 3],
    ),
    "amounts_at_the_limit": lambda: world(
        40,
        6,
        amount=lambda i: 1e10,
        end=lambda i: None if i % 5 == 0 else (WON, LOST, NO_DECISION)[i % 3],
    ),
    "same_instant_stage_skips": lambda: world(60, 7, gap=lambda i, j: 0.0 if i % 2 else 1e-6),
    "power_law_sojourns": lambda: world(
        150, 8, gap=lambda i, j: min(10.0 * (1.0 - (i * 7 + j) % 97 / 97.0) ** -2.0, 3000.0)
    ),
    "one_segment_per_deal": lambda: world(40, 9, segment=lambda i: f"s{i}"),
    "segment_with_one_deal": lambda: with_solo_segment(world(60, 10)),
}


def run_step(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a ForecastError is a documented outcome, anything else fails."""
    try:
        return fn(*args, **kwargs)
    except ForecastError:
        return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_api_on_edge_inputs_never_warns(case, tmp_path):
    from matplotlib import pyplot as plt

    from forecast import plots

    log = forecast.read_deal_log(CASES[case](), stages=SAMPLE_STAGES, segment_columns=["segment"])
    model = run_step(forecast.fit, log, segment_by=["segment"], n_draws=2)
    if model is None:
        return
    back = forecast.PipelineModel.from_json(model.to_json())
    assert back.diagnostics == model.diagnostics
    assert model.summary().height > 0
    for n_paths, horizon in ((1, 1), (200, 2)):
        fc = run_step(model.simulate, log, n_paths=n_paths, horizon=horizon)
        if fc is None:
            continue
        fc.quarterly(), fc.by_segment(), fc.by_source(), fc.deals(), fc.risk_summary()
        fc.prob_at_least(1.0), fc.paths(), fc.riskiest_quarter()
        risk = fc.deal_risk()
        assert risk.schema["quarter"] == pl.Utf8 and risk.schema["deal_id"] == pl.Utf8
        write_forecast(fc, tmp_path / f"out{n_paths}", include_paths=True)
        figs = [
            plots.fan_chart(fc, targets=1.0),
            plots.quarter_distribution(fc, target=1.0),
            plots.deal_risk_chart(fc),
        ]
        for f in figs:
            plt.close(f)
    metrics = run_step(forecast.compute_metrics, model, log, n_paths=200, max_copies=8)
    if metrics is not None:
        assert "Pipeline Value Factor" in str(metrics) or metrics.coverage.height == 0
    run_step(
        forecast.compare_scenarios,
        model,
        log,
        {"bigger": {"deal_size": 2.0}},
        n_paths=100,
        horizon=1,
    )


def test_forecast_without_open_deals_ranks_writes_and_describes(tmp_path):
    # no open deal at the as-of date: empty per-deal tables keep their string columns
    # (a join on a null-typed `quarter` column failed in the write), and a Pipeline
    # Value Factor that cannot be computed prints as n/a
    log = forecast.read_deal_log(CASES["no_open_deal"](), stages=SAMPLE_STAGES)
    model = forecast.fit(log, n_draws=0)
    fc = model.simulate(log, n_paths=100, horizon=1)
    assert len(fc.deal_ids) == 0
    risk = fc.deal_risk()
    assert risk.height == 0 and risk.schema["quarter"] == pl.Utf8
    paths = write_forecast(fc, tmp_path)
    assert pl.read_parquet(paths["deals"]).height == 0
    metrics = forecast.compute_metrics(model, log, n_paths=100)
    assert metrics.coverage["pipeline_value_factor"].null_count() > 0
    assert "n/a" in str(metrics)


# Amounts below a cent cannot give a won/pipeline ratio (the engine's money resolution
# is one cent): that history is refused with one line naming the amount column.
@pytest.mark.parametrize(("case", "exit_code"), [("no_open_deal", 0), ("tiny_amounts", 3)])
def test_cli_on_edge_inputs_never_warns(case, exit_code, tmp_path: Path):
    path = tmp_path / "history.csv"
    CASES[case]().write_csv(path)
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "forecast.cli",
            "run",
            str(path),
            "--segment",
            "segment",
            "--paths",
            "300",
            "--draws",
            "2",
            "--horizon",
            "2",
            "--target",
            "1",
            "-o",
            str(tmp_path / "out"),
            "--plots",
            str(tmp_path / "figs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == exit_code, proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr
    if exit_code:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("forecast:")]
        assert len(errors) == 1 and "`amount`" in errors[0], proc.stderr
