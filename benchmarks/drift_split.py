"""Where does a drifting market's forecast bias come from: open deals or new deals?

For each world and origin of ``benchmarks/accuracy.py`` (generator ``default``,
``smooth`` or ``step``; ``settled``: the step change made before the history starts,
a stationary market with slow stays and low win odds) and each half-life asked for,
this fits at the origin (the seeds of ``accuracy.py``), simulates the next fiscal
quarter and splits both the
forecast mean and what was booked into the deals open at the origin (``pipeline``)
and the deals created after it (``new``). The table gives, per generator, origin
and half-life (and over every origin: ``origin`` null), each part's relative bias
(forecast mean over booked, minus 1) and its z with the worlds as clusters, and
for the total its 80 % and 50 % interval coverage (the 10–90 % and 25–75 % quantiles
of the paths), mean CRPS and the CRPS ratio to ``--ratio-to`` on the same cases.

Usage::

    python benchmarks/drift_split.py --generator step --worlds 8 --half-lives none 91

A half-life followed by ``+trend`` (e.g. ``none+trend``) fits with the calendar
trend of the exit curves (``fit(..., trend=True)``) at that half-life.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import polars as pl
from accuracy import END, ORIGINS, _worlds

import forecast
from forecast._validation import as_datetime
from forecast.backtest import origin_seed
from forecast.calendar import FiscalCalendar
from forecast.datasets import SYNTHETIC_STAGES, MarketDrift, generate_crm
from forecast.scores import crps_samples


def _histories(generator: str, world: int) -> list[tuple[Any, tuple[str, ...]]]:
    """``accuracy.py``'s worlds, and ``settled``: the step change of ``step`` made
    before the history starts (every visit follows the changed market)."""
    if generator == "settled":
        drift = MarketDrift.step("2000-01-01")
        return [(generate_crm(seed=1000 + world, end=END, drift=drift), ORIGINS)]
    return _worlds(generator, world)


def _half_life(text: str) -> tuple[float | None, bool]:
    """(half-life, trend) of a ``--half-lives`` entry such as ``91`` or ``none+trend``."""
    h, trend = text.removesuffix("+trend"), text.endswith("+trend")
    return (None if h == "none" else float(h)), trend


def _world_rows(
    world: int,
    generator: str,
    half_lives: tuple[tuple[float | None, bool], ...],
    n_paths: int,
    n_draws: int,
) -> list[dict]:
    """Forecast and booked amounts of one world, split into pipeline and new deals."""
    cal = FiscalCalendar()
    rows = []
    for crm, origins in _histories(generator, world):
        log = forecast.read_deal_log(
            crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"]
        )
        for o in origins:
            origin = as_datetime(o, "origin")
            (q,) = cal.quarters(origin, 1)
            won = log.bookings(q.start, q.end)
            created = log.outcomes(q.end).select("deal_id", "created_at")
            won = won.join(created, on="deal_id", how="left")
            new = pl.col("created_at") >= origin
            booked_new = float(won.filter(new)["amount"].fill_null(0.0).sum())
            booked_pipe = float(won.filter(~new)["amount"].fill_null(0.0).sum())
            s = origin_seed(world, origin)
            for h, trend in half_lives:
                model = forecast.fit(
                    log,
                    as_of=origin,
                    segment_by=("segment",),
                    calendar=cal,
                    n_draws=n_draws,
                    seed=s,
                    half_life=h,
                    trend=trend,
                )
                fc = model.simulate(log, n_paths=n_paths, horizon=1, seed=s)
                f = fc.quarterly()
                total = fc.samples[:, 0]
                realised = booked_pipe + booked_new
                q = np.quantile(total, [0.1, 0.25, 0.75, 0.9])
                rows.append(
                    {
                        "generator": generator,
                        "world": world,
                        "origin": origin,
                        "half_life": ("none" if h is None else f"{h:g}")
                        + ("+trend" if trend else ""),
                        "fc_pipeline": float(f["booked_to_date"][0] + f["from_pipeline"][0]),
                        "fc_new": float(f["from_new_deals"][0]),
                        "booked_pipeline": booked_pipe,
                        "booked_new": booked_new,
                        "crps": float(crps_samples(total, realised)),
                        "hit80": bool(q[0] <= realised <= q[3]),
                        "hit50": bool(q[1] <= realised <= q[2]),
                    }
                )
    return rows


def _bias(d: pl.DataFrame, fc: str, booked: str) -> tuple[float, float]:
    """Relative bias of the sum and its z (worlds as clusters)."""
    rel = float(d[fc].sum() / d[booked].sum() - 1.0)
    w = d.group_by("world").agg((pl.col(fc) - pl.col(booked)).mean().alias("x"))["x"]
    sd = float(w.std()) if w.len() > 1 else math.nan  # type: ignore[arg-type]
    return rel, float(w.mean()) / (sd / math.sqrt(w.len()))  # type: ignore[arg-type]


def table(frame: pl.DataFrame, reference: str = "none") -> pl.DataFrame:
    """Relative bias and z of the pipeline part, the new-deal part and the total; the
    total's 80 % and 50 % interval coverage, mean CRPS and its ratio to that of the
    ``reference`` half-life on the same cases (when the rows have them)."""
    frame = frame.with_columns(
        fc_total=pl.col("fc_pipeline") + pl.col("fc_new"),
        booked_total=pl.col("booked_pipeline") + pl.col("booked_new"),
    )
    out = []
    keys = ["generator", "origin", "half_life"]
    every = frame.with_columns(pl.lit(None, dtype=frame["origin"].dtype).alias("origin"))
    for key, d in pl.concat([frame, every]).group_by(keys, maintain_order=True):
        row = dict(zip(keys, key))
        row["n"] = d.height
        row["booked_new_share"] = float(d["booked_new"].sum() / d["booked_total"].sum())
        for part in ("pipeline", "new", "total"):
            rel, z = _bias(d, f"fc_{part}", f"booked_{part}")
            row[f"{part}_bias"] = rel
            row[f"{part}_z"] = z
        if "crps" in d.columns:
            row["cov80"] = float(d["hit80"].mean())  # type: ignore[arg-type]
            row["cov50"] = float(d["hit50"].mean())  # type: ignore[arg-type]
            row["crps"] = float(d["crps"].mean())  # type: ignore[arg-type]
            ref = frame.filter(
                (pl.col("half_life") == reference)
                & (pl.col("generator") == key[0])
                & (pl.lit(True) if key[1] is None else pl.col("origin") == key[1])
            )  # every variant is run on the same cases
            row["crps_ratio"] = (
                float(d["crps"].sum() / ref["crps"].sum()) if ref.height else math.nan
            )
        out.append(row)
    return pl.DataFrame(out).sort(keys, nulls_last=True)


def main(argv: list[str] | None = None) -> int:
    """Run (or load) the fits and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", choices=("default", "smooth", "step", "settled"), default="step")
    ap.add_argument("--worlds", type=int, default=8)
    ap.add_argument("--first-world", type=int, default=0)
    ap.add_argument("--half-lives", nargs="+", default=["none", "91"])
    ap.add_argument("--paths", type=int, default=500)
    ap.add_argument("--draws", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ratio-to", default="none", help="half-life the CRPS ratios refer to")
    ap.add_argument("--save", default=None, help="write the rows to this Parquet file")
    ap.add_argument("--load", nargs="*", default=None, help="only tabulate these saved rows")
    args = ap.parse_args(argv)
    if args.load:
        frame = pl.concat([pl.read_parquet(p) for p in args.load])
    else:
        t0 = time.perf_counter()
        hl = tuple(_half_life(h) for h in args.half_lives)
        worlds = range(args.first_world, args.first_world + args.worlds)
        jobs = [(w, args.generator, hl, args.paths, args.draws) for w in worlds]
        rows: list[dict] = []
        with ProcessPoolExecutor(args.workers) as ex:
            for i, part in enumerate(ex.map(_world_rows, *zip(*jobs))):
                rows.extend(part)
                print(
                    f"{i + 1}/{len(jobs)} worlds, {time.perf_counter() - t0:.0f} s", file=sys.stderr
                )
                if args.save:
                    pl.DataFrame(rows).write_parquet(args.save)
        frame = pl.DataFrame(rows)
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=220, float_precision=3):
        print(table(frame, args.ratio_to))
    return 0


if __name__ == "__main__":
    sys.exit(main())
