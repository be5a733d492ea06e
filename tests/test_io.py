"""Tests of the Parquet output: schema and metadata read back with pyarrow, partitions,
atomic replacement, and a writer killed mid-write that must leave the previous output intact."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import forecast
import forecast.io as fio
from forecast.errors import ParameterError
from forecast.results import Forecast


def synthetic_forecast(seed: int, n_paths: int = 300, as_of: str = "2025-01-01") -> Forecast:
    """A small hand-made forecast: 2 quarters, 2 segments, 5 deals (values depend on ``seed``)."""
    rng = np.random.default_rng(seed)
    wins = rng.integers(0, n_paths // 2, size=(5, 2))
    return Forecast(
        totals=rng.gamma(2.0, 1000.0, size=(n_paths, 2, 2, 2)),
        booked_to_date=np.array([[100.0, 200.0], [0.0, 0.0]]),
        deal_ids=np.array([f"D{i}" for i in range(5)]),
        deal_amounts=rng.uniform(1e3, 1e5, size=5),
        deal_wins=wins,
        deal_won_cents=wins * 123_456,
        quarters=("FY2025-Q1", "FY2025-Q2"),
        segments=("East", "West"),
        weighted_pipeline=np.array([5000.0, 100.0]),
        as_of=dt.datetime.fromisoformat(as_of),
        info={
            "seed": seed,
            "n_paths": n_paths,
            "model_fingerprint": f"model{seed}",
            "data_fingerprint": f"data{seed}",
            "calendar": {"start_month": 1, "year_label": "end"},
            "version": "0.1.0",
        },
        deal_segments=np.array(["East", "West", "East", "East", "West"]),
    )


def visible_files(root: Path) -> list[str]:
    """Files a dataset reader can see (no path component starting with '.' or '_')."""
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith((".", "_")) for part in rel.parts):
            out.append(str(rel))
    return sorted(out)


def test_schema_and_metadata_read_back_with_pyarrow(tmp_path: Path) -> None:
    fc = synthetic_forecast(1)
    written = fio.write_forecast(fc, tmp_path, include_paths=True)
    assert set(written) == {"quarterly", "segments", "deals", "paths"}
    assert visible_files(tmp_path) == [
        f"{t}/as_of=2025-01-01/part-0.parquet" for t in ("deals", "paths", "quarterly", "segments")
    ]
    write_ids = set()
    for table, directory in written.items():
        schema = pq.read_schema(directory / "part-0.parquet")
        assert schema.remove_metadata().equals(fio.SCHEMAS[table].remove_metadata())
        for field in schema:  # field docs survive the round trip
            assert field.metadata[b"unit"] == fio.SCHEMAS[table].field(field.name).metadata[b"unit"]
        meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        assert set(fio.METADATA_KEYS) <= set(meta)
        assert meta["forecast.version"] == forecast.__version__
        assert meta["forecast.table"] == table
        assert meta["forecast.seed"] == "1"
        assert meta["forecast.n_paths"] == "300"
        assert meta["forecast.model_fingerprint"] == "model1"
        assert meta["forecast.data_fingerprint"] == "data1"
        assert meta["forecast.as_of"] == "2025-01-01T00:00:00"
        assert json.loads(meta["forecast.calendar"]) == {"start_month": 1, "year_label": "end"}
        assert json.loads(meta["forecast.quarters"]) == ["FY2025-Q1", "FY2025-Q2"]
        write_ids.add(meta["forecast.write_id"])
    assert len(write_ids) == 1  # one write, one id across its tables

    quarterly = ds.dataset(tmp_path / "quarterly", partitioning=fio.PARTITIONING).to_table()
    assert quarterly.column("as_of").to_pylist() == [dt.date(2025, 1, 1)] * 2
    assert quarterly.column("mean").to_pylist() == pytest.approx(fc.quarterly()["mean"].to_list())
    assert quarterly.column("quarter_start").to_pylist() == [
        dt.date(2025, 1, 1),
        dt.date(2025, 4, 1),
    ]
    paths = pq.read_table(written["paths"] / "part-0.parquet")
    assert paths.num_rows == fc.totals.size
    assert sum(paths.column("bookings").to_pylist()) == pytest.approx(fc.totals.sum())
    deals = fio.read_forecast(tmp_path, "deals", as_of="2025-01-01")
    assert deals.height == 5 * 2
    assert set(deals["segment"].to_list()) == {"East", "West"}


def test_rerun_replaces_its_partition_only(tmp_path: Path) -> None:
    first = synthetic_forecast(1)
    other_day = dataclasses.replace(synthetic_forecast(2), as_of=dt.datetime(2024, 10, 1))
    fio.write_forecast(first, tmp_path, include_paths=True)
    fio.write_forecast(other_day, tmp_path)
    before_other = (tmp_path / "quarterly/as_of=2024-10-01/part-0.parquet").read_bytes()

    rerun = synthetic_forecast(3)
    fio.write_forecast(rerun, tmp_path, include_paths=True)
    q = fio.read_forecast(tmp_path, "quarterly", as_of="2025-01-01")
    assert q["mean"].to_list() == pytest.approx(rerun.quarterly()["mean"].to_list())
    assert (tmp_path / "quarterly/as_of=2024-10-01/part-0.parquet").read_bytes() == before_other
    assert fio.read_forecast(tmp_path, "quarterly").height == 4  # two partitions × 2 quarters
    assert not [p for p in tmp_path.rglob(".*")]  # no leftovers


def test_fallback_swap_without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fio, "_exchange", lambda a, b: False)
    fio.write_forecast(synthetic_forecast(1), tmp_path)
    fio.write_forecast(synthetic_forecast(4), tmp_path)
    q = fio.read_forecast(tmp_path, "quarterly")
    assert q["mean"].to_list() == pytest.approx(synthetic_forecast(4).quarterly()["mean"].to_list())
    assert not [p for p in tmp_path.rglob(".*")]


def test_previous_partition_restored_after_death_between_renames(tmp_path: Path) -> None:
    fc = synthetic_forecast(1)
    fio.write_forecast(fc, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    parent = tmp_path / "quarterly"
    # the state the two-rename fallback leaves if killed between its renames
    os.rename(parent / "as_of=2025-01-01", parent / f".old-as_of=2025-01-01-{dead.pid}-deadbeef")
    fio._recover(parent, "as_of=2025-01-01")
    assert (parent / "as_of=2025-01-01/part-0.parquet").exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(".")]


KILLED_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import forecast.io as fio
from test_io import synthetic_forecast

def hook(stage, table):
    if stage == "row_group" and table == "paths":
        Path({marker!r}).write_text("started")
        time.sleep(120)  # killed here, half-way through the paths file

fio._PATHS_ROWS_PER_GROUP = 1000
fio._hook = hook
fio.write_forecast(synthetic_forecast(99, n_paths=2000), {root!r}, include_paths=True)
"""


@pytest.mark.slow
def test_kill_mid_write_leaves_previous_partition_intact(tmp_path: Path) -> None:
    root = tmp_path / "out"
    previous = synthetic_forecast(1, n_paths=2000)
    fio.write_forecast(previous, root, include_paths=True)
    before = {p: (root / p).read_bytes() for p in visible_files(root)}

    marker = tmp_path / "started"
    script = KILLED_WRITER.format(
        tests=str(Path(__file__).parent), marker=str(marker), root=str(root)
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited before reaching the paths table"
            assert time.monotonic() < deadline, "writer never started writing"
            time.sleep(0.05)
        # the writer is mid-way: a partial paths file exists in a hidden temp directory
        partial = list((root / "paths").glob(".tmp-as_of=2025-01-01-*/part-0.parquet"))
        assert len(partial) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # previous output intact, byte for byte, and nothing partial is visible
    assert visible_files(root) == sorted(before)
    for p, data in before.items():
        assert (root / p).read_bytes() == data
    for table in ("quarterly", "segments", "deals", "paths"):
        got = fio.read_forecast(root, table)
        assert got.height > 0
    q = fio.read_forecast(root, "quarterly")
    assert q["mean"].to_list() == pytest.approx(previous.quarterly()["mean"].to_list())

    # the next run cleans the dead writer's hidden leftovers and replaces the partition
    fio.write_forecast(synthetic_forecast(5, n_paths=2000), root, include_paths=True)
    assert not [p for p in root.rglob(".*")]
    q = fio.read_forecast(root, "quarterly")
    assert q["mean"].to_list() == pytest.approx(
        synthetic_forecast(5, n_paths=2000).quarterly()["mean"].to_list()
    )


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="Forecast"):
        fio.write_forecast("not a forecast", tmp_path)  # type: ignore[arg-type]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ParameterError, match="directory"):
        fio.write_forecast(synthetic_forecast(1), afile)
    with pytest.raises(ParameterError, match="table"):
        fio.read_forecast(tmp_path, "nope")
    with pytest.raises(FileNotFoundError):
        fio.read_forecast(tmp_path, "quarterly")
    assert "currency" in fio.describe_schema("quarterly")


def test_atomic_write_bytes_uses_umask_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        fio.atomic_write_bytes(tmp_path / "a.bin", b"abc")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
