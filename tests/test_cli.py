"""The ``forecast`` command, run as a subprocess (``python -m forecast.cli``), good input and bad."""

from __future__ import annotations

import datetime as dt
import json
import re
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
@pytest.mark.parametrize(
    "command",
    [[], ["demo"], ["inspect"], ["run"], ["report"], ["fit"], ["backtest"], ["metrics"]],
)
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
    header = next(line for line in proc.stdout.splitlines() if line.startswith("segment"))
    assert "P(win) at entry" in header and "median days" in header
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("SMB ")]
    assert [r[1] for r in rows] == ["Prospecting", "Qualification", "Proposal", "Negotiation"]
    assert all(r[4].endswith("%") for r in rows)  # win probability as a percentage
    assert "shape:" not in proc.stdout  # not a raw frame
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
        "--no-progress",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("step"))
    for col in ("cases", "mean CRPS", "bias", "80% covered", "skill vs weighted pipe"):
        assert col in header
    (row,) = [line.split() for line in lines if line.startswith("1 ")]
    assert row[1] == "2"  # two origins scored
    assert re.fullmatch(r"\d{1,3}(,\d{3})+", row[2])  # CRPS in currency, for people
    assert "mean_crps" not in proc.stdout  # not a raw frame
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


# -- reading options, the config file, inspect -------------------------------------------------
COMMANDS = ["demo", "inspect", "fit", "run", "backtest", "metrics"]
COMMON = ["--seed", "3", "--fiscal-start-month", "2", "--no-progress"]
READING = [
    "h.csv",
    "--preset",
    "salesforce",
    "--shape",
    "events",
    "--column",
    "deal_id=Name",
    "--column",
    "amount=",
    "--open-stages",
    "Lead, Demo,Proposal",
    "--won",
    "Signed",
    "--lost",
    "Dead,Gone",
    "--no-decision",
    "Stalled",
    "--entry-stage",
    "Lead",
    "--segment",
    "Region",
    "--timestamp-format",
    "%d/%m/%Y",
    "--epoch-unit",
    "ms",
    "--file-date-format",
    "%Y%m%d",
    "--vanished",
    "lost",
    "--config",
    "c.toml",
    "--as-of",
    "2024-01-01",
]
REQUIRED = {"fit": ["-o", "m.json"], "run": ["-o", "out"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_takes_the_common_flags_and_the_reading_options(command: str) -> None:
    reading = READING if command != "demo" else []
    args = cli.build_parser().parse_args([command, *reading, *COMMON, *REQUIRED.get(command, [])])
    assert (args.seed, args.fiscal_start_month, args.no_progress) == (3, 2, True)
    if command != "demo":
        assert args.column == [("deal_id", "Name"), ("amount", None)]
        assert args.open_stages == ["Lead", "Demo", "Proposal"]
        assert args.lost == ["Dead", "Gone"]
        assert (args.vanished, args.file_date_format) == ("lost", "%Y%m%d")


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "reading.toml"
    config.write_text(
        'preset = "salesforce"\nopen-stages = ["Lead", "Demo"]\nwon = ["Signed"]\n'
        'segment = ["Region"]\n[columns]\ndeal_id = "Name"\nstage = "Phase"\n'
    )
    args = cli.build_parser().parse_args(
        ["inspect", "h.csv", "--config", str(config), "--column", "stage=Step", "--won", "Won"]
    )
    options = cli._reading_options(args)
    assert options["columns"] == {"deal_id": "Name", "stage": "Step"}
    assert options["stages"] == {"open": ["Lead", "Demo"], "won": ["Won"]}
    assert options["preset"] == "salesforce"
    assert options["segment_columns"] == ("Region",) and args.segment == ["Region"]


@pytest.fixture(scope="module")
def custom_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample history as a CRM would export it with its own column and stage names."""
    from forecast.datasets import load_sample

    names = {
        "Prospecting": "Lead",
        "Qualification": "Discovery",
        "Proposal": "Quote",
        "Negotiation": "Legal",
        "Closed Won": "Signed",
        "Closed Lost": "Dead",
        "No Decision": "Stalled",
    }
    path = tmp_path_factory.mktemp("cli") / "crm export.csv"
    load_sample().events.drop("source_row").with_columns(
        pl.col("stage").replace_strict(names)
    ).rename(
        {
            "deal_id": "Opportunity",
            "timestamp": "Changed At",
            "stage": "Phase",
            "amount": "ARR",
            "close_date": "Expected Close",
            "created_at": "Opened",
            "segment": "Segment",
        }
    ).write_csv(path)
    return path


CUSTOM_COLUMNS = [
    "--column",
    "deal_id=Opportunity",
    "--column",
    "timestamp=Changed At",
    "--column",
    "stage=Phase",
    "--column",
    "amount=ARR",
    "--column",
    "close_date=Expected Close",
    "--column",
    "created_at=Opened",
]
CUSTOM_STAGES = [
    "--open-stages",
    "Lead,Discovery,Quote,Legal",
    "--won",
    "Signed",
    "--lost",
    "Dead",
    "--no-decision",
    "Stalled",
]


def test_inspect_a_non_standard_export(custom_export: Path) -> None:
    proc = run(
        "inspect",
        str(custom_export),
        *CUSTOM_COLUMNS,
        *CUSTOM_STAGES,
        "--segment",
        "Segment",
        "--as-of",
        "2024-07-01",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"deal_id\s+<- Opportunity", out)
    assert re.search(r"timestamp\s+<- Changed At", out)
    assert re.search(r"segment\s+<- Segment", out)
    stages = re.findall(r"^\s+(\w+)\s+(open|won|lost|no_decision)\s", out, re.M)
    assert stages == [
        ("Lead", "open"),
        ("Discovery", "open"),
        ("Quote", "open"),
        ("Legal", "open"),
        ("Signed", "won"),
        ("Dead", "lost"),
        ("Stalled", "no_decision"),
    ]
    assert "Open pipeline at 2024-07-01: 189 deals" in out  # as `inspect_log` of the sample
    assert "Validation report: 15164 rows read" in out
    assert "Segment: SMB" in out


def test_run_a_non_standard_export_with_column_flags_alone(
    custom_export: Path, tmp_path: Path
) -> None:
    # Stage names here are non-standard too, so they need the stage flags; the columns need
    # nothing but --column.
    proc = run(
        "run",
        str(custom_export),
        *CUSTOM_COLUMNS,
        *CUSTOM_STAGES,
        "--as-of",
        "2024-07-01",
        "--horizon",
        "1",
        "-o",
        str(tmp_path / "out"),
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FY2024-Q3" in proc.stdout
    assert fio.read_forecast(tmp_path / "out", "quarterly")["quarter"].to_list() == ["FY2024-Q3"]


def test_run_with_column_flags_alone(history: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "renamed.csv"
    pl.read_csv(history, infer_schema=False).rename(
        {"deal_id": "Name", "timestamp": "Modified", "amount": "Value"}
    ).write_csv(renamed)
    proc = run(
        "run",
        str(renamed),
        "--column",
        "deal_id=Name",
        "--column",
        "timestamp=Modified",
        "--column",
        "amount=Value",
        "--horizon",
        "1",
        "-o",
        str(tmp_path / "out"),
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    assert fio.read_forecast(tmp_path / "out", "quarterly").height == 1


def test_inspect_with_a_config_file_matches_the_flags(custom_export: Path, tmp_path: Path) -> None:
    config = tmp_path / "crm.toml"
    config.write_text(
        "open_stages = ['Lead', 'Discovery', 'Quote', 'Legal']\n"
        "won = ['Signed']\nlost = ['Dead']\nno_decision = ['Stalled']\nsegment = ['Segment']\n"
        "[columns]\ndeal_id = 'Opportunity'\ntimestamp = 'Changed At'\nstage = 'Phase'\n"
        "amount = 'ARR'\nclose_date = 'Expected Close'\ncreated_at = 'Opened'\n"
    )
    by_file = run("inspect", str(custom_export), "--config", str(config))
    by_flags = run(
        "inspect", str(custom_export), *CUSTOM_COLUMNS, *CUSTOM_STAGES, "--segment", "Segment"
    )
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout == by_flags.stdout


def test_inspect_a_folder_of_exports_and_a_preset(tmp_path: Path) -> None:
    from forecast.datasets import SYNTHETIC_STAGES, export_dates, generate_crm, write_exports

    crm = generate_crm(seed=3, scale=0.2, start="2024-01-01", end="2024-04-01")
    write_exports(crm.events, tmp_path / "exports", export_dates("2024-01-01", "2024-04-01", 7))
    proc = run("inspect", str(tmp_path / "exports"), "--segment", "segment")
    assert proc.returncode == 0, proc.stderr
    assert "14 files in" in proc.stdout and "shape 'snapshots'" in proc.stdout
    assert "(14 exports, median gap 7.0 days)" in proc.stdout
    assert re.search(r"timestamp\s+<- date in file name", proc.stdout)
    assert "interval-censored" in proc.stdout
    assert set(SYNTHETIC_STAGES.open) <= set(re.findall(r"^\s+(\w+)\s+open", proc.stdout, re.M))

    data = Path(__file__).parent / "data" / "salesforce_opportunity.csv"
    proc = run("inspect", str(data), "--preset", "salesforce_opportunity", "--as-of", "2024-04-01")
    assert proc.returncode == 0, proc.stderr
    assert "One row per deal: the table has no stage history" in proc.stdout
    assert re.search(r"Needs Analysis", proc.stdout) is None  # only stages in the data
    assert "ForecastCategoryName: Omitted 2, Pipeline 2, Best Case 1" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--column", "deal=Name"], 2, ["--column", "deal=Name", "deal_id"]),
        (["--column", "deal_id"], 2, ["CANONICAL=SOURCE"]),
        (["--open-stages", " , "], 2, ["--open-stages"]),
        (["--column", "deal_id=Nope"], 3, ["deal_id", "Nope"]),
        (["--open-stages", "Prospecting", "--won", "Closed Won"], 3, ["Qualification"]),
    ],
)
def test_bad_reading_options(history: Path, args: list[str], code: int, words: list[str]) -> None:
    proc = run("inspect", str(history), *args)
    assert_one_line_error(proc, code, *words)


def test_bad_config_files(history: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    for text, words in [
        ("presets = 'salesforce'\n", ["unknown key 'presets'", "preset"]),
        ("won = 3\n", ["`won` must be a list of strings"]),
        ("[columns]\ndeal = 'x'\n", ["`columns` must be a table"]),
        ("preset = \n", ["not valid TOML"]),
    ]:
        bad.write_text(text)
        proc = run("inspect", str(history), "--config", str(bad))
        assert_one_line_error(proc, 2, *words)
    proc = run("inspect", str(history), "--config", str(tmp_path / "missing.toml"))
    assert_one_line_error(proc, 2, "missing.toml", "does not exist")
