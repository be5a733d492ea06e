"""Mean forecast vs mean bookings over independent synthetic worlds (issue 4's check).

For each of ``--worlds`` worlds generated with the same parameters, fit at
``--as-of``, simulate, and compare each quarter's mean forecast with what the
world then booked. Prints, per quarter, the two means, the mean difference,
its standard error (sd / sqrt(worlds)) and z, split into today's pipeline and
deals created after the as-of date.

Run: ``.venv/bin/python benchmarks/calibration.py [--worlds 24] [--no-shrink]``.
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np
import polars as pl

import forecast
from forecast.datasets import generate_crm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=24)
    parser.add_argument("--as-of", default="2025-01-01")
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--no-shrink", action="store_true")
    parser.add_argument("--sigma-shock", type=float, default=0.3, help="generator's shock sd")
    parser.add_argument("--pull-in", type=float, default=0.4, help="generator's pull-in")
    args = parser.parse_args()

    as_of = dt.datetime.fromisoformat(args.as_of)
    quarters = forecast.FiscalCalendar().quarters(as_of, args.horizon)
    end = quarters[-1].end
    rows = []
    for i in range(args.worlds):
        world = generate_crm(
            seed=500 + i,
            start="2022-01-01",
            end=end,
            sigma_shock=args.sigma_shock,
            pull_in=args.pull_in,
        )
        log = forecast.read_deal_log(
            world.events, stages=world.stage_map, segment_columns=("segment",)
        )
        model = forecast.fit(
            log,
            as_of=as_of,
            segment_by=["segment"],
            n_draws=args.draws,
            seed=i,
            shrink=not args.no_shrink,
        )
        fc = model.simulate(log, n_paths=args.paths, horizon=args.horizon, seed=i)
        open_ids = log.pipeline(as_of)["deal_id"].implode()
        for qi, q in enumerate(quarters):
            b = log.bookings(max(q.start, as_of), q.end)
            from_pipe = float(b.filter(pl.col("deal_id").is_in(open_ids))["amount"].sum())
            rows.append(
                (
                    qi,
                    float(fc.totals[:, qi, :, 0].sum(axis=1).mean()),
                    from_pipe,
                    float(fc.totals[:, qi, :, 1].sum(axis=1).mean()),
                    float(b["amount"].sum()) - from_pipe,
                )
            )
    r = np.array(rows)
    print(
        f"{args.worlds} worlds, as of {as_of:%Y-%m-%d}, shrink={not args.no_shrink}, "
        f"generator sigma_shock={args.sigma_shock}, pull_in={args.pull_in}"
    )
    print(
        f"{'quarter':<11}{'part':<10}{'forecast':>12}{'booked':>12}{'diff':>10}{'se':>10}{'z':>7}"
    )
    for qi, q in enumerate(quarters):
        sel = r[r[:, 0] == qi]
        parts = {"pipeline": (1, 2), "new": (3, 4), "total": None}
        for name, cols in parts.items():
            f = sel[:, 1] + sel[:, 3] if cols is None else sel[:, cols[0]]
            o = sel[:, 2] + sel[:, 4] if cols is None else sel[:, cols[1]]
            d = f - o
            se = d.std(ddof=1) / np.sqrt(len(d))
            print(
                f"{q.label:<11}{name:<10}{f.mean():>12,.0f}{o.mean():>12,.0f}"
                f"{d.mean():>10,.0f}{se:>10,.0f}{d.mean() / se:>7.2f}"
            )


if __name__ == "__main__":
    main()
