"""What the first call of a ``forecast`` command compiles, and how long each compilation takes.

Usage::

    .venv/bin/python benchmarks/compile_profile.py                      # forecast demo --no-progress
    .venv/bin/python benchmarks/compile_profile.py run log.parquet ...  # any CLI command
    .venv/bin/python benchmarks/compile_profile.py --signatures         # also every signature

Runs the command in this process with an empty, temporary ``NUMBA_CACHE_DIR`` (so
everything compiles, as on the first call after installing), listening to Numba's
``numba:compile`` events. Per compiled function it reports the CPU seconds of its
compilations (thread CPU time, so time spent descheduled on a busy machine does not
count): inclusive (with the callees it compiled) and exclusive, the number of
specialisations and their depth (0 = called from Python). A function compiled with more
than one signature is flagged: every extra specialisation is compile time that a
single call path should not need (C vs A layout, read-only vs writable, int32 vs
int64). The totals line gives the process CPU time, the compile CPU time and the part
of it spent under Numba's LLVM lock (optimisation and machine code).

A diagnostic, not a benchmark row of ``run_all.py``: nothing here is a ratio.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass


@dataclass
class Compilation:
    """One ``numba:compile`` event: CPU seconds with and without nested compilations."""

    name: str
    signature: str
    depth: int
    inclusive: float
    exclusive: float


class _Recorder:
    """Listeners of Numba's compile and LLVM-lock events (per thread: kernels compile in pools)."""

    def __init__(self) -> None:
        self.compilations: list[Compilation] = []
        self.llvm_seconds = 0.0
        self._local = threading.local()

    def _stack(self) -> list[list[float]]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def install(self) -> None:
        from numba.core import event

        recorder = self

        class Compile(event.Listener):
            def on_start(self, ev: event.Event) -> None:
                recorder._stack().append([time.thread_time(), 0.0])

            def on_end(self, ev: event.Event) -> None:
                stack = recorder._stack()
                start, nested = stack.pop()
                spent = time.thread_time() - start
                if stack:
                    stack[-1][1] += spent
                func = getattr(ev.data.get("dispatcher"), "py_func", None)
                name = f"{func.__module__}.{func.__qualname__}" if func else "?"
                recorder.compilations.append(
                    Compilation(name, str(ev.data.get("args")), len(stack), spent, spent - nested)
                )

        class Llvm(event.Listener):
            def on_start(self, ev: event.Event) -> None:
                recorder._local.llvm_start = time.thread_time()

            def on_end(self, ev: event.Event) -> None:
                recorder.llvm_seconds += time.thread_time() - recorder._local.llvm_start

        event.register("numba:compile", Compile())
        event.register("numba:llvm_lock", Llvm())


def report(recorder: _Recorder, cpu: float, wall: float, signatures: bool) -> str:
    """The per-function table, most expensive first."""
    by_name: dict[str, list[Compilation]] = collections.defaultdict(list)
    for c in recorder.compilations:
        by_name[c.name].append(c)
    top = sum(c.inclusive for c in recorder.compilations if c.depth == 0)
    lines = [
        f"process: {wall:.1f} s wall, {cpu:.1f} s CPU; compilation: {top:.1f} s CPU "
        f"({len(recorder.compilations)} compilations, {recorder.llvm_seconds:.1f} s under "
        "the LLVM lock)",
        "",
        f"{'incl s':>7} {'excl s':>7} {'n':>3}  {'depth':<8} function",
    ]
    order = sorted(by_name.items(), key=lambda kv: -sum(c.exclusive for c in kv[1]))
    for name, comps in order:
        sigs = collections.Counter(c.signature for c in comps)
        flag = "  <- several signatures" if len(sigs) > 1 and "numba." not in name else ""
        lines.append(
            f"{sum(c.inclusive for c in comps):7.2f} {sum(c.exclusive for c in comps):7.2f} "
            f"{len(comps):3d}  {','.join(str(c.depth) for c in comps):<8} {name}{flag}"
        )
        if signatures or flag:
            lines.extend(f"{'':22}{sig}" for sig in sigs)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signatures", action="store_true", help="print every signature")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="forecast CLI arguments (default: demo)"
    )
    args = parser.parse_args(argv)
    command = args.command or ["demo", "--no-progress"]
    if "numba" in sys.modules:
        raise SystemExit("run this script in a fresh process (Numba is already imported)")
    with tempfile.TemporaryDirectory(prefix="forecast-compile-") as cache:
        os.environ["NUMBA_CACHE_DIR"] = cache
        recorder = _Recorder()
        recorder.install()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        from forecast.cli import main as forecast_main

        status = forecast_main(command)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(report(recorder, cpu, wall, args.signatures), file=sys.stderr)
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())
