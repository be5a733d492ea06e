"""Mean forecast vs mean bookings over independent synthetic worlds (the calibration check).

For each of ``--worlds`` worlds generated with the same parameters, fit at
``--as-of``, simulate, and compare each quarter's mean forecast with what the
world then booked (:func:`forecast.datasets.calibration.forecast_vs_bookings`).
Prints, per quarter, the two means, the mean difference, its standard error
(sd / sqrt(worlds)) and z, split into today's pipeline and deals created after the
as-of date.

Run: ``.venv/bin/python benchmarks/calibration.py [--worlds 60] [--no-shrink]``
(``--quick``: 3 worlds, 300 paths, 2 draws).
"""

from __future__ import annotations

import argparse
import time

from _common import describe, machine, result, write_results

from forecast.datasets.calibration import forecast_vs_bookings, summarise_bias


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=60)
    parser.add_argument("--as-of", default="2025-01-01")
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--no-shrink", action="store_true")
    parser.add_argument("--first-seed", type=int, default=500, help="world i uses seed first + i")
    parser.add_argument("--sigma-shock", type=float, default=0.3, help="generator's shock sd")
    parser.add_argument("--pull-in", type=float, default=0.4, help="generator's pull-in")
    parser.add_argument("--scale", type=float, default=1.0, help="generator's arrival scale")
    parser.add_argument("--quick", action="store_true", help="3 worlds, 300 paths, 2 draws")
    parser.add_argument("--json", help="write the headline results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.worlds, args.paths, args.draws = 3, 300, 2
    info = machine()
    print(describe(info))

    t0 = time.perf_counter()
    table = forecast_vs_bookings(
        args.worlds,
        as_of=args.as_of,
        horizon=args.horizon,
        n_paths=args.paths,
        n_draws=args.draws,
        first_seed=args.first_seed,
        shrink=not args.no_shrink,
        sigma_shock=args.sigma_shock,
        pull_in=args.pull_in,
        scale=args.scale,
    )
    summary = summarise_bias(table)
    print(
        f"{args.worlds} worlds (seeds {args.first_seed}..{args.first_seed + args.worlds - 1}), "
        f"as of {args.as_of}, shrink={not args.no_shrink}, generator sigma_shock="
        f"{args.sigma_shock}, pull_in={args.pull_in}, scale={args.scale}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(
        f"{'quarter':<11}{'part':<10}{'forecast':>12}{'booked':>12}{'diff':>10}"
        f"{'rel':>8}{'se':>10}{'z':>7}"
    )
    for r in summary.iter_rows(named=True):
        print(
            f"{r['quarter']:<11}{r['part']:<10}{r['forecast']:>12,.0f}{r['booked']:>12,.0f}"
            f"{r['difference']:>10,.0f}{r['relative']:>+8.1%}{r['se']:>10,.0f}{r['z']:>7.2f}"
        )
    rows = [
        result(
            "calibration",
            f"mean forecast, {r['quarter']} ({args.worlds} worlds, z = {r['z']:+.2f})",
            r["forecast"],
            "currency",
            "mean booked",
            r["booked"],
            "currency",
        )
        for r in summary.filter(summary["part"] == "total").iter_rows(named=True)
    ]
    write_results(args.json, rows, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
