"""What the deal-covariate profiles cost: forecast means and set-up time against exact.

With deal covariates, each open deal's current stage is exact, while the stages after
its next move use at most ``MAX_PROFILES`` covariate profiles per segment
(``docs/model.md``, "Deal covariates"). This benchmark fits generated worlds with
every covariate trap (``generate_crm(size_effect=True, push_effect=True,
category_effect=True)``), offered every built-in covariate (the close-date ones
too, whose future path the profiles approximate) and the user columns, then computes the per-deal quarter win probabilities
three ways on the same model and pipeline:

- ``profiles``: the simulation's set-up (``MAX_PROFILES`` per segment);
- ``exact``: one profile per distinct deal (every deal's later stages from its own
  values; the renewal equations once per deal and draw);
- ``population``: the same model's population curves with no covariates (the
  set-up of a model without them, as a time reference).

It reports, per world and horizon quarter, the expected pipeline bookings
``Σ_i amount_i P(win in q)`` of ``profiles`` relative to ``exact``, and the CPU
seconds of each set-up (packing and outcome probabilities).

Usage::

    python benchmarks/covariate_profiles.py               # 4 worlds, default scale, 2 draws
    python benchmarks/covariate_profiles.py --quick       # 1 world
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import describe, machine, result, write_results

import forecast
import forecast.deal_covariates as deal_covariates
from forecast._kernels import outcome_probabilities, tilted_outcome_probabilities
from forecast.datasets import SYNTHETIC_STAGES, generate_crm
from forecast.deal_covariates import covariate_arrays
from forecast.simulate import model_arrays

AS_OF = "2024-10-01"
USER = ("lead_source", "product_line")


def _setup(model, log, horizon, max_profiles):
    """(expected bookings per quarter, CPU seconds) of one set-up."""
    saved = deal_covariates.MAX_PROFILES
    deal_covariates.MAX_PROFILES = max_profiles
    try:
        t0 = time.process_time()
        arrays, pipe, *_ = model_arrays(model, log, horizon)
        if max_profiles == 0:
            out = outcome_probabilities(arrays)
        else:
            cov, _ = covariate_arrays(model, log, pipe, arrays)
            out = tilted_outcome_probabilities(arrays, cov)
        seconds = time.process_time() - t0
    finally:
        deal_covariates.MAX_PROFILES = saved
    amount = np.asarray(arrays.deal_amount, dtype=np.float64)
    expected = np.einsum("bnq,n->q", out.p_win, amount) / out.p_win.shape[0]
    return expected, seconds, pipe.height


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=4)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--horizon", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 world")
    ap.add_argument("--json", help="write the headline results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.worlds = 1
    info = machine()
    print(describe(info))
    diffs, pairs, times = [], [], {"profiles": [], "exact": [], "population": []}
    print(f"{'world':>5} {'deals':>6} {'quarter':>7} {'profiles / exact − 1':>22}")
    for w in range(args.worlds):
        crm = generate_crm(
            seed=9000 + w,
            end=AS_OF,
            scale=args.scale,
            size_effect=True,
            push_effect=True,
            category_effect=True,
        )
        log = forecast.read_deal_log(
            crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment", *USER]
        )
        model = forecast.fit(
            log,
            segment_by=("segment",),
            covariates=(*forecast.DEFAULT_COVARIATES, *forecast.CLOSE_DATE_COVARIATES, *USER),
            n_draws=args.draws,
            seed=w,
        )
        prof, t_prof, n = _setup(model, log, args.horizon, deal_covariates.MAX_PROFILES)
        exact, t_exact, _ = _setup(model, log, args.horizon, 10**9)
        _, t_pop, _ = _setup(model, log, args.horizon, 0)
        times["profiles"].append(t_prof)
        times["exact"].append(t_exact)
        times["population"].append(t_pop)
        for q in range(args.horizon):
            d = prof[q] / exact[q] - 1.0
            diffs.append(d)
            pairs.append((float(prof[q]), float(exact[q])))
            print(f"{w:>5} {n:>6} {q:>7} {d:>+22.4%}")
    diffs_arr = np.abs(np.array(diffs))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print()
    print(f"max |profiles / exact − 1| of expected pipeline bookings: {diffs_arr.max():.4%}")
    print(
        "set-up CPU s (median): "
        + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
        + f"; profiles / population {med['profiles'] / med['population']:.2f}×"
    )
    worst = pairs[int(np.argmax(diffs_arr))]
    rows = [
        result(
            "covariate_profiles",
            f"expected pipeline bookings by profiles (worst of {len(pairs)} world-quarters)",
            worst[0],
            "currency",
            "exact per-deal later stages",
            worst[1],
            "currency",
        ),
        result(
            "covariate_profiles",
            "set-up with deal covariates (CPU)",
            med["profiles"],
            "s",
            "set-up without covariates (CPU)",
            med["population"],
            "s",
        ),
    ]
    write_results(args.json, rows, machine=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
