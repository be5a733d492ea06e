"""End-to-end ``simulate`` against a plain walking kernel on the same model.

Usage::

    .venv/bin/python benchmarks/bench_setup.py            # ~520 open deals, 20,000 paths
    .venv/bin/python benchmarks/bench_setup.py --quick    # ~300 open deals, 2,000 paths

A synthetic history (``generate_crm``) is fitted with 32 parameter draws; its open
pipeline is then simulated two ways, on the same model and the same draws:

- **engine**: :meth:`PipelineModel.simulate`, end to end (pipeline extraction, exit
  densities of every draw, outcome probabilities, sampling, the ``Forecast``), on a
  freshly fitted model (nothing cached: its first simulation) and again (warm);
- **walking kernel** (the yardstick, kept here and not in the package): a plain
  Numba kernel that walks every open deal through its stages on every path — the
  first exit drawn from its stage's exit density conditioned on its age, each later
  stage entered fresh, on the same day grid and midpoint rule, with the same
  quarter-end pull-in and won-amount ratios, path ``p`` on draw ``p mod B``, paths
  split over the same threads. It leaves out the shared shocks and the new deals
  (the engine pays for both), and its tables are built before the clock starts, so
  the yardstick is, if anything, too fast.

The ratio walking kernel / engine is the speed-up (target ≥ 3). The mean booked amount
per quarter of both is printed as a check that they simulate the same model (they
differ by the shocks' tilt and Monte Carlo error only).
"""

from __future__ import annotations

import argparse
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from _common import describe, machine, result, write_results

import forecast
from forecast._kernels.rng import path_state, uniform
from forecast.datasets import generate_crm
from forecast.simulate import model_arrays

#: Cells of the guide table of each inverse-CDF search.
GUIDE = 256


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _search(cum, guide, total, lo, target):
    """Smallest ``l >= lo`` with ``cum[l] > target`` (``target < total``): start at the
    guide table's bin for ``target`` and step forward (a few bins on average)."""
    cell = int(target / total * GUIDE)
    start = guide[min(cell, GUIDE - 1)]
    lag = max(lo, start)
    while cum[lag] <= target:
        lag += 1
    return lag


@numba.njit(cache=True, nogil=True, error_model="numpy")
def walk_paths(
    dens, cum, total, guide, deal_seg, deal_stage, deal_age, deal_amount, qb, window, pull_in,
    ratio_off, ratio_val, ratio_qe_off, ratio_qe_val, seed, p0, p1, totals,
):  # fmt: skip
    """Walk every deal through its stages on paths ``p0 .. p1 - 1``; add wins to ``totals``.

    ``dens[b, g, k, l, j]``: the exit densities with the destinations of a bin adjacent.

    ``cum[b, g, k, l]`` is the all-cause exit mass of bins ``<= l``, ``total`` its last
    value (mass beyond the grid never exits within the horizon), ``guide[b, g, k, m]``
    the first bin with ``cum > m / GUIDE × total``.
    """
    n_draws, _, n_open, _, n_codes = dens.shape
    won = n_open
    n_q = qb.shape[0] - 1
    for p in range(p0, p1):
        b = p % n_draws
        state = path_state(seed, p)
        for i in range(deal_seg.shape[0]):
            g = deal_seg[i]
            k = deal_stage[i]
            a = deal_age[i]
            w = window[g]
            end = qb[n_q] + w
            t = -a  # the bin the current stage was entered in, relative to now
            while True:
                base = cum[b, g, k, a - 1] if a > 0 else 0.0
                tot = total[b, g, k]
                beyond = max(1.0 - tot, 0.0)
                u, state = uniform(state)
                target = base + u * (tot - base + beyond)
                if target >= tot:
                    break  # still in the stage at the grid's end
                lag = _search(cum[b, g, k], guide[b, g, k], tot, a, target)
                u, state = uniform(state)
                x = u * (cum[b, g, k, lag] - (cum[b, g, k, lag - 1] if lag > 0 else 0.0))
                j = 0
                row = dens[b, g, k, lag]
                while j < n_codes - 1 and x >= row[j]:
                    x -= row[j]
                    j += 1
                if j == won:
                    day = t + lag
                    if day >= end:
                        break
                    q = 0
                    while q < n_q and day >= qb[q + 1]:
                        q += 1
                    qe = day >= qb[q + 1] - w if q < n_q else False
                    if q >= 1 and day < qb[q] + w:
                        u, state = uniform(state)
                        if u < pull_in[b, g]:
                            q -= 1
                            qe = True
                    if q < n_q:
                        u, state = uniform(state)
                        if qe:
                            lo, hi = ratio_qe_off[g], ratio_qe_off[g + 1]
                            r = ratio_qe_val[lo + int(u * (hi - lo))] if hi > lo else 1.0
                        else:
                            lo, hi = ratio_off[g], ratio_off[g + 1]
                            r = ratio_val[lo + int(u * (hi - lo))] if hi > lo else 1.0
                        totals[p - p0, q, g] += deal_amount[i] * r
                    break
                if j > won or j == k:
                    break  # lost or no decision
                u, state = uniform(state)
                t = t + lag + (1 if u < 0.5 else 0)  # midpoint rule: half a bin later
                if t >= end:
                    break
                k = j
                a = 0
    return 0


def walk(
    arrays, n_paths: int, seed: int, threads: int, cpu: bool = False
) -> tuple[np.ndarray, float | tuple[float, float]]:
    """Totals ``(P, H, G)`` of the walking kernel and its wall time (tables excluded);
    with ``cpu``, (wall, CPU time of all threads)."""
    dens = np.ascontiguousarray(arrays.dens.transpose(0, 1, 2, 4, 3))  # (B, G, K, L, C)
    cum = np.cumsum(dens.sum(axis=4), axis=3)
    total = np.ascontiguousarray(cum[..., -1])
    levels = np.arange(GUIDE) / GUIDE
    guide = np.empty((*total.shape, GUIDE), dtype=np.int64)
    for idx in np.ndindex(*total.shape):
        guide[idx] = np.searchsorted(cum[idx], levels * total[idx], side="right")
    n_q, n_seg = arrays.qb.shape[0] - 1, dens.shape[1]
    totals = np.zeros((n_paths, n_q, n_seg))
    edges = np.linspace(0, n_paths, threads + 1).astype(np.int64)
    args = (
        dens, cum, total, guide, arrays.deal_segment, arrays.deal_stage, arrays.deal_age,
        arrays.deal_amount, arrays.qb, arrays.qe_window, arrays.pull_in,
        arrays.ratio_offsets, arrays.ratio_values, arrays.ratio_qe_offsets,
        arrays.ratio_qe_values, np.int64(seed),
    )  # fmt: skip
    walk_paths(*args, np.int64(0), np.int64(2), np.zeros((2, n_q, n_seg)))  # compile
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(walk_paths, *args, np.int64(a), np.int64(b), totals[a:b])
            for a, b in itertools.pairwise(edges)
        ]
        for f in futures:
            f.result()
    wall, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return totals, ((wall, cpu_seconds) if cpu else wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.6, help="generator scale")
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--quick", action="store_true", help="scale 1, 2,000 paths")
    parser.add_argument("--json", help="write the headline results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.paths, args.repeats = 1.0, 2_000, 2
    info = machine()
    print(describe(info))
    threads = numba.get_num_threads()

    world = generate_crm(seed=1, scale=args.scale)
    log = forecast.read_deal_log(world.events, stages=world.stage_map, segment_columns=["segment"])
    model = forecast.fit(log, segment_by=["segment"], n_draws=args.draws)
    model.replace().simulate(log, n_paths=min(args.paths, 500))  # compile the engine
    arrays = model_arrays(model, log, 4)[0]
    n_deals = int(arrays.deal_segment.size)

    cold, warm, walked = [], [], []  # (wall, CPU of all threads) seconds
    fc = None
    for _ in range(args.repeats):
        fresh = model.replace()  # the same model with nothing cached: its first simulation
        t0, c0 = time.perf_counter(), time.process_time()
        fc = fresh.simulate(log, n_paths=args.paths, threads=threads)
        cold.append((time.perf_counter() - t0, time.process_time() - c0))
        t0, c0 = time.perf_counter(), time.process_time()
        fresh.simulate(log, n_paths=args.paths, threads=threads)
        warm.append((time.perf_counter() - t0, time.process_time() - c0))
        c0 = time.process_time()
        totals, seconds = walk(arrays, args.paths, seed=0, threads=threads, cpu=True)
        walked.append(seconds)
    (t_cold, c_cold), (t_warm, c_warm) = min(cold), min(warm)
    t_walk, c_walk = min(walked)
    deal_paths = n_deals * args.paths
    print(
        f"history: {world.events.height:,} events; open pipeline: {n_deals} deals; "
        f"{args.paths:,} paths, {args.draws} draws, {threads} threads"
    )
    print(f"{'':34}{'seconds':>10}{'CPU seconds':>13}{'M deal-paths/s':>16}")
    for name, sec, cpu in (
        ("engine, first simulate of a model", t_cold, c_cold),
        ("engine, again (cached curves)", t_warm, c_warm),
        ("walking kernel (yardstick)", t_walk, c_walk),
    ):
        print(f"{name:34}{sec:>10.3f}{cpu:>13.3f}{deal_paths / sec / 1e6:>16.1f}")
    print(
        f"speed-up over the walking kernel (wall): first {t_walk / t_cold:.2f}×, "
        f"again {t_walk / t_warm:.2f}×; (CPU time, robust to a loaded machine): first "
        f"{c_walk / c_cold:.2f}×, again {c_walk / c_warm:.2f}×"
    )
    assert fc is not None
    engine_mean = fc.totals[:, :, :, 0].sum(axis=2).mean(axis=0)
    walk_mean = totals.sum(axis=2).mean(axis=0)
    print("mean booked from today's pipeline per quarter (engine / walking kernel):")
    for q, (e, w) in enumerate(zip(engine_mean, walk_mean, strict=True)):
        print(f"  {fc.quarters[q]}: {e:,.0f} / {w:,.0f}")
    label = f"{n_deals} deals × {args.paths:,} paths"
    write_results(
        args.json,
        [
            result(
                "setup",
                f"walking kernel / simulate (first), {label}",
                t_walk,
                "s",
                "simulate, end to end",
                t_cold,
                "s",
            ),
            result(
                "setup",
                f"walking kernel / simulate (again), {label}",
                t_walk,
                "s",
                "simulate, end to end",
                t_warm,
                "s",
            ),
            result(
                "setup",
                f"walking kernel / simulate (first), CPU time, {label}",
                c_walk,
                "s",
                "simulate, end to end",
                c_cold,
                "s",
            ),
        ],
        machine=info,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
