"""The ``forecast`` command.

Exit codes: 0 success, 1 unexpected internal error, 2 bad arguments, 3 bad
input data or a model that cannot be fitted, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from forecast.errors import DataError, ForecastError, ModelError, ParameterError

__all__ = ["main"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


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
        "--fiscal-start-month", type=int, default=1, help="first month of the fiscal year (1-12)"
    )


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paths", type=int, default=10_000, help="number of simulated paths")
    p.add_argument("--horizon", type=int, default=4, help="number of fiscal quarters")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--draws", type=int, default=32, help="parameter draws (Bayesian bootstrap)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``forecast`` command."""
    parser = argparse.ArgumentParser(
        prog="forecast",
        description="Monte Carlo forecasts of quarterly bookings from CRM deal histories.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="fit and simulate the bundled sample history, print the table")
    _add_sim_args(p)
    p.add_argument(
        "--out", type=Path, default=None, help="also write the quarterly table (Parquet)"
    )

    p = sub.add_parser("fit", help="fit a model and write it as JSON")
    _add_input_args(p)
    p.add_argument("--draws", type=int, default=32, help="parameter draws (Bayesian bootstrap)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("-o", "--output", type=Path, required=True, help="model JSON path")

    p = sub.add_parser("run", help="fit, simulate and write the quarterly table (Parquet)")
    _add_input_args(p)
    _add_sim_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    return parser


def _read(args: argparse.Namespace):
    from forecast.data.readers import read_deal_log

    return read_deal_log(
        args.history, preset=args.preset, shape=args.shape, segment_columns=tuple(args.segment)
    )


def _print_table(fc) -> None:
    q = fc.quarterly()
    cols = ["quarter", "booked_to_date", "mean", "p10", "p50", "p90", "weighted_pipeline"]
    header = f"{'quarter':<11}" + "".join(f"{c:>18}" for c in cols[1:])
    print(header)
    for row in q.select(cols).iter_rows():
        print(f"{row[0]:<11}" + "".join(f"{v:>18,.0f}" for v in row[1:]))


def _fit_and_simulate(log, args, as_of, segment_by):
    import forecast

    cal = forecast.FiscalCalendar(getattr(args, "fiscal_start_month", 1))
    model = forecast.fit(
        log, as_of=as_of, segment_by=segment_by, calendar=cal, n_draws=args.draws, seed=args.seed
    )
    fc = model.simulate(
        log,
        n_paths=args.paths,
        horizon=args.horizon,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
    )
    return model, fc


def _cmd_demo(args: argparse.Namespace) -> int:
    from forecast.datasets import load_sample
    from forecast.datasets.sample import SAMPLE_PARAMETERS

    t0 = time.perf_counter()
    log = load_sample()
    print(f"Sample history: {log}")
    model, fc = _fit_and_simulate(log, args, SAMPLE_PARAMETERS["end"], ("segment",))
    print(
        f"\nFitted as of {model.as_of:%Y-%m-%d}; {fc.n_paths:,} paths; bookings per fiscal quarter:\n"
    )
    _print_table(fc)
    if args.out:
        import io

        from forecast.io import atomic_write_bytes

        buf = io.BytesIO()
        fc.quarterly().write_parquet(buf)
        atomic_write_bytes(args.out, buf.getvalue())
        print(f"\nWrote {args.out}")
    print(f"\nDone in {time.perf_counter() - t0:.1f} s.")
    return EXIT_OK


def _cmd_fit(args: argparse.Namespace) -> int:
    import forecast

    log = _read(args)
    model = forecast.fit(
        log,
        as_of=args.as_of,
        segment_by=tuple(args.segment),
        calendar=forecast.FiscalCalendar(args.fiscal_start_month),
        n_draws=args.draws,
        seed=args.seed,
    )
    model.to_json(args.output)
    print(model.summary())
    print(f"Wrote {args.output}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    log = _read(args)
    _, fc = _fit_and_simulate(log, args, args.as_of, tuple(args.segment))
    import io

    from forecast.io import atomic_write_bytes

    args.output.mkdir(parents=True, exist_ok=True)
    for name, frame in (("quarterly", fc.quarterly()), ("deals", fc.deals())):
        buf = io.BytesIO()
        frame.write_parquet(buf)
        atomic_write_bytes(args.output / f"{name}.parquet", buf.getvalue())
    _print_table(fc)
    print(f"Wrote {args.output}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``forecast`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"demo": _cmd_demo, "fit": _cmd_fit, "run": _cmd_run}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("forecast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DataError, ModelError) as e:
        print(f"forecast: error: {e}", file=sys.stderr)
        return EXIT_DATA
    except (ParameterError, FileNotFoundError) as e:
        print(f"forecast: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ForecastError as e:
        print(f"forecast: error: {e}", file=sys.stderr)
        return EXIT_DATA


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
