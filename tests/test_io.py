"""Tests of the Parquet output: schema and metadata read back with pyarrow, polars and
DuckDB, one as-of directory per forecast switched in one step, and a writer failing or
killed at every step of a write, which must leave one complete forecast behind."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
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


def write_ids(directory: Path) -> dict[str, str]:
    """Table name -> the ``forecast.write_id`` of its file, for one as-of directory."""
    out = {}
    for f in sorted(directory.glob("*/part-0.parquet")):
        meta = pq.read_schema(f).metadata
        assert meta[b"forecast.table"].decode() == f.parent.name
        out[f.parent.name] = meta[b"forecast.write_id"].decode()
    return out


def staging_leftovers(root: Path) -> list[str]:
    staging = root / fio.STAGING_DIR
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def test_schema_and_metadata_read_back_with_pyarrow(tmp_path: Path) -> None:
    fc = synthetic_forecast(1)
    written = fio.write_forecast(fc, tmp_path, include_paths=True)
    assert set(written) == {"quarterly", "segments", "deals", "paths"}
    assert visible_files(tmp_path) == [
        f"as_of=2025-01-01/{t}/part-0.parquet" for t in ("deals", "paths", "quarterly", "segments")
    ]
    assert {t: d.relative_to(tmp_path).as_posix() for t, d in written.items()} == {
        t: f"as_of=2025-01-01/{t}" for t in written
    }
    for table, directory in written.items():
        schema = pq.read_schema(directory / "part-0.parquet")
        assert schema.remove_metadata().equals(fio.SCHEMAS[table].remove_metadata())
        for field in schema:  # field docs survive the round trip
            assert field.metadata[b"unit"] == fio.SCHEMAS[table].field(field.name).metadata[b"unit"]
        meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        assert set(fio.METADATA_KEYS) <= set(meta)
        assert meta["forecast.version"] == forecast.__version__
        assert meta["forecast.schema_version"] == fio.SCHEMA_VERSION
        assert meta["forecast.table"] == table
        assert meta["forecast.seed"] == "1"
        assert meta["forecast.n_paths"] == "300"
        assert meta["forecast.model_fingerprint"] == "model1"
        assert meta["forecast.data_fingerprint"] == "data1"
        assert meta["forecast.as_of"] == "2025-01-01T00:00:00"
        assert json.loads(meta["forecast.calendar"]) == {"start_month": 1, "year_label": "end"}
        assert json.loads(meta["forecast.quarters"]) == ["FY2025-Q1", "FY2025-Q2"]
    assert len(set(write_ids(tmp_path / "as_of=2025-01-01").values())) == 1  # one write, one id

    quarterly = ds.dataset(
        fio.table_files(tmp_path, "quarterly"),
        partitioning=fio.PARTITIONING,
        partition_base_dir=str(tmp_path),
    ).to_table()
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


def test_layout_reads_with_polars_duckdb_and_pyarrow(tmp_path: Path) -> None:
    """The documented globs read every as-of date of one table, and nothing staged."""
    duckdb = pytest.importorskip("duckdb")
    first = synthetic_forecast(1)
    second = dataclasses.replace(synthetic_forecast(2), as_of=dt.datetime(2025, 4, 1))
    fio.write_forecast(first, tmp_path)
    fio.write_forecast(second, tmp_path)
    # a write in progress: a complete-looking table in the staging area must stay unseen
    staged = tmp_path / fio.STAGING_DIR / f"new-as_of=2025-07-01-{os.getpid()}-0badcafe"
    shutil.copytree(tmp_path / "as_of=2025-01-01", staged)
    expected = sorted(
        [(dt.date(2025, 1, 1), m) for m in first.quarterly()["mean"].to_list()]
        + [(dt.date(2025, 4, 1), m) for m in second.quarterly()["mean"].to_list()]
    )
    glob = str(tmp_path / "as_of=*" / "quarterly" / "*.parquet")

    lazy = pl.scan_parquet(glob, hive_partitioning=True)
    got_polars = sorted(lazy.select("as_of", "mean").collect().iter_rows())
    got_duckdb = sorted(
        duckdb.sql(
            f"SELECT as_of, mean FROM read_parquet('{glob}', hive_partitioning = true)"
        ).fetchall()
    )
    table = ds.dataset(
        fio.table_files(tmp_path, "quarterly"),
        partitioning=fio.PARTITIONING,
        partition_base_dir=str(tmp_path),
    ).to_table()
    got_pyarrow = sorted(zip(table.column("as_of").to_pylist(), table.column("mean").to_pylist()))
    got_helper = sorted(
        fio.read_forecast(tmp_path, "quarterly").select("as_of", "mean").iter_rows()
    )
    for got in (got_polars, got_duckdb, got_pyarrow, got_helper):
        assert [d for d, _ in got] == [d for d, _ in expected]
        assert [m for _, m in got] == pytest.approx([m for _, m in expected])


def test_rerun_replaces_its_date_only_and_every_table_of_it(tmp_path: Path) -> None:
    first = synthetic_forecast(1)
    other_day = dataclasses.replace(synthetic_forecast(2), as_of=dt.datetime(2024, 10, 1))
    fio.write_forecast(first, tmp_path, include_paths=True)
    fio.write_forecast(other_day, tmp_path)
    before_other = (tmp_path / "as_of=2024-10-01/quarterly/part-0.parquet").read_bytes()

    rerun = synthetic_forecast(3)
    fio.write_forecast(rerun, tmp_path)  # no paths this time
    q = fio.read_forecast(tmp_path, "quarterly", as_of="2025-01-01")
    assert q["mean"].to_list() == pytest.approx(rerun.quarterly()["mean"].to_list())
    assert (tmp_path / "as_of=2024-10-01/quarterly/part-0.parquet").read_bytes() == before_other
    assert fio.read_forecast(tmp_path, "quarterly").height == 4  # two dates × 2 quarters
    # the first run's paths are gone with it: no table of another run is left beside the rerun
    assert set(write_ids(tmp_path / "as_of=2025-01-01")) == {"quarterly", "segments", "deals"}
    assert len(set(write_ids(tmp_path / "as_of=2025-01-01").values())) == 1
    with pytest.raises(FileNotFoundError, match="paths"):
        fio.read_forecast(tmp_path, "paths", as_of="2025-01-01")
    assert staging_leftovers(tmp_path) == []
    assert not [p for p in tmp_path.rglob(".*") if p.name != fio.STAGING_DIR]


def test_fallback_swap_without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fio, "_exchange", lambda a, b: False)
    fio.write_forecast(synthetic_forecast(1), tmp_path)
    fio.write_forecast(synthetic_forecast(4), tmp_path)
    q = fio.read_forecast(tmp_path, "quarterly")
    assert q["mean"].to_list() == pytest.approx(synthetic_forecast(4).quarterly()["mean"].to_list())
    assert staging_leftovers(tmp_path) == []


def test_parked_directory_restored_after_death_between_renames(tmp_path: Path) -> None:
    fio.write_forecast(synthetic_forecast(1), tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in visible_files(tmp_path)}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    # the state the two-rename fallback leaves if killed between its renames
    os.rename(
        tmp_path / "as_of=2025-01-01",
        tmp_path / fio.STAGING_DIR / f"old-as_of=2025-01-01-{dead.pid}-deadbeef",
    )
    assert visible_files(tmp_path) == []  # nothing of that date visible, not a mixture
    fio._recover(tmp_path)
    assert {p: (tmp_path / p).read_bytes() for p in visible_files(tmp_path)} == before
    assert staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", ["staging", "written", "staged", "parked", "swapped", "cleaned"])
def test_error_at_any_step_leaves_one_complete_forecast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """An exception (disk full, permission, interrupt) at a step of the write: the
    previous forecast stays whole, or the new one is whole; nothing is left behind."""
    monkeypatch.setattr(fio, "_exchange", lambda a, b: False)  # the path with most steps
    fio.write_forecast(synthetic_forecast(1), tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in visible_files(tmp_path)}

    def fail(step: str, table: str) -> None:
        if step == stage:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(fio, "_hook", fail)
    with pytest.raises(OSError, match="No space"):
        fio.write_forecast(synthetic_forecast(2), tmp_path, include_paths=True)
    after = {p: (tmp_path / p).read_bytes() for p in visible_files(tmp_path)}
    ids = write_ids(tmp_path / "as_of=2025-01-01")
    assert len(set(ids.values())) == 1
    if stage in ("swapped", "cleaned"):  # the new forecast was already in place
        assert set(ids) == set(fio.TABLES)
    else:
        assert after == before
    monkeypatch.setattr(fio, "_hook", None)
    assert staging_leftovers(tmp_path) == []
    fio.write_forecast(synthetic_forecast(3), tmp_path)
    assert staging_leftovers(tmp_path) == []


# -- a writer killed at every step -------------------------------------------------------
# The child imports only `forecast.io` and `forecast.results` under a bare `forecast`
# package (not the package's __init__, which loads every module): each child costs
# about half as much, and there is one child per kill point.
KILLED_WRITER = """
import os, signal, sys, types
package = types.ModuleType("forecast")
package.__path__ = [{package!r}]
package.__version__ = {version!r}
sys.modules["forecast"] = package
sys.path.insert(0, {tests!r})
import forecast.io as fio
from test_io import synthetic_forecast

calls = 0

def hook(stage, table):
    global calls
    if calls == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    calls += 1

fio._PATHS_ROWS_PER_GROUP = 1000
if {fallback}:
    fio._exchange = lambda a, b: False
fio._hook = hook
fio.write_forecast(synthetic_forecast(99, n_paths=1000), {root!r}, include_paths=True)
"""


def write_steps(tmp_path: Path, fallback: bool) -> list[tuple[str, str]]:
    """The hook calls of the killed writer's write (over a previous forecast), in order."""
    calls: list[tuple[str, str]] = []
    old = (fio._hook, fio._exchange, fio._PATHS_ROWS_PER_GROUP)
    try:
        fio._hook = lambda stage, table: calls.append((stage, table))
        fio._PATHS_ROWS_PER_GROUP = 1000
        if fallback:
            fio._exchange = lambda a, b: False
        root = tmp_path / "dry"
        fio.write_forecast(synthetic_forecast(1, n_paths=1000), root)
        calls.clear()
        fio.write_forecast(synthetic_forecast(99, n_paths=1000), root, include_paths=True)
    finally:
        fio._hook, fio._exchange, fio._PATHS_ROWS_PER_GROUP = old
    return calls


def kill_points(steps: list[tuple[str, str]], fallback: bool) -> list[int]:
    """Every point of the write's code: each step kind of the first and the last table
    (the middle tables run the same code), the first, a middle and the last row group of
    the multi-group table, and each step of the switch. With the fallback, only the
    steps of the switch (the writing steps are the same code)."""
    tables = [t for _, t in steps if t]
    keep = {tables[0], tables[-1]}
    points = []
    for i, (stage, table) in enumerate(steps):
        if fallback and stage not in ("parked", "swapped", "cleaned"):
            continue
        if table and table not in keep:
            continue
        if stage == "row_group" and table == tables[-1]:
            groups = [j for j, s in enumerate(steps) if s == ("row_group", table)]
            if i not in (groups[0], groups[len(groups) // 2], groups[-1]):
                continue
        points.append(i)
    return points


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "two-renames"])
@pytest.mark.slow
def test_writer_killed_at_every_step(tmp_path: Path, fallback: bool) -> None:
    """SIGKILL at each step of a write: readers see the previous forecast whole or the
    new one whole (every table with the same write id), and the next write recovers."""
    steps = write_steps(tmp_path, fallback)
    stages = [s for s, _ in steps]
    assert stages[0] == "staging" and stages[-2:] == ["swapped", "cleaned"]
    assert ("parked" in stages) == fallback
    assert stages.count("row_group") > 3  # the paths table spans several row groups
    swapped_at = stages.index("swapped")

    previous = synthetic_forecast(1, n_paths=1000)
    other_day = dataclasses.replace(synthetic_forecast(2), as_of=dt.datetime(2024, 10, 1))
    template = tmp_path / "template"
    fio.write_forecast(other_day, template)
    fio.write_forecast(previous, template)  # no paths: a mixture would show as a 4th table
    before = {p: (template / p).read_bytes() for p in visible_files(template)}
    previous_id = set(write_ids(template / "as_of=2025-01-01").values())
    assert len(previous_id) == 1

    for step in kill_points(steps, fallback):
        root = tmp_path / f"killed-{step}"
        shutil.copytree(template, root)
        script = KILLED_WRITER.format(
            package=str(Path(fio.__file__).parent),
            version=forecast.__version__,
            tests=str(Path(__file__).parent),
            step=step,
            fallback=fallback,
            root=str(root),
        )
        proc = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
        where = f"killed at step {step} {steps[step]}"
        assert proc.returncode == -signal.SIGKILL, (where, proc.stderr.decode())

        if steps[step][0] == "parked":
            # between the two renames: that date shows nothing (never a mixture) until
            # the next write puts the previous directory back
            assert not (root / "as_of=2025-01-01").exists(), where
            fio._recover(root)
        got = {p: (root / p).read_bytes() for p in visible_files(root)}
        ids = write_ids(root / "as_of=2025-01-01")
        assert len(set(ids.values())) == 1, (where, ids)  # all tables from one run
        if step < swapped_at:
            assert got == before, where  # previous forecast, byte for byte
        else:
            assert set(ids) == set(fio.TABLES), where  # the new forecast, complete
            assert set(ids.values()) != previous_id, where
            q = fio.read_forecast(root, "quarterly", as_of="2025-01-01")
            assert q["mean"].to_list() == pytest.approx(
                synthetic_forecast(99, n_paths=1000).quarterly()["mean"].to_list()
            )
        other = "as_of=2024-10-01/quarterly/part-0.parquet"
        assert got[other] == before[other], where  # another date is never touched

        # the next write removes (or puts back) the dead writer's leftovers and succeeds
        rerun = synthetic_forecast(5, n_paths=1000)
        fio.write_forecast(rerun, root)
        assert staging_leftovers(root) == [], where
        ids = write_ids(root / "as_of=2025-01-01")
        assert set(ids) == {"quarterly", "segments", "deals"}, where
        assert len(set(ids.values())) == 1, where
        q = fio.read_forecast(root, "quarterly", as_of="2025-01-01")
        assert q["mean"].to_list() == pytest.approx(rerun.quarterly()["mean"].to_list())


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="Forecast"):
        fio.write_forecast("not a forecast", tmp_path)  # type: ignore[arg-type]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ParameterError, match="directory"):
        fio.write_forecast(synthetic_forecast(1), afile)
    with pytest.raises(ParameterError, match="table"):
        fio.read_forecast(tmp_path, "nope")
    with pytest.raises(FileNotFoundError, match="quarterly"):
        fio.read_forecast(tmp_path, "quarterly")
    with pytest.raises(ParameterError, match="as_of"):
        fio.read_forecast(tmp_path, "quarterly", as_of="next week")
    assert "currency" in fio.describe_schema("quarterly")


def test_atomic_write_bytes_uses_umask_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        fio.atomic_write_bytes(tmp_path / "a.bin", b"abc")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
