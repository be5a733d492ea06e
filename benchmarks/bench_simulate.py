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
- compile: first call in a fresh process with an empty ``NUMBA_CACHE_DIR`` (cold) and
  again with the cache filled (warm).

The machine is shared and noisy, so compare the ratios printed at the end.
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

from forecast._kernels import outcome_probabilities, sample_paths, sampling_inputs
from forecast._kernels import rng as krng
from forecast._oracle import random_model_arrays, simulate_oracle

_COMPILE_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np
from forecast._kernels import simulate_arrays
from forecast._oracle import random_model_arrays
a = random_model_arrays(np.random.default_rng(0), n_deals=20)
simulate_arrays(a, n_paths=10, seed=1)
print(time.perf_counter() - t0)
"""


def _first_call_seconds(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_SNIPPET],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _best_of(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--paths", type=int, default=100_000)
    parser.add_argument("--oracle-paths", type=int, default=200)
    parser.add_argument(
        "--new-per-quarter",
        type=float,
        default=200.0,
        help="expected new deals per segment and quarter",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 deals x 10,000 paths")
    args = parser.parse_args()
    if args.quick:
        args.deals, args.paths, args.oracle_paths = 2_000, 10_000, 100

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
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = _first_call_seconds(cache_dir)
        warm = _first_call_seconds(cache_dir)

    # Warm up in this process (cached compile).
    outcomes = outcome_probabilities(arrays)
    kw = sampling_inputs(arrays, outcomes)
    sample_paths(kw, seed=0, n_paths=50)
    print(f"mean P(win within horizon) per deal: {outcomes.p_win.sum(-1).mean():.3f}")

    t_outcomes = _best_of(lambda: outcome_probabilities(arrays), 2)
    deal_paths = args.deals * args.paths
    rows = []
    rates = {}
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        t = _best_of(lambda th=threads: sample_paths(kw, seed=1, n_paths=args.paths, threads=th), 1)
        rates[threads] = deal_paths / t / threads
        rows.append((f"engine sampling, {threads} thread(s)", t, rates[threads]))
        t_all = t + t_outcomes
        rows.append(
            (f"engine incl. outcomes, {threads} thread(s)", t_all, deal_paths / t_all / threads)
        )

    t_oracle = _best_of(lambda: simulate_oracle(arrays, n_paths=args.oracle_paths, seed=1), 1)
    oracle_rate = args.deals * args.oracle_paths / t_oracle
    rows.append((f"NumPy oracle ({args.oracle_paths} paths)", t_oracle, oracle_rate))

    n_uniform = 200_000_000
    krng.sum_uniforms(1, 0, 10)
    t_rng = _best_of(lambda: krng.sum_uniforms(1, 0, n_uniform), 3)
    rng_rate = n_uniform / t_rng

    print()
    print(f"{'measure':<42}{'seconds':>10}{'M deal-paths/s/core':>22}")
    for name, seconds, rate in rows:
        print(f"{name:<42}{seconds:>10.3f}{rate / 1e6:>22.1f}")
    print(f"{'raw generator (uniforms/s/core)':<42}{t_rng:>10.3f}{rng_rate / 1e6:>22.1f}")
    print(f"{'outcome probabilities (one-off)':<42}{t_outcomes:>10.3f}")
    print(f"{'first call, cold cache (compile)':<42}{cold:>10.2f}")
    print(f"{'first call, warm cache':<42}{warm:>10.2f}")
    print()
    best = rates[1]
    print(f"engine (1 thread) / oracle:            {best / oracle_rate:8.1f}x")
    print(
        f"engine (1 thread) / raw uniforms:      {best / rng_rate:8.3f} deal-paths per uniform time"
    )
    if 2 in rates:
        print(f"2-thread efficiency (per-core rate):   {rates[2] / rates[1]:8.2f}")
    print(
        f"targets: >= 100 M deal-paths/s/core -> {'met' if best >= 1e8 else 'NOT met'}; "
        f">= 30x oracle -> {'met' if best / oracle_rate >= 30 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
