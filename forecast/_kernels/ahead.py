"""Compiling ahead: kernels a run needs late, compiled by a second process while it starts.

The first run after installing compiles every kernel it calls (Numba caches them on
disk for the next runs), one after another: Numba compiles under one global lock, so
threads cannot share the work. A command line run (``forecast demo``, ``forecast run``,
``forecast report``) that finds the kernels it will need late — the sampling kernel
(first called by the automatic half-life backtest), the Aalen–Johansen summaries of
the parameter draws and the exit densities of every draw's curves — missing from the
cache starts a second process (:func:`command`) before it reads its input. That process
compiles them, in that order, into the same cache while the run reads and starts
fitting, compiling the kernels it needs first itself (the fit's estimators, the
outcome probabilities of the backtest) and the Cox partial likelihood of the final fit:
which kernel goes to which process balances the two processes' compile times on a
first ``forecast demo`` (``benchmarks/compile_profile.py`` lists them). Before its first
call of one of them, the run waits until the other process reports it compiled
(:func:`wait`), then loads it from the cache.

Nothing else changes: the same kernels with the same signatures and options, so the
same machine code and the same numbers. It only saves time on a machine with a core
to spare; the CPU time is the same (plus the second process's start). If the second
process fails, or compiles another signature than the run then needs (the argument
types in ``_signatures``, which ``tests/test_compile_ahead.py`` checks against a fit and
simulation), the run compiles the kernel itself, as without it.
"""

from __future__ import annotations

import atexit
import os
import select
import subprocess
import sys
import threading
from typing import Any

from numba import types

from forecast._kernels.densities import scaled_day_densities
from forecast._kernels.estimators import aalen_johansen_summaries
from forecast._kernels.sample import _sample_block

__all__ = ["KERNELS", "command", "compile_all", "start", "wait"]

#: The kernels compiled ahead, in the order a run first calls them, by name.
KERNELS = ("_sample_block", "aalen_johansen_summaries", "scaled_day_densities")

#: Seconds a run waits for one kernel at most (a compilation takes seconds).
WAIT_LIMIT = 300.0

_LOCK = threading.Lock()
_PROCESS: subprocess.Popen[bytes] | None = None
_DONE: set[str] = set()
_PENDING = [b""]  # the start of a report line not read to its end yet


def _signatures() -> list[tuple[Any, tuple[Any, ...]]]:
    """Each kernel of :data:`KERNELS` and the argument types its call path passes."""

    def arr(dtype: Any, ndim: int, readonly: bool = False) -> Any:
        return types.Array(dtype, ndim, "C", readonly=readonly)

    f64, i64 = types.float64, types.int64
    f1, f2, f3, f4 = (arr(f64, n) for n in (1, 2, 3, 4))
    i1, i2, i3 = (arr(i64, n) for n in (1, 2, 3))
    sample = (f3, f2, f3, f1, i1, i2, f1, f3, f1, f4, f3, f4, i2, f1, f1)  # inputs
    sample += (i64,) * 5 + (f4, i3, i3)  # seed .. blk; outputs
    aj = (f2, i1, f1, f1, i1, i1, f2, i1, f3, f2)
    dens = (arr(f64, 2, True), f2, f2, f3, f3, f3)
    return [
        (_sample_block, sample),
        (aalen_johansen_summaries, aj),
        (scaled_day_densities, dens),
    ]


def _cached(kernel: Any, signature: tuple[Any, ...]) -> bool:
    """Whether Numba's on-disk cache holds ``kernel`` compiled for ``signature``, fresh."""
    try:  # the index Numba reads on a first call ({} if missing or stale)
        index = kernel._cache._cache_file._load_index()
        return any(key[0] == signature for key in index)
    except Exception:  # no cache (NUMBA_DISABLE_JIT, another Numba): nothing to gain
        return True


def start() -> bool:
    """Start compiling :data:`KERNELS` in a second process if any is missing from the cache.

    Returns whether a process was started. Call once, early; later calls do nothing.
    """
    global _PROCESS
    with _LOCK:
        if _PROCESS is not None or _DONE:
            return False
        if all(_cached(kernel, signature) for kernel, signature in _signatures()):
            _DONE.update(KERNELS)
            return False
        try:
            _PROCESS = subprocess.Popen(
                command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                bufsize=0,
            )
        except OSError:
            _DONE.update(KERNELS)
            return False
        atexit.register(_finish)
        return True


def wait(name: str) -> None:
    """Return once the second process has compiled kernel ``name`` (or has ended).

    Does nothing when no process was started, or ``name`` is not one of :data:`KERNELS`.
    """
    if name not in KERNELS:
        return
    with _LOCK:
        process = _PROCESS
        if process is None or name in _DONE or process.stdout is None:
            return
        fd = process.stdout.fileno()
        while name not in _DONE:
            if not _readable(fd, WAIT_LIMIT):
                _DONE.update(KERNELS)  # stuck: the caller compiles what it needs
                break
            chunk = os.read(fd, 4096)  # unbuffered: select sees every line not yet read
            if not chunk:  # ended (or failed): the caller compiles what is missing
                _DONE.update(KERNELS)
                break
            *lines, _PENDING[0] = (_PENDING[0] + chunk).split(b"\n")
            _DONE.update(line.decode().strip() for line in lines)


def _readable(fd: int, timeout: float) -> bool:
    """Whether file descriptor ``fd`` has data (or its end) within ``timeout`` seconds."""
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    except (OSError, ValueError):  # no select on pipes (Windows): read and block
        return True
    return bool(ready)


def _finish() -> None:
    """At exit: stop the second process if it is still compiling, and reap it."""
    process = _PROCESS
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def command() -> list[str]:
    """The command line of the second process: :func:`compile_all` in this interpreter.

    The process imports only the kernels it compiles: ``forecast`` and
    ``forecast._kernels`` are registered as bare packages (their directories, without
    running their ``__init__.py``, which import polars, scipy and the rest of the
    library), so compiling starts about 0.8 s of CPU sooner. The kernels' source files,
    and so their cache entries, are the same.
    """
    kernels = os.path.dirname(os.path.abspath(__file__))
    packages = {"forecast": os.path.dirname(kernels), "forecast._kernels": kernels}
    script = (
        "import sys, types\n"
        f"for name, path in {packages!r}.items():\n"
        "    sys.modules[name] = package = types.ModuleType(name)\n"
        "    package.__path__ = [path]\n"
        "from forecast._kernels.ahead import compile_all\n"
        "compile_all()\n"
    )
    return [sys.executable, "-c", script]


def compile_all() -> None:
    """Compile (and cache) every kernel of :data:`KERNELS`, printing each name when done."""
    for kernel, signature in _signatures():
        kernel.compile(signature)
        print(kernel.py_func.__name__, flush=True)
