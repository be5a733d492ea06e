"""Transient memory of each step of the fit, traced exactly (no sampling).

``profile_memory.py`` samples the resident memory, which also holds what the
allocator has freed but not returned (tens of MB of noise between runs). This
study traces the allocations instead (:mod:`tracemalloc`: Python objects and NumPy
buffers; not polars' or Numba's own allocations), so a change of a few MB in one
step shows, run after run. For each wrapped step it prints the number of calls and,
over the calls, the largest transient (peak while it ran minus the traced memory at
its entry), the largest peak and the largest memory it left behind (MB). Steps nest
(``fit_exits`` runs inside ``fit_components``); the half-life backtest's calls count.

Run: ``.venv/bin/python benchmarks/trace_fit_memory.py HISTORY.parquet
[--open-stages A,B,C] [--segment segment] [--draws 32] [--half-life auto]``.
Compare two checkouts with the same interpreter (``PYTHONPATH=<checkout>``).
"""

from __future__ import annotations

import argparse
import functools
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import forecast
from forecast.fit import data as fit_data
from forecast.fit import fitting

#: Functions of :mod:`forecast.fit.fitting` (looked up there at call time) traced as steps.
STEPS = (
    "choose_half_life",
    "fit_components",
    "fit_exits",
    "fit_covariates",
    "fit_amounts",
    "fit_arrivals",
    "fit_shocks",
    "build_design",
    "bootstrap_weight_block",
    "parameter_draws",
    "covariate_draws",
    "assemble_model",
)
#: Layout classes whose ``from_data`` / ``from_fit`` constructor is traced.
LAYOUTS = (
    ("ArrivalLayout", "from_data"),
    ("QuarterEndLayout", "from_data"),
    ("ShockLayout", "from_data"),
    ("ExitDrawLayout", "from_fit"),
)


class StepTracer:
    """Per step: calls, largest transient, peak and kept traced memory (bytes)."""

    def __init__(self) -> None:
        self._stack: list[list[Any]] = []  # [name, traced at entry, peak so far]
        self.steps: dict[str, list[float]] = {}

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` traced as step ``name`` on every call."""

        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            current, peak = tracemalloc.get_traced_memory()
            if self._stack:
                self._stack[-1][2] = max(self._stack[-1][2], peak)
            tracemalloc.reset_peak()
            self._stack.append([name, current, current])
            try:
                return func(*args, **kwargs)
            finally:
                after, peak = tracemalloc.get_traced_memory()
                _, start, top = self._stack.pop()
                top = max(top, peak)
                row = self.steps.setdefault(name, [0, 0.0, 0.0, 0.0])
                row[0] += 1
                row[1] = max(row[1], top - start)
                row[2] = max(row[2], top)
                row[3] = max(row[3], after - start)
                if self._stack:
                    self._stack[-1][2] = max(self._stack[-1][2], top)
                tracemalloc.reset_peak()

        return wrapped

    def table(self) -> str:
        """The steps in first-finished order, MB."""
        lines = [f"{'step':<28}{'calls':>6}{'transient MB':>14}{'peak MB':>10}{'kept MB':>10}"]
        for name, (calls, transient, peak, kept) in self.steps.items():
            lines.append(
                f"{name:<28}{calls:>6.0f}{transient / 1e6:>14.1f}{peak / 1e6:>10.1f}"
                f"{kept / 1e6:>10.1f}"
            )
        return "\n".join(lines)


def instrument(tracer: StepTracer) -> None:
    """Wrap :data:`STEPS`, :data:`LAYOUTS` and ``FitData.from_log`` (a missing name is skipped)."""
    for name in STEPS:
        if hasattr(fitting, name):
            setattr(fitting, name, tracer.wrap(name, getattr(fitting, name)))
    for cls_name, method in LAYOUTS:
        cls = getattr(fitting, cls_name, None)
        if cls is not None and hasattr(cls, method):
            func = getattr(cls, method).__func__
            setattr(cls, method, classmethod(tracer.wrap(f"{cls_name}.{method}", func)))
    from_log = fit_data.FitData.from_log.__func__  # type: ignore[attr-defined]
    fit_data.FitData.from_log = classmethod(tracer.wrap("FitData.from_log", from_log))  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history")
    parser.add_argument("--open-stages", default=None)
    parser.add_argument("--segment", action="append", default=[])
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--half-life", default="auto")
    args = parser.parse_args(argv)
    half_life: Any = args.half_life
    if half_life == "none":
        half_life = None
    elif half_life != "auto":
        half_life = float(half_life)
    log = forecast.read_deal_log(
        args.history,
        open_stages=args.open_stages.split(",") if args.open_stages else None,
        segment_columns=list(args.segment),
    )
    frame_mb = log.events.estimated_size("mb")
    tracer = StepTracer()
    instrument(tracer)
    fit = tracer.wrap("fit", forecast.fit)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fit(log, segment_by=list(args.segment), n_draws=args.draws, half_life=half_life)
    finally:
        tracemalloc.stop()
    print(
        f"{log.events.height:,} events; event frame {frame_mb:.1f} MB; fit "
        f"{time.perf_counter() - t0:.1f} s (traced, slower than untraced)"
    )
    print(tracer.table())
    top = tracer.steps["fit"][2] / 1e6
    print(f"traced peak of the fit: {top:.1f} MB = {top / frame_mb:.2f}× the event frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
