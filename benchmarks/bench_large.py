"""Large-history benchmark: fit a ~10,000,000-event Parquet log and report peak memory.

Writes a synthetic history to a temporary Parquet file (with extra CRM columns
the model does not use), then, in a fresh process so that the figures are the
fit's own, reads it with ``read_deal_log`` (Parquet is scanned: only the mapped
columns are materialised) and fits, with the resident memory of every phase
sampled (``profile_memory.py``). Prints wall times, the per-phase table, peak
resident memory (``ru_maxrss``) and, as the in-run references, the in-memory size
of the event frame, the RSS after importing the package and the time polars takes
to sort the file's table. The headline is the peak over the event frame; the peak
above the import baseline is printed beside it.

Run: ``.venv/bin/python benchmarks/bench_large.py [--events 10000000] [--draws 0]
[--history PATH]`` (``--quick``: 300,000 events; ``--history``: reuse or keep the
generated file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import describe, machine, result, write_results
from profile_memory import report

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from profile_memory import run_phases
from forecast.datasets import SYNTHETIC_STAGES
path, n_draws = sys.argv[1], int(sys.argv[2])
r = run_phases(path, stages=SYNTHETIC_STAGES, segment=["segment"], draws=n_draws,
               simulate=False)
import polars as pl
frame = pl.read_parquet(path)
t0 = time.perf_counter()
frame.sort("deal_id", "timestamp")
r["sort_s"] = time.perf_counter() - t0
print(json.dumps(r))
"""


def write_history(path: Path, events: int) -> None:
    """A synthetic history of about ``events`` events with two CRM columns the model ignores."""
    import polars as pl

    from forecast.datasets import generate_crm

    probe = generate_crm(seed=3).events.height
    # Generate in independent slices (different seeds) to bound the generator's memory.
    slices = max(1, round(events / 1_000_000))
    per_slice = events / slices / probe
    frames = []
    for i in range(slices):
        ev = generate_crm(seed=100 + i, scale=per_slice).events
        frames.append(
            ev.with_columns(
                (pl.lit(f"W{i}-") + pl.col("deal_id")).alias("deal_id"),
                pl.lit("unused free text from the CRM export").alias("Description"),
                pl.col("amount").alias("ExpectedRevenue"),
            )
        )
    pl.concat(frames).write_parquet(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--draws", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300,000 events")
    parser.add_argument("--json", help="write the headline results to this JSON file")
    parser.add_argument(
        "--history",
        help="Parquet history to use; written there (and kept) if it does not exist",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events = 300_000
    info = machine()
    print(describe(info))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.history) if args.history else Path(tmp) / "history.parquet"
        t0 = time.perf_counter()
        if not path.exists():
            write_history(path, args.events)
        t_gen = time.perf_counter() - t0
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(args.draws), str(Path(__file__).parent)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size_mb = path.stat().st_size / 2**20
    print(
        f"history: {r['events']:,} events, {r['deals']:,} deals; Parquet {size_mb:.0f} MB "
        f"(generated in {t_gen:.0f} s); event frame in memory {r['frame_mb']:.0f} MB"
    )
    print(f"{'step':<26}{'seconds':>10}{'× polars sort':>16}")
    read_s = r["phases"][0]["seconds"]
    fit_s = next(p["seconds"] for p in r["phases"] if p["phase"] == "fit")
    for name, secs in (("read_deal_log (scan)", read_s), (f"fit (n_draws={args.draws})", fit_s)):
        print(f"{name:<26}{secs:>10.1f}{secs / r['sort_s']:>16.1f}")
    print(f"{'(polars sort of events)':<26}{r['sort_s']:>10.2f}{1.0:>16.1f}")
    print(report(r))
    r.pop("table")
    print(json.dumps(r))
    label = f"{r['events']:,} events"
    write_results(
        args.json,
        [
            result(
                "large",
                f"read + fit, {label}",
                read_s + fit_s,
                "s",
                "polars sort",
                r["sort_s"],
                "s",
            ),
            result(
                "large",
                f"peak RSS, {label}",
                r["peak_mb"],
                "MB",
                "event frame",
                r["frame_mb"],
                "MB",
            ),
            result(
                "large",
                f"peak RSS above the import baseline ({r['import_mb']:.0f} MB), {label}",
                r["peak_mb"] - r["import_mb"],
                "MB",
                "event frame",
                r["frame_mb"],
                "MB",
            ),
        ],
        machine=info,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
