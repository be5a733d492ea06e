"""The ``forecast`` command.

Subcommands: ``demo`` (the bundled sample, end to end), ``run`` (history in,
Parquet datasets out, optional PNG figures), ``fit`` (model JSON out),
``backtest`` (rolling-origin accuracy) and ``metrics`` (sales metrics). Each has
``--help``. Progress bars and status lines go to stderr, tables to stdout.

Exit codes: 0 success, 1 unexpected internal error, 2 bad arguments, 3 bad
input data or a model that cannot be fitted, 130 interrupted.

Errors print one line ``forecast: error: ...`` on stderr, without a traceback
(set ``FORECAST_DEBUG=1`` to get the traceback of an internal error).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from forecast.errors import DataError, ForecastError, ModelError, ParameterError

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Unavailable(Exception):
    """A subcommand whose implementation is not part of this installation."""


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
def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("history", help="deal history: Parquet or CSV path")
    p.add_argument("--preset", choices=["salesforce", "hubspot"], help="CRM export preset")
    p.add_argument("--shape", choices=["events", "deals", "snapshots"], help="table shape")
    p.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="COLUMN",
        help="segment column (repeatable)",
    )
    p.add_argument("--as-of", help="as-of date (ISO-8601); default: last event in the history")
    p.add_argument(
        "--fiscal-start-month",
        type=_month,
        default=1,
        metavar="MONTH",
        help="first month of the fiscal year (1-12, default 1)",
    )


def _add_sim_args(p: argparse.ArgumentParser, *, paths: int = 10_000) -> None:
    p.add_argument(
        "--paths", type=_positive_int, default=paths, help=f"simulated paths (default {paths:,})"
    )
    p.add_argument("--horizon", type=_positive_int, default=4, help="fiscal quarters (default 4)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads (default: all)")
    p.add_argument(
        "--draws",
        type=_non_negative_int,
        default=32,
        help="parameter draws, Bayesian bootstrap (default 32)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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

    p = sub.add_parser(
        "demo",
        help="fit and simulate the bundled sample history, print the quarterly table",
        description="Fit the bundled sample history at its end date, simulate the next "
        "quarters and print the quarterly table.",
    )
    _add_sim_args(p)
    _add_report_args(p)
    p.add_argument(
        "--out", type=Path, default=None, help="also write the quarterly table (Parquet file)"
    )

    p = sub.add_parser(
        "fit",
        help="fit a model and write it as JSON",
        description="Fit the pipeline model to a deal history and write it as JSON.",
    )
    _add_input_args(p)
    p.add_argument(
        "--draws",
        type=_non_negative_int,
        default=32,
        help="parameter draws, Bayesian bootstrap (default 32)",
    )
    p.add_argument("--seed", type=_non_negative_int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("-o", "--output", type=Path, required=True, help="model JSON path")

    p = sub.add_parser(
        "run",
        help="fit, simulate and write Parquet datasets (and figures)",
        description="Fit the model on a deal history, simulate the next quarters and write "
        "the quarterly, segments and deals tables (and optionally the raw paths) as Parquet "
        "datasets partitioned by as-of date under OUTPUT (atomic: a failed run leaves the "
        "previous output intact).",
    )
    _add_input_args(p)
    _add_sim_args(p)
    _add_report_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output root directory")
    p.add_argument(
        "--include-paths", action="store_true", help="also write the raw simulated paths"
    )

    p = sub.add_parser(
        "backtest",
        help="rolling-origin backtest: forecast past quarters and score against what was booked",
        description="Rolling-origin backtest with proper scores (CRPS, pinball loss, interval "
        "coverage) against baselines.",
    )
    _add_input_args(p)
    p.add_argument("--origins", nargs="+", metavar="DATE", help="as-of dates (default: automatic)")
    p.add_argument("--horizon", type=_positive_int, default=2, help="quarters (default 2)")
    p.add_argument("--paths", type=_positive_int, default=2000, help="paths per origin")
    p.add_argument("--draws", type=_non_negative_int, default=16, help="parameter draws")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")
    p.add_argument(
        "-o", "--output", type=Path, help="also write the per-origin scores (Parquet file)"
    )
    _add_dask_arg(p)

    p = sub.add_parser(
        "metrics",
        help="sales metrics: win rates, conversion, cycle length, velocity, coverage",
        description="Sales metrics of a deal history at an as-of date, with open deals "
        "handled as censored.",
    )
    _add_input_args(p)
    p.add_argument("--draws", type=_non_negative_int, default=16, help="parameter draws")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")
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


def _read(args: argparse.Namespace) -> Any:
    from forecast.data.readers import read_deal_log

    path = Path(args.history)
    if not path.exists():
        raise FileNotFoundError(f"The history file {args.history} does not exist.")
    try:
        return read_deal_log(
            path, preset=args.preset, shape=args.shape, segment_columns=tuple(args.segment)
        )
    except ForecastError:
        raise
    except Exception as e:  # the table readers (polars, pyarrow) on a malformed file
        if (type(e).__module__ or "").startswith(("polars", "pyarrow")):
            raise DataError(f"Cannot read {args.history}: {_one_line(e)}") from e
        raise


def _calendar(args: argparse.Namespace) -> Any:
    from forecast.calendar import FiscalCalendar

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
    widths = [max(len(h), *(len(r[i + 1]) for r in rows)) for i, h in enumerate(heads)]
    print(f"{'quarter':<11}" + "".join(f"  {h:>{w}}" for h, w in zip(heads, widths)))
    for r in rows:
        print(f"{r[0]:<11}" + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], widths)))


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
    import forecast

    _status("Fitting the model ...")
    model = forecast.fit(
        log,
        as_of=as_of,
        segment_by=segment_by,
        calendar=_calendar(args),
        n_draws=args.draws,
        seed=args.seed,
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
    from forecast.plots import save_figures

    first = {q: v[0] for q, v in targets.items()}
    written = save_figures(fc, directory, targets=first or None)
    print(f"Wrote {len(written)} figures to {directory}")


# -- subcommands ----------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from forecast.datasets import load_sample
    from forecast.datasets.sample import SAMPLE_PARAMETERS

    t0 = time.perf_counter()
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
        import io

        from forecast.io import atomic_write_bytes

        buf = io.BytesIO()
        fc.quarterly().write_parquet(buf)
        atomic_write_bytes(args.out, buf.getvalue())
        print(f"\nWrote {args.out}")
    if args.plots:
        _write_plots(fc, args.plots, targets)
    print(f"\nDone in {time.perf_counter() - t0:.1f} s.")
    return EXIT_OK


def _cmd_fit(args: argparse.Namespace) -> int:
    import forecast

    _status(f"Reading {args.history} ...")
    log = _read(args)
    _status("Fitting the model ...")
    model = forecast.fit(
        log,
        as_of=args.as_of,
        segment_by=tuple(args.segment),
        calendar=_calendar(args),
        n_draws=args.draws,
        seed=args.seed,
    )
    model.to_json(args.output)
    print(model.summary())
    for d in model.diagnostics:
        print(f"Diagnostic: {d}")
    print(f"Wrote {args.output}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from forecast.io import write_forecast

    t0 = time.perf_counter()
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


def _optional(module: str, name: str) -> Any:
    """``module.name``, or :class:`_Unavailable` when this installation lacks it."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise _Unavailable(f"`{module}` is not available yet in this version.") from None
        raise
    fn = getattr(mod, name, None)
    if fn is None:
        raise _Unavailable(f"`{module}.{name}` is not available yet in this version.")
    return fn


def _write_frame(frame: Any, path: Path) -> None:
    import io

    from forecast.io import atomic_write_bytes

    buf = io.BytesIO()
    frame.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())
    print(f"Wrote {path}")


#: Columns of the backtest summary shown on screen (all are in the Parquet output).
_BACKTEST_COLUMNS = (
    "step",
    "n",
    "mean_crps",
    "coverage50",
    "coverage80",
    "mean_pit",
    "skill_weighted_pipeline",
    "skill_stage_sum",
    "skill_trailing",
)


def _cmd_backtest(args: argparse.Namespace) -> int:
    backtest = _optional("forecast.backtest", "backtest")
    _status(f"Reading {args.history} ...")
    log = _read(args)
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
        )
    summary = result.summary()
    brief = [c for c in _BACKTEST_COLUMNS if c in summary.columns]
    _print_frame(summary.select(brief) if len(brief) > 2 else summary)
    if args.output:
        _write_frame(result.scores(), args.output)
    return EXIT_OK


def _cmd_metrics(args: argparse.Namespace) -> int:
    compute_metrics = _optional("forecast.metrics", "compute_metrics")
    _status(f"Reading {args.history} ...")
    log = _read(args)
    _status("Computing metrics (fit, then coverage by simulation) ...")
    result = compute_metrics(
        log,
        as_of=args.as_of,
        segment_by=tuple(args.segment),
        calendar=_calendar(args),
        n_draws=args.draws,
        seed=args.seed,
    )
    print(result)
    if args.output:
        for path in result.to_parquet(args.output):
            print(f"Wrote {path}")
    return EXIT_OK


def _print_frame(frame: Any) -> None:
    import polars as pl

    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=160, fmt_str_lengths=40):
        print(frame)


_HANDLERS = {
    "demo": _cmd_demo,
    "fit": _cmd_fit,
    "run": _cmd_run,
    "backtest": _cmd_backtest,
    "metrics": _cmd_metrics,
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
    except _Unavailable as e:
        return fail(EXIT_USAGE, f"`forecast {args.command}`: {e}")
    except (DataError, ModelError) as e:
        return fail(EXIT_DATA, _one_line(e))
    except (ParameterError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
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
