"""Writing results: atomic files and Parquet datasets for batch jobs.

Layout written by :func:`write_forecast` under ``root``: one directory per as-of
date holding every table of that forecast::

    root/
      as_of=2025-01-01/
        quarterly/part-0.parquet   one row per quarter
        segments/part-0.parquet    one row per (quarter, segment)
        deals/part-0.parquet       one row per (quarter, open deal)
        paths/part-0.parquet       raw samples (``include_paths=True``)
      as_of=2025-04-01/
        ...
      .staging/                    hidden: writes in progress (normally empty)

Each table, across the as-of directories, is a Hive-partitioned Parquet dataset
keyed by the as-of *date* (``as_of=YYYY-MM-DD``; the partition column is not
stored inside the files). The column types are fixed by :data:`SCHEMAS`
(documented field by field, units in each field's ``unit`` metadata), and every
file carries key-value metadata (:data:`METADATA_KEYS`): package version, seed,
number of paths, model and data fingerprints, as-of instant, calendar, and a
``write_id`` shared by the tables of one call so that a reader can check that they
belong together.

One write, one commit: every table of a forecast is first written complete (files
and directories fsync'ed) into a hidden directory under ``root/.staging/``, and
the whole as-of directory is then switched in one step: on Linux one
``renameat2(RENAME_EXCHANGE)`` swaps the new directory with the previous one
atomically (elsewhere: two renames, with the previous directory parked in
``.staging/`` in between and put back by the next write if the process died
there, so that a reader sees the previous forecast or nothing, never a mixture).
A crash or kill at any moment therefore leaves the previous forecast of that date
complete or the new one complete, never tables of different runs side by side
and never a partial file in a visible place; rerunning a job replaces its own
as-of directory (all its tables, including a ``paths`` table it no longer
writes) and nothing else. Leftovers of writers that died are removed (or put
back) by the next write to the same ``root``.

Read back with :func:`read_forecast`, or directly with a glob over the as-of
directories (``as_of=*`` rather than ``*``, which would also match ``.staging``)::

    pl.scan_parquet("root/as_of=*/quarterly/*.parquet", hive_partitioning=True)
    duckdb.sql("SELECT * FROM read_parquet('root/as_of=*/quarterly/*.parquet', "
               "hive_partitioning = true)")
    ds.dataset(table_files("root", "quarterly"), partitioning=PARTITIONING,
               partition_base_dir="root")
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from forecast._validation import check_bool
from forecast._version import __version__
from forecast.calendar import FiscalCalendar
from forecast.errors import ParameterError
from forecast.results import Forecast

__all__ = [
    "METADATA_KEYS",
    "PARTITIONING",  # noqa: F822 (built on first use, by the module's __getattr__)
    "SCHEMAS",
    "TABLES",
    "atomic_write_bytes",
    "atomic_write_text",
    "describe_schema",
    "read_forecast",
    "table_files",
    "write_forecast",
]

#: Version of the Parquet layout below; bumped when a schema or the directory layout
#: changes incompatibly ("2": one directory per as-of date holding every table).
SCHEMA_VERSION = "2"

#: Table names, in the order they are written.
TABLES: tuple[str, ...] = ("quarterly", "segments", "deals", "paths")

#: Hive partitioning of every dataset: ``as_of=YYYY-MM-DD`` read as a date.
#: (``PARTITIONING``, a ``pyarrow.dataset.Partitioning``, is built on first use: importing
#: ``pyarrow.dataset`` imports pandas, about a second that every command would pay.)
_PARTITIONING: Any = None


def _partitioning() -> Any:
    global _PARTITIONING
    if _PARTITIONING is None:
        import pyarrow.dataset as ds

        _PARTITIONING = ds.partitioning(pa.schema([("as_of", pa.date32())]), flavor="hive")
    return _PARTITIONING


def __getattr__(name: str) -> Any:
    if name == "PARTITIONING":
        return _partitioning()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Hidden directory under the output root holding writes in progress.
STAGING_DIR = ".staging"

_PATHS_ROWS_PER_GROUP = 1_000_000


def _f(name: str, typ: pa.DataType, unit: str, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"unit": unit, "description": doc})


def _money(name: str, doc: str) -> pa.Field:
    return _f(name, pa.float64(), "currency", doc)


_QUARTER = [
    _f("quarter", pa.string(), "label", "fiscal quarter label, e.g. FY2025-Q1"),
    _f("quarter_index", pa.int32(), "count", "0 = the quarter holding the as-of date"),
]

#: Arrow schema of each table; field metadata ``unit`` and ``description`` document
#: every column. Quantiles are of total bookings per quarter (booked to date included).
SCHEMAS: dict[str, pa.Schema] = {
    "quarterly": pa.schema(
        [
            *_QUARTER,
            _f("quarter_start", pa.date32(), "date", "first day of the quarter", True),
            _f("quarter_end", pa.date32(), "date", "day after the quarter's last day", True),
            _money("mean", "mean total bookings"),
            _money("sd", "standard deviation of total bookings"),
            *[
                _money(f"p{p:02d}", f"{p}th percentile of total bookings")
                for p in (5, 10, 25, 50, 75, 90, 95)
            ],
            _money("booked_to_date", "won before the as-of instant"),
            _money("from_pipeline", "mean bookings from deals open at the as-of date"),
            _money("from_new_deals", "mean bookings from deals created after the as-of date"),
            _money("weighted_pipeline", "classical weighted pipeline, for comparison"),
        ]
    ),
    "segments": pa.schema(
        [
            *_QUARTER,
            _f("segment", pa.string(), "label", "segment label"),
            _money("mean", "mean bookings of the segment"),
            _money("sd", "standard deviation of the segment's bookings"),
            _money("p10", "10th percentile"),
            _money("p50", "median"),
            _money("p90", "90th percentile"),
            _money("booked_to_date", "won before the as-of instant"),
            _money("from_pipeline", "mean bookings from deals open at the as-of date"),
            _money("from_new_deals", "mean bookings from deals created after the as-of date"),
        ]
    ),
    "deals": pa.schema(
        [
            *_QUARTER,
            _f("rank", pa.int64(), "count", "1 = largest variance in the quarter"),
            _f("deal_id", pa.string(), "label", "deal key"),
            _f("segment", pa.string(), "label", "segment of the deal (null if unknown)", True),
            _money("amount", "pipeline amount at the as-of date"),
            _f("p_win", pa.float64(), "probability", "P(deal won in this quarter)"),
            _money("expected_won_amount", "mean won amount in this quarter"),
            _money("amount_if_won", "mean won amount given a win in this quarter"),
            _money("sd", "deal's own standard deviation of bookings in this quarter"),
            _f("variance", pa.float64(), "currency^2", "deal's own variance (approximation)"),
            _f("share_of_deal_variance", pa.float64(), "fraction", "over the quarter's deals"),
            _f("share_of_total_variance", pa.float64(), "fraction", "over total bookings"),
            _f("cumulative_share", pa.float64(), "fraction", "of deal variance, by rank"),
            _f("risk_class", pa.string(), "label", "rock, stone or pebble"),
        ]
    ),
    "paths": pa.schema(
        [
            _f("path", pa.int64(), "count", "path index (seeded stream)"),
            *_QUARTER,
            _f("segment", pa.string(), "label", "segment label"),
            _f("source", pa.string(), "label", "pipeline or new_deals"),
            _money("bookings", "simulated bookings won after the as-of instant"),
        ]
    ),
}

#: Key-value metadata written in every file (values are UTF-8 strings; JSON where noted).
METADATA_KEYS: dict[str, str] = {
    "forecast.version": "package version that wrote the file",
    "forecast.model_version": "package version that fitted the model",
    "forecast.schema_version": "version of this Parquet layout",
    "forecast.table": "table name",
    "forecast.write_id": "random id shared by the tables of one write",
    "forecast.written_at": "UTC time of the write (ISO-8601)",
    "forecast.as_of": "as-of instant (ISO-8601, naive UTC)",
    "forecast.seed": "simulation seed",
    "forecast.n_paths": "number of simulated paths",
    "forecast.model_fingerprint": "fingerprint of the fitted model",
    "forecast.data_fingerprint": "fingerprint of the history the model was fitted on",
    "forecast.calendar": "fiscal calendar (JSON)",
    "forecast.quarters": "quarter labels (JSON list)",
    "forecast.segments": "segment labels (JSON list)",
}

#: Test hook: called as ``_hook(stage, table)`` at fixed points of a write, in order:
#: ``"staging"`` (``table=""``) once the hidden directory exists, ``"row_group"`` after
#: each row group and ``"written"`` once a table's file is complete and fsync'ed,
#: ``"staged"`` (``table=""``) once every table is, then ``"parked"`` (two-rename
#: fallback only: previous directory moved aside), ``"swapped"`` (new directory in
#: place) and ``"cleaned"`` (previous directory removed). ``None`` in normal use.
_hook: Callable[[str, str], None] | None = None


# -- single files ----------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a hidden temporary file in the same directory, are flushed
    and fsync'ed, then renamed over ``path`` (``os.replace`` is atomic on POSIX
    and Windows). If anything fails the temporary file is removed and ``path``
    is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)  # mkstemp creates 0600; give the file the usual permissions
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# -- Parquet datasets -------------------------------------------------------------------
def write_forecast(
    fc: Forecast,
    root: str | os.PathLike[str],
    *,
    include_paths: bool = False,
) -> dict[str, Path]:
    """Write a forecast's tables as one as-of directory of Parquet files under ``root``.

    All tables appear together or not at all: they are written into a hidden
    staging directory and the complete as-of directory is switched into place in
    one atomic step (see the module docstring).

    Parameters
    ----------
    fc : Forecast
        The result of :meth:`PipelineModel.simulate`.
    root : path
        Directory holding one ``as_of=YYYY-MM-DD`` directory per forecast date
        (created if missing).
    include_paths : bool, default False
        Also write the raw samples (``paths`` table: n_paths × n_quarters ×
        n_segments × 2 rows).

    Returns
    -------
    dict of str to Path
        Table name -> the directory written (``root/as_of=<date>/<table>``).

    Notes
    -----
    Schemas: :data:`SCHEMAS`; metadata keys: :data:`METADATA_KEYS`; atomicity and
    layout: see the module docstring. The partition key is the as-of *date*: two
    forecasts with as-of instants on the same day share a directory (the later
    write replaces every table of the earlier one).

    Examples
    --------
    >>> write_forecast(fc, "out/")  # doctest: +SKIP
    {'quarterly': PosixPath('out/as_of=2025-01-01/quarterly'), ...}
    """
    if not isinstance(fc, Forecast):
        raise ParameterError(
            f"The `fc` parameter of `write_forecast` must be a Forecast. Got {type(fc).__name__}."
        )
    include_paths = check_bool(include_paths, "include_paths", "write_forecast")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ParameterError(
            f"The `root` parameter of `write_forecast` must be a directory. Got the file {root}."
        )
    partition = f"as_of={fc.as_of:%Y-%m-%d}"
    tables = [t for t in TABLES if t != "paths" or include_paths]
    meta = _metadata(fc)
    staging = root / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    _recover(root)
    tmp = staging / f"new-{partition}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _call_hook("staging", "")
        for table in tables:
            (tmp / table).mkdir()
            schema = SCHEMAS[table].with_metadata({**meta, "forecast.table": table})
            _write_parquet(
                tmp / table / "part-0.parquet", schema, _batches(fc, table, schema), table
            )
            _fsync_dir(tmp / table)
            _call_hook("written", table)
        _fsync_dir(tmp)
        _fsync_dir(staging)
        _call_hook("staged", "")
        _swap_into_place(tmp, root / partition)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {table: root / partition / table for table in tables}


def table_files(
    root: str | os.PathLike[str], table: str = "quarterly", *, as_of: object = None
) -> list[Path]:
    """The Parquet files of one table written by :func:`write_forecast`, oldest date first.

    Parameters
    ----------
    root : path
        The ``root`` given to :func:`write_forecast`.
    table : {"quarterly", "segments", "deals", "paths"}
    as_of : date, datetime or ISO-8601 string, optional
        Only this as-of date's file(s).

    Returns
    -------
    list of Path
        ``root/as_of=<date>/<table>/*.parquet``, sorted; empty when none exist.
        Hand them to ``pyarrow.dataset.dataset(files, partitioning=PARTITIONING,
        partition_base_dir=root)`` to get the ``as_of`` column.
    """
    if table not in TABLES:
        raise ParameterError(f"The `table` parameter must be one of {list(TABLES)}. Got {table!r}.")
    pattern = "as_of=*" if as_of is None else f"as_of={_as_of_day(as_of):%Y-%m-%d}"
    return sorted(p for p in Path(root).glob(f"{pattern}/{table}/*.parquet") if p.is_file())


def read_forecast(
    root: str | os.PathLike[str], table: str = "quarterly", *, as_of: object = None
) -> pl.DataFrame:
    """Read one table written by :func:`write_forecast` (all as-of dates, or one).

    Parameters
    ----------
    root : path
        The ``root`` given to :func:`write_forecast`.
    table : {"quarterly", "segments", "deals", "paths"}
    as_of : date, datetime or ISO-8601 string, optional
        Keep only this as-of date.

    Returns
    -------
    polars.DataFrame
        The table's columns (:data:`SCHEMAS`) plus ``as_of`` (Date).

    Raises
    ------
    FileNotFoundError
        When no as-of directory under ``root`` (or not the one asked for) holds
        the table.
    """
    if table not in TABLES:
        raise ParameterError(
            f"The `table` parameter of `read_forecast` must be one of {list(TABLES)}. "
            f"Got {table!r}."
        )
    files = table_files(root, table, as_of=as_of)
    if not files:
        where = "as_of=*" if as_of is None else f"as_of={_as_of_day(as_of):%Y-%m-%d}"
        raise FileNotFoundError(
            f"No `{table}` table under {root} (looked for {Path(root) / where / table}/*.parquet)."
        )
    import pyarrow.dataset as ds

    dataset = ds.dataset(
        [str(f) for f in files],
        format="parquet",
        partitioning=_partitioning(),
        partition_base_dir=str(Path(root)),
    )
    return pl.from_arrow(dataset.to_table())  # type: ignore[return-value]


# -- internals --------------------------------------------------------------------------
def _as_of_day(as_of: object) -> dt.date:
    try:
        return dt.date.fromisoformat(str(as_of)[:10])
    except ValueError:
        raise ParameterError(
            f"The `as_of` parameter must be a date (YYYY-MM-DD). Got {as_of!r}."
        ) from None


def _call_hook(stage: str, table: str) -> None:
    if _hook is not None:
        _hook(stage, table)


def _metadata(fc: Forecast) -> dict[str, str]:
    info = dict(fc.info)
    return {
        "forecast.version": __version__,
        "forecast.model_version": str(info.get("version", "")),
        "forecast.schema_version": SCHEMA_VERSION,
        "forecast.write_id": uuid.uuid4().hex,
        "forecast.written_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(),
        "forecast.as_of": fc.as_of.isoformat(),
        "forecast.seed": str(info.get("seed", "")),
        "forecast.n_paths": str(fc.n_paths),
        "forecast.model_fingerprint": str(info.get("model_fingerprint", "")),
        "forecast.data_fingerprint": str(info.get("data_fingerprint", "")),
        "forecast.calendar": json.dumps(info.get("calendar", {}), sort_keys=True),
        "forecast.quarters": json.dumps(list(fc.quarters)),
        "forecast.segments": json.dumps(list(fc.segments)),
    }


def _quarter_dates(fc: Forecast) -> tuple[list[Any], list[Any]]:
    cal = fc.info.get("calendar")
    if not cal:
        return [None] * len(fc.quarters), [None] * len(fc.quarters)
    calendar = FiscalCalendar.from_dict(dict(cal))
    qs = [calendar.quarter_from_label(q) for q in fc.quarters]
    return [q.start.date() for q in qs], [q.end.date() for q in qs]


def _frame_batch(frame: Any, schema: pa.Schema) -> pa.RecordBatch:
    table = frame.to_arrow()
    cols = [table.column(f.name).cast(f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema).combine_chunks().to_batches()[0]


def _batches(fc: Forecast, table: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    qindex = pl.DataFrame(
        {"quarter": list(fc.quarters), "quarter_index": np.arange(len(fc.quarters))}
    )
    if table == "quarterly":
        starts, ends = _quarter_dates(fc)
        frame = fc.quarterly().join(qindex, on="quarter", how="left", maintain_order="left")
        frame = frame.with_columns(
            pl.Series("quarter_start", starts, dtype=pl.Date),
            pl.Series("quarter_end", ends, dtype=pl.Date),
        )
        yield _frame_batch(frame, schema)
    elif table == "segments":
        yield _frame_batch(
            fc.by_segment().join(qindex, on="quarter", how="left", maintain_order="left"), schema
        )
    elif table == "deals":
        frame = fc.deal_risk().join(qindex, on="quarter", how="left", maintain_order="left")
        if "segment" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias("segment"))
        if frame.height == 0:
            yield pa.RecordBatch.from_pylist([], schema=schema)
            return
        yield _frame_batch(frame, schema)
    elif table == "paths":
        yield from _path_batches(fc, schema)
    else:  # pragma: no cover - guarded by TABLES
        raise ParameterError(f"Unknown table {table!r}.")


def _path_batches(fc: Forecast, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Raw samples in row groups of about a million rows, without building one huge frame."""
    P, H, G, _ = fc.totals.shape
    per_path = H * G * 2
    step = max(1, _PATHS_ROWS_PER_GROUP // max(per_path, 1))
    _, q, g, s = np.indices((1, H, G, 2)).reshape(4, -1)
    quarter = pa.array(list(fc.quarters), pa.string()).take(pa.array(q))
    qidx = pa.array(q.astype(np.int32))
    segment = pa.array(list(fc.segments), pa.string()).take(pa.array(g))
    source = pa.array(["pipeline", "new_deals"], pa.string()).take(pa.array(s))
    for a in range(0, P, step):
        b = min(P, a + step)
        n = b - a
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(np.repeat(np.arange(a, b, dtype=np.int64), per_path)),
                pa.concat_arrays([quarter] * n),
                pa.concat_arrays([qidx] * n),
                pa.concat_arrays([segment] * n),
                pa.concat_arrays([source] * n),
                pa.array(np.ascontiguousarray(fc.totals[a:b], dtype=np.float64).reshape(-1)),
            ],
            schema=schema,
        )


def _write_parquet(
    path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch], table: str
) -> None:
    import pyarrow.parquet as pq  # deferred: it loads OpenSSL (~0.1 s) for its file systems

    with open(path, "wb") as fh:
        with pq.ParquetWriter(fh, schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(batch, row_group_size=_PATHS_ROWS_PER_GROUP)
                _call_hook("row_group", table)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False when unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - old glibc / musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # pragma: no cover
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Switch the complete directory ``tmp`` to ``final``, replacing any previous one.

    With ``renameat2(RENAME_EXCHANGE)`` the switch is one atomic step. The fallback
    parks the previous directory in the staging area (``old-...``) and renames the
    new one into place; a writer killed between the two renames leaves no
    ``final``, and the next write puts the parked directory back (:func:`_recover`).
    """
    if final.exists():
        if _exchange(tmp, final):
            _fsync_dir(final.parent)
            _fsync_dir(tmp.parent)
            _call_hook("swapped", "")
            shutil.rmtree(tmp)  # now holds the previous directory
            _call_hook("cleaned", "")
            return
        old = tmp.parent / f"old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        try:
            _call_hook("parked", "")
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)  # the previous forecast stays; the caller removes tmp
            raise
        try:
            _fsync_dir(final.parent)
            _fsync_dir(tmp.parent)
            _call_hook("swapped", "")
        finally:
            shutil.rmtree(old, ignore_errors=True)  # the new forecast is in place
        _call_hook("cleaned", "")
    else:
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        _fsync_dir(tmp.parent)
        _call_hook("swapped", "")


_LEFTOVER = re.compile(r"^(new|old)-(as_of=\d{4}-\d{2}-\d{2})-(\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


def _recover(root: Path) -> None:
    """Clean up after writers under ``root`` that died: put back or remove their leftovers.

    An ``old-`` directory whose as-of directory is missing is the previous forecast
    of a writer killed between the two renames of the fallback: it is put back.
    Every other leftover of a dead writer (a half-written ``new-`` directory, or a
    previous directory already replaced) is removed. Leftovers of live writers
    are left alone.
    """
    staging = root / STAGING_DIR
    if not staging.is_dir():
        return
    for entry in sorted(staging.iterdir()):
        m = _LEFTOVER.match(entry.name)
        if not m or _pid_alive(int(m.group(3))):
            continue
        final = root / m.group(2)
        if m.group(1) == "old" and not final.exists():
            os.rename(entry, final)
            _fsync_dir(root)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def describe_schema(table: str) -> str:
    """The documented schema of ``table``: one line per field with type, unit and meaning."""
    if table not in SCHEMAS:
        raise ParameterError(
            f"The `table` parameter of `describe_schema` must be one of {list(TABLES)}. "
            f"Got {table!r}."
        )
    lines = []
    for f in SCHEMAS[table]:
        md: Mapping[bytes, bytes] = f.metadata or {}
        unit = md.get(b"unit", b"").decode()
        doc = md.get(b"description", b"").decode()
        lines.append(f"{f.name:<24} {f.type!s:<8} {unit:<12} {doc}")
    return "\n".join(lines)
