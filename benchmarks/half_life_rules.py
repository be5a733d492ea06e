"""Which rule should ``half_life="auto"`` use? Every rule scored from one set of fits.

For each world and origin of ``benchmarks/accuracy.py`` (generator ``default``,
``smooth`` or ``step``), this runs the half-life backtest of ``half_life="auto"``
once on an extended grid (:data:`GRID`) and keeps its CRPS matrix, and fits and
scores the next quarter with every fixed half-life of the grid (the same seeds as
``accuracy.py``). ``fit(half_life="auto")`` with a rule that picks ``h`` fits exactly
as ``fit(half_life=h)`` with the same seed, so the forecast of any rule over any
sub-grid is the fixed-``h`` row its choice points to: every rule of :data:`RULES` is
scored without refitting. The table gives, per generator and rule (or fixed
half-life), next-quarter 80 % / 50 % coverage, relative bias and its z (worlds as
clusters), and the mean CRPS over that of no weighting on the same cases.

Usage::

    python benchmarks/half_life_rules.py --generator step --worlds 12 --save step.parquet
    python benchmarks/half_life_rules.py --generator step --worlds 12 --first-world 12 --save step_b.parquet
    python benchmarks/half_life_rules.py --generator step --fixed 61 45 --save step_61_45.parquet
    python benchmarks/half_life_rules.py --load step.parquet step_b.parquet step_61_45.parquet
    python benchmarks/half_life_rules.py --load step.parquet --by-origin
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import polars as pl
from accuracy import _worlds

import forecast
from forecast._validation import as_datetime
from forecast.backtest import _score_origin, origin_seed
from forecast.calendar import FiscalCalendar
from forecast.datasets import SYNTHETIC_STAGES
from forecast.fit.recency import select_half_life

fitting = importlib.import_module("forecast.fit.fitting")  # `forecast.fit` is the function

#: Candidate half-lives (days) backtested and fitted; None: no weighting.
GRID: tuple[float | None, ...] = (None, 730.0, 365.0, 182.0, 91.0)


class _Choice(Exception):
    """Carries the backtest's choice out of ``fit`` (its point fit is not needed)."""

    def __init__(self, choice: Any) -> None:
        super().__init__()
        self.choice = choice


def _backtest(log: Any, origin: Any, seed: int, cal: FiscalCalendar) -> Any:
    """The ``half_life="auto"`` backtest of ``fit`` at ``origin`` on :data:`GRID`."""
    original = fitting.choose_half_life

    def capture(*args: Any, **kwargs: Any) -> Any:
        raise _Choice(original(*args, **{**kwargs, "grid": GRID}))

    fitting.choose_half_life = capture
    try:
        forecast.fit(log, as_of=origin, segment_by=("segment",), calendar=cal, n_draws=0, seed=seed)
    except _Choice as c:
        return c.choice
    finally:
        fitting.choose_half_life = original
    raise RuntimeError("fit did not run the half-life backtest")  # pragma: no cover


def _world_rows(
    world: int,
    generator: str,
    n_paths: int,
    n_draws: int,
    seed: int,
    fixed: tuple[float, ...] = (),
) -> list[dict]:
    """Backtest scores and fixed-half-life next-quarter rows of one world.

    With ``fixed``, only those half-lives are fitted and no backtest is run (their
    rows are tabulated with a run of the grid loaded alongside).
    """
    cal = FiscalCalendar()
    rows = []
    for crm, origins in _worlds(generator, world):
        log = forecast.read_deal_log(
            crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"]
        )
        for o in origins:
            origin = as_datetime(o, "origin")
            crps = None
            if not fixed:
                choice = _backtest(log, origin, origin_seed(seed + world, origin), cal)
                crps = np.asarray(choice.crps) if choice.scored else None
            for i, h in enumerate(fixed or GRID):
                (r,) = _score_origin(
                    log,
                    origin,
                    1,
                    n_paths,
                    ("segment",),
                    cal,
                    n_draws,
                    seed + world,
                    fit_options={"half_life": h},
                )
                rows.append(
                    {
                        "generator": generator,
                        "world": world,
                        "origin": origin,
                        "half_life": -1.0 if h is None else h,
                        "bt_crps": None if crps is None else crps[i].tolist(),
                        **{k: r[k] for k in ("realised", "mean", "crps", "hit50", "hit80")},
                    }
                )
    return rows


def _one_se(mean: np.ndarray, crps: np.ndarray, scale: float = 1.0) -> int:
    """Least weighting within ``scale`` standard errors of the best (1: ``select_half_life``)."""
    if scale == 1.0:
        return select_half_life([None] * len(mean), crps)[0]
    best = int(np.argmin(mean))
    n = crps.shape[1]
    se = (crps - crps[best]).std(axis=1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(mean))
    return next(i for i in range(len(mean)) if mean[i] - mean[best] <= scale * se[i])


def _rel(mean: np.ndarray, crps: np.ndarray, tol: float) -> int:
    """Least weighting within ``tol`` (relative) of the best mean CRPS."""
    best = mean.min()
    return next(i for i in range(len(mean)) if mean[i] <= best * (1 + tol))


#: name -> (sub-grid, rule(mean, crps) -> index into the sub-grid)
RULES: dict[str, tuple[tuple[float | None, ...], Any]] = {
    "auto (main)": ((None, 730.0, 365.0, 182.0), _one_se),
    "1se +91": (GRID, _one_se),
    "0.5se +91": (GRID, lambda m, c: _one_se(m, c, 0.5)),
    "best +91": (GRID, lambda m, c: int(np.argmin(m))),
    "best main grid": ((None, 730.0, 365.0, 182.0), lambda m, c: int(np.argmin(m))),
    "within 2% +91": (GRID, lambda m, c: _rel(m, c, 0.02)),
    "within 5% +91": (GRID, lambda m, c: _rel(m, c, 0.05)),
}


def _choose(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows of every rule and fixed half-life, labelled ``variant``."""
    out = [
        frame.with_columns(
            pl.when(pl.col("half_life") < 0)
            .then(pl.lit("fixed none"))
            .otherwise(pl.format("fixed {}", pl.col("half_life").cast(pl.Int64)))
            .alias("variant")
        )
    ]
    for _, d in frame.group_by(["generator", "world", "origin"]):
        by_h = dict(zip(d["half_life"].to_list(), d["bt_crps"].to_list()))
        for name, (grid, rule) in RULES.items():
            if by_h.get(-1.0) is None:
                h = -1.0
            else:
                c = np.asarray([by_h[-1.0 if g is None else g] for g in grid])
                h = grid[rule(c.mean(axis=1), c)]
                h = -1.0 if h is None else h
            out.append(d.filter(pl.col("half_life") == h).with_columns(variant=pl.lit(name)))
    return pl.concat(out)


def table(frame: pl.DataFrame) -> pl.DataFrame:
    """Coverage, bias, bias z and CRPS ratio to no weighting per generator and variant."""
    rows = _choose(frame)
    ref = rows.filter(pl.col("variant") == "fixed none").select(
        "generator", "world", "origin", pl.col("crps").alias("crps_none")
    )
    rows = rows.join(ref, on=["generator", "world", "origin"])
    out = []
    for (gen, variant), d in rows.group_by(["generator", "variant"], maintain_order=True):
        w = d.group_by("world").agg((pl.col("mean") - pl.col("realised")).mean().alias("x"))["x"]
        z = (
            float(w.mean()) / (float(w.std()) / math.sqrt(w.len()))  # type: ignore[arg-type]
            if w.len() > 1
            else math.nan
        )
        # the CRPS ratio's standard error with the worlds as clusters (delta method)
        pw = d.group_by("world").agg(pl.col("crps").sum(), pl.col("crps_none").sum())
        a, b = pw["crps"].to_numpy(), pw["crps_none"].to_numpy()
        ratio, k = a.sum() / b.sum(), len(a)
        se = math.sqrt(k / max(k - 1, 1) * np.sum((a - ratio * b) ** 2)) / b.sum()
        out.append(
            {
                "generator": gen,
                "variant": variant,
                "n": d.height,
                "cov80": float(d["hit80"].mean()),  # type: ignore[arg-type]
                "cov50": float(d["hit50"].mean()),  # type: ignore[arg-type]
                "bias": float((d["mean"] - d["realised"]).sum() / d["realised"].sum()),
                "bias_z": z,
                "crps/none": ratio,
                "se": se,
            }
        )
    return pl.DataFrame(out).sort("generator", "variant")


def main(argv: list[str] | None = None) -> int:
    """Run (or load) the fits and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", choices=("default", "smooth", "step"), default="step")
    ap.add_argument("--worlds", type=int, default=12)
    ap.add_argument("--first-world", type=int, default=0)
    ap.add_argument("--paths", type=int, default=500)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--fixed", type=float, nargs="*", default=(), help="only fit these half-lives (days)"
    )
    ap.add_argument("--save", default=None, help="write the rows to this Parquet file")
    ap.add_argument("--load", nargs="*", default=None, help="only tabulate these saved rows")
    ap.add_argument("--by-origin", action="store_true", help="also tabulate per origin")
    args = ap.parse_args(argv)
    if args.load:
        frame = pl.concat([pl.read_parquet(p) for p in args.load], how="vertical_relaxed")
    else:
        t0 = time.perf_counter()
        worlds = range(args.first_world, args.first_world + args.worlds)
        jobs = [
            (w, args.generator, args.paths, args.draws, args.seed, tuple(args.fixed))
            for w in worlds
        ]
        rows: list[dict] = []
        with ProcessPoolExecutor(args.workers) as ex:
            for i, part in enumerate(ex.map(_world_rows, *zip(*jobs))):
                rows.extend(part)
                print(
                    f"{i + 1}/{len(jobs)} worlds, {time.perf_counter() - t0:.0f} s", file=sys.stderr
                )
                if args.save:
                    pl.DataFrame(rows, infer_schema_length=None).write_parquet(args.save)
        frame = pl.DataFrame(rows, infer_schema_length=None)
        if args.fixed:
            print("fixed half-lives only: tabulate with --load, alongside a run of the grid")
            return 0
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200, float_precision=3):
        print(table(frame))
        if args.by_origin:
            for origin, d in frame.group_by("origin", maintain_order=True):
                print(f"origin {origin[0]}")
                print(table(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
