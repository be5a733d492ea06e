"""Drift report: is the market turning? Recent quarters against the earlier history.

For each segment (and all segments pooled) and open stage, the exit curves are
estimated twice from the same history, split at a calendar instant ``W`` (the start
of the fiscal quarter ``recent_quarters`` before the current one) by *period
analysis* (Brenner & Gefeller 1996): the **earlier** estimate uses what happened
before ``W`` (a stay still running at ``W`` is censored there), the **recent** one
what happened from ``W`` on (a stay that began before ``W`` enters the risk sets
late, at its sojourn time at ``W``: delayed entry). Both are full curves on the
sojourn clock, so a deal's journey through every stage can be read from either
period, and the two estimates use disjoint stretches of time.

From each period's curves (Aalen–Johansen, ``docs/model.md`` section 2; the mass
still in a stage after its last observed exit leaves like its last quarter of exits)
the report gives the **win probability** of a deal entering the stage (the
absorbing-chain quantity of section 6 over that period's curves of every stage) and
the **median days in the stage** (Kaplan–Meier). Intervals and tests come from the
Bayesian bootstrap over deals (section 11): 95 % percentile intervals of each
period's value, and a two-sided test of "no change" from the bootstrap standard
error of the difference (win probability) or of the log ratio (median days),
``p = erfc(|z| / √2)``, where both periods have at least :data:`MIN_EXITS_TO_TEST`
exits from the stage (with fewer, the bootstrap understates the spread; no test). The intervals are honest about little data: a stage with a
handful of recent exits gets a wide interval and a large p-value. The ``signal``
column flags the changes that stay significant after Holm's correction for the
number of tests in the table (Holm 1979): with two tests per row, uncorrected 5 %
tests would flag one or two rows of a stable history by chance.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import check_int, check_seed
from forecast.errors import ModelError
from forecast.fit.bootstrap import bootstrap_weights
from forecast.fit.competing_risks import CensoredSpells, aalen_johansen
from forecast.fit.data import FitData
from forecast.segments import POOLED_SEGMENT

__all__ = ["DRIFT_COLUMNS", "MIN_EXITS_TO_TEST", "drift_table"]

#: Fewer exits than this in either period: no test (the bootstrap of a handful of
#: exits understates their spread), only the values and intervals.
MIN_EXITS_TO_TEST = 10

#: Columns of :func:`drift_table`, in order.
DRIFT_COLUMNS: tuple[str, ...] = (
    "segment",
    "stage",
    "recent_from",
    "exits_earlier",
    "exits_recent",
    "win_probability_earlier",
    "win_probability_earlier_low",
    "win_probability_earlier_high",
    "win_probability_recent",
    "win_probability_recent_low",
    "win_probability_recent_high",
    "win_probability_change",
    "win_probability_p_value",
    "median_days_earlier",
    "median_days_earlier_low",
    "median_days_earlier_high",
    "median_days_recent",
    "median_days_recent_low",
    "median_days_recent_high",
    "median_days_ratio",
    "median_days_p_value",
    "signal",
)


def _period_spells(
    data: FitData, split_days: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Row arrays of the earlier and recent periods (split ``split_days`` before as_of)."""
    a = data.spell_arrays
    assert a is not None and a.days_before_as_of is not None
    usable = np.ones(a.n, dtype=bool) if a.excluded is None else ~a.excluded
    delay = np.zeros(a.n) if a.entry is None else np.asarray(a.entry)
    entered = -np.asarray(a.days_before_as_of)  # stage entry, days relative to as_of (≤ 0)
    w_rel = -split_days
    t, j = np.asarray(a.duration), np.asarray(a.destination)
    # earlier: the part of each stay before W
    to_split = w_rel - entered
    e_sel = usable & (to_split > 0)
    e_dur = np.minimum(t, to_split)
    e_dest = np.where(t <= to_split, j, -1)
    e_keep = e_sel & (delay < e_dur)
    # recent: stays still running at W, entering the risk sets at their age then
    r_keep = usable & (entered + t > w_rel)
    r_entry = np.maximum(delay, np.maximum(to_split, 0.0))
    earlier = {
        "row": np.flatnonzero(e_keep),
        "duration": e_dur[e_keep],
        "destination": e_dest[e_keep],
        "entry": np.minimum(delay[e_keep], e_dur[e_keep]),
    }
    recent = {
        "row": np.flatnonzero(r_keep),
        "duration": t[r_keep],
        "destination": j[r_keep],
        "entry": np.minimum(r_entry[r_keep], t[r_keep]),
    }
    return earlier, recent


def _late_mix(cs: CensoredSpells) -> np.ndarray:
    """Destination mix of the last quarter of the exits (how the remaining mass leaves)."""
    obs = cs.observed & (cs.weights > 0)
    if not obs.any():
        return np.zeros(cs.n_codes)
    u = float(np.quantile(cs.durations[obs], 0.75))
    late = obs & (cs.durations >= u)
    mix = np.bincount(cs.destinations[late], weights=cs.weights[late], minlength=cs.n_codes)
    return mix / mix.sum() if mix.sum() > 0 else mix


def _stage_values(
    spells: list[CensoredSpells], mixes: list[np.ndarray], won: int
) -> tuple[np.ndarray, np.ndarray]:
    """(win probability (K,), median days (K,)) from one period's spells of every stage."""
    k_open = len(spells)
    shares = np.zeros((k_open, spells[0].n_codes))
    median = np.full(k_open, np.nan)
    for k, cs in enumerate(spells):
        aj = aalen_johansen(cs)
        if aj.times.size == 0:
            shares[k] = np.nan
            continue
        shares[k] = aj.cif[:, -1] + aj.survival[-1] * mixes[k]
        median[k] = aj.median()
    if not np.all(np.isfinite(shares)):
        return np.full(k_open, np.nan), median
    q, r = shares[:, :k_open], shares[:, k_open:]
    try:
        b = np.linalg.solve(np.eye(k_open) - q, r)
    except np.linalg.LinAlgError:
        return np.full(k_open, np.nan), median
    return np.clip(b[:, won - k_open], 0.0, 1.0), median


def _p_value(x: np.ndarray, point: float) -> float:
    """Two-sided p-value of "no change" from bootstrap draws of a difference."""
    x = x[np.isfinite(x)]
    if x.size < 2 or not math.isfinite(point):
        return math.nan
    sd = float(np.std(x, ddof=1))
    if sd == 0:
        return 1.0 if point == 0 else 0.0
    return math.erfc(abs(point / sd) / math.sqrt(2.0))


def _holm(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's step-down rejections at family-wise level ``alpha`` (NaN never rejected)."""
    p = np.array([v if math.isfinite(v) else np.inf for v in p_values])
    m = int(np.isfinite(p).sum())
    out = [False] * p.size
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if not p[i] <= alpha / max(m - rank, 1):
            break
        out[int(i)] = True
    return out


def _interval(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan, math.nan
    lo, hi = np.quantile(x, [0.025, 0.975])
    return float(lo), float(hi)


def drift_table(
    data: FitData,
    *,
    recent_quarters: int = 2,
    n_draws: int = 100,
    seed: int = 0,
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Per segment and open stage: win probability and median days in stage, recent vs earlier.

    Parameters
    ----------
    data : FitData
        The history at the as-of instant (a model's :meth:`~PipelineModel.drift`
        builds it). Recency weights, if any, are not used: the two periods are
        compared unweighted.
    recent_quarters : int, default 2
        The recent period starts at the fiscal quarter this many quarters before the
        one holding ``data.as_of`` (and includes that quarter so far).
    n_draws : int, default 100
        Bayesian-bootstrap draws behind the intervals and tests.
    seed : int, default 0
    alpha : float, default 0.05
        Family-wise level of the tests behind ``signal`` (Holm).

    Returns
    -------
    polars.DataFrame
        :data:`DRIFT_COLUMNS`: per segment (then the pooled segment
        :data:`~forecast.segments.POOLED_SEGMENT` when there are several) and stage,
        ``recent_from`` (the split, date), the exits of each period, per period the
        win probability of a deal entering the stage and the median days in the
        stage with 95 % intervals, the change (``recent − earlier``; median days: the
        ratio ``recent / earlier``) with its p-value, and ``signal``: ``"win
        probability falling"``/``"rising"``, ``"slower"``/``"faster"`` (joined by
        ``"; "``) where the change is significant at ``alpha`` after Holm's
        correction over the table's tests, else ``""``. Values
        that cannot be estimated (no exit in a period) are null.

    Raises
    ------
    ModelError
        No stay is observed in one of the two periods.
    """
    caller = "drift"
    recent_quarters = check_int(recent_quarters, "recent_quarters", caller, minimum=1)
    n_draws = check_int(n_draws, "n_draws", caller, minimum=2)
    seed = check_seed(seed, caller)
    a = data.spell_arrays
    if a is None or a.days_before_as_of is None or data.n_open is None:
        raise ModelError(f"`{caller}` needs the spells of a history (a FitData built from a log).")
    cal = data.calendar
    split = cal.shift(cal.quarter_of(data.as_of), -recent_quarters).start
    split_days = (data.as_of - split) / dt.timedelta(days=1)
    earlier, recent = _period_spells(data, split_days)
    if earlier["row"].size == 0 or recent["row"].size == 0:
        raise ModelError(
            f"`{caller}`: the history has no stage visit before {split:%Y-%m-%d} or none from "
            "then on; nothing to compare. Use fewer `recent_quarters` or a longer history."
        )
    k_open, n_codes, won = int(data.n_open), int(data.n_codes or data.n_open + 3), int(data.n_open)
    segments = list(data.segments)
    groups: list[tuple[str, int | None]] = [(g, i) for i, g in enumerate(segments)]
    if len(segments) > 1:
        groups.append((POOLED_SEGMENT, None))
    stage_of, seg_of, deal_of = np.asarray(a.stage), np.asarray(a.segment), np.asarray(a.deal)
    periods = {"earlier": earlier, "recent": recent}

    def period_spells(
        p: dict[str, np.ndarray], gi: int | None, k: int, w: np.ndarray
    ) -> CensoredSpells:
        rows = p["row"]
        sel = stage_of[rows] == k
        if gi is not None:
            sel &= seg_of[rows] == gi
        return CensoredSpells.trusted(
            p["duration"][sel],
            p["destination"][sel],
            n_codes,
            w[deal_of[rows[sel]]],
            p["entry"][sel],
        )

    unit = np.ones(data.n_deals)
    point: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    mixes: dict[tuple[str, str], list[np.ndarray]] = {}
    exits: dict[tuple[str, str], list[int]] = {}
    for name, p in periods.items():
        for g, gi in groups:
            cs = [period_spells(p, gi, k, unit) for k in range(k_open)]
            mixes[(name, g)] = [_late_mix(c) for c in cs]
            exits[(name, g)] = [int(np.count_nonzero(c.observed)) for c in cs]
            point[(name, g)] = _stage_values(cs, mixes[(name, g)], won)
    boot = {key: (np.empty((n_draws, k_open)), np.empty((n_draws, k_open))) for key in point}
    for b in range(n_draws):
        w = bootstrap_weights(data, seed, b)
        for name, p in periods.items():
            for g, gi in groups:
                cs = [period_spells(p, gi, k, w) for k in range(k_open)]
                win, med = _stage_values(cs, mixes[(name, g)], won)
                boot[(name, g)][0][b], boot[(name, g)][1][b] = win, med
    names = data.stages.open if data.stages is not None else tuple(str(k) for k in range(k_open))
    rows: list[dict[str, Any]] = []
    signals: list[list[tuple[float, str]]] = []
    for g, _ in groups:
        for k, stage in enumerate(names):
            we, me = point[("earlier", g)][0][k], point[("earlier", g)][1][k]
            wr, mr = point[("recent", g)][0][k], point[("recent", g)][1][k]
            be_w, be_m = boot[("earlier", g)][0][:, k], boot[("earlier", g)][1][:, k]
            br_w, br_m = boot[("recent", g)][0][:, k], boot[("recent", g)][1][:, k]
            with np.errstate(divide="ignore", invalid="ignore"):
                log_ratio = np.log(br_m) - np.log(be_m)
            ratio = mr / me if me > 0 and math.isfinite(mr) else math.nan
            testable = min(exits[("earlier", g)][k], exits[("recent", g)][k]) >= MIN_EXITS_TO_TEST
            p_win = _p_value(br_w - be_w, wr - we) if testable else math.nan
            p_med = (
                _p_value(log_ratio, math.log(ratio) if ratio > 0 else math.nan)
                if testable
                else math.nan
            )
            signals.append(
                [
                    (p_win, "win probability " + ("falling" if wr < we else "rising")),
                    (p_med, "slower" if ratio > 1 else "faster"),
                ]
            )
            row: dict[str, Any] = {
                "segment": g,
                "stage": stage,
                "recent_from": split.date(),
                "exits_earlier": exits[("earlier", g)][k],
                "exits_recent": exits[("recent", g)][k],
            }
            for label, v, draws in (
                ("win_probability_earlier", we, be_w),
                ("win_probability_recent", wr, br_w),
            ):
                row[label] = v
                row[f"{label}_low"], row[f"{label}_high"] = _interval(draws)
            row["win_probability_change"] = wr - we
            row["win_probability_p_value"] = p_win
            for label, v, draws in (
                ("median_days_earlier", me, be_m),
                ("median_days_recent", mr, br_m),
            ):
                row[label] = v
                row[f"{label}_low"], row[f"{label}_high"] = _interval(draws)
            row["median_days_ratio"] = ratio
            row["median_days_p_value"] = p_med
            rows.append(row)
    flagged = _holm([p for row in signals for p, _ in row], alpha)
    for i, row in enumerate(rows):
        row["signal"] = "; ".join(
            text for j, (_, text) in enumerate(signals[i]) if flagged[2 * i + j]
        )
    out = pl.DataFrame(rows, infer_schema_length=None)
    return out.with_columns(pl.col(pl.Float64).fill_nan(None)).select(DRIFT_COLUMNS)
