"""The bad-input corpus: one table of inputs a user may hand to `forecast`, and what must happen.

Each :class:`Case` is a small file in this directory or a frame built in code (from
:func:`base_events`, a valid history of 40 deals), the arguments it is read and
fitted with, and the outcome: the exact error class and words its message must
contain, or ``error=None`` for inputs that are valid (repaired and counted, or simply
unusual) with a check of the result. ``tests/test_bad_inputs.py`` runs every case
through the API (``read_deal_log`` -> ``fit`` -> ``simulate``) and through the
``forecast run`` command (exit code 3 for bad data, 2 for bad arguments, one error
line on stderr, never a traceback).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from forecast.errors import (
    AmountError,
    DataError,
    MissingColumnError,
    MixedTimezoneError,
    ModelError,
    ParameterError,
    TerminalEventError,
    TimestampError,
    UnknownStageError,
)

HERE = Path(__file__).parent
OPEN_STAGES = ("Prospecting", "Qualification", "Proposal", "Negotiation")
#: Reason of the cases that wait for the loader's bound on amounts.


def base_events() -> pl.DataFrame:
    """A valid event log: 40 deals created every 15 days from 2023-01-02, two segments.

    Deal ``i`` visits the first ``1 + i % 4`` open stages, then is won (``i % 3 == 0``),
    lost (``i % 3 == 1``) or stays open (``i % 3 == 2``, and the last six deals). Amounts
    are 10,000-16,000; a won deal closes at 90% of its amount. 12 deals are won, 11 lost
    and 17 open at the last event, 2024-10-17.
    """
    rows = []
    for i in range(40):
        deal = f"D{i:03d}"
        t = dt.datetime(2023, 1, 2) + dt.timedelta(days=15 * i)
        amount = 10_000.0 + 1_000.0 * (i % 7)
        segment = ("SMB", "Enterprise")[i % 2]
        for k in range(1 + i % 4):
            rows.append((deal, t, OPEN_STAGES[k], amount, segment))
            t += dt.timedelta(days=10 + 3 * (i % 5) + k)
        outcome = 2 if i >= 34 else i % 3
        if outcome == 0:
            rows.append((deal, t, "Closed Won", 0.9 * amount, segment))
        elif outcome == 1:
            rows.append((deal, t, "Closed Lost", amount, segment))
    return pl.DataFrame(
        rows, schema=["deal_id", "timestamp", "stage", "amount", "segment"], orient="row"
    )


def _set(column: str, value: Any, deal: str = "D006") -> Callable[[], pl.DataFrame]:
    """The base log with ``column`` set to ``value`` on every row of ``deal`` (won, 3 stages)."""

    def build() -> pl.DataFrame:
        frame = base_events()
        dtype = frame.schema[column] if value is not None else None
        new = pl.lit(value, dtype=dtype) if dtype is not None else pl.lit(None)
        return frame.with_columns(
            pl.when(pl.col("deal_id") == deal).then(new).otherwise(pl.col(column)).alias(column)
        )

    return build


def _deals(*keep: str) -> Callable[[], pl.DataFrame]:
    return lambda: base_events().filter(pl.col("deal_id").is_in(list(keep)))


def _outcomes(*stages: str) -> Callable[[], pl.DataFrame]:
    """The base log without the deals that end in one of ``stages``."""

    def build() -> pl.DataFrame:
        frame = base_events()
        drop = frame.filter(pl.col("stage").is_in(list(stages)))["deal_id"].implode()
        return frame.filter(~pl.col("deal_id").is_in(drop))

    return build


def _closed_only() -> pl.DataFrame:
    """The base log without the deals still open at its end."""
    frame = base_events()
    closed = frame.filter(pl.col("stage").str.starts_with("Closed"))["deal_id"].implode()
    return frame.filter(pl.col("deal_id").is_in(closed))


def _deals_table() -> pl.DataFrame:
    """The base log as a one-row-per-deal table (``shape="deals"``)."""
    return (
        base_events()
        .group_by("deal_id", maintain_order=True)
        .agg(
            pl.col("timestamp").first().alias("created_at"),
            pl.col("timestamp").last().alias("close_date"),
            pl.col("stage").last(),
            pl.col("amount").last(),
            pl.col("segment").last(),
        )
    )


def _one_deal_segment() -> pl.DataFrame:
    return base_events().with_columns(
        pl.when(pl.col("deal_id") == "D009")
        .then(pl.lit("Public"))
        .otherwise(pl.col("segment"))
        .alias("segment")
    )


def _duplicated_events() -> pl.DataFrame:
    frame = base_events()
    return pl.concat([frame, frame.filter(pl.col("deal_id").is_in(["D003", "D004"]))])


def _epoch_seconds() -> pl.DataFrame:
    return base_events().with_columns(pl.col("timestamp").dt.epoch("s"))


def _true_false_amount() -> pl.DataFrame:
    return base_events().with_columns((pl.col("amount") > 12_000).alias("amount"))


def _events_after_as_of() -> pl.DataFrame:
    """The base log plus rows dated after the as-of 2024-06-01 (a later export)."""
    frame = base_events()
    later = pl.DataFrame(
        {
            "deal_id": ["D032", "D041", "D041"],
            "timestamp": [
                dt.datetime(2024, 7, 1),
                dt.datetime(2024, 8, 1),
                dt.datetime(2024, 9, 1),
            ],
            "stage": ["Closed Won", "Prospecting", "Closed Won"],
            "amount": [99_000.0, 55_000.0, 55_000.0],
            "segment": ["SMB", "SMB", "SMB"],
        }
    )
    return pl.concat([frame, later])


@dataclass(frozen=True)
class Case:
    """One input and what must happen to it.

    Attributes
    ----------
    name : str
        Test id.
    source : str or callable
        A file name in this directory, or a function returning a polars frame (written
        to ``.parquet`` for the command, or to ``suffix``).
    error : type or None
        Exact class of the error, or None when the input is valid.
    words : tuple of str
        Words the message must contain (API and command).
    read, fit : dict
        Arguments of ``read_deal_log`` and ``fit`` (``preset``, ``shape``,
        ``segment_columns``; ``as_of``, ``segment_by``); the command gets the same as
        ``--preset``, ``--shape``, ``--segment``, ``--as-of``.
    exit_code : int
        Of ``forecast run``: 3 bad data, 2 bad arguments, 0 success.
    cli_words : tuple of str or None
        Words of the command's error line when they differ (argparse's own checks).
    check : callable or None
        For a valid input: ``check(log, forecast)`` asserts what must be true.
    xfail : str or None
        Reason when the case waits for a fix made elsewhere (strict).
    suffix : str
        File suffix a built frame is written with for the command.
    """

    name: str
    source: str | Callable[[], pl.DataFrame]
    error: type[Exception] | None
    words: tuple[str, ...] = ()
    read: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 3
    cli_words: tuple[str, ...] | None = None
    check: Callable[[Any, Any], None] | None = None
    xfail: str | None = None
    suffix: str = ".parquet"


def _check_duplicates(log: Any, fc: Any) -> None:
    assert log.report.exact_duplicates_removed == 7  # D003 has 5 rows, D004 has 2
    assert log.report.rows_kept == log.report.rows_read - 7
    assert log.report.events == base_events().height


def _check_no_open_deal(log: Any, fc: Any) -> None:
    assert len(fc.deal_ids) == 0  # nothing in today's pipeline, new deals only
    assert fc.quarterly()["from_pipeline"].to_list() == [0.0, 0.0]


def _check_one_deal_segment(log: Any, fc: Any) -> None:
    assert "Public" in fc.segments


def _check_as_of_cut(log: Any, fc: Any) -> None:
    # rows after the as-of date are not used: same forecast as from the log without them
    import forecast

    clean = forecast.read_deal_log(base_events(), segment_columns=["segment"])
    model = forecast.fit(clean, as_of="2024-06-01", segment_by=["segment"], n_draws=0)
    same = model.simulate(clean, n_paths=200, horizon=2, seed=0, progress=False)
    assert fc.quarterly().equals(same.quarterly())


def _check_one_deal(log: Any, fc: Any) -> None:
    assert log.n_deals == 1 and len(fc.deal_ids) == 0


def _check_stages_not_yet_visited(log: Any, fc: Any) -> None:
    # by 2023-02-20 no deal had reached Proposal or Negotiation: both are skipped, named
    import forecast

    model = forecast.fit(log, as_of="2023-02-20", n_draws=0)
    skipped = {d.stage for d in model.diagnostics if d.code == "skipped"}
    assert skipped == {"Proposal", "Negotiation"}
    assert all(model.borrowed[s]["n_spells"] == 0 for s in skipped)


SEG = {"segment_columns": ["segment"]}
BY_SEG = {"segment_by": ["segment"]}

CASES: list[Case] = [
    # -- the file itself ------------------------------------------------------------
    Case("empty_csv", "empty.csv", DataError, ("empty.csv", "empty", "0 bytes")),
    Case("empty_parquet", "empty.parquet", DataError, ("empty.parquet", "0 bytes")),
    Case("header_only", "header_only.csv", DataError, ("no rows", "deal_id")),
    Case("blank_lines", "blank_lines.csv", DataError, ("blank_lines.csv", "no header")),
    Case("binary_garbage", "binary.csv", DataError, ("binary.csv", "binary", "not CSV")),
    Case("latin1", "latin1.csv", DataError, ("latin1.csv", "not UTF-8", "0xE9", "line 4")),
    Case("utf16", "utf16.csv", DataError, ("utf16.csv", "UTF-16", "UTF-8")),
    Case("not_parquet", "not_parquet.parquet", DataError, ("not a Parquet file", "PAR1")),
    Case("csv_named_parquet", "csv_named_parquet.parquet", DataError, ("looks like CSV",)),
    Case("parquet_named_csv", "parquet_named_csv.csv", DataError, ("Parquet file", ".parquet")),
    Case("truncated_parquet", "truncated.parquet", DataError, ("truncated", "PAR1")),
    Case("ragged_line", "ragged_line.csv", DataError, ("line 3", "5 fields", "header has 4")),
    Case("unclosed_quote", "unclosed_quote.csv", DataError, ("unclosed_quote.csv", "quote")),
    Case("duplicate_header", "duplicate_header.csv", DataError, ("`amount`", "[4, 5]")),
    Case("semicolons", "semicolons.csv", DataError, ("semicolons", "separator")),
    # -- columns ----------------------------------------------------------------------
    *[
        Case(
            f"no_{col}_column",
            (lambda col=col: base_events().drop(col)),
            MissingColumnError,
            ("Missing column", f"`{col}`"),
        )
        for col in ("deal_id", "timestamp", "stage", "amount")
    ],
    *[
        Case(
            f"deals_no_{col}_column",
            (lambda col=col: _deals_table().drop(col)),
            MissingColumnError,
            ("Missing column", f"`{col}`"),
            read={"shape": "deals"},
        )
        for col in ("deal_id", "created_at", "close_date", "stage", "amount")
    ],
    Case(
        "no_segment_column",
        base_events,
        MissingColumnError,
        ("`region`",),
        read={"segment_columns": ["region"]},
        fit={"segment_by": ["region"]},
    ),
    Case(
        "salesforce_wrong_columns",
        "salesforce_wrong_columns.csv",
        MissingColumnError,
        ("OpportunityId", "preset 'salesforce'"),
        read={"preset": "salesforce"},
    ),
    # -- dates --------------------------------------------------------------------------
    Case("unparsable_date", "unparsable_date.csv", TimestampError, ("'yesterday'", "row 2")),
    Case("mixed_date_formats", "mixed_date_formats.csv", TimestampError, ("'02/20/2024'",)),
    Case("impossible_date", "impossible_date.csv", TimestampError, ("'2024-02-30'",)),
    Case("mixed_timezones", "mixed_timezones.csv", MixedTimezoneError, ("UTC offset", "D2")),
    Case("missing_timestamp", "missing_timestamp.csv", TimestampError, ("missing", "row 1")),
    Case("placeholder_date", "date_placeholder.csv", TimestampError, ("9999-12-31", "range")),
    Case("year_one", "year_one.csv", TimestampError, ("0001-01-01", "range")),
    Case("future_typo", _set("timestamp", dt.datetime(2999, 1, 1)), TimestampError, ("2999",)),
    Case("epoch_numbers", _epoch_seconds, TimestampError, ("numbers", "epoch_unit")),
    Case(
        "terminal_before_creation",
        "terminal_before_creation.csv",
        TimestampError,
        ("deal `D2`", "closed", "before it was created"),
    ),
    Case(
        "deals_close_before_create",
        "deals_close_before_create.csv",
        TimestampError,
        ("deal `D2`", "before it was created"),
        read={"shape": "deals"},
    ),
    Case(
        "deals_closed_without_date",
        "deals_closed_without_date.csv",
        TimestampError,
        ("deal `D2`", "no close date"),
        read={"shape": "deals"},
    ),
    # -- deals, stages ------------------------------------------------------------------
    Case("missing_deal_id", "missing_deal_id.csv", DataError, ("deal id is missing", "row 1")),
    Case("missing_stage", "missing_stage.csv", UnknownStageError, ("stage is missing", "D2")),
    Case("unknown_stage", "unknown_stage.csv", UnknownStageError, ("'Maybe Later'", "D1")),
    Case("won_then_lost", "won_then_lost.csv", TerminalEventError, ("deal `D1`", "Closed Lost")),
    Case(
        "deals_all_closed",
        "deals_all_closed.csv",
        UnknownStageError,
        ("no open stage", "'Closed Won'"),
        read={"shape": "deals"},
    ),
    Case(
        "deals_duplicate_deal",
        "deals_duplicate_deal.csv",
        DataError,
        ("deal `D1`", "rows [0, 2]"),
        read={"shape": "deals"},
    ),
    # -- amounts --------------------------------------------------------------------------
    Case("negative_amount", "negative_amount.csv", AmountError, ("negative", "deal `D2`")),
    Case("nan_amount", "nan_amount.csv", AmountError, ("NaN", "deal `D2`")),
    Case("inf_amount", "inf_amount.csv", AmountError, ("infinite", "deal `D2`")),
    Case("formatted_amount", "formatted_amount.csv", AmountError, ("'$12,000'", "not a number")),
    Case("true_false_amount", _true_false_amount, AmountError, ("Boolean", "amount")),
    Case("huge_amount", _set("amount", 1e17), AmountError, ("D006",)),
    Case("enormous_amount", _set("amount", 1e300), AmountError, ("D006",)),
    # -- what can be fitted ------------------------------------------------------------
    Case("one_open_deal", _deals("D038"), ModelError, ("No deal was won", "1 open")),
    Case(
        "no_closed_deal", _outcomes("Closed Won", "Closed Lost"), ModelError, ("17 open", "0 lost")
    ),
    Case("no_won_deal", _outcomes("Closed Won"), ModelError, ("No deal was won", "11 lost")),
    Case(
        "as_of_before_first_event",
        base_events,
        ModelError,
        ("2022-06-30", "before the first event", "2023-01-02"),
        fit={"as_of": "2022-06-30"},
    ),
    Case(
        "as_of_long_after_last_event",
        base_events,
        ModelError,
        ("2026-01-01", "days after the last event", "2024-10-17"),
        fit={"as_of": "2026-01-01"},
    ),
    # -- valid, if unusual: repaired and counted, or simply forecast ------------------
    Case("duplicate_events", _duplicated_events, None, check=_check_duplicates, exit_code=0),
    Case("one_deal", _deals("D003"), None, check=_check_one_deal, exit_code=0),
    Case("no_open_deal", _closed_only, None, check=_check_no_open_deal, exit_code=0),
    Case(
        "stage_not_yet_visited",
        base_events,
        None,
        fit={"as_of": "2023-02-20"},
        check=_check_stages_not_yet_visited,
        exit_code=0,
    ),
    Case(
        "segment_with_one_deal",
        _one_deal_segment,
        None,
        read=SEG,
        fit=BY_SEG,
        check=_check_one_deal_segment,
        exit_code=0,
    ),
    Case(
        "events_after_as_of",
        _events_after_as_of,
        None,
        read=SEG,
        fit={"as_of": "2024-06-01", **BY_SEG},
        check=_check_as_of_cut,
        exit_code=0,
    ),
    # -- arguments ----------------------------------------------------------------------
    Case(
        "bad_preset",
        base_events,
        ParameterError,
        ("preset", "'sap'"),
        read={"preset": "sap"},
        exit_code=2,
        cli_words=("--preset", "'sap'"),
    ),
    Case(
        "bad_shape",
        base_events,
        ParameterError,
        ("shape", "'rows'"),
        read={"shape": "rows"},
        exit_code=2,
        cli_words=("--shape", "'rows'"),
    ),
    Case(
        "bad_as_of",
        base_events,
        ParameterError,
        ("as_of", "'next week'"),
        fit={"as_of": "next week"},
        exit_code=2,
    ),
]
