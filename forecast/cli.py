"""The ``forecast`` command.

Subcommands: ``demo`` (the bundled sample, end to end), ``inspect`` (how a history
is read, without fitting), ``run`` (history in, Parquet datasets out, optional PNG
figures), ``report`` (the same run as one self-contained HTML page, optionally with
what changed since an earlier run), ``fit`` (model JSON out), ``backtest``
(rolling-origin accuracy), ``metrics`` (sales metrics) and ``drift`` (win
probability and days in stage, recent quarters against the earlier history). Each
has ``--help``. Every subcommand that reads a
history takes the same reading options (``--preset``, ``--shape``, ``--column
CANONICAL=SOURCE``, ``--open-stages``, ``--won``, ``--lost``, ``--no-decision``,
``--segment``, ``--config FILE`` ...), and every subcommand the same common flags
(``--seed``, ``--fiscal-start-month``, ``--no-progress``). Progress bars and status
lines go to stderr, tables to stdout.

Exit codes: 0 success, 1 unexpected internal error, 2 bad arguments, 3 bad
input data or a model that cannot be fitted, 130 interrupted.

Errors print one line ``forecast: error: ...`` on stderr, without a traceback
(set ``FORECAST_DEBUG=1`` to get the traceback of an internal error).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from forecast._kernels import ahead
from forecast._text import text_table
from forecast.backtest import BASELINES, backtest
from forecast.calendar import FiscalCalendar
from forecast.data.deal_level import deal_level_view
from forecast.data.inspection import inspect_log
from forecast.data.presets import PRESETS
from forecast.data.readers import CANONICAL_NAMES, read_deal_log
from forecast.data.snapshots import VANISHED_RULES
from forecast.datasets import load_sample
from forecast.datasets.sample import SAMPLE_PARAMETERS
from forecast.errors import (
    DataError,
    ForecastError,
    MissingDependencyError,
    ModelError,
    ParameterError,
)
from forecast.fit.data import FitData
from forecast.fit.drift import drift_table
from forecast.fit.fitting import fit
from forecast.fit.kinds import MODEL_KINDS, choose_model_kind
from forecast.io import atomic_write_bytes, write_forecast
from forecast.metrics import fit_and_compute_metrics
from forecast.plots import save_figures
from forecast.report import report

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# -- argument types -------------------------------------------------------------------
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9}


def _amount(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9][0-9_,]*\.?[0-9]*(?:e[+-]?\d+)?)\s*([kmb]?)\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected an amount such as 2500000, 2.5e6 or 2.5M; got {text!r}"
        )
    return float(m.group(1).replace(",", "").replace("_", "")) * _SUFFIX[m.group(2).lower()]


def _target(text: str) -> tuple[str | None, float]:
    """``AMOUNT`` (every quarter) or ``QUARTER=AMOUNT``."""
    if "=" in text:
        quarter, _, value = text.partition("=")
        return quarter.strip().upper(), _amount(value)
    return None, _amount(text)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}; got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _month(text: str) -> int:
    value = _positive_int(text)
    if value > 12:
        raise argparse.ArgumentTypeError(f"must be a month number 1-12; got {value}")
    return value


# -- parser ---------------------------------------------------------------------------
_STAGE_KINDS = ("open_stages", "won", "lost", "no_decision")


def _column(text: str) -> tuple[str, str | None]:
    """``CANONICAL=SOURCE`` (``SOURCE`` empty: the column is absent on purpose)."""
    canon, sep, source = text.partition("=")
    canon = canon.strip()
    if not sep or canon not in CANONICAL_NAMES:
        raise argparse.ArgumentTypeError(
            f"expected CANONICAL=SOURCE with CANONICAL one of {', '.join(CANONICAL_NAMES)} "
            f"(e.g. deal_id=Name); got {text!r}"
        )
    return canon, (source.strip() or None)


def _names(text: str) -> list[str]:
    """A comma-separated list of stage names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected stage names separated by commas; got {text!r}")
    return names


def _reading_parent() -> argparse.ArgumentParser:
    """Options of every subcommand that reads a history (one definition for all)."""

    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group(
        "reading the history",
        "How HISTORY is read; `forecast inspect HISTORY ...` shows the result without fitting.",
    )
    g.add_argument(
        "history",
        help="deal history: a Parquet or CSV file, or a folder of dated exports "
        "(a snapshot history)",
    )
    g.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file with reading options (keys as below: preset, shape, columns, "
        "open_stages, won, lost, no_decision, segment, ...); command-line flags win",
    )
    g.add_argument("--preset", choices=sorted(PRESETS), help="CRM export preset")
    g.add_argument(
        "--shape",
        choices=["events", "deals", "snapshots"],
        help="table shape (default: the preset's, else events; snapshots for a folder)",
    )
    g.add_argument(
        "--column",
        action="append",
        type=_column,
        default=None,
        metavar="CANONICAL=SOURCE",
        help="read canonical column CANONICAL (deal_id, timestamp, stage, amount, close_date, "
        "created_at) from column SOURCE; SOURCE empty: absent on purpose (repeatable)",
    )
    g.add_argument(
        "--open-stages",
        type=_names,
        metavar="A,B,...",
        help="open stages in pipeline order, separated by commas",
    )
    g.add_argument("--won", type=_names, metavar="A,...", help="won stage name(s)")
    g.add_argument("--lost", type=_names, metavar="A,...", help="lost stage name(s)")
    g.add_argument("--no-decision", type=_names, metavar="A,...", help="no-decision stage name(s)")
    g.add_argument(
        "--entry-stage",
        metavar="STAGE",
        help="open stage in which deals seen only closed are created (default: the first)",
    )
    g.add_argument(
        "--segment",
        action="append",
        default=None,
        metavar="COLUMN",
        help="segment column (repeatable)",
    )
    g.add_argument(
        "--timestamp-format",
        action="append",
        default=None,
        metavar="FORMAT",
        help="extra strptime format of the date columns, e.g. %%m/%%d/%%Y (repeatable)",
    )
    g.add_argument(
        "--epoch-unit", choices=["s", "ms", "us"], help="unit of numeric (epoch) timestamps"
    )
    g.add_argument(
        "--file-date-format",
        metavar="PATTERN",
        help="folder of exports: strftime pattern of the date in the file names "
        "(default: an ISO date YYYY-MM-DD anywhere in the name)",
    )
    g.add_argument(
        "--vanished",
        choices=VANISHED_RULES,
        help="snapshots: what becomes of a deal missing from every later export while open "
        "(default no_decision)",
    )
    g.add_argument(
        "--as-of", metavar="DATE", help="as-of date (ISO-8601); default: end of the history"
    )
    return parent


def _common_parent() -> argparse.ArgumentParser:
    """Flags every subcommand takes."""
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("common options")
    g.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    g.add_argument(
        "--fiscal-start-month",
        type=_month,
        default=1,
        metavar="MONTH",
        help="first month of the fiscal year (1-12, default 1)",
    )
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars",
    )
    return parent


def _add_draws_arg(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--draws",
        type=_non_negative_int,
        default=default,
        help=f"parameter draws, Bayesian bootstrap (default {default})",
    )


def _half_life(text: str) -> float | str | None:
    """``auto``, ``none`` or a number of days > 0."""
    t = text.strip().lower()
    if t in ("auto", "none"):
        return None if t == "none" else "auto"
    try:
        days = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'none' or a number of days > 0, got {text!r}"
        ) from None
    if not days > 0 or days != days or days == float("inf"):
        raise argparse.ArgumentTypeError(f"the half-life must be > 0 days, got {text!r}")
    return days


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    """Fitting options of every subcommand that fits a model."""
    p.add_argument(
        "--half-life",
        type=_half_life,
        default="auto",
        metavar="auto|none|DAYS",
        help="recency weighting of the past: a half-life in days, none, or auto (default: "
        "chosen by backtesting the history)",
    )
    p.add_argument(
        "--recorded-from",
        metavar="DATE",
        help="when recording of the history began; deals created before it were already in "
        "progress (default: the first event)",
    )


def _fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "half_life": getattr(args, "half_life", "auto"),
        "recorded_from": getattr(args, "recorded_from", None),
    }


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        choices=MODEL_KINDS,
        default="auto",
        dest="model_kind",
        help="model to fit: stages (semi-Markov over the open stages), deal_level (one open "
        "state on the age since creation, for a one-row-per-deal table) or auto (deal_level "
        "for a one-row-per-deal table, else stages; default)",
    )


def _add_sim_args(
    p: argparse.ArgumentParser, *, paths: int = 10_000, horizon: int = 4, threads: bool = True
) -> None:
    p.add_argument(
        "--paths", type=_positive_int, default=paths, help=f"simulated paths (default {paths:,})"
    )
    p.add_argument(
        "--horizon",
        type=_positive_int,
        default=horizon,
        help=f"fiscal quarters (default {horizon})",
    )
    if threads:
        p.add_argument("--threads", type=_positive_int, default=None, help="threads (default: all)")
    _add_dask_arg(p)


def _add_dask_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run on this Dask cluster (e.g. tcp://10.0.0.5:8786); default: this machine",
    )


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        action="append",
        default=[],
        type=_target,
        metavar="[QUARTER=]AMOUNT",
        help="bookings target, for every quarter or one (e.g. 2.5M or FY2025-Q1=2500000); "
        "repeatable",
    )
    p.add_argument("--plots", type=Path, metavar="DIR", help="also write PNG figures to DIR")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``forecast`` command."""
    parser = argparse.ArgumentParser(
        prog="forecast",
        description="Monte Carlo forecasts of quarterly bookings from CRM deal histories.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad arguments, 3 bad data, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    reading, common = _reading_parent(), _common_parent()

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="fit and simulate the bundled sample history, print the quarterly table",
        description="Fit the bundled sample history at its end date, simulate the next "
        "quarters and print the quarterly table.",
    )
    _add_draws_arg(p, 32)
    _add_sim_args(p)
    _add_report_args(p)
    p.add_argument(
        "--out", type=Path, default=None, help="also write the quarterly table (Parquet file)"
    )

    p = sub.add_parser(
        "inspect",
        parents=[reading, common],
        help="show how a history is read (columns, stages, deals, pipeline, report) without fitting",
        description="Dry run: read the history as the other commands would and print the "
        "column mapping, the stage classification with the deals that reached each stage, "
        "deals, events and date range, the open pipeline by stage at the as-of date, the "
        "segments, the validation report and warnings. Nothing is fitted.",
    )

    p = sub.add_parser(
        "fit",
        parents=[reading, common],
        help="fit a model and write it as JSON",
        description="Fit the pipeline model to a deal history and write it as JSON.",
    )
    _add_draws_arg(p, 32)
    _add_fit_args(p)
    _add_model_arg(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="model JSON path")

    p = sub.add_parser(
        "run",
        parents=[reading, common],
        help="fit, simulate and write Parquet datasets (and figures)",
        description="Fit the model on a deal history, simulate the next quarters and write "
        "the quarterly, segments and deals tables (and optionally the raw paths) as Parquet "
        "datasets partitioned by as-of date under OUTPUT (atomic: a failed run leaves the "
        "previous output intact).",
    )
    _add_draws_arg(p, 32)
    _add_fit_args(p)
    _add_model_arg(p)
    _add_sim_args(p)
    _add_report_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output root directory")
    p.add_argument(
        "--include-paths", action="store_true", help="also write the raw simulated paths"
    )

    p = sub.add_parser(
        "report",
        parents=[reading, common],
        help="fit, simulate, backtest and write a self-contained HTML report",
        description="Fit and simulate as `run` does, backtest the same model on the history, "
        "and write one HTML page for the people who read the forecast (no network needed to "
        "open it). With --previous, add what changed since an earlier `forecast run` output.",
    )
    _add_draws_arg(p, 32)
    _add_fit_args(p)
    _add_model_arg(p)
    _add_sim_args(p)
    _add_report_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="HTML file to write")
    p.add_argument(
        "--previous",
        type=Path,
        metavar="DIR",
        help="output directory of an earlier `forecast run`: show what changed since its "
        "latest forecast before this one",
    )
    p.add_argument(
        "--backtest-origins",
        type=_non_negative_int,
        default=6,
        help="past quarter starts to backtest from (default 6; 0: none)",
    )

    p = sub.add_parser(
        "backtest",
        parents=[reading, common],
        help="rolling-origin backtest: forecast past quarters and score against what was booked",
        description="Rolling-origin backtest with proper scores (CRPS, pinball loss, interval "
        "coverage) against baselines. With --as-of, only the history up to that date is used.",
    )
    p.add_argument("--origins", nargs="+", metavar="DATE", help="as-of dates (default: automatic)")
    _add_draws_arg(p, 16)
    _add_model_arg(p)
    _add_sim_args(p, paths=2000, horizon=2, threads=False)
    p.add_argument(
        "-o", "--output", type=Path, help="also write the per-origin scores (Parquet file)"
    )

    p = sub.add_parser(
        "drift",
        parents=[reading, common],
        help="is the market turning? win probability and days in stage, recent vs earlier",
        description="Per segment and open stage: the win probability of a deal entering the "
        "stage and the median days in it, from the last quarters against the earlier history, "
        "with 95%% bootstrap intervals and a test of no change (flagged after Holm's "
        "correction). Nothing is simulated.",
    )
    p.add_argument(
        "--recent-quarters",
        type=_positive_int,
        default=2,
        help="fiscal quarters in the recent period, before the one holding the as-of date "
        "(default 2)",
    )
    p.add_argument(
        "--draws",
        type=_positive_int,
        default=100,
        help="bootstrap draws behind the intervals and tests (default 100)",
    )
    p.add_argument(
        "--recorded-from",
        metavar="DATE",
        help="when recording of the history began (default: the first event)",
    )
    p.add_argument("-o", "--output", type=Path, help="also write the table (Parquet file)")

    p = sub.add_parser(
        "metrics",
        parents=[reading, common],
        help="sales metrics: win rates, conversion, cycle length, velocity, coverage",
        description="Sales metrics of a deal history at an as-of date, with open deals "
        "handled as censored.",
    )
    _add_draws_arg(p, 16)
    _add_model_arg(p)
    p.add_argument(
        "-o", "--output", type=Path, help="also write the metric tables (Parquet, directory)"
    )
    return parser


# -- helpers --------------------------------------------------------------------------
@contextlib.contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Any]:
    """A Dask executor when ``--dask-scheduler`` is given, else ``None`` (run locally)."""
    address = getattr(args, "dask_scheduler", None)
    if not address:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise ParameterError(
            "`--dask-scheduler` needs Dask: pip install 'forecast[distributed]'."
        ) from None
    _status(f"Connecting to the Dask scheduler at {address} ...")
    try:
        client = Client(address, timeout="20s")
    except OSError as e:
        raise ParameterError(f"Cannot reach the Dask scheduler at {address}: {e}") from None
    with client:
        yield client.get_executor()


def _status(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: Keys of a ``--config`` TOML file: the reading options (dashes or underscores).
CONFIG_KEYS: tuple[str, ...] = (
    "preset",
    "shape",
    "columns",
    "open_stages",
    "won",
    "lost",
    "no_decision",
    "entry_stage",
    "segment",
    "timestamp_format",
    "epoch_unit",
    "file_date_format",
    "vanished",
)
_LIST_KEYS = ("open_stages", "won", "lost", "no_decision", "segment", "timestamp_format")


def _load_config(path: Path) -> dict[str, Any]:
    """The reading options of a TOML file, checked (see :data:`CONFIG_KEYS`)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"The --config file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ParameterError(f"The --config file {path} is not valid TOML: {e}") from None
    cfg: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        name = {"segments": "segment", "timestamp_formats": "timestamp_format"}.get(name, name)
        if name not in CONFIG_KEYS:
            raise ParameterError(
                f"The --config file {path} has the unknown key {key!r}; keys are "
                f"{', '.join(CONFIG_KEYS)}."
            )
        if name == "columns":
            ok = isinstance(value, dict) and all(
                k in CANONICAL_NAMES and isinstance(v, str) for k, v in value.items()
            )
            if not ok:
                raise ParameterError(
                    f"The --config file {path}: `columns` must be a table of canonical name "
                    f'({", ".join(CANONICAL_NAMES)}) = "source column" ("" for absent). Got '
                    f"{value!r}."
                )
            value = {k: (v or None) for k, v in value.items()}
        elif name in _LIST_KEYS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ParameterError(
                    f"The --config file {path}: `{key}` must be a list of strings. Got {value!r}."
                )
        elif not isinstance(value, str):
            raise ParameterError(
                f"The --config file {path}: `{key}` must be a string. Got {value!r}."
            )
        cfg[name] = value
    return cfg


def _reading_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``read_deal_log`` from the flags and the ``--config`` file.

    A flag given on the command line wins over the file; ``--column`` flags are
    merged into the file's ``columns`` table. ``args.segment`` is set to the
    segment columns used.
    """
    cfg = _load_config(args.config) if getattr(args, "config", None) else {}

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else cfg.get(name)

    columns = {**cfg.get("columns", {}), **dict(args.column or [])}
    stages = {
        kind.removesuffix("_stages"): names
        for kind in _STAGE_KINDS
        if (names := pick(kind)) is not None
    }
    args.segment = list(pick("segment") or [])
    options: dict[str, Any] = {
        "preset": pick("preset"),
        "shape": pick("shape"),
        "columns": columns or None,
        "stages": stages or None,
        "segment_columns": tuple(args.segment),
        "entry_stage": pick("entry_stage"),
        "timestamp_formats": pick("timestamp_format"),
        "epoch_unit": pick("epoch_unit"),
        "file_date_format": pick("file_date_format"),
    }
    if pick("vanished") is not None:
        options["vanished"] = pick("vanished")
    return options


def _read(args: argparse.Namespace) -> Any:
    options = _reading_options(args)
    path = Path(args.history)
    if not path.exists():
        raise FileNotFoundError(f"The history {args.history} does not exist.")
    try:
        return read_deal_log(path, **options)
    except ForecastError:
        raise
    except Exception as e:  # the table readers (polars, pyarrow) on a malformed file
        if (type(e).__module__ or "").startswith(("polars", "pyarrow")):
            raise DataError(f"Cannot read {args.history}: {_one_line(e)}") from e
        raise


def _calendar(args: argparse.Namespace) -> Any:
    return FiscalCalendar(getattr(args, "fiscal_start_month", 1))


def _targets(fc: Any, raw: list[tuple[str | None, float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for quarter, value in raw:
        if quarter is not None and quarter not in fc.quarters:
            raise ParameterError(
                f"The --target quarter {quarter} is not in the forecast horizon "
                f"{list(fc.quarters)}."
            )
        for q in fc.quarters if quarter is None else [quarter]:
            out.setdefault(q, []).append(value)
    return out


def _fmt(v: float) -> str:
    return f"{v:,.0f}"


def _print_table(fc: Any, targets: dict[str, list[float]] | None = None) -> None:
    """The quarterly table, with P(≥ target) when targets are given."""
    q = fc.quarterly()
    cols = ["booked_to_date", "mean", "p10", "p50", "p90", "weighted_pipeline"]
    heads = ["booked", "mean", "P10", "P50", "P90", "weighted pipe"]
    rows = [[r[0], *(_fmt(v) for v in r[1:])] for r in q.select(["quarter", *cols]).iter_rows()]
    if targets:
        probs = fc.prob_at_least(targets)
        cell: dict[str, list[str]] = {}
        for quarter, target, p, _ in probs.iter_rows():
            cell.setdefault(quarter, []).append(f"{p:.0%} ≥ {_fmt(target)}")
        heads.append("P(reach target)")
        for r in rows:
            r.append(", ".join(cell.get(r[0], ["-"])))
    print("\n".join(text_table(["quarter", *heads], rows)))


def _print_risk(fc: Any, n: int = 5) -> None:
    if len(fc.deal_ids) == 0:
        return
    quarter = fc.riskiest_quarter()
    risk = fc.deal_risk(quarter).head(n)
    print(f"\nDeals carrying the most risk in {quarter} (share of the variance of its bookings):")
    for r in risk.iter_rows(named=True):
        print(
            f"  {r['deal_id']:<14} {r['risk_class']:<7} amount {_fmt(r['amount']):>12}"
            f"  P(win) {r['p_win']:>6.1%}  share {r['share_of_total_variance']:>6.1%}"
        )


def _fit_and_simulate(log: Any, args: argparse.Namespace, as_of: Any, segment_by: Any) -> Any:
    _status("Fitting the model ...")
    model = fit(
        log,
        as_of=as_of,
        segment_by=segment_by,
        calendar=_calendar(args),
        n_draws=args.draws,
        seed=args.seed,
        **_fit_kwargs(args),
        model_kind=getattr(args, "model_kind", "auto"),
    )
    with _executor(args) as executor:
        fc = model.simulate(
            log,
            n_paths=args.paths,
            horizon=args.horizon,
            seed=args.seed,
            threads=args.threads,
            progress=not args.no_progress,
            executor=executor,
        )
    return model, fc


def _write_plots(fc: Any, directory: Path, targets: dict[str, list[float]]) -> None:
    first = {q: v[0] for q, v in targets.items()}
    written = save_figures(fc, directory, targets=first or None)
    print(f"Wrote {len(written)} figures to {directory}")


# -- subcommands ----------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ahead.start()  # first run after installing: a second process compiles the late kernels
    log = load_sample()
    print(f"Sample history: {log}")
    model, fc = _fit_and_simulate(log, args, SAMPLE_PARAMETERS["end"], ("segment",))
    targets = _targets(fc, args.target)
    print(
        f"\nFitted as of {model.as_of:%Y-%m-%d}; {fc.n_paths:,} paths; bookings per fiscal quarter:\n"
    )
    _print_table(fc, targets)
    _print_risk(fc)
    if args.out:
        buf = io.BytesIO()
        fc.quarterly().write_parquet(buf)
        atomic_write_bytes(args.out, buf.getvalue())
        print(f"\nWrote {args.out}")
    if args.plots:
        _write_plots(fc, args.plots, targets)
    print(f"\nDone in {time.perf_counter() - t0:.1f} s.")
    return EXIT_OK


#: Columns of ``PipelineModel.summary()`` shown by ``forecast fit``: (column, heading, format).
_SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("n_spells", "visits", "int"),
    ("n_exits", "exits", "int"),
    ("win_probability", "P(win) at entry", "pct"),
    ("median_days_to_exit", "median days", "days"),
    ("conversion_to_next_stage", "to next stage", "pct"),
    ("share_lost", "lost", "pct"),
    ("share_no_decision", "no decision", "pct"),
    ("tail_family", "tail", "text"),
    ("credibility", "credibility", "ratio"),
    ("exit_curves", "curves", "text"),
)


def _cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{value:.0%}"
    if kind == "days":
        return f"{value:,.1f}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "int0":
        return f"{value:,.0f}"
    if kind == "p":
        return "<0.001" if value < 0.001 else f"{value:.3f}"
    return str(value)


def _print_model_summary(model: Any) -> None:
    """The fitted model per segment and stage, for people (all of it is in the JSON)."""
    summary = model.summary()
    shown = [c for c in _SUMMARY_COLUMNS if c[0] in summary.columns]
    print(f"Model fitted as of {model.as_of:%Y-%m-%d}. {model.model_description}")
    print("\nPer segment and open stage:\n")
    heads = ["segment", "stage", *(h for _, h, _ in shown)]
    rows = [
        [str(r["segment"]), str(r["stage"]), *(_cell(r[c], k) for c, _, k in shown)]
        for r in summary.iter_rows(named=True)
    ]
    print("\n".join(text_table(heads, rows, left=2)))
    if model.recency is not None:
        print(f"\nRecency: {model.recency.describe()}")


def _cmd_drift(args: argparse.Namespace) -> int:
    _status(f"Reading {args.history} ...")
    log = _read(args)
    _status("Comparing the recent quarters with the earlier history ...")
    kind, _ = choose_model_kind(log, "auto", "drift")  # a deal table: its one open state
    data = FitData.from_log(
        deal_level_view(log) if kind == "deal_level" else log,
        as_of=args.as_of,
        segment_by=tuple(args.segment),
        calendar=_calendar(args),
        caller="drift",
        recorded_from=args.recorded_from,
    )
    table = drift_table(
        data, recent_quarters=args.recent_quarters, n_draws=args.draws, seed=args.seed
    )
    split = table["recent_from"][0]
    print(
        f"As of {data.as_of:%Y-%m-%d}: recent period from {split:%Y-%m-%d} against the "
        "earlier history, per segment and open stage (95% intervals):\n"
    )

    def interval(r: dict[str, Any], col: str, kind: str) -> str:
        v, lo, hi = r[col], r[f"{col}_low"], r[f"{col}_high"]
        if v is None:
            return "-"
        if kind == "pct":
            return f"{v:.0%} [{_cell(lo, 'pct')}, {_cell(hi, 'pct')}]"
        return f"{v:,.0f} [{_cell(lo, 'int0')}, {_cell(hi, 'int0')}]"

    heads = [
        "segment",
        "stage",
        "exits",
        "P(win) earlier",
        "P(win) recent",
        "p",
        "median days earlier",
        "median days recent",
        "p",
        "signal",
    ]
    rows = [
        [
            str(r["segment"]),
            str(r["stage"]),
            f"{r['exits_earlier']:,}/{r['exits_recent']:,}",
            interval(r, "win_probability_earlier", "pct"),
            interval(r, "win_probability_recent", "pct"),
            _cell(r["win_probability_p_value"], "p"),
            interval(r, "median_days_earlier", "days"),
            interval(r, "median_days_recent", "days"),
            _cell(r["median_days_p_value"], "p"),
            r["signal"] or "",
        ]
        for r in table.iter_rows(named=True)
    ]
    print("\n".join(text_table(heads, rows, left=2)))
    flagged = table.filter(pl.col("signal") != "").height
    print(
        f"\n{flagged} of {table.height} rows changed significantly (5% family-wise, Holm); "
        "exits: earlier/recent."
    )
    if args.output:
        buf = io.BytesIO()
        table.write_parquet(buf)
        atomic_write_bytes(args.output, buf.getvalue())
        print(f"Wrote {args.output}")
    return EXIT_OK


def _cmd_fit(args: argparse.Namespace) -> int:
    _status(f"Reading {args.history} ...")
    log = _read(args)
    _status("Fitting the model ...")
    model = fit(
        log,
        as_of=args.as_of,
        segment_by=tuple(args.segment),
        calendar=_calendar(args),
        n_draws=args.draws,
        seed=args.seed,
        **_fit_kwargs(args),
        model_kind=args.model_kind,
    )
    model.to_json(args.output)
    _print_model_summary(model)
    for d in model.diagnostics:
        print(f"Diagnostic: {d}")
    print(f"\nWrote {args.output}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ahead.start()  # first run after installing: a second process compiles the late kernels
    _status(f"Reading {args.history} ...")
    log = _read(args)
    model, fc = _fit_and_simulate(log, args, args.as_of, tuple(args.segment))
    targets = _targets(fc, args.target)
    written = write_forecast(fc, args.output, include_paths=args.include_paths)
    print(
        f"Forecast as of {model.as_of:%Y-%m-%d}; {fc.n_paths:,} paths; "
        f"{len(fc.deal_ids):,} open deals; bookings per fiscal quarter:\n"
    )
    _print_table(fc, targets)
    _print_risk(fc)
    print()
    for table, path in written.items():
        print(f"Wrote {table:<9} {path}")
    if args.plots:
        _write_plots(fc, args.plots, targets)
    print(f"Done in {time.perf_counter() - t0:.1f} s.")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ahead.start()  # first run after installing: a second process compiles the late kernels
    _status(f"Reading {args.history} ...")
    log = _read(args)
    model, fc = _fit_and_simulate(log, args, args.as_of, tuple(args.segment))
    _status("Backtesting, computing metrics and writing the report ...")
    rep = report(
        log,
        args.output,
        model=model,
        forecast=fc,
        targets=_targets(fc, args.target) or None,
        previous=args.previous,
        backtest_origins=args.backtest_origins,
        threads=args.threads,
        seed=args.seed,
    )
    _print_table(fc, _targets(fc, args.target))
    if args.plots:
        _write_plots(fc, args.plots, _targets(fc, args.target))
    print(
        f"\nWrote {args.output} ({len(rep.html) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s."
    )
    return EXIT_OK


def _write_frame(frame: Any, path: Path) -> None:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())
    print(f"Wrote {path}")


def _pct(v: Any, signed: bool = False) -> str:
    if v is None or v != v:  # None or NaN
        return "-"
    return f"{v:+.1%}" if signed else f"{v:.0%}"


def _print_backtest(result: Any) -> None:
    """The backtest summary per horizon step, for people (all columns are in ``-o``)."""

    summary = result.summary()
    origins = result.origins
    print(
        f"Backtest from {len(origins)} origin(s) ({origins[0]:%Y-%m-%d} .. "
        f"{origins[-1]:%Y-%m-%d}), horizon {result.horizon} quarter(s), "
        f"{result.info['n_paths']:,} paths, {result.info['n_draws']} draws:\n"
    )
    names = {"weighted_pipeline": "weighted pipe", "stage_sum": "stage sum", "trailing": "trailing"}
    heads = ["step", "cases", "mean CRPS", "bias", "mean PIT", "50% covered", "80% covered"]
    heads += [f"skill vs {names.get(b, b)}" for b in BASELINES]
    rows = []
    for r in summary.iter_rows(named=True):
        if not r.get("n"):
            rows.append([str(r["step"]), "0", *["-"] * (len(heads) - 2)])
            continue
        cover = [
            f"{_pct(r[f'coverage{c}'])} [{_pct(r[f'coverage{c}_low'])}, "
            f"{_pct(r[f'coverage{c}_high'])}]"
            for c in (50, 80)
        ]
        rows.append(
            [
                str(r["step"]),
                f"{r['n']:,}",
                _fmt(r["mean_crps"]),
                _pct(r["bias"], signed=True),
                f"{r['mean_pit']:.2f}",
                *cover,
                *(_pct(r[f"skill_{b}"], signed=True) for b in BASELINES),
            ]
        )
    print("\n".join(text_table(heads, rows)))
    print(
        "\nCoverage: share of realised quarters inside the P25-P75 / P10-P90 interval, with "
        "95% Wilson intervals. Skill: 1 - CRPS / baseline's absolute error (> 0: the model "
        "is better)."
    )


def _cmd_backtest(args: argparse.Namespace) -> int:
    _status(f"Reading {args.history} ...")
    log = _read(args)
    if args.as_of is not None:
        log = log.as_of(args.as_of)  # only the history up to --as-of
    _status("Backtesting (one fit and simulation per origin) ...")
    with _executor(args) as executor:
        result = backtest(
            log,
            origins=args.origins,
            horizon=args.horizon,
            n_paths=args.paths,
            segment_by=tuple(args.segment),
            calendar=_calendar(args),
            n_draws=args.draws,
            seed=args.seed,
            executor=executor,
            model_kind=args.model_kind,
        )
    _print_backtest(result)
    if args.output:
        _write_frame(result.scores(), args.output)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:

    _status(f"Reading {args.history} ...")
    log = _read(args)
    print(inspect_log(log, args.as_of))
    return EXIT_OK


def _cmd_metrics(args: argparse.Namespace) -> int:
    _status(f"Reading {args.history} ...")
    log = _read(args)
    _status("Computing metrics (fit, then coverage by simulation) ...")
    result = fit_and_compute_metrics(
        log,
        as_of=args.as_of,
        segment_by=tuple(args.segment),
        calendar=_calendar(args),
        n_draws=args.draws,
        seed=args.seed,
        model_kind=args.model_kind,
    )
    print(result)
    if args.output:
        for path in result.to_parquet(args.output):
            print(f"Wrote {path}")
    return EXIT_OK


_HANDLERS = {
    "demo": _cmd_demo,
    "inspect": _cmd_inspect,
    "fit": _cmd_fit,
    "run": _cmd_run,
    "report": _cmd_report,
    "backtest": _cmd_backtest,
    "metrics": _cmd_metrics,
    "drift": _cmd_drift,
}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``forecast`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, one line printed)
        return int(e.code or 0)

    def fail(code: int, msg: str) -> int:
        print(f"forecast: error: {msg}", file=sys.stderr)
        return code

    try:
        return _HANDLERS[args.command](args)
    except KeyboardInterrupt:
        print("forecast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DataError, ModelError) as e:
        return fail(EXIT_DATA, _one_line(e))
    except (
        ParameterError,
        MissingDependencyError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
    ) as e:
        return fail(EXIT_USAGE, _one_line(e))
    except PermissionError as e:
        return fail(EXIT_USAGE, f"permission denied: {e.filename or _one_line(e)}")
    except ForecastError as e:
        return fail(EXIT_DATA, _one_line(e))
    except ImportError as e:
        return fail(EXIT_USAGE, _one_line(e))
    except Exception as e:
        if os.environ.get("FORECAST_DEBUG"):
            raise
        return fail(
            EXIT_INTERNAL,
            f"internal error ({type(e).__name__}: {_one_line(e)}); "
            "set FORECAST_DEBUG=1 for the traceback",
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
