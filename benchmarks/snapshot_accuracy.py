"""What a forecast loses when only weekly exports were kept, not the event log.

Each world is ``generate_crm(seed=1000 + w, end=END)``. The same history is read
twice: as its full event log, and as the folder of weekly one-row-per-deal exports a
finance team would have saved (``forecast.datasets.write_exports``: every deal
created by the export date, in its state that day, one Parquet file per week from
the world's start, named ``pipeline_YYYY-MM-DD``), read with
``read_deal_log(folder, shape="snapshots")``. From each of ``ORIGINS`` (four
consecutive fiscal quarter starts, as in ``benchmarks/accuracy.py``; the weekly
exports do not fall on them, so the snapshot forecast starts from an export up to
six days old) both are fitted and simulated with the same seed, and both are
scored against the bookings of the full event log.

The table gives, per horizon step, mean CRPS from each source, their ratio with a
delta-method standard error over the paired cases, 80 % coverage and the relative
bias of the mean; then how faithfully the exports rebuilt the history (wins with
their exact date and amount, completed stage visits seen).

Usage::

    python benchmarks/snapshot_accuracy.py                 # 12 worlds
    python benchmarks/snapshot_accuracy.py --worlds 3 --paths 1000 --draws 4

Target: weekly exports no worse than 1.15 × the CRPS of the full event log.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import polars as pl
from _common import describe, machine, result, write_results

import forecast
from forecast._validation import as_datetime
from forecast.backtest import _score_origin
from forecast.calendar import FiscalCalendar
from forecast.datasets import SYNTHETIC_STAGES, export_dates, generate_crm, write_exports

END = "2025-07-01"
ORIGINS = ("2024-04-01", "2024-07-01", "2024-10-01", "2025-01-01")
HORIZON = 2
TARGET = 1.15


def read_both(world: int, *, scale: float = 1.0, end: str = END) -> dict[str, Any]:
    """The full event log and the weekly-exports log of one world, and rebuild stats."""
    crm = generate_crm(seed=1000 + world, end=end, scale=scale)
    full = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    with tempfile.TemporaryDirectory() as folder:
        write_exports(
            crm.events, folder, export_dates(crm.truth.start, end, 7), file_format="parquet"
        )
        weekly = forecast.read_deal_log(
            folder, shape="snapshots", stages=SYNTHETIC_STAGES, segment_columns=["segment"]
        )
    last_export = weekly.last_timestamp
    true_wins = full.bookings(full.first_timestamp, last_export)
    seen = weekly.bookings(weekly.first_timestamp, last_export)
    exact = true_wins.join(seen, on=["deal_id", "won_at", "amount"], how="inner").height

    def visits(log: forecast.DealLog) -> int:
        return log.spells(last_export).filter(~pl.col("censored")).height

    return {
        "full": full,
        "weekly": weekly,
        "wins": true_wins.height,
        "wins_exact": exact,
        "events_full": full.events.height,
        "events_weekly": weekly.events.height,
        "visits_full": visits(full),
        "visits_weekly": visits(weekly),
    }


def world_cases(
    world: int,
    n_paths: int,
    n_draws: int,
    seed: int,
    origins: tuple[str, ...] = ORIGINS,
    horizon: int = HORIZON,
    scale: float = 1.0,
    end: str = END,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scored (origin, step, source) rows of one world, and its rebuild stats."""
    logs = read_both(world, scale=scale, end=end)
    cal = FiscalCalendar()
    rows = []
    for o in origins:
        for source in ("full", "weekly"):
            for r in _score_origin(
                logs[source],
                as_datetime(o, "origin"),
                horizon,
                n_paths,
                ("segment",),
                cal,
                n_draws,
                seed + world,
                truth=logs["full"],
            ):
                rows.append({"world": world, "source": source, **r})
    stats = {k: v for k, v in logs.items() if k not in ("full", "weekly")}
    return rows, {"world": world, **stats}


def paired(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (world, origin, step) with both sources' scores side by side."""
    keep = ["world", "origin", "step", "realised", "mean", "crps", "hit80"]
    done = frame.filter(pl.col("realised").is_not_null()).select("source", *keep)
    full = done.filter(pl.col("source") == "full").drop("source")
    weekly = done.filter(pl.col("source") == "weekly").drop("source", "realised")
    return full.join(weekly, on=["world", "origin", "step"], suffix="_weekly")


def crps_ratio(cases: pl.DataFrame) -> tuple[float, float]:
    """Ratio of mean CRPS (weekly / full) and its delta-method standard error.

    ``R = mean(w) / mean(f)``; over ``n`` paired cases ``se(R) = sd(w - R f) /
    (sqrt(n) mean(f))``.
    """
    f = cases["crps"].to_numpy()
    w = cases["crps_weekly"].to_numpy()
    n = len(f)
    ratio = float(w.mean() / f.mean())
    resid = w - ratio * f
    se = float(resid.std(ddof=1) / (math.sqrt(n) * f.mean())) if n > 1 else math.inf
    return ratio, se


def table(frame: pl.DataFrame) -> pl.DataFrame:
    """Summary per horizon step (see the module docstring)."""
    out = []
    cases = paired(frame)
    for (step,), d in cases.group_by(["step"], maintain_order=True):
        ratio, se = crps_ratio(d)
        real = float(d["realised"].sum())
        out.append(
            {
                "step": step,
                "n": d.height,
                "crps_full": float(d["crps"].mean()),
                "crps_weekly": float(d["crps_weekly"].mean()),
                "ratio": ratio,
                "ratio_se": se,
                "cov80_full": float(d["hit80"].mean()),
                "cov80_weekly": float(d["hit80_weekly"].mean()),
                "bias_full": float(d["mean"].sum() / real - 1.0),
                "bias_weekly": float(d["mean_weekly"].sum() / real - 1.0),
            }
        )
    return pl.DataFrame(out).sort("step")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=12)
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--save", default=None, help="write the per-case rows to this Parquet file")
    ap.add_argument("--quick", action="store_true", help="1 world, 300 paths, 2 draws")
    ap.add_argument("--json", help="write the headline results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.worlds, args.paths, args.draws, args.workers = 1, 300, 2, 1
    info = machine()
    print(describe(info))
    t0 = time.perf_counter()
    jobs = [(w, args.paths, args.draws, args.seed) for w in range(args.worlds)]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as ex:
            parts = list(ex.map(world_cases, *zip(*jobs)))
    else:
        parts = [world_cases(*j) for j in jobs]
    frame = pl.DataFrame([r for rows, _ in parts for r in rows], infer_schema_length=None)
    stats = pl.DataFrame([s for _, s in parts])
    if args.save:
        frame.write_parquet(args.save)
    with pl.Config(tbl_rows=100, tbl_cols=30, tbl_width_chars=250, float_precision=3):
        print(
            f"{args.worlds} worlds × {len(ORIGINS)} origins, horizon {HORIZON}, "
            f"{args.paths} paths, {args.draws} draws, seed {args.seed}; weekly exports vs the "
            f"full event log (target: ratio <= {TARGET})"
        )
        print(table(frame))
        print("History rebuilt from the weekly exports:")
        print(stats)
        ratio, se = crps_ratio(paired(frame))
        print(f"All steps: CRPS ratio {ratio:.3f} ± {se:.3f} (target <= {TARGET})")
    print(f"elapsed {time.perf_counter() - t0:.0f} s")
    pairs = paired(frame)
    weekly, full = float(pairs["crps_weekly"].mean()), float(pairs["crps"].mean())
    rows = [
        result(
            "snapshot_accuracy",
            f"mean CRPS from weekly exports ({pairs.height} paired cases)",
            weekly,
            "currency",
            "the same cases from the full event log",
            full,
            "currency",
            ratio=ratio,
        )
    ]
    write_results(args.json, rows, machine=info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
