"""Accuracy benchmark: rolling-origin backtests over independent synthetic worlds.

Each world is ``generate_crm(seed=1000 + w, end=END)`` (independent arrivals,
journeys and quarterly shocks); each is backtested from ``ORIGINS`` (four
consecutive fiscal quarter starts, the last one two quarters before ``END``) with
a two-quarter horizon, so there are ``4 × worlds`` next-quarter cases (step 1)
and as many two-quarters-ahead ones (step 2). The table gives, per
model variant and horizon step, 50 % / 80 % interval coverage with 95 % Wilson
intervals, mean CRPS, the weighted pipeline's mean absolute error and the ratio
of the two, CRPS skill against the baselines, the relative bias of the forecast
mean and the mean PIT.

Variants (``--ablation``), each switching one model component off:

- ``full``          the model as fitted;
- ``no_shocks``     shared quarterly shock sigma set to 0 (point fit and draws);
- ``no_draws``      no parameter draws (``n_draws=0``);
- ``no_pull_in``    quarter-end pull-in probability set to 0;
- ``no_shrinkage``  segment curves not shrunk toward the pooled fit (``shrink=False``);
- ``no_age``        open deals simulated as if they had just entered their stage
  (every ``days_in_stage`` taken as 0);
- ``half_life_none``, ``half_life_auto``, ``half_life_<days>``: the recency
  half-life of the fit (``full`` uses the default, ``"auto"``);
- ``shock_<sigma>``: the shock sigma set to a value in the point fit and every draw
  (e.g. ``shock_0.3``, the generator's; a diagnosis of what the fit misses).

Generators (``--generator``): ``default`` (a stationary market); ``smooth`` (win
odds and pace drifting steadily, :meth:`MarketDrift.smooth` defaults: log-odds
−0.3 and sojourns +20 % per year); ``step`` (a step change on 2023-10-01, two quarters before the first origin,
:meth:`MarketDrift.step` defaults: log-odds −0.7 and sojourns +50 %); ``midstream``
(the log recorded from 2023-01-01, with the deals then open already in progress).
``young6`` and ``young9`` forecast the next quarter from the first 6 and 9 months of
closed deals: of a history starting on 2022-01-01 (origins 2022-07-01 and
2022-10-01, one case per world) and of one recorded from 2023-01-01 mid-stream
(origins 2023-07-01 and 2023-10-01) — two cases per world each.
- ``no_covariates`` no deal covariates (``covariates=()``: the model before them);
- ``amount_only``   the only built-in candidate is ``amount`` (plus the world's user
  columns);
- ``close_dates``   the built-in candidates with the close-date ones
  (``amount``, ``days_to_close``, ``pushes``; plus the world's user columns).
- ``overdue``       ``close_dates`` and the timing covariate ``overdue`` (1 once the
  current close date has passed);
- ``overdue_pushes`` ``amount``, ``pushes`` and ``overdue``.

Worlds (``--world``): ``default`` (the generator's defaults), or with the deal
covariate traps of :func:`forecast.datasets.generate_crm`: ``size``
(``size_effect``), ``push`` (``push_effect``), ``category`` (``category_effect``;
the model is offered ``lead_source``, which has an effect, and ``product_line``,
which has none), ``all`` (the three together).

Usage::

    python benchmarks/accuracy.py                    # full model, 12 worlds
    python benchmarks/accuracy.py --ablation         # all variants
    python benchmarks/accuracy.py --worlds 4 --paths 500 --draws 4   # quick look
    python benchmarks/accuracy.py --generator smooth --variants half_life_none full
    python benchmarks/accuracy.py --generator young6 --worlds 30
    python benchmarks/accuracy.py --world size --variants full no_covariates
    python benchmarks/accuracy.py --variants full close_dates no_covariates --ratio-to no_covariates
    python benchmarks/accuracy.py --quick            # smoke run: 1 world, 300 paths, 2 draws

Targets (next quarter, >= 40 cases): 80 % coverage in [0.72, 0.88],
50 % coverage in [0.42, 0.58], mean CRPS <= 0.6 × the weighted pipeline's MAE, and
the mean forecast within 3 standard errors of the mean bookings (``bias_z``: the
mean of forecast mean − realised over its standard error, the worlds as clusters).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import polars as pl
from _common import describe, machine, result, write_results

import forecast
import forecast.simulate as simulate_module
from forecast._validation import as_datetime
from forecast.backtest import BASELINES, BacktestResult, _score_origin, origin_seed  # noqa: F401
from forecast.calendar import FiscalCalendar
from forecast.datasets import SYNTHETIC_STAGES, MarketDrift, generate_crm
from forecast.scores import skill, wilson_interval

END = "2025-07-01"
ORIGINS = ("2024-04-01", "2024-07-01", "2024-10-01", "2025-01-01")
HORIZON = 2
VARIANTS = (
    "full",
    "no_shocks",
    "no_draws",
    "no_pull_in",
    "no_shrinkage",
    "no_age",
    "no_covariates",
    "amount_only",
    "close_dates",
)
WORLDS: dict[str, dict[str, bool]] = {
    "default": {},
    "size": {"size_effect": True},
    "push": {"push_effect": True},
    "category": {"category_effect": True},
    "all": {"size_effect": True, "push_effect": True, "category_effect": True},
}
#: The generator's user columns (``category_effect``), offered to the model as covariates.
USER_COLUMNS = ("lead_source", "product_line")
GENERATORS = ("default", "smooth", "step", "midstream", "young6", "young9")
#: Start of the recorded log of the mid-stream worlds (the process starts 2022-01-01).
RECORDED_FROM = "2023-01-01"
#: Date of the step change of the ``step`` worlds (two quarters before the first origin).
STEP_AT = "2023-10-01"


def _worlds(generator: str, world: int, kind: str = "default") -> list[tuple[Any, tuple[str, ...]]]:
    """(generated world, origins) pairs of one world index under ``generator``.

    ``kind`` adds the deal covariate traps of :data:`WORLDS` (default world only for
    the drifting generators, which the proportional-hazard journeys do not support).
    """
    seed = 1000 + world
    traps = WORLDS[kind]
    if generator == "smooth":
        return [(generate_crm(seed=seed, end=END, drift=MarketDrift.smooth()), ORIGINS)]
    if generator == "step":
        return [(generate_crm(seed=seed, end=END, drift=MarketDrift.step(STEP_AT)), ORIGINS)]
    if generator == "midstream":
        return [(generate_crm(seed=seed, end=END, recorded_from=RECORDED_FROM, **traps), ORIGINS)]
    if generator in ("young6", "young9"):
        months = 6 if generator == "young6" else 9
        fresh = generate_crm(seed=seed, end="2023-07-01")
        mid = generate_crm(seed=seed, end="2024-07-01", recorded_from=RECORDED_FROM)
        o_fresh = "2022-07-01" if months == 6 else "2022-10-01"
        o_mid = "2023-07-01" if months == 6 else "2023-10-01"
        return [(fresh, (o_fresh,)), (mid, (o_mid,))]
    return [(generate_crm(seed=seed, end=END, **traps), ORIGINS)]


def _no_shocks(model: Any) -> Any:
    draws = model.draws
    if draws is not None:
        draws = dataclasses.replace(draws, shock_sigma=np.zeros_like(draws.shock_sigma))
    return model.replace(shocks=dataclasses.replace(model.shocks, sigma=0.0), draws=draws)


def _shock_sigma(sigma: float) -> Any:
    def transform(model: Any) -> Any:
        draws = model.draws
        if draws is not None:
            draws = dataclasses.replace(draws, shock_sigma=np.full_like(draws.shock_sigma, sigma))
        return model.replace(shocks=dataclasses.replace(model.shocks, sigma=sigma), draws=draws)

    return transform


def _no_pull_in(model: Any) -> Any:
    draws = model.draws
    if draws is not None:
        draws = dataclasses.replace(draws, pull_in=np.zeros_like(draws.pull_in))
    return model.replace(quarter_end=dataclasses.replace(model.quarter_end, pi=0.0), draws=draws)


def _variant(name: str, n_draws: int) -> tuple[dict[str, Any], Any, int]:
    """(fit options, model transform, n_draws) of a variant."""
    if name.startswith("half_life_"):
        value = name.removeprefix("half_life_")
        half_life = None if value == "none" else value if value == "auto" else float(value)
        return {"half_life": half_life}, None, n_draws
    if name.startswith("shock_"):  # diagnosis: the shock sigma set to a value (e.g. the truth)
        return {}, _shock_sigma(float(name.removeprefix("shock_"))), n_draws
    if name == "no_shocks":
        return {}, _no_shocks, n_draws
    if name == "no_draws":
        return {}, None, 0
    if name == "no_pull_in":
        return {}, _no_pull_in, n_draws
    if name == "no_shrinkage":
        return {"shrink": False}, None, n_draws
    if name == "no_covariates":
        return {"covariates": ()}, None, n_draws
    if name == "amount_only":
        return {"covariates": ("amount",)}, None, n_draws
    if name == "close_dates":
        return {"covariates": ("amount", "days_to_close", "pushes")}, None, n_draws
    if name == "overdue":
        return {"covariates": ("amount", "days_to_close", "pushes", "overdue")}, None, n_draws
    if name == "overdue_pushes":
        return {"covariates": ("amount", "pushes", "overdue")}, None, n_draws
    return {}, None, n_draws


def _world_cases(
    world: int,
    variant: str,
    n_paths: int,
    n_draws: int,
    seed: int,
    generator: str = "default",
    horizon: int = HORIZON,
    kind: str = "default",
) -> list[dict[str, Any]]:
    """Every (origin, step) row of one world under one variant (runs in a worker)."""
    if variant == "no_age":
        # Ages are clipped to MAX_AGE_DAYS when the kernel arrays are packed.
        simulate_module.MAX_AGE_DAYS = 0
    worlds = _worlds(generator, world, kind)
    user = [c for c in USER_COLUMNS if c in worlds[0][0].events.columns]
    cal = FiscalCalendar()
    fit_options, transform, draws = _variant(variant, n_draws)
    if user and fit_options.get("covariates", ()) != ():
        fit_options = {**fit_options, "covariates": (*fit_options["covariates"], *user)}
    elif user and "covariates" not in fit_options:
        fit_options = {**fit_options, "covariates": (*forecast.DEFAULT_COVARIATES, *user)}
    rows = []
    for crm, origins in worlds:
        log = forecast.read_deal_log(
            crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment", *user]
        )
        for o in origins:
            for r in _score_origin(
                log,
                as_datetime(o, "origin"),
                horizon,
                n_paths,
                ("segment",),
                cal,
                draws,
                seed + world,
                fit_options=fit_options,
                transform=transform,
            ):
                rows.append(
                    {"world": world, "variant": variant, "generator": generator, "kind": kind, **r}
                )
    simulate_module.MAX_AGE_DAYS = 1095
    return rows


def _bias_z(d: pl.DataFrame) -> float:
    """Mean (forecast mean − realised) over its standard error, worlds as clusters."""
    per_world = d.group_by("world").agg((pl.col("mean") - pl.col("realised")).mean().alias("x"))[
        "x"
    ]
    n = per_world.len()
    if n < 2:
        return float("nan")
    se = float(per_world.std()) / np.sqrt(n)  # type: ignore[arg-type]
    return float(per_world.mean()) / se if se > 0 else float("nan")  # type: ignore[arg-type]


def table(frame: pl.DataFrame) -> pl.DataFrame:
    """Summary per variant and step (see the module docstring)."""
    out = []
    for (variant, step), d in frame.filter(pl.col("realised").is_not_null()).group_by(
        ["variant", "step"], maintain_order=True
    ):
        n = d.height
        h80, h50 = int(d["hit80"].sum()), int(d["hit50"].sum())
        lo80, hi80 = wilson_interval(h80, n)
        lo50, hi50 = wilson_interval(h50, n)
        crps = float(d["crps"].mean())
        mae = {b: float(d[f"crps_{b}"].mean()) for b in BASELINES}
        out.append(
            {
                "variant": variant,
                "step": step,
                "n": n,
                "cov80": h80 / n,
                "cov80_ci": f"[{lo80:.2f}, {hi80:.2f}]",
                "cov50": h50 / n,
                "cov50_ci": f"[{lo50:.2f}, {hi50:.2f}]",
                "crps": crps,
                "mae_wp": mae["weighted_pipeline"],
                "crps/mae_wp": crps / mae["weighted_pipeline"],
                **{f"skill_{b}": skill(crps, mae[b]) for b in BASELINES},
                "bias": float((d["mean"] - d["realised"]).sum() / d["realised"].sum()),
                "bias_z": _bias_z(d),
                "mean_pit": float(d["pit"].mean()),
            }
        )
    return pl.DataFrame(out)


def paired_ratios(frame: pl.DataFrame, reference: str) -> pl.DataFrame:
    """Mean CRPS of each variant over that of ``reference`` on the same cases, per step.

    The ratio of sums over the cases both variants scored; its standard error is
    the ratio estimator's (delta method) with the cases clustered by world, since
    a world's origins share its deals.
    """
    d = frame.filter(pl.col("realised").is_not_null())
    ref = d.filter(pl.col("variant") == reference).select(
        "world", "origin", "step", pl.col("crps").alias("crps_ref")
    )
    out = []
    for (variant, step), v in d.filter(pl.col("variant") != reference).group_by(
        ["variant", "step"], maintain_order=True
    ):
        j = v.join(ref, on=["world", "origin", "step"])
        w = j.group_by("world").agg(pl.col("crps").sum(), pl.col("crps_ref").sum())
        a, b = w["crps"].to_numpy(), w["crps_ref"].to_numpy()
        n = len(a)
        ratio = a.sum() / b.sum()
        se = float(np.sqrt(n / max(n - 1, 1) * np.sum((a - ratio * b) ** 2)) / b.sum())
        out.append({"variant": variant, "step": step, "n": j.height, "crps_ratio": ratio, "se": se})
    return pl.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=12)
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ablation", action="store_true", help="run every variant")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=None,
        help=f"subset of {VARIANTS}, or half_life_none / half_life_auto / half_life_<days>",
    )
    ap.add_argument("--generator", choices=GENERATORS, default="default")
    ap.add_argument("--horizon", type=int, default=HORIZON)
    ap.add_argument("--save", default=None, help="write the per-case rows to this Parquet file")
    ap.add_argument("--world", choices=sorted(WORLDS), default="default", help="generator traps")
    ap.add_argument("--quick", action="store_true", help="1 world, 300 paths, 2 draws, 1 worker")
    ap.add_argument("--json", help="write the headline results to this JSON file")
    ap.add_argument(
        "--ratio-to",
        default=None,
        help="also print each variant's mean CRPS over this variant's, paired by case",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.worlds, args.paths, args.draws, args.workers = 1, 300, 2, 1
    info = machine()
    print(describe(info))
    variants = args.variants or (list(VARIANTS) if args.ablation else ["full"])
    t0 = time.perf_counter()
    # world by world, so that the rows saved so far pair the variants on whole worlds
    jobs = [
        (w, v, args.paths, args.draws, args.seed, args.generator, args.horizon, args.world)
        for w in range(args.worlds)
        for v in variants
    ]
    rows: list[dict[str, Any]] = []

    def done(part: list[dict[str, Any]], i: int) -> None:
        rows.extend(part)
        print(f"{i + 1}/{len(jobs)} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if args.save:  # the rows so far: a long run can be read before it ends
            pl.DataFrame(rows, infer_schema_length=None).write_parquet(args.save)

    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as ex:
            for i, part in enumerate(ex.map(_world_cases, *zip(*jobs))):
                done(part, i)
    else:
        for i, j in enumerate(jobs):
            done(_world_cases(*j), i)
    frame = pl.DataFrame(rows, infer_schema_length=None)
    with pl.Config(tbl_rows=100, tbl_cols=30, tbl_width_chars=250, float_precision=3):
        print(
            f"generator {args.generator}, {args.world} world: {args.worlds} worlds, "
            f"horizon {args.horizon}, "
            f"{args.paths} paths, {args.draws} draws, seed {args.seed}"
        )
        summary = table(frame)
        print(summary)
        if args.ratio_to is not None and args.ratio_to in variants:
            print(f"mean CRPS over {args.ratio_to}'s on the same cases (SE clustered by world)")
            print(paired_ratios(frame, args.ratio_to))
    print(f"elapsed {time.perf_counter() - t0:.0f} s")
    rows = []
    for r in summary.iter_rows(named=True):
        step = "next quarter" if r["step"] == 1 else f"step {r['step']}"
        cases = f"{r['variant']}, {step}, {r['n']} cases"
        rows.append(
            result(
                "accuracy",
                f"mean CRPS ({cases})",
                r["crps"],
                "currency",
                "weighted pipeline MAE",
                r["mae_wp"],
                "currency",
            )
        )
        rows.append(
            result("accuracy", f"80% coverage ({cases})", r["cov80"], "", "nominal", 0.8, "")
        )
    write_results(args.json, rows, machine=info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
