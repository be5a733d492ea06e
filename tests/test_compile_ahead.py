"""Compiling ahead (``forecast._kernels.ahead``): the second process compiles exactly the
specialisations a fit and simulation call, and a run waits for them correctly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forecast._kernels import ahead


def test_ahead_signatures_are_those_a_fit_and_simulation_compile(sample_model, sample_forecast):
    # The session fixtures fitted the sample (Aalen-Johansen summaries of the draws, exit
    # densities of their curves) and simulated it (sampling kernel): the signatures compiled
    # ahead must be among those the real call paths compiled, or the run compiles them
    # again itself.
    for kernel, signature in ahead._signatures():
        assert signature in kernel.signatures, (
            f"{kernel.py_func.__name__}: compiled ahead {signature}, "
            f"called with {kernel.signatures}"
        )
    assert [kernel.py_func.__name__ for kernel, _ in ahead._signatures()] == list(ahead.KERNELS)


def test_wait_reads_the_reports_until_the_kernel_and_stops_at_the_end(monkeypatch):
    script = "print('_sample_block', flush=True); print('aalen_johansen_summaries', flush=True)"
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0
    )
    done: set[str] = set()
    monkeypatch.setattr(ahead, "_PROCESS", process)
    monkeypatch.setattr(ahead, "_DONE", done)
    monkeypatch.setattr(ahead, "_PENDING", [b""])
    try:
        ahead.wait("aalen_johansen_summaries")
        assert done == {"_sample_block", "aalen_johansen_summaries"}
        # never reported: the process ends, and wait gives up on every kernel
        ahead.wait("scaled_day_densities")
        assert done == set(ahead.KERNELS)
    finally:
        process.wait()
        process.stdout.close()


def test_wait_without_a_second_process_returns_at_once(monkeypatch):
    monkeypatch.setattr(ahead, "_PROCESS", None)
    monkeypatch.setattr(ahead, "_DONE", set())
    ahead.wait("_sample_block")
    assert ahead._DONE == set()


@pytest.mark.slow
def test_the_second_process_compiles_every_kernel_into_the_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        ahead.command(),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(ahead.KERNELS)
    indexes = {p.name.split("-")[0] for p in tmp_path.rglob("*.nbi")}
    assert {"sample._sample_block", "estimators.aalen_johansen_summaries"} <= indexes
    assert "densities.scaled_day_densities" in indexes
    # a process with this cache finds every signature fresh (and starts nothing)
    check = (
        "from forecast._kernels import ahead;"
        "print(all(ahead._cached(k, s) for k, s in ahead._signatures()))"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120
    )
    assert found.stdout.strip() == "True", found.stderr


def test_waiting_for_a_kernel_not_compiled_ahead_returns_at_once(monkeypatch):
    # a kernel the run compiles itself (the Cox partial likelihood) is never reported
    # by the second process: waiting for it must not block until that process ends
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        bufsize=0,
    )
    monkeypatch.setattr(ahead, "_PROCESS", process)
    monkeypatch.setattr(ahead, "_DONE", set())
    monkeypatch.setattr(ahead, "_PENDING", [b""])
    try:
        ahead.wait("cox_efron")
        assert process.poll() is None  # returned while the process still runs
        assert ahead._DONE == set()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_the_second_process_does_not_import_the_library(tmp_path):
    # it imports the kernels only (bare ``forecast`` packages): not polars, not the library
    script = ahead.command()[-1].replace(
        "compile_all()\n",
        "print(sorted(m for m in ('polars', 'scipy.stats', 'forecast.fit') if m in sys.modules))\n",
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
