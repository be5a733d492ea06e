"""Segment labels: how a row of a deal history is assigned to a segment.

A model fitted ``segment_by=["region", "size"]`` has one segment per distinct
combination of those columns, labelled by the values joined with ``"|"``
(``"EMEA|SMB"``); a null value reads ``"(missing)"``. Without segment columns
there is one segment, :data:`POOLED_SEGMENT`, which is also the name of the
pooled fit (all segments together) wherever results are reported per segment.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

__all__ = [
    "MISSING_VALUE",
    "POOLED_SEGMENT",
    "SEGMENT_COLUMN",
    "SEPARATOR",
    "segment_label",
    "segment_labels",
]

#: The pooled segment: all deals together. It is the only segment of a model fitted
#: without segment columns, and names the pooled rows of summaries and metrics (and
#: the pooled fit in :meth:`PipelineModel.stage_curves`).
POOLED_SEGMENT = "all"
#: Name of the derived column holding each row's segment label.
SEGMENT_COLUMN = "_segment"
#: Joins the values of several segment columns into one label.
SEPARATOR = "|"
#: Stands for a null segment value in a label.
MISSING_VALUE = "(missing)"


def segment_label(segment_by: Sequence[str]) -> pl.Expr:
    """Polars expression of the segment label of each row (see the module docstring)."""
    if not segment_by:
        return pl.lit(POOLED_SEGMENT)
    return pl.concat_str(
        [pl.col(c).cast(pl.Utf8).fill_null(MISSING_VALUE) for c in segment_by], separator=SEPARATOR
    )


def segment_labels(frame: pl.DataFrame, segment_by: Sequence[str]) -> pl.DataFrame:
    """``frame`` with the label column :data:`SEGMENT_COLUMN` added.

    Parameters
    ----------
    frame : polars.DataFrame
        Any view of a :class:`~forecast.data.deal_log.DealLog` (it carries the
        segment columns).
    segment_by : sequence of str
        Segment columns; empty for the single segment :data:`POOLED_SEGMENT`.

    Returns
    -------
    polars.DataFrame
    """
    return frame.with_columns(segment_label(segment_by).alias(SEGMENT_COLUMN))
