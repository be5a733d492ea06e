"""The ``forecast`` command, run as a subprocess (``python -m forecast.cli``), good input and bad."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import forecast.io as fio
from forecast import cli

FAST = ["--paths", "1000", "--draws", "2", "--no-progress"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forecast.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for w in words:
        assert w in errors[0]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample history as a CSV event log."""
    from forecast.datasets import load_sample

    path = tmp_path_factory.mktemp("cli") / "history.csv"
    load_sample().events.drop("source_row").write_csv(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["fit"], ["backtest"], ["metrics"]])
def test_help(command: list[str]) -> None:
    proc = run(*command, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: forecast")


@pytest.mark.slow
def test_demo_prints_the_quarterly_table() -> None:
    proc = run("demo", *FAST, "--target", "2M")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("quarter"))
    for col in ("booked", "mean", "P10", "P50", "P90", "weighted pipe", "P(reach target)"):
        assert col in header
    rows = [line for line in lines if line.startswith("FY2025-Q")]
    assert [r.split()[0] for r in rows] == ["FY2025-Q1", "FY2025-Q2", "FY2025-Q3", "FY2025-Q4"]
    assert "≥ 2,000,000" in rows[0]
    assert "Deals carrying the most risk" in proc.stdout


@pytest.mark.slow
def test_run_writes_parquet_and_figures(history: Path, tmp_path: Path) -> None:
    out, figs = tmp_path / "out", tmp_path / "figs"
    proc = run(
        "run",
        str(history),
        "--segment",
        "segment",
        "--as-of",
        "2024-10-01",
        "--horizon",
        "2",
        "--target",
        "FY2024-Q4=1.5M",
        "--include-paths",
        "--plots",
        str(figs),
        "-o",
        str(out),
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FY2024-Q4" in proc.stdout and "FY2025-Q1" in proc.stdout
    q = fio.read_forecast(out, "quarterly")
    assert q["quarter"].to_list() == ["FY2024-Q4", "FY2025-Q1"]
    assert q["as_of"].to_list() == [dt.date(2024, 10, 1)] * 2
    assert fio.read_forecast(out, "paths").height == 1000 * 2 * 3 * 2  # paths × H × G × sources
    assert set(fio.read_forecast(out, "segments")["segment"].to_list()) == {
        "Enterprise",
        "MidMarket",
        "SMB",
    }
    pngs = sorted(p.name for p in figs.glob("*.png"))
    assert "fan_chart.png" in pngs and len(pngs) == 4
    for p in figs.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_fit_writes_model_json(history: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    proc = run("fit", str(history), "--segment", "segment", "--draws", "2", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    from forecast.fit.model import PipelineModel

    model = PipelineModel.from_json(out)
    assert set(model.segments) == {"Enterprise", "MidMarket", "SMB"}
    assert json.loads(out.read_text())  # plain JSON


@pytest.mark.slow
def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("run", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, 2, "does not exist", "nope.csv")


@pytest.mark.slow
def test_misspelt_column_is_a_data_error(history: Path, tmp_path: Path) -> None:
    proc = run("run", str(history), "--segment", "segmnt", "-o", str(tmp_path / "o"), *FAST)
    assert_one_line_error(proc, 3, "segmnt", "Did you mean `segment`")


@pytest.mark.slow
def test_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"\x00\x01 not parquet")
    proc = run("fit", str(bad), "-o", str(tmp_path / "m.json"))
    assert_one_line_error(proc, 3, "bad.parquet")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--paths", "0"], ["--paths", "≥ 1"]),
        (["--target", "lots"], ["--target", "lots"]),
        (["--fiscal-start-month", "13"], ["month", "13"]),
        (["--as-of", "2024-13-01"], ["as_of", "2024-13-01"]),
        (["--target", "FY2031-Q1=1M"], ["FY2031-Q1", "horizon"]),
    ],
)
def test_bad_arguments_are_usage_errors(
    history: Path, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    proc = run("run", str(history), "-o", str(tmp_path / "o"), *FAST, *args)
    assert_one_line_error(proc, 2, *words)
    assert not (tmp_path / "o" / "quarterly").exists()


@pytest.mark.slow
def test_unknown_command() -> None:
    proc = run("forecast-everything")
    assert_one_line_error(proc, 2, "invalid choice")


@pytest.mark.slow
def test_backtest(history: Path, tmp_path: Path) -> None:
    pytest.importorskip("forecast.backtest")
    out = tmp_path / "scores.parquet"
    proc = run(
        "backtest",
        str(history),
        "--origins",
        "2024-04-01",
        "2024-07-01",
        "--horizon",
        "1",
        "--paths",
        "300",
        "--draws",
        "2",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "mean_crps" in proc.stdout
    assert pl.read_parquet(out).height > 0


@pytest.mark.slow
def test_metrics(history: Path, tmp_path: Path) -> None:
    proc = run("metrics", str(history), "--draws", "2", "-o", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert "win rate" in proc.stdout
    assert (tmp_path / "m" / "win_rates.parquet").exists()


def test_usage_errors_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The fast tier's check of the exit codes (the subprocess tests above are slow).
    assert cli.main(["forecast-everything"]) == 2
    assert cli.main(["run", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "does not exist" in err and "Traceback" not in err


def test_internal_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(args: object) -> int:
        raise RuntimeError("kaboom")

    monkeypatch.setitem(cli._HANDLERS, "demo", boom)
    monkeypatch.delenv("FORECAST_DEBUG", raising=False)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "kaboom" in err and "Traceback" not in err


def test_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._HANDLERS, "demo", interrupted)
    assert cli.main(["demo"]) == 130
    assert "interrupted" in capsys.readouterr().err
