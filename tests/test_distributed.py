"""Runs on a Dask LocalCluster with worker processes (and a process pool) give
exactly the samples of a local run for the same seed."""

import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import polars as pl
import pytest

from forecast.backtest import backtest

pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def fitted(sample_log, sample_model):
    return sample_log, sample_model


@pytest.fixture(scope="module")
def dask_client():
    cluster = distributed.LocalCluster(
        # ":0": a free port for the dashboard, so that a cluster another process runs
        # on the same machine (default port 8787) does not make this one warn
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def dask_executor(dask_client):
    return dask_client.get_executor()


def _same(a, b):
    assert np.array_equal(a.totals, b.totals)
    assert np.array_equal(a.deal_wins, b.deal_wins)
    assert np.array_equal(a.deal_won_cents, b.deal_won_cents)
    assert a.quarterly().equals(b.quarterly())


def test_simulation_on_dask_cluster_is_bit_identical(fitted, dask_executor):
    log, model = fitted
    local = model.simulate(log, n_paths=6_500, horizon=3, seed=11)
    remote = model.simulate(log, n_paths=6_500, horizon=3, seed=11, executor=dask_executor)
    _same(local, remote)
    other_seed = model.simulate(log, n_paths=6_500, horizon=3, seed=12, executor=dask_executor)
    assert not np.array_equal(local.totals, other_seed.totals)


def test_simulation_on_process_pool_is_bit_identical(fitted):
    log, model = fitted
    local = model.simulate(log, n_paths=4_100, horizon=2, seed=3, threads=1)
    # "spawn": forking a process whose Numba kernels already started OpenMP threads
    # is unsafe (GNU OpenMP aborts the child), so pools must spawn their workers.
    with ProcessPoolExecutor(
        max_workers=2, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        remote = model.simulate(log, n_paths=4_100, horizon=2, seed=3, executor=pool)
    _same(local, remote)


def test_backtest_on_dask_cluster_is_identical(dask_executor, sample_log):
    log = sample_log
    kwargs = dict(origins=["2024-04-01", "2024-07-01"], horizon=1, n_paths=500, n_draws=2, seed=4)
    local = backtest(log, **kwargs)
    remote = backtest(log, executor=dask_executor, **kwargs)
    assert isinstance(local.scores(), pl.DataFrame) and local.scores().height > 0
    assert local.scores().equals(remote.scores())


def test_cli_runs_on_a_dask_scheduler(dask_client, tmp_path):
    def demo(*extra):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "forecast.cli",
                "demo",
                "--paths",
                "4000",
                "--no-progress",
                "--draws",
                "2",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        return [line for line in r.stdout.splitlines() if line.startswith("FY")]

    local = demo()
    remote = demo("--dask-scheduler", dask_client.scheduler.address)
    assert len(local) == 4 and local == remote
