"""Speed of the Monte Carlo engine, measured as ratios within one run.

Usage::

    .venv/bin/python benchmarks/bench_simulate.py            # full: 10,000 deals x 100,000 paths
    .venv/bin/python benchmarks/bench_simulate.py --quick    # 2,000 deals x 10,000 paths

Synthetic pipeline (``forecast._oracle.random_model_arrays``): 4 open stages with
backward moves, 3 segments, 5 horizon quarters, 4 parameter draws, ages up to 300
days, quarter-end pull-in, shared shocks, negative-binomial new deals.

Rows (a "deal-path" is one open deal of today's pipeline on one path; new deals are
simulated too and their cost is included but not counted):

- engine, sampling only: :func:`forecast._kernels.sample_paths` with 1 and 2 threads;
- engine incl. outcomes: the same plus the one-off :func:`outcome_probabilities`;
- NumPy oracle: :func:`forecast._oracle.simulate_oracle` on fewer paths, as a rate;
- raw generator: uniforms per second per core (``rng.sum_uniforms``);
- deal covariates: the same pipeline with every deal's own exit hazards
  (:func:`random_covariate_arrays`: 3 covariates, a 9-piece covariate path per deal,
  8 later-stage and 4 new-deal profiles per segment): the one-off
  :func:`tilted_outcome_probabilities` against :func:`outcome_probabilities`, and the
  sampling kernel fed its outcomes, timed in pairs with the kernel fed the plain ones
  (the headline ratio must stay >= 0.8);
- compile: first call in a fresh process with an empty ``NUMBA_CACHE_DIR`` (cold) and
  again with the cache filled (warm).

The machine is shared and noisy, so the engine and the raw generator are timed in
pairs, one right after the other, several times; rates per core are work over CPU
time of the process (all threads), so time spent descheduled does not count, and the
headline is the median over the pairs of the engine's rate over the generator's.
The report starts with the CPU model and SIMD level (CPU flags, and the target Numba
compiles for).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
from _common import describe, machine, result, write_results

from forecast._kernels import (
    CovariateArrays,
    ModelArrays,
    outcome_probabilities,
    sample_paths,
    sampling_inputs,
    tilted_outcome_probabilities,
)
from forecast._kernels import rng as krng
from forecast._oracle import random_model_arrays, simulate_oracle

#: The speed target of the sampling kernel, M deal-paths per second per core.
TARGET = 100.0

_COMPILE_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np
from forecast._kernels import simulate_arrays
from forecast._oracle import random_model_arrays
a = random_model_arrays(np.random.default_rng(0), n_deals=20)
simulate_arrays(a, n_paths=10, seed=1)
print(time.perf_counter() - t0, time.process_time())
"""


def random_covariate_arrays(
    rng: np.random.Generator,
    arrays: ModelArrays,
    d: int = 3,
    n_pieces: int = 9,
    n_profiles: int = 8,
    n_new: int = 4,
) -> CovariateArrays:
    """Deal covariates for ``arrays``: standard-normal values, log hazard ratios ~ N(0, 0.2²).

    Each deal's path has ``n_pieces`` pieces, one every 30 days from a uniform first
    change within 60 days, the first column growing by 1 at each (like pushes).
    """
    sizes = arrays.shape
    n_draws, n_seg, n_open, n_deals = (sizes[x] for x in ("B", "G", "K", "N"))
    betas = rng.normal(0.0, 0.2, (n_draws, n_open, 4, d))

    def paths(lead: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        x0 = rng.normal(size=(*lead, d))
        x = np.repeat(x0[..., None, :], n_pieces, axis=-2)
        x[..., :, 0] += np.arange(n_pieces)
        first = rng.uniform(0.0, 60.0, lead)[..., None]
        starts = first + 30.0 * np.arange(-1, n_pieces - 1)
        starts[..., 0] = 0.0
        return x, starts

    deal_x, deal_s = paths((n_deals,))
    prof_x, prof_s = paths((n_seg, n_profiles, n_open))
    new_x, new_s = paths((n_seg, n_new, n_open))
    return CovariateArrays(
        base_dens=arrays.dens,
        betas=betas,
        deal_x=deal_x,
        deal_starts=deal_s,
        deal_profile=rng.integers(0, n_profiles, n_deals),
        profile_x=prof_x,
        profile_starts=prof_s,
        new_x=new_x,
        new_starts=new_s,
        new_weights=np.full((n_seg, n_new), 1.0 / n_new),
    )


def _first_call_seconds(cache_dir: str) -> tuple[float, float]:
    """Wall and CPU seconds of a first simulation in a fresh process (imports included)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_SNIPPET],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def _timed(fn) -> tuple[float, float]:
    """Wall and process CPU seconds of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--paths", type=int, default=100_000)
    parser.add_argument("--oracle-paths", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="timed pairs per thread count")
    parser.add_argument(
        "--new-per-quarter",
        type=float,
        default=200.0,
        help="expected new deals per segment and quarter",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2,000 deals x 10,000 paths, no compile timing"
    )
    parser.add_argument("--json", help="write the headline results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.deals, args.paths, args.oracle_paths, args.repeat = 2_000, 10_000, 50, 2

    info = machine()
    print(describe(info))
    arrays = random_model_arrays(
        np.random.default_rng(2024),
        n_deals=args.deals,
        n_stages=4,
        n_segments=3,
        n_draws=4,
        quarter_days=(60, 91, 92, 91, 92),
        max_age=300,
        new_per_quarter=args.new_per_quarter,
        new_shape=5.0,
        shock_sigma=0.25,
    )
    sizes = arrays.shape
    print(
        f"pipeline: N={sizes['N']} deals, K={sizes['K']} stages, G={sizes['G']} segments, "
        f"H={sizes['H']} quarters, B={sizes['B']} draws, L={sizes['L']} day bins; "
        f"~{arrays.new_counts.sum(axis=(1, 2)).mean():.0f} new deals per path; "
        f"Numba threads available: {numba.config.NUMBA_NUM_THREADS}"
    )

    # Compile time (fresh processes).
    compile_times = None
    if not args.quick:
        with tempfile.TemporaryDirectory() as cache_dir:
            compile_times = (_first_call_seconds(cache_dir), _first_call_seconds(cache_dir))

    # Warm up in this process (cached compile).
    outcomes = outcome_probabilities(arrays)
    kw = sampling_inputs(arrays, outcomes)
    sample_paths(kw, seed=0, n_paths=50)
    print(f"mean P(win within horizon) per deal: {outcomes.p_win.sum(-1).mean():.3f}")
    t_outcomes = min(_timed(lambda: outcome_probabilities(arrays))[1] for _ in range(2))  # CPU

    deal_paths = args.deals * args.paths
    n_uniform = 100_000_000 if not args.quick else 20_000_000
    krng.sum_uniforms(1, 0, 10)
    thread_counts = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})
    rates = {th: [] for th in thread_counts}  # M deal-paths / CPU second
    ratios = {th: [] for th in thread_counts}  # per pair: engine rate / generator rate
    walls = {th: [] for th in thread_counts}
    cpus = {th: [] for th in thread_counts}
    rng_rates = []
    for _ in range(args.repeat):
        for threads in thread_counts:
            _, c_rng = _timed(lambda: krng.sum_uniforms(1, 0, n_uniform))
            wall, cpu = _timed(
                lambda th=threads: sample_paths(kw, seed=1, n_paths=args.paths, threads=th)
            )
            rng_rates.append(n_uniform / c_rng / 1e6)
            rates[threads].append(deal_paths / cpu / 1e6)
            ratios[threads].append((deal_paths / cpu) / (n_uniform / c_rng))
            walls[threads].append(wall)
            cpus[threads].append(cpu)
    rng_rate = float(np.median(rng_rates))

    # Deal covariates: the one-off set-up and the sampling kernel fed its outcomes, timed
    # in pairs with the kernel fed the plain outcomes (same run, same pipeline).
    covariates = random_covariate_arrays(np.random.default_rng(7), arrays)
    tilted = tilted_outcome_probabilities(arrays, covariates)
    kw_cov = sampling_inputs(arrays, tilted)
    sample_paths(kw_cov, seed=0, n_paths=50)
    t_tilted = min(
        _timed(lambda: tilted_outcome_probabilities(arrays, covariates))[1] for _ in range(2)
    )
    cov_ratios, cov_rates, plain_rates = [], [], []
    for _ in range(args.repeat):
        _, c_plain = _timed(lambda: sample_paths(kw, seed=1, n_paths=args.paths, threads=1))
        _, c_cov = _timed(lambda: sample_paths(kw_cov, seed=1, n_paths=args.paths, threads=1))
        cov_ratios.append(c_plain / c_cov)
        cov_rates.append(deal_paths / c_cov / 1e6)
        plain_rates.append(deal_paths / c_plain / 1e6)
    cov_ratio = float(np.median(cov_ratios))

    _, c_oracle = _timed(lambda: simulate_oracle(arrays, n_paths=args.oracle_paths, seed=1))
    oracle_rate = args.deals * args.oracle_paths / c_oracle / 1e6

    print()
    print(
        f"{'measure (medians)':<42}{'seconds':>10}{'M deal-paths/s/core':>22}{'/ raw uniforms':>16}"
    )
    for threads in thread_counts:
        wall = float(np.median(walls[threads]))
        print(
            f"{f'engine sampling, {threads} thread(s)':<42}{wall:>10.3f}"
            f"{np.median(rates[threads]):>22.1f}{np.median(ratios[threads]):>16.3f}"
        )
        cpu_all = float(np.median(cpus[threads])) + t_outcomes
        print(
            f"{f'engine incl. outcomes, {threads} thread(s)':<42}{'':>10}"
            f"{deal_paths / cpu_all / 1e6:>22.1f}"
        )
    print(
        f"{f'NumPy oracle ({args.oracle_paths} paths), CPU':<42}{c_oracle:>10.3f}{oracle_rate:>22.2f}"
    )
    print(f"{'raw generator (M uniforms/s/core)':<42}{'':>10}{rng_rate:>22.1f}")
    print(f"{'outcome probabilities (one-off), CPU s':<42}{t_outcomes:>10.3f}")
    print(f"{'with deal covariates (one-off), CPU s':<42}{t_tilted:>10.3f}")
    if compile_times is not None:
        (cold_wall, cold_cpu), (warm_wall, warm_cpu) = compile_times
        print(f"{'first call, cold cache: wall / CPU s':<42}{cold_wall:>10.2f}{cold_cpu:>22.2f}")
        print(f"{'first call, warm cache: wall / CPU s':<42}{warm_wall:>10.2f}{warm_cpu:>22.2f}")
    print()
    one = float(np.median(rates[1]))
    ratio_rng = float(np.median(ratios[1]))
    print(f"engine (1 thread) / NumPy oracle:        {one / oracle_rate:8.1f}x")
    print(f"engine (1 thread) / raw uniforms:        {ratio_rng:8.3f} deal-paths per uniform time")
    if len(thread_counts) > 1:
        two = float(np.median(rates[2]))
        speedup = float(np.median(walls[1])) / float(np.median(walls[2]))
        print(
            f"2 threads: per-core rate / 1 thread:     {two / one:8.2f}; wall speedup {speedup:.2f}"
        )
    print(
        f"sampling with deal covariates / without:  {cov_ratio:8.3f} (speed ratio, 1 thread; "
        f"bar >= 0.8: {'met' if cov_ratio >= 0.8 else 'NOT met'})"
    )
    if not args.quick:  # the bar is set for the full-size pipeline
        print(
            f"at this run's generator speed, >= {TARGET:.0f} M deal-paths/s/core needs a ratio "
            f"of {TARGET / rng_rate:.3f}: {'met' if ratio_rng >= TARGET / rng_rate else 'NOT met'}"
        )

    rows = [
        result(
            "simulate",
            "engine sampling, 1 thread",
            one,
            "M deal-paths/s/core",
            "raw generator",
            rng_rate,
            "M uniforms/s/core",
            ratio=ratio_rng,
        ),
        result(
            "simulate",
            "engine sampling, 1 thread",
            one,
            "M deal-paths/s/core",
            "NumPy oracle",
            oracle_rate,
            "M deal-paths/s/core",
        ),
    ]
    if len(thread_counts) > 1:
        rows.append(
            result(
                "simulate",
                "engine sampling, 2 threads",
                float(np.median(rates[2])),
                "M deal-paths/s/core",
                "raw generator",
                rng_rate,
                "M uniforms/s/core",
                ratio=float(np.median(ratios[2])),
            )
        )
    rows.append(
        result(
            "simulate",
            "sampling with deal covariates, 1 thread",
            float(np.median(cov_rates)),
            "M deal-paths/s/core",
            "sampling without covariates, paired",
            float(np.median(plain_rates)),
            "M deal-paths/s/core",
            ratio=cov_ratio,
        )
    )
    rows.append(
        result(
            "simulate",
            "outcome probabilities with deal covariates (CPU)",
            t_tilted,
            "s",
            "without covariates (CPU)",
            t_outcomes,
            "s",
        )
    )
    if compile_times is not None:
        rows.append(
            result(
                "simulate",
                "first call, cold Numba cache (CPU)",
                compile_times[0][1],
                "s",
                "first call, warm cache (CPU)",
                compile_times[1][1],
                "s",
            )
        )
    write_results(args.json, rows, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
