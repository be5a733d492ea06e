"""The bundled sample deal log (``sample_deals.parquet``) and the script that makes it.

The sample is the synthetic world ``generate_crm(**SAMPLE_PARAMETERS)``: about
3,400 deals in three segments created from 2022-01-01 to 2025-01-01, cut at
2025-01-01 (open deals are censored). Regenerate it with::

    python benchmarks/make_sample.py              # rewrites the bundled file
    python benchmarks/make_sample.py --output /tmp/sample.parquet
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from forecast.data.deal_log import DealLog
from forecast.data.readers import read_deal_log
from forecast.datasets.synthetic import SYNTHETIC_STAGES, SyntheticTruth, generate_crm

__all__ = [
    "SAMPLE_FILE",
    "SAMPLE_PARAMETERS",
    "SAMPLE_STAGES",
    "load_sample",
    "main",
    "sample_events",
    "sample_truth",
    "write_sample",
]

#: File name of the bundled sample inside the ``forecast.datasets`` package.
SAMPLE_FILE = "sample_deals.parquet"
#: Arguments of :func:`generate_crm` that produce the bundled sample.
SAMPLE_PARAMETERS: dict[str, Any] = {"seed": 2024, "start": "2022-01-01", "end": "2025-01-01"}
#: Stage classification of the sample: four ordered open stages, then
#: "Closed Won", "Closed Lost" and "No Decision".
SAMPLE_STAGES = SYNTHETIC_STAGES


def sample_events() -> pl.DataFrame:
    """The bundled sample deal log.

    Returns
    -------
    polars.DataFrame
        Event log with columns ``deal_id`` (Utf8), ``timestamp`` (Datetime us,
        naive UTC), ``stage`` (Utf8, classified by :data:`SAMPLE_STAGES`),
        ``amount`` (Float64, currency), ``close_date`` (Datetime us), ``created_at``
        (Datetime us), ``segment`` and ``region`` (Utf8); sorted by deal and time.

    Examples
    --------
    >>> ev = sample_events()
    >>> ev.columns[:4]
    ['deal_id', 'timestamp', 'stage', 'amount']
    """
    data = resources.files("forecast.datasets").joinpath(SAMPLE_FILE).read_bytes()
    return pl.read_parquet(io.BytesIO(data))


def load_sample() -> DealLog:
    """The bundled sample, loaded and validated as a :class:`~forecast.data.deal_log.DealLog`.

    Segment columns are ``segment`` (SMB, MidMarket, Enterprise) and ``region``.

    Examples
    --------
    >>> load_sample().n_deals > 1000
    True
    """
    return read_deal_log(
        sample_events(), stages=SAMPLE_STAGES, segment_columns=("segment", "region")
    )


def sample_truth() -> SyntheticTruth:
    """True parameters of the sample (regenerated from :data:`SAMPLE_PARAMETERS`)."""
    return generate_crm(**SAMPLE_PARAMETERS).truth


def write_sample(path: str | Path | None = None) -> Path:
    """Generate the sample and write it as zstd-compressed Parquet.

    Parameters
    ----------
    path : str or Path, optional
        Destination; default the bundled file inside the installed package.

    Returns
    -------
    Path
        The file written.
    """
    if path is None:
        path = Path(str(resources.files("forecast.datasets").joinpath(SAMPLE_FILE)))
    path = Path(path)
    events = generate_crm(**SAMPLE_PARAMETERS).events
    tmp = path.with_name(path.name + ".tmp")
    events.write_parquet(tmp, compression="zstd", compression_level=19, statistics=True)
    tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``benchmarks/make_sample.py [--output PATH]``."""
    parser = argparse.ArgumentParser(
        prog="make_sample.py",
        description="Regenerate the bundled synthetic sample deal log.",
    )
    parser.add_argument("--output", type=Path, default=None, help="default: the bundled file")
    args = parser.parse_args(argv)
    out = write_sample(args.output)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0
