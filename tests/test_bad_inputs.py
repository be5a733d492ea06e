"""The bad-input corpus (``tests/bad_inputs/cases.py``) through the API and the command.

API: ``read_deal_log`` -> ``fit`` -> ``simulate`` raises exactly the case's error class
with the case's words in the message, or succeeds and passes the case's check. Command:
``forecast run FILE`` returns 3 for bad data (2 for bad arguments), prints exactly one
error line with the same words on stderr and never a traceback or a warning. The
command runs in-process (``forecast.cli.main``) for every case, where pytest turns any
warning into an error, and as a real subprocess for one case of each kind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import forecast
from forecast import cli
from forecast.errors import ForecastError

sys.path.insert(0, str(Path(__file__).parent))
from bad_inputs.cases import CASES, HERE, Case

N_PATHS, HORIZON = 200, 2
#: Lines the command may print on stderr besides its one error line (status lines).
STATUS_PREFIXES = ("Reading ", "Fitting the model")


def params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            c,
            id=c.name,
            marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [],
        )
        for c in cases
    ]


def case_file(case: Case, tmp_path: Path) -> Path:
    """The case's input as a file the command can read."""
    if isinstance(case.source, str):
        return HERE / case.source
    frame = case.source()
    path = tmp_path / f"{case.name}{case.suffix}"
    if case.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def run_api(case: Case) -> tuple[Any, Any]:
    source = HERE / case.source if isinstance(case.source, str) else case.source()
    log = forecast.read_deal_log(source, **case.read)
    model = forecast.fit(log, n_draws=0, **case.fit)
    fc = model.simulate(log, n_paths=N_PATHS, horizon=HORIZON, seed=0, progress=False)
    return log, fc


def cli_args(case: Case, path: Path, out: Path) -> list[str]:
    args = ["run", str(path), "-o", str(out), "--paths", str(N_PATHS), "--horizon", str(HORIZON)]
    args += ["--draws", "0", "--no-progress"]
    if "preset" in case.read:
        args += ["--preset", case.read["preset"]]
    if "shape" in case.read:
        args += ["--shape", case.read["shape"]]
    for column in case.read.get("segment_columns", ()):
        args += ["--segment", column]
    assert list(case.fit.get("segment_by", ())) == list(case.read.get("segment_columns", ()))
    if "as_of" in case.fit:
        args += ["--as-of", case.fit["as_of"]]
    return args


def error_line(stderr: str, case: Case) -> str:
    """The one error line; fails on a traceback, a warning or a second error line."""
    assert "Traceback" not in stderr, stderr
    assert "Warning" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    if case.exit_code == 3:  # data errors: nothing else but the status lines
        others = [
            line
            for line in stderr.splitlines()
            if line != errors[0] and not line.startswith(STATUS_PREFIXES)
        ]
        assert others == [], stderr
    return errors[0]


def test_corpus_is_large_and_covers_every_outcome() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    files = {c.source for c in CASES if isinstance(c.source, str)}
    on_disk = {p.name for p in HERE.iterdir() if p.suffix in (".csv", ".parquet")}
    assert files == on_disk  # every file is a case, every case's file exists
    assert {c.exit_code for c in CASES} == {0, 2, 3}
    assert {c.error for c in CASES} >= {
        None,
        forecast.DataError,
        forecast.MissingColumnError,
        forecast.TimestampError,
        forecast.MixedTimezoneError,
        forecast.AmountError,
        forecast.UnknownStageError,
        forecast.TerminalEventError,
        forecast.ModelError,
        forecast.ParameterError,
    }


@pytest.mark.parametrize("case", params(CASES))
def test_api(case: Case) -> None:
    if case.error is None:
        log, fc = run_api(case)
        assert fc.quarterly().height == HORIZON
        if case.check is not None:
            case.check(log, fc)
        return
    with pytest.raises(ForecastError) as info:
        run_api(case)
    assert type(info.value) is case.error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message.strip()
    for word in case.words:
        assert word in message, message


@pytest.mark.parametrize("case", params(CASES))
def test_command(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = cli.main(cli_args(case, case_file(case, tmp_path), out))
    captured = capsys.readouterr()
    assert code == case.exit_code, captured.err
    if case.exit_code == 0:
        assert "error" not in captured.err, captured.err
        assert forecast.io.read_forecast(out, "quarterly").height == HORIZON
        return
    line = error_line(captured.err, case)
    assert line.startswith(("forecast: error:", "usage:", "forecast run: error:")), line
    for word in case.cli_words or case.words:
        assert word in line, line
    assert not out.exists() or not forecast.io.table_files(out)  # nothing written


#: One case of each kind (read, fit, arguments), run as a real ``forecast`` process.
SUBPROCESS_CASES = ["latin1", "no_won_deal", "bad_preset"]


@pytest.mark.parametrize("case", params([c for c in CASES if c.name in SUBPROCESS_CASES]))
def test_command_process(case: Case, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "forecast.cli",
            *cli_args(case, case_file(case, tmp_path), tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == case.exit_code, proc.stderr
    line = error_line(proc.stderr, case)
    for word in case.cli_words or case.words:
        assert word in line, line


def test_messages_name_the_place(tmp_path: Path) -> None:
    """Data errors about one cell carry the structured fields as well as the text."""
    with pytest.raises(forecast.AmountError) as info:
        forecast.read_deal_log(HERE / "negative_amount.csv")
    err = info.value
    assert (err.column, err.deal_id, err.row, err.found) == ("amount", "D2", 1, "-500")
    with pytest.raises(forecast.DataError) as info2:
        forecast.read_deal_log(HERE / "latin1.csv")
    assert info2.value.row == 2  # line 4 of the file = data row 2
    frame = pl.read_csv(HERE / "unparsable_date.csv")
    with pytest.raises(forecast.TimestampError) as info3:
        forecast.read_deal_log(frame)
    assert (info3.value.deal_id, info3.value.row) == ("D2", 2)
