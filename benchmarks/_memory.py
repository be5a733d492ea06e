"""Resident memory per phase: a thread samples the process's RSS while phases run.

``tracemalloc`` does not see the buffers of polars, Arrow or Numba, so the
benchmarks sample the resident set size (``/proc/self/statm``, Linux) every
millisecond from a background thread and attribute each sample to the innermost
phase running at the time. Phases are marked with :meth:`PhaseMemory.phase` or by
wrapping a function (:meth:`PhaseMemory.wrap`). The process's true peak
(``ru_maxrss``, which no sampling can miss) is reported beside the sampled one.

Example::

    mem = PhaseMemory()
    with mem:
        with mem.phase("read"):
            log = read_deal_log(path)
    print(mem.table(frame_mb=log.events.estimated_size("mb")))
"""

from __future__ import annotations

import functools
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    """Current resident set size of this process (MB; 0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_MB
    except OSError:  # pragma: no cover - not Linux
        return 0.0


def anon_mb() -> float:
    """Current anonymous resident memory of this process (MB): the resident set minus
    its file-backed and shared pages (``/proc/self/statm``), i.e. the data without the
    pages of the mapped libraries, whose count depends on the page cache (0 where
    ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            fields = fh.read().split()
        return (int(fields[1]) - int(fields[2])) * _PAGE_MB
    except OSError:  # pragma: no cover - not Linux
        return 0.0


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``, MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseMemory:
    """Sample RSS every ``interval_s`` seconds; keep the peak and duration of each phase.

    Parameters
    ----------
    interval_s : float, default 0.001
        Sampling period (seconds).
    """

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.baseline_mb = rss_mb()
        self._stack: list[str] = ["(outside phases)"]
        self._peak: dict[str, float] = {}
        self._anon_peak: dict[str, float] = {}
        #: Peak sampled anonymous memory (MB, :func:`anon_mb`) while sampling.
        self.anon_peak_mb = 0.0
        self._start_rss: dict[str, float] = {}
        self._end_rss: dict[str, float] = {}
        self._seconds: dict[str, float] = {}
        self._order: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sampling ---------------------------------------------------------------------
    def __enter__(self) -> PhaseMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _note(self, value: float, anon: float | None = None) -> None:
        name = self._stack[-1]
        if value > self._peak.get(name, 0.0):
            self._peak[name] = value
        if anon is not None and anon > self._anon_peak.get(name, 0.0):
            self._anon_peak[name] = anon

    def _run(self) -> None:
        while not self._stop.is_set():
            anon = anon_mb()
            self._note(rss_mb(), anon)
            self.anon_peak_mb = max(self.anon_peak_mb, anon)
            time.sleep(self.interval_s)

    # -- phases -----------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the samples taken while the block runs (outside nested phases) to ``name``."""
        if name not in self._order:
            self._order.append(name)
        now = rss_mb()
        self._note(now)
        self._start_rss.setdefault(name, now)
        self._stack.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - t0
            now = rss_mb()
            self._note(now)
            self._stack.pop()
            self._end_rss[name] = now

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` running inside :meth:`phase` ``(name)`` on every call."""

        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return func(*args, **kwargs)

        return wrapped

    # -- results ----------------------------------------------------------------------
    def peaks(self) -> dict[str, float]:
        """Peak sampled RSS of each phase (MB), in first-entered order."""
        return {name: self._peak.get(name, 0.0) for name in self._order}

    def rows(self) -> list[dict[str, float | str]]:
        """One dict per phase: name, seconds, RSS at entry, at exit, its peak and its sampled
        anonymous peak (MB, :func:`anon_mb`; 0 if no sample fell in the phase)."""
        return [
            {
                "phase": name,
                "seconds": self._seconds.get(name, 0.0),
                "rss_in_mb": self._start_rss.get(name, 0.0),
                "rss_out_mb": self._end_rss.get(name, 0.0),
                "peak_mb": self._peak.get(name, 0.0),
                "anon_peak_mb": self._anon_peak.get(name, 0.0),
            }
            for name in self._order
        ]

    def table(self, frame_mb: float, import_mb: float | None = None) -> str:
        """The phases as a text table with peaks as multiples of the event frame.

        Parameters
        ----------
        frame_mb : float
            In-memory size of the event frame (MB), the yardstick.
        import_mb : float, optional
            RSS after importing the package (MB): the last column is the peak above
            it, in event frames.
        """
        base = self.baseline_mb if import_mb is None else import_mb
        head = (
            f"{'phase':<28}{'s':>7}{'RSS in':>9}{'RSS out':>9}{'peak MB':>9}"
            f"{'× frame':>9}{'(peak-import)× frame':>22}{'anon MB':>9}"
        )
        lines = [head]
        for r in self.rows():
            peak = float(r["peak_mb"])
            lines.append(
                f"{r['phase']!s:<28}{r['seconds']:>7.1f}{r['rss_in_mb']:>9.0f}"
                f"{r['rss_out_mb']:>9.0f}{peak:>9.0f}{peak / frame_mb:>9.1f}"
                f"{(peak - base) / frame_mb:>22.1f}{float(r['anon_peak_mb']):>9.0f}"
            )
        return "\n".join(lines)
