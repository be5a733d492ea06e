"""What every benchmark shares: the machine it ran on, and its results for ``run_all.py``.

Each benchmark prints its own report and, with ``--json PATH``, writes its headline
results as rows (:func:`result`), each a value set against a reference measured in the
same run, so that ``run_all.py`` can put all of them in one table.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

#: SIMD levels by the widest instruction set the CPU reports (``/proc/cpuinfo`` flags).
_SIMD_LEVELS = (
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("avx", "AVX"),
    ("sse4_2", "SSE4.2"),
)


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
            break
    return model, flags


def simd_level(flags: set[str]) -> str:
    """The widest of AVX-512, AVX2, AVX, SSE4.2 in a set of CPU flags ("other" if none)."""
    return next((name for flag, name in _SIMD_LEVELS if flag in flags), "other")


def machine() -> dict[str, Any]:
    """CPU model, SIMD level (CPU flags and what Numba's LLVM compiles for), cores, load."""
    import llvmlite.binding as llvm
    import numba

    model, flags = _cpuinfo()
    features = llvm.get_host_cpu_features()
    llvm_flags = {name for name, on in features.items() if on}
    return {
        "cpu": model,
        "simd": simd_level(flags) if flags else simd_level(llvm_flags),
        "numba_cpu": numba.config.CPU_NAME or llvm.get_host_cpu_name(),
        "numba_simd": simd_level(llvm_flags),
        "cores": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "numba": numba.__version__,
    }


def describe(info: dict[str, Any]) -> str:
    """One line for a report header."""
    load = info["load_average"]
    load_text = "n/a" if load is None else " / ".join(f"{x:.2f}" for x in load)
    return (
        f"CPU: {info['cpu']} ({info['cores']} logical cores); SIMD: {info['simd']} "
        f"(Numba {info['numba']} compiles for {info['numba_cpu']}, {info['numba_simd']}); "
        f"load average 1/5/15 min: {load_text}"
    )


def result(
    benchmark: str,
    measure: str,
    value: float,
    unit: str,
    reference: str,
    reference_value: float,
    reference_unit: str,
    ratio: float | None = None,
) -> dict[str, Any]:
    """One headline result: ``value`` against a ``reference`` measured in the same run.

    ``ratio`` defaults to ``value / reference_value``.
    """
    if ratio is None:
        ratio = value / reference_value if reference_value else float("nan")
    return {
        "benchmark": benchmark,
        "measure": measure,
        "value": float(value),
        "unit": unit,
        "reference": reference,
        "reference_value": float(reference_value),
        "reference_unit": reference_unit,
        "ratio": float(ratio),
    }


def write_results(path: str | None, rows: list[dict[str, Any]], **extra: Any) -> None:
    """Write ``rows`` (and ``extra`` fields, e.g. the machine) as JSON to ``path``, if given."""
    if path:
        Path(path).write_text(json.dumps({"rows": rows, **extra}, indent=1))
