"""Exit curves for an open stage without history of its own: borrowed, with wide uncertainty.

A stage map often lists stages the history cannot speak for yet: a standard stage
list with stages no deal has been in (a CRM's default sales process), or a new
stage whose deals have not left it. A fit must not fail on them, nor read "no exit
seen" as "never leaves" (its open deals would never be won):

- a stage **no deal has visited** is *skipped*: it stays in the stage map, no deal
  enters it (no move into it and no new deal starting in it was ever seen), and it
  carries borrowed curves only so that every stage code has some;
- a stage **with open deals but no exit yet** *borrows* the pooled exit curves of
  the nearest stage that has exits (the next later one first, then earlier ones),
  read as if they started from this stage: a move ``d`` stages forward or back
  from the source becomes a move ``d`` stages from this stage, and a move beyond
  the first or last open stage is left out (the other destinations keep their
  proportions). Its open deals are conditioned on their age as usual. Its
  parameter draws add a deliberately wide spread to the source's bootstrap
  uncertainty: the clock is stretched by ``exp(N(0, BORROWED_LOG_TIME_SD²))`` and
  the odds of a direct win multiplied by ``exp(N(0, BORROWED_LOG_WIN_ODDS_SD²))``
  per draw, so forecasts that lean on the stage show that nothing is known of it.

Each such stage gets a :class:`~forecast.fit.diagnostics.Diagnostic` in the model's
diagnostics (component ``"exits"``, code ``"skipped"`` or ``"borrowed"``) naming it. When no open
stage has any exit, nothing can be borrowed and :func:`borrow_missing_stages`
raises a :class:`~forecast.errors.ModelError` naming each stage with its open
deals and saying what to do instead. See ``docs/model.md`` ("Stages without
history").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forecast.errors import ModelError, ParameterError
from forecast.fit.competing_risks import CensoredSpells, ExitCurves, TailPiece
from forecast.fit.diagnostics import Diagnostic

__all__ = [
    "BORROWED_LOG_TIME_SD",
    "BORROWED_LOG_WIN_ODDS_SD",
    "BorrowedStage",
    "borrow_missing_stages",
    "borrowed_draw",
    "destination_shift",
    "shifted_curves",
    "shifted_multipliers",
    "wide_draw_factors",
]

#: Standard deviation of the log time factor added to each parameter draw of a
#: borrowed stage (0.5: the clock is within ×/÷ 1.9 in 80 % of draws).
BORROWED_LOG_TIME_SD = 0.5
#: Standard deviation of the log multiplier of the direct-win odds added to each
#: parameter draw of a borrowed stage (1.0: odds within ×/÷ 3.6 in 80 % of draws).
BORROWED_LOG_WIN_ODDS_SD = 1.0


@dataclass(frozen=True)
class BorrowedStage:
    """An open stage whose curves were borrowed.

    Attributes
    ----------
    stage : int
        Open stage code.
    source : int
        Open stage code whose pooled curves were borrowed.
    n_spells : int
        Visits to the stage before the as-of date (0: skipped).
    n_open : int
        Deals in the stage at the as-of date (its censored visits).
    """

    stage: int
    source: int
    n_spells: int
    n_open: int

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        """JSON-safe description: ``source`` (stage name), ``n_spells``, ``n_open``."""
        return {"source": names[self.source], "n_spells": self.n_spells, "n_open": self.n_open}

    @property
    def skipped(self) -> bool:
        """No deal has been in the stage."""
        return self.n_spells == 0

    def diagnostic(self, names: Sequence[str], as_of: dt.datetime) -> Diagnostic:
        """The model diagnostic of the stage (component ``"exits"``, code ``"skipped"`` or
        ``"borrowed"``), its message naming the stage and the source."""
        stage, source = names[self.stage], names[self.source]
        code = "skipped" if self.skipped else "borrowed"
        return Diagnostic("exits", None, stage, code, self._message(stage, source, as_of))

    def _message(self, stage: str, source: str, as_of: dt.datetime) -> str:
        if self.skipped:
            return (
                f"Stage {stage!r}: no deal had been in it by {as_of:%Y-%m-%d}, so it was "
                f"skipped (it stays in the stage map; no deal enters it, and it carries the "
                f"curves of {source!r} only to have some)."
            )
        return (
            f"Stage {stage!r}: {self.n_open} open deal(s) and {self.n_spells} visit(s) by "
            f"{as_of:%Y-%m-%d}, but no deal has left it, so its exit curves were borrowed "
            f"from stage {source!r} (moves shifted to this stage's neighbours) with a "
            f"deliberately wide parameter-draw spread (time ×/÷ e^{BORROWED_LOG_TIME_SD:g}, "
            f"direct-win odds ×/÷ e^{BORROWED_LOG_WIN_ODDS_SD:g} at one standard deviation)."
        )


def destination_shift(source: int, target: int, n_open: int, n_codes: int) -> np.ndarray:
    """Where each destination of ``source`` lands when its curves are read for ``target``.

    Returns
    -------
    ndarray of int64, shape (C,)
        ``out[j]``: the code destination ``j`` of ``source`` becomes for ``target`` —
        open code ``j + (target − source)`` (``-1``, left out, outside
        ``0 .. K-1``), terminal codes unchanged.
    """
    if not (0 <= source < n_open and 0 <= target < n_open):
        raise ParameterError(
            f"`source` and `target` must be open stage codes in 0..{n_open - 1}. Got "
            f"{source!r} and {target!r}."
        )
    out = np.arange(n_codes, dtype=np.int64)
    shifted = out[:n_open] + (target - source)
    out[:n_open] = np.where((shifted >= 0) & (shifted < n_open), shifted, -1)
    return out


def shifted_curves(
    curves: ExitCurves, mapping: np.ndarray, n_censored: int = 0
) -> ExitCurves | None:
    """``curves`` with destination ``j`` relabelled ``mapping[j]``; ``-1`` left out.

    The left-out destinations' mass goes to the others in proportion
    (:meth:`ExitCurves.scaled` with multiplier 0), then the codes are relabelled.
    The result carries no observed exits and ``n_censored`` censored spells (those
    of the stage borrowing it). ``None`` when every exit of ``curves`` would be left
    out.
    """
    c = curves.n_codes
    dropped = mapping < 0
    if dropped.any():
        m = np.where(dropped, 0.0, 1.0)
        if not float(np.dot(m, curves.eventual_shares())) > 0:
            return None
        curves = curves.scaled(1.0, m)
    keep = np.flatnonzero(~dropped)
    cif = np.zeros_like(curves.cif_grid)
    cif[mapping[keep]] = curves.cif_grid[keep]
    pieces = []
    for p in curves.tail_pieces:
        shares = np.zeros(c)
        shares[mapping[keep]] = np.asarray(p.shares)[keep]
        pieces.append(TailPiece(p.mass, p.offset, p.fit, shares))
    return ExitCurves(cif, tuple(pieces), np.zeros(c, dtype=np.int64), int(n_censored))


def shifted_multipliers(multipliers: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Destination multipliers (C,) of the source relabelled like its curves (1 elsewhere)."""
    out = np.ones_like(np.asarray(multipliers, dtype=np.float64))
    keep = np.flatnonzero(mapping >= 0)
    out[mapping[keep]] = np.asarray(multipliers, dtype=np.float64)[keep]
    return out


def wide_draw_factors(seed: int, draw: int, stage: int) -> tuple[float, float]:
    """(time factor, direct-win odds multiplier) added to draw ``draw`` of a borrowed stage.

    Log-normal with standard deviations :data:`BORROWED_LOG_TIME_SD` and
    :data:`BORROWED_LOG_WIN_ODDS_SD`, from a stream seeded by ``(seed, draw, stage)``.
    """
    z = np.random.default_rng([int(seed), int(draw), int(stage), 0xB0]).standard_normal(2)
    return float(np.exp(BORROWED_LOG_TIME_SD * z[0])), float(
        np.exp(BORROWED_LOG_WIN_ODDS_SD * z[1])
    )


def borrowed_draw(
    source_ratios: tuple[np.ndarray, float],
    info: BorrowedStage,
    n_open: int,
    n_codes: int,
    seed: int,
    draw: int,
) -> tuple[np.ndarray, float]:
    """(destination multipliers (C,), time factor) of one parameter draw of a borrowed stage.

    The source stage's bootstrap ratios of the draw, relabelled like its curves
    (:func:`shifted_multipliers`), times the wide factors of :func:`wide_draw_factors`
    (the direct-win multiplier on the won code ``K``).
    """
    m_source, tf_source = source_ratios
    mapping = destination_shift(info.source, info.stage, n_open, n_codes)
    m = shifted_multipliers(m_source, mapping)
    time_factor, win_odds = wide_draw_factors(seed, draw, info.stage)
    m[n_open] *= win_odds
    return m, float(tf_source) * time_factor


def _has_exits(spells: CensoredSpells) -> bool:
    return bool(np.any(spells.observed & (spells.weights > 0)))


def borrow_missing_stages(
    pooled: dict[int, ExitCurves],
    spells: Sequence[CensoredSpells],
    names: Sequence[str],
    as_of: dt.datetime,
) -> dict[int, BorrowedStage]:
    """Give every open stage without exits the shifted curves of its nearest stage with exits.

    Parameters
    ----------
    pooled : dict open stage code -> ExitCurves
        The fitted pooled curves of the stages with exits; filled in place for the others.
    spells : sequence of CensoredSpells, length K
        Each open stage's pooled spells.
    names : sequence of str, length K
        Open stage names (for messages).
    as_of : datetime
        The cut (for messages).

    Returns
    -------
    dict open stage code -> BorrowedStage
        The stages whose curves were borrowed (skipped ones included).

    Raises
    ------
    ModelError
        No open stage has an exit: nothing to borrow from.
    """
    n_open = len(spells)
    fitted = [k for k in range(n_open) if _has_exits(spells[k])]
    out: dict[int, BorrowedStage] = {}
    for k in range(n_open):
        if k in fitted:
            continue
        # the nearest stage with exits, later ones first at equal distance
        order = sorted(fitted, key=lambda j: (abs(j - k), j < k))
        n_codes = spells[k].n_codes
        for j in order:
            mapping = destination_shift(j, k, n_open, n_codes)
            curves = shifted_curves(pooled[j], mapping, n_censored=spells[k].n_censored)
            if curves is not None:
                pooled[k] = curves
                out[k] = BorrowedStage(k, j, spells[k].n, spells[k].n_censored)
                break
        else:
            raise _nothing_to_borrow(spells, names, as_of)
    return out


def _nothing_to_borrow(
    spells: Sequence[CensoredSpells], names: Sequence[str], as_of: dt.datetime
) -> ModelError:
    held = [f"{names[k]!r} ({s.n_censored} open)" for k, s in enumerate(spells) if s.n]
    return ModelError(
        f"No deal has left any open stage by {as_of:%Y-%m-%d}, so no stage's exit curves can "
        f"be fitted or borrowed; stages holding deals: {', '.join(held) or 'none'}. Expected "
        "at least one exit (a move, a win, a loss) from an open stage: fit at a later as-of "
        "date, or pass a history that includes the stage visits of closed deals (an event "
        "log, or dated exports with `shape='snapshots'`)."
    )
