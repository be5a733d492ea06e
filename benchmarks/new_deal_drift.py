"""Why a drifting market's new deals are forecast too high: which fitted component carries it.

For each world and origin of ``benchmarks/accuracy.py`` (generator ``smooth`` or
``step``) this fits the drifting history at the origin with one half-life (``A``, the
seeds of ``accuracy.py``, no parameter draws) and, as the oracle, fits without
weighting a world of the same seed whose market is frozen at the drift's value in the
middle of the quarter after the origin (``B``: a :class:`MarketDrift` step made before
the history starts, so that every visit follows the market of that instant). It then
computes, exactly from the outcome arrays (no paths), the expected bookings within
that quarter of the deals created in it under ``A``, under ``A`` with ``B``'s exit
curves, quarter-end effect or amounts swapped in, and under ``B`` (on its own
history), against what the drifting world's new deals booked. A component whose swap
removes the bias is where the bias is; ``p_win`` is the expected new deals' chance
of winning within their quarter (expected wins over expected deals).

Usage::

    python benchmarks/new_deal_drift.py --generator smooth --worlds 12 --half-life 91
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import polars as pl
from accuracy import END, _worlds

import forecast
from forecast._validation import as_datetime
from forecast.backtest import origin_seed
from forecast.calendar import FiscalCalendar
from forecast.datasets import SYNTHETIC_STAGES, MarketDrift, generate_crm
from forecast.simulate import prepare_simulation

#: Long before any generated history: a step made then rules every visit.
_BEFORE_HISTORY = dt.datetime(2000, 1, 1)


def frozen_market(crm: Any, at: dt.datetime) -> MarketDrift:
    """The drift of ``crm`` frozen at its value at ``at`` (a step before the history)."""
    d, start = crm.truth.drift, crm.truth.start
    return MarketDrift(
        step_at=_BEFORE_HISTORY,
        step_win_log_odds=d.win_log_odds(at, start),
        step_pace=d.pace_factor(at, start) - 1.0,
    )


def expected_new(model: Any, log: Any) -> tuple[float, float, float]:
    """Expected new deals in the quarter holding ``model.as_of``, their expected wins
    within it and the expected amount of those wins (currency)."""
    arrays, out, *_ = prepare_simulation(model, log, 1)
    deals = wins = amount = 0.0
    for g in range(len(model.segments)):
        count = float(arrays.new_counts[0, g, 0])
        p = float(out.new_pmf[0, g, 0, 0])
        qe = float(out.new_qe[0, g, 0, 0])

        def mean(csr: tuple[np.ndarray, np.ndarray], g: int = g) -> float:
            off, val = csr
            return float(val[off[g] : off[g + 1]].mean())

        ratio = (1.0 - qe) * mean(arrays.ratio) + qe * mean(arrays.ratio_qe)
        deals += count
        wins += count * p
        amount += count * p * mean(arrays.new_amount) * ratio
    return deals, wins, amount


def _world_rows(world: int, generator: str, half_life: float | None) -> list[dict]:
    """Expected new-deal bookings of every variant at every origin of one world."""
    cal = FiscalCalendar()
    rows = []
    for crm, origins in _worlds(generator, world):
        log = forecast.read_deal_log(
            crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"]
        )
        for o in origins:
            origin = as_datetime(o, "origin")
            (q,) = cal.quarters(origin, 1)
            created = log.outcomes(q.end).select("deal_id", "created_at")
            won = log.bookings(q.start, q.end).join(created, on="deal_id", how="left")
            won = won.filter(pl.col("created_at") >= origin)
            booked = float(won["amount"].fill_null(0.0).sum())
            middle = q.start + (q.end - q.start) / 2
            frozen = generate_crm(
                seed=1000 + world, end=END, drift=frozen_market(crm, max(middle, origin))
            )
            frozen_log = forecast.read_deal_log(
                frozen.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"]
            )
            s = origin_seed(world, origin)
            kw = {"as_of": origin, "segment_by": ("segment",), "calendar": cal, "n_draws": 0}
            a = forecast.fit(log, seed=s, half_life=half_life, **kw)
            b = forecast.fit(frozen_log, seed=s, half_life=None, **kw)
            variants = {
                "fit": (a, log),
                "fit, oracle exit curves": (
                    dataclasses.replace(a, curves=b.curves, pooled_curves=b.pooled_curves),
                    log,
                ),
                "fit, oracle quarter-end effect": (
                    dataclasses.replace(a, quarter_end=b.quarter_end),
                    log,
                ),
                "fit, oracle amounts": (dataclasses.replace(a, amounts=b.amounts), log),
                "oracle": (b, frozen_log),
            }
            for name, (m, lg) in variants.items():
                deals, wins, amount = expected_new(m, lg)
                rows.append(
                    {
                        "world": world,
                        "origin": origin,
                        "variant": name,
                        "fc_deals": deals,
                        "fc_wins": wins,
                        "fc_new": amount,
                        "booked_wins": won.height,
                        "booked_new": booked,
                    }
                )
    return rows


def table(frame: pl.DataFrame) -> pl.DataFrame:
    """Per variant: relative bias of the new deals' bookings, its z (worlds as
    clusters) and the new deals' expected chance of winning within the quarter."""
    out = []
    for (variant,), d in frame.group_by(["variant"], maintain_order=True):
        w = d.group_by("world").agg((pl.col("fc_new") - pl.col("booked_new")).mean().alias("x"))
        x = w["x"].to_numpy()
        se = float(x.std(ddof=1)) / math.sqrt(x.size) if x.size > 1 else math.nan
        out.append(
            {
                "variant": variant,
                "n": d.height,
                "new_bias": float(d["fc_new"].sum() / d["booked_new"].sum() - 1.0),
                "new_z": float(x.mean()) / se,
                "wins_bias": float(d["fc_wins"].sum() / d["booked_wins"].sum() - 1.0),
                "p_win": float(d["fc_wins"].sum() / d["fc_deals"].sum()),
            }
        )
    return pl.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    """Run the fits and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", choices=("smooth", "step"), default="smooth")
    ap.add_argument("--worlds", type=int, default=12)
    ap.add_argument("--half-life", default="91", help="days, or 'none'")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    h = None if args.half_life == "none" else float(args.half_life)
    t0 = time.perf_counter()
    rows: list[dict] = []
    jobs = [(w, args.generator, h) for w in range(args.worlds)]
    with ProcessPoolExecutor(args.workers) as ex:
        for i, part in enumerate(ex.map(_world_rows, *zip(*jobs))):
            rows.extend(part)
            print(f"{i + 1}/{len(jobs)} worlds, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    with pl.Config(tbl_rows=20, tbl_cols=10, tbl_width_chars=160, float_precision=3):
        print(table(pl.DataFrame(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
