"""Large-history benchmark: fit a ~10,000,000-event Parquet log and report peak memory.

Writes a synthetic history to a temporary Parquet file (with extra CRM columns
the model does not use), then, in a fresh process so that the figures are the
fit's own, reads it with ``read_deal_log`` (Parquet is scanned: only the mapped
columns are materialised) and fits. Prints wall times, peak resident memory
(``ru_maxrss``) and, as the in-run reference, the in-memory size of the event
frame and the time polars takes to sort it.

Run: ``.venv/bin/python benchmarks/bench_large.py [--events 10000000] [--draws 0]``
(``--quick``: 300,000 events).
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

_CHILD = r"""
import json, resource, sys, time
import polars as pl
import forecast
from forecast.datasets import SYNTHETIC_STAGES
path, n_draws = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
log = forecast.read_deal_log(path, stages=SYNTHETIC_STAGES, segment_columns=["segment"])
t_read = time.perf_counter() - t0
rss_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
log.events.sort("deal_id", "timestamp")
t_sort = time.perf_counter() - t0
t0 = time.perf_counter()
model = forecast.fit(log, segment_by=["segment"], n_draws=n_draws)
t_fit = time.perf_counter() - t0
print(json.dumps({
    "events": log.events.height, "deals": log.n_deals,
    "frame_mb": log.events.estimated_size("mb"),
    "read_s": t_read, "fit_s": t_fit, "sort_s": t_sort,
    "peak_rss_mb_after_read": rss_read / 1024,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--draws", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300,000 events")
    parser.add_argument("--json", help="write the headline results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = 300_000
    info = machine()
    print(describe(info))

    import polars as pl

    from forecast.datasets import generate_crm

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.parquet"
        t0 = time.perf_counter()
        probe = generate_crm(seed=3).events.height
        # Generate in independent slices (different seeds) to bound the generator's memory.
        slices = max(1, round(args.events / 1_000_000))
        per_slice = args.events / slices / probe
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
        del frames
        t_gen = time.perf_counter() - t0
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(args.draws)],
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
    for name, key in (("read_deal_log (scan)", "read_s"), (f"fit (n_draws={args.draws})", "fit_s")):
        print(f"{name:<26}{r[key]:>10.1f}{r[key] / r['sort_s']:>16.1f}")
    print(f"{'(polars sort of events)':<26}{r['sort_s']:>10.2f}{1.0:>16.1f}")
    print(
        f"peak RSS after read: {r['peak_rss_mb_after_read']:,.0f} MB; "
        f"peak RSS after fit: {r['peak_rss_mb']:,.0f} MB "
        f"({r['peak_rss_mb'] / r['frame_mb']:.1f}× the event frame; machine has 24 GiB)"
    )
    print(json.dumps(r))
    label = f"{r['events']:,} events"
    write_results(
        args.json,
        [
            result(
                "large",
                f"read + fit, {label}",
                r["read_s"] + r["fit_s"],
                "s",
                "polars sort",
                r["sort_s"],
                "s",
            ),
            result(
                "large",
                f"peak RSS, {label}",
                r["peak_rss_mb"],
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
