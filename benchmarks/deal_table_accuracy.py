"""Forecasts from the one-row-per-deal report alone: the export finance actually has.

Each world is ``generate_crm(seed=1000 + w, end=END)``. At each of ``ORIGINS``
(four consecutive fiscal quarter starts, as in ``benchmarks/accuracy.py``) the
report a CRM would have exported that day is rendered
(:func:`forecast.datasets.deal_table_at`: every deal created by then, one row each,
with its stage or outcome, amount, close date, creation date and segment — no stage
history), read with ``read_deal_log(table, shape="deals")``, fitted at the origin
and simulated. Every forecast is scored against the bookings of the world's full
event log.

Variants:

- ``deal_level``  ``fit(..., model_kind="auto")``, which for a one-row-per-deal table
  is the deal-level model (competing risks on the age since creation);
- ``stages``      ``model_kind="stages"``: the stage model on the stage path the reader
  makes up for such a table (what a one-row-per-deal table got before the deal-level
  model existed);
- ``event_log``   the stage model on the full event log (the reference: what the same
  history gives when its stage changes were kept);
- ``recent_only`` the deal-level model on a report of the open deals and the deals
  closed in the last 92 days only (a common report filter; the model's assumption
  that the table holds every deal since the history's start fails: deals that closed
  earlier are missing, so the older the deal, the likelier it is to be one that
  lived long — see the README).

Usage::

    python benchmarks/deal_table_accuracy.py                     # 30 worlds, every variant
    python benchmarks/deal_table_accuracy.py --worlds 4 --paths 500 --draws 4
    python benchmarks/deal_table_accuracy.py --variants deal_level
    python benchmarks/deal_table_accuracy.py --quick    # 1 world, deal_level and event_log

Targets (next quarter): 80 % coverage in [0.72, 0.88], |bias| ≤ 10 %.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import polars as pl
from _common import describe, machine, result, write_results

import forecast
from forecast._validation import as_datetime
from forecast.backtest import _score_origin
from forecast.calendar import FiscalCalendar
from forecast.datasets import SYNTHETIC_STAGES, deal_table_at, export_snapshots, generate_crm
from forecast.scores import wilson_interval

END = "2025-07-01"
ORIGINS = ("2024-04-01", "2024-07-01", "2024-10-01", "2025-01-01")
HORIZON = 2
VARIANTS = ("deal_level", "stages", "event_log", "recent_only")
#: ``recent_only``: closed deals stay in the report this many days after closing.
RECENT_DAYS = 92


def world_cases(
    world: int,
    variants: tuple[str, ...],
    n_paths: int,
    n_draws: int,
    seed: int,
    *,
    origins: tuple[str, ...] = ORIGINS,
    horizon: int = HORIZON,
    scale: float = 1.0,
    end: str = END,
) -> list[dict[str, Any]]:
    """Scored (variant, origin, step) rows of one world."""
    crm = generate_crm(seed=1000 + world, end=end, scale=scale)
    full = forecast.read_deal_log(crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
    cal = FiscalCalendar()
    rows = []
    for o in origins:
        origin = as_datetime(o, "origin")
        table = None
        for variant in variants:
            if variant == "event_log":
                log, kind = full, "stages"
            elif variant == "recent_only":
                recent = export_snapshots(
                    crm.events, [origin], stages=SYNTHETIC_STAGES, keep_closed_days=RECENT_DAYS
                ).drop("export_date")
                log = forecast.read_deal_log(
                    recent, shape="deals", stages=SYNTHETIC_STAGES, segment_columns=["segment"]
                )
                kind = "auto"
            else:
                if table is None:
                    table = forecast.read_deal_log(
                        deal_table_at(crm.events, origin),
                        shape="deals",
                        stages=SYNTHETIC_STAGES,
                        segment_columns=["segment"],
                    )
                log, kind = table, ("auto" if variant == "deal_level" else "stages")
            for r in _score_origin(
                log,
                origin,
                horizon,
                n_paths,
                ("segment",),
                cal,
                n_draws,
                seed + world,
                fit_options={"model_kind": kind},
                truth=full,
            ):
                rows.append({"world": world, "variant": variant, **r})
    return rows


def bias_and_se(d: pl.DataFrame) -> tuple[float, float]:
    """Relative bias of the forecast mean, ``Σ(mean − realised) / Σ realised``, and its
    standard error over the cases (``sd(mean − realised) √n / Σ realised``)."""
    err = (d["mean"] - d["realised"]).to_numpy()
    total = float(d["realised"].sum())
    n = err.size
    se = float(err.std(ddof=1) * math.sqrt(n) / total) if n > 1 else math.inf
    return float(err.sum() / total), se


def table(frame: pl.DataFrame) -> pl.DataFrame:
    """Coverage, CRPS and bias per variant and horizon step."""
    out = []
    done = frame.filter(pl.col("realised").is_not_null())
    for (variant, step), d in done.group_by(["variant", "step"], maintain_order=True):
        n = d.height
        h80, h50 = int(d["hit80"].sum()), int(d["hit50"].sum())
        lo80, hi80 = wilson_interval(h80, n)
        lo50, hi50 = wilson_interval(h50, n)
        bias, se = bias_and_se(d)
        out.append(
            {
                "variant": variant,
                "step": step,
                "n": n,
                "cov80": h80 / n,
                "cov80_ci": f"[{lo80:.2f}, {hi80:.2f}]",
                "cov50": h50 / n,
                "cov50_ci": f"[{lo50:.2f}, {hi50:.2f}]",
                "crps": float(d["crps"].mean()),
                "bias": bias,
                "bias_se": se,
                "mean_pit": float(d["pit"].mean()),
            }
        )
    return pl.DataFrame(out).sort(["variant", "step"])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=30)
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"subset of {VARIANTS}")
    ap.add_argument("--save", default=None, help="write the per-case rows to this Parquet file")
    ap.add_argument(
        "--quick", action="store_true", help="1 world, 300 paths, 2 draws, deal_level and event_log"
    )
    ap.add_argument("--json", help="write the headline results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.worlds, args.paths, args.draws, args.workers = 1, 300, 2, 1
        args.variants = ["deal_level", "event_log"]
    variants = tuple(args.variants)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; expected a subset of {list(VARIANTS)}")
    info = machine()
    print(describe(info))
    t0 = time.perf_counter()
    jobs = [(w, variants, args.paths, args.draws, args.seed) for w in range(args.worlds)]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as ex:
            parts = list(ex.map(world_cases, *zip(*jobs)))
    else:
        parts = [world_cases(*j) for j in jobs]
    frame = pl.DataFrame([r for p in parts for r in p], infer_schema_length=None)
    if args.save:
        frame.write_parquet(args.save)
    with pl.Config(tbl_rows=100, tbl_cols=30, tbl_width_chars=250, float_precision=3):
        print(
            f"{args.worlds} worlds × {len(ORIGINS)} origins, horizon {HORIZON}, {args.paths} "
            f"paths, {args.draws} draws, seed {args.seed}; the one-row-per-deal report exported "
            "at each origin, scored against the full event log's bookings"
        )
        print(table(frame))
    print(f"elapsed {time.perf_counter() - t0:.0f} s")
    write_results(args.json, headline(frame), machine=info)
    return 0


def headline(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Next-quarter mean CRPS of each report variant against the full event log's, on
    the same (world, origin) cases (rows for ``run_all.py``; none without ``event_log``)."""
    done = frame.filter(pl.col("realised").is_not_null() & (pl.col("step") == 1))
    reference = done.filter(pl.col("variant") == "event_log")
    if reference.is_empty():
        return []
    keys = ["world", "origin"]
    rows = []
    for variant, label in (
        ("deal_level", "deal-level model"),
        ("stages", "stage model"),
        ("recent_only", "deal-level model, recent-only report"),
    ):
        d = done.filter(pl.col("variant") == variant).join(
            reference.select(*keys, pl.col("crps").alias("crps_full")), on=keys
        )
        if d.is_empty():
            continue
        rows.append(
            result(
                "deal_table_accuracy",
                f"next-quarter mean CRPS, {label} from the report alone ({d.height} cases)",
                float(d["crps"].mean()),
                "currency",
                "the same cases from the full event log",
                float(d["crps_full"].mean()),
                "currency",
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
